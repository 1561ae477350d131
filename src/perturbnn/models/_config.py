"""The options every model builder takes, with Klachko's defaults, validated in one place.

Source: the independent reproduction's command-line options and defaults (its ``main.py``:
``--nfilters 64 --nmasks 1 --level 0.5 --unique_masks --filter_size 0 --first_filter_size 0
--act relu --pool_type max --dropout 0.5 --noise_type uniform``).

The number of classes is ``num_classes`` (timm's and torchvision's name); ``nclasses`` (the
independent reproduction's name) is accepted as an alias.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Optional, TypedDict, Union

import torch

from perturbnn._suggest import did_you_mean
from perturbnn._validation import check_bool, check_choice, check_level, check_positive_int
from perturbnn.activations import ACTIVATIONS
from perturbnn.functional import IMPLS
from perturbnn.layers import NOISE_TYPES

__all__ = ["FIRST_LAYER_TYPES", "POOL_TYPES", "ModelConfig", "ModelOptions"]

#: Valid ``pool_type`` names.
POOL_TYPES = ("max", "avg")

#: Valid ``first_layer_type`` names: the first perturbation layer of the independent reproduction
#: (the default) or of the authors' updated repository (:class:`~perturbnn.models.AuthorsFirstLayer`).
FIRST_LAYER_TYPES = ("independent", "authors")


class ModelOptions(TypedDict, total=False):
    """Keyword options of every builder (see :class:`ModelConfig` for their meaning)."""

    nfilters: int
    num_classes: int
    nclasses: int
    nmasks: int
    level: float
    filter_size: int
    first_filter_size: int
    scale_noise: float
    act: str
    use_act: bool
    pool_type: str
    dropout: float
    unique_masks: bool
    train_masks: bool
    noise_type: str
    mix_maps: bool
    first_layer_type: str
    freeze_first: bool
    impl: str
    input_size: Optional[int]
    in_channels: int
    generator: Optional[torch.Generator]
    device: Union[torch.device, str, int, None]
    dtype: Optional[torch.dtype]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Validated options of a model builder.

    Attributes:
        nfilters: width of the first stage (channels); later stages double it.
        nclasses: number of classes (logits); the builders take it as ``num_classes`` (or
            ``nclasses``), and :attr:`num_classes` reads it.
        nmasks: noise masks per input channel in perturbation layers (fanout).
        level: noise amplitude of perturbation layers.
        filter_size: ``0`` for perturbation layers after the first, else an odd kernel size.
        first_filter_size: the same for the first layer.
        scale_noise: factor on ``level`` in the first layer.
        act: activation name.
        use_act: apply the activation between noise and 1x1 convolution in the first layer
            (inner perturbation layers always do, as in Klachko's reproduction).
        pool_type: ``"max"`` or ``"avg"``.
        dropout: dropout probability before the classifier (``lenet``, ``cifarnet``).
        unique_masks, train_masks, noise_type, mix_maps: as in :class:`~perturbnn.PerturbLayer`.
        first_layer_type: which first perturbation layer (``first_filter_size=0``) the PerturbLayer
            ResNets build: ``"independent"`` (the default: the independent reproduction's
            :class:`~perturbnn.PerturbLayer`) or ``"authors"`` (the wider
            :class:`~perturbnn.models.AuthorsFirstLayer` of the authors' updated repository,
            https://github.com/juefeix/pnn.pytorch.update, commit 2c1604fa). Only the
            ``perturb_resnet`` builders use it.
        freeze_first: fix the weights of the first (regular) convolution at their random
            initial values (``requires_grad=False``; its BatchNorm stays trainable), as the
            authors' updated ``noiseresnet18`` does. Default ``False``. Only the ResNet builders
            use it, and only with a regular first convolution (``first_filter_size > 0``).
        impl: how perturbation layers are computed: ``"auto"`` (default), ``"grouped"``,
            ``"eager"`` or ``"compiled"`` (see :class:`~perturbnn.PerturbConv2d`). It does not
            change the network, so every builder accepts it (those without perturbation layers
            ignore it).
        input_size: side of the square input images, pixels; ``None`` (the default): lazy, the
            first input's height and width (square or not) fix the network: the noise masks
            are drawn and the linear head of ``lenet``/``cifarnet`` is sized
            (``nn.LazyLinear``) on the first forward. Give it to build everything up front
            (the reproduction harness does: its parameter counts and initialization are
            those of the given size).
        in_channels: channels of the input images (3 for CIFAR-10, 1 for MNIST).
        generator: CPU ``torch.Generator`` for the noise masks (default: global RNG).
        device, dtype: factory keyword arguments.
    """

    nfilters: int = 64
    nclasses: int = 10
    nmasks: int = 1
    level: float = 0.5
    filter_size: int = 0
    first_filter_size: int = 0
    scale_noise: float = 1.0
    act: str = "relu"
    use_act: bool = False
    pool_type: str = "max"
    dropout: float = 0.5
    unique_masks: bool = True
    train_masks: bool = False
    noise_type: str = "uniform"
    mix_maps: bool = False
    first_layer_type: str = "independent"
    freeze_first: bool = False
    impl: str = "auto"
    input_size: Optional[int] = None
    in_channels: int = 3
    generator: Optional[torch.Generator] = None
    device: Union[torch.device, str, int, None] = None
    dtype: Optional[torch.dtype] = None

    def __post_init__(self) -> None:
        for name in ("nfilters", "nclasses", "nmasks", "input_size", "in_channels"):
            if name != "input_size" or self.input_size is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("filter_size", "first_filter_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < 0 or (value > 0 and value % 2 == 0):
                raise ValueError(
                    f"{name} must be 0 (perturbation layer) or an odd kernel size, got {value}"
                )
        if self.filter_size == 7:
            raise ValueError(
                "filter_size must not be 7: a 7x7 layer has stride 2 and only the first layer may "
                "downsample (use first_filter_size=7)"
            )
        check_level("level", self.level)
        check_level("scale_noise", self.scale_noise)
        check_choice("act", self.act, ACTIVATIONS)
        check_choice("pool_type", self.pool_type, POOL_TYPES)
        check_choice("noise_type", self.noise_type, NOISE_TYPES)
        check_choice("impl", self.impl, IMPLS)
        check_choice("first_layer_type", self.first_layer_type, FIRST_LAYER_TYPES)
        for name in ("use_act", "unique_masks", "train_masks", "mix_maps", "freeze_first"):
            check_bool(name, getattr(self, name))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise TypeError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(self.generator).__name__}"
            )

    @classmethod
    def from_options(
        cls,
        model: str,
        options: Mapping[str, Any],
        *,
        used: frozenset[str],
        defaults: Optional[Mapping[str, Any]] = None,
    ) -> ModelConfig:
        """Validate the keyword options of builder ``model``.

        Args:
            model: the builder's name, for messages.
            options: the keyword arguments the builder received.
            used: the options that the network uses; any other option must keep its default.
            defaults: builder-specific defaults that replace the class defaults.

        ``num_classes`` is stored as ``nclasses`` (its alias).

        Raises:
            TypeError: on an unknown option name (with a "did you mean" when one is close) or a
                value of the wrong type.
            ValueError: on an invalid value, on ``num_classes`` and ``nclasses`` both given
                with different values, or an option that ``model`` does not use set to a
                value other than its default.
        """
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        valid = sorted({*fields, "num_classes"})
        unknown = sorted(set(options) - set(valid))
        if unknown:
            hints = [did_you_mean(name, valid) for name in unknown]
            hint = "".join(f" ({name}: {h})" for name, h in zip(unknown, hints) if h)
            raise TypeError(
                f"{model}() got unknown option(s) {unknown}{hint}; valid options: {valid}"
            )
        options = dict(options)
        if "num_classes" in options:
            check_positive_int("num_classes", options["num_classes"])
            if "nclasses" in options and options["nclasses"] != options["num_classes"]:
                raise ValueError(
                    f"{model}() got num_classes={options['num_classes']!r} and "
                    f"nclasses={options['nclasses']!r}: nclasses is another name of "
                    "num_classes; give one of them"
                )
            options["nclasses"] = options.pop("num_classes")
        merged = {**fields, **(defaults or {}), **options}
        config = cls(**merged)
        always = {
            "generator",
            "device",
            "dtype",
            "nclasses",
            "input_size",
            "in_channels",
            "nfilters",
            "impl",
        }
        for name, value in options.items():
            if name in used or name in always:
                continue
            default = (defaults or {}).get(name, fields[name])
            if value != default:
                raise ValueError(
                    f"{model} does not use option {name!r}; it must keep its default {default!r}, got {value!r}"
                )
        return config

    @property
    def num_classes(self) -> int:
        """The number of classes (logits): ``nclasses`` under timm's and torchvision's name."""
        return self.nclasses

    @property
    def factory_kwargs(self) -> dict[str, Any]:
        """``{"device": ..., "dtype": ...}`` for module constructors."""
        return {"device": self.device, "dtype": self.dtype}
