"""Fold (reparameterize) PNN layers into plain convolutions for deployment.

Without an activation between noise and 1x1 convolution, a PNN layer is affine in its input::

    y = conv1x1(x + level * masks) = conv1x1(x) + conv1x1(level * masks)

(PNN, Sec. 3, Eq. 2 with the identity as non-linearity; the exact "linear" fast path of
:mod:`perturbnn.kernels.linear` computes it this way). The second term does not depend on the
input: it is a fixed bias map ``Tensor[out_channels, height, width]``. :func:`reparameterize`
replaces each such layer by a :class:`FoldedConv2d`, a 1x1 convolution (grouped by input
channel under fanout, with the weights summed over each channel's masks) plus that map, then
the layer's pooling when it has a stride: no noise masks, only standard operators, the cost of
a 1x1 convolution. The convention follows RepVGG's ``switch_to_deploy``, timm's
``reparameterize_model`` and torch's ``fuse_conv_bn_eval``: a copy of a model in eval mode, the
original untouched.

Source: PNN, CVPR 2018, Sec. 3 (the layer); the exact algebraic form of the independent
reproduction's layer without ``--use_act``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perturbnn import functional as PF
from perturbnn._validation import check_bool, check_positive_int, check_size
from perturbnn.layers import MixMaps, PerturbConv2d, PerturbLayer
from perturbnn.models.blocks import NoiseLayer
from perturbnn.noise import DeviceLike, NoiseMask

__all__ = ["FoldReport", "FoldedConv2d", "FoldedLayer", "reparameterize"]


class FoldedConv2d(nn.Module):
    """A 1x1 convolution plus a fixed per-pixel bias map: what a folded PNN layer becomes.

    ``y = conv1x1(x, weight, groups) + bias``, with ``bias`` a map ``Tensor[out_channels,
    height, width]`` (a ``nn.Conv2d`` bias holds one value per channel; the noise gives one per
    pixel). ``weight`` has ``nn.Conv2d``'s layout. A dense convolution (``groups == 1``) runs as
    ``conv2d``; a grouped one (``groups = in_channels``, each input channel scaled into
    ``out_channels / in_channels`` outputs) as one element-wise ``addcmul`` broadcast over the
    copies, which on the CPU is tens of times faster than PyTorch's depthwise ``conv2d`` and
    gives the same numbers. Only standard operators (``convolution``, ``add``, ``addcmul``,
    ``reshape``): it exports with ``torch.export`` and to ONNX as such. ``weight`` is a
    parameter and ``bias`` a buffer (saved in ``state_dict()``, fixed during training).
    :func:`reparameterize` fills both; a new module holds zeros.

    Source: PNN, Sec. 3, Eq. 2 without activation: the bias map is the 1x1 convolution of
    ``level * masks`` plus the layer's bias.

    Args:
        in_channels: input channels ``C``.
        out_channels: output channels ``O`` (a multiple of ``C`` when ``groups > 1``).
        size: ``(height, width)`` of the bias map (the folded layer's input size), or an
            ``int``.
        groups: ``1`` (dense) or ``in_channels`` (each output sees one input channel).
        device, dtype: factory keyword arguments.

    Shape:
        - Input: ``Tensor[batch_size, in_channels, height, width]``.
        - Output: ``Tensor[batch_size, out_channels, height, width]``.
        - ``weight``: ``Tensor[out_channels, in_channels / groups, 1, 1]``.
        - ``bias``: ``Tensor[out_channels, height, width]``.

    Raises:
        ValueError: on ``groups`` other than 1 and ``in_channels``, or ``out_channels`` not a
            multiple of ``in_channels`` for ``groups > 1``; in ``forward``, on an input whose
            channels or spatial size differ from the module's (naming both).

    Example::

        >>> FoldedConv2d(4, 8, (5, 6), groups=4)(torch.randn(2, 4, 5, 6)).shape
        torch.Size([2, 8, 5, 6])
    """

    bias: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: Union[tuple[int, int], int],
        *,
        groups: int = 1,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        height, width = check_size("size", size)
        if groups not in (1, in_channels) or out_channels % groups != 0:
            raise ValueError(
                f"groups must be 1 or in_channels={in_channels} (then out_channels a multiple "
                f"of it), got groups={groups}, out_channels={out_channels}"
            )
        self.groups = groups
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.zeros(out_channels, in_channels // groups, 1, 1, **factory)
        )
        self.register_buffer("bias", torch.zeros(out_channels, height, width, **factory))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``conv1x1(x, weight, groups) + bias``."""
        expected = (self.in_channels, *self.bias.shape[1:])
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"input must be Tensor[batch_size, {', '.join(map(str, expected))}] (the folded "
                f"layer's channels and fixed size), got shape {tuple(x.shape)}"
            )
        if self.groups == 1:
            return F.conv2d(x, self.weight) + self.bias
        batch, channels, height, width = x.shape
        fanout = self.out_channels // channels
        out = torch.addcmul(
            self.bias.reshape(1, channels, fanout, height, width),
            x.unsqueeze(2),
            self.weight.reshape(channels, fanout, 1, 1),
        )
        return out.reshape(batch, self.out_channels, height, width)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, size={tuple(self.bias.shape[1:])}"
        return s + (f", groups={self.groups}" if self.groups != 1 else "")


