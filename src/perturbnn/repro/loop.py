"""One epoch of training and one pass of evaluation.

The loop reports two test figures each epoch:

* the **exact** test accuracy (:class:`~perturbnn.metrics.ExactAccuracy`: correct / total over
  the whole test set), the number to report;
* the **original-method** figure (:class:`~perturbnn.metrics.OriginalSmoothedAccuracy`): the
  per-batch accuracy smoothed ``0.7 * previous + 0.3 * current`` and never reset, as the
  original PNN code printed it. It is kept only to show how far it is from the exact figure.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterable
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from perturbnn.metrics import ExactAccuracy, OriginalSmoothedAccuracy
from perturbnn.repro import distributed as _distributed
from perturbnn.repro.progress import _batches, _expected_total
from perturbnn.repro.results import EvalResult, TrainResult
from perturbnn.repro.runtime import (
    DeviceLike,
    LossFn,
    _device_of,
    adapt_threads,
)
from perturbnn.repro.signals import StopOnSignal, TrainingInterrupted

__all__ = ["evaluate", "train_one_epoch"]


#: Steps between two checks of the training loss on an accelerator (each check synchronizes).
_FINITE_CHECK_EVERY = 50


def _check_finite(first_bad: Tensor, bad_value: Tensor, *, epoch: int, at_step: int) -> None:
    """Raise ``FloatingPointError`` if ``first_bad`` (a 1-based step, 0: none) is set."""
    step = int(first_bad.item())
    if step == 0:
        return
    late = f" (detected at step {at_step})" if at_step != step else ""
    raise FloatingPointError(
        f"training loss is {float(bad_value.item())} at epoch {epoch}, step {step}{late}: "
        "the run diverged (try a lower learning rate)"
    )


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: Optimizer,
    *,
    device: DeviceLike,
    loss_fn: Optional[LossFn] = None,
    progress: bool = False,
    epoch: int = 0,
    stop: Optional[StopOnSignal] = None,
) -> TrainResult:
    """Train ``model`` for one pass over ``loader``.

    The loss of every step is checked: a NaN or infinite loss stops the epoch with a
    ``FloatingPointError`` naming the epoch and the step. On the CPU the check runs at every
    step, before ``backward()``, so the model keeps its last good weights; on an accelerator it
    runs every 50 steps (and at the end) to avoid a synchronization per step, and the message
    still names the first bad step.

    Args:
        model (nn.Module): maps ``Tensor[batch_size, channels, height, width]`` to logits
            ``Tensor[batch_size, nclasses]``; it must already be on ``device``.
        loader (Iterable): yields ``(inputs, targets)`` with ``targets`` a
            ``Tensor[batch_size]`` of class indices.
        optimizer (Optimizer): steps once per batch.
        device (str or torch.device): where the batches go.
        loss_fn (callable, optional): ``loss_fn(logits, targets)`` returning the *mean* loss
            over the batch. Default: ``nn.CrossEntropyLoss()``.
        progress (bool): show a tqdm bar (needs tqdm). Default: ``False``.
        epoch (int): 1-based epoch number, for the bar and messages only.
        stop (StopOnSignal, optional): polled after every step; once it reports a signal,
            the epoch ends with :class:`TrainingInterrupted` (the model has then seen part of
            the epoch only).

    Returns:
        TrainResult: per-sample mean loss, exact training accuracy, steps and samples.

    Raises:
        ValueError: if the loader yields no batch or not ``(inputs, targets)`` pairs.
        FloatingPointError: if a step's loss is NaN or infinite (the run diverged); the
            message names the epoch and the step.
        TrainingInterrupted: if ``stop`` reports a signal.
    """
    dev = _device_of(device)
    criterion: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    model.train()
    accuracy = ExactAccuracy()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    steps = 0
    check_every = 1 if dev.type == "cpu" else _FINITE_CHECK_EVERY
    synced = _distributed.get_world_size() > 1 and torch.distributed.is_initialized()
    first_bad = torch.zeros((), dtype=torch.int64, device=dev)  # 1-based step; 0: none yet
    bad_value = torch.zeros((), dtype=torch.float32, device=dev)
    for inputs, targets, bar in _batches(
        loader, dev, progress=progress, desc=f"epoch {epoch} train"
    ):
        adapt_threads()  # fewer threads while other processes keep the CPUs busy
        optimizer.zero_grad(set_to_none=True)
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        newly_bad = (first_bad == 0) & ~torch.isfinite(loss.detach())
        first_bad = torch.where(newly_bad, steps + 1, first_bad)
        bad_value = torch.where(newly_bad, loss.detach().float(), bad_value)
        if synced:  # under DDP every rank must stop at the same step, before backward()
            local_stop = stop is not None and stop.requested()
            any_bad, any_stop = _distributed.any_rank(bool(first_bad.item()), local_stop)
            if any_bad and not first_bad.item():
                raise FloatingPointError(
                    f"training loss is not finite on another rank at epoch {epoch}, "
                    f"step {steps + 1}"
                )
            if any_stop:
                raise TrainingInterrupted(
                    f"a stop signal reached a rank in epoch {epoch} after step {steps}",
                    signum=(stop.signum if stop is not None else None) or signal.SIGTERM,
                )
        if synced or (steps + 1) % check_every == 0:
            _check_finite(first_bad, bad_value, epoch=epoch, at_step=steps + 1)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        batch_size = targets.shape[0]
        loss_sum += loss.detach().to(torch.float64) * batch_size
        accuracy.update(outputs.detach(), targets)
        steps += 1
        if progress and hasattr(bar, "set_postfix") and steps % 20 == 0:
            bar.set_postfix(
                loss=f"{loss_sum.item() / accuracy.total:.3f}", acc=f"{accuracy.compute():.2%}"
            )
        if stop is not None and stop.requested():
            raise TrainingInterrupted(
                f"{stop.signal_name} received in epoch {epoch} after step {steps}",
                signum=stop.signum or 0,
            )
    if steps == 0:
        raise ValueError(f"the training loader yielded no batch in epoch {epoch}")
    _check_finite(first_bad, bad_value, epoch=epoch, at_step=steps)
    # Under DDP: loss and counts summed over the ranks (samples include the sampler's padding).
    loss_sum = _distributed.reduce_train_totals(model, loss_sum, accuracy)
    mean_loss = loss_sum.item() / accuracy.total
    if not math.isfinite(mean_loss):
        raise FloatingPointError(
            f"training loss is {mean_loss} in epoch {epoch}: the run diverged "
            "(try a lower learning rate)"
        )
    return TrainResult(
        loss=mean_loss, accuracy=accuracy.compute(), steps=steps, samples=accuracy.total
    )


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: DeviceLike,
    smoothed: Optional[OriginalSmoothedAccuracy] = None,
    loss_fn: Optional[LossFn] = None,
    progress: bool = False,
) -> EvalResult:
    """Exact loss and accuracy of ``model`` over ``loader``, in eval mode without gradients.

    The model's training mode is restored afterwards. Under ``torch.distributed``, when
    ``loader`` draws from a :class:`~perturbnn.repro.distributed.ShardSampler`, every rank evaluates
    its shard and the counts are summed over the ranks
    (:func:`~perturbnn.repro.distributed.evaluate_sharded`): the result is the whole test set's.

    Args:
        model (nn.Module): maps ``Tensor[batch_size, channels, height, width]`` to logits
            ``Tensor[batch_size, nclasses]``; it must already be on ``device``.
        loader (Iterable): yields ``(inputs, targets)``; every sample counts once.
        device (str or torch.device): where the batches go.
        smoothed (OriginalSmoothedAccuracy, optional): if given, updated with every batch, as
            the original code did. Call its ``end_epoch()`` afterwards to record the figure.
        loss_fn (callable, optional): ``loss_fn(logits, targets)`` returning the *mean* loss
            over the batch. Default: ``nn.CrossEntropyLoss()``.
        progress (bool): show a tqdm bar (needs tqdm). Default: ``False``.

    Returns:
        EvalResult: per-sample mean loss, exact accuracy, ``correct``, ``total`` and (outside
        sharded evaluation) ``sample_correct``, each sample's correctness in the loader's order.

    Raises:
        ValueError: if the loader yields no batch, or a standard ``DataLoader`` yields a
            number of samples different from its sampler's length, or (under a process
            group) the loader draws from a ``DistributedSampler``, which repeats samples.
    """
    dev = _device_of(device)
    if _distributed.uses_sharded_evaluation(loader):
        return _distributed.evaluate_sharded(
            model, loader, device=dev, smoothed=smoothed, loss_fn=loss_fn, progress=progress
        )
    criterion: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    accuracy = ExactAccuracy()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    hits: list[Tensor] = []  # per-sample correctness, kept on the device until the end
    try:
        with torch.no_grad():
            for inputs, targets, _ in _batches(loader, dev, progress=progress, desc="test"):
                adapt_threads()
                outputs = model(inputs)
                loss_sum += criterion(outputs, targets).to(torch.float64) * targets.shape[0]
                accuracy.update(outputs, targets)
                if smoothed is not None:
                    smoothed.update(outputs, targets)
                if outputs.dim() == 2:
                    hits.append(outputs.argmax(dim=1).eq(targets.to(outputs.device)))
    finally:
        model.train(was_training)
    if accuracy.total == 0:
        raise ValueError("the evaluation loader yielded no sample")
    value = accuracy.compute(expected_total=_expected_total(loader))
    sample_correct = torch.cat(hits).cpu() if hits else None
    return EvalResult(
        loss=loss_sum.item() / accuracy.total,
        accuracy=value,
        correct=accuracy.correct,
        total=accuracy.total,
        sample_correct=sample_correct,
    )
