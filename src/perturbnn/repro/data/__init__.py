"""CIFAR-10 and MNIST as in-memory tensors, their transforms, and the data loaders.

:func:`load_dataset` reads either the offline ``.npz`` copies
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

When none is complete, ``load_dataset(..., download=True)`` downloads torchvision's layout
into ``data_dir`` (:func:`download_dataset`: torchvision's URLs and MD5 checks, in a temporary
folder first); without ``download``, :class:`DataNotFoundError` says how to get the data and
where it was looked for, in one line (a failed download raises :class:`DataDownloadError`). A file
or folder that exists but cannot be read, or holds arrays of the wrong shape, dtype, label range
or count, raises :class:`DataCorruptError` naming it.
"""

from __future__ import annotations

from perturbnn.repro.data.catalog import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    MNIST_MEAN,
    MNIST_STD,
    DatasetInfo,
    build_transform,
    dataset_info,
)
from perturbnn.repro.data.download import download_dataset, source_urls
from perturbnn.repro.data.errors import (
    DATA_DIR_ENV,
    DataCorruptError,
    DataDownloadError,
    DataNotFoundError,
)
from perturbnn.repro.data.files import ArrayImageDataset, load_dataset, resolve_data_dir
from perturbnn.repro.data.loaders import (
    TEST_SUBSET_SEED,
    class_balanced_subset,
    dataset_classes,
    make_loaders,
)
from perturbnn.repro.data.seeding import SeededAugmentation, set_loader_epoch

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "DATA_DIR_ENV",
    "MNIST_MEAN",
    "MNIST_STD",
    "TEST_SUBSET_SEED",
    "ArrayImageDataset",
    "DataCorruptError",
    "DataDownloadError",
    "DataNotFoundError",
    "DatasetInfo",
    "SeededAugmentation",
    "build_transform",
    "class_balanced_subset",
    "dataset_classes",
    "dataset_info",
    "download_dataset",
    "load_dataset",
    "make_loaders",
    "resolve_data_dir",
    "set_loader_epoch",
    "source_urls",
]
