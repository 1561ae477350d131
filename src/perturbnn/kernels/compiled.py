"""Compiled PNN layer with an activation: perturb, activate and reduce fused by ``torch.compile``.

Source: PNN, Sec. 3, Eq. 2. The layer is written as one expression over a broadcast view,
``sum_m W[o, m] * act(x[b, g(o)] + noise[g(o), m])``, and handed to ``torch.compile``. Inductor
fuses the perturbation, the activation and the per-group reduction into one loop nest, so the
perturbed tensor is not stored; for the backward pass AOTAutograd's min-cut partitioner saves only
the inputs and recomputes the cheap element-wise part inside the fused gradient kernels.

Inductor may still decide to store an element-wise intermediate inside a gradient kernel (it
does for ``sigmoid``/``tanh``, and when the masks are trainable, where three reductions share
it). To bound that, the layer is cut into blocks of whole channel groups (the groups are
independent), each compiled call covering at most :data:`BLOCK_ELEMENTS` perturbed values; the
blocks are joined by ``split``/``cat``, whose backward passes are one copy each.

The weight enters expanded over the batch (a view, no copy), so that its gradient is a sum over
one sample's pixels, then a sum of the ``batch`` partial sums. Written as one sum over
``batch * height * width`` values, inductor's CPU code accumulated it through a summation
helper in memory at every vector (reductions longer than 4,096 values get one), several times
slower on one thread than on two: the layer's step on one thread took 2.5 times its two-thread
time, which a process lowered to one thread beside another job pays (docs/performance.md,
"Sharing the CPU", the ``one`` rows of ``bench_contention.py``).

A single-slope ``PReLU`` is compiled as two sums, ``pos = sum_m W relu(p)`` and
``neg = sum_m W min(p, 0)``, joined outside as ``pos + slope * neg``: the same layer, but the
slope's gradient becomes a sum over the output instead of one float32 reduction over every
perturbed value, whose rounding (7e-5 relative on the benchmark's large layer, where its terms
cancel) exceeded the 1e-5 that every fast path must meet against the literal layer.

Where compilation is unavailable (no C++ compiler, an unsupported Python or platform), the first
failure emits one ``RuntimeWarning`` and every later call uses the eager chunked path.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from perturbnn.kernels.activation import Pointwise
from perturbnn.kernels.chunked import perturb_act_conv2d_chunked

__all__ = ["compiled_available", "perturb_act_conv2d_compiled"]


def _fused(
    x: Tensor,
    noise: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    activation: Callable[[Tensor], Tensor],
) -> Tensor:  # pragma: no mutate block (torch.compile copies its code: no mutmut trampoline)
    """The literal layer as one broadcast expression, for ``torch.compile`` to fuse."""
    batch, channels, height, width = x.shape
    nmasks = noise.shape[1]
    out_channels = weight.shape[0]
    fanout = out_channels // channels
    perturbed = (x.unsqueeze(2) + noise.unsqueeze(0)).reshape(
        batch, channels * nmasks, height, width
    )
    a = activation(perturbed).reshape(batch, channels, 1, nmasks, height * width)
    w = weight.reshape(1, channels, fanout, nmasks, 1).expand(batch, -1, -1, -1, -1)
    out = (a * w).sum(3)
    out = out.reshape(batch, out_channels, height, width)
    if bias is not None:
        out = out + bias.reshape(1, out_channels, 1, 1)
    return out


def _fused_prelu_parts(
    x: Tensor,
    noise: Tensor,
    weight: Tensor,
) -> tuple[Tensor, Tensor]:  # pragma: no mutate block (torch.compile copies its code)
    """The two halves of a single-slope PReLU layer: ``sum_m W relu(p)`` and ``sum_m W min(p, 0)``.

    ``prelu(p, a) = relu(p) + a * min(p, 0)``, with ``min(p, 0)`` written ``p - relu(p)`` so that
    the derivative at ``p = 0`` is PReLU's ``a`` (inductor's ``clamp`` gives 0 there), so
    the layer is ``pos + a * neg``, ``Tensor[batch, out_channels, height, width]`` each. The
    slope's gradient then is one sum over ``batch * out_channels * height * width`` products,
    left to the caller, instead of one float32 reduction over all ``nmasks`` times more
    perturbed values inside a fused kernel (which cancel: the rounding error of that reduction
    was 7e-5 relative on the benchmark's large layer).
    """
    batch, channels, height, width = x.shape
    nmasks = noise.shape[1]
    out_channels = weight.shape[0]
    fanout = out_channels // channels
    perturbed = (x.unsqueeze(2) + noise.unsqueeze(0)).reshape(
        batch, channels, 1, nmasks, height * width
    )
    w = weight.reshape(1, channels, fanout, nmasks, 1).expand(batch, -1, -1, -1, -1)
    positive = torch.relu(perturbed)
    negative = perturbed - positive  # min(p, 0) exactly, derivative 1 at p = 0 as PReLU's
    pos = (positive * w).sum(3).reshape(batch, out_channels, height, width)
    neg = (negative * w).sum(3).reshape(batch, out_channels, height, width)
    return pos, neg


def _prelu_from_parts(
    parts: Callable[..., tuple[Tensor, Tensor]],
    slope: Tensor,
    x: Tensor,
    noise: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    activation: object,
) -> Tensor:
    """``pos + slope * neg (+ bias)`` from the compiled :func:`_fused_prelu_parts` (same arguments
    as :func:`_fused`, so that :func:`_fused_blocks` can cut it into blocks)."""
    pos, neg = parts(x, noise, weight)
    out = pos + slope * neg
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` with static shapes (a seam for the tests, which simulate a failure)."""
    compiled: Callable[..., Any] = torch.compile(fn, dynamic=False)
    return compiled


def _fresh_copy(key: int, fn: Callable[..., Any] = _fused) -> Callable[..., Any]:
    """A copy of ``fn`` (:func:`_fused` or :func:`_fused_prelu_parts`) with its own code object.

    ``torch.compile`` keeps its compiled graphs per code object, up to a small recompile limit
    (8), after which it silently runs the Python function uncompiled, which here would build
    the perturbed tensor. Every layer shape gets its own copy, hence its own cache, so a network
    with many layer shapes stays compiled with static-shape kernels (faster than dynamic ones).
    """
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{key}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__)


