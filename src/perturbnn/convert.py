"""Convert an existing network: replace its convolutions by PNN perturbation layers.

In the spirit of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: walk a model and swap each
eligible ``nn.Conv2d`` for a :class:`~perturbnn.PerturbConv2d` with the same channels, its stride
as pooling and lazy masks, and say for every convolution what was done and why.

Source: PNN, CVPR 2018, Sec. 3 (a perturbation layer replaces a convolution); Klachko's reproduction
reproduction's finding that keeping the first layer a regular convolution works best
(``--first_filter_size 3``).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from collections.abc import Iterable
from typing import Optional, Union

import torch
from torch import nn

from perturbnn._validation import check_bool, check_choice, check_level, check_positive_int
from perturbnn.layers import NOISE_TYPES, MixMaps, PerturbConv2d
from perturbnn.summary import _mask_ids

__all__ = ["ConvertReport", "ConvertedLayer", "convert"]

Patterns = Union[str, Iterable[str], None]


@dataclasses.dataclass(frozen=True)
class ConvertedLayer:
    """What :func:`convert` did to one convolution.

    Attributes:
        name: the module's qualified name in the model (``"layer1.0.conv1"``).
        kind: the module's class name (``"Conv2d"``, ``"ConvTranspose2d"``).
        in_channels, out_channels: channels of the convolution.
        kernel_size, stride: of the convolution, ``(height, width)``.
        replaced: ``True`` if it was replaced by a perturbation layer.
        reason: why it was skipped (empty when replaced).
        parameters_before: trainable parameter values of the convolution (0 for a lazy one not
            yet run).
        parameters_after: trainable parameter values of its replacement (noise masks excluded);
            equal to ``parameters_before`` when skipped.
        masks_per_pixel: noise-mask values per pixel of the input map (``in_channels * nmasks``,
            or ``nmasks`` for shared masks; 0 when skipped). The masks themselves are drawn on
            the first forward, at the input's size.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    replaced: bool
    reason: str
    parameters_before: int
    parameters_after: int
    masks_per_pixel: int


