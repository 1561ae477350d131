"""The data sets the harness knows: their shapes, class counts, statistics and transforms.

CIFAR-10 and MNIST (offline ``.npz`` copies or torchvision's folders), and, as Klachko's data
loader offers them, CIFAR-100, SVHN, STL-10, FashionMNIST (torchvision's official folders) and
an ImageNet-style class-folder tree (``torchvision.datasets.ImageFolder``).

Source: Klachko's ``dataloader.py`` (issue "Faithful to Klachko": CIFAR-100 transformed as
CIFAR-10, SVHN and STL-10 normalized with mean and std 0.5, FashionMNIST as MNIST, folders with
224-pixel crops and ImageNet normalization) and the original PNN code's normalization
constants (see :data:`CIFAR10_STD`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torchvision.transforms import v2

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "HALF",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "DatasetInfo",
    "build_transform",
    "dataset_info",
]


#: Per-channel mean used by the original PNN code to normalize CIFAR-10 (0-1 scale).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
#: Per-channel "std" used by the original PNN code for CIFAR-10. It is not the data's
#: standard deviation (about ``(0.2470, 0.2435, 0.2616)``); it is kept for faithfulness.
CIFAR10_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
#: Mean used to normalize MNIST (0-1 scale).
MNIST_MEAN: tuple[float] = (0.1307,)
#: Standard deviation used to normalize MNIST (0-1 scale).
MNIST_STD: tuple[float] = (0.3081,)
#: Mean and std 0.5 per channel: Klachko's normalization of SVHN and STL-10 (to ``[-1, 1]``).
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: ImageNet statistics (0-1 scale), Klachko's normalization of an ImageNet-style folder.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: See :data:`IMAGENET_MEAN`.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set.

    Args:
        name: the canonical name, one of :data:`DATASETS`.
        in_channels: number of image channels.
        input_size: image height and width after the transform (the images are square).
        nclasses: number of classes; ``None`` for ``ImageFolder``, whose classes are its
            subfolders (counted when the data is loaded).
    """

    name: str
    in_channels: int
    input_size: int
    nclasses: Optional[int]


@dataclass(frozen=True)
class _Spec:
    """Everything this module knows about one data set.

    ``torchvision_class`` names the ``torchvision.datasets`` class that reads the official
    folder; ``torchvision_marker[train]`` is the file or folder, relative to a torchvision root,
    that must exist; ``torchvision_roots`` are the subfolders of ``data_dir`` tried as that root
    (``""``: ``data_dir`` itself). ``npz_files`` is empty for data sets without an offline copy.
    ``counts`` (train -> images) is checked when known; ``channels_last`` tells whether the
    arrays are ``NHWC`` (or ``NHW``) rather than ``NCHW``.
    """

    info: DatasetInfo
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    classes: tuple[str, ...]
    item_shape: tuple[int, ...]  # shape of one image in the arrays
    torchvision_class: str
    torchvision_folder: str  # the official folder's name, for messages and data_dir = it
    torchvision_marker: dict[bool, str]
    torchvision_roots: tuple[str, ...] = ("",)
    npz_folder: str = ""
    npz_files: dict[bool, tuple[tuple[str, int], ...]] = field(
        default_factory=lambda: {True: (), False: ()}
    )
    counts: Optional[dict[bool, int]] = None
    channels_last: bool = True
    title: str = ""  # the name people write ("CIFAR-10"), for messages
    download_size: str = ""  # what torchvision downloads, for messages; "" if it cannot

    @property
    def label(self) -> str:
        return self.title or self.info.name

    def count(self, train: bool) -> Optional[int]:
        if self.npz_files[train]:
            return sum(n for _, n in self.npz_files[train])
        return None if self.counts is None else self.counts[train]


_DIGITS = tuple(str(d) for d in range(10))
_MNIST_CLASSES = tuple(
    f"{d} - {w}" for d, w in enumerate("zero one two three four five six seven eight nine".split())
)


