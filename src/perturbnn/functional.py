"""Functional form of the PNN perturbation layer: the math lives here.

Source: Juefei-Xu, Boddeti and Savvides, "Perturbative Neural Networks", CVPR 2018, Sec. 3
(Eq. 2: each input map is perturbed by fixed additive noise masks, passed through a
non-linearity, and linearly combined by learnable weights, i.e. a 1x1 convolution).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from perturbnn._validation import check_batch, check_choice, check_positive_int
from perturbnn.kernels.activation import pointwise_activation
from perturbnn.kernels.chunked import perturb_act_conv2d_chunked
from perturbnn.kernels.compiled import perturb_act_conv2d_compiled
from perturbnn.kernels.linear import perturb_conv2d_linear

__all__ = ["IMPLS", "check_perturb_input", "perturb", "perturb_conv2d", "pool", "resolve_impl"]

#: Valid ``impl`` names of :func:`perturb_conv2d` and the layers: ``"grouped"`` (the literal
#: formulation; the reference, and cuDNN's grouped convolution on CUDA), ``"eager"`` (exact fast
#: paths in plain PyTorch), ``"compiled"`` (``torch.compile`` fused kernel, falls back to eager
#: with one warning where compilation is unavailable), ``"auto"`` (the fastest exact path that
#: needs no compilation: ``"eager"``).
IMPLS = ("auto", "compiled", "eager", "grouped")


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
    mask_channels, _, height, width = masks.shape
    check_batch(
        x,
        channels=None if mask_channels == 1 else mask_channels,
        size=(height, width),
        size_name="the masks' (height, width)",
        device=masks.device,
        device_name="the noise masks",
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


def resolve_impl(
    impl: str,
    nmasks: int,
    activation: Optional[Callable[[Tensor], Tensor]] = None,
) -> str:
    """Name the computation :func:`perturb_conv2d` uses for ``impl`` and this layer.

    - No activation: ``"linear"`` (the exact algebraic form) for every ``impl`` but
      ``"grouped"``; ``"compiled"`` has nothing to fuse there.
    - An activation and ``nmasks > 1``: ``"chunked"`` for ``"eager"`` and ``"auto"``,
      ``"compiled"`` for ``"compiled"``, if the activation is deterministic and element-wise
      (see below); otherwise ``"grouped"``.
    - An activation and ``nmasks == 1``: ``"grouped"`` (the perturbed tensor is no larger than
      the input; there is nothing to save).

    The fast paths with an activation apply it to pieces of the perturbed tensor, which is exact
    only for a deterministic element-wise activation: the modules of
    :data:`perturbnn.activations.ACTIVATIONS` (``RReLU`` in eval mode only, since in training it
    draws random slopes; ``PReLU`` with a single slope), a few more ``torch.nn`` ones (GELU,
    SiLU, Mish, CELU, Softplus, Hardtanh, ReLU6, Hardswish, Hardsigmoid, Identity) and the
    functions ``relu``, ``leaky_relu``, ``elu``, ``selu``, ``gelu``, ``silu``, ``mish``, ``tanh``,
    ``sigmoid`` of ``torch``/``torch.nn.functional``. Any other activation takes the
    ``"grouped"`` path whatever ``impl`` says.

    Args:
        impl: one of :data:`IMPLS`.
        nmasks: masks per input channel.
        activation: the activation between noise and 1x1 convolution, or ``None``.

    Returns:
        ``"grouped"``, ``"linear"``, ``"chunked"`` or ``"compiled"``.

    Raises:
        TypeError, ValueError: if ``impl`` is not one of :data:`IMPLS`.

    Example::

        >>> resolve_impl("auto", 64, torch.relu), resolve_impl("auto", 64, None)
        ('chunked', 'linear')
    """
    check_choice("impl", impl, IMPLS)
    if impl == "grouped":
        return "grouped"
    if activation is None:
        return "linear"
    if nmasks == 1 or pointwise_activation(activation) is None:
        return "grouped"
    return "compiled" if impl == "compiled" else "chunked"


def perturb_conv2d(
    x: Tensor,
    masks: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    level: float,
    activation: Optional[Callable[[Tensor], Tensor]] = None,
    impl: str = "grouped",
    stride: int = 1,
    pool_type: str = "max",
) -> Tensor:
    """Perturb ``x`` with noise masks, optionally activate, then mix with a 1x1 convolution.

    The literal (grouped) formulation of a PNN layer (PNN, Sec. 3, Eq. 2) materializes the whole
    perturbed tensor ``Tensor[batch_size, channels * nmasks, height, width]``. The 1x1
    convolution is grouped by input channel (``groups = channels``) when ``nmasks > 1``, and
    dense otherwise. ``impl`` chooses how it is computed; every choice gives the same outputs and
    gradients up to floating-point rounding (see :func:`resolve_impl`):

    - ``"grouped"`` (default here): the literal formulation, ``perturb`` then ``conv2d``.
    - ``"eager"`` / ``"auto"``: without activation, the layer is linear in ``x``: a per-channel
      scaling of ``x`` by the weights summed over each channel's masks (a dense 1x1 convolution
      when ``nmasks == 1``) plus a fixed bias map, the 1x1 convolution of ``level * masks``
      (:mod:`perturbnn.kernels.linear`). With an activation, the masks are processed in cache-sized
      blocks and recomputed in backward, so only the inputs are kept
      (:mod:`perturbnn.kernels.chunked`); not differentiable twice.
    - ``"compiled"``: with an activation, ``torch.compile`` fuses perturbation, activation and
      the per-group sum into one kernel with a recomputing backward
      (:mod:`perturbnn.kernels.compiled`); the first call per shape compiles (seconds); not
      differentiable twice. Where compilation is unavailable it warns once and uses
      ``"eager"``. Without activation it is ``"eager"``'s algebraic form.

    While ``torch.export.export`` or ``torch.onnx.export`` traces the layer, the blocked paths
    with an activation (``"eager"``, ``"compiled"``) give way to the literal formulation, which
    exports as plain operators (same numbers).

    Under ``torch.autocast`` the fast paths run in the autocast dtype, as the grouped path's
    ``conv2d`` does. Measurements: ``docs/performance.md``.

    Args:
        x: ``Tensor[batch_size, channels, height, width]``.
        masks: ``Tensor[channels or 1, nmasks, height, width]`` of unit noise.
        weight: ``Tensor[out_channels, channels * nmasks / groups, 1, 1]``.
        bias: optional ``Tensor[out_channels]``.
        level: noise amplitude.
        activation: optional function applied to the perturbed tensor before the 1x1
            convolution.
        impl: ``"grouped"``, ``"eager"``, ``"compiled"`` or ``"auto"`` (see :data:`IMPLS`).
        stride: downsampling after the layer: a ``pool_type`` pooling with window and stride
            ``stride`` and ``ceil_mode=True``, so the output has ``ceil(height / stride)`` rows,
            as an ``nn.Conv2d`` with an odd kernel, ``padding = kernel_size // 2`` and this
            stride (the original paper's blocks downsample by pooling after a noise layer).
        pool_type: ``"max"`` or ``"avg"``.

    Returns:
        ``Tensor[batch_size, out_channels, ceil(height / stride), ceil(width / stride)]`` of
        ``x``'s dtype.

    Raises:
        TypeError, ValueError: see :func:`check_perturb_input`; ``ValueError`` if ``weight`` does
            not fit the perturbed tensor or ``impl`` is unknown.

    Example::

        >>> x, masks = torch.randn(2, 3, 8, 8), torch.rand(3, 1, 8, 8)
        >>> perturb_conv2d(x, masks, torch.randn(16, 3, 1, 1), level=0.1).shape
        torch.Size([2, 16, 8, 8])
        >>> perturb_conv2d(x, torch.rand(3, 4, 8, 8), torch.randn(6, 4, 1, 1), level=0.1,
        ...                activation=torch.relu, impl="eager").shape
        torch.Size([2, 6, 8, 8])
    """
    check_perturb_input(x, masks)  # before the weight check, which reads x's channels
    channels = x.shape[1]
    nmasks = masks.shape[1]
    groups = channels if nmasks > 1 else 1
    expected = (weight.shape[0], channels * nmasks // max(groups, 1), 1, 1)
    if weight.dim() != 4 or tuple(weight.shape) != expected:
        raise ValueError(
            f"weight must have shape {expected} for {channels} input channels and "
            f"nmasks={nmasks}, got {tuple(weight.shape)}"
        )
    if stride != 1:
        return pool(
            perturb_conv2d(x, masks, weight, bias, level=level, activation=activation, impl=impl),
            stride,
            pool_type,
        )
    path = resolve_impl(impl, nmasks, activation)
    if path in ("chunked", "compiled") and _exporting():
        # The blocked kernels write into preallocated buffers, which torch.export cannot trace;
        # the literal formulation gives the same numbers and exports as plain operators.
        path = "grouped"
    if path != "grouped":
        if groups > 1 and weight.shape[0] % channels != 0:
            raise ValueError(
                f"weight must have a multiple of {channels} output channels (groups={groups}), "
                f"got {weight.shape[0]}"
            )
        autocast_dtype = _autocast_dtype(x)
        if autocast_dtype is None:
            return _fast(path, x, masks, weight, bias, level, activation)
        # Under autocast the grouped path's conv2d runs in the autocast dtype; do the same, with
        # autocast off inside so that the fast paths' own matrix products see one dtype.
        with torch.autocast(x.device.type, enabled=False):
            return _fast(path, x.to(autocast_dtype), masks, weight, bias, level, activation)
    y = perturb(x, masks, level)
    if activation is not None:
        y = activation(y)
    return F.conv2d(
        y, weight.to(y.dtype), None if bias is None else bias.to(y.dtype), groups=groups
    )


def pool(x: Tensor, stride: int, pool_type: str = "max") -> Tensor:
    """Downsample by ``stride``: the pooling a strided perturbation layer ends with.

    Args:
        x: ``Tensor[batch_size, channels, height, width]``.
        stride: window and stride of the pooling (``ceil_mode=True``: partial windows at the
            border count, averaging only the pixels inside).
        pool_type: ``"max"`` or ``"avg"``.

    Returns:
        ``Tensor[batch_size, channels, ceil(height / stride), ceil(width / stride)]``.

    Raises:
        TypeError, ValueError: on a non-positive ``stride`` or an unknown ``pool_type``.

    Example::

        >>> pool(torch.randn(2, 3, 9, 12), 2).shape
        torch.Size([2, 3, 5, 6])
    """
    check_positive_int("stride", stride)
    check_choice("pool_type", pool_type, ("max", "avg"))
    if stride == 1:
        return x
    if pool_type == "max":
        return F.max_pool2d(x, stride, stride, ceil_mode=True)
    return F.avg_pool2d(x, stride, stride, ceil_mode=True)


def _exporting() -> bool:
    """``True`` while ``torch.export`` (and so ``torch.onnx.export``) traces the model."""
    compiler = getattr(torch, "compiler", None)
    is_exporting = getattr(compiler, "is_exporting", None)
    if is_exporting is not None and bool(is_exporting()):
        return True
    return bool(torch.onnx.is_in_onnx_export())


def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast would run a convolution of float32 ``x`` in, or ``None``."""
    if x.dtype != torch.float32:
        return None
    device = x.device.type
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        if not torch.is_autocast_enabled(device):
            return None
        return torch.get_autocast_dtype(device)
    if device == "cpu":  # pragma: no cover - torch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    if device == "cuda" and torch.is_autocast_enabled():  # pragma: no cover - torch < 2.4
        return torch.get_autocast_gpu_dtype()
    return None  # pragma: no cover


def _fast(
    path: str,
    x: Tensor,
    masks: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    level: float,
    activation: Optional[Callable[[Tensor], Tensor]],
) -> Tensor:
    """Run the fast ``path`` (``"linear"``, ``"chunked"`` or ``"compiled"``) of the layer."""
    if path == "linear" or activation is None:
        return perturb_conv2d_linear(x, masks, weight, bias, level)
    act = pointwise_activation(activation)
    assert act is not None  # resolve_impl checked it
    if path == "chunked":
        return perturb_act_conv2d_chunked(x, masks, weight, bias, level, act)
    return perturb_act_conv2d_compiled(x, masks, weight, bias, level, activation, act)
