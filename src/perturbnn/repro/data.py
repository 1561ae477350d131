"""CIFAR-10 and MNIST as in-memory tensors, their transforms, and the data loaders.

Nothing here downloads. :func:`load_dataset` reads either the offline ``.npz`` copies
(``cifar10/cifar10_train_[1-5].npz``, ``cifar10/cifar10_test.npz``,
``mnist/mnist_{train,test}.npz``, each with a ``uint8`` ``images`` array and an integer
``labels`` array) or torchvision's official folders (``cifar-10-batches-py/``,
``MNIST/raw/``), decodes them once, checks them, and returns an :class:`ArrayImageDataset`
whose per-item work is only the transform.

Where the data is looked for, for a data set and a split, given ``data_dir`` (see
:func:`resolve_data_dir` when it is ``None``); the first complete layout wins:

1. ``<data_dir>/cifar10/cifar10_*.npz`` (``<data_dir>/mnist/mnist_*.npz`` for MNIST);
2. ``<data_dir>/cifar10_*.npz``, i.e. ``data_dir`` is the ``cifar10/`` (``mnist/``) folder;
3. ``<data_dir>/cifar-10-batches-py/`` (``<data_dir>/MNIST/raw/``), read with
   ``torchvision.datasets.CIFAR10(root=data_dir, download=False)`` (``MNIST``);
4. ``data_dir`` is itself ``cifar-10-batches-py/`` (``MNIST/``), read with its parent as root.

When none is complete, :class:`DataNotFoundError` lists every path that was looked at. A file
or folder that exists but cannot be read, or holds arrays of the wrong shape, dtype, label range
or count, raises :class:`DataCorruptError` naming it.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.transforms import v2

from perturbnn._validation import check_positive_int

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "DATA_DIR_ENV",
    "MNIST_MEAN",
    "MNIST_STD",
    "ArrayImageDataset",
    "DataCorruptError",
    "DataNotFoundError",
    "DatasetInfo",
    "build_transform",
    "class_balanced_subset",
    "dataset_info",
    "load_dataset",
    "make_loaders",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

StrPath = Union[str, "os.PathLike[str]"]
Transform = Callable[[Tensor], Tensor]

#: Per-channel mean used by the original PNN code to normalize CIFAR-10 (0-1 scale).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
#: Per-channel "std" used by the original PNN code for CIFAR-10. It is not the data's
#: standard deviation (about ``(0.2470, 0.2435, 0.2616)``); it is kept for faithfulness.
CIFAR10_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
#: Mean used to normalize MNIST (0-1 scale).
MNIST_MEAN: tuple[float] = (0.1307,)
#: Standard deviation used to normalize MNIST (0-1 scale).
MNIST_STD: tuple[float] = (0.3081,)

#: Name of the environment variable read by :func:`resolve_data_dir`.
DATA_DIR_ENV = "PERTURBNN_DATA_DIR"


class DataNotFoundError(FileNotFoundError):
    """A data set is not where it was looked for.

    The message lists every path that was looked at and how to get the data.

    Attributes:
        paths (list[Path]): the paths looked at, in search order.
    """

    def __init__(self, message: str, paths: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.paths: list[Path] = list(paths)


class DataCorruptError(ValueError):
    """A data file or folder exists but cannot be read or holds the wrong arrays.

    The message names the file or folder.

    Attributes:
        path (Path): the file or folder at fault.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path: Path = path


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set.

    Args:
        name: the canonical name, one of :data:`DATASETS`.
        in_channels: number of image channels.
        input_size: image height and width (the images are square).
        nclasses: number of classes.
    """

    name: str
    in_channels: int
    input_size: int
    nclasses: int


@dataclass(frozen=True)
class _Spec:
    """Everything this module knows about one data set."""

    info: DatasetInfo
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    classes: tuple[str, ...]
    npz_folder: str
    npz_files: dict[bool, tuple[tuple[str, int], ...]]  # train -> ((file name, count), ...)
    item_shape: tuple[int, ...]  # shape of one image in the arrays (HWC or HW)
    torchvision_folder: str  # under root
    torchvision_marker: str  # the folder that must exist, relative to root

    def count(self, train: bool) -> int:
        return sum(n for _, n in self.npz_files[train])


_SPECS: dict[str, _Spec] = {
    "CIFAR10": _Spec(
        info=DatasetInfo("CIFAR10", in_channels=3, input_size=32, nclasses=10),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        augment=True,
        classes=tuple("airplane automobile bird cat deer dog frog horse ship truck".split()),
        npz_folder="cifar10",
        npz_files={
            True: tuple((f"cifar10_train_{i}.npz", 10_000) for i in range(1, 6)),
            False: (("cifar10_test.npz", 10_000),),
        },
        item_shape=(32, 32, 3),
        torchvision_folder="cifar-10-batches-py",
        torchvision_marker="cifar-10-batches-py",
    ),
    "MNIST": _Spec(
        info=DatasetInfo("MNIST", in_channels=1, input_size=28, nclasses=10),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        augment=False,
        classes=tuple(
            f"{d} - {w}"
            for d, w in enumerate("zero one two three four five six seven eight nine".split())
        ),
        npz_folder="mnist",
        npz_files={
            True: (("mnist_train.npz", 60_000),),
            False: (("mnist_test.npz", 10_000),),
        },
        item_shape=(28, 28),
        torchvision_folder="MNIST",
        torchvision_marker=os.path.join("MNIST", "raw"),
    ),
}

#: Names accepted by :func:`dataset_info`, :func:`build_transform` and :func:`load_dataset`
#: (case-insensitive; ``-`` and ``_`` are ignored, so ``"cifar-10"`` works too).
DATASETS: tuple[str, ...] = tuple(_SPECS)


def _spec(name: str) -> _Spec:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__} {name!r}")
    key = name.upper().replace("-", "").replace("_", "")
    if key not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; valid names are {', '.join(DATASETS)}")
    return _SPECS[key]


def dataset_info(name: str) -> DatasetInfo:
    """Return the channels, image size and number of classes of a data set.

    Args:
        name: one of :data:`DATASETS`, case-insensitive.

    Returns:
        DatasetInfo: for instance ``DatasetInfo(name='CIFAR10', in_channels=3, input_size=32,
        nclasses=10)``.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the valid names.

    Example::

        >>> dataset_info("mnist")
        DatasetInfo(name='MNIST', in_channels=1, input_size=28, nclasses=10)
    """
    return _spec(name).info


def build_transform(name: str, *, train: bool) -> v2.Compose:
    """Return the per-image transform of the original PNN code, on ``uint8`` tensors.

    CIFAR-10 training images are randomly cropped (32 pixels with zero padding 4) and randomly
    flipped horizontally; test images and MNIST images are not augmented. All are then scaled
    to ``[0, 1]`` as ``float32`` and normalized with :data:`CIFAR10_MEAN` and
    :data:`CIFAR10_STD` (:data:`MNIST_MEAN` and :data:`MNIST_STD`).

    Args:
        name: one of :data:`DATASETS`, case-insensitive.
        train: whether to build the training transform (with augmentation).

    Returns:
        v2.Compose: maps a ``uint8`` ``Tensor[channels, height, width]`` to a ``float32``
        tensor of the same shape.

    Raises:
        ValueError: if ``name`` is unknown.

    Example::

        >>> transform = build_transform("cifar10", train=False)
        >>> transform(torch.zeros(3, 32, 32, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """
    spec = _spec(name)
    steps: list[Any] = []
    if train and spec.augment:
        size = spec.info.input_size
        steps += [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()]
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ]
    return v2.Compose(steps)


class ArrayImageDataset(Dataset[tuple[Tensor, int]]):
    """Images held in memory as one ``uint8`` tensor, with their integer labels.

    Args:
        images: ``Tensor[N, channels, height, width]`` of dtype ``uint8``.
        targets: labels ``Tensor[N]`` of an integer dtype, or a sequence of ints.
        transform: applied to each ``uint8`` ``Tensor[channels, height, width]`` image; it must
            return a ``float32`` tensor. ``None`` only scales to ``[0, 1]``.
        classes: class names, indexed by label. Default: the labels as strings,
            ``"0"`` to ``str(max label)``.

    Attributes:
        images (Tensor): the ``uint8`` images, ``Tensor[N, channels, height, width]``.
        targets (Tensor): the ``int64`` labels, ``Tensor[N]``.
        classes (list[str]): the class names.

    Raises:
        TypeError: if ``images`` is not a tensor.
        ValueError: if ``images`` is not 4-D ``uint8``, ``targets`` is not 1-D integer, their
            lengths differ, or a label is negative or has no class name.

    Example::

        >>> ds = ArrayImageDataset(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), [0, 1, 0, 1, 2])
        >>> image, label = ds[4]
        >>> image.shape, image.dtype, label
        (torch.Size([3, 8, 8]), torch.float32, 2)
    """

    def __init__(
        self,
        images: Tensor,
        targets: Union[Tensor, Sequence[int]],
        transform: Optional[Transform] = None,
        *,
        classes: Optional[Sequence[str]] = None,
    ) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(
                "images must be a uint8 Tensor[N, channels, height, width], got dtype "
                f"{images.dtype} and shape {tuple(images.shape)}"
            )
        labels = torch.as_tensor(targets)
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(
                "targets must be 1-D integer labels, got dtype "
                f"{labels.dtype} and shape {tuple(labels.shape)}"
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"images and targets must have the same length, got {images.shape[0]} images "
                f"and {labels.shape[0]} targets"
            )
        labels = labels.to(torch.int64)
        if labels.numel() > 0 and int(labels.min()) < 0:
            raise ValueError(f"labels must be non-negative, got {int(labels.min())}")
        top = int(labels.max()) if labels.numel() > 0 else -1
        if classes is None:
            classes = [str(c) for c in range(top + 1)]
        if top >= len(classes):
            raise ValueError(f"label {top} has no name in classes ({len(classes)} names)")
        self.images: Tensor = images
        self.targets: Tensor = labels
        self.transform: Optional[Transform] = transform
        self.classes: list[str] = list(classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Return ``(image, label)``: ``Tensor[channels, height, width]`` and an int."""
        image = self.images[index]
        if self.transform is None:
            image = image.to(torch.float32).div_(255.0)
        else:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        lines = [
            type(self).__name__,
            f"    Number of datapoints: {len(self)}",
            f"    Image shape: {tuple(self.images.shape[1:])}",
        ]
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}".replace("\n", "\n    "))
        return "\n".join(lines)


