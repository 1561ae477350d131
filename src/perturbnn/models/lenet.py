"""LeNet-style PNN: three layers, each followed by pooling, then a two-layer classifier head.

Source: Klachko's ``lenet`` (3 convolution or perturbation layers followed by a
fully connected head with 128 hidden units).
"""

from __future__ import annotations

from typing_extensions import Unpack

from perturbnn.models._config import ModelConfig, ModelOptions
from perturbnn.models._plain import PlainNet, build_plain_net
from perturbnn.models._registry import register_model

__all__ = ["lenet"]


@register_model
def lenet(**options: Unpack[ModelOptions]) -> PlainNet:
    """Three layers of ``nfilters`` channels, each followed by 3x3 stride-2 pooling.

    Layers are :class:`~perturbnn.PerturbLayer` s (``first_filter_size`` for the first,
    ``filter_size`` with the activation inside for the others), each followed by 3x3 stride-2
    pooling (padding 1), then flatten and the head ``Dropout -> Linear(nfilters * 4 * 4, 128) ->
    BatchNorm1d(128) -> activation -> Dropout -> Linear(128, num_classes)``. Works on 32x32 RGB
    (CIFAR-10) and 28x28 grayscale (MNIST, ``in_channels=1, input_size=28``). With
    ``nfilters=64`` and perturbation layers throughout on 32x32x3 it has 141,706 trainable
    parameters, as Klachko's. With ``input_size=None`` (the default) the
    network is lazy: the first forward draws the masks and sizes the first linear layer (an
    ``nn.LazyLinear``), and fixes the input size; give ``input_size`` to build it up front
    (the counts above are for ``input_size=32``).

    Source: Klachko's ``lenet`` (models.py).

    Args:
        **options: every option of :class:`~perturbnn.models.ModelConfig`.

    Returns:
        A :class:`~perturbnn.models.PlainNet` mapping ``Tensor[B, in_channels, input_size,
        input_size]`` to ``Tensor[B, num_classes]``.

    Raises:
        TypeError, ValueError: on an invalid option or an input smaller than 8 pixels.

    Example::

        >>> lenet(nfilters=8, in_channels=1, input_size=28)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    used = frozenset(ModelConfig.__dataclass_fields__) - {"first_layer_type", "freeze_first"}
    config = ModelConfig.from_options("lenet", options, used=used)
    return build_plain_net("lenet", config, [[1], [1], [1]], hidden=128)
