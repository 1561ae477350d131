"""CifarNet-style PNN: six layers in three pooled groups, then a two-layer classifier head.

Source: Klachko's ``cifarnet`` (6 convolution or perturbation layers of
``nfilters`` channels, followed by a fully connected head with 256 hidden units).
"""

from __future__ import annotations

from typing_extensions import Unpack

from perturbnn.models._config import ModelConfig, ModelOptions
from perturbnn.models._plain import PlainNet, build_plain_net
from perturbnn.models._registry import register_model

__all__ = ["cifarnet"]


@register_model
def cifarnet(**options: Unpack[ModelOptions]) -> PlainNet:
    """Six layers of ``nfilters`` channels, pooled after every second one, and a 256-unit head.

    Layers are :class:`~perturbnn.PerturbLayer` s (``first_filter_size`` for the first,
    ``filter_size`` with the activation inside for the others); each pair is followed by 3x3
    stride-2 pooling (padding 1); then flatten and the head ``Dropout -> Linear(nfilters * 4 *
    4, 256) -> BatchNorm1d(256) -> activation -> Dropout -> Linear(256, num_classes)``. Works on
    32x32 RGB and 28x28 grayscale. With ``nfilters=64, first_filter_size=3, filter_size=3`` on
    32x32x3 it has 452,298 trainable parameters, as Klachko's. With ``input_size=None`` (the default) the
    network is lazy: the first forward draws the masks and sizes the first linear layer (an
    ``nn.LazyLinear``), and fixes the input size; give ``input_size`` to build it up front
    (the counts above are for ``input_size=32``).

    Source: Klachko's ``cifarnet`` (models.py).

    Args:
        **options: every option of :class:`~perturbnn.models.ModelConfig`.

    Returns:
        A :class:`~perturbnn.models.PlainNet`.

    Raises:
        TypeError, ValueError: on an invalid option or an input smaller than 8 pixels.

    Example::

        >>> cifarnet(nfilters=8)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    used = frozenset(ModelConfig.__dataclass_fields__) - {"first_layer_type", "freeze_first"}
    config = ModelConfig.from_options("cifarnet", options, used=used)
    return build_plain_net("cifarnet", config, [[1, 1], [1, 1], [1, 1]], hidden=256)
