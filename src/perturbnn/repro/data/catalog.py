"""The data sets the harness knows (CIFAR-10, MNIST): their shapes, statistics and transforms.

Source: the original PNN code's normalization constants (see :data:`CIFAR10_STD`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
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

#: Name of the environment variable read by :func:`resolve_data_dir`.


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
