"""ResNet family: the CIFAR baseline, the original PNN networks and Klachko's PNN ResNets.

Source: He et al., "Deep Residual Learning", CVPR 2016 (ResNet-18/34 basic blocks, ResNet-50/101/
152 bottleneck blocks); PNN, CVPR 2018, Sec. 4 (``noiseresnet18`` and the original code's
``noiseresnet34/50/101/152``); Klachko's ``perturb_resnet18``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import Unpack

from perturbnn.activations import make_activation
from perturbnn.layers import NoiseMask, PerturbLayer
from perturbnn.models._common import (
    check_first_input_size,
    check_model_input,
    freeze_first_conv,
    make_pool,
    regular_stem,
    stem_layer,
)
from perturbnn.models._config import ModelConfig, ModelOptions
from perturbnn.models._registry import register_model
from perturbnn.models.blocks import EXPANSION, BasicBlock, NoiseLayer, PerturbBottleneck

__all__ = [
    "ResNet",
    "noiseresnet18",
    "noiseresnet34",
    "noiseresnet50",
    "noiseresnet101",
    "noiseresnet152",
    "perturb_resnet18",
    "perturb_resnet34",
    "perturb_resnet50",
    "resnet18",
]

#: Number of residual blocks per stage and stage strides of ResNet-18.
_BLOCKS = (2, 2, 2, 2)
_STRIDES = (1, 2, 2, 2)
#: Blocks per stage of the deeper ResNets (He et al., Table 1).
_DEPTHS = {34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

BodyFactory = Callable[[int, int, int, Optional[int]], nn.Module]


class ResNet(nn.Module):
    """A stem, four stages of residual blocks, global average pooling, a linear layer.

    Shape:
        - Input: ``Tensor[batch_size, in_channels, input_size, input_size]`` (any height and
          width with ``input_size=None``; the first input fixes it).
        - Output: logits ``Tensor[batch_size, num_classes]``.
    """

    def __init__(
        self, stem: nn.Module, stages: list[nn.Module], features: int, config: ModelConfig
    ) -> None:
        super().__init__()
        self.config = dataclasses.replace(config, generator=None)  # keep the module deep-copyable
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(features, config.nclasses, **config.factory_kwargs)
        #: ``(height, width)`` of the first input of a lazy network with noise masks (``None``
        #: before it, and for a network without masks, which takes any size).
        self.first_input_size: Optional[tuple[int, int]] = None
        self.has_masks = any(isinstance(m, NoiseMask) for m in self.modules())

    def forward(self, x: Tensor) -> Tensor:
        check_model_input(x, self.config, self.linear.weight)
        fixes = self.config.input_size is None and self.has_masks
        size = check_first_input_size(x, self.first_input_size) if fixes else None
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits: Tensor = self.linear(x)
        if fixes and self.first_input_size is None:
            self.first_input_size = size
        return logits


def _shortcut(
    in_channels: int, out_channels: int, stride: int, config: ModelConfig
) -> Optional[nn.Module]:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, **config.factory_kwargs),
        nn.BatchNorm2d(out_channels, **config.factory_kwargs),
    )


def _stages(
    config: ModelConfig,
    input_size: Optional[int],
    body: BodyFactory,
    depths: tuple[int, ...] = _BLOCKS,
    expansion: int = 1,
    block: Optional[BodyFactory] = None,
) -> list[nn.Module]:
    """Four stages of ``nfilters * (1, 2, 4, 8) * expansion`` output channels.

    Each block is ``BasicBlock(body(in, planes, stride, size), shortcut)``, or
    ``block(in, planes, stride, size)`` when given (it then makes its own shortcut). ``size`` is
    the side of the block's input map, ``None`` for lazy masks.
    """
    in_channels, size = config.nfilters, input_size
    stages: list[nn.Module] = []
    for index, (nblocks, stride) in enumerate(zip(depths, _STRIDES)):
        planes = config.nfilters * 2**index
        out_channels = planes * expansion
        blocks = []
        for number in range(nblocks):
            s = stride if number == 0 else 1
            if block is not None:
                blocks.append(block(in_channels, planes, s, size))
            else:
                blocks.append(
                    BasicBlock(
                        body(in_channels, planes, s, size),
                        _shortcut(in_channels, out_channels, s, config),
                    )
                )
            in_channels, size = out_channels, _pooled(size, s)
        stages.append(nn.Sequential(*blocks))
    return stages


def _pooled(size: Optional[int], stride: int) -> Optional[int]:
    return None if size is None else (size + stride - 1) // stride


def _check_pooled_size(name: str, config: ModelConfig, stage_input: Optional[int]) -> None:
    if stage_input is None:
        return
    if stage_input < 8 or stage_input % 8 != 0:
        raise ValueError(
            f"{name} halves its feature maps three times by pooling, so the map entering its first "
            f"stage must be a multiple of 8 pixels; input_size={config.input_size} with "
            f"first_filter_size={config.first_filter_size} gives {stage_input}"
        )


_NOISE_OPTIONS = frozenset(
    {"level", "act", "pool_type", "unique_masks", "train_masks", "noise_type", "first_filter_size"}
) | {"freeze_first"}


@register_model
def resnet18(**options: Unpack[ModelOptions]) -> ResNet:
    """The CIFAR ResNet-18 baseline (3x3 convolutions), width ``nfilters``: not torchvision's.

    The CIFAR variant, for 32x32 inputs: one 3x3 stride-1 stem convolution, no max pooling.
    ``torchvision.models.resnet18`` is the ImageNet one (7x7 stride-2 stem and max pooling, for
    224x224 inputs); the name is the independent reproduction's ``--net-type resnet18``.

    Stem: 3x3 convolution + BatchNorm + ReLU; stages of ``nfilters * (1, 2, 4, 8)`` channels
    with strided 3x3 convolutions; 1x1 shortcut convolutions without bias. Klachko's experiment
    1 uses ``nfilters=44`` to match the PNN parameter count (5,284,982 parameters).

    Source: He et al., CVPR 2016; Klachko's experiment 1 (``--net-type resnet18 --nfilters 44``).

    Args:
        **options: ``nfilters``, ``num_classes`` (alias ``nclasses``), ``input_size``,
            ``in_channels``, ``freeze_first`` (fix the 3x3 stem convolution's weight, see
            :class:`~perturbnn.models.ModelConfig`), ``device``, ``dtype``; ``impl`` is accepted and ignored (no perturbation layers); the noise
            options are unused and must keep their defaults.

    Returns:
        A :class:`ResNet` mapping ``Tensor[B, in_channels, input_size, input_size]`` to
        ``Tensor[B, num_classes]``.

    Raises:
        TypeError, ValueError: on an unknown or invalid option.

    Example::

        >>> resnet18(nfilters=8)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    config = ModelConfig.from_options("resnet18", options, used=frozenset({"freeze_first"}))
    fk = config.factory_kwargs

    def body(in_channels: int, out_channels: int, stride: int, size: Optional[int]) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, **fk),
            nn.BatchNorm2d(out_channels, **fk),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False, **fk),
            nn.BatchNorm2d(out_channels, **fk),
        )

    stem = nn.Sequential(
        nn.Conv2d(config.in_channels, config.nfilters, 3, padding=1, bias=False, **fk),
        nn.BatchNorm2d(config.nfilters, **fk),
        nn.ReLU(),
    )
    freeze_first_conv(config, stem)
    return ResNet(stem, _stages(config, config.input_size, body), 8 * config.nfilters, config)


