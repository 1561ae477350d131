"""Bad arguments and inputs through every public layer and builder.

Every test first makes the valid call and checks that it works; then it changes exactly one
argument to an invalid value and checks that the call raises the documented ``TypeError`` or
``ValueError`` whose message names *that* argument (the name the user typed), and nothing
else (issue 15: a check that rejected valid calls, or named the wrong argument, must fail).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import scaled
from perturbnn import MixMaps, NoiseMask, PerturbConv2d, PerturbLayer, build_model, list_models

NAN, INF = float("nan"), float("inf")

# Invalid values per kind of argument, with the error each must raise.
BAD_COUNT = [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("4", TypeError),
             (True, TypeError), (None, TypeError)]  # fmt: skip
# ``input_size=None`` is valid: a lazy layer (its masks take the first input's size).
BAD_SIZE = [(0, ValueError), (-2, ValueError), ((3, 0), ValueError), (2.5, TypeError),
            ("5", TypeError), ((3,), TypeError)]  # fmt: skip
BAD_LEVEL = [(-0.1, ValueError), (NAN, ValueError), (INF, ValueError), ("0.1", TypeError),
             (True, TypeError), (None, TypeError)]  # fmt: skip
BAD_BOOL = [(1, TypeError), ("yes", TypeError), (None, TypeError)]
BAD_ACT = [("gelu", ValueError), ("RELU", ValueError), ("", ValueError), (None, TypeError)]
BAD_NOISE = [("Uniform", ValueError), ("gaussian", ValueError), (0, TypeError)]
BAD_IMPL = [("fast", ValueError), ("cuda", ValueError), (None, TypeError)]
BAD_STRIDE = [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError),
              (True, TypeError)]  # fmt: skip
BAD_POOL = [("mean", ValueError), ("Max", ValueError), (None, TypeError)]
BAD_ACTIVATION = [("relu", TypeError), (torch.relu, TypeError)]

NOISE_MASK = (
    NoiseMask,
    {"channels": 3, "nmasks": 4, "input_size": (5, 6), "level": 0.1},
    {
        "channels": BAD_COUNT,
        "nmasks": BAD_COUNT,
        "input_size": BAD_SIZE,
        "level": BAD_LEVEL,
        "noise_type": BAD_NOISE,
        "unique_masks": BAD_BOOL,
        "train_masks": BAD_BOOL,
        "generator": [(0, TypeError), ("seed", TypeError)],
    },
)
PERTURB_CONV2D = (
    PerturbConv2d,
    {"in_channels": 3, "out_channels": 6, "nmasks": 4, "input_size": (5, 6), "use_act": True},
    {
        "in_channels": BAD_COUNT,
        "out_channels": [*BAD_COUNT, (7, ValueError)],
        "nmasks": BAD_COUNT,
        "input_size": BAD_SIZE,
        "level": BAD_LEVEL,
        "noise_type": BAD_NOISE,
        "unique_masks": BAD_BOOL,
        "train_masks": BAD_BOOL,
        "use_act": BAD_BOOL,
        "act": BAD_ACT,
        "bias": BAD_BOOL,
        "impl": BAD_IMPL,
        "stride": BAD_STRIDE,
        "pool_type": BAD_POOL,
        "activation": BAD_ACTIVATION,
    },
)
MIX_MAPS = (
    MixMaps,
    {"channels": 4, "act": "tanh"},
    {"channels": BAD_COUNT, "act": BAD_ACT, "bias": BAD_BOOL, "activation": BAD_ACTIVATION},
)
PERTURB_LAYER = (
    PerturbLayer,
    {"in_channels": 3, "out_channels": 6, "nmasks": 2, "input_size": (5, 6), "mix_maps": True},
    {
        "in_channels": BAD_COUNT,
        "out_channels": BAD_COUNT,
        "nmasks": BAD_COUNT,
        "filter_size": [(2, ValueError), (-1, ValueError), ("3", TypeError), (3.0, TypeError)],
        "input_size": BAD_SIZE,
        "level": BAD_LEVEL,
        "noise_type": BAD_NOISE,
        "act": BAD_ACT,
        "mix_maps": BAD_BOOL,
        "impl": BAD_IMPL,
        "stride": BAD_STRIDE,
        "pool_type": BAD_POOL,
    },
)
LAYERS = {"NoiseMask": NOISE_MASK, "PerturbConv2d": PERTURB_CONV2D, "MixMaps": MIX_MAPS,
          "PerturbLayer": PERTURB_LAYER}  # fmt: skip


def names(message: str, argument: str) -> bool:
    """``message`` names ``argument`` as a word (``input_size[0]`` names ``input_size``)."""
    return re.search(rf"(?<![\w.]){re.escape(argument)}\b", message) is not None


def assert_rejected(call: Callable[[], Any], argument: str, error: type[Exception]) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert info.type is error, f"{argument}: expected {error.__name__}, got {info.type.__name__}"
    assert names(str(info.value), argument), f"message does not name {argument}: {info.value}"


def works(module: torch.nn.Module, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A forward pass of a valid module on a valid input, in eval mode."""
    out: torch.Tensor = module.eval()(torch.randn(2, channels, *size))
    assert torch.isfinite(out).all()
    return out


