"""Metrics summed across ranks: training totals and the exact sharded evaluation.

Source: the metric rules of ``STYLE.md`` (sum the counts across ranks, never average per-rank means).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from perturbnn.metrics import ExactAccuracy, OriginalSmoothedAccuracy
from perturbnn.repro.distributed.models import (
    broadcast_buffers,
    unwrap_model,
)
from perturbnn.repro.distributed.process_group import (
    _collective_device,
    _is_initialized,
)
from perturbnn.repro.distributed.sampling import (
    ShardSampler,
)
from perturbnn.repro.progress import _progress
from perturbnn.repro.results import EvalResult

__all__ = ["evaluate_sharded", "reduce_train_totals", "uses_sharded_evaluation"]

LossFn = Callable[[Tensor, Tensor], Tensor]


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
    """Whether :func:`perturbnn.repro.loop.evaluate` must sum ``loader``'s results over ranks.

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

    Called by :func:`perturbnn.repro.loop.evaluate`; every rank must call it. First rank 0's
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
        perturbnn.repro.results.EvalResult: loss, accuracy, ``correct`` and ``total`` over the whole
        test set.

    Raises:
        ValueError: if the sampler is not a :class:`ShardSampler` of the group's size, the
            loader yields something other than ``(inputs, targets)``, or the summed total
            differs from the data set size.
    """
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
