"""Residual blocks of the ResNet family: the basic block, the original PNN noise layer and the
bottleneck block with a perturbation layer in its middle, and the wider first perturbation
layer of the authors' updated networks.

Source: He et al., "Deep Residual Learning", CVPR 2016 (basic and bottleneck blocks); PNN, CVPR
2018, Sec. 3-4 (the authors' ``NoiseLayer``); the authors' updated repository
https://github.com/juefeix/pnn.pytorch.update, commit 2c1604fa, ``models.py``
(:class:`AuthorsFirstLayer`).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perturbnn._validation import check_level, check_positive_int
from perturbnn.activations import make_activation
from perturbnn.layers import MixMaps, NoiseMask, PerturbLayer
from perturbnn.models._config import ModelConfig

__all__ = ["EXPANSION", "AuthorsFirstLayer", "BasicBlock", "NoiseLayer", "PerturbBottleneck"]

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


class AuthorsFirstLayer(nn.Sequential):
    """The wider first perturbation layer of the authors' updated ``perturb_resnet18``.

    With ``C = in_channels`` and ``n = out_channels``, in order:

    1. :class:`~perturbnn.NoiseMask`: ``mask_factor * n`` fixed masks per input channel (unique
       per channel with ``unique_masks=True``), amplitude ``level_factor * level``; the
       perturbed tensor has ``C * mask_factor * n`` maps (mask ``m`` of channel ``c`` at map
       ``c * mask_factor * n + m``);
    2. BatchNorm over those maps, then a sigmoid;
    3. a 1x1 convolution with bias to ``C * n`` maps, grouped by input channel (``groups=C``:
       each group mixes the perturbed copies of one channel into ``n`` maps), BatchNorm,
       sigmoid;
    4. with ``mix_maps``: :class:`~perturbnn.MixMaps` with a sigmoid (dense 1x1 convolution with
       bias, BatchNorm, sigmoid);
    5. a 1x1 convolution without bias from ``C * n`` back to ``n`` maps, BatchNorm and the
       network's activation ``act``.

    The sigmoids are fixed whatever ``act`` is, as in the source; ``use_act`` has no
    counterpart (the source's first layer ignores it). One sigmoid module serves steps 2 to 4.

    Source: the authors' updated repository https://github.com/juefeix/pnn.pytorch.update,
    commit 2c1604fa, ``models.py`` (its ``PerturbLayerFirst`` with ``filter_size=0``, built by
    ``PerturbResNet`` with ``nmasks = 5 * nfilters``, noise level ``20 * level * scale_noise``
    and ``3 * nfilters`` output maps, followed there by the 1x1 convolution back to
    ``nfilters``, its BatchNorm and activation).

    Args:
        in_channels: image channels ``C``.
        out_channels: output channels ``n`` (the network's ``nfilters``).
        input_size: spatial size of the images, ``int`` or ``(height, width)``; ``None``: taken
            from the first input (lazy masks).
        level: the network's noise level (times ``scale_noise``); the masks' amplitude is
            ``level_factor * level``.
        mask_factor: masks per input channel per output channel. Default: ``5`` (the source's).
        level_factor: factor on ``level``. Default: ``20.0`` (the source's).
        act: activation after the last BatchNorm (a name of
            :data:`perturbnn.activations.ACTIVATIONS`). Default: ``"relu"``.
        mix_maps: add the sigmoid :class:`~perturbnn.MixMaps` of step 4.
        noise_type, unique_masks, train_masks, generator: as in :class:`~perturbnn.NoiseMask`.
        device, dtype: factory keyword arguments.

    Shape:
        - Input: ``Tensor[batch_size, in_channels, height, width]``.
        - Output: ``Tensor[batch_size, out_channels, height, width]``.
        - ``noise.masks``: ``Tensor[in_channels if unique_masks else 1, mask_factor *
          out_channels, height, width]`` (a buffer unless ``train_masks``).

    Raises:
        TypeError, ValueError: on a non-positive channel count or ``mask_factor``, a negative
            ``level_factor``, or an invalid noise option or ``act``.

    Example::

        >>> layer = AuthorsFirstLayer(3, 8, input_size=32, level=0.1)
        >>> layer(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 8, 32, 32])
        >>> tuple(layer.noise.masks.shape)
        (3, 40, 32, 32)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        input_size: Optional[Union[int, tuple[int, int]]] = None,
        level: float,
        mask_factor: int = 5,
        level_factor: float = 20.0,
        act: str = "relu",
        mix_maps: bool = False,
        noise_type: str = "uniform",
        unique_masks: bool = True,
        train_masks: bool = False,
        generator: Optional[torch.Generator] = None,
        device: Union[torch.device, str, int, None] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("mask_factor", mask_factor)
        check_level("level", level)
        check_level("level_factor", level_factor)
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        nmasks = mask_factor * out_channels
        perturbed, middle = in_channels * nmasks, in_channels * out_channels
        sigmoid = nn.Sigmoid()
        modules: list[nn.Module] = [
            NoiseMask(
                in_channels,
                nmasks,
                input_size,
                level=level_factor * level,
                noise_type=noise_type,
                unique_masks=unique_masks,
                train_masks=train_masks,
                generator=generator,
                **fk,
            ),
            nn.BatchNorm2d(perturbed, **fk),
            sigmoid,
            nn.Conv2d(perturbed, middle, 1, groups=in_channels, bias=True, **fk),
            nn.BatchNorm2d(middle, **fk),
            sigmoid,
        ]
        if mix_maps:
            modules.append(MixMaps(middle, "sigmoid", activation=sigmoid, **fk))
        modules += [
            nn.Conv2d(middle, out_channels, 1, bias=False, **fk),
            nn.BatchNorm2d(out_channels, **fk),
            make_activation(act),
        ]
        super().__init__(*modules)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.mask_factor, self.level_factor = mask_factor, float(level_factor)

    @property
    def noise(self) -> NoiseMask:
        """The layer's :class:`~perturbnn.NoiseMask` (its first module)."""
        noise = self[0]
        assert isinstance(noise, NoiseMask)
        return noise

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}"
        if self.mask_factor != 5:
            s += f", mask_factor={self.mask_factor}"
        if self.level_factor != 20.0:
            s += f", level_factor={self.level_factor}"
        return s