@dataclasses.dataclass(frozen=True)
class FoldedLayer:
    """What :func:`reparameterize` did to one PNN layer.

    Attributes:
        name: qualified name of the layer in the original model (``"stem.0.0"``).
        kind: its class name (``"PerturbConv2d"`` or ``"NoiseMask"``).
        in_channels: input channels.
        out_channels: output channels (``in_channels * nmasks`` for a bare ``NoiseMask``).
        nmasks: noise masks per input channel.
        stride: the layer's pooling stride (1 for a bare ``NoiseMask``).
        folded: ``True`` if it was replaced by plain modules.
        mix_merged: ``True`` if the :class:`~perturbnn.MixMaps` 1x1 convolution right after it
            was merged into the same convolution.
        reason: why it was kept (empty when folded).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    nmasks: int
    stride: int
    folded: bool
    mix_merged: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class FoldReport:
    """The result of :func:`reparameterize`: one :class:`FoldedLayer` per PNN layer found.

    ``print(report)`` shows a table in :class:`~perturbnn.ConvertReport`'s format.

    Attributes:
        layers: every :class:`~perturbnn.PerturbConv2d`, and every ``NoiseMask`` outside one
            (the original ``NoiseLayer``), in module order.
        parameters_before, parameters_after: parameter values (trainable or not, noise masks
            included) of the model before and after folding.
        buffers_before, buffers_after: buffer values (fixed noise masks, BatchNorm statistics,
            bias maps) before and after.
    """

    layers: tuple[FoldedLayer, ...]
    parameters_before: int
    parameters_after: int
    buffers_before: int
    buffers_after: int

    @property
    def folded(self) -> tuple[FoldedLayer, ...]:
        """The layers replaced by plain modules."""
        return tuple(layer for layer in self.layers if layer.folded)

    @property
    def kept(self) -> tuple[FoldedLayer, ...]:
        """The layers left as they were, each with its reason."""
        return tuple(layer for layer in self.layers if not layer.folded)

    def __str__(self) -> str:
        header = ("name", "layer", "in", "out", "nmasks", "stride", "action")
        rows = [header]
        for layer in self.layers:
            action = "folded" + (" (MixMaps merged)" if layer.mix_merged else "")
            rows.append(
                (
                    layer.name or "(model)",
                    layer.kind,
                    str(layer.in_channels),
                    str(layer.out_channels),
                    str(layer.nmasks),
                    str(layer.stride),
                    action if layer.folded else f"kept: {layer.reason}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
            for row in rows
        ]
        summary = [
            f"perturbnn.reparameterize: {len(self.folded)} of {len(self.layers)} PNN layers "
            f"folded, {len(self.kept)} kept",
            f"parameter values: {self.parameters_before:,} -> {self.parameters_after:,}; "
            f"buffer values: {self.buffers_before:,} -> {self.buffers_after:,}",
        ]
        return "\n".join([summary[0], *(lines if self.layers else []), summary[1]])


def _values(tensors: Any) -> int:
    return sum(t.numel() for t in tensors if not nn.parameter.is_lazy(t))


def _where(name: str, module: nn.Module) -> str:
    return f"{name!r} ({type(module).__name__})" if name else f"the model ({type(module).__name__})"


def _check_model(model: nn.Module) -> None:
    """Refuse a model in training mode or with lazy PNN layers, naming the first such module."""
    for name, module in model.named_modules():
        if module.training:
            raise ValueError(
                f"model must be in eval mode: {_where(name, module)} is in training mode; call "
                "model.eval() first (folding is for inference, as torch's fuse_conv_bn_eval)"
            )
    for name, module in model.named_modules():
        if isinstance(module, (NoiseMask, PerturbConv2d)) and module.input_size is None:
            raise ValueError(
                f"model has a lazy PNN layer {_where(name, module)} whose noise masks are not "
                "drawn yet (input_size=None): run one forward pass on an input of the data's "
                "size (or build the model with input_size), then reparameterize"
            )


def _kept_reason(layer: PerturbConv2d) -> str:
    if layer.activation is not None:
        return (
            f"activation {type(layer.activation).__name__} between noise and 1x1 convolution "
            "(not affine)"
        )
    return ""


def _bare_noise_reason(parent: Optional[nn.Module]) -> str:
    if isinstance(parent, NoiseLayer):
        return "NoiseLayer: activation and BatchNorm between noise and 1x1 convolution"
    return "bare NoiseMask (only a PerturbConv2d, noise then 1x1 convolution, is folded)"


def _fold_arrays(layer: PerturbConv2d) -> tuple[Tensor, Tensor, int]:
    """The folded layer's 1x1 weight, bias map and groups, in float64 (float32 on MPS).

    The bias map is the layer evaluated at ``x = 0`` by the literal formulation; the weight is
    the layer's weight summed over each input channel's masks.
    """
    weight = layer.weight.detach()
    work = torch.float32 if weight.device.type == "mps" else torch.float64
    w = weight.to(work)
    masks = layer.noise.masks.detach().to(work)
    bias = None if layer.bias is None else layer.bias.detach().to(work)
    height, width = masks.shape[2:]
    zero = torch.zeros(1, layer.in_channels, height, width, device=w.device, dtype=work)
    bias_map = F.conv2d(PF.perturb(zero, masks, layer.level), w, bias, groups=layer.groups)[0]
    if layer.nmasks > 1:  # grouped by input channel: output o scales input channel o // fanout
        folded = w.reshape(layer.out_channels, layer.nmasks).sum(1).reshape(-1, 1, 1, 1)
        return folded, bias_map, layer.in_channels
    return w, bias_map, 1


def _dense(weight: Tensor, groups: int, in_channels: int) -> Tensor:
    """``Tensor[out, in_channels]``: a (grouped) 1x1 weight as a dense matrix."""
    if groups == 1:
        return weight.reshape(weight.shape[0], in_channels)
    out_channels = weight.shape[0]
    fanout = out_channels // in_channels
    dense = torch.zeros(out_channels, in_channels, device=weight.device, dtype=weight.dtype)
    index = torch.arange(out_channels, device=weight.device)
    dense[index, index // fanout] = weight.reshape(-1)
    return dense


def _mergeable(layer: PerturbConv2d, mix: MixMaps) -> bool:
    conv = mix[0]
    return (
        type(conv) is nn.Conv2d
        and conv.in_channels == layer.out_channels
        and conv.groups == 1
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and (layer.stride == 1 or layer.pool_type == "avg")  # avg pooling commutes with it
    )


def _folded_module(layer: PerturbConv2d, mix: Optional[MixMaps]) -> nn.Module:
    """``FoldedConv2d`` (then the pooling) equal to ``layer`` (then ``mix[0]``)."""
    weight, bias_map, groups = _fold_arrays(layer)
    in_channels, out_channels = layer.in_channels, layer.out_channels
    if mix is not None:
        conv = mix[0]
        assert isinstance(conv, nn.Conv2d)
        m = conv.weight.detach().to(weight.dtype).reshape(conv.out_channels, conv.in_channels)
        weight = (m @ _dense(weight, groups, in_channels)).reshape(-1, in_channels, 1, 1)
        bias_map = torch.einsum("po,ohw->phw", m, bias_map)
        if conv.bias is not None:
            bias_map = bias_map + conv.bias.detach().to(weight.dtype).reshape(-1, 1, 1)
        groups, out_channels = 1, conv.out_channels
    size = (int(bias_map.shape[1]), int(bias_map.shape[2]))
    folded = FoldedConv2d(
        in_channels,
        out_channels,
        size,
        groups=groups,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        folded.weight.copy_(weight)
        folded.bias.copy_(bias_map)
    if layer.stride == 1:
        return folded.eval()
    pool = nn.MaxPool2d if layer.pool_type == "max" else nn.AvgPool2d
    return nn.Sequential(folded, pool(layer.stride, layer.stride, ceil_mode=True)).eval()


def _set(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``name`` in ``model``; return the (possibly new) root."""
    if not name:
        return module
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
    return model