def _noiseresnet(name: str, depth: int, options: ModelOptions) -> ResNet:
    """The original's noise ResNet of ``depth`` layers (basic blocks up to 34, bottlenecks after)."""
    config = ModelConfig.from_options(
        name, options, used=_NOISE_OPTIONS, defaults={"first_filter_size": 7}
    )
    fk = config.factory_kwargs
    stem, size = regular_stem(name, config)
    _check_pooled_size(name, config, size)

    def noise_stage(channels: int, stride: int, size: Optional[int]) -> list[nn.Module]:
        return [
            NoiseLayer(channels, channels, size, config),
            make_pool(config.pool_type, stride, stride, ceil_mode=True),
            nn.BatchNorm2d(channels, **fk),
            make_activation(config.act),
        ]

    def basic(in_channels: int, out_channels: int, stride: int, size: Optional[int]) -> nn.Module:
        return nn.Sequential(
            NoiseLayer(in_channels, out_channels, size, config),
            make_pool(config.pool_type, stride, stride, ceil_mode=True),
            nn.BatchNorm2d(out_channels, **fk),
            make_activation(config.act),
            NoiseLayer(out_channels, out_channels, _pooled(size, stride), config),
            nn.BatchNorm2d(out_channels, **fk),
        )

    def bottleneck(in_channels: int, planes: int, stride: int, size: Optional[int]) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, planes, 1, bias=False, **fk),
            nn.BatchNorm2d(planes, **fk),
            make_activation(config.act),
            *noise_stage(planes, stride, size),
            nn.Conv2d(planes, planes * EXPANSION, 1, bias=False, **fk),
            nn.BatchNorm2d(planes * EXPANSION, **fk),
        )

    if depth < 50:
        stages = _stages(config, size, basic, _DEPTHS.get(depth, _BLOCKS))
        return ResNet(stem, stages, 8 * config.nfilters, config)
    stages = _stages(config, size, bottleneck, _DEPTHS[depth], EXPANSION)
    return ResNet(stem, stages, 8 * config.nfilters * EXPANSION, config)


