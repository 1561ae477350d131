"""Residual blocks of the ResNet family: the basic block, the original PNN noise layer and the
bottleneck block with a perturbation layer in its middle.

Source: He et al., "Deep Residual Learning", CVPR 2016 (basic and bottleneck blocks); PNN, CVPR
2018, Sec. 3-4 (the authors' ``NoiseLayer``).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perturbnn._validation import check_positive_int
from perturbnn.activations import make_activation
from perturbnn.layers import NoiseMask, PerturbLayer
from perturbnn.models._config import ModelConfig

__all__ = ["EXPANSION", "BasicBlock", "NoiseLayer", "PerturbBottleneck"]

#: Channel expansion of a bottleneck block's last 1x1 convolution.
EXPANSION = 4

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


class NoiseLayer(nn.Sequential):
    """The original PNN layer: noise (fanout 1), activation, BatchNorm, 1x1 convolution.

    Source: PNN, CVPR 2018, Sec. 3-4 (the authors' ``NoiseLayer``).

    Shape:
        ``Tensor[B, in_channels, size, size]`` to ``Tensor[B, out_channels, size, size]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, size: Optional[int], config: ModelConfig
    ) -> None:
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


class PerturbBottleneck(BasicBlock):
    """Bottleneck residual block with a PNN layer in the middle: ``relu(body(x) + shortcut(x))``.

    Body: 1x1 convolution (``in_channels`` to ``planes``, no bias) + BatchNorm + activation; a
    :class:`~perturbnn.PerturbLayer` (``planes`` to ``planes``) with ``filter_size`` (0: the
    perturbation layer that replaces ResNet's 3x3 convolution; n: a regular n x n one) and the
    block's ``stride`` (pooling after a perturbation layer, the convolution's stride otherwise);
    1x1 convolution to ``planes * 4`` (no bias) + BatchNorm. Shortcut: identity, or a strided 1x1
    convolution (no bias) + BatchNorm when the shape changes. With ``filter_size=3`` it is
    torchvision's ResNet-50 bottleneck (stride on the 3x3 convolution).

    Source: He et al., CVPR 2016 (bottleneck block); PNN, CVPR 2018 (a perturbation layer in
    place of each 3x3 convolution; users of the original code asked for this block).

    Args:
        in_channels: input channels.
        planes: width of the bottleneck; the block outputs ``planes * 4`` channels.
        stride: downsampling factor of the block.
        nmasks, filter_size, input_size, level, noise_type, unique_masks, train_masks, use_act, act, mix_maps, pool_type, impl, generator: as in :class:`~perturbnn.PerturbLayer`
            (for its middle layer; ``input_size`` is the block input's side, ``None``: lazy).
        device, dtype: factory keyword arguments.

    Shape:
        ``Tensor[B, in_channels, H, W]`` to ``Tensor[B, 4 * planes, ceil(H / stride),
        ceil(W / stride)]``.

    Raises:
        TypeError, ValueError: on invalid arguments (see :class:`~perturbnn.PerturbLayer`).

    Example::

        >>> PerturbBottleneck(64, 16, stride=2)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 4, 4])
    """

    expansion = EXPANSION

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        *,
        nmasks: int = 1,
        filter_size: int = 0,
        input_size: Optional[int] = None,
        level: float = 0.5,
        noise_type: str = "uniform",
        unique_masks: bool = True,
        train_masks: bool = False,
        use_act: bool = True,
        act: str = "relu",
        mix_maps: bool = False,
        pool_type: str = "max",
        impl: str = "auto",
        generator: Optional[torch.Generator] = None,
        device: Union[torch.device, str, int, None] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        check_positive_int("in_channels", in_channels)
        check_positive_int("planes", planes)
        check_positive_int("stride", stride)
        out_channels = planes * EXPANSION
        body = nn.Sequential(
            nn.Conv2d(in_channels, planes, 1, bias=False, **fk),
            nn.BatchNorm2d(planes, **fk),
            make_activation(act),
            PerturbLayer(
                planes,
                planes,
                nmasks,
                filter_size=filter_size,
                input_size=input_size,
                level=level,
                stride=stride,
                pool_type=pool_type,
                noise_type=noise_type,
                unique_masks=unique_masks,
                train_masks=train_masks,
                use_act=use_act,
                act=act,
                mix_maps=mix_maps,
                impl=impl,
                generator=generator,
                **fk,
            ),
            nn.Conv2d(planes, out_channels, 1, bias=False, **fk),
            nn.BatchNorm2d(out_channels, **fk),
        )
        shortcut: Optional[nn.Module] = None
        if stride != 1 or in_channels != out_channels:
            shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, **fk),
                nn.BatchNorm2d(out_channels, **fk),
            )
        super().__init__(body, shortcut)
