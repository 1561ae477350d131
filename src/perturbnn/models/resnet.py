"""ResNet-18 family: the CIFAR baseline, the original PNN network and the seed's PNN ResNet.

Source: He et al., "Deep Residual Learning", CVPR 2016 (ResNet-18, CIFAR variant); PNN, CVPR 2018,
Sec. 4 (``noiseresnet18``); the seed reproduction's ``perturb_resnet18``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import Unpack

from perturbnn.activations import make_activation
from perturbnn.layers import NoiseMask, PerturbLayer
from perturbnn.models._common import check_model_input, make_pool, stem_layer
from perturbnn.models._config import ModelConfig, ModelOptions
from perturbnn.models._registry import register_model

__all__ = ["BasicBlock", "ResNet", "noiseresnet18", "perturb_resnet18", "resnet18"]

#: Number of residual blocks per stage and stage strides of ResNet-18.
_BLOCKS = (2, 2, 2, 2)
_STRIDES = (1, 2, 2, 2)

BodyFactory = Callable[[int, int, int, int], nn.Module]


class BasicBlock(nn.Module):
    """Residual block: ``relu(body(x) + shortcut(x))``.

    Args:
        body: maps ``Tensor[B, in_channels, H, W]`` to ``Tensor[B, out_channels, H', W']``.
        shortcut: 1x1 strided convolution + BatchNorm when the shape changes, else ``None``
            (identity).
    """

    def __init__(self, body: nn.Module, shortcut: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + residual)


class ResNet(nn.Module):
    """A stem, four stages of two :class:`BasicBlock` s, global average pooling, a linear layer.

    Shape:
        - Input: ``Tensor[batch_size, in_channels, input_size, input_size]``.
        - Output: logits ``Tensor[batch_size, nclasses]``.
    """

    def __init__(
        self, stem: nn.Module, stages: list[nn.Module], features: int, config: ModelConfig
    ) -> None:
        super().__init__()
        self.config = dataclasses.replace(config, generator=None)  # keep the module deep-copyable
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(features, config.nclasses, **config.factory_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        check_model_input(x, self.config, self.linear.weight)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits: Tensor = self.linear(x)
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


def _stages(config: ModelConfig, input_size: int, body: BodyFactory) -> list[nn.Module]:
    """Four stages of ``nfilters * (1, 2, 4, 8)`` channels; ``body(in, out, stride, size)``."""
    in_channels, size = config.nfilters, input_size
    stages: list[nn.Module] = []
    for index, (nblocks, stride) in enumerate(zip(_BLOCKS, _STRIDES)):
        out_channels = config.nfilters * 2**index
        blocks = []
        for block in range(nblocks):
            s = stride if block == 0 else 1
            blocks.append(
                BasicBlock(
                    body(in_channels, out_channels, s, size),
                    _shortcut(in_channels, out_channels, s, config),
                )
            )
            in_channels, size = out_channels, (size + s - 1) // s
        stages.append(nn.Sequential(*blocks))
    return stages


def _check_pooled_size(name: str, config: ModelConfig, stage_input: int) -> None:
    if stage_input < 8 or stage_input % 8 != 0:
        raise ValueError(
            f"{name} halves its feature maps three times by pooling, so the map entering its first "
            f"stage must be a multiple of 8 pixels; input_size={config.input_size} with "
            f"first_filter_size={config.first_filter_size} gives {stage_input}"
        )


_NOISE_OPTIONS = frozenset(
    {"level", "act", "pool_type", "unique_masks", "train_masks", "noise_type", "first_filter_size"}
)


@register_model
def resnet18(**options: Unpack[ModelOptions]) -> ResNet:
    """The standard CIFAR ResNet-18 baseline (3x3 convolutions), width ``nfilters``.

    Stem: 3x3 convolution + BatchNorm + ReLU; stages of ``nfilters * (1, 2, 4, 8)`` channels
    with strided 3x3 convolutions; 1x1 shortcut convolutions without bias. The seed's experiment
    1 uses ``nfilters=44`` to match the PNN parameter count (5,284,982 parameters).

    Source: He et al., CVPR 2016; seed experiment 1 (``--net-type resnet18 --nfilters 44``).

    Args:
        **options: ``nfilters``, ``nclasses``, ``input_size``, ``in_channels``, ``device``,
            ``dtype``; ``impl`` is accepted and ignored (no perturbation layers); the noise
            options are unused and must keep their defaults.

    Returns:
        A :class:`ResNet` mapping ``Tensor[B, in_channels, input_size, input_size]`` to
        ``Tensor[B, nclasses]``.

    Raises:
        TypeError, ValueError: on an unknown or invalid option.

    Example::

        >>> resnet18(nfilters=8)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    config = ModelConfig.from_options("resnet18", options, used=frozenset())
    fk = config.factory_kwargs

    def body(in_channels: int, out_channels: int, stride: int, size: int) -> nn.Module:
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
    return ResNet(stem, _stages(config, config.input_size, body), 8 * config.nfilters, config)


