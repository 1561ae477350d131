"""The seed's optimizers and learning-rate schedule.

Source: the seed's ``main.py`` options, optimizers (``Adam``, ``RMSprop``, ``SGD``) and
learning-rate schedule (x0.2 at epochs 150, 250, 300, 350, 400 on CIFAR-10; 30, 60, 90 on
MNIST), as described in ``../shared/reference/pnn-reproduction-notes.txt``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional, Union

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR

__all__ = ["LR_DECAY", "LR_MILESTONES", "OPTIMIZERS", "make_optimizer", "make_scheduler"]


#: Optimizer names accepted by :func:`make_optimizer` (the seed's ``--optim-method``).
OPTIMIZERS: tuple[str, ...] = ("Adam", "RMSprop", "SGD")

#: Epochs (0-based index of the first epoch at the lower rate) at which the seed multiplied the
#: learning rate by :data:`LR_DECAY`, per training data set.
LR_MILESTONES: Mapping[str, tuple[int, ...]] = {
    "CIFAR10": (150, 250, 300, 350, 400),
    "MNIST": (30, 60, 90),
}

#: The seed's learning-rate decay factor.
LR_DECAY = 0.2


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
    """Build one of the seed's optimizers over the trainable parameters.

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
    gamma: float = LR_DECAY,
) -> MultiStepLR:
    """The seed's step schedule: multiply the learning rate by 0.2 at fixed epochs.

    Call ``scheduler.step()`` once at the end of every epoch. The rate used in 0-based epoch
    ``e`` is ``lr * 0.2 ** (number of milestones <= e)``: on CIFAR-10 epoch 150 is the first
    one at ``0.2 * lr``.

    Args:
        optimizer (Optimizer): the optimizer.
        dataset (str): the training data set, a key of :data:`LR_MILESTONES`
            (``"CIFAR10"`` or ``"MNIST"``). Ignored if ``milestones`` is given.
        milestones (Sequence[int], optional): epochs to decay at, instead of the seed's.
        gamma (float): decay factor. Default: ``0.2``.

    Returns:
        torch.optim.lr_scheduler.MultiStepLR: the scheduler.

    Raises:
        ValueError: if ``dataset`` has no known schedule and no ``milestones`` are given.

    Example::

        >>> opt = make_optimizer("Adam", nn.Linear(3, 2), lr=1.0)
        >>> sched = make_scheduler(opt, "CIFAR10")
        >>> for _ in range(150):
        ...     sched.step()
        >>> opt.param_groups[0]["lr"]
        0.2
    """
    if milestones is None:
        try:
            milestones = LR_MILESTONES[dataset]
        except KeyError:
            raise ValueError(
                f"no learning-rate schedule for data set {dataset!r}; known: "
                f"{', '.join(LR_MILESTONES)} (or pass milestones=...)"
            ) from None
    return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
