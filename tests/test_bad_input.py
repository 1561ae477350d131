"""Random, partly invalid arguments and inputs through every public layer and builder.

Each call either works with the documented output shape, or raises ``TypeError``/``ValueError``
whose message names one of the arguments; nothing else may escape (issue: robustness).
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from perturbnn import MixMaps, NoiseMask, PerturbConv2d, PerturbLayer, build_model, list_models

junk = st.sampled_from([None, 1.5, "4", [2], True, -1, 0, float("nan"), "gelu", ""])


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value nine times in ten, else junk of another type or out of range."""
    return st.sampled_from([True] * 9 + [False]).flatmap(lambda ok: valid if ok else junk)


counts = mostly(st.integers(1, 4))
sizes = mostly(st.one_of(st.integers(1, 6), st.tuples(st.integers(1, 6), st.integers(1, 6))))
levels = mostly(st.sampled_from([0.0, 0.1, 0.5, 2, float("inf")]))
bools = mostly(st.booleans())
acts = mostly(st.sampled_from(["relu", "tanh", "prelu", "sigmoid", "lrelu", "relu6"]))
noise_types = mostly(st.sampled_from(["uniform", "normal", "Uniform"]))
pool_types = mostly(st.sampled_from(["max", "avg", "mean"]))


def assert_named(error: Exception, arguments: dict) -> None:
    message = str(error)
    assert any(re.search(rf"\b{re.escape(name)}\b", message) for name in arguments), (
        f"{type(error).__name__} does not name an argument of {sorted(arguments)}: {message}"
    )


def run_forward(module, channels, size, batch, data):
    """Forward a random, sometimes mis-shaped input: correct shape works, others raise clearly.

    ``size=None`` is a lazy layer: any height and width is valid on the first forward.
    """
    lazy = size is None
    height, width = (5, 5) if lazy else (size, size) if isinstance(size, int) else size
    shape = data.draw(
        st.sampled_from(
            [
                (batch, channels, height, width),
                (batch, channels + 1, height, width),
                (batch, channels, height + 1, width),
                (channels, height, width),
            ]
        ),
        label="input shape",
    )
    x = torch.randn(shape)
    layout = data.draw(st.sampled_from(["contiguous", "channels_last", "strided"]), label="layout")
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(*shape[:-1], 2 * shape[-1])[..., ::2]
    try:
        return shape, module(x)
    except (ValueError, TypeError) as error:
        assert shape != (batch, channels, height, width), f"valid input rejected: {error}"
        assert not (lazy and shape == (batch, channels, height + 1, width)), (
            f"lazy layer rejected its first input: {error}"
        )
        assert re.search(r"input|channels|spatial|4-D", str(error)), str(error)
        return shape, None


@settings(max_examples=200)
@given(
    channels=counts,
    nmasks=counts,
    input_size=sizes,
    level=levels,
    noise_type=noise_types,
    unique_masks=bools,
    train_masks=bools,
    data=st.data(),
)
def test_noise_mask(
    channels, nmasks, input_size, level, noise_type, unique_masks, train_masks, data
):
    arguments = dict(
        channels=channels,
        nmasks=nmasks,
        input_size=input_size,
        level=level,
        noise_type=noise_type,
        unique_masks=unique_masks,
        train_masks=train_masks,
    )
    try:
        module = NoiseMask(**arguments)
    except (ValueError, TypeError) as error:
        assert_named(error, arguments)
        return
    event("constructed")
    shape, out = run_forward(module, channels, input_size, 2, data)
    event("forward ok" if out is not None else "forward rejected")
    if out is not None:
        assert out.shape == (shape[0], channels * nmasks, *shape[2:])