class NoiseLayer(nn.Sequential):
    """The original PNN layer: noise (fanout 1), activation, BatchNorm, 1x1 convolution.

    Source: PNN, CVPR 2018, Sec. 3-4 (the authors' ``NoiseLayer``).

    Shape:
        ``Tensor[B, in_channels, size, size]`` to ``Tensor[B, out_channels, size, size]``.
    """

    def __init__(self, in_channels: int, out_channels: int, size: int, config: ModelConfig) -> None:
        fk = config.factory_kwargs
        super().__init__(
            NoiseMask(
                in_channels,
                1,
                size,
                level=config.level,
                noise_type=config.noise_type,
                unique_masks=config.unique_masks,
                train_masks=config.train_masks,
                generator=config.generator,
                **fk,
            ),
            make_activation(config.act),
            nn.BatchNorm2d(in_channels, **fk),
            nn.Conv2d(in_channels, out_channels, 1, bias=True, **fk),
        )


@register_model
def noiseresnet18(**options: Unpack[ModelOptions]) -> ResNet:
    """The original paper's PNN ResNet-18: a regular first layer, then noise layers of fanout 1.

    Stem: ``first_filter_size`` 7 (stride 2, then 3x3 max pooling: the default) or 3 regular
    convolution + BatchNorm + ReLU. Each block: :class:`NoiseLayer`, pooling by the stride,
    BatchNorm, activation, :class:`NoiseLayer`, BatchNorm. Masks are as large as the maps they
    perturb.

    Source: PNN, CVPR 2018 (the authors' ``noiseresnet18``); seed experiments 2 and 3.

    Args:
        **options: ``nfilters``, ``nclasses``, ``level``, ``first_filter_size`` (7 or 3),
            ``act``, ``pool_type``, ``unique_masks``, ``train_masks``, ``noise_type``,
            ``input_size``, ``in_channels``, ``generator``, ``device``, ``dtype``; ``impl`` is
            accepted and ignored (its noise layers have no fast path).

    Returns:
        A :class:`ResNet`.

    Raises:
        TypeError, ValueError: on an invalid option, ``first_filter_size`` not 3 or 7, or an
            input size that the pooling cannot halve three times.

    Example::

        >>> noiseresnet18(nfilters=8)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    config = ModelConfig.from_options(
        "noiseresnet18", options, used=_NOISE_OPTIONS, defaults={"first_filter_size": 7}
    )
    if config.first_filter_size not in (3, 7):
        raise ValueError(
            "noiseresnet18's first layer is a regular convolution: first_filter_size must be 3 or "
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
        size = ((size + 1) // 2 + 1) // 2
    _check_pooled_size("noiseresnet18", config, size)

    def body(in_channels: int, out_channels: int, stride: int, size: int) -> nn.Module:
        return nn.Sequential(
            NoiseLayer(in_channels, out_channels, size, config),
            make_pool(config.pool_type, stride, stride),
            nn.BatchNorm2d(out_channels, **fk),
            make_activation(config.act),
            NoiseLayer(out_channels, out_channels, size // stride, config),
            nn.BatchNorm2d(out_channels, **fk),
        )

    return ResNet(
        nn.Sequential(*stem_modules), _stages(config, size, body), 8 * config.nfilters, config
    )


@register_model
def perturb_resnet18(**options: Unpack[ModelOptions]) -> ResNet:
    """The seed's flexible PNN ResNet-18 built from :class:`~perturbnn.PerturbLayer` s.

    Stem: a :class:`PerturbLayer` with ``first_filter_size`` (0 = perturbation layer with noise
    ``level * scale_noise``; 7 adds 3x3 max pooling). Each block: two :class:`PerturbLayer` s with
    ``filter_size`` (the activation between noise and 1x1 convolution always on), pooling by the
    stride between them; shortcut 1x1 convolutions without bias. ``filter_size=1`` gives the
    seed's no-noise 1x1 network, ``filter_size=0`` the PNN.

    Source: the seed reproduction's ``perturb_resnet18``; seed experiments 4 to 8.

    Args:
        **options: every option of :class:`~perturbnn.models.ModelConfig` except ``dropout``.

    Returns:
        A :class:`ResNet`.

    Raises:
        TypeError, ValueError: on an invalid option, ``out_channels`` not a multiple of the input
            channels under fanout, or an input size that the pooling cannot halve three times.

    Example::

        >>> perturb_resnet18(nfilters=8, nmasks=4, first_filter_size=3)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    used = frozenset(ModelConfig.__dataclass_fields__) - {"dropout"}
    config = ModelConfig.from_options("perturb_resnet18", options, used=used)
    stem, size = stem_layer(config)
    stem_modules: list[nn.Module] = [stem]
    if config.first_filter_size == 7:
        stem_modules.append(nn.MaxPool2d(3, 2, 1))
        size = (size + 1) // 2
    _check_pooled_size("perturb_resnet18", config, size)
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

    def body(in_channels: int, out_channels: int, stride: int, size: int) -> nn.Module:
        modules: list[nn.Module] = [
            PerturbLayer(in_channels, out_channels, config.nmasks, input_size=size, **layer_options)
        ]
        if stride > 1:
            modules.append(make_pool(config.pool_type, stride, stride))
        modules.append(
            PerturbLayer(
                out_channels,
                out_channels,
                config.nmasks,
                input_size=size // stride,
                **layer_options,
            )
        )
        return nn.Sequential(*modules)

    return ResNet(
        nn.Sequential(*stem_modules), _stages(config, size, body), 8 * config.nfilters, config
    )
