"""Functional form of the PNN perturbation layer: the math lives here.

Source: Juefei-Xu, Boddeti and Savvides, "Perturbative Neural Networks", CVPR 2018, Sec. 3
(Eq. 2: each input map is perturbed by fixed additive noise masks, passed through a
non-linearity, and linearly combined by learnable weights, i.e. a 1x1 convolution).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch  # noqa: F401  (doctest namespace)
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_perturb_input", "perturb", "perturb_conv2d"]


def check_perturb_input(x: Tensor, masks: Tensor) -> None:
    """Check that ``x`` can be perturbed by ``masks``.

    Args:
        x: ``Tensor[batch_size, channels, height, width]``.
        masks: ``Tensor[channels or 1, nmasks, height, width]``.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: on a wrong number of dimensions, a channel count the masks were not made
            for, a spatial size different from the masks', or a device different from the
            masks' (the message says which).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(
            "input must be 4-D Tensor[batch_size, channels, height, width], "
            f"got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    mask_channels, _, height, width = masks.shape
    if mask_channels != 1 and x.shape[1] != mask_channels:
        raise ValueError(f"input must have {mask_channels} channels, got {x.shape[1]}")
    if tuple(x.shape[2:]) != (height, width):
        raise ValueError(
            f"input spatial size must equal the masks' (height, width) = ({height}, {width}), "
            f"got {tuple(x.shape[2:])}"
        )
    if x.device != masks.device:
        raise ValueError(
            f"input is on {x.device} but the noise masks are on {masks.device}; "
            "move the module with .to(device) or the input to the masks' device"
        )


def perturb(x: Tensor, masks: Tensor, level: float) -> Tensor:
    """Add ``level`` times each noise mask to each input channel (PNN, Sec. 3, Eq. 2).

    Channel ``c`` perturbed by mask ``m`` lands at output channel ``c * nmasks + m``. With shared
    masks (``masks.shape[0] == 1``) every channel gets the same ``nmasks`` masks.

    Args:
        x: ``Tensor[batch_size, channels, height, width]``, any floating dtype.
        masks: ``Tensor[channels or 1, nmasks, height, width]`` of unit noise; cast to ``x``'s
            dtype.
        level: noise amplitude, same units as ``x``.

    Returns:
        ``Tensor[batch_size, channels * nmasks, height, width]`` of ``x``'s dtype.

    Raises:
        TypeError, ValueError: see :func:`check_perturb_input`.

    Example::

        >>> x = torch.zeros(2, 3, 8, 8)
        >>> perturb(x, torch.ones(3, 4, 8, 8), level=0.5).shape
        torch.Size([2, 12, 8, 8])
    """
    check_perturb_input(x, masks)
    batch, channels, height, width = x.shape
    nmasks = masks.shape[1]
    noise = masks.to(x.dtype) * level
    y = x.unsqueeze(2) + noise.unsqueeze(0)
    return y.reshape(batch, channels * nmasks, height, width)


def perturb_conv2d(
    x: Tensor,
    masks: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    level: float,
    activation: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """Perturb ``x`` with noise masks, optionally activate, then mix with a 1x1 convolution.

    This is the literal (grouped) formulation of a PNN layer (PNN, Sec. 3, Eq. 2): the whole
    perturbed tensor ``Tensor[batch_size, channels * nmasks, height, width]`` is materialized.
    The 1x1 convolution is grouped by input channel (``groups = channels``) when
    ``nmasks > 1``, and dense otherwise.

    Args:
        x: ``Tensor[batch_size, channels, height, width]``.
        masks: ``Tensor[channels or 1, nmasks, height, width]`` of unit noise.
        weight: ``Tensor[out_channels, channels * nmasks / groups, 1, 1]``.
        bias: optional ``Tensor[out_channels]``.
        level: noise amplitude.
        activation: optional function applied to the perturbed tensor before the 1x1
            convolution.

    Returns:
        ``Tensor[batch_size, out_channels, height, width]``.

    Raises:
        TypeError, ValueError: see :func:`check_perturb_input`; ``ValueError`` if ``weight`` does
            not fit the perturbed tensor.

    Example::

        >>> x, masks = torch.randn(2, 3, 8, 8), torch.rand(3, 1, 8, 8)
        >>> perturb_conv2d(x, masks, torch.randn(16, 3, 1, 1), level=0.1).shape
        torch.Size([2, 16, 8, 8])
    """
    channels = x.shape[1] if x.dim() == 4 else -1
    nmasks = masks.shape[1]
    groups = channels if nmasks > 1 else 1
    expected = (weight.shape[0], channels * nmasks // max(groups, 1), 1, 1)
    if weight.dim() != 4 or tuple(weight.shape) != expected:
        raise ValueError(
            f"weight must have shape {expected} for {channels} input channels and "
            f"nmasks={nmasks}, got {tuple(weight.shape)}"
        )
    y = perturb(x, masks, level)
    if activation is not None:
        y = activation(y)
    return F.conv2d(
        y, weight.to(y.dtype), None if bias is None else bias.to(y.dtype), groups=groups
    )
