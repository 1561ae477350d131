"""Classification accuracy: the exact figure, and the original PNN code's smoothed figure.

:class:`ExactAccuracy` is the number to report: it counts correct predictions and examples as
integers, divides once at the end, and sums the counts (never the per-rank means) across
processes.

:class:`OriginalSmoothedAccuracy` replays the figure that the original PNN code printed and
kept as its "best" test accuracy. It exists only so that a reproduction can show how far that
figure is from the exact one; do not report it as an accuracy.

:func:`original_best_of_orders` and :func:`overstatement_over_orderings` (defined in
``perturbnn._smoothed_orders``, a file of its own, and exported here) measure how far that
figure is from the exact one for a given set of test predictions, over many orderings of the
test set, so that one short run can show the figure's error beyond its batch-to-batch noise.

All values are fractions in ``[0, 1]``, never percentages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from perturbnn._smoothed_orders import (
    OrderingOverstatement,
    original_best_of_orders,
    overstatement_over_orderings,
)
from perturbnn._validation import check_positive_int

__all__ = [
    "ExactAccuracy",
    "OrderingOverstatement",
    "OriginalSmoothedAccuracy",
    "original_best_of_orders",
    "overstatement_over_orderings",
]

logger = logging.getLogger(__name__)


def _count_correct(output: Tensor, target: Tensor) -> tuple[int, int]:
    """Return ``(correct, batch_size)`` for one batch.

    Args:
        output: logits ``Tensor[batch_size, num_classes]`` (the prediction is the arg-max over
            dim 1) or predicted labels ``Tensor[batch_size]`` of an integer dtype.
        target: true labels ``Tensor[batch_size]`` of an integer dtype.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: on a wrong shape or dtype; the message names the argument.
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"output must be a torch.Tensor, got {type(output).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dim() != 1:
        raise ValueError(
            f"target must be 1-D Tensor[batch_size], got {target.dim()}-D with shape "
            f"{tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class labels, got dtype {target.dtype}")
    if output.dim() == 2:
        if output.shape[1] == 0:
            raise ValueError(
                "output logits Tensor[batch_size, num_classes] must have num_classes >= 1, "
                f"got shape {tuple(output.shape)}"
            )
        pred = output.argmax(dim=1)
    elif output.dim() == 1:
        if output.is_floating_point() or output.is_complex() or output.dtype == torch.bool:
            raise ValueError(
                "1-D output must hold integer predicted labels, got dtype "
                f"{output.dtype}; pass logits as Tensor[batch_size, num_classes]"
            )
        pred = output
    else:
        raise ValueError(
            "output must be logits Tensor[batch_size, num_classes] or labels "
            f"Tensor[batch_size], got {output.dim()}-D with shape {tuple(output.shape)}"
        )
    if pred.shape[0] != target.shape[0]:
        raise ValueError(
            f"output and target must have the same batch size, got output shape "
            f"{tuple(output.shape)} and target shape {tuple(target.shape)}"
        )
    correct = int(pred.eq(target.to(pred.device)).sum().item())
    return correct, int(target.shape[0])


