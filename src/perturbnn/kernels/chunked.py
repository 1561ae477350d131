"""Memory-lean eager PNN layer with an activation: masks in chunks, recomputed in backward.

Source: PNN, Sec. 3, Eq. 2 (``out = conv1x1(act(x + level * masks))``, the 1x1 convolution
grouped by input channel). With an activation the perturbed tensor
``Tensor[batch_size, channels * nmasks, height, width]`` cannot be folded away, but it need not
exist all at once: the layer is a sum over masks, so it is computed one block of (batch,
channels, masks) at a time, each block small enough to stay in cache. Only the inputs are saved
for backward; the backward pass recomputes each block and accumulates every gradient (input,
weights, masks, the activation's slope). When only the input and the weights need gradients it
uses the activation's derivative ``D`` directly, ``grad_x = sum_j g_j * (W_j @ D)`` (in place
for ReLU, tanh and sigmoid, by autograd on the block otherwise); else it differentiates the
block by autograd. Exact up to the order of floating-point sums; not differentiable twice.

Each block is laid out ``[channels, masks, batch * height * width]`` so that the per-group
reduction and its transposes are batched matrix products (``bmm``) over channels.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from perturbnn.kernels.activation import Pointwise

__all__ = ["CHUNK_ELEMENTS", "default_budget", "perturb_act_conv2d_chunked"]

#: Elements of one perturbed block by device type: small enough to stay in a CPU's last-level
#: cache (2**21 float32 values are 8 MiB; the value and derivative buffers live at once), large
#: enough that the Python loop costs little. Chosen by a sweep on a 2-core CPU with a 32 MiB L3
#: (see docs/performance.md); the CUDA value is a guess (no GPU measurement).
CHUNK_ELEMENTS: dict[str, int] = {"cpu": 1 << 21, "cuda": 1 << 25}


def default_budget(device_type: str) -> int:
    """Perturbed values per block for a device type: :data:`CHUNK_ELEMENTS`, halved on a CPU
    running one torch thread (at least 1).

    Each thread works on its share of a block; on one thread a block of half the size is
    faster (the eager ReLU layer of ``bench_layers.py``'s large case: fastest at ``2**20`` on one
    thread and at ``2**21`` on two; ``benchmarks/bench_chunk.py``), and one thread is what the
    command line's guard runs while other processes keep the CPUs busy.

    Args:
        device_type: ``x.device.type`` (``"cpu"``, ``"cuda"``, ...); unknown types get the CPU's.

    Returns:
        int: perturbed values (elements of ``x``'s dtype) per block. Raises nothing.
    """
    budget = CHUNK_ELEMENTS.get(device_type, CHUNK_ELEMENTS["cpu"])
    if device_type == "cpu" and torch.get_num_threads() == 1:
        return max(1, budget // 2)
    return budget


def _blocks(
    batch: int, channels: int, nmasks: int, pixels: int, budget: int
) -> tuple[int, int, int]:
    """Block sizes (batch, channels, masks) with about ``budget`` perturbed values per block."""
    nb = min(batch, max(1, budget // pixels))
    nk = min(nmasks, max(1, budget // (nb * pixels)))
    nc = min(channels, max(1, budget // (nb * nk * pixels)))
    return nb, nc, nk


def _block(buffer: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The first elements of a flat, preallocated ``buffer`` viewed as ``shape``."""
    view: Tensor = buffer[: math.prod(shape)].view(shape)
    return view


class _PerturbActConv(torch.autograd.Function):
    """``out = conv1x1_grouped(act(x + level * masks)) + bias`` by blocks, recomputed in backward.

    Every block is written into one preallocated buffer (a fresh multi-megabyte tensor per block
    would be handed back to the OS and faulted in again each time, which costs more than the
    arithmetic).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        masks: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        level: float,
        act: Pointwise,
        budget: int,
        *params: Tensor,
    ) -> Tensor:
        batch, channels, height, width = x.shape
        mask_channels, nmasks = masks.shape[:2]
        out_channels = weight.shape[0]
        fanout = out_channels // channels
        pixels = height * width
        nb, nc, nk = _blocks(batch, channels, nmasks, pixels, budget)
        factory: dict[str, Any] = {"dtype": x.dtype, "device": x.device}
        w = weight.reshape(channels, fanout, nmasks)
        m4 = masks.reshape(mask_channels, nmasks, 1, pixels)
        out = torch.empty(batch, out_channels, pixels, **factory)
        ybuf = torch.empty(nc * nk * nb * pixels, **factory)
        for b0 in range(0, batch, nb):
            b1 = min(batch, b0 + nb)
            # Tensor[channels, 1, nb, pixels]: this batch block, channel-major.
            xt = x[b0:b1].reshape(b1 - b0, channels, pixels).transpose(0, 1).unsqueeze(1)
            xt = xt.contiguous()
            acc = torch.empty(channels, fanout, (b1 - b0) * pixels, **factory)
            for c0 in range(0, channels, nc):
                c1 = min(channels, c0 + nc)
                mc = m4 if mask_channels == 1 else m4[c0:c1]
                for k0 in range(0, nmasks, nk):
                    k1 = min(nmasks, k0 + nk)
                    y = _block(ybuf, (c1 - c0, k1 - k0, b1 - b0, pixels))
                    torch.add(xt[c0:c1], mc[:, k0:k1], alpha=level, out=y)
                    a = act.inplace(y) if act.inplace is not None else act.fn(y, *params)
                    a = a.reshape(c1 - c0, k1 - k0, -1)
                    if k0 == 0:
                        torch.bmm(w[c0:c1, :, k0:k1], a, out=acc[c0:c1])
                    else:
                        acc[c0:c1].baddbmm_(w[c0:c1, :, k0:k1], a)
            acc_t = acc.reshape(out_channels, b1 - b0, pixels).transpose(0, 1)
            if bias is None:
                out[b0:b1].copy_(acc_t)
            else:
                torch.add(acc_t, bias.reshape(1, out_channels, 1), out=out[b0:b1])
        ctx.save_for_backward(x, masks, weight, *params)
        ctx.level = level
        ctx.act = act
        ctx.budget = budget
        return out.reshape(batch, out_channels, height, width)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        x, masks, weight, *params = ctx.saved_tensors
        level: float = ctx.level
        act: Pointwise = ctx.act
        need_x, need_masks, need_weight, need_bias = ctx.needs_input_grad[:4]
        need_params = ctx.needs_input_grad[7:]
        need_y = need_x or need_masks or any(need_params)
        batch, channels, height, width = x.shape
        mask_channels, nmasks = masks.shape[:2]
        out_channels = weight.shape[0]
        fanout = out_channels // channels
        pixels = height * width
        nb, nc, nk = _blocks(batch, channels, nmasks, pixels, ctx.budget)
        w = weight.reshape(channels, fanout, nmasks)
        m4 = masks.reshape(mask_channels, nmasks, 1, pixels)
        factory: dict[str, Any] = {"dtype": x.dtype, "device": x.device}
        grad_x = torch.empty(batch, channels, pixels, **factory) if need_x else None
        grad_w = torch.zeros(channels, fanout, nmasks, **factory) if need_weight else None
        grad_m = torch.zeros(mask_channels, nmasks, pixels, **factory) if need_masks else None
        leaves = [p.detach().requires_grad_(need) for p, need in zip(params, need_params)]
        grad_params = [torch.zeros_like(p) for p in params]
        # Only x and the weights need gradients (fixed masks, no learnable slope): use the
        # activation's derivative D, grad_x = sum_j g_j * (W_j @ D), and skip the gradient of
        # every perturbed value. With a known derivative (ReLU, tanh, sigmoid) all in place.
        by_derivative = not need_masks and not any(need_params)
        in_place = by_derivative and act.with_derivative is not None
        block = nc * nk * nb * pixels
        ybuf = torch.empty(block, **factory) if in_place else None
        dbuf = torch.empty(block, **factory) if in_place and need_x else None
        one = torch.ones((), **factory)
        g = grad_out.reshape(batch, channels, fanout, pixels)
        for b0 in range(0, batch, nb):
            b1 = min(batch, b0 + nb)
            nbp = (b1 - b0) * pixels
            xt = x[b0:b1].reshape(b1 - b0, channels, pixels).transpose(0, 1).unsqueeze(1)
            xt = xt.contiguous()
            # Tensor[channels, fanout, nb * pixels]
            gt = g[b0:b1].permute(1, 2, 0, 3).reshape(channels, fanout, nbp)
            gxt = torch.empty(channels, nbp, **factory) if need_x else None
            for c0 in range(0, channels, nc):
                c1 = min(channels, c0 + nc)
                mc = m4 if mask_channels == 1 else m4[c0:c1]
                # sum_k W[c, j, k] * D[c, k, p], accumulated over the mask blocks
                wd = (
                    torch.empty(c1 - c0, fanout, nbp, **factory)
                    if by_derivative and need_x
                    else None
                )
                for k0 in range(0, nmasks, nk):
                    k1 = min(nmasks, k0 + nk)
                    wk = w[c0:c1, :, k0:k1]
                    shape = (c1 - c0, k1 - k0, b1 - b0, pixels)
                    deriv: Optional[Tensor] = None
                    if ybuf is not None:
                        a = torch.add(xt[c0:c1], mc[:, k0:k1], alpha=level, out=_block(ybuf, shape))
                        if dbuf is not None:
                            deriv = _block(dbuf, shape)
                            act.with_derivative(a, deriv)  # type: ignore[misc]
                        else:
                            act.inplace(a)  # type: ignore[misc]
                        a = a.reshape(c1 - c0, k1 - k0, nbp)
                    else:
                        y = torch.add(xt[c0:c1], mc[:, k0:k1], alpha=level)
                        with torch.enable_grad():
                            y.requires_grad_(need_y)
                            a = act.fn(y, *leaves).reshape(c1 - c0, k1 - k0, nbp)
                        if need_y and by_derivative:
                            (deriv,) = torch.autograd.grad(a, y, one.expand(a.shape))
                    if grad_w is not None:
                        grad_w[c0:c1, :, k0:k1] += torch.bmm(gt[c0:c1], a.detach().transpose(1, 2))
                    if not need_y:
                        continue
                    if wd is not None and deriv is not None:
                        deriv = deriv.reshape(c1 - c0, k1 - k0, nbp)
                        if k0 == 0:
                            torch.bmm(wk, deriv, out=wd)
                        else:
                            wd.baddbmm_(wk, deriv)
                        continue
                    grad_a = torch.bmm(wk.transpose(1, 2), gt[c0:c1])
                    inputs = [y] + [leaf for leaf in leaves if leaf.requires_grad]
                    grads = torch.autograd.grad(a, inputs, grad_a)
                    grad_y = grads[0].reshape(c1 - c0, k1 - k0, nbp)
                    for acc, grad in zip(
                        [p for p, leaf in zip(grad_params, leaves) if leaf.requires_grad], grads[1:]
                    ):
                        acc += grad
                    if gxt is not None:
                        if k0 == 0:
                            torch.sum(grad_y, 1, out=gxt[c0:c1])
                        else:
                            gxt[c0:c1] += grad_y.sum(1)
                    if grad_m is not None:
                        per_mask = grad_y.reshape(c1 - c0, k1 - k0, b1 - b0, pixels).sum(2)
                        if mask_channels == 1:
                            grad_m[0, k0:k1] += per_mask.sum(0)
                        else:
                            grad_m[c0:c1, k0:k1] += per_mask
                if wd is not None and gxt is not None:
                    if fanout == 1:
                        torch.mul(gt[c0:c1, 0], wd[:, 0], out=gxt[c0:c1])
                    else:
                        torch.sum(gt[c0:c1] * wd, 1, out=gxt[c0:c1])
            if grad_x is not None and gxt is not None:
                grad_x[b0:b1].copy_(gxt.reshape(channels, b1 - b0, pixels).transpose(0, 1))
        return (
            None if grad_x is None else grad_x.reshape(x.shape),
            None if grad_m is None else (grad_m * level).reshape(masks.shape),
            None if grad_w is None else grad_w.reshape(weight.shape),
            grad_out.sum((0, 2, 3)) if need_bias else None,
            None,
            None,
            None,
            *(grad if need else None for grad, need in zip(grad_params, need_params)),
        )


def perturb_act_conv2d_chunked(
    x: Tensor,
    masks: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    level: float,
    act: Pointwise,
    budget: Optional[int] = None,
) -> Tensor:
    """``conv2d(act(perturb(x, masks, level)), weight, bias, groups=channels)``, block by block.

    Never holds more than about ``budget`` perturbed values at once, in forward or backward.

    Args:
        x: ``Tensor[batch_size, channels, height, width]`` (checked by the caller).
        masks: ``Tensor[channels or 1, nmasks, height, width]``, ``nmasks > 1``; cast to ``x``'s
            dtype.
        weight: ``Tensor[out_channels, nmasks, 1, 1]``; cast to ``x``'s dtype.
        bias: optional ``Tensor[out_channels]``; cast to ``x``'s dtype.
        level: noise amplitude.
        act: the deterministic element-wise activation.
        budget: perturbed values per block (default :func:`default_budget` of ``x``'s device).

    Returns:
        ``Tensor[batch_size, out_channels, height, width]`` of ``x``'s dtype.
    """
    if budget is None:
        budget = default_budget(x.device.type)
    dtype = x.dtype
    params = tuple(p.to(dtype) for p in act.params)
    out: Tensor = _PerturbActConv.apply(
        x,
        masks.to(dtype),
        weight.to(dtype),
        None if bias is None else bias.to(dtype),
        level,
        act,
        budget,
        *params,
    )
    return out