@settings(max_examples=200)
@given(
    in_channels=counts,
    out_channels=counts,
    nmasks=counts,
    input_size=sizes,
    level=levels,
    noise_type=noise_types,
    unique_masks=bools,
    use_act=bools,
    act=acts,
    bias=bools,
    data=st.data(),
)
def test_perturb_conv2d(
    in_channels,
    out_channels,
    nmasks,
    input_size,
    level,
    noise_type,
    unique_masks,
    use_act,
    act,
    bias,
    data,
):
    arguments = dict(
        in_channels=in_channels,
        out_channels=out_channels,
        nmasks=nmasks,
        input_size=input_size,
        level=level,
        noise_type=noise_type,
        unique_masks=unique_masks,
        use_act=use_act,
        act=act,
        bias=bias,
    )
    try:
        module = PerturbConv2d(**arguments)
    except (ValueError, TypeError) as error:
        assert_named(error, arguments)
        return
    event("constructed")
    shape, out = run_forward(module, in_channels, input_size, 2, data)
    event("forward ok" if out is not None else "forward rejected")
    if out is not None:
        assert out.shape == (shape[0], out_channels, *shape[2:])


@settings(max_examples=200)
@given(channels=counts, act=acts, data=st.data())
def test_mix_maps(channels, act, data):
    arguments = dict(channels=channels, act=act)
    try:
        module = MixMaps(**arguments)
    except (ValueError, TypeError) as error:
        assert_named(error, arguments)
        return
    event("constructed")
    out = module(torch.randn(2, channels, 3, 3))
    assert out.shape == (2, channels, 3, 3)


@settings(max_examples=200)
@given(
    in_channels=counts,
    out_channels=counts,
    nmasks=counts,
    filter_size=st.sampled_from([0, 1, 3, 7, 2, -1, "3"]),
    input_size=st.one_of(st.none(), sizes),
    level=levels,
    mix_maps=bools,
    act=acts,
    data=st.data(),
)
def test_perturb_layer(
    in_channels, out_channels, nmasks, filter_size, input_size, level, mix_maps, act, data
):
    arguments = dict(
        in_channels=in_channels,
        out_channels=out_channels,
        nmasks=nmasks,
        filter_size=filter_size,
        input_size=input_size,
        level=level,
        mix_maps=mix_maps,
        act=act,
    )
    try:
        module = PerturbLayer(**arguments)
    except (ValueError, TypeError) as error:
        assert_named(error, arguments)
        return
    event("constructed")
    shape, out = run_forward(module.eval(), in_channels, input_size, 2, data)
    event("forward ok" if out is not None else "forward rejected")
    if out is not None:
        height, width = shape[2:]
        if filter_size == 7:
            height, width = (height + 1) // 2, (width + 1) // 2
        assert out.shape == (shape[0], out_channels, height, width)


@settings(max_examples=200)
@given(
    name=st.sampled_from([*list_models(), "resnet", "vgg16"]),
    options=st.fixed_dictionaries(
        {},
        optional={
            "nfilters": st.sampled_from([1, 3, 6, 8, 0, -2, 2.5]),
            "nclasses": st.sampled_from([1, 10, 0]),
            "nmasks": st.sampled_from([1, 2, 3, 0]),
            "level": levels,
            "filter_size": st.sampled_from([0, 1, 3, 5, 7, 2, -1]),
            "first_filter_size": st.sampled_from([0, 1, 3, 7, 4]),
            "scale_noise": st.sampled_from([1.0, 2.0, -1.0]),
            "act": acts,
            "use_act": bools,
            "pool_type": pool_types,
            "dropout": st.sampled_from([0.0, 0.5, 1.0, -0.1]),
            "unique_masks": bools,
            "train_masks": bools,
            "noise_type": noise_types,
            "mix_maps": bools,
            "input_size": st.sampled_from([32, 28, 16, 8, 6, 0]),
            "in_channels": st.sampled_from([1, 3, 0]),
        },
    ),
    data=st.data(),
)
def test_builders(name, options, data):
    try:
        model = build_model(name, **options)
    except (ValueError, TypeError) as error:
        assert_named(error, {**options, "name": name, "option": None})
        return
    model.eval()
    channels = options.get("in_channels", 3)
    size = options.get("input_size", 32)
    event("constructed")
    _, out = run_forward(model, channels, size, 2, data)
    event("forward ok" if out is not None else "forward rejected")
    if out is not None:
        assert out.shape == (2, options.get("nclasses", 10))


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