@dataclasses.dataclass(frozen=True)
class ConvertReport:
    """The result of :func:`convert`: one :class:`ConvertedLayer` per convolution found.

    ``print(report)`` shows a table. :meth:`mask_values` counts the noise-mask values of the
    converted model, which are only known once a forward has given the lazy masks their size.

    Attributes:
        layers: every ``nn.Conv2d`` and ``nn.ConvTranspose2d`` of the model, in module order.
        parameters_before: trainable parameter values of the whole model before conversion
            (a lazy module not yet run counts 0).
        parameters_after: the same after conversion (noise masks excluded).
    """

    layers: tuple[ConvertedLayer, ...]
    parameters_before: int
    parameters_after: int
    replacements: tuple[PerturbConv2d, ...] = dataclasses.field(repr=False, compare=False)

    @property
    def replaced(self) -> tuple[ConvertedLayer, ...]:
        """The convolutions that were replaced."""
        return tuple(layer for layer in self.layers if layer.replaced)

    @property
    def skipped(self) -> tuple[ConvertedLayer, ...]:
        """The convolutions left as they were, each with its reason."""
        return tuple(layer for layer in self.layers if not layer.replaced)

    def mask_values(self) -> int:
        """Noise-mask values of the replacement layers now (0 for layers not yet run)."""
        return sum(module.noise.masks.numel() for module in self.replacements)

    def __str__(self) -> str:
        header = ("name", "layer", "in", "out", "kernel", "stride", "params", "after", "action")
        rows = [header]
        for layer in self.layers:
            rows.append(
                (
                    layer.name or "(model)",
                    layer.kind,
                    str(layer.in_channels),
                    str(layer.out_channels),
                    "x".join(map(str, layer.kernel_size)),
                    "x".join(map(str, layer.stride)),
                    f"{layer.parameters_before:,}",
                    f"{layer.parameters_after:,}",
                    "replaced" if layer.replaced else f"skipped: {layer.reason}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
            for row in rows
        ]
        masks = self.mask_values()
        pending = sum(1 for module in self.replacements if module.input_size is None)
        mask_text = f"{masks:,}" + (
            f" ({pending} layers draw theirs on the first forward)" if pending else ""
        )
        summary = [
            f"perturbnn.convert: {len(self.replaced)} of {len(self.layers)} convolutions "
            f"replaced, {len(self.skipped)} skipped",
            f"trainable parameters: {self.parameters_before:,} -> {self.parameters_after:,}; "
            f"noise-mask values: {mask_text}",
        ]
        return "\n".join([summary[0], *lines, summary[1]])


def _known_parameters(model: nn.Module) -> int:
    """Trainable parameter values, noise masks excluded, a lazy parameter not yet sized (an
    ``nn.LazyConv2d`` not yet run) counting 0: the report's counts, where
    :func:`~perturbnn.count_parameters` would refuse such a model."""
    masks = _mask_ids(model)
    return sum(
        p.numel()
        for p in model.parameters()
        if p.requires_grad and id(p) not in masks and not nn.parameter.is_lazy(p)
    )


def _patterns(name: str, value: Patterns) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        patterns = tuple(value)
        if all(isinstance(p, str) for p in patterns):
            return patterns
    raise TypeError(
        f"{name} must be None, a module-name pattern or a list of patterns, got {value!r}"
    )


def _check_patterns_match(option: str, patterns: tuple[str, ...], names: list[str]) -> None:
    """Refuse a pattern that matches no convolution's name: most likely a typo."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            shown = ", ".join(repr(name) for name in names[:6])
            more = f", ... ({len(names)} in all)" if len(names) > 6 else ""
            raise ValueError(
                f"{option} pattern {pattern!r} matches no convolution's module name "
                f"(fnmatch on the full name, e.g. 'layer4.*'); the model's convolutions: "
                f"{shown or 'none'}{more}"
            )


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, tuple):
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))  # type: ignore[call-overload]


def _skip_reason(
    conv: nn.Module,
    name: str,
    first: bool,
    keep_first: bool,
    nmasks: int,
    include: Optional[tuple[str, ...]],
    exclude: Optional[tuple[str, ...]],
) -> str:
    """Why ``conv`` cannot or must not be replaced, or ``""``."""
    if isinstance(conv, nn.ConvTranspose2d):
        return "transposed convolution"
    assert isinstance(conv, nn.Conv2d)
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return "not matched by include"
    if exclude is not None:
        for pattern in exclude:
            if fnmatch.fnmatchcase(name, pattern):
                return f"matched by exclude pattern {pattern!r}"
    if first and keep_first:
        return "first convolution (keep_first=True)"
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        return "lazy convolution not yet run (in_channels unknown)"
    if conv.groups > 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return f"{kind} convolution (groups={conv.groups})"
    if _pair(conv.dilation) != (1, 1):
        return f"dilation {_pair(conv.dilation)} > 1"
    kernel, stride = _pair(conv.kernel_size), _pair(conv.stride)
    if stride[0] != stride[1]:
        return f"unequal strides {stride}"
    if conv.padding == "same":
        pass  # stride 1 (nn.Conv2d refuses padding="same" with a stride)
    elif conv.padding == "valid" or any(
        k % 2 == 0 or p != k // 2 for k, p in zip(kernel, _pair(conv.padding))
    ):
        return (
            f"padding {conv.padding} with kernel {kernel} changes the map size; a perturbation "
            "layer keeps it"
        )
    if nmasks > 1 and conv.out_channels % conv.in_channels != 0:
        return (
            f"out_channels={conv.out_channels} not a multiple of in_channels="
            f"{conv.in_channels} with nmasks={nmasks}"
        )
    return ""


def convert(
    model: nn.Module,
    *,
    nmasks: int = 1,
    level: float = 0.1,
    use_act: bool = False,
    mix_maps: bool = False,
    unique_masks: bool = True,
    noise_type: str = "uniform",
    keep_first: bool = True,
    include: Patterns = None,
    exclude: Patterns = None,
    inplace: bool = False,
    generator: Optional[torch.Generator] = None,
) -> tuple[nn.Module, ConvertReport]:
    """Replace each eligible ``nn.Conv2d`` of ``model`` by a :class:`~perturbnn.PerturbConv2d`.

    A replacement has the convolution's ``in_channels``, ``out_channels``, bias (or none),
    device and dtype; its stride becomes a max pooling after it (same output size); its masks
    are lazy (drawn on the first forward at the input's size, so the model works at any
    resolution, one resolution per model). With ``mix_maps`` it is followed by
    :class:`~perturbnn.MixMaps`. The convolution's weights are not reused (a perturbation layer
    has no kxk kernel): train the converted model. Each replacement's masks record its name in
    the model (``noise.module_name``), so that a size error in the converted model names it.

    Left as they are, each with its reason in the report: transposed convolutions; grouped and
    depthwise convolutions (``groups > 1``); dilation > 1; unequal strides; a padding other
    than ``kernel_size // 2`` for an odd kernel (the map size would change); ``out_channels``
    not a multiple of ``in_channels`` when ``nmasks > 1``; the first convolution with
    ``keep_first``; names not matched by ``include`` or matched by ``exclude``. Other modules
    (``Conv1d``, ``Conv3d``, linear layers) are neither touched nor reported.

    Source: PNN, Sec. 3; Klachko's best setting keeps the first layer regular.

    Args:
        model: any ``nn.Module``.
        nmasks: noise masks per input channel (fanout).
        level: noise amplitude.
        use_act: apply a ReLU between the perturbation and the 1x1 convolution.
        mix_maps: add Klachko's :class:`~perturbnn.MixMaps` (1x1 conv, BatchNorm, ReLU) after
            each replacement.
        unique_masks, noise_type: as in :class:`~perturbnn.PerturbConv2d`.
        keep_first: leave the first convolution found (the stem) regular.
        include: module-name glob pattern(s) (``fnmatch`` on the full qualified name, e.g.
            ``"layer3.*"``); only matching convolutions are replaced. ``None``: all. Each
            pattern must match at least one convolution's name.
        exclude: module-name pattern(s) never replaced; each must match a convolution's name.
        inplace: change ``model`` itself; otherwise a deep copy is converted and ``model`` is
            left bit-identical.
        generator: CPU ``torch.Generator`` seeding the masks (default: the global RNG at the
            first forward).

    Returns:
        ``(converted_model, report)``; ``print(report)`` shows a table.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or an option has the wrong type.
        ValueError: on an invalid option value, or an ``include``/``exclude`` pattern that
            matches no convolution's name (a typo, most likely), before anything is copied or
            changed. Later, in the converted model's forward: an input whose size differs from
            the first input's, naming the first layer it reaches (its name in the model).

    Example::

        >>> import torchvision
        >>> net, report = convert(torchvision.models.resnet18(weights=None), nmasks=1)
        >>> len(report.replaced), len(report.skipped)
        (19, 1)
        >>> net(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 1000])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("nmasks", nmasks)
    check_level("level", level)
    for flag, value in (
        ("use_act", use_act),
        ("mix_maps", mix_maps),
        ("unique_masks", unique_masks),
        ("keep_first", keep_first),
        ("inplace", inplace),
    ):
        check_bool(flag, value)
    check_choice("noise_type", noise_type, NOISE_TYPES)
    include_patterns = _patterns("include", include)
    exclude_patterns = _patterns("exclude", exclude)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )

    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    for option, patterns in (("include", include_patterns), ("exclude", exclude_patterns)):
        _check_patterns_match(option, patterns or (), names)

    parameters_before = _known_parameters(model)
    if not inplace:
        model = copy.deepcopy(model)
    convolutions = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    layers: list[ConvertedLayer] = []
    replacements: list[PerturbConv2d] = []
    first_seen = False
    for name, conv in convolutions:
        first = isinstance(conv, nn.Conv2d) and not first_seen
        first_seen = first_seen or first
        reason = _skip_reason(
            conv, name, first, keep_first, nmasks, include_patterns, exclude_patterns
        )
        before = _known_parameters(conv)  # 0 for a lazy convolution not yet run
        after, per_pixel = before, 0
        if not reason:
            assert isinstance(conv, nn.Conv2d)
            layer = PerturbConv2d(
                conv.in_channels,
                conv.out_channels,
                nmasks,
                level=level,
                stride=_pair(conv.stride)[0],
                noise_type=noise_type,
                unique_masks=unique_masks,
                use_act=use_act,
                bias=conv.bias is not None,
                generator=generator,
                device=conv.weight.device,
                dtype=conv.weight.dtype,
            )
            layer.noise.module_name = (name + ".0" if mix_maps else name) or None
            replacement: nn.Module = layer
            if mix_maps:
                replacement = nn.Sequential(
                    layer,
                    MixMaps(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype),
                )
            if name:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, replacement)
            else:  # the model is itself a convolution
                model = replacement
            replacements.append(layer)
            after = _known_parameters(replacement)
            per_pixel = (conv.in_channels if unique_masks else 1) * nmasks
        layers.append(
            ConvertedLayer(
                name=name,
                kind=type(conv).__name__,
                in_channels=conv.in_channels,
                out_channels=conv.out_channels,
                kernel_size=_pair(conv.kernel_size),
                stride=_pair(conv.stride),
                replaced=not reason,
                reason=reason,
                parameters_before=before,
                parameters_after=after,
                masks_per_pixel=per_pixel,
            )
        )
    report = ConvertReport(
        layers=tuple(layers),
        parameters_before=parameters_before,
        parameters_after=_known_parameters(model),
        replacements=tuple(replacements),
    )
    return model, report
