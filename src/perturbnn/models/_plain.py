"""Plain (non-residual) PNN networks: a stack of layers and poolings, then a two-layer head."""

from __future__ import annotations

import dataclasses
from typing import Optional, cast

from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from perturbnn.activations import make_activation
from perturbnn.layers import PerturbLayer, conv_output_size
from perturbnn.models._common import (
    check_first_input_size,
    check_model_input,
    make_pool,
    stem_layer,
)
from perturbnn.models._config import ModelConfig
from perturbnn.noise import refuse_tracing

__all__ = ["PlainNet", "build_plain_net"]


class PlainNet(nn.Module):
    """``features`` (layers and poolings), flatten, then Klachko's two-layer ``classifier``.

    ``classifier``: ``Dropout -> Linear(nfeatures, hidden) -> BatchNorm1d(hidden) -> activation
    -> Dropout -> Linear(hidden, num_classes)``, both dropouts with probability ``config.dropout``
    (one module, as in Klachko's) and the activation a new module of ``config.act``. With
    ``config.input_size=None`` the first linear layer is an ``nn.LazyLinear`` sized by the first
    input (``nfeatures`` is then ignored), like the lazy noise masks of ``features``;
    ``npools`` (the poolings in ``features``) and ``feature_channels`` (the channels ``features``
    outputs) let it check an input's size before any layer runs.

    Source: Klachko's ``lenet`` (``hidden`` 128) and ``cifarnet`` (``hidden`` 256) heads.

    Shape:
        - Input: ``Tensor[batch_size, in_channels, input_size, input_size]``; with
          ``input_size=None`` any height and width of at least 8 pixels after the first layer,
          fixed by the first input.
        - Output: logits ``Tensor[batch_size, num_classes]``.
    """

    def __init__(
        self,
        features: nn.Sequential,
        nfeatures: int,
        hidden: int,
        config: ModelConfig,
        *,
        npools: int = 3,
        feature_channels: int = 0,
    ) -> None:
        super().__init__()
        self.config = dataclasses.replace(config, generator=None)  # keep the module deep-copyable
        self.npools = npools
        self.feature_channels = feature_channels
        #: ``(height, width)`` of the first input of a lazy network (``None`` before it).
        self.first_input_size: Optional[tuple[int, int]] = None
        fk = config.factory_kwargs
        dropout = nn.Dropout(config.dropout)
        self.features = features
        head: nn.Module = (
            nn.LazyLinear(hidden, **fk)
            if config.input_size is None
            else nn.Linear(nfeatures, hidden, **fk)
        )
        self.classifier = nn.Sequential(
            dropout,
            head,
            nn.BatchNorm1d(hidden, **fk),
            make_activation(config.act),
            dropout,
            nn.Linear(hidden, config.nclasses, **fk),
        )

    def _pooled(self, size: int) -> int:
        size = conv_output_size(size, self.config.first_filter_size)
        for _ in range(self.npools):
            size = (size + 1) // 2
        return size

    def _check_lazy_input(self, x: Tensor) -> None:
        """The size checks of a lazy network, before any layer runs."""
        first = self.first_input_size
        if first is None:
            refuse_tracing(self, x)
        height, width = check_first_input_size(x, first)
        stem = min(
            conv_output_size(height, self.config.first_filter_size),
            conv_output_size(width, self.config.first_filter_size),
        )
        if stem < 8:
            raise ValueError(
                f"the network pools its feature maps {self.npools} times and needs at least 8 "
                f"pixels after the first layer; an input of size {(height, width)} with "
                f"first_filter_size={self.config.first_filter_size} gives {stem}"
            )
        head = self.classifier[1]
        if first is None and isinstance(head, nn.Linear) and not is_lazy(head.weight):
            # Materialized by load_state_dict: the linear layer knows the feature count only.
            features = self.feature_channels * self._pooled(height) * self._pooled(width)
            if features != head.weight.shape[1]:
                raise ValueError(
                    f"input spatial size {(height, width)} gives {features} features, but the "
                    f"linear layer was materialized for {head.weight.shape[1]} by the state "
                    "loaded into this lazy network; feed inputs of the size it was trained on"
                )

    def forward(self, x: Tensor) -> Tensor:
        check_model_input(x, self.config, cast(Tensor, self.classifier[2].weight))
        if self.config.input_size is None:
            self._check_lazy_input(x)
        logits: Tensor = self.classifier(self.features(x).flatten(1))
        if self.config.input_size is None and self.first_input_size is None:
            self.first_input_size = (int(x.shape[2]), int(x.shape[3]))
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
    stem, size = stem_layer(config, name)
    if size is not None and size < 8:
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
        size = None if size is None else (size + 1) // 2
    nfeatures = 0 if size is None else channels * size * size
    return PlainNet(
        nn.Sequential(*modules),
        nfeatures,
        hidden,
        config,
        npools=len(widths),
        feature_channels=channels,
    )
