"""Samplers and loaders for several processes: shuffled training shards, exact test shards.

Source: ``torch.utils.data.distributed.DistributedSampler``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, Optional

from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from perturbnn.repro.distributed.process_group import (
    get_rank,
    get_world_size,
)

__all__ = ["ShardSampler", "distribute_loaders", "set_sampler_epoch"]


class ShardSampler(Sampler[int]):
    """Contiguous, unpadded shards of ``range(len(dataset))``: each index on exactly one rank.

    Rank ``r`` of ``num_replicas`` gets indices ``[n * r // num_replicas,
    n * (r + 1) // num_replicas)`` in order, where ``n = len(dataset)``: the shards differ in
    size by at most one, and concatenated in rank order they are the data set in order. Unlike
    ``DistributedSampler`` nothing is repeated to even the shards out, so summed counts are
    exact. For evaluation only (no shuffling).

    Args:
        dataset (Sized): the data set (only its length is used).
        num_replicas (int, optional): number of processes. Default: :func:`get_world_size`.
        rank (int, optional): this process's rank. Default: :func:`get_rank`.

    Attributes:
        start (int), stop (int): this rank's indices are ``range(start, stop)``.

    Raises:
        ValueError: if ``num_replicas`` is not positive or ``rank`` is outside
            ``[0, num_replicas)``.

    Example::

        >>> [list(ShardSampler(range(5), num_replicas=2, rank=r)) for r in range(2)]
        [[0, 1], [2, 3, 4]]
    """

    def __init__(
        self, dataset: Sized, num_replicas: Optional[int] = None, rank: Optional[int] = None
    ) -> None:
        replicas = get_world_size() if num_replicas is None else num_replicas
        index = get_rank() if rank is None else rank
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"num_replicas must be a positive int, got {replicas!r}")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < replicas:
            raise ValueError(f"rank must be an int in [0, {replicas}), got {index!r}")
        self.dataset_size = len(dataset)
        self.num_replicas = replicas
        self.rank = index
        self.start, self.stop = self.bounds(index)

    def bounds(self, rank: int) -> tuple[int, int]:
        """``(start, stop)`` of rank ``rank``'s shard."""
        n, w = self.dataset_size, self.num_replicas
        return n * rank // w, n * (rank + 1) // w

    @property
    def shard_sizes(self) -> list[int]:
        """Size of every rank's shard, in rank order; they sum to ``len(dataset)``."""
        return [stop - start for start, stop in map(self.bounds, range(self.num_replicas))]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(range({self.start}, {self.stop}) of {self.dataset_size}, "
            f"rank={self.rank}, num_replicas={self.num_replicas})"
        )


def _with_sampler(loader: DataLoader[Any], sampler: Sampler[Any]) -> DataLoader[Any]:
    """A copy of ``loader`` (same data, batch size, workers) that draws from ``sampler``."""
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers if workers > 0 else False,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
    )


def distribute_loaders(
    train_loader: DataLoader[Any],
    test_loader: DataLoader[Any],
    *,
    seed: int,
    num_replicas: Optional[int] = None,
    rank: Optional[int] = None,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Give each process its part of the data: shuffled training shards, exact test shards.

    The training loader gets a ``DistributedSampler(shuffle=True, seed=seed)`` (it pads the
    last shard with repeated images so that every rank takes the same number of steps; call
    :func:`set_sampler_epoch` every epoch); the test loader gets a :class:`ShardSampler` (no
    padding). Batch size, workers, pinning and ``drop_last`` are kept: ``batch_size`` is per
    process.

    Args:
        train_loader (DataLoader), test_loader (DataLoader): single-process loaders, e.g. from
            :func:`perturbnn.repro.data.make_loaders`.
        seed (int): the training sampler's shuffling seed (the same on every rank).
        num_replicas (int, optional), rank (int, optional): default: the process group's.

    Returns:
        tuple[DataLoader, DataLoader]: ``(train_loader, test_loader)`` for this rank.

    Raises:
        ValueError: if a loader uses a custom ``batch_sampler`` (no ``batch_size``).
    """
    replicas = get_world_size() if num_replicas is None else num_replicas
    index = get_rank() if rank is None else rank
    for name, loader in (("train_loader", train_loader), ("test_loader", test_loader)):
        if loader.batch_size is None:
            raise ValueError(f"{name} must have a batch_size (no custom batch_sampler), got None")
    train_sampler: DistributedSampler[Any] = DistributedSampler(
        train_loader.dataset, num_replicas=replicas, rank=index, shuffle=True, seed=seed
    )
    test_sampler = ShardSampler(test_loader.dataset, num_replicas=replicas, rank=index)  # type: ignore[arg-type]
    return _with_sampler(train_loader, train_sampler), _with_sampler(test_loader, test_sampler)


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Call ``loader.sampler.set_epoch(epoch)`` if it has one (a ``DistributedSampler``).

    Without it a ``DistributedSampler`` shuffles every epoch the same way.
    """
    sampler = getattr(loader, "sampler", None)
    set_epoch = getattr(sampler, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
