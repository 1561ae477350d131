"""Klachko's optimizers and learning-rate schedules.

Source: Klachko's ``main.py`` options and defaults (``--optim-method SGD``: Nesterov momentum
0.9, weight decay 1e-4; Adam with betas 0.9/0.999 and RMSprop also available) and its
per-data-set learning-rate schedule (issue "Faithful to Klachko"). The schedule the harness
used before, x0.2 at epochs 150, 250, 300, 350, 400, belongs to the original authors' later
code, not to Klachko's; it is kept as the ``"authors"`` rule (:data:`LR_RULES`) for the presets
of the authors' updated recipe (``juefeix/pnn.pytorch.update``, ``main.py``: on CIFAR-10 the
rate is multiplied by 0.2 from epochs 150, 250, 300, 350 and 400; its other data sets keep the
schedules of the independent reproduction).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR

__all__ = [
    "LR_RULES",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "LRSchedule",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
]


#: Optimizer names accepted by :func:`make_optimizer` (Klachko's ``--optim-method``).
OPTIMIZERS: tuple[str, ...] = ("Adam", "RMSprop", "SGD")


@dataclass(frozen=True)
class LRSchedule:
    """One data set's learning-rate rule: the factor on the base rate for epoch ``e`` >= 1.

    Either step decay at fixed epochs, ``gamma ** #{m in milestones : m <= e}``, or, with
    ``every``, ``gamma ** floor((e - 1) / every)``. No milestones and no ``every``: constant.

    Attributes:
        gamma: the decay factor.
        milestones: epochs (counted from 1) from which the rate is ``gamma`` times lower.
        every: decay every ``every`` epochs instead of at milestones.
    """

    gamma: float = 1.0
    milestones: tuple[int, ...] = ()
    every: Optional[int] = None

    def factor(self, epoch: int) -> float:
        """The factor on the base learning rate in epoch ``epoch`` (counted from 1)."""
        if self.every is not None:
            return float(self.gamma ** ((epoch - 1) // self.every))
        return float(self.gamma ** sum(1 for m in self.milestones if m <= epoch))


#: Klachko's schedules by training data set (keys as :data:`perturbnn.repro.data.DATASETS`).
#: CIFAR-10: x0.2 from epochs 60, 90, 120, 160; CIFAR-100: x0.1 from 80, 120, 160; MNIST (and
#: FashionMNIST, trained as MNIST): x0.2 from 30, 60, 90; ImageNet-style folders: x0.1 every
#: 30 epochs. SVHN and STL-10: Klachko's schedule names no rule for them; constant here.
LR_SCHEDULES: Mapping[str, LRSchedule] = {
    "CIFAR10": LRSchedule(0.2, (60, 90, 120, 160)),
    "CIFAR100": LRSchedule(0.1, (80, 120, 160)),
    "MNIST": LRSchedule(0.2, (30, 60, 90)),
    "FashionMNIST": LRSchedule(0.2, (30, 60, 90)),
    "SVHN": LRSchedule(),
    "STL10": LRSchedule(),
    "ImageFolder": LRSchedule(0.1, every=30),
}


#: The learning-rate rules by name (``RunConfig.lr_schedule``, the ``--lr-schedule`` flag):
#: ``"independent"``, the schedules of the independent reproduction's ``main.py``
#: (:data:`LR_SCHEDULES`, the default); ``"authors"``, those of the authors' updated
#: repository (``juefeix/pnn.pytorch.update``, ``main.py``), which differ on CIFAR-10 only: x0.2
#: from epochs 150, 250, 300, 350 and 400 (for their 450-epoch runs).
LR_RULES: Mapping[str, Mapping[str, LRSchedule]] = {
    "independent": LR_SCHEDULES,
    "authors": {**LR_SCHEDULES, "CIFAR10": LRSchedule(0.2, (150, 250, 300, 350, 400))},
}


def _key(name: str) -> str:
    return name.upper().replace("-", "").replace("_", "")


def _rule(rule: str) -> Mapping[str, LRSchedule]:
    try:
        return LR_RULES[rule]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown learning-rate schedule {rule!r}; valid names: {', '.join(LR_RULES)}"
        ) from None


def _schedule(dataset: str, rule: str = "independent") -> LRSchedule:
    schedules = _rule(rule)
    by_key = {_key(name): schedule for name, schedule in schedules.items()}
    try:
        return by_key[_key(str(dataset))]
    except KeyError:
        raise ValueError(
            f"no learning-rate schedule for data set {dataset!r}; known: "
            f"{', '.join(schedules)} (or pass milestones=...)"
        ) from None


def lr_factor(dataset: str, epoch: int, rule: str = "independent") -> float:
    """The factor on the base learning rate for epoch ``epoch`` of ``dataset``.

    Args:
        dataset (str): the training data set (case-insensitive; ``-`` and ``_`` ignored).
        epoch (int): the epoch, counted from 1; the rate is set before its first step.
        rule (str): a key of :data:`LR_RULES`. Default: ``"independent"`` (the independent
            reproduction's schedules).

    Returns:
        float: e.g. ``0.2`` for CIFAR-10 epochs 60 to 89 (``"authors"``: 150 to 249).

    Raises:
        ValueError: on an unknown data set or rule, or an epoch below 1.

    Example::

        >>> lr_factor("CIFAR10", 59), lr_factor("CIFAR10", 60), lr_factor("ImageFolder", 31)
        (1.0, 0.2, 0.1)
        >>> lr_factor("CIFAR10", 149, "authors"), lr_factor("CIFAR10", 150, "authors")
        (1.0, 0.2)
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"epoch must be an int >= 1 (counted from 1), got {epoch!r}")
    return _schedule(dataset, rule).factor(epoch)