def resolve_data_dir(data_dir: Optional[StrPath] = None) -> Path:
    """Return the data folder to search.

    In order: ``data_dir`` if given; else the environment variable ``PERTURBNN_DATA_DIR`` if
    set; else the first existing folder among ``./data`` and ``../shared/data`` (relative to
    the working directory, so that scripts run from the repository root find the shared data).

    Args:
        data_dir: an explicit folder; returned as a :class:`~pathlib.Path` without checks.

    Returns:
        Path: the folder.

    Raises:
        DataNotFoundError: if ``data_dir`` is ``None``, the variable is unset, and no default
            folder exists; the message lists what was looked at.
    """
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    candidates = [Path("data"), Path("..") / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = "\n".join(f"  {c.resolve()} (missing)" for c in candidates)
    raise DataNotFoundError(
        f"no data folder given: data_dir is None, {DATA_DIR_ENV} is not set, and none of the "
        f"default folders exists:\n{looked}\n"
        f"Pass data_dir or set {DATA_DIR_ENV} to the folder that holds cifar10/ and mnist/.",
        candidates,
    )


# --------------------------------------------------------------------------- loading


def _read_npz(path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Return the ``images`` and ``labels`` arrays of one ``.npz`` file."""
    try:
        # Open the file here: np.load leaks its own handle when the zip is unreadable.
        with path.open("rb") as handle:
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise TypeError("it holds a single array, not an .npz archive")
            with archive:
                missing = [k for k in ("images", "labels") if k not in archive.files]
                if missing:
                    raise KeyError(f"missing array(s) {missing}; it has {archive.files}")
                images = archive["images"]
                labels = archive["labels"]
    except (
        OSError,
        ValueError,
        EOFError,
        KeyError,
        TypeError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:
        raise DataCorruptError(
            f"{path}: cannot be read as an .npz file of images and labels "
            f"({type(exc).__name__}: {exc}); the file is truncated or corrupt, copy it again",
            path,
        ) from exc
    return images, labels


def _check_arrays(
    spec: _Spec,
    images: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    expected_count: int,
    source: Path,
) -> None:
    """Raise :class:`DataCorruptError` naming ``source`` unless the arrays are as expected."""
    name = spec.info.name

    def fail(problem: str) -> DataCorruptError:
        return DataCorruptError(f"{source}: {problem} (expected for {name})", source)

    expected_shape = (expected_count, *spec.item_shape)
    if images.dtype != np.uint8:
        raise fail(f"images must have dtype uint8, got {images.dtype}")
    if images.ndim != len(expected_shape) or images.shape[1:] != spec.item_shape:
        raise fail(
            f"images must have shape (N, {', '.join(map(str, spec.item_shape))}), got {images.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise fail(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise fail(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    if images.shape[0] != expected_count:
        raise fail(f"must hold {expected_count} images, got {images.shape[0]}")
    if labels.size > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= spec.info.nclasses:
            raise fail(
                f"labels must be in 0..{spec.info.nclasses - 1}, got values in {low}..{high}"
            )


def _load_npz(spec: _Spec, folder: Path, train: bool) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    images_parts, labels_parts = [], []
    for file_name, count in spec.npz_files[train]:
        path = folder / file_name
        images, labels = _read_npz(path)
        _check_arrays(spec, images, labels, count, path)
        images_parts.append(images)
        labels_parts.append(labels)
    if len(images_parts) == 1:
        return images_parts[0], labels_parts[0]
    return np.concatenate(images_parts), np.concatenate(labels_parts)


def _load_torchvision(
    spec: _Spec, root: Path, train: bool
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    import torchvision.datasets as tvd

    folder = root / spec.torchvision_folder
    try:
        if spec.info.name == "CIFAR10":
            cifar = tvd.CIFAR10(root=str(root), train=train, download=False)
            images = np.asarray(cifar.data)
            labels = np.asarray(cifar.targets)
        else:
            mnist = tvd.MNIST(root=str(root), train=train, download=False)
            images = mnist.data.numpy()
            labels = mnist.targets.numpy()
    except (RuntimeError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        # torchvision raises RuntimeError("Dataset not found or corrupted") on a failed check.
        raise DataCorruptError(
            f"{folder}: the folder exists but torchvision cannot read the "
            f"{'train' if train else 'test'} split from it ({type(exc).__name__}: {exc}); "
            "it is incomplete or corrupt",
            folder,
        ) from exc
    _check_arrays(spec, images, labels, spec.count(train), folder)
    return images, labels


def _not_found(
    spec: _Spec, data_dir: Path, train: bool, looked: list[tuple[Path, bool]]
) -> DataNotFoundError:
    name = spec.info.name
    split = "train" if train else "test"
    lines = "\n".join(f"  {p.absolute()} ({'found' if ok else 'missing'})" for p, ok in looked)
    files = ", ".join(f for f, _ in spec.npz_files[train])
    root = data_dir.absolute()
    official = f"{spec.torchvision_marker}{os.sep}"
    return DataNotFoundError(
        f"{name} {split} split not found under {root}. Looked at:\n{lines}\n"
        f"To get the data, copy {files} from the shared data folder "
        f"(shared/data/{spec.npz_folder}/) into {root / spec.npz_folder}{os.sep}, or place "
        f"torchvision's official {official} folder in {root}{os.sep} (for instance made by "
        f"torchvision.datasets.{name}(root, download=True) on a machine with internet access). "
        f"Pass data_dir or set {DATA_DIR_ENV} to use another folder; perturbnn never downloads.",
        [p for p, _ in looked],
    )


def load_dataset(
    name: str,
    data_dir: Optional[StrPath] = None,
    *,
    train: bool,
    transform: Optional[Transform] = None,
) -> ArrayImageDataset:
    """Load one split of CIFAR-10 or MNIST into memory, without downloading.

    The files are decoded once (about 2 s for CIFAR-10 on two cores) and checked: image shape
    and dtype, label range ``0..9`` and the image count (CIFAR-10: 50,000 train and 10,000
    test; MNIST: 60,000 and 10,000). See the module documentation for where the data is looked
    for.

    Args:
        name: one of :data:`DATASETS`, case-insensitive.
        data_dir: the folder holding ``cifar10/`` and ``mnist/`` (or one of those folders, or
            torchvision's layout); ``None`` means :func:`resolve_data_dir`.
        train: load the training split if ``True``, else the test split.
        transform: per-image transform on ``uint8`` ``Tensor[channels, height, width]``.
            Default: :func:`build_transform` ``(name, train=train)``.

    Returns:
        ArrayImageDataset: items are ``(Tensor[channels, height, width], int)``, with
        ``.images`` ``Tensor[N, channels, height, width]`` (``uint8``), ``.targets``
        ``Tensor[N]`` (``int64``) and ``.classes``.

    Raises:
        ValueError: if ``name`` is unknown.
        DataNotFoundError: (a ``FileNotFoundError``) if no complete layout is found; the
            message lists every path looked at and how to get the data.
        DataCorruptError: (a ``ValueError``) if a file or folder cannot be read or holds the
            wrong arrays; the message names it.

    Example::

        >>> test_set = load_dataset("cifar10", "../shared/data", train=False)  # doctest: +SKIP
        >>> image, label = test_set[0]  # doctest: +SKIP
        >>> image.shape, label  # doctest: +SKIP
        (torch.Size([3, 32, 32]), 3)
    """
    spec = _spec(name)
    if not isinstance(train, bool):
        raise TypeError(f"train must be a bool, got {type(train).__name__} {train!r}")
    root = resolve_data_dir(data_dir)
    start = time.perf_counter()
    looked: list[tuple[Path, bool]] = []
    arrays: Optional[tuple[npt.NDArray[Any], npt.NDArray[Any]]] = None
    source: Optional[Path] = None

    for folder in (root / spec.npz_folder, root):
        paths = [folder / f for f, _ in spec.npz_files[train]]
        found = [p.is_file() for p in paths]
        looked += list(zip(paths, found))
        if all(found):
            arrays, source = _load_npz(spec, folder, train), folder
            break
    if arrays is None:
        # torchvision's layout under data_dir, or data_dir is that layout's own folder.
        tv_roots = [root] + ([root.parent] if root.name == spec.torchvision_folder else [])
        for tv_root in tv_roots:
            marker = tv_root / spec.torchvision_marker
            ok = marker.is_dir()
            looked.append((marker, ok))
            if ok:
                arrays, source = _load_torchvision(spec, tv_root, train), marker
                break
    if arrays is None:
        raise _not_found(spec, root, train, looked)

    images_np, labels_np = arrays
    images = torch.from_numpy(np.ascontiguousarray(images_np))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    dataset = ArrayImageDataset(
        images.contiguous(),
        torch.from_numpy(labels_np.astype(np.int64, copy=False)),
        transform if transform is not None else build_transform(spec.info.name, train=train),
        classes=spec.classes,
    )
    logger.debug(
        "loaded %s %s split (%d images) from %s in %.2f s",
        spec.info.name,
        "train" if train else "test",
        len(dataset),
        source,
        time.perf_counter() - start,
    )
    return dataset


# --------------------------------------------------------------------------- subsets, loaders


def class_balanced_subset(targets: Union[Tensor, npt.ArrayLike], n: int) -> list[int]:
    """Pick ``n`` indices, as evenly as possible over the classes, deterministically.

    With ``K`` distinct labels in ``targets``, each class gets ``n // K`` examples and the
    ``n % K`` classes with the lowest labels get one more. Each class contributes its first
    examples in the original order. The result is sorted.

    Args:
        targets: labels ``Tensor[N]`` (or an array or sequence) of an integer dtype.
        n: number of indices, ``1 <= n <= N``.

    Returns:
        list[int]: ``n`` sorted, distinct indices into ``targets``.

    Raises:
        TypeError: if ``n`` is not an int.
        ValueError: if ``targets`` is not 1-D integer, ``n`` is out of range, or a class has
            fewer examples than its share.

    Example::

        >>> class_balanced_subset([0, 1, 0, 1, 2, 2, 0], 4)
        [0, 1, 2, 4]
    """
    labels = targets.detach().cpu().numpy() if isinstance(targets, Tensor) else np.asarray(targets)
    if labels.ndim != 1 or (labels.size > 0 and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"targets must be 1-D integer labels, got dtype {labels.dtype} and shape {labels.shape}"
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
    if not 1 <= n <= labels.shape[0]:
        raise ValueError(f"n must be in 1..{labels.shape[0]} (the number of targets), got {n}")
    classes = np.unique(labels)
    base, extra = divmod(int(n), len(classes))
    chosen = []
    for rank, cls in enumerate(classes):
        share = base + (1 if rank < extra else 0)
        members = np.flatnonzero(labels == cls)
        if members.shape[0] < share:
            raise ValueError(
                f"class {cls} has {members.shape[0]} examples, fewer than its share of {share} "
                f"for n={n} over {len(classes)} classes"
            )
        chosen.append(members[:share])
    return sorted(int(i) for i in np.concatenate(chosen))


def _image_shape(dataset: Dataset[Any], which: str) -> tuple[int, ...]:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{which} data set is empty")
    return tuple(dataset[0][0].shape)


def _subset(dataset: Dataset[Any], n: Optional[int], which: str) -> Dataset[Any]:
    if n is None:
        return dataset
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{which}_subset needs a data set with a .targets attribute")
    return Subset(dataset, class_balanced_subset(targets, n))


def make_loaders(
    dataset_train: Union[str, Dataset[Any]],
    dataset_test: Union[str, Dataset[Any]],
    data_dir: Optional[StrPath] = None,
    *,
    batch_size: int,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    num_workers: int = 0,
    seed: int = 1,
    drop_last: bool = False,
    train_sampler: Optional[Sampler[Any]] = None,
    test_sampler: Optional[Sampler[Any]] = None,
    pin_memory: bool = False,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Build the training and test loaders.

    The training loader shuffles with a ``torch.Generator`` seeded by ``seed`` (unless
    ``train_sampler`` is given), so the order is the same from run to run; the test loader
    keeps the data set's order and never drops a batch.

    Args:
        dataset_train: a name from :data:`DATASETS` (loaded with :func:`load_dataset` and its
            default training transform) or a data set.
        dataset_test: the same for the test split.
        data_dir: where to load named data sets from; see :func:`load_dataset`.
        batch_size: examples per batch, positive.
        train_subset: if given, train on :func:`class_balanced_subset` ``(targets, n)`` of
            the training set only (needs a ``.targets`` attribute).
        test_subset: the same for the test set.
        num_workers: loader worker processes. Default: ``0``.
        seed: seed of the shuffling generator (also the workers' base seed). Default: ``1``.
        drop_last: drop an incomplete last training batch. Default: ``False``.
        train_sampler: a sampler for the training set (for instance a
            ``DistributedSampler``); it replaces the shuffling.
        test_sampler: a sampler for the test set.
        pin_memory: passed to both loaders. Default: ``False``.

    Returns:
        tuple[DataLoader, DataLoader]: ``(train_loader, test_loader)``; batches are
        ``(Tensor[batch_size, channels, height, width], Tensor[batch_size])``.

    Raises:
        TypeError: on an argument of the wrong type.
        ValueError: if ``batch_size`` is not positive, ``num_workers`` is negative, a subset
            size is out of range, or the two data sets' images differ in shape.
        DataNotFoundError, DataCorruptError: from :func:`load_dataset`.

    Example::

        >>> train_loader, test_loader = make_loaders(  # doctest: +SKIP
        ...     "CIFAR10", "CIFAR10", "../shared/data", batch_size=128, train_subset=5000
        ... )
        >>> images, labels = next(iter(train_loader))  # doctest: +SKIP
        >>> images.shape  # doctest: +SKIP
        torch.Size([128, 3, 32, 32])
    """
    check_positive_int("batch_size", batch_size)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int):
        raise TypeError(f"num_workers must be an int, got {type(num_workers).__name__}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be non-negative, got {num_workers}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if isinstance(dataset_train, str) and isinstance(dataset_test, str):
        info_train, info_test = dataset_info(dataset_train), dataset_info(dataset_test)
        named_train = (info_train.in_channels, info_train.input_size, info_train.input_size)
        named_test = (info_test.in_channels, info_test.input_size, info_test.input_size)
        if named_train != named_test:
            raise ValueError(
                f"train and test images must have the same shape, got {named_train} "
                f"({info_train.name}) and {named_test} ({info_test.name})"
            )
    train_set: Dataset[Any] = (
        load_dataset(dataset_train, data_dir, train=True)
        if isinstance(dataset_train, str)
        else dataset_train
    )
    test_set: Dataset[Any] = (
        load_dataset(dataset_test, data_dir, train=False)
        if isinstance(dataset_test, str)
        else dataset_test
    )
    shape_train, shape_test = _image_shape(train_set, "train"), _image_shape(test_set, "test")
    if shape_train != shape_test:
        raise ValueError(
            f"train and test images must have the same shape, got {shape_train} and {shape_test}"
        )
    train_set = _subset(train_set, train_subset, "train")
    test_set = _subset(test_set, test_subset, "test")

    generator = torch.Generator()
    generator.manual_seed(seed)
    train_loader: DataLoader[Any] = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=train_sampler is None,
        sampler=train_sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
    )
    test_loader: DataLoader[Any] = DataLoader(
        test_set,
        batch_size=batch_size,
        shuffle=False,
        sampler=test_sampler,
        num_workers=num_workers,
        drop_last=False,
        pin_memory=pin_memory,
    )
    logger.debug(
        "loaders: %d train examples in %d batches, %d test examples in %d batches",
        len(train_set),  # type: ignore[arg-type]
        len(train_loader),
        len(test_set),  # type: ignore[arg-type]
        len(test_loader),
    )
    return train_loader, test_loader
