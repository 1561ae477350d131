"""PNN layers as ``torch.nn`` modules: thin wrappers over :mod:`perturbnn.functional`.

Source: Juefei-Xu et al., "Perturbative Neural Networks", CVPR 2018, Sec. 3, and the options of
the independent reproduction (seed notes: ``--nmasks``, ``--unique_masks``, ``--train_masks``,
``--mix_maps``, ``--noise_type``, ``--level``, ``--filter_size``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from perturbnn import functional as PF
from perturbnn._validation import (
    SizeLike,
    check_batch,
    check_bool,
    check_choice,
    check_level,
    check_positive_int,
    check_size,
)
from perturbnn.activations import ACTIVATIONS, make_activation
from perturbnn.noise import (
    NOISE_TYPES,
    DeviceLike,
    NoiseMask,
    drop_lazy_hooks,
    refuse_tracing,
    replicate_materialized,
)

__all__ = ["NOISE_TYPES", "MixMaps", "NoiseMask", "PerturbConv2d", "PerturbLayer"]

#: Valid ``pool_type`` names of a strided perturbation layer.
POOL_TYPES = ("max", "avg")

def _check_activation(activation: object) -> None:
    if activation is not None and not isinstance(activation, nn.Module):
        raise TypeError(f"activation must be an nn.Module or None, got {type(activation).__name__}")


class PerturbConv2d(LazyModuleMixin, nn.Module):
    """Drop-in replacement for a convolution: perturb with noise masks, activate, mix by 1x1 conv.

    ``y = conv1x1(act(x + level * masks))``, where the perturbed tensor has ``in_channels *
    nmasks`` maps. The 1x1 convolution is grouped by input channel (``groups = in_channels``) when
    ``nmasks > 1``, so each output map combines the perturbed versions of one input channel, and
    dense when ``nmasks == 1``. There is no BatchNorm inside (see :class:`PerturbLayer`). The
    perturbation keeps the spatial size; a ``stride`` is a ``pool_type`` pooling by ``stride``
    after the 1x1 convolution (as the original paper's blocks downsample), which gives the output
    size ``ceil(height / stride)`` of the ``nn.Conv2d`` with ``padding = kernel_size // 2``
    (odd kernel) it replaces.

    With ``input_size=None`` (the default) the masks take the first input's height and width
    (see :class:`NoiseMask`); the layer is then fixed to that size.

    Source: PNN, Sec. 3, Eq. 2; Klachko's ``PerturbLayer`` with ``filter_size=0``; the
    original code's pooling after a noise layer for downsampling.

    Args:
        in_channels: input channels ``C``.
        out_channels: output channels ``O``; a multiple of ``in_channels`` when ``nmasks > 1``.
        nmasks: noise masks per input channel (fanout).
        input_size: spatial size of the input, ``int`` or ``(height, width)`` (the masks' size);
            ``None``: taken from the first input.
        level: noise amplitude.
        stride: downsampling factor, a pooling by ``stride`` (window ``stride``, ``ceil_mode``)
            after the layer.
        pool_type: ``"max"`` or ``"avg"`` pooling for ``stride > 1``.
        noise_type, unique_masks, train_masks, generator: as in :class:`NoiseMask`.
        use_act: apply ``act`` between the perturbation and the 1x1 convolution.
        act: activation name (see :data:`perturbnn.activations.ACTIVATIONS`).
        activation: with ``use_act``, the activation module to apply instead of a new one made
            from ``act`` (it should be the module ``act`` names). :class:`PerturbLayer` passes
            the one module that it reuses throughout the layer, so that a ``prelu`` slope is
            shared as in Klachko's reproduction. Default: a new module.
        bias: learn a bias in the 1x1 convolution.
        impl: how the layer is computed; every choice gives the same outputs and gradients up
            to rounding (see :func:`perturbnn.functional.perturb_conv2d`). ``"grouped"``: the
            literal formulation (perturbed tensor, grouped 1x1 convolution; the reference and
            the cuDNN path on CUDA). ``"eager"``: without ``use_act`` the exact algebraic form
            (a per-channel scaling of the input plus a bias map), with it masks in cache-sized
            blocks recomputed in backward. ``"compiled"``: with ``use_act``, a ``torch.compile``
            fused kernel (compiles on the first call per shape; falls back to ``"eager"`` with
            one warning where compilation is unavailable). ``"auto"``: the fastest exact path
            that needs no compilation (``"eager"``).
        device, dtype: factory keyword arguments.

    Shape:
        - Input: ``Tensor[batch_size, in_channels, height, width]``.
        - Output: ``Tensor[batch_size, out_channels, ceil(height / stride), ceil(width / stride)]``.
        - ``weight``: ``Tensor[out_channels, in_channels * nmasks / groups, 1, 1]``.

    Raises:
        TypeError: on an argument of the wrong type.
        ValueError: on invalid sizes, level, names, or ``out_channels`` not a multiple of
            ``in_channels`` under fanout; in ``forward``, on an input of another spatial size
            than the masks'.

    Example::

        >>> layer = PerturbConv2d(16, 32, nmasks=4, input_size=8, level=0.1, use_act=True)
        >>> layer(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
        >>> PerturbConv2d(16, 32, stride=2)(torch.randn(2, 16, 9, 12)).shape
        torch.Size([2, 32, 5, 6])
    """

    cls_to_become = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        nmasks: int = 1,
        *,
        input_size: Optional[SizeLike] = None,
        level: float = 0.1,
        stride: int = 1,
        pool_type: str = "max",
        noise_type: str = "uniform",
        unique_masks: bool = True,
        train_masks: bool = False,
        use_act: bool = False,
        act: str = "relu",
        activation: Optional[nn.Module] = None,
        bias: bool = True,
        impl: str = "auto",
        generator: Optional[torch.Generator] = None,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        _check_activation(activation)
        self.impl = check_choice("impl", impl, PF.IMPLS)
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.nmasks = check_positive_int("nmasks", nmasks)
        self.use_act = check_bool("use_act", use_act)
        self.act = check_choice("act", act, ACTIVATIONS)
        self.stride = check_positive_int("stride", stride)
        self.pool_type = check_choice("pool_type", pool_type, POOL_TYPES)
        check_bool("bias", bias)
        if nmasks > 1 and out_channels % in_channels != 0:
            raise ValueError(
                f"out_channels must be a multiple of in_channels when nmasks > 1 (the 1x1 "
                f"convolution is grouped by input channel), got out_channels={out_channels}, "
                f"in_channels={in_channels}, nmasks={nmasks}"
            )
        self.groups = in_channels if nmasks > 1 else 1
        self.noise = NoiseMask(
            in_channels,
            nmasks,
            input_size,
            level=level,
            noise_type=noise_type,
            unique_masks=unique_masks,
            train_masks=train_masks,
            generator=generator,
            **factory_kwargs,
        )
        if not use_act:
            activation = None
        elif activation is None:
            activation = make_activation(act)
        self.activation: Optional[nn.Module] = activation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels * nmasks // self.groups, 1, 1, **factory_kwargs)
        )
        if bias:
            self.bias: Optional[nn.Parameter] = nn.Parameter(
                torch.empty(out_channels, **factory_kwargs)
            )
        else:
            self.register_parameter("bias", None)
        if self.noise.input_size is not None:
            drop_lazy_hooks(self)
        self.reset_parameters()

    @property
    def input_size(self) -> Optional[tuple[int, int]]:
        """``(height, width)`` of the masks, or ``None`` before a lazy layer's first input."""
        return self.noise.input_size

    def has_uninitialized_params(self) -> bool:
        """``True`` until the masks have a size (lazy layer not yet materialized)."""
        return self.noise.input_size is None

    def _replicate_for_data_parallel(self) -> Any:
        return replicate_materialized(self)

    def initialize_parameters(self, x: Tensor, *args: Any, **kwargs: Any) -> None:
        """Draw the masks for ``x``'s height and width if they have no size yet (lazy hook).

        Raises:
            RuntimeError: inside ``torch.export``, ``torch.onnx.export`` or ``torch.jit.trace``
                (nothing is changed: run one forward pass on a real input first).
        """
        if self.noise.input_size is None:
            refuse_tracing(self, x, getattr(self.noise, "module_name", None))
        self.noise.initialize_parameters(x)
        drop_lazy_hooks(self.noise)

    def reset_parameters(self) -> None:
        """Initialise the 1x1 weights and bias as ``nn.Conv2d`` does; the masks are kept."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def level(self) -> float:
        """Noise amplitude of the masks."""
        return self.noise.level

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer: see :func:`perturbnn.functional.perturb_conv2d`."""
        if x.dim() == 4 and x.shape[1] != self.in_channels:
            raise ValueError(f"input must have {self.in_channels} channels, got {x.shape[1]}")
        self.noise.check_input_size(x)
        return PF.perturb_conv2d(
            x,
            self.noise.masks,
            self.weight,
            self.bias,
            level=self.noise.level,
            activation=self.activation,
            impl=self.impl,
            stride=self.stride,
            pool_type=self.pool_type,
        )

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}"
        if self.nmasks != 1:
            s += f", nmasks={self.nmasks}"
        if self.stride != 1:
            s += f", stride={self.stride}"
            if self.pool_type != "max":
                s += f", pool_type={self.pool_type!r}"
        if self.use_act:
            s += f", use_act=True, act={self.act!r}"
        if self.bias is None:
            s += ", bias=False"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        return s


class MixMaps(nn.Sequential):
    """Klachko's ``--mix_maps`` layer: 1x1 convolution + BatchNorm + activation.

    After a grouped perturbation layer each output map sees only one input channel; this extra
    dense 1x1 convolution lets the channels exchange information.

    Source: Klachko's ``--mix_maps`` option.

    Args:
        channels: input and output channels.
        act: activation name.
        activation: the activation module to use instead of a new one made from ``act``
            (:class:`PerturbLayer` passes the module it shares). Default: a new module.
        bias: learn a bias in the 1x1 convolution (Klachko's reproduction does).
        device, dtype: factory keyword arguments.

    Shape:
        ``Tensor[batch_size, channels, height, width]`` to the same shape.

    Raises:
        TypeError, ValueError: on a non-positive ``channels`` or an unknown ``act``.

    Example::

        >>> MixMaps(8)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(
        self,
        channels: int,
        act: str = "relu",
        *,
        activation: Optional[nn.Module] = None,
        bias: bool = True,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        check_positive_int("channels", channels)
        _check_activation(activation)
        if activation is None:
            activation = make_activation(act)
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv2d(
                channels, channels, kernel_size=1, bias=check_bool("bias", bias), **factory_kwargs
            ),
            nn.BatchNorm2d(channels, **factory_kwargs),
            activation,
        )


def conv_output_size(input_size: int, filter_size: int) -> int:
    """Spatial output size of :class:`PerturbLayer` for a given ``filter_size``.

    ``filter_size`` 7 has stride 2 (``ceil(input_size / 2)``); every other size keeps the size.
    """
    return (input_size + 1) // 2 if filter_size == 7 else input_size


class PerturbLayer(nn.Sequential):
    """Building block of Klachko's networks: a perturbation layer or a regular convolution.

    - ``filter_size == 0``: :class:`PerturbConv2d` + BatchNorm + activation, then :class:`MixMaps`
      when ``mix_maps=True``. As in Klachko's, one activation module serves the whole layer
      (after the noise when ``use_act``, after the BatchNorm, inside :class:`MixMaps`), so a
      ``prelu`` layer has a single learnable slope.
    - ``filter_size = n > 0`` (odd): ``n x n`` convolution + BatchNorm + activation, padding
      ``n // 2``; ``n = 7`` has stride 2 (halving the map) unless ``stride`` says otherwise; the
      convolution has a bias only for ``n = 1``. The noise options are then unused.

    ``stride`` downsamples both kinds to ``ceil(height / stride)``: the regular convolution's
    stride, or a ``pool_type`` pooling right after the perturbation layer's 1x1 convolution.

    Source: Klachko's ``PerturbLayer`` and its ``--filter_size``/``--first_filter_size``
    options. Deviation: Klachko's padded ``n = 5`` by 1 (shrinking the map by 2 pixels); here every
    odd ``n`` keeps the size.

    Args:
        in_channels, out_channels: channels in and out.
        nmasks: masks per input channel (``filter_size == 0`` only).
        filter_size: ``0`` for a perturbation layer, or an odd kernel size.
        input_size: spatial size of the input; ``None``: a perturbation layer takes it from the
            first input (lazy).
        stride: downsampling factor; ``None``: 2 for ``filter_size == 7``, else 1.
        pool_type: ``"max"`` or ``"avg"``, the pooling of a strided perturbation layer.
        level, noise_type, unique_masks, train_masks, use_act, generator: as in
            :class:`PerturbConv2d`.
        act: activation name, used after the BatchNorm (and inside when ``use_act``).
        mix_maps: add :class:`MixMaps` after a perturbation layer.
        impl: how the perturbation layer is computed (``"auto"``, ``"grouped"``, ``"eager"``,
            ``"compiled"``): see :class:`PerturbConv2d`.
        device, dtype: factory keyword arguments.

    Shape:
        - Input: ``Tensor[batch_size, in_channels, height, width]``.
        - Output: ``Tensor[batch_size, out_channels, height', width']``,
          ``height' = ceil(height / stride)``.

    Raises:
        TypeError, ValueError: on invalid arguments or an even ``filter_size``.

    Example::

        >>> PerturbLayer(3, 16, filter_size=0, input_size=8)(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
        >>> PerturbLayer(3, 16, stride=2)(torch.randn(2, 3, 8, 6)).shape
        torch.Size([2, 16, 4, 3])
        >>> PerturbLayer(3, 16, filter_size=7)(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        nmasks: int = 1,
        *,
        filter_size: int = 0,
        input_size: Optional[SizeLike] = None,
        level: float = 0.5,
        stride: Optional[int] = None,
        pool_type: str = "max",
        noise_type: str = "uniform",
        unique_masks: bool = True,
        train_masks: bool = False,
        use_act: bool = False,
        act: str = "relu",
        mix_maps: bool = False,
        impl: str = "auto",
        generator: Optional[torch.Generator] = None,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        if isinstance(filter_size, bool) or not isinstance(filter_size, int):
            raise TypeError(
                f"filter_size must be an int, got {type(filter_size).__name__} {filter_size!r}"
            )
        if filter_size < 0 or (filter_size > 0 and filter_size % 2 == 0):
            raise ValueError(
                f"filter_size must be 0 (perturbation layer) or an odd kernel size, got {filter_size}"
            )
        check_bool("mix_maps", mix_maps)
        # Validate the noise options even when a regular convolution leaves them unused.
        check_positive_int("nmasks", nmasks)
        check_level("level", level)
        check_choice("noise_type", noise_type, NOISE_TYPES)
        check_choice("act", act, ACTIVATIONS)
        check_choice("impl", impl, PF.IMPLS)
        if stride is None:
            stride = 2 if filter_size == 7 else 1
        check_positive_int("stride", stride)
        check_choice("pool_type", pool_type, POOL_TYPES)
        modules: list[nn.Module]
        if filter_size == 0:
            activation = make_activation(act)  # one module, reused: Klachko's shares it
            modules = [
                PerturbConv2d(
                    in_channels,
                    out_channels,
                    nmasks,
                    input_size=input_size,
                    level=level,
                    stride=stride,
                    pool_type=pool_type,
                    noise_type=noise_type,
                    unique_masks=unique_masks,
                    train_masks=train_masks,
                    use_act=use_act,
                    act=act,
                    activation=activation,
                    bias=True,
                    impl=impl,
                    generator=generator,
                    **factory_kwargs,
                ),
                nn.BatchNorm2d(out_channels, **factory_kwargs),
                activation,
            ]
            if mix_maps:
                modules.append(MixMaps(out_channels, act, activation=activation, **factory_kwargs))
        else:
            modules = [
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    kernel_size=filter_size,
                    stride=stride,
                    padding=filter_size // 2,
                    bias=filter_size == 1,
                    **factory_kwargs,
                ),
                nn.BatchNorm2d(out_channels, **factory_kwargs),
                make_activation(act),
            ]
        super().__init__(*modules)
        self.in_channels = in_channels
        self.filter_size = filter_size
        self.stride = stride
        self.input_size = None if input_size is None else check_size("input_size", input_size)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer; a regular convolution checks its input as a perturbation layer does.

        Raises:
            TypeError, ValueError: on a non-floating, non-4-D input, or a wrong channel count or
                spatial size (when ``input_size`` was given).
        """
        if self.filter_size > 0:
            check_batch(x, channels=self.in_channels, size=self.input_size)
        out: Tensor = super().forward(x)  # type: ignore[no-untyped-call]
        return out