_state: dict[str, Any] = {"fns": {}, "error": None}

#: ``torch.compiler.is_compiling`` (torch >= 2.3) or its older private name.
_is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", None) or (
    torch._dynamo.is_compiling
)


def compiled_available() -> bool:
    """``False`` once compilation has failed in this process (the eager path is used then)."""
    return _state["error"] is None


def _reset() -> None:
    """Forget the compiled functions and any failure (for the tests)."""
    _state["fns"] = {}
    _state["error"] = None


def _compiled_for(
    x: Tensor, noise: Tensor, weight: Tensor, fn: Callable[..., Any] = _fused
) -> Callable[..., Any]:
    """The compiled ``fn`` for these shapes, dtype, device and (on the CPU) thread count.

    Inductor's CPU kernels fix their OpenMP thread count when they are generated, unless it
    equals ``os.cpu_count()``: a kernel compiled at 4 threads keeps using 4 after
    ``torch.set_num_threads(1)``, and beside another busy process its threads then wait for
    each other at every kernel (docs/performance.md, "Sharing the CPU"). Each thread count
    therefore gets its own compiled function (compiled once, on first use).
    """
    threads = torch.get_num_threads() if x.device.type == "cpu" else 0
    key = (
        fn.__name__,
        tuple(x.shape[1:]),
        tuple(noise.shape),
        tuple(weight.shape),
        x.dtype,
        x.device,
        threads,
    )
    fns: dict[Any, Callable[..., Any]] = _state["fns"]
    if key not in fns:
        fns[key] = _compile(_fresh_copy(len(fns), fn))
    return fns[key]


#: Perturbed values per compiled call, by device type (the block's channels are the largest
#: divisor of ``channels`` that fits, at least one).
BLOCK_ELEMENTS: dict[str, int] = {"cpu": 1 << 23, "cuda": 1 << 27}


