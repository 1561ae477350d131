"""Joining and leaving the ``torch.distributed`` process group, ranks, and one-flag collectives.

Source: PyTorch's DDP tutorial and the variables ``torchrun`` sets.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "any_rank",
    "destroy_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "quiet_logger",
]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a multi-process run.

    Attributes:
        rank (int): global rank, ``0 <= rank < world_size``.
        local_rank (int): rank on this machine (``LOCAL_RANK``); the CUDA device index.
        world_size (int): number of processes, at least 2.
        backend (str): ``"nccl"`` or ``"gloo"``.
        device (torch.device): this process's device.
        owns_group (bool): ``True`` if :func:`init_distributed` created the process group
            (and :func:`destroy_distributed` should end it).
    """

    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """``True`` on rank 0, the process that prints and writes files."""
        return self.rank == 0


def _is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: Optional[int] = None) -> Optional[int]:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def get_world_size() -> int:
    """Number of processes: the process group's size, else ``$WORLD_SIZE``, else ``1``.

    Raises:
        ValueError: if ``WORLD_SIZE`` is set but not a positive integer.
    """
    if _is_initialized():
        return dist.get_world_size()
    world = _env_int("WORLD_SIZE", 1)
    assert world is not None
    if world < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be positive, got {world}")
    return world


def get_rank() -> int:
    """This process's global rank: the process group's, else ``$RANK``, else ``0``.

    Works before the process group exists (``torchrun`` sets ``RANK``), so a script can keep
    quiet on other ranks from its first line.

    Raises:
        ValueError: if ``RANK`` is set but not a non-negative integer.
    """
    if _is_initialized():
        return dist.get_rank()
    rank = _env_int("RANK", 0)
    assert rank is not None
    if rank < 0:
        raise ValueError(f"environment variable RANK must be non-negative, got {rank}")
    return rank


def is_main_process() -> bool:
    """``True`` on rank 0 (and in a single-process run): the process that prints and writes."""
    return get_rank() == 0


def _distributed_device(device: str, local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` for ``"auto"`` (with CUDA) or ``"cuda"``; the CPU for ``"cpu"``."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device not in ("auto", "cuda"):
        raise ValueError(
            "under torchrun each process uses cuda:LOCAL_RANK; pass device 'auto', 'cuda' or "
            f"'cpu' (restrict the GPUs with CUDA_VISIBLE_DEVICES), got {device!r}"
        )
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {local_rank} has no GPU: this machine has {count}; start at most "
            f"{count} processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(
    device: str = "auto", *, backend: Optional[str] = None
) -> Optional[DistributedContext]:
    """Join the process group when launched by ``torchrun`` with two or more processes.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` unset or ``1`` it
    does nothing and returns ``None`` (a single-process run). Otherwise it sets the CUDA device
    to ``LOCAL_RANK`` (on CUDA) and calls ``torch.distributed.init_process_group`` with the
    ``env://`` rendezvous of ``torchrun``. A process group that already exists is used as it
    is (and left to its creator to destroy).

    Args:
        device (str): ``"auto"`` (CUDA if available, else CPU), ``"cuda"`` or ``"cpu"``; the
            device index always comes from ``LOCAL_RANK``.
        backend (str, optional): ``"nccl"`` or ``"gloo"``. Default: ``nccl`` on CUDA, ``gloo``
            on the CPU.

    Returns:
        DistributedContext or None: ``None`` for a single-process run.

    Raises:
        ValueError: if ``RANK`` or ``LOCAL_RANK`` is missing or out of range, ``device`` is
            ``"cuda:N"`` or CUDA is requested but unavailable, or ``LOCAL_RANK`` exceeds the
            number of GPUs.

    Example::

        >>> init_distributed("cpu") is None  # not started by torchrun
        True
    """
    if _is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        if world < 2:
            return None
        local = _env_int("LOCAL_RANK", rank)
        assert local is not None
        dev = _distributed_device(device, local)  # gloo also takes CUDA tensors
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend_name = str(dist.get_backend())
        return DistributedContext(rank, local, world, backend_name, dev, owns_group=False)
    world = get_world_size()
    if world < 2:
        return None
    env_rank, env_local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if env_rank is None or env_local is None:
        raise ValueError(
            f"WORLD_SIZE is {world} but RANK or LOCAL_RANK is not set, got RANK="
            f"{os.environ.get('RANK')!r}, LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}; "
            "start the script with torchrun"
        )
    rank, local = env_rank, env_local
    if not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, {world}), got {rank}")
    if local < 0:
        raise ValueError(f"LOCAL_RANK must be non-negative, got {local}")
    dev = _distributed_device(device, local)
    chosen = backend if backend is not None else ("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=chosen, init_method="env://", world_size=world, rank=rank)
    _LOGGER.debug("rank %d of %d joined the %s group on %s", rank, world, chosen, dev)
    return DistributedContext(rank, local, world, chosen, dev, owns_group=True)


def destroy_distributed(context: Optional[DistributedContext] = None) -> None:
    """End the process group, if there is one (and ``context``, if given, created it).

    No barrier: it is safe to call in a ``finally`` block after an error on one rank.
    """
    if context is not None and not context.owns_group:
        return
    if _is_initialized():
        dist.destroy_process_group()


def quiet_logger(logger: logging.Logger) -> logging.Logger:
    """A child of ``logger`` that drops INFO and DEBUG lines: for ranks other than 0.

    Warnings and errors still reach ``logger``'s handlers.
    """
    child = logger.getChild(f"rank{get_rank()}")
    child.setLevel(logging.WARNING)
    return child


def _collective_device() -> torch.device:
    """Where small tensors for a collective go: the current GPU for NCCL, else the CPU."""
    if str(dist.get_backend()) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """For each flag, whether it is set on any rank (one small all-reduce); local outside DDP.

    Used by the training loop so that every rank stops at the same step when one rank sees a
    signal or a non-finite loss; a rank that stopped alone would leave the others waiting in
    DDP's gradient all-reduce.

    Args:
        *flags: this rank's flags.

    Returns:
        The flags OR-ed over all ranks, in the same order.
    """
    if not _is_initialized() or get_world_size() == 1:
        return tuple(flags)
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in tensor.tolist())
