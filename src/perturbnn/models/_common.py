"""Pieces shared by the model families: pooling by name and the first (stem) layer."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from perturbnn._validation import check_batch
from perturbnn.layers import PerturbLayer, conv_output_size
from perturbnn.models._config import ModelConfig

__all__ = ["check_first_input_size", "check_model_input", "make_pool", "stem_layer"]

_POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def make_pool(
    pool_type: str, kernel_size: int, stride: int, padding: int = 0, ceil_mode: bool = False
) -> nn.Module:
    """Return a ``MaxPool2d`` or ``AvgPool2d`` for ``pool_type`` ``"max"`` or ``"avg"``.

    ``ceil_mode=True`` rounds the output size up, as a strided shortcut convolution does, so a
    residual block works on odd sizes too (the lazy ResNets take any input size).

    Raises:
        KeyError: never for a validated :class:`ModelConfig` (``pool_type`` checked there).
    """
    return _POOLS[pool_type](kernel_size, stride, padding, ceil_mode=ceil_mode)


def stem_layer(config: ModelConfig) -> tuple[PerturbLayer, Optional[int]]:
    """The first layer of Klachko's networks, and the spatial size it outputs.

    A :class:`PerturbLayer` with ``first_filter_size``, noise ``level * scale_noise`` and the
    activation inside only if ``use_act`` (Klachko's: ``--use_act`` applies to the first layer).
    """
    if (
        config.first_filter_size == 0
        and config.nmasks > 1
        and config.nfilters % config.in_channels != 0
    ):
        raise ValueError(
            f"nfilters must be a multiple of in_channels={config.in_channels} when the first layer "
            f"is a perturbation layer with nmasks > 1 (its 1x1 convolution is grouped by input "
            f"channel), got nfilters={config.nfilters}, nmasks={config.nmasks}"
        )
    layer = PerturbLayer(
        config.in_channels,
        config.nfilters,
        config.nmasks,
        filter_size=config.first_filter_size,
        input_size=config.input_size,
        level=config.level * config.scale_noise,
        noise_type=config.noise_type,
        unique_masks=config.unique_masks,
        train_masks=config.train_masks,
        use_act=config.use_act,
        act=config.act,
        mix_maps=config.mix_maps,
        impl=config.impl,
        generator=config.generator,
        **config.factory_kwargs,
    )
    if config.input_size is None:
        return layer, None
    return layer, conv_output_size(config.input_size, config.first_filter_size)


def check_first_input_size(x: Tensor, first: Optional[tuple[int, int]]) -> tuple[int, int]:
    """Return ``x``'s ``(height, width)``; raise if a lazy network's first input had another.

    Args:
        x: a validated ``Tensor[batch_size, in_channels, height, width]``.
        first: the size of the network's first input, ``None`` before it.

    Raises:
        ValueError: naming both sizes, if ``first`` is given and differs.
    """
    size = (int(x.shape[2]), int(x.shape[3]))
    if first is not None and size != first:
        raise ValueError(
            f"input spatial size {size} differs from the size {first} of the network's first "
            "input (input_size=None fixes the network, its noise masks and linear layer, to "
            "its first input's size)"
        )
    return size


def check_model_input(x: Tensor, config: ModelConfig, reference: Tensor) -> None:
    """Check a network's input before any layer sees it.

    Args:
        x: expected ``Tensor[batch_size, in_channels, input_size, input_size]``, floating point.
        config: the network's options.
        reference: a parameter of the network, for its device.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: on a wrong number of dimensions, channel count, spatial size or device.
    """
    check_batch(
        x,
        channels=config.in_channels,
        size=None if config.input_size is None else (config.input_size, config.input_size),
        size_name="(input_size, input_size)",
        device=reference.device,
        device_name="the model",
        hint=f" (the model was built with in_channels={config.in_channels}; build it with the "
        "data set's channels)",
    )