def _both(marker: str) -> dict[bool, str]:
    return {True: marker, False: marker}


_SPECS: dict[str, _Spec] = {
    "CIFAR10": _Spec(
        title="CIFAR-10",
        download_size="about 170 MB for both splits",
        info=DatasetInfo("CIFAR10", in_channels=3, input_size=32, nclasses=10),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        augment=True,
        classes=tuple("airplane automobile bird cat deer dog frog horse ship truck".split()),
        item_shape=(32, 32, 3),
        torchvision_class="CIFAR10",
        torchvision_folder="cifar-10-batches-py",
        torchvision_marker=_both("cifar-10-batches-py"),
        npz_folder="cifar10",
        npz_files={
            True: tuple((f"cifar10_train_{i}.npz", 10_000) for i in range(1, 6)),
            False: (("cifar10_test.npz", 10_000),),
        },
    ),
    "CIFAR100": _Spec(
        title="CIFAR-100",
        download_size="about 170 MB for both splits",
        info=DatasetInfo("CIFAR100", in_channels=3, input_size=32, nclasses=100),
        mean=CIFAR10_MEAN,  # Klachko's reproduction transforms CIFAR-100 as CIFAR-10
        std=CIFAR10_STD,
        augment=True,
        classes=(),  # read from the folder's meta file
        item_shape=(32, 32, 3),
        torchvision_class="CIFAR100",
        torchvision_folder="cifar-100-python",
        torchvision_marker=_both("cifar-100-python"),
    ),
    "SVHN": _Spec(
        title="SVHN",
        download_size="about 180 MB for the train split, 64 MB for the test split",
        info=DatasetInfo("SVHN", in_channels=3, input_size=32, nclasses=10),
        mean=HALF,
        std=HALF,
        augment=False,
        classes=_DIGITS,
        item_shape=(3, 32, 32),
        torchvision_class="SVHN",
        torchvision_folder="svhn",
        torchvision_marker={True: "train_32x32.mat", False: "test_32x32.mat"},
        torchvision_roots=("svhn", ""),
        channels_last=False,
    ),
    "STL10": _Spec(
        title="STL-10",
        download_size="about 2.6 GB for both splits",
        info=DatasetInfo("STL10", in_channels=3, input_size=96, nclasses=10),
        mean=HALF,
        std=HALF,
        augment=False,
        classes=tuple("airplane bird car cat deer dog horse monkey ship truck".split()),
        item_shape=(3, 96, 96),
        torchvision_class="STL10",
        torchvision_folder="stl10_binary",
        torchvision_marker=_both("stl10_binary"),
        channels_last=False,
    ),
    "MNIST": _Spec(
        title="MNIST",
        download_size="about 12 MB for both splits",
        info=DatasetInfo("MNIST", in_channels=1, input_size=28, nclasses=10),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        augment=False,
        classes=_MNIST_CLASSES,
        item_shape=(28, 28),
        torchvision_class="MNIST",
        torchvision_folder="MNIST",
        torchvision_marker=_both(os.path.join("MNIST", "raw")),
        npz_folder="mnist",
        npz_files={
            True: (("mnist_train.npz", 60_000),),
            False: (("mnist_test.npz", 10_000),),
        },
    ),
    "FASHIONMNIST": _Spec(
        title="Fashion-MNIST",
        download_size="about 31 MB for both splits",
        info=DatasetInfo("FashionMNIST", in_channels=1, input_size=28, nclasses=10),
        mean=MNIST_MEAN,  # Klachko's reproduction treats FashionMNIST as MNIST
        std=MNIST_STD,
        augment=False,
        classes=tuple(
            "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot".split(",")
        ),
        item_shape=(28, 28),
        torchvision_class="FashionMNIST",
        torchvision_folder="FashionMNIST",
        torchvision_marker=_both(os.path.join("FashionMNIST", "raw")),
    ),
    "IMAGEFOLDER": _Spec(
        title="ImageFolder",
        info=DatasetInfo("ImageFolder", in_channels=3, input_size=224, nclasses=None),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=True,
        classes=(),  # the subfolders
        item_shape=(),
        torchvision_class="ImageFolder",
        torchvision_folder="",
        torchvision_marker={True: "train", False: "val"},
    ),
}

