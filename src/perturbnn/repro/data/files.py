"""Reading the data sets from disk (offline ``.npz`` copies or torchvision folders), checked.

See :mod:`perturbnn.repro.data` for where the files are looked for.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import Dataset

from perturbnn.repro.data.catalog import _Spec, _spec, build_transform
from perturbnn.repro.data.download import download_dataset
from perturbnn.repro.data.errors import DATA_DIR_ENV as DATA_DIR_ENV
from perturbnn.repro.data.errors import DataCorruptError as DataCorruptError
from perturbnn.repro.data.errors import DataDownloadError as DataDownloadError
from perturbnn.repro.data.errors import DataNotFoundError as DataNotFoundError
from perturbnn.repro.data.errors import _check_complete, _not_found

# DATA_DIR_ENV and the Data*Error classes are imported from perturbnn.repro.data.errors, so
# that ``from perturbnn.repro.data.files import DataNotFoundError`` keeps working.
__all__ = ["ArrayImageDataset", "load_dataset", "resolve_data_dir"]

logger = logging.getLogger(__name__)
StrPath = Union[str, "os.PathLike[str]"]
Transform = Callable[[Tensor], Tensor]


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


def resolve_data_dir(data_dir: Optional[StrPath] = None, *, download: bool = False) -> Path:
    """Return the data folder to search.

    In order: ``data_dir`` if given; else the environment variable ``PERTURBNN_DATA_DIR`` if
    set; else the first existing folder among ``./data`` and ``../shared/data`` (relative to
    the working directory, so that scripts run from the repository root find the shared data).
    With ``download=True`` the last step is ``./data`` alone (created when a download needs it):
    downloads go to the folder the user named, or to ``./data``, never to a shared folder.

    Args:
        data_dir: an explicit folder; returned as a :class:`~pathlib.Path` without checks.
        download: whether the caller may download into the folder.

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
    if download:
        return Path("data")
    candidates = [Path("data"), Path("..") / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = "\n".join(f"  {c.resolve()} (missing)" for c in candidates)
    raise DataNotFoundError(
        f"no data folder given: data_dir is None, {DATA_DIR_ENV} is not set, and none of the "
        f"default folders exists:\n{looked}\n"
        f"Pass download=True to download the data into ./data, or pass data_dir (or set "
        f"{DATA_DIR_ENV}) to the folder that holds it.",
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
    expected_count: Optional[int],
    source: Path,
) -> None:
    """Raise :class:`DataCorruptError` naming ``source`` unless the arrays are as expected."""
    name = spec.info.name

    def fail(problem: str) -> DataCorruptError:
        return DataCorruptError(f"{source}: {problem} (expected for {name})", source)

    expected_shape = (expected_count, *spec.item_shape)
    if images.shape[0] == 0:
        raise fail("holds no image")
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
    if expected_count is not None and images.shape[0] != expected_count:
        raise fail(f"must hold {expected_count} images, got {images.shape[0]}")
    nclasses = spec.info.nclasses
    if labels.size > 0 and nclasses is not None:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= nclasses:
            raise fail(f"labels must be in 0..{nclasses - 1}, got values in {low}..{high}")


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


_Arrays = tuple[npt.NDArray[Any], npt.NDArray[Any], Optional[list[str]]]


def _read_torchvision(spec: _Spec, root: Path, train: bool) -> _Arrays:
    """Images, labels and class names (if the files name them) through ``torchvision``."""
    import torchvision.datasets as tvd

    cls = spec.torchvision_class
    split = "train" if train else "test"
    if cls in ("CIFAR10", "CIFAR100"):
        cifar = getattr(tvd, cls)(root=str(root), train=train, download=False)
        return np.asarray(cifar.data), np.asarray(cifar.targets), list(cifar.classes)
    if cls in ("MNIST", "FashionMNIST"):
        mnist = getattr(tvd, cls)(root=str(root), train=train, download=False)
        return mnist.data.numpy(), mnist.targets.numpy(), None
    if cls == "SVHN":
        svhn = tvd.SVHN(root=str(root), split=split, download=False)
        return np.asarray(svhn.data), np.asarray(svhn.labels), None
    stl = tvd.STL10(root=str(root), split=split, download=False)
    return np.asarray(stl.data), np.asarray(stl.labels), None


#: torchvision classes that check the MD5 checksum of every file they read; the image count
#: of the split is then not checked again (the checksums are the stronger check).
_MD5_CHECKED = ("CIFAR10", "CIFAR100", "SVHN", "STL10")


def _load_torchvision(spec: _Spec, root: Path, train: bool) -> _Arrays:
    folder = root / spec.torchvision_marker[train]
    _check_complete(spec, root, train)
    try:
        images, labels, classes = _read_torchvision(spec, root, train)
    except ImportError as exc:  # SVHN's .mat files need scipy
        raise ImportError(
            f"reading {spec.info.name} from {folder} needs {exc.name or 'a missing package'} "
            f"({exc}); install it, e.g. pip install 'perturbnn[examples]'"
        ) from exc
    except (RuntimeError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        # torchvision raises RuntimeError("Dataset not found or corrupted") on a failed check
        # (the official files' MD5 checksums for CIFAR-100, SVHN and STL-10).
        reason = " ".join(str(exc).split()).split(" You can use download=True")[0]
        raise DataCorruptError(
            f"{folder}: the official files are there but torchvision cannot read the "
            f"{'train' if train else 'test'} split from them ({type(exc).__name__}: {reason}); "
            "they are corrupt or not the official release (torchvision checks their MD5 "
            f"checksums); remove {folder} and pass download=True to download it again",
            folder,
        ) from exc
    checked = spec.torchvision_class in _MD5_CHECKED
    _check_arrays(spec, images, labels, None if checked else spec.count(train), folder)
    return images, labels, classes


def _image_folder_candidates(root: Path, train: bool) -> list[Path]:
    return [root / "train"] if train else [root / "val", root / "test"]


def _load_image_folder(
    root: Path, train: bool, transform: Optional[Transform]
) -> Optional[Dataset[tuple[Tensor, int]]]:
    """``torchvision.datasets.ImageFolder`` over the split's folder, or ``None`` if absent."""
    import torchvision.datasets as tvd

    for folder in _image_folder_candidates(root, train):
        if not folder.is_dir():
            continue
        try:
            dataset: Dataset[tuple[Tensor, int]] = tvd.ImageFolder(
                str(folder),
                transform=transform
                if transform is not None
                else build_transform("ImageFolder", train=train),
            )
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise DataCorruptError(
                f"{folder}: cannot be read as an ImageFolder (one subfolder of images per "
                f"class) ({type(exc).__name__}: {exc})",
                folder,
            ) from exc
        return dataset
    return None


def load_dataset(
    name: str,
    data_dir: Optional[StrPath] = None,
    *,
    train: bool,
    transform: Optional[Transform] = None,
    download: bool = False,
) -> Union[ArrayImageDataset, Dataset[tuple[Tensor, int]]]:
    """Load one split of a data set, downloading it with torchvision if asked and missing.

    Every data set but ``ImageFolder`` is decoded into memory once (about 2 s for CIFAR-10 on
    two cores) and checked: image shape and dtype, label range and the image count of the
    offline ``.npz`` copies (CIFAR-10: 50,000 train and 10,000 test) and of MNIST (60,000 and
    10,000). torchvision's official folders are read by torchvision's own classes, which check
    the official files' MD5 checksums (CIFAR-10, CIFAR-100, SVHN, STL-10; SVHN also needs
    scipy), after a check that every file they need is there (a missing one is named). ``ImageFolder`` reads ``<data_dir>/train/<class>/`` and
    ``<data_dir>/val/<class>/`` (or ``test/``) lazily with ``torchvision.datasets.ImageFolder``.
    See the package documentation for where the data is looked for.

    With ``download=True``, a split found in none of the layouts is downloaded first by
    :func:`~perturbnn.repro.data.download.download_dataset` (torchvision's URLs and MD5
    checks, into a temporary folder, then moved into ``data_dir``); a split that is there is
    never downloaded again. ``data_dir=None`` then means ``$PERTURBNN_DATA_DIR``, else
    ``./data``.

    Args:
        name: one of :data:`DATASETS`, case-insensitive.
        data_dir: the folder holding ``cifar10/`` and ``mnist/`` (or one of those folders, or
            torchvision's layout); ``None`` means :func:`resolve_data_dir`.
        train: load the training split if ``True``, else the test split.
        transform: per-image transform on ``uint8`` ``Tensor[channels, height, width]`` (a PIL
            image for ``ImageFolder``). Default: :func:`build_transform` ``(name, train=train)``.
        download: download the split if it is missing (not for ``ImageFolder``). Default:
            ``False``.

    Returns:
        ArrayImageDataset (``ImageFolder``: ``torchvision.datasets.ImageFolder``): items are
        ``(Tensor[channels, height, width], int)``, with ``.targets`` and ``.classes``; an
        ``ArrayImageDataset`` also has ``.images`` ``Tensor[N, channels, height, width]``
        (``uint8``).

    Raises:
        ValueError: if ``name`` is unknown, or ``download`` is set for ``ImageFolder``.
        ImportError: if reading the files needs a package that is missing (SVHN: scipy).
        DataNotFoundError: (a ``FileNotFoundError``) if no complete layout is found; the
            message says how to get the data, then where it was looked for.
        DataDownloadError: (a ``DataNotFoundError``) if ``download`` is set and the download
            fails; the message gives the reason and where to put the files by hand.
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
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool, got {type(download).__name__} {download!r}")
    if download and spec.info.name == "ImageFolder":
        raise ValueError(
            "download must be False for ImageFolder: a folder of class subfolders cannot be "
            "downloaded"
        )
    root = resolve_data_dir(data_dir, download=download)
    start = time.perf_counter()
    looked: list[tuple[Path, bool]] = []
    arrays: Optional[_Arrays] = None
    source: Optional[Path] = None

    if spec.info.name == "ImageFolder":
        folder_set = _load_image_folder(root, train, transform)
        if folder_set is None:
            looked = [(p, False) for p in _image_folder_candidates(root, train)]
            raise _not_found(spec, root, train, looked)
        return folder_set
    folders = (root / spec.npz_folder, root) if spec.npz_files[train] else ()
    for folder in folders:
        paths = [folder / f for f, _ in spec.npz_files[train]]
        found = [p.is_file() for p in paths]
        looked += list(zip(paths, found))
        if all(found):
            arrays, source = (*_load_npz(spec, folder, train), None), folder
            break
    if arrays is None:
        # torchvision's layout under data_dir, or data_dir is that layout's own folder.
        tv_roots = [root / sub if sub else root for sub in spec.torchvision_roots]
        if root.name == spec.torchvision_folder and root.parent not in tv_roots:
            tv_roots.append(root.parent)
        for tv_root in tv_roots:
            marker = tv_root / spec.torchvision_marker[train]
            ok = marker.exists()
            looked.append((marker, ok))
            if ok:
                arrays, source = _load_torchvision(spec, tv_root, train), marker
                break
    if arrays is None and download:
        tv_root = download_dataset(spec.info.name, root, train=train)
        arrays = _load_torchvision(spec, tv_root, train)
        source = tv_root / spec.torchvision_marker[train]
    if arrays is None:
        raise _not_found(spec, root, train, looked)

    images_np, labels_np, classes = arrays
    images = torch.from_numpy(np.ascontiguousarray(images_np))
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif spec.channels_last:
        images = images.permute(0, 3, 1, 2)
    dataset = ArrayImageDataset(
        images.contiguous(),
        torch.from_numpy(labels_np.astype(np.int64, copy=False)),
        transform if transform is not None else build_transform(spec.info.name, train=train),
        classes=classes or spec.classes or None,
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