def stable_id(value: Any) -> str:
    """A test id that is the same in every process (a function's repr holds its address, and
    mutmut looks tests up by the ids it recorded in an earlier process)."""
    return value.__name__ if callable(value) and hasattr(value, "__name__") else repr(value)


def layer_cases() -> list[Any]:
    return [
        pytest.param(layer, argument, value, error, id=f"{layer}-{argument}={stable_id(value)}")
        for layer, (_, _, bad) in LAYERS.items()
        for argument, values in bad.items()
        for value, error in values
    ]


@pytest.mark.parametrize(("layer", "argument", "value", "error"), layer_cases())
def test_layer_names_the_one_bad_argument(layer, argument, value, error):
    cls, valid, _ = LAYERS[layer]
    channels = valid.get("in_channels", valid.get("channels"))
    size = valid.get("input_size", (3, 3))
    works(cls(**valid), channels, size)  # the valid call succeeds
    assert_rejected(lambda: cls(**{**valid, argument: value}), argument, error)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_valid_layer_option_is_accepted(layer):
    """Each option's valid values, one at a time: a check must not reject a valid call."""
    cls, valid, _ = LAYERS[layer]
    good = {
        "nmasks": [1, 2, 5], "level": [0, 0.0, 1, 2.5], "noise_type": ["uniform", "normal"],
        "unique_masks": [True, False], "train_masks": [True, False], "use_act": [True, False],
        "act": ["relu", "lrelu", "prelu", "rrelu", "elu", "selu", "tanh", "sigmoid"],
        "bias": [True, False], "impl": ["auto", "grouped", "eager"], "mix_maps": [True, False],
        "input_size": [(5, 6), None], "filter_size": [0, 1, 3, 5], "stride": [1, 2, 3],
        "pool_type": ["max", "avg"],
    }  # fmt: skip
    channels = valid.get("in_channels", valid.get("channels"))
    for argument, values in good.items():
        if argument not in LAYERS[layer][2]:
            continue
        for value in values:
            kwargs = {**valid, argument: value}
            out = works(cls(**kwargs), channels, kwargs.get("input_size") or (5, 6))
            assert out.shape[0] == 2


@pytest.mark.parametrize(
    ("layer", "shape", "pattern"),
    [
        ("PerturbConv2d", (2, 4, 5, 6), r"input must have 3 channels, got 4"),
        ("PerturbConv2d", (2, 3, 6, 6), r"input spatial size \(6, 6\) differs from the masks. size \(5, 6\)"),
        ("PerturbConv2d", (3, 5, 6), r"input must be 4-D"),
        ("NoiseMask", (2, 2, 5, 6), r"input must have 3 channels, got 2"),
        ("NoiseMask", (2, 3, 5, 5), r"input spatial size \(5, 5\) differs from the masks. size \(5, 6\)"),
        ("PerturbLayer", (2, 3, 5, 7), r"input spatial size \(5, 7\) differs from the masks. size \(5, 6\)"),
    ],
)
def test_bad_input_shape_is_named(layer, shape, pattern):
    cls, valid, _ = LAYERS[layer]
    module = cls(**valid).eval()
    channels = valid.get("in_channels", valid.get("channels"))
    works(module, channels, valid["input_size"])
    with pytest.raises(ValueError, match=pattern):
        module(torch.randn(shape))
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        module(torch.zeros(2, channels, *valid["input_size"], dtype=torch.long))


# --------------------------------------------------------------------- random search on top