def _perturb_resnet(name: str, depth: int, options: ModelOptions) -> ResNet:
    """Klachko's PerturbLayer ResNet of ``depth`` layers."""
    used = frozenset(ModelConfig.__dataclass_fields__) - {"dropout"}
    config = ModelConfig.from_options(name, options, used=used)
    stem, size = stem_layer(config, name)
    stem_modules: list[nn.Module] = [stem]
    if config.first_filter_size == 7:
        stem_modules.append(nn.MaxPool2d(3, 2, 1))
        size = _pooled(size, 2)
    _check_pooled_size(name, config, size)
    layer_options: dict[str, Any] = {
        "filter_size": config.filter_size,
        "level": config.level,
        "noise_type": config.noise_type,
        "unique_masks": config.unique_masks,
        "train_masks": config.train_masks,
        "use_act": True,
        "act": config.act,
        "mix_maps": config.mix_maps,
        "impl": config.impl,
        "generator": config.generator,
        **config.factory_kwargs,
    }

    def body(in_channels: int, out_channels: int, stride: int, size: Optional[int]) -> nn.Module:
        modules: list[nn.Module] = [
            PerturbLayer(in_channels, out_channels, config.nmasks, input_size=size, **layer_options)
        ]
        if stride > 1:
            modules.append(make_pool(config.pool_type, stride, stride, ceil_mode=True))
        modules.append(
            PerturbLayer(
                out_channels,
                out_channels,
                config.nmasks,
                input_size=_pooled(size, stride),
                **layer_options,
            )
        )
        return nn.Sequential(*modules)

    def bottleneck(in_channels: int, planes: int, stride: int, size: Optional[int]) -> nn.Module:
        return PerturbBottleneck(
            in_channels,
            planes,
            stride,
            nmasks=config.nmasks,
            input_size=size,
            pool_type=config.pool_type,
            **layer_options,
        )

    stem_module = nn.Sequential(*stem_modules)
    if depth < 50:
        stages = _stages(config, size, body, _DEPTHS.get(depth, _BLOCKS))
        return ResNet(stem_module, stages, 8 * config.nfilters, config)
    stages = _stages(config, size, body, _DEPTHS[depth], EXPANSION, block=bottleneck)
    return ResNet(stem_module, stages, 8 * config.nfilters * EXPANSION, config)


