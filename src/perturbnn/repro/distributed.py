"""Multi-process training with ``torch.distributed``: DDP, sharded loaders and exact metrics.

Launch the example (or any script that calls :func:`perturbnn.repro.training.prepare_run`) with
``torchrun``; nothing else changes::

    torchrun --nproc_per_node=4 examples/cifar10_repro.py --experiment pnn-fanout64-shared

:func:`init_distributed` reads the variables ``torchrun`` sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), joins the process group (backend ``nccl``
on CUDA, ``gloo`` on the CPU) and gives each process its device, ``cuda:LOCAL_RANK``.
:func:`distribute_loaders` gives every process its part of the data: a
``DistributedSampler`` (shuffled, re-seeded each epoch by :func:`set_sampler_epoch`) for
training and a :class:`ShardSampler` for the test set. :func:`wrap_model` checks that the
noise masks are the same on every rank (:func:`check_masks_match`) and wraps the model in
``DistributedDataParallel``, optionally with ``SyncBatchNorm``.

Conventions:

* **Batch size.** ``batch_size`` is per process, as in PyTorch: with ``N`` processes one
  optimizer step sees ``N * batch_size`` training images. The learning rate is not scaled.
* **Exact test accuracy.** :class:`ShardSampler` splits ``range(len(test_set))`` into
  contiguous shards of uneven sizes (they differ by at most one) and never pads, so every
  test image is evaluated exactly once. :func:`evaluate_sharded` sums the integer counts of
  correct predictions and samples, and the per-sample loss, over the ranks; the accuracy is
  the one a single process gets on the same weights (the loss agrees up to rounding).
* **The original-method figure** (:class:`~perturbnn.metrics.OriginalSmoothedAccuracy`) is a
  moving average over the batches of one process. Under DDP it is defined as the figure a
  single process would print for the same weights: the per-sample correctness is gathered
  from all ranks in test-set order, cut into batches of ``batch_size`` as the single-process
  test loader would, and replayed on every rank. It is therefore identical to the
  single-process figure.
* **Noise masks.** Every rank builds its model after ``set_seed(manual_seed)`` with the same
  seed, so the fixed masks (buffers) are equal; :func:`check_masks_match` verifies it from a
  hash of the mask bytes and raises otherwise. Trainable masks are parameters and DDP keeps
  them equal. DDP is built without per-step buffer broadcasts (the masks can hold millions of
  values); instead :func:`broadcast_buffers` copies rank 0's buffers (masks and BatchNorm
  running statistics) to every rank before each evaluation, so every rank evaluates exactly
  the weights rank 0 saves.
* **Files.** Only rank 0 writes logs, checkpoints and ``summary.json`` and prints epoch lines
  (:func:`is_main_process`). Checkpoints hold the unwrapped model's ``state_dict`` (no
  ``module.`` prefix): they load in a single-process run and the other way round.

Source: PyTorch's DDP tutorial and ``torch.utils.data.distributed.DistributedSampler``; the
metric rules of ``STYLE.md`` (sum the counts across ranks, never average per-rank means).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from perturbnn.layers import NoiseMask
from perturbnn.metrics import ExactAccuracy, OriginalSmoothedAccuracy

if TYPE_CHECKING:
    from perturbnn.repro.training import EvalResult

__all__ = [
    "DistributedContext",
    "ShardSampler",
    "broadcast_buffers",
    "check_masks_match",
    "destroy_distributed",
    "distribute_loaders",
    "evaluate_sharded",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "mask_checksums",
    "plain_state_dict",
    "quiet_logger",
    "reduce_train_totals",
    "set_sampler_epoch",
    "unwrap_model",
    "uses_sharded_evaluation",
    "wrap_model",
]

_LOGGER = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Samplers and loaders
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Models: wrapping, masks, buffers, state dicts
# --------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (or ``model``)."""
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def plain_state_dict(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """A copy of ``state_dict`` without the ``module.`` prefix that a DDP wrapper adds.

    Lets a checkpoint written from a wrapped model by other code load into a plain one.
    """
    copy: OrderedDict[str, Any] = OrderedDict(state_dict)
    consume_prefix_in_state_dict_if_present(copy, "module.")
    return copy


def _tensor_hash(tensor: Tensor) -> int:
    """A signed 64-bit hash of a tensor's dtype, shape and bytes."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def mask_checksums(model: nn.Module) -> dict[str, int]:
    """A 64-bit hash of the bytes of every :class:`~perturbnn.NoiseMask`'s masks, by name.

    Equal hashes mean equal masks (bit for bit), fixed or trainable.

    Args:
        model (nn.Module): a model, wrapped in DDP or not.

    Returns:
        dict[str, int]: module name -> hash, in module order.
    """
    return {
        name: _tensor_hash(module.masks)
        for name, module in unwrap_model(model).named_modules()
        if isinstance(module, NoiseMask)
    }


def check_masks_match(model: nn.Module) -> None:
    """Raise unless every rank holds the same noise masks, bit for bit.

    One ``all_gather`` of one 64-bit hash per :class:`~perturbnn.NoiseMask`. A no-op without
    a process group of two or more. Every rank raises, with the same message.

    Raises:
        RuntimeError: if the ranks have different numbers of masks or different mask values;
            the message names the first module that differs and the rank.
    """
    if not _is_initialized() or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    sums = mask_checksums(model)
    names = list(sums)
    device = _collective_device()
    count = torch.tensor([len(names)], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    numbers = [int(c.item()) for c in counts]
    if len(set(numbers)) != 1:
        raise RuntimeError(
            f"the ranks hold different numbers of NoiseMask modules, got {numbers} (by rank): "
            "every rank must build the same model"
        )
    if not names:
        return
    local = torch.tensor([sums[name] for name in names], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    reference = gathered[0].tolist()
    for rank, values in enumerate(gathered[1:], start=1):
        for name, ref, value in zip(names, reference, values.tolist()):
            if ref != value:
                raise RuntimeError(
                    f"noise masks differ across ranks: {name!r} on rank {rank} is not rank 0's; "
                    "every rank must build the model after set_seed(manual_seed) with the same "
                    "seed (perturbnn.repro.training.prepare_run does)"
                )


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (fixed noise masks, BatchNorm statistics) to every rank.

    In place; a no-op without a process group of two or more.
    """
    if not _is_initialized() or dist.get_world_size() < 2:
        return
    with torch.no_grad():
        for buffer in unwrap_model(model).buffers():
            dist.broadcast(buffer, src=src)


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's keyword for "do not broadcast buffers at every forward", for this torch version."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:  # torch >= 2.13
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def wrap_model(
    model: nn.Module, context: DistributedContext, *, sync_bn: bool = False
) -> DistributedDataParallel:
    """Check the masks and wrap ``model`` (already on ``context.device``) in DDP.

    With ``sync_bn`` every ``BatchNorm`` becomes ``SyncBatchNorm`` (statistics over the
    batches of all ranks; the ``state_dict`` keys do not change). DDP broadcasts rank 0's
    parameters and buffers once here and averages gradients at every step; buffers are not
    broadcast at every forward (see :func:`broadcast_buffers`).

    Args:
        model (nn.Module): the model, on ``context.device``.
        context (DistributedContext): from :func:`init_distributed`.
        sync_bn (bool): convert BatchNorm to SyncBatchNorm. Default: ``False``.

    Returns:
        DistributedDataParallel: the wrapped model; ``.module`` is ``model`` (converted).

    Raises:
        ValueError: if ``sync_bn`` is set on a CPU device (SyncBatchNorm runs on CUDA only).
        RuntimeError: if the noise masks differ across ranks (:func:`check_masks_match`).
    """
    if sync_bn and context.device.type != "cuda":
        raise ValueError(
            "sync_bn needs CUDA devices (DDP runs SyncBatchNorm on GPUs only), got device "
            f"{str(context.device)!r}"
        )
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    check_masks_match(model)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    wrapped = DistributedDataParallel(
        model,
        device_ids=device_ids,
        **_no_forward_buffer_sync(),  # type: ignore[arg-type]
    )
    broadcast_buffers(wrapped)  # older torch skips buffers at init without forward broadcasts
    return wrapped


# --------------------------------------------------------------------------------------------
# Metrics across ranks
# --------------------------------------------------------------------------------------------


def reduce_train_totals(model: nn.Module, loss_sum: Tensor, accuracy: ExactAccuracy) -> Tensor:
    """Sum a training epoch's loss and counts over the ranks when ``model`` is DDP-wrapped.

    Args:
        model (nn.Module): the model trained; nothing happens unless it is a
            ``DistributedDataParallel`` in a group of two or more.
        loss_sum (Tensor): this rank's ``sum(batch mean loss * batch size)``, a float64 scalar.
        accuracy (ExactAccuracy): this rank's counts; replaced by the sums in place.

    Returns:
        Tensor: the summed loss (``loss_sum`` itself when nothing is reduced).
    """
    if not isinstance(model, DistributedDataParallel) or not _is_initialized():
        return loss_sum
    if dist.get_world_size() < 2:
        return loss_sum
    accuracy.all_reduce()
    total = loss_sum.detach().clone().to(_collective_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def uses_sharded_evaluation(loader: Any) -> bool:
    """Whether :func:`perturbnn.repro.training.evaluate` must sum ``loader``'s results over ranks.

    ``True`` when a process group of two or more exists and ``loader`` draws from a
    :class:`ShardSampler`.

    Raises:
        ValueError: if the loader draws from a ``DistributedSampler`` under a process group:
            it pads the last shard with repeated images, so counts would not be exact.
    """
    if not _is_initialized() or dist.get_world_size() < 2:
        return False
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        raise ValueError(
            "the test loader draws from a DistributedSampler, which repeats images to even the "
            "shards out; use perturbnn.repro.distributed.ShardSampler for exact counts, got "
            f"{type(sampler).__name__}"
        )
    return isinstance(sampler, ShardSampler)


def _gather_shards(flags: Tensor, sampler: ShardSampler) -> Tensor:
    """All ranks' per-sample flags, concatenated in rank order (= test-set order)."""
    sizes = sampler.shard_sizes
    longest = max(sizes)
    device = _collective_device()
    padded = torch.zeros(longest, dtype=torch.int64, device=device)
    padded[: flags.numel()] = flags.to(device)
    pieces = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)]).cpu()


