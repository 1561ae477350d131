"""Pieces shared by the model families: pooling by name and the first (stem) layer."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from perturbnn._validation import check_batch
from perturbnn.layers import PerturbLayer, conv_output_size
from perturbnn.models._config import ModelConfig
from perturbnn.models.blocks import AuthorsFirstLayer

__all__ = [
    "check_first_input_size",
    "check_model_input",
    "freeze_first_conv",
    "make_pool",
    "regular_stem",
    "stem_layer",
]

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


def freeze_first_conv(config: ModelConfig, stem: nn.Sequential) -> None:
    """With ``config.freeze_first``, fix the weight of the stem's first module, a convolution.

    The weight stays an ``nn.Parameter`` (same ``state_dict`` key, saved and restored with the
    model) with ``requires_grad=False``: no gradient reaches it, an optimizer over the
    parameters with ``requires_grad`` leaves it out, and :func:`perturbnn.count_parameters`
    does not count it. Its initial values are those of an unfrozen network (nothing is drawn).
    A bias and the BatchNorm after it stay trainable.

    Source: the authors' updated ``noiseresnet18`` (https://github.com/juefeix/pnn.pytorch.update,
    commit 2c1604fa, ``models.py``: ``requires_grad = False`` on its first convolution's weight).
    """
    if config.freeze_first:
        conv = stem[0]
        assert isinstance(conv, nn.Conv2d)  # stem_layer refuses freeze_first on other stems
        conv.weight.requires_grad_(False)


def regular_stem(name: str, config: ModelConfig) -> tuple[nn.Sequential, Optional[int]]:
    """The original's regular first layer and the size it outputs: a 7x7 stride-2 convolution
    + BatchNorm + ReLU + 3x3 stride-2 max pooling, or 3x3 stride 1 + BatchNorm + ReLU; with
    ``freeze_first``, the convolution's weight fixed (:func:`freeze_first_conv`).

    Raises:
        ValueError: naming the builder ``name``, if ``first_filter_size`` is not 3 or 7.
    """
    if config.first_filter_size not in (3, 7):
        raise ValueError(
            f"{name}'s first layer is a regular convolution: first_filter_size must be 3 or "
            f"7, got {config.first_filter_size} (use perturb_resnet18 for noise in the first layer)"
        )
    fk = config.factory_kwargs
    k = config.first_filter_size
    stem_modules: list[nn.Module] = [
        nn.Conv2d(
            config.in_channels,
            config.nfilters,
            k,
            stride=2 if k == 7 else 1,
            padding=k // 2,
            bias=False,
            **fk,
        ),
        nn.BatchNorm2d(config.nfilters, **fk),
        nn.ReLU(),
    ]
    size = config.input_size
    if k == 7:
        stem_modules.append(nn.MaxPool2d(3, 2, 1))
        # The convolution, then the pooling, each halve the size (rounding up).
        size = None if size is None else conv_output_size(conv_output_size(size, 7), 7)
    stem = nn.Sequential(*stem_modules)
    freeze_first_conv(config, stem)
    return stem, size


def stem_layer(config: ModelConfig, name: str) -> tuple[nn.Sequential, Optional[int]]:
    """The first layer of the PerturbLayer networks, and the spatial size it outputs.

    A :class:`PerturbLayer` with ``first_filter_size``, noise ``level * scale_noise`` and the
    activation inside only if ``use_act`` (Klachko's: ``--use_act`` applies to the first layer);
    with ``first_layer_type="authors"``, the authors' :class:`~perturbnn.models.AuthorsFirstLayer`
    instead; with ``freeze_first``, its convolution's weight fixed (:func:`freeze_first_conv`).

    Raises:
        ValueError: naming the builder ``name``, on ``first_layer_type="authors"`` with
            ``first_filter_size`` other than 0, on ``freeze_first`` with ``first_filter_size=0``
            (no regular convolution to freeze), or on fanout with ``nfilters`` not a multiple
            of ``in_channels``.
    """
    if config.first_layer_type == "authors" and config.first_filter_size != 0:
        raise ValueError(
            f"{name}: first_layer_type='authors' is the authors' first perturbation layer, so "
            f"it needs first_filter_size=0, got first_filter_size={config.first_filter_size}"
        )
    if config.freeze_first and config.first_filter_size == 0:
        raise ValueError(
            f"{name}: freeze_first fixes the first layer's regular convolution, so it needs "
            "first_filter_size > 0, got first_filter_size=0"
        )
    if config.first_layer_type == "authors":
        authors = AuthorsFirstLayer(
            config.in_channels,
            config.nfilters,
            input_size=config.input_size,
            level=config.level * config.scale_noise,
            act=config.act,
            mix_maps=config.mix_maps,
            noise_type=config.noise_type,
            unique_masks=config.unique_masks,
            train_masks=config.train_masks,
            generator=config.generator,
            **config.factory_kwargs,
        )
        return authors, config.input_size
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
    freeze_first_conv(config, layer)
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
