"""Counting a model's trainable parameters and noise-mask values, as the seed reports them.

Source: the seed's parameter table ("N regular parameters, M noise mask values").
"""

from __future__ import annotations

from torch import nn

from perturbnn.layers import NoiseMask

__all__ = ["count_mask_values", "count_parameters"]


def _mask_ids(model: nn.Module) -> set[int]:
    return {id(m.masks) for m in model.modules() if isinstance(m, NoiseMask)}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameter values, excluding noise masks (even trainable ones).

    Args:
        model: any ``nn.Module``.

    Returns:
        The sum of ``numel()`` over parameters with ``requires_grad`` that are not
        :class:`~perturbnn.NoiseMask` masks. A lazy module's parameters (``nn.LazyConv2d``
        before its first forward) have no size yet and count 0.

    Example::

        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    masks = _mask_ids(model)
    return sum(
        p.numel()
        for p in model.parameters()
        if p.requires_grad and id(p) not in masks and not nn.parameter.is_lazy(p)
    )


def count_mask_values(model: nn.Module) -> int:
    """Number of noise-mask values of all :class:`~perturbnn.NoiseMask` s, fixed or trainable.

    Example::

        >>> from perturbnn import PerturbConv2d
        >>> count_mask_values(PerturbConv2d(3, 6, nmasks=2, input_size=4))
        96
    """
    return sum(m.masks.numel() for m in model.modules() if isinstance(m, NoiseMask))
