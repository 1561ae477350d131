"""Plain (non-residual) PNN networks: a stack of layers and poolings, then a two-layer head."""

from __future__ import annotations

import dataclasses
from typing import cast

from torch import Tensor, nn

from perturbnn.activations import make_activation
from perturbnn.layers import PerturbLayer
from perturbnn.models._common import check_model_input, make_pool, stem_layer
from perturbnn.models._config import ModelConfig

__all__ = ["PlainNet", "build_plain_net"]


class PlainNet(nn.Module):
    """``features`` (layers and poolings), flatten, then the seed's two-layer ``classifier``.

    ``classifier``: ``Dropout -> Linear(nfeatures, hidden) -> BatchNorm1d(hidden) -> activation
    -> Dropout -> Linear(hidden, nclasses)``, both dropouts with probability ``config.dropout``
    (one module, as in the seed) and the activation a new module of ``config.act``.

    Source: the seed's ``lenet`` (``hidden`` 128) and ``cifarnet`` (``hidden`` 256) heads.

    Shape:
        - Input: ``Tensor[batch_size, in_channels, input_size, input_size]``.
        - Output: logits ``Tensor[batch_size, nclasses]``.
    """

    def __init__(
        self, features: nn.Sequential, nfeatures: int, hidden: int, config: ModelConfig
    ) -> None:
        super().__init__()
        self.config = dataclasses.replace(config, generator=None)  # keep the module deep-copyable
        fk = config.factory_kwargs
        dropout = nn.Dropout(config.dropout)
        self.features = features
        self.classifier = nn.Sequential(
            dropout,
            nn.Linear(nfeatures, hidden, **fk),
            nn.BatchNorm1d(hidden, **fk),
            make_activation(config.act),
            dropout,
            nn.Linear(hidden, config.nclasses, **fk),
        )

    def forward(self, x: Tensor) -> Tensor:
        check_model_input(x, self.config, cast(Tensor, self.classifier[1].weight))
        logits: Tensor = self.classifier(self.features(x).flatten(1))
        return logits


def build_plain_net(
    name: str, config: ModelConfig, widths: list[list[int]], *, hidden: int
) -> PlainNet:
    """Build ``len(widths)`` groups of layers, each followed by 3x3 stride-2 pooling (padding 1).

    ``widths[g]`` lists the output channels of group ``g``'s layers as multiples of
    ``nfilters``. The first layer is the stem (``first_filter_size``, ``use_act``,
    ``scale_noise``); the others use ``filter_size`` with the activation inside. The head has
    ``hidden`` units (see :class:`PlainNet`).

    Raises:
        ValueError: if the input is smaller than 8 pixels after the stem, or a layer's channels
            are not a multiple of its input channels under fanout.
    """
    if config.input_size is None:
        raise ValueError(
            f"{name} needs input_size (its linear layer is sized by the pooled maps), got None"
        )
    stem, size = stem_layer(config)
    assert size is not None
    if size < 8:
        raise ValueError(
            f"{name} pools its feature maps {len(widths)} times and needs at least 8 pixels after "
            f"the first layer; input_size={config.input_size} with "
            f"first_filter_size={config.first_filter_size} gives {size}"
        )
    modules: list[nn.Module] = [stem]
    channels = config.nfilters
    for group, multiples in enumerate(widths):
        for multiple in multiples[1 if group == 0 else 0 :]:
            out_channels = multiple * config.nfilters
            modules.append(
                PerturbLayer(
                    channels,
                    out_channels,
                    config.nmasks,
                    filter_size=config.filter_size,
                    input_size=size,
                    level=config.level,
                    noise_type=config.noise_type,
                    unique_masks=config.unique_masks,
                    train_masks=config.train_masks,
                    use_act=True,
                    act=config.act,
                    mix_maps=config.mix_maps,
                    impl=config.impl,
                    generator=config.generator,
                    **config.factory_kwargs,
                )
            )
            channels = out_channels
        modules.append(make_pool(config.pool_type, 3, 2, 1))
        size = (size + 1) // 2
    return PlainNet(nn.Sequential(*modules), channels * size * size, hidden, config)