def _check_count(name: str, value: object) -> int:
    """Return ``value`` if it is a non-negative ``int`` (not a ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a non-negative int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return value


class ExactAccuracy:
    """Exact top-1 accuracy: integer ``correct`` and ``total`` counts, divided once at the end.

    Every example counts once, whatever the batch sizes: an uneven last batch weighs exactly as
    many examples as it holds. Per-batch means are never averaged. Across processes,
    :meth:`all_reduce` sums the counts.

    Attributes:
        correct (int): number of correct predictions seen since the last :meth:`reset`.
        total (int): number of examples seen since the last :meth:`reset`.

    Example::

        >>> acc = ExactAccuracy()
        >>> acc.update(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 1, 1]))
        >>> acc.update(torch.tensor([1]), torch.tensor([1]))
        >>> acc
        ExactAccuracy(correct=3, total=4)
        >>> acc.compute()
        0.75
    """

    def __init__(self) -> None:
        self.correct: int = 0
        self.total: int = 0

    def update(self, output: Tensor, target: Tensor) -> None:
        """Add one batch to the counts.

        Args:
            output: logits ``Tensor[batch_size, num_classes]`` (the prediction is the arg-max
                over dim 1, first index on ties) or predicted labels ``Tensor[batch_size]`` of
                an integer dtype.
            target: true labels ``Tensor[batch_size]`` of an integer dtype.

        Raises:
            TypeError: if an argument is not a tensor.
            ValueError: if a shape or dtype is wrong, or the batch sizes differ; the message
                names the argument and the shape received.
        """
        correct, batch_size = _count_correct(output, target)
        self.correct += correct
        self.total += batch_size

    def compute(self, *, expected_total: Optional[int] = None) -> float:
        """Return ``correct / total``, a fraction in ``[0, 1]``.

        Args:
            expected_total: if given, the number of examples that must have been counted (for
                instance ``len(test_set)``), so that a dropped or duplicated batch is caught.

        Returns:
            float: the accuracy.

        Raises:
            ValueError: if nothing has been counted, or ``total != expected_total``.
        """
        if self.total == 0:
            raise ValueError("no example counted yet (total == 0); call update() first")
        if expected_total is not None and self.total != expected_total:
            raise ValueError(
                f"counted {self.total} examples but expected_total is {expected_total}; "
                "a batch was dropped or counted twice"
            )
        return self.correct / self.total

    def reset(self) -> None:
        """Set both counts to zero."""
        self.correct = 0
        self.total = 0

    def all_reduce(self, group: Optional[dist.ProcessGroup] = None) -> None:
        """Sum the counts over all processes of ``group`` and keep the sums.

        A no-op unless ``torch.distributed`` is available and initialized. The counts travel
        as one ``int64`` tensor, on the current CUDA device for the NCCL backend and on the CPU
        otherwise. Call it once, after the last :meth:`update` and before :meth:`compute`.

        Args:
            group: the process group; ``None`` means the default group.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        backend = dist.get_backend(group)
        if backend == dist.Backend.NCCL:
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        counts = torch.tensor([self.correct, self.total], dtype=torch.int64, device=device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
        self.correct, self.total = (int(v) for v in counts.tolist())
        logger.debug("all-reduced accuracy counts over %s: %r", backend, self)

    def state_dict(self) -> dict[str, int]:
        """Return the counts as plain ints: ``{"correct": ..., "total": ...}``."""
        return {"correct": self.correct, "total": self.total}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the counts from :meth:`state_dict`.

        Raises:
            KeyError: if a count is missing.
            TypeError: if a count is not an int.
            ValueError: if a count is negative or ``correct > total``.
        """
        correct = _check_count("correct", state_dict["correct"])
        total = _check_count("total", state_dict["total"])
        if correct > total:
            raise ValueError(f"correct must not exceed total, got correct={correct}, total={total}")
        self.correct, self.total = correct, total

    def __repr__(self) -> str:
        return f"{type(self).__name__}(correct={self.correct}, total={self.total})"


class OriginalSmoothedAccuracy:
    """Replica of the test accuracy printed by the original PNN code. For comparison only.

    The original code (``juefeix/pnn.pytorch``, ``plugins/monitor.py`` and ``train.py``)
    computed, for each test batch, ``batch_acc = correct_in_batch / batch_size`` and fed it to
    an exponential moving average ``value = smoothing * value + (1 - smoothing) * batch_acc``
    with ``smoothing = 0.7``. Its ``Monitor.reset()`` assigns to a loop variable, so the
    average is never reset: each epoch starts from the previous epoch's value. The value at the
    end of the test pass was the epoch's "test accuracy", and the best of these over epochs was
    the reported result. The follow-up code (``juefeix/pnn.pytorch.update``, ``main.py``)
    divided by the configured batch size rather than the actual one, which under-counts an
    uneven last batch; pass ``nominal_batch_size`` for that. The first code skipped batches of
    any other size instead; pass ``skip_uneven_batches=True`` as well for that.

    Why the figure is wrong:

    * It is not the accuracy on the test set. The weight of a batch decays by ``smoothing``
      per later batch (``0.7 ** 10 < 0.03``), so the figure mostly reflects the last ten or so
      batches, it depends on the order of the test set, and part of it is the previous epoch.
    * With ``nominal_batch_size`` an uneven last batch counts as if its missing examples were
      wrong (or, when skipped, its examples are not counted at all).
    * Taking the best epoch of a noisy figure measured on the test set selects on the test set
      and is biased upwards.

    Report :class:`ExactAccuracy` instead. Values here are fractions, where the original code
    printed percentages.

    Args:
        smoothing: weight of the previous value in the moving average, in ``[0, 1)``.
            Default: ``0.7``, as in the original code.
        nominal_batch_size: if given, every batch's correct count is divided by this number
            (the configured batch size) instead of by the batch's actual size.
        skip_uneven_batches: if ``True``, a batch whose size differs from
            ``nominal_batch_size`` leaves the value unchanged. Needs ``nominal_batch_size``.
            Default: ``False``.

    Attributes:
        value (float): the current smoothed figure; starts at ``0.0``.
        history (list[float]): the value at the end of each epoch (see :meth:`end_epoch`).

    Raises:
        TypeError: if ``smoothing`` is not a real number, ``nominal_batch_size`` is not an int
            or ``skip_uneven_batches`` is not a bool.
        ValueError: if ``smoothing`` is outside ``[0, 1)``, ``nominal_batch_size`` is not
            positive, or ``skip_uneven_batches`` is set without ``nominal_batch_size``.

    Example::

        >>> smoothed = OriginalSmoothedAccuracy()
        >>> round(smoothed.update(torch.tensor([0, 1]), torch.tensor([0, 1])), 4)  # batch acc 1.0
        0.3
        >>> round(smoothed.update(torch.tensor([0, 0]), torch.tensor([0, 1])), 4)  # 0.5
        0.36
        >>> round(smoothed.end_epoch(), 4)  # the exact accuracy is 0.75
        0.36
    """

    def __init__(
        self,
        smoothing: float = 0.7,
        nominal_batch_size: Optional[int] = None,
        *,
        skip_uneven_batches: bool = False,
    ) -> None:
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
            raise TypeError(
                f"smoothing must be a float in [0, 1), got {type(smoothing).__name__} {smoothing!r}"
            )
        if not (math.isfinite(smoothing) and 0.0 <= smoothing < 1.0):
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if nominal_batch_size is not None:
            check_positive_int("nominal_batch_size", nominal_batch_size)
        if not isinstance(skip_uneven_batches, bool):
            raise TypeError(
                "skip_uneven_batches must be a bool, got "
                f"{type(skip_uneven_batches).__name__} {skip_uneven_batches!r}"
            )
        if skip_uneven_batches and nominal_batch_size is None:
            raise ValueError(
                "skip_uneven_batches=True needs nominal_batch_size, got nominal_batch_size=None"
            )
        self.smoothing: float = float(smoothing)
        self.nominal_batch_size: Optional[int] = nominal_batch_size
        self.skip_uneven_batches: bool = skip_uneven_batches
        self.value: float = 0.0
        self.history: list[float] = []

    def update(self, output: Tensor, target: Tensor) -> float:
        """Fold one test batch into the moving average and return the new value.

        Args:
            output: logits ``Tensor[batch_size, num_classes]`` or predicted labels
                ``Tensor[batch_size]`` of an integer dtype.
            target: true labels ``Tensor[batch_size]`` of an integer dtype.

        Returns:
            float: the new smoothed value.

        Raises:
            TypeError: if an argument is not a tensor.
            ValueError: on a wrong shape or dtype, an empty batch, or a batch larger than
                ``nominal_batch_size``.
        """
        correct, batch_size = _count_correct(output, target)
        if batch_size == 0:
            raise ValueError("the batch is empty (batch_size 0)")
        divisor = batch_size
        if self.nominal_batch_size is not None:
            if batch_size > self.nominal_batch_size:
                raise ValueError(
                    f"batch size {batch_size} exceeds nominal_batch_size {self.nominal_batch_size}"
                )
            if self.skip_uneven_batches and batch_size != self.nominal_batch_size:
                return self.value
            divisor = self.nominal_batch_size
        batch_acc = correct / divisor
        self.value = self.smoothing * self.value + (1.0 - self.smoothing) * batch_acc
        return self.value

    def end_epoch(self) -> float:
        """Record the current value as this epoch's figure (without resetting it) and return it."""
        self.history.append(self.value)
        return self.value

    @property
    def best(self) -> float:
        """The largest end-of-epoch value: what the original code reported.

        Raises:
            ValueError: if no epoch has been recorded.
        """
        if not self.history:
            raise ValueError("no epoch recorded; call end_epoch() after each test pass")
        return max(self.history)

    def state_dict(self) -> dict[str, Any]:
        """Return the settings, the current value and the history as plain Python objects."""
        return {
            "smoothing": self.smoothing,
            "nominal_batch_size": self.nominal_batch_size,
            "skip_uneven_batches": self.skip_uneven_batches,
            "value": self.value,
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the value and history from :meth:`state_dict`.

        Raises:
            KeyError: if an entry is missing.
            ValueError: if the saved settings differ from this object's.
        """
        for key in ("smoothing", "nominal_batch_size", "skip_uneven_batches"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"state_dict has {key}={state_dict[key]!r} but this object has "
                    f"{key}={getattr(self, key)!r}"
                )
        self.value = float(state_dict["value"])
        self.history = [float(v) for v in state_dict["history"]]

    def __repr__(self) -> str:
        args = [f"smoothing={self.smoothing}"]
        if self.nominal_batch_size is not None:
            args.append(f"nominal_batch_size={self.nominal_batch_size}")
        if self.skip_uneven_batches:
            args.append("skip_uneven_batches=True")
        args.append(f"value={self.value:.4f}")
        args.append(f"epochs={len(self.history)}")
        return f"{type(self).__name__}({', '.join(args)})"