@register_model
def noiseresnet18(**options: Unpack[ModelOptions]) -> ResNet:
    """The original paper's PNN ResNet-18: a regular first layer, then noise layers of fanout 1.

    Stem: ``first_filter_size`` 7 (stride 2, then 3x3 max pooling: the default) or 3 regular
    convolution + BatchNorm + ReLU. Each block: :class:`NoiseLayer`, pooling by the stride,
    BatchNorm, activation, :class:`NoiseLayer`, BatchNorm. Masks are as large as the maps they
    perturb.

    Source: PNN, CVPR 2018 (the authors' ``noiseresnet18``); Klachko's experiments 2 and 3.

    Args:
        **options: ``nfilters``, ``num_classes`` (alias ``nclasses``), ``level``, ``first_filter_size`` (7 or 3),
            ``act``, ``pool_type``, ``unique_masks``, ``train_masks``, ``noise_type``,
            ``freeze_first`` (the first convolution's weight fixed at its random values, as in
            the authors' updated repository, commit 2c1604fa),
            ``input_size`` (``None``: lazy masks, any size), ``in_channels``, ``generator``,
            ``device``, ``dtype``; ``impl`` is accepted and ignored (its noise layers have no
            fast path).

    Returns:
        A :class:`ResNet`.

    Raises:
        TypeError, ValueError: on an invalid option, ``first_filter_size`` not 3 or 7, or an
            input size that the pooling cannot halve three times.

    Example::

        >>> noiseresnet18(nfilters=8)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return _noiseresnet("noiseresnet18", 18, options)


@register_model
def noiseresnet34(**options: Unpack[ModelOptions]) -> ResNet:
    """The original code's PNN ResNet-34: :func:`noiseresnet18` with (3, 4, 6, 3) blocks.

    Source: PNN, CVPR 2018 (the authors' ``noiseresnet34``); He et al., CVPR 2016, Table 1.

    Args:
        **options: as :func:`noiseresnet18`.

    Returns:
        A :class:`ResNet`; ``input_size=224`` gives the ImageNet layout (7x7 stride-2 stem and
        max pooling, stages on 56, 28, 14 and 7 pixels).

    Raises:
        TypeError, ValueError: as :func:`noiseresnet18`.

    Example::

        >>> noiseresnet34(nfilters=8)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return _noiseresnet("noiseresnet34", 34, options)


_BOTTLENECK_NOISE_DOC = """The original code's PNN ResNet-{depth}: bottleneck blocks {blocks}.

    Stem as :func:`noiseresnet18`. Each bottleneck: 1x1 convolution + BatchNorm + activation;
    :class:`NoiseLayer` (fanout 1), pooling by the stride, BatchNorm, activation; 1x1 convolution
    to 4x the width + BatchNorm; output ``8 * 4 * nfilters`` features.

    Source: PNN, CVPR 2018 (the authors' ``noiseresnet{depth}``); He et al., CVPR 2016, Table 1.

    Args:
        **options: as :func:`noiseresnet18`.

    Returns:
        A :class:`ResNet`; ``input_size=224`` gives the ImageNet layout.

    Raises:
        TypeError, ValueError: as :func:`noiseresnet18`.

    Example::

        >>> noiseresnet{depth}(nfilters=4)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """


@register_model
def noiseresnet50(**options: Unpack[ModelOptions]) -> ResNet:
    return _noiseresnet("noiseresnet50", 50, options)


@register_model
def noiseresnet101(**options: Unpack[ModelOptions]) -> ResNet:
    return _noiseresnet("noiseresnet101", 101, options)


@register_model
def noiseresnet152(**options: Unpack[ModelOptions]) -> ResNet:
    return _noiseresnet("noiseresnet152", 152, options)


for _depth, _fn in ((50, noiseresnet50), (101, noiseresnet101), (152, noiseresnet152)):
    _fn.__doc__ = _BOTTLENECK_NOISE_DOC.format(depth=_depth, blocks=_DEPTHS[_depth])


@register_model
def perturb_resnet18(**options: Unpack[ModelOptions]) -> ResNet:
    """Klachko's flexible PNN ResNet-18 built from :class:`~perturbnn.PerturbLayer` s.

    Stem: a :class:`PerturbLayer` with ``first_filter_size`` (0 = perturbation layer with noise
    ``level * scale_noise``; 7 adds 3x3 max pooling). Each block: two :class:`PerturbLayer` s with
    ``filter_size`` (the activation between noise and 1x1 convolution always on), pooling by the
    stride between them; shortcut 1x1 convolutions without bias. ``filter_size=1`` gives
    Klachko's no-noise 1x1 network, ``filter_size=0`` the PNN. ``first_layer_type="authors"``
    (with ``first_filter_size=0``) makes the stem the wider
    :class:`~perturbnn.models.AuthorsFirstLayer` of the authors' updated repository;
    ``freeze_first`` (with ``first_filter_size > 0``) fixes the stem convolution's weight.

    Source: Klachko's ``perturb_resnet18``; Klachko's experiments 4 to 8; the authors'
    updated ``perturb_resnet18`` (https://github.com/juefeix/pnn.pytorch.update, commit
    2c1604fa) for ``first_layer_type="authors"``.

    Args:
        **options: every option of :class:`~perturbnn.models.ModelConfig` except ``dropout``;
            ``input_size=None`` gives lazy masks (any input size, fixed by the first input).

    Returns:
        A :class:`ResNet`.

    Raises:
        TypeError, ValueError: on an invalid option, ``out_channels`` not a multiple of the input
            channels under fanout, or an input size that the pooling cannot halve three times.

    Example::

        >>> perturb_resnet18(nfilters=8, nmasks=4, first_filter_size=3)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return _perturb_resnet("perturb_resnet18", 18, options)


@register_model
def perturb_resnet34(**options: Unpack[ModelOptions]) -> ResNet:
    """:func:`perturb_resnet18` with (3, 4, 6, 3) blocks per stage.

    With ``filter_size=3, first_filter_size=7`` it has exactly the parameters of torchvision's
    ResNet-34 (21,797,672 for ``num_classes=1000``).

    Source: Klachko's ``perturb_resnet18`` deepened as He et al., CVPR 2016, Table 1.

    Args:
        **options: as :func:`perturb_resnet18`.

    Returns:
        A :class:`ResNet`.

    Raises:
        TypeError, ValueError: as :func:`perturb_resnet18`.

    Example::

        >>> perturb_resnet34(nfilters=8, first_filter_size=3)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return _perturb_resnet("perturb_resnet34", 34, options)


@register_model
def perturb_resnet50(**options: Unpack[ModelOptions]) -> ResNet:
    """PNN ResNet-50 of :class:`PerturbBottleneck` s, (3, 4, 6, 3) per stage.

    Stem as :func:`perturb_resnet18`; each bottleneck's middle layer follows ``filter_size``
    (0: perturbation layer, the PNN), ``nmasks`` and the noise options; output
    ``8 * 4 * nfilters`` features. With ``filter_size=3, first_filter_size=7`` it has exactly
    the parameters of torchvision's ResNet-50 (25,557,032 for ``num_classes=1000``).

    Source: He et al., CVPR 2016 (ResNet-50); PNN, CVPR 2018 (perturbation layers in place of
    3x3 convolutions).

    Args:
        **options: as :func:`perturb_resnet18`.

    Returns:
        A :class:`ResNet`.

    Raises:
        TypeError, ValueError: as :func:`perturb_resnet18`.

    Example::

        >>> perturb_resnet50(nfilters=4, first_filter_size=3)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return _perturb_resnet("perturb_resnet50", 50, options)
