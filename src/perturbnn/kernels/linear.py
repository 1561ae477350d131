"""Exact algebraic form of a PNN layer without an activation between noise and 1x1 convolution.

Source: PNN, Sec. 3, Eq. 2 with the identity as non-linearity. The layer is then linear in the
input::

    out[b, o] = sum_m W[o, m] * (x[b, g(o)] + level * masks[g(o), m]) + bias[o]
              = x[b, g(o)] * sum_m W[o, m]  +  (sum_m W[o, m] * level * masks[g(o), m] + bias[o])

where ``g(o) = o // (out_channels / channels)`` is the input channel of output ``o`` under fanout
(``nmasks > 1``, groups = channels). The first term is a per-channel scaling of ``x`` by the
weights summed over each channel's masks; the second is a fixed bias map that does not depend on
the batch. With ``nmasks == 1`` (dense 1x1 convolution) the first term is the 1x1 convolution of
``x`` and the bias map the 1x1 convolution of the noise. Nothing of size
``batch * channels * nmasks * height * width`` is ever built, and autograd differentiates these
few operations exactly (input, weights, bias and trainable masks).

The bias map is recomputed at every call (``out_channels * nmasks * height * width``
multiply-adds, independent of the batch) rather than cached: a cache keyed on tensor versions
would miss an in-place edit through ``.data``, so it could serve a stale map.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["perturb_conv2d_linear"]


def perturb_conv2d_linear(
    x: Tensor, masks: Tensor, weight: Tensor, bias: Optional[Tensor], level: float
) -> Tensor:
    """Perturb then 1x1-convolve without activation, without building the perturbed tensor.

    Equal, up to floating-point rounding, to the literal formulation
    ``conv2d(perturb(x, masks, level), weight, bias, groups)`` with ``groups = channels`` when
    ``nmasks > 1`` and ``1`` otherwise.

    Args:
        x: ``Tensor[batch_size, channels, height, width]`` (checked by the caller).
        masks: ``Tensor[channels or 1, nmasks, height, width]``; cast to ``x``'s dtype.
        weight: ``Tensor[out_channels, channels * nmasks / groups, 1, 1]``; cast to ``x``'s dtype.
        bias: optional ``Tensor[out_channels]``; cast to ``x``'s dtype.
        level: noise amplitude.

    Returns:
        ``Tensor[batch_size, out_channels, height, width]`` of ``x``'s dtype.
    """
    batch, channels, height, width = x.shape
    mask_channels, nmasks = masks.shape[:2]
    out_channels = weight.shape[0]
    pixels = height * width
    dtype = x.dtype
    # level multiplies the small bias map, not the masks: no masks-sized tensor is written.
    m = masks.to(dtype)
    w = weight.to(dtype).reshape(out_channels, -1)
    b = None if bias is None else bias.to(dtype)
    if nmasks > 1:  # grouped: output o sees only input channel o // fanout
        fanout = out_channels // channels
        w3 = w.reshape(channels, fanout, nmasks)
        if mask_channels == 1:
            m2 = m.reshape(nmasks, pixels)
            bias_map = (
                torch.mm(w, m2) * level
                if b is None
                else torch.addmm(b.unsqueeze(1), w, m2, alpha=level)
            )
        else:
            m3 = m.reshape(channels, nmasks, pixels)
            bias_map = (
                torch.bmm(w3, m3) * level
                if b is None
                else torch.baddbmm(b.reshape(channels, fanout, 1), w3, m3, alpha=level)
            )
        scale = w3.sum(2)  # Tensor[channels, fanout]
        # out = bias_map + x * scale in one pass, broadcast over the fanout copies of x.
        out = torch.addcmul(
            bias_map.reshape(1, channels, fanout, height, width),
            x.unsqueeze(2),
            scale.reshape(1, channels, fanout, 1, 1),
        )
        return out.reshape(batch, out_channels, height, width)
    # nmasks == 1: dense 1x1 convolution of x, plus the convolution of the noise.
    if mask_channels == 1:
        bias_map = w.sum(1, keepdim=True) * (level * m.reshape(1, pixels))
        if b is not None:
            bias_map = bias_map + b.unsqueeze(1)
    else:
        m2 = m.reshape(channels, pixels)
        bias_map = (
            torch.mm(w, m2) * level
            if b is None
            else torch.addmm(b.unsqueeze(1), w, m2, alpha=level)
        )
    out = F.conv2d(x, w.reshape(out_channels, channels, 1, 1))
    return out + bias_map.reshape(1, out_channels, height, width)