@settings(max_examples=scaled(60))
@given(layer=st.sampled_from(sorted(LAYERS)), data=st.data())
def test_random_single_corruption(layer, data):
    """A valid call, or one argument swapped for an invalid value: the error names it."""
    cls, valid, bad = LAYERS[layer]
    kwargs = dict(valid)
    if "nmasks" in kwargs:
        kwargs["nmasks"] = data.draw(st.integers(1, 4), label="nmasks")
    if "level" in bad:
        kwargs["level"] = data.draw(st.sampled_from([0.0, 0.1, 1, 2.0]), label="level")
    for flag in ("unique_masks", "train_masks", "use_act", "bias", "mix_maps"):
        if flag in bad:
            kwargs[flag] = data.draw(st.booleans(), label=flag)
    channels = kwargs.get("in_channels", kwargs.get("channels"))
    works(cls(**kwargs), channels, kwargs.get("input_size", (3, 3)))
    argument = data.draw(st.sampled_from(sorted(bad)), label="argument")
    value, error = data.draw(st.sampled_from(bad[argument]), label="value")
    assert_rejected(lambda: cls(**{**kwargs, argument: value}), argument, error)


BUILDER_BAD = {
    "nfilters": [(0, ValueError), (-2, ValueError), (2.5, TypeError)],
    "nclasses": [(0, ValueError), ("10", TypeError)],
    "nmasks": [(0, ValueError), (None, TypeError)],
    "level": BAD_LEVEL,
    "scale_noise": [(-1.0, ValueError), (NAN, ValueError)],
    "act": BAD_ACT,
    "use_act": BAD_BOOL,
    "pool_type": [("mean", ValueError), (1, TypeError)],
    "dropout": [(-0.1, ValueError), (1.5, ValueError)],
    "unique_masks": BAD_BOOL,
    "train_masks": BAD_BOOL,
    "noise_type": BAD_NOISE,
    "mix_maps": BAD_BOOL,
    "in_channels": [(0, ValueError)],
    "impl": BAD_IMPL,
    "bogus_option": [(1, TypeError)],
}


@pytest.mark.parametrize("name", list_models())
def test_builder_names_the_one_bad_option(name):
    valid = {"nfilters": 4, "input_size": 32}
    model = build_model(name, **valid).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    checked = 0
    for argument, values in BUILDER_BAD.items():
        for value, error in values:
            try:
                build_model(name, **{**valid, argument: value})
            except (TypeError, ValueError) as caught:
                assert type(caught) is error, (argument, value, caught)
                assert names(str(caught), argument), (argument, value, str(caught))
                checked += 1
            else:  # an option this family does not use may be accepted, never a bad nfilters
                assert argument not in ("nfilters", "nclasses", "bogus_option", "impl"), argument
    assert checked >= 10


@pytest.mark.parametrize("bad", ["resnet", "vgg16", "", "ResNet18"])
def test_unknown_model_name_is_named(bad):
    assert isinstance(build_model("resnet18", nfilters=4), torch.nn.Module)
    with pytest.raises(ValueError, match=rf"unknown model name {re.escape(repr(bad))}"):
        build_model(bad)
    with pytest.raises(TypeError, match="name must be a model name string"):
        build_model(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_layer_output_follows_input_dtype(dtype):
    layer = PerturbConv2d(4, 8, 2, input_size=5, level=0.3, use_act=True).to(dtype)
    out = layer(torch.randn(2, 4, 5, 5, dtype=dtype))
    assert out.dtype == dtype
    float_layer = PerturbConv2d(4, 8, 2, input_size=5, level=0.3)
    assert float_layer(torch.randn(2, 4, 5, 5, dtype=dtype)).dtype == dtype


def test_autocast_bfloat16():
    layer = PerturbConv2d(4, 8, 2, input_size=5, level=0.3)
    x = torch.randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        out_bf16 = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("nmasks", [1, 3])
def test_channels_last_and_non_contiguous_give_the_same_result(nmasks):
    torch.manual_seed(0)
    layer = PerturbConv2d(3, 6, nmasks, input_size=7, level=0.4, use_act=True)
    x = torch.randn(2, 3, 7, 7)
    expected = layer(x)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), expected)
    wide = torch.randn(2, 3, 7, 14)
    wide[..., ::2] = x
    torch.testing.assert_close(layer(wide[..., ::2]), expected)
    torch.testing.assert_close(layer(x.transpose(2, 3).contiguous().transpose(2, 3)), expected)
