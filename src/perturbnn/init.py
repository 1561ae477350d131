"""Klachko's weight initialization, as a function a user can apply to any model.

Source: Klachko's ``main.py``/``models.py`` (the PNN CVPR 2018 reproduction): before
training, every convolution weight is drawn from ``N(0, sqrt(2 / n))`` with ``n = kernel_h *
kernel_w * out_channels`` (He et al., ICCV 2015, by fan-out), every ``BatchNorm2d`` gets weight 1
and bias 0, and everything else keeps PyTorch's initialization.
"""

from __future__ import annotations

import math
from typing import Optional, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from perturbnn.layers import PerturbConv2d

__all__ = ["init_weights_"]

M = TypeVar("M", bound=nn.Module)


def _normal_like(weight: Tensor, std: float, generator: Optional[torch.Generator]) -> None:
    """Fill ``weight`` in place with ``N(0, std)`` drawn on the CPU in float32, then copied."""
    cpu = torch.empty(weight.shape, dtype=torch.float32)
    cpu.normal_(0.0, std, generator=generator)
    with torch.no_grad():
        weight.copy_(cpu)


def init_weights_(model: M, *, generator: Optional[torch.Generator] = None) -> M:
    """Initialize ``model`` in place as Klachko's reproduction does before training, and return it.

    Visits ``model.modules()`` in order and:

    * every ``nn.Conv2d`` weight ``Tensor[out_channels, in_channels / groups, kernel_h,
      kernel_w]``, and the 1x1 weight of every :class:`~perturbnn.PerturbConv2d` (Klachko's
      perturbation layer holds it as an ``nn.Conv2d``), is drawn from ``N(0, sqrt(2 / n))`` with
      ``n = kernel_h * kernel_w * out_channels`` (groups do not enter ``n``); biases are left
      as they are;
    * every ``nn.BatchNorm2d`` (and ``nn.SyncBatchNorm``) gets weight 1 and bias 0;
    * ``nn.Linear``, ``nn.BatchNorm1d``, activations and the noise masks are left untouched
      (PyTorch's defaults; the masks were drawn when the layer was built).

    The numbers are drawn on the CPU in float32 from ``generator`` (default: the global RNG,
    as ``torch.manual_seed`` leaves it) and then copied to each weight's device and dtype, so a
    seed gives the same weights on every device. A parameter shared by several modules is
    drawn again at each visit (the last draw stays).

    Lazy models: a model built with ``input_size=None`` can be initialized before its first
    forward. Its noise masks and the ``nn.LazyLinear`` head of ``lenet``/``cifarnet`` are not
    touched (they are drawn on the first forward, with PyTorch's defaults, like a sized
    model's ``nn.Linear`` and masks), and its convolution weights are drawn exactly as for the
    same model built with an ``input_size``. A still-uninitialized weight that this function
    would draw (``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``) is refused with a ``ValueError``
    before anything is drawn: run one forward first, as torch recommends for lazy modules.

    Source: Klachko's initialization (``main.py``/``models.py`` of the reproduction); He et al.,
    "Delving Deep into Rectifiers", ICCV 2015 (fan-out variant).

    Args:
        model: any ``nn.Module``; Klachko's networks, or a model of yours.
        generator: CPU ``torch.Generator`` to draw from. Default: the global RNG.

    Returns:
        ``model`` itself, initialized.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``generator`` not a
            ``torch.Generator``.
        ValueError: if ``generator`` is not a CPU generator, or a convolution or BatchNorm
            parameter is uninitialized (a torch lazy module before its first forward).

    Example::

        >>> import perturbnn
        >>> model = perturbnn.lenet(nfilters=8)
        >>> model = perturbnn.init_weights_(model, generator=torch.Generator().manual_seed(1))
        >>> model.features[0][1].weight.detach().unique()  # the first BatchNorm2d
        tensor([1.])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got {generator.device}")
    lazy = [
        f"{name or '(model)'}.{pname}"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, PerturbConv2d, nn.BatchNorm2d, nn.SyncBatchNorm))
        for pname, param in module.named_parameters(recurse=False)
        if is_lazy(param)
    ]
    if lazy:
        raise ValueError(
            f"init_weights_ cannot draw uninitialized (lazy) parameters {lazy[:3]}: run one "
            "forward on an input of the data's size first, then call init_weights_"
        )
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, PerturbConv2d)):
            out_channels, _, kernel_h, kernel_w = module.weight.shape
            std = math.sqrt(2.0 / (kernel_h * kernel_w * out_channels))
            _normal_like(module.weight, std, generator)
        elif isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            with torch.no_grad():
                if module.weight is not None:
                    module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()
    return model