def _plain(sequential: nn.Sequential) -> nn.Sequential:
    """The same children in a plain ``nn.Sequential`` (a ``PerturbLayer`` or ``MixMaps``)."""
    return nn.Sequential(*sequential._modules.values()).eval()  # type: ignore[arg-type]


def reparameterize(model: nn.Module, *, inplace: bool = False) -> tuple[nn.Module, FoldReport]:
    """Fold every PNN layer without an activation into a 1x1 convolution plus a bias map.

    Each :class:`~perturbnn.PerturbConv2d` with no activation between noise and 1x1
    convolution becomes a :class:`FoldedConv2d` (``nn.Sequential(FoldedConv2d, pooling)``
    with a ``stride``): a dense 1x1 convolution for ``nmasks == 1``, grouped by input channel
    (``groups = in_channels``, the weights summed over each channel's masks) under fanout; its
    bias map is the layer's output for a zero input (the noise term plus the bias); the
    pooling is the layer's ``nn.MaxPool2d``/``nn.AvgPool2d`` (``ceil_mode``). The outputs equal the layer's up to
    floating-point rounding (the folded arrays are computed in float64, then cast to the
    layer's dtype). Where a :class:`~perturbnn.MixMaps` follows the layer directly in an
    ``nn.Sequential`` (as :func:`~perturbnn.convert` with ``mix_maps`` builds it) and no max
    pooling stands between them, its 1x1 convolution is merged into the same convolution
    (dense, ``in_channels`` to its channels) and its BatchNorm and activation stay. A
    :class:`~perturbnn.PerturbLayer` whose perturbation layer was folded, and such a
    ``MixMaps``, become a plain ``nn.Sequential`` of the same modules.

    Trained masks (``train_masks=True``) are folded like fixed ones: at inference they are
    constants too, so the folded model computes the same function; the bias map is a buffer,
    so fine-tuning the folded model trains only the convolution's weights.

    Kept as they are, each with its reason in the report: a ``PerturbConv2d`` with an
    activation inside (the layer is not affine in its input), and every ``NoiseMask`` outside a
    ``PerturbConv2d`` (the original paper's ``NoiseLayer``, whose activation and BatchNorm come
    between noise and convolution). Nothing else is changed (BatchNorm is not fused).

    Like :func:`~perturbnn.convert`, it returns the model and a report, rather than the model
    alone as timm's ``reparameterize_model`` does.

    Source: PNN, Sec. 3, Eq. 2 without activation (see :mod:`perturbnn.kernels.linear`); the
    deployment convention of RepVGG (``switch_to_deploy``) and timm.

    Args:
        model: an ``nn.Module`` in eval mode (every submodule), its PNN layers materialized.
        inplace: change ``model`` itself (and return it, or the folded module if ``model`` is
            itself a layer); otherwise a deep copy is folded and ``model`` is left untouched.

    Returns:
        ``(folded_model, report)``; ``print(report)`` shows a table. The folded model maps the
        same inputs to the same outputs (``Tensor[batch_size, ...]`` as ``model``).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``inplace`` not a ``bool``.
        ValueError: naming the module, if any module is in training mode (call
            ``model.eval()``), or a PNN layer is lazy and has not run yet (run one forward on a
            real input, or build it with ``input_size``); nothing is copied or changed.

    Example::

        >>> from perturbnn import PerturbConv2d
        >>> layer = PerturbConv2d(3, 12, nmasks=4, input_size=8, stride=2).eval()
        >>> folded, report = reparameterize(layer)
        >>> folded
        Sequential(
          (0): FoldedConv2d(3, 12, size=(8, 8), groups=3)
          (1): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=True)
        )
        >>> x = torch.randn(2, 3, 8, 8)
        >>> bool((folded(x) - layer(x)).abs().max() < 1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_bool("inplace", inplace)
    _check_model(model)
    parameters_before = _values(model.parameters())
    buffers_before = _values(model.buffers())
    if not inplace:
        model = copy.deepcopy(model)

    modules = dict(model.named_modules())
    parents = {
        f"{name}.{child}" if name else child: module
        for name, module in modules.items()
        for child in module._modules
    }
    layers: list[FoldedLayer] = []
    children: list[tuple[str, nn.Module]] = []  # replaced first, while their names hold
    containers: dict[str, nn.Sequential] = {}  # then these, as plain nn.Sequential
    for name, module in modules.items():
        parent = parents.get(name)
        if isinstance(module, NoiseMask) and not isinstance(parent, PerturbConv2d):
            layers.append(
                FoldedLayer(
                    name=name,
                    kind="NoiseMask",
                    in_channels=module.channels,
                    out_channels=module.channels * module.nmasks,
                    nmasks=module.nmasks,
                    stride=1,
                    folded=False,
                    mix_merged=False,
                    reason=_bare_noise_reason(parent),
                )
            )
        if not isinstance(module, PerturbConv2d):
            continue
        reason = _kept_reason(module)
        following, following_name = _next_sibling(name, parent)
        mix = following if isinstance(following, MixMaps) else None
        merged = not reason and mix is not None and _mergeable(module, mix)
        if not reason:
            children.append((name, _folded_module(module, mix if merged else None)))
            if mix is not None:  # merged: its BatchNorm and activation stay
                children.append(
                    (
                        following_name,
                        nn.Sequential(*list(mix)[1:]).eval() if merged else _plain(mix),
                    )
                )
            if isinstance(parent, PerturbLayer):
                parent_name = name.rpartition(".")[0]
                containers[parent_name] = parent
                for child, sub in parent._modules.items():
                    if isinstance(sub, MixMaps) and sub is not mix:
                        children.append((f"{parent_name}.{child}".lstrip("."), _plain(sub)))
        layers.append(
            FoldedLayer(
                name=name,
                kind=type(module).__name__,
                in_channels=module.in_channels,
                out_channels=module.out_channels,
                nmasks=module.nmasks,
                stride=module.stride,
                folded=not reason,
                mix_merged=merged,
                reason=reason,
            )
        )
    for name, replacement in children:
        model = _set(model, name, replacement)
    for name, container in containers.items():
        model = _set(model, name, _plain(container))
    report = FoldReport(
        layers=tuple(layers),
        parameters_before=parameters_before,
        parameters_after=_values(model.parameters()),
        buffers_before=buffers_before,
        buffers_after=_values(model.buffers()),
    )
    return model, report


def _next_sibling(name: str, parent: Optional[nn.Module]) -> tuple[Optional[nn.Module], str]:
    """The module after ``name`` in its parent ``nn.Sequential``, and its name."""
    if not isinstance(parent, nn.Sequential):
        return None, ""
    parent_name, _, child = name.rpartition(".")
    keys = list(parent._modules)
    index = keys.index(child)
    if index + 1 == len(keys):
        return None, ""
    key = keys[index + 1]
    return parent._modules[key], f"{parent_name}.{key}" if parent_name else key