def _block_channels(channels: int, per_channel: int, budget: int) -> int:
    """The largest divisor of ``channels`` with at most ``budget`` values per block (or 1)."""
    limit = max(1, budget // max(per_channel, 1))
    return max(d for d in range(1, channels + 1) if channels % d == 0 and d <= limit)


def _fused_blocks(
    x: Tensor,
    noise: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    activation: Callable[[Tensor], Tensor],
    fn: Callable[..., Tensor],
) -> Tensor:
    """``fn`` (the compiled :func:`_fused`) on blocks of channel groups, outputs concatenated."""
    batch, channels, height, width = x.shape
    mask_channels, nmasks = noise.shape[:2]
    fanout = weight.shape[0] // channels
    budget = BLOCK_ELEMENTS.get(x.device.type, BLOCK_ELEMENTS["cpu"])
    nc = _block_channels(channels, batch * nmasks * height * width, budget)
    if nc == channels:
        return fn(x, noise, weight, bias, activation)
    blocks = channels // nc
    xs = x.split_with_sizes([nc] * blocks, 1)
    ws = weight.split_with_sizes([nc * fanout] * blocks, 0)
    bs: Sequence[Optional[Tensor]] = (
        [None] * blocks if bias is None else bias.split_with_sizes([nc * fanout] * blocks, 0)
    )
    ns = [noise] * blocks if mask_channels == 1 else noise.split_with_sizes([nc] * blocks, 0)
    return torch.cat([fn(xi, ni, wi, bi, activation) for xi, ni, wi, bi in zip(xs, ns, ws, bs)], 1)


def perturb_act_conv2d_compiled(
    x: Tensor,
    masks: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    level: float,
    activation: Callable[[Tensor], Tensor],
    act: Pointwise,
) -> Tensor:
    """``conv2d(act(perturb(x, masks, level)), weight, bias, groups=channels)`` by fused kernels.

    Args:
        x: ``Tensor[batch_size, channels, height, width]`` (checked by the caller).
        masks: ``Tensor[channels or 1, nmasks, height, width]``, ``nmasks > 1``.
        weight: ``Tensor[out_channels, nmasks, 1, 1]``.
        bias: optional ``Tensor[out_channels]``.
        level: noise amplitude.
        activation: the activation as given (applied to the 4-D perturbed tensor, as in the
            grouped formulation).
        act: the same activation as a :class:`~perturbnn.kernels.activation.Pointwise`, for the
            eager fallback.

    Returns:
        ``Tensor[batch_size, out_channels, height, width]`` of ``x``'s dtype.

    An activation with a parameter of another dtype than ``x`` (a float32 ``PReLU`` slope when
    autocast hands a bfloat16 ``x``) takes the eager chunked path, which casts the parameter to
    ``x``'s dtype as every fast path does (inside a caller's own ``torch.compile``, where
    :func:`_fused` is traced whole, ``prelu`` would not promote and tracing would fail).
    """
    if _state["error"] is None and all(p.dtype == x.dtype for p in act.params):
        dtype = x.dtype
        noise = masks.to(dtype) * level
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        if _is_compiling():  # inside the caller's own torch.compile: let it fuse the expression
            return _fused(x, noise, w, b, activation)
        try:
            if act.params:  # a single-slope PReLU (the only Pointwise with a parameter)
                parts = _compiled_for(x, noise, w, _fused_prelu_parts)
                slope = act.params[0]
                return _fused_blocks(
                    x, noise, w, b, activation, lambda *a: _prelu_from_parts(parts, slope, *a)
                )
            return _fused_blocks(x, noise, w, b, activation, _compiled_for(x, noise, w))
        except Exception as error:  # compilation unavailable: fall back once, say so once
            _state["error"] = error
            first_line = (str(error).strip().splitlines() or [""])[0]
            warnings.warn(
                f"impl='compiled': torch.compile is unavailable here ({type(error).__name__}: "
                f"{first_line}); using the eager chunked path instead",
                RuntimeWarning,
                stacklevel=3,
            )
    return perturb_act_conv2d_chunked(x, masks, weight, bias, level, act)