def evaluate_sharded(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device,
    smoothed: Optional[OriginalSmoothedAccuracy] = None,
    loss_fn: Optional[LossFn] = None,
    progress: bool = False,
) -> EvalResult:
    """Exact loss and accuracy over a test set split across ranks by a :class:`ShardSampler`.

    Called by :func:`perturbnn.repro.training.evaluate`; every rank must call it. First rank 0's
    buffers are broadcast (:func:`broadcast_buffers`), then each rank evaluates its shard with
    the unwrapped model (no DDP collective per batch, so uneven shards are fine), and the loss
    sum, the correct count and the sample count are summed over the ranks. Every rank returns
    the same result.

    Args:
        model (nn.Module): the model, DDP-wrapped or not, on ``device``.
        loader (Iterable): a ``DataLoader`` whose ``sampler`` is a :class:`ShardSampler`; yields
            ``(Tensor[batch_size, channels, height, width], Tensor[batch_size])``.
        device (torch.device): where the batches go.
        smoothed (OriginalSmoothedAccuracy, optional): updated with the batches a single
            process would have seen (the gathered per-sample results in test-set order, in
            batches of ``loader.batch_size``), on every rank.
        loss_fn (callable, optional): mean loss over a batch. Default: cross-entropy.
        progress (bool): show a tqdm bar on rank 0.

    Returns:
        perturbnn.repro.training.EvalResult: loss, accuracy, ``correct`` and ``total`` over the whole
        test set.

    Raises:
        ValueError: if the sampler is not a :class:`ShardSampler` of the group's size, the
            loader yields something other than ``(inputs, targets)``, or the summed total
            differs from the data set size.
    """
    from perturbnn.repro.training import EvalResult, _progress

    sampler = getattr(loader, "sampler", None)
    batch_size = getattr(loader, "batch_size", None)
    world = dist.get_world_size()
    if not isinstance(sampler, ShardSampler) or sampler.num_replicas != world:
        raise ValueError(
            f"the test loader needs a ShardSampler over {world} ranks, got {sampler!r}"
        )
    module = unwrap_model(model)
    broadcast_buffers(module)
    criterion: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    accuracy = ExactAccuracy()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    flags: list[Tensor] = []
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            batches = _progress(loader, enabled=progress and dist.get_rank() == 0, desc="test")
            for batch in batches:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError(
                        f"the loader must yield (inputs, targets) pairs, got {type(batch).__name__}"
                    )
                inputs = batch[0].to(device, non_blocking=True)
                targets = batch[1].to(device, non_blocking=True)
                outputs = module(inputs)
                loss_sum += criterion(outputs, targets).to(torch.float64) * targets.shape[0]
                accuracy.update(outputs, targets)
                flags.append(outputs.argmax(dim=1).eq(targets).to(torch.int64))
    finally:
        module.train(was_training)
    if accuracy.total != len(sampler):
        raise ValueError(
            f"rank {sampler.rank} evaluated {accuracy.total} samples but its shard holds "
            f"{len(sampler)}"
        )
    accuracy.all_reduce()
    total_loss = loss_sum.to(_collective_device())
    dist.all_reduce(total_loss, op=dist.ReduceOp.SUM)
    if accuracy.total == 0:
        raise ValueError("the evaluation loader yielded no sample on any rank")
    value = accuracy.compute(expected_total=sampler.dataset_size)
    if smoothed is not None:
        if not isinstance(batch_size, int):
            raise ValueError(
                f"the original-method figure needs the loader's batch_size, got {batch_size!r}"
            )
        local = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.int64)
        sequence = _gather_shards(local, sampler)
        for chunk in torch.split(sequence, batch_size):
            smoothed.update(chunk, torch.ones_like(chunk))
    return EvalResult(
        loss=total_loss.item() / accuracy.total,
        accuracy=value,
        correct=accuracy.correct,
        total=accuracy.total,
    )
