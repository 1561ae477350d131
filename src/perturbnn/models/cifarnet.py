"""CifarNet-style PNN: six layers in three pooled groups, then one linear classifier.

Source: the seed reproduction's ``cifarnet`` (6 convolution or perturbation layers followed by a
fully connected layer).
"""

from __future__ import annotations

from typing_extensions import Unpack

from perturbnn.models._config import ModelConfig, ModelOptions
from perturbnn.models._plain import PlainNet, build_plain_net
from perturbnn.models._registry import register_model

__all__ = ["cifarnet"]


@register_model
def cifarnet(**options: Unpack[ModelOptions]) -> PlainNet:
    """Six layers of ``nfilters * (1, 1, 2, 2, 4, 4)`` channels, pooled after every second one.

    Layers are :class:`~perturbnn.PerturbLayer` s (``first_filter_size`` for the first,
    ``filter_size`` for the others); each pair is followed by 3x3 stride-2 pooling; then flatten,
    dropout and a linear layer. Works on 32x32 RGB and 28x28 grayscale.

    Source: the seed's ``cifarnet``.

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
    used = frozenset(ModelConfig.__dataclass_fields__)
    config = ModelConfig.from_options("cifarnet", options, used=used)
    return build_plain_net("cifarnet", config, [[1, 1], [2, 2], [4, 4]])