def _factor_at_index(schedule: LRSchedule, index: int) -> float:
    return schedule.factor(index + 1)  # LambdaLR counts epochs from 0


def _canonical_optimizer(name: str) -> str:
    lookup = {n.lower(): n for n in OPTIMIZERS}
    try:
        return lookup[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}"
        ) from None


def make_optimizer(
    name: str,
    params: Union[nn.Module, Iterable[nn.Parameter]],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
) -> Optimizer:
    """Build one of Klachko's optimizers over the trainable parameters.

    ``Adam`` uses ``betas`` and ``weight_decay``; ``RMSprop`` uses ``momentum`` and
    ``weight_decay``; ``SGD`` uses ``momentum``, ``weight_decay`` and Nesterov momentum. Only
    parameters with ``requires_grad`` are optimized, so fixed noise masks (buffers) and frozen
    weights are left alone; trained masks (``train_masks=True``) are parameters and included.

    Args:
        name (str): ``"Adam"``, ``"RMSprop"`` or ``"SGD"`` (case-insensitive).
        params (nn.Module or Iterable[nn.Parameter]): a model, or its parameters.
        lr (float): learning rate, positive.
        momentum (float): momentum for RMSprop and SGD. Default: ``0.9``.
        weight_decay (float): L2 penalty, non-negative. Default: ``1e-4``.
        betas (tuple[float, float]): Adam's betas. Default: ``(0.9, 0.999)``.

    Returns:
        torch.optim.Optimizer: the optimizer.

    Raises:
        ValueError: on an unknown name (the message lists the valid ones), a non-positive
            ``lr``, a negative ``weight_decay`` or ``momentum``, or no trainable parameter.

    Example::

        >>> opt = make_optimizer("sgd", nn.Linear(3, 2), lr=0.1)
        >>> type(opt).__name__, opt.defaults["nesterov"]
        ('SGD', True)
    """
    canonical = _canonical_optimizer(name)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    if not (math.isfinite(momentum) and momentum >= 0):
        raise ValueError(f"momentum must be non-negative, got {momentum}")
    source = params.parameters() if isinstance(params, nn.Module) else params
    trainable = [p for p in source if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameter (none has requires_grad=True), got 0")
    if canonical == "Adam":
        return torch.optim.Adam(trainable, lr=lr, betas=betas, weight_decay=weight_decay)
    if canonical == "RMSprop":
        return torch.optim.RMSprop(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(
        trainable, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
    )


def make_scheduler(
    optimizer: Optimizer,
    dataset: str,
    *,
    milestones: Optional[Sequence[int]] = None,
    gamma: float = 0.2,
    rule: str = "independent",
) -> LRScheduler:
    """Klachko's learning-rate schedule for ``dataset`` (see :data:`LR_SCHEDULES`).

    Call ``scheduler.step()`` once at the end of every epoch. The rate of epoch ``e`` (counted
    from 1) is ``lr * lr_factor(dataset, e)``, set before the epoch's first step: on CIFAR-10
    epochs 1-59 run at ``lr``, epoch 60 is the first at ``0.2 * lr``.

    Args:
        optimizer (Optimizer): the optimizer.
        dataset (str): the training data set, a key of :data:`LR_SCHEDULES`
            (case-insensitive). Ignored if ``milestones`` is given.
        milestones (Sequence[int], optional): instead of Klachko's schedule, multiply the rate
            by ``gamma`` at these 0-based epoch indices (``MultiStepLR``).
        gamma (float): decay factor with ``milestones``. Default: ``0.2``.
        rule (str): which schedules, a key of :data:`LR_RULES`. Default: ``"independent"``.

    Returns:
        LRScheduler: a ``LambdaLR`` over :func:`lr_factor` (a ``MultiStepLR`` with
        ``milestones``).

    Raises:
        ValueError: if ``dataset`` has no known schedule or ``rule`` is unknown, and no
            ``milestones`` are given.

    Example::

        >>> opt = make_optimizer("SGD", nn.Linear(3, 2), lr=1.0)
        >>> sched = make_scheduler(opt, "CIFAR10")
        >>> for _ in range(59):  # after epochs 1..59, epoch 60 starts at 0.2
        ...     sched.step()
        >>> opt.param_groups[0]["lr"]
        0.2
    """
    if milestones is not None:
        return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    schedule = _schedule(dataset, rule)
    return LambdaLR(optimizer, functools.partial(_factor_at_index, schedule))
