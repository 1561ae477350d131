"""Random augmentation that depends on the run's seed, the epoch and the sample, nothing else.

A random transform (crop, flip) draws from torch's global CPU generator of the process that
runs it: the main process with ``num_workers=0`` (where dropout draws from it too), a worker
seeded by the loader otherwise. So the augmentation, and every number after it, used to change
with ``--num-workers``. :class:`SeededAugmentation` gives every sample of every epoch its own
seed instead, so the batches are the same bit for bit with any number of workers, in any
process, and after a resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["SeededAugmentation", "set_loader_epoch"]


class SeededAugmentation(Dataset[Any]):
    """Wrap ``dataset`` so that item ``i`` in epoch ``e`` draws its randomness from one seed.

    ``dataset[i]`` runs with torch's CPU generator seeded from ``(seed, epoch, i)`` (through
    ``numpy.random.SeedSequence``, so nearby values give unrelated streams); the generator's
    previous state is restored afterwards, so the caller's random numbers (dropout, the noise
    of a later layer) are untouched. Call :meth:`set_epoch` before each epoch (the loop does,
    through :func:`set_loader_epoch`); worker processes receive the new epoch with the data set
    when the loader starts them.

    Args:
        dataset: a map-style data set whose transform draws from torch's global generator
            (torchvision's transforms do).
        seed: the run's seed (``--manual-seed``), a non-negative int.

    Attributes:
        dataset: the wrapped data set.
        seed (int): the run's seed.
        epoch (int): the current epoch index (0 until :meth:`set_epoch`).

    Raises:
        ValueError: if ``seed`` is negative or not an int.

    Example::

        >>> from torchvision.transforms import v2
        >>> base = [(torch.arange(16.0).view(1, 4, 4), 0)]
        >>> class Flip(torch.utils.data.Dataset):
        ...     def __len__(self): return 1
        ...     def __getitem__(self, i): return v2.RandomHorizontalFlip()(base[i][0]), 0
        >>> data = SeededAugmentation(Flip(), seed=1)
        >>> torch.equal(data[0][0], data[0][0])
        True
    """

    def __init__(self, dataset: Dataset[Any], seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the seeds of epoch index ``epoch`` (a non-negative int) from now on."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def sample_seed(self, index: int) -> int:
        """The 64-bit seed of item ``index`` in the current epoch."""
        words = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(
            2, dtype=np.uint32
        )
        return int(words[0]) | (int(words[1]) << 32)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.sample_seed(index))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # ``targets``, ``classes`` and the like come from the wrapped data set. Special names
        # do not: a forwarded ``__getitems__`` (``Subset`` has one) would let the DataLoader
        # fetch whole batches from the wrapped set, bypassing the seeding.
        if name == "dataset" or name.startswith("__"):  # "dataset": unset while unpickling
            raise AttributeError(name)
        return getattr(self.dataset, name)


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on ``loader.dataset`` if it is a :class:`SeededAugmentation`.

    Args:
        loader: a ``DataLoader`` (anything else is ignored).
        epoch: the epoch index, counted from 0.
    """
    if isinstance(loader, DataLoader) and isinstance(loader.dataset, SeededAugmentation):
        loader.dataset.set_epoch(epoch)
