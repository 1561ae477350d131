"""What one training epoch and one evaluation pass return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

__all__ = ["EvalResult", "TrainResult"]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_one_epoch`.

    Attributes:
        loss (float): training loss averaged per sample (not per batch).
        accuracy (float): exact training accuracy, a fraction (of the model in training mode,
            while it was learning).
        steps (int): optimizer steps taken.
        samples (int): training samples seen.
    """

    loss: float
    accuracy: float
    steps: int
    samples: int


@dataclass(frozen=True)
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        loss (float): loss averaged per sample.
        accuracy (float): exact accuracy ``correct / total``, a fraction.
        correct (int): correctly classified samples.
        total (int): samples evaluated.
        sample_correct (Tensor[total] of bool, optional): whether each sample was classified
            correctly, in the loader's order, on the CPU (what
            :func:`perturbnn.metrics.original_best_of_orders` needs); ``None`` where not
            recorded (sharded evaluation under ``torch.distributed``).
    """

    loss: float
    accuracy: float
    correct: int
    total: int
    sample_correct: Optional[Tensor] = field(default=None, compare=False, repr=False)
