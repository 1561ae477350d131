"""perturbnn.functional against slow, obviously-correct loop references written here."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from perturbnn import functional as PF


def reference_perturb(x: torch.Tensor, masks: torch.Tensor, level: float) -> torch.Tensor:
    batch, channels, height, width = x.shape
    nmasks = masks.shape[1]
    out = torch.empty(batch, channels * nmasks, height, width, dtype=x.dtype)
    for c in range(channels):
        for m in range(nmasks):
            mask = masks[c if masks.shape[0] > 1 else 0, m]
            out[:, c * nmasks + m] = x[:, c] + level * mask
    return out


def reference_perturb_conv(x, masks, weight, bias, level, activation=None):
    y = reference_perturb(x, masks, level)
    if activation is not None:
        y = activation(y)
    channels, nmasks = x.shape[1], masks.shape[1]
    out_channels = weight.shape[0]
    out = torch.zeros(x.shape[0], out_channels, x.shape[2], x.shape[3], dtype=x.dtype)
    for o in range(out_channels):
        if nmasks > 1:  # grouped: output o reads channel o // (out_channels // channels)
            c = o // (out_channels // channels)
            inputs = range(c * nmasks, (c + 1) * nmasks)
        else:
            inputs = range(channels)
        for j, i in enumerate(inputs):
            out[:, o] += weight[o, j, 0, 0] * y[:, i]
        if bias is not None:
            out[:, o] += bias[o]
    return out


shapes = st.tuples(
    st.integers(1, 3),  # batch
    st.integers(1, 4),  # channels
    st.integers(1, 4),  # nmasks
    st.integers(1, 5),  # height
    st.integers(1, 5),  # width
)


@given(shape=shapes, unique=st.booleans(), level=st.floats(0, 3), seed=st.integers(0, 2**16))
def test_perturb_matches_reference(shape, unique, level, seed):
    batch, channels, nmasks, height, width = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    masks = torch.rand(
        channels if unique else 1, nmasks, height, width, generator=g, dtype=torch.float64
    )
    out = PF.perturb(x, masks, level)
    assert out.shape == (batch, channels * nmasks, height, width)
    torch.testing.assert_close(out, reference_perturb(x, masks, level))


@given(
    shape=shapes,
    out_multiple=st.integers(1, 3),
    unique=st.booleans(),
    act=st.booleans(),
    bias=st.booleans(),
    level=st.floats(0, 2),
    seed=st.integers(0, 2**16),
)
def test_perturb_conv2d_matches_reference(shape, out_multiple, unique, act, bias, level, seed):
    batch, channels, nmasks, height, width = shape
    g = torch.Generator().manual_seed(seed)
    out_channels = channels * out_multiple
    groups = channels if nmasks > 1 else 1
    x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    masks = torch.rand(
        channels if unique else 1, nmasks, height, width, generator=g, dtype=torch.float64
    )
    weight = torch.randn(
        out_channels, channels * nmasks // groups, 1, 1, generator=g, dtype=torch.float64
    )
    b = torch.randn(out_channels, generator=g, dtype=torch.float64) if bias else None
    activation = torch.tanh if act else None
    out = PF.perturb_conv2d(x, masks, weight, b, level=level, activation=activation)
    torch.testing.assert_close(out, reference_perturb_conv(x, masks, weight, b, level, activation))


def test_perturb_casts_masks_to_input_dtype():
    x = torch.zeros(1, 2, 3, 3, dtype=torch.bfloat16)
    out = PF.perturb(x, torch.ones(2, 1, 3, 3), 0.5)
    assert out.dtype == torch.bfloat16
    assert torch.all(out == 0.5)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(2, 3, 4), "4-D"),
        (torch.zeros(1, 5, 4, 4), "3 channels"),
        (torch.zeros(1, 3, 4, 5), "spatial size"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.long), "floating-point"),
    ],
)
def test_perturb_rejects_bad_input(x, message):
    with pytest.raises((ValueError, TypeError), match=message):
        PF.perturb(x, torch.zeros(3, 2, 4, 4), 0.1)


def test_perturb_rejects_other_device():
    masks = torch.zeros(3, 1, 4, 4, device="meta")
    with pytest.raises(ValueError, match="meta"):
        PF.perturb(torch.zeros(1, 3, 4, 4), masks, 0.1)


def test_perturb_conv2d_rejects_wrong_weight():
    with pytest.raises(ValueError, match="weight must have shape"):
        PF.perturb_conv2d(
            torch.zeros(1, 3, 4, 4), torch.zeros(3, 2, 4, 4), torch.zeros(6, 3, 1, 1), level=0.1
        )


# ------------------------------------------- what mutation testing found unchecked (issue 15)


def test_perturb_messages_name_the_masks():
    x, masks = torch.zeros(2, 3, 4, 4), torch.ones(3, 2, 4, 4)
    assert PF.perturb(x, masks, 0.5).shape == (2, 6, 4, 4)  # the valid call first
    with pytest.raises(ValueError) as info:
        PF.perturb(torch.zeros(2, 3, 4, 5), masks, 0.5)
    assert str(info.value) == (
        "input spatial size must equal the masks' (height, width) = (4, 4), got (4, 5)"
    )
    with pytest.raises(ValueError) as info:
        PF.perturb(torch.zeros(2, 3, 4, 4, device="meta"), masks, 0.5)
    assert str(info.value).startswith(
        "input is on meta, a different device from the noise masks (cpu); move the module"
    )


def test_perturb_conv2d_weight_messages():
    x, masks = torch.zeros(2, 3, 4, 4), torch.ones(3, 4, 4, 4)
    assert PF.perturb_conv2d(x, masks, torch.zeros(6, 4, 1, 1), level=0.1).shape == (2, 6, 4, 4)
    with pytest.raises(ValueError) as info:
        PF.perturb_conv2d(x, masks, torch.zeros(6, 3, 1, 1), level=0.1)
    assert str(info.value) == (
        "weight must have shape (6, 4, 1, 1) for 3 input channels and nmasks=4, got (6, 3, 1, 1)"
    )
    # Two input channels, five outputs: not a multiple of the groups (checked on fast paths).
    x2, masks2 = torch.zeros(1, 2, 3, 3), torch.ones(2, 3, 3, 3)
    for impl in ("eager", "auto", "compiled"):
        with pytest.raises(ValueError) as info:
            PF.perturb_conv2d(x2, masks2, torch.zeros(5, 3, 1, 1), level=0.1, impl=impl)
        assert str(info.value) == (
            "weight must have a multiple of 2 output channels (groups=2), got 5"
        )


def test_pool_defaults_to_max_and_names_its_arguments():
    """``pool(x, stride)`` is a max pooling; bad arguments are named in the message."""
    x = torch.arange(2 * 3 * 5 * 4, dtype=torch.float64).reshape(2, 3, 5, 4).sin()
    windows = [(r, c) for r in range(0, 5, 2) for c in range(0, 4, 2)]
    expected_max = torch.stack([x[..., r : r + 2, c : c + 2].amax((2, 3)) for r, c in windows], -1)
    expected_avg = torch.stack([x[..., r : r + 2, c : c + 2].mean((2, 3)) for r, c in windows], -1)
    assert torch.equal(PF.pool(x, 2), expected_max.reshape(2, 3, 3, 2))
    assert torch.equal(PF.pool(x, 2, "max"), expected_max.reshape(2, 3, 3, 2))
    torch.testing.assert_close(PF.pool(x, 2, "avg"), expected_avg.reshape(2, 3, 3, 2))
    assert PF.pool(x, 1) is x
    with pytest.raises(ValueError) as info:
        PF.pool(x, 0)
    assert str(info.value).startswith("stride must be")
    with pytest.raises(ValueError) as info:
        PF.pool(x, 2, "min")
    assert str(info.value).startswith("pool_type must be")


def test_strided_perturb_conv2d_pools_by_max_and_keeps_the_impl():
    """``stride`` pools the unstrided layer's output (max by default) computed by ``impl``."""
    from unittest import mock

    torch.manual_seed(0)
    x, masks, weight = torch.randn(2, 3, 5, 4), torch.rand(3, 2, 5, 4), torch.randn(6, 2, 1, 1)
    plain = PF.perturb_conv2d(x, masks, weight, level=0.3, activation=torch.relu)
    strided = PF.perturb_conv2d(x, masks, weight, level=0.3, activation=torch.relu, stride=2)
    assert torch.equal(strided, PF.pool(plain, 2, "max"))
    chunked = mock.Mock(wraps=PF.perturb_act_conv2d_chunked)
    with mock.patch.object(PF, "perturb_act_conv2d_chunked", chunked):
        PF.perturb_conv2d(
            x, masks, weight, level=0.3, activation=torch.relu, stride=2, impl="eager"
        )
    assert chunked.call_count == 1  # the strided call computes the layer by the impl it was given
