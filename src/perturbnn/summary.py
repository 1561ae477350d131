"""Counting a model's trainable parameters and noise-mask values, as Klachko's reproduction
reports them.

Source: Klachko's parameter table ("N regular parameters, M noise mask values").
"""

from __future__ import annotations

from torch import nn
from torch.nn.parameter import is_lazy

from perturbnn.layers import NoiseMask

__all__ = ["count_mask_values", "count_parameters"]


def _mask_ids(model: nn.Module) -> set[int]:
    return {id(m.masks) for m in model.modules() if isinstance(m, NoiseMask)}


def count_parameters(model: nn.Module, *, frozen: bool = False) -> int:
    """Number of trainable parameter values, excluding noise masks (even trainable ones).

    Args:
        model: any ``nn.Module``.
        frozen: count the frozen parameters instead: those with ``requires_grad=False``
            (e.g. the first convolution of a network built with ``freeze_first=True``), noise
            masks still excluded. Default: ``False``.

    Returns:
        The sum of ``numel()`` over parameters with ``requires_grad`` (without, if
        ``frozen``) that are not :class:`~perturbnn.NoiseMask` masks.

    Raises:
        ValueError: if a counted parameter is still uninitialized (a lazy module, such as the
            ``nn.LazyLinear`` head of ``lenet``/``cifarnet`` built with ``input_size=None``,
            before its first forward): its size is not known yet.

    Example::

        >>> count_parameters(nn.Linear(3, 2))
        8
        >>> count_parameters(nn.Linear(3, 2).requires_grad_(False), frozen=True)
        8
    """
    masks = _mask_ids(model)
    counted = [
        (n, p)
        for n, p in model.named_parameters()
        if p.requires_grad != frozen and id(p) not in masks
    ]
    lazy = [name for name, p in counted if is_lazy(p)]
    if lazy:
        raise ValueError(
            f"model has uninitialized (lazy) parameters {lazy[:3]}: run one forward on an input "
            "of the data's size first (or build the model with input_size) to count them"
        )
    return sum(p.numel() for _, p in counted)


def count_mask_values(model: nn.Module) -> int:
    """Number of noise-mask values of all :class:`~perturbnn.NoiseMask` s, fixed or trainable.

    Lazy masks (``input_size=None``) count 0 until the first forward draws them.

    Example::

        >>> from perturbnn import PerturbConv2d
        >>> count_mask_values(PerturbConv2d(3, 6, nmasks=2, input_size=4))
        96
    """
    return sum(
        m.masks.numel() for m in model.modules() if isinstance(m, NoiseMask) and not is_lazy(m.masks)
    )