#: Names accepted by :func:`dataset_info`, :func:`build_transform` and :func:`load_dataset`
#: (case-insensitive; ``-`` and ``_`` are ignored, so ``"cifar-10"`` works too).
DATASETS: tuple[str, ...] = tuple(spec.info.name for spec in _SPECS.values())


def _spec(name: str) -> _Spec:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__} {name!r}")
    key = name.upper().replace("-", "").replace("_", "")
    if key not in _SPECS:  # keys are the canonical names in upper case
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
    """Return the per-image transform of Klachko's data loader.

    - CIFAR-10 and CIFAR-100 training images are randomly cropped (32 pixels with zero padding
      4) and randomly flipped horizontally; their test images are not augmented. Both use
      :data:`CIFAR10_MEAN` and :data:`CIFAR10_STD`.
    - MNIST and FashionMNIST: no augmentation, :data:`MNIST_MEAN` and :data:`MNIST_STD`.
    - SVHN and STL-10: no augmentation, mean and std 0.5 (:data:`HALF`), at their own sizes
      (32 and 96 pixels).
    - ImageFolder (on PIL images or ``uint8`` tensors of any size): training images get a
      random-resized 224-pixel crop and a random horizontal flip; test images are resized to
      256 pixels (shorter side) and center-cropped to 224; :data:`IMAGENET_MEAN` and
      :data:`IMAGENET_STD`.

    All images are scaled to ``[0, 1]`` as ``float32`` before normalization.

    Args:
        name: one of :data:`DATASETS`, case-insensitive.
        train: whether to build the training transform (with augmentation).

    Returns:
        v2.Compose: maps a ``uint8`` ``Tensor[channels, height, width]`` (or a PIL image for
        ImageFolder) to a ``float32`` ``Tensor[channels, input_size, input_size]``.

    Raises:
        ValueError: if ``name`` is unknown.

    Example::

        >>> transform = build_transform("cifar10", train=False)
        >>> transform(torch.zeros(3, 32, 32, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """
    spec = _spec(name)
    size = spec.info.input_size
    steps: list[Any] = []
    if spec.info.name == "ImageFolder":
        steps.append(v2.ToImage())
        if train:
            steps += [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.Resize(256, antialias=True), v2.CenterCrop(size)]
    elif train and spec.augment:
        steps += [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()]
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ]
    return v2.Compose(steps)


def _official_files(spec: _Spec, train: bool) -> list[str]:
    """The files torchvision needs to read one split, relative to its root, as torchvision
    itself lists them (so that a missing one can be named before torchvision is called).

    CIFAR-10, CIFAR-100 and STL-10 need every file of the release whatever the split (their
    classes check them all); MNIST and FashionMNIST their four raw files; SVHN the split's
    ``.mat`` file only. Empty for ImageFolder.
    """
    import torchvision.datasets as tvd

    name = spec.torchvision_class
    if name in ("CIFAR10", "CIFAR100"):
        cifar = getattr(tvd, name)
        files = [f for f, _ in cifar.train_list + cifar.test_list] + [cifar.meta["filename"]]
        return [os.path.join(cifar.base_folder, f) for f in files]
    if name == "STL10":
        return [
            os.path.join(tvd.STL10.base_folder, f)
            for f, _ in tvd.STL10.train_list + tvd.STL10.test_list
        ]
    if name in ("MNIST", "FashionMNIST"):
        mnist = getattr(tvd, name)
        return [
            os.path.join(name, "raw", os.path.splitext(os.path.basename(f))[0])
            for f, _ in mnist.resources
        ]
    if name == "SVHN":
        return [tvd.SVHN.split_list["train" if train else "test"][1]]
    return []
