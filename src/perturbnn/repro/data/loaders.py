"""Class-balanced subsets and the training and test data loaders."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from perturbnn._validation import check_positive_int
from perturbnn.repro.data.catalog import (
    dataset_info,
)
from perturbnn.repro.data.files import (
    load_dataset,
)
from perturbnn.repro.data.seeding import SeededAugmentation

__all__ = ["TEST_SUBSET_SEED", "class_balanced_subset", "dataset_classes", "make_loaders"]

logger = logging.getLogger(__name__)
StrPath = Union[str, "os.PathLike[str]"]


#: Seed of every test subset: fixed, so that every run of every seed is tested on the same
#: images (differences between runs are then differences between the networks, not between
#: test sets). Training subsets are drawn with the run's own seed (``manual_seed``).
TEST_SUBSET_SEED = 0


def class_balanced_subset(
    targets: Union[Tensor, npt.ArrayLike], n: int, seed: int = TEST_SUBSET_SEED
) -> list[int]:
    """Draw ``n`` indices, as evenly as possible over the classes, with a seed, shuffled.

    With ``K`` distinct labels in ``targets``, each class gets ``n // K`` examples and the
    ``n % K`` classes with the lowest labels get one more. The examples of a class are drawn
    at random without replacement (``numpy.random.default_rng(seed)``), and the ``n`` indices
    are returned in a random order, so that every stretch of the order (every test batch, the
    last batches in particular) is as representative of the classes as a stretch of the
    shuffled full data set. The same ``targets``, ``n`` and ``seed`` always give the same list.

    The reproduction draws the training subset with the run's ``manual_seed`` (runs of
    different seeds train on different images, so their spread includes that of the data) and
    the test subset with the fixed :data:`TEST_SUBSET_SEED` (every run is tested on the same
    images).

    Args:
        targets: labels ``Tensor[N]`` (or an array or sequence) of an integer dtype.
        n: number of indices, ``1 <= n <= N``.
        seed: seed of the draw and of the order. Default: :data:`TEST_SUBSET_SEED`.

    Returns:
        list[int]: ``n`` distinct indices into ``targets``, in a shuffled order.

    Raises:
        TypeError: if ``n`` or ``seed`` is not an int.
        ValueError: if ``targets`` is not 1-D integer, ``n`` is out of range, or a class has
            fewer examples than its share.

    Example::

        >>> labels = [0, 1, 0, 1, 2, 2, 0]
        >>> sorted(labels[i] for i in class_balanced_subset(labels, 4, seed=1))
        [0, 0, 1, 2]
    """
    labels = targets.detach().cpu().numpy() if isinstance(targets, Tensor) else np.asarray(targets)
    if labels.ndim != 1 or (labels.size > 0 and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"targets must be 1-D integer labels, got dtype {labels.dtype} and shape {labels.shape}"
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not 1 <= n <= labels.shape[0]:
        raise ValueError(f"n must be in 1..{labels.shape[0]} (the number of targets), got {n}")
    rng = np.random.default_rng(int(seed))
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
        chosen.append(rng.choice(members, size=share, replace=False))
    picked = np.concatenate(chosen)
    return [int(i) for i in picked[rng.permutation(picked.shape[0])]]


def dataset_classes(dataset: Dataset[Any]) -> Optional[list[str]]:
    """The class names of ``dataset``, looked for through ``Subset`` and other wrappers.

    Returns:
        list[str] or None: the ``.classes`` of the first data set in the chain of ``.dataset``
        attributes that has one, or ``None``.
    """
    current: Any = dataset
    for _ in range(16):  # wrappers nest a few levels at most
        classes = vars(current).get("classes") if hasattr(current, "__dict__") else None
        if classes is not None:
            return list(classes)
        current = vars(current).get("dataset") if hasattr(current, "__dict__") else None
        if current is None:
            return None
    return None


def _image_shape(dataset: Dataset[Any], which: str) -> tuple[int, ...]:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{which} data set is empty")
    return tuple(dataset[0][0].shape)


def _subset(dataset: Dataset[Any], n: Optional[int], which: str, seed: int) -> Dataset[Any]:
    if n is None:
        return dataset
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{which}_subset needs a data set with a .targets attribute")
    size = len(targets)
    if isinstance(n, int) and not isinstance(n, bool) and not 1 <= n <= size:
        raise ValueError(
            f"{which}_subset must be in 1..{size} (the size of the {which} set), got {n}"
        )
    return Subset(dataset, class_balanced_subset(targets, n, seed))


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
    download: bool = False,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Build the training and test loaders.

    The training loader shuffles with a ``torch.Generator`` seeded by ``seed`` (unless
    ``train_sampler`` is given), so the order is the same from run to run; its data set is
    wrapped in :class:`~perturbnn.repro.data.seeding.SeededAugmentation`, so the random
    augmentation of every sample depends on ``seed``, the epoch and the sample only (not on
    ``num_workers``). A last training batch of a single sample is dropped (BatchNorm cannot
    train on one sample; Klachko's loader would stop with an error there). The test loader
    keeps the data set's order and never drops a batch.

    Args:
        dataset_train: a name from :data:`DATASETS` (loaded with :func:`load_dataset` and its
            default training transform) or a data set.
        dataset_test: the same for the test split.
        data_dir: where to load named data sets from; see :func:`load_dataset`.
        batch_size: examples per batch, positive.
        train_subset: if given, train on :func:`class_balanced_subset` ``(targets, n, seed)``
            of the training set only (needs a ``.targets`` attribute).
        test_subset: the same for the test set, drawn with the fixed :data:`TEST_SUBSET_SEED`.
        num_workers: loader worker processes. Default: ``0``.
        seed: seed of the shuffling generator and of the augmentation. Default: ``1``.
        drop_last: drop an incomplete last training batch. Default: ``False``.
        train_sampler: a sampler for the training set (for instance a
            ``DistributedSampler``); it replaces the shuffling.
        test_sampler: a sampler for the test set.
        pin_memory: passed to both loaders. Default: ``False``.
        download: download a named data set that is missing (see :func:`load_dataset`).
            Default: ``False``.

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
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
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
        load_dataset(dataset_train, data_dir, train=True, download=download)
        if isinstance(dataset_train, str)
        else dataset_train
    )
    test_set: Dataset[Any] = (
        load_dataset(dataset_test, data_dir, train=False, download=download)
        if isinstance(dataset_test, str)
        else dataset_test
    )
    shape_train, shape_test = _image_shape(train_set, "train"), _image_shape(test_set, "test")
    if shape_train != shape_test:
        raise ValueError(
            f"train and test images must have the same shape, got {shape_train} and {shape_test}"
        )
    train_set = SeededAugmentation(_subset(train_set, train_subset, "train", seed), seed)
    test_set = _subset(test_set, test_subset, "test", TEST_SUBSET_SEED)
    if not drop_last and train_sampler is None and len(train_set) % batch_size == 1:
        drop_last = len(train_set) > 1
        logger.info(
            "the last training batch would hold a single sample (%d samples, batch size %d); "
            "it is dropped every epoch, since BatchNorm cannot train on one sample",
            len(train_set),
            batch_size,
        )

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
