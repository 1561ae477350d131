"""NoiseMask, PerturbConv2d, MixMaps and PerturbLayer: noise applied, masks fixed, options."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.parameter import is_lazy

import perturbnn
from perturbnn import ACTIVATIONS, MixMaps, NoiseMask, PerturbConv2d, PerturbLayer
from perturbnn import noise as noise_module


def layer_config():
    return st.fixed_dictionaries(
        {
            "in_channels": st.integers(1, 4),
            "out_multiple": st.integers(1, 3),
            "nmasks": st.integers(1, 5),
            "size": st.integers(1, 6),
            "level": st.floats(0.01, 3.0),
            "unique_masks": st.booleans(),
            "noise_type": st.sampled_from(["uniform", "normal"]),
            "seed": st.integers(0, 2**16),
        }
    )


def make_layer(cfg, **overrides):
    kwargs = {
        "input_size": cfg["size"],
        "level": cfg["level"],
        "unique_masks": cfg["unique_masks"],
        "noise_type": cfg["noise_type"],
        "generator": torch.Generator().manual_seed(cfg["seed"]),
        "dtype": torch.float64,
        **overrides,
    }
    return PerturbConv2d(
        cfg["in_channels"], cfg["in_channels"] * cfg["out_multiple"], cfg["nmasks"], **kwargs
    )


@given(cfg=layer_config(), batch=st.integers(1, 3))
def test_noise_is_applied_exactly(cfg, batch):
    """layer(x) - layer_with_zero_masks(x) == 1x1 convolution of level * masks (no activation)."""
    layer = make_layer(cfg)
    silent = copy.deepcopy(layer)
    silent.noise.masks.zero_()
    x = torch.randn(batch, cfg["in_channels"], cfg["size"], cfg["size"], dtype=torch.float64)
    difference = layer(x) - silent(x)

    masks = layer.noise.masks.expand(cfg["in_channels"], -1, -1, -1)
    noise_maps = (cfg["level"] * masks).reshape(
        1, -1, cfg["size"], cfg["size"]
    )  # (1, C*nmasks, H, W)
    expected = F.conv2d(noise_maps, layer.weight, groups=layer.groups).expand_as(difference)
    torch.testing.assert_close(difference, expected)
    if cfg["level"] > 0.1:
        assert difference.abs().max() > 0  # the noise really changes the output


@given(cfg=layer_config())
def test_masks_unique_or_shared(cfg):
    noise = NoiseMask(
        cfg["in_channels"],
        cfg["nmasks"],
        cfg["size"],
        level=cfg["level"],
        unique_masks=cfg["unique_masks"],
        noise_type=cfg["noise_type"],
        generator=torch.Generator().manual_seed(cfg["seed"]),
    )
    expected_shape = (
        cfg["in_channels"] if cfg["unique_masks"] else 1,
        cfg["nmasks"],
        cfg["size"],
        cfg["size"],
    )
    assert noise.masks.shape == expected_shape
    out = noise(torch.zeros(1, cfg["in_channels"], cfg["size"], cfg["size"]))
    per_channel = out.reshape(cfg["in_channels"], cfg["nmasks"], cfg["size"], cfg["size"])
    for c in range(1, cfg["in_channels"]):
        same = torch.equal(per_channel[c], per_channel[0])
        assert same is (not cfg["unique_masks"])
    if cfg["nmasks"] > 1:
        assert not torch.equal(noise.masks[:, 0], noise.masks[:, 1])


@pytest.mark.parametrize("noise_type", ["uniform", "normal"])
def test_mask_distribution(noise_type):
    masks = NoiseMask(64, 8, 16, level=1.0, noise_type=noise_type).masks
    assert abs(masks.mean().item()) < 0.02
    if noise_type == "uniform":
        assert masks.min() >= -1 and masks.max() < 1
        assert abs(masks.var().item() - 1 / 3) < 0.02
    else:
        assert abs(masks.std().item() - 1) < 0.02
        assert masks.abs().max() > 1


def test_same_seed_same_masks_and_state_dict_round_trip():
    a = PerturbConv2d(3, 6, 2, input_size=4, generator=torch.Generator().manual_seed(7))
    b = PerturbConv2d(3, 6, 2, input_size=4, generator=torch.Generator().manual_seed(7))
    c = PerturbConv2d(3, 6, 2, input_size=4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.noise.masks, b.noise.masks)
    assert not torch.equal(a.noise.masks, c.noise.masks)
    assert "noise.masks" in a.state_dict()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    c.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(c.noise.masks, a.noise.masks)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(c(x), a(x))


def test_masks_follow_to_and_dtype():
    layer = PerturbConv2d(2, 4, 3, input_size=3)
    masks = layer.noise.masks.clone()
    layer.double()
    assert layer.noise.masks.dtype == torch.float64
    torch.testing.assert_close(layer.noise.masks, masks.double())
    layer.to("meta")
    assert layer.noise.masks.device.type == "meta"


def test_fixed_masks_never_change_and_get_no_gradient():
    torch.manual_seed(0)
    layer = PerturbLayer(3, 6, 2, input_size=5, level=0.5)
    noise = layer[0].noise
    before = noise.masks.clone()
    assert not noise.masks.requires_grad
    assert all(p is not noise.masks for p in layer.parameters())
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    for mode in (layer.train, layer.eval, layer.train):
        mode()
        out = layer(torch.randn(4, 3, 5, 5))
        out.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert noise.masks.grad is None
    assert torch.equal(noise.masks, before)
    assert not torch.equal(layer[0].weight, PerturbLayer(3, 6, 2, input_size=5)[0].weight)


def test_trainable_masks_get_gradient_and_change():
    torch.manual_seed(0)
    layer = PerturbConv2d(3, 6, 2, input_size=5, level=0.5, train_masks=True, use_act=True)
    assert isinstance(layer.noise.masks, nn.Parameter)
    assert any(p is layer.noise.masks for p in layer.parameters())
    before = layer.noise.masks.detach().clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(4, 3, 5, 5)).square().mean().backward()
    assert layer.noise.masks.grad is not None and layer.noise.masks.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(layer.noise.masks.detach(), before)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_activation_is_applied_between_noise_and_conv(act):
    torch.manual_seed(0)
    layer = PerturbConv2d(2, 4, 3, input_size=4, level=0.5, use_act=True, act=act).eval()
    x = torch.randn(2, 2, 4, 4)
    perturbed = layer.noise(x)
    expected = F.conv2d(layer.activation(perturbed), layer.weight, layer.bias, groups=layer.groups)
    torch.testing.assert_close(layer(x), expected)


def test_grouped_fanout_structure():
    layer = PerturbConv2d(4, 8, 3, input_size=2)
    assert layer.groups == 4
    assert layer.weight.shape == (8, 3, 1, 1)
    dense = PerturbConv2d(4, 6, 1, input_size=2)
    assert dense.groups == 1 and dense.weight.shape == (6, 4, 1, 1)
    assert PerturbConv2d(4, 6, 1, input_size=2, bias=False).bias is None


def test_out_channels_must_be_multiple_under_fanout():
    with pytest.raises(ValueError, match="out_channels must be a multiple of in_channels"):
        PerturbConv2d(3, 8, 2, input_size=4)


@pytest.mark.parametrize(
    ("kwargs", "exception", "name"),
    [
        ({"in_channels": 0}, ValueError, "in_channels"),
        ({"out_channels": -2}, ValueError, "out_channels"),
        ({"nmasks": 0}, ValueError, "nmasks"),
        ({"nmasks": 1.5}, TypeError, "nmasks"),
        ({"input_size": 0}, ValueError, "input_size"),
        ({"level": -0.1}, ValueError, "level"),
        ({"level": float("nan")}, ValueError, "level"),
        ({"noise_type": "gaussian"}, ValueError, "noise_type"),
        ({"act": "gelu", "use_act": True}, ValueError, "act"),
        ({"unique_masks": 1}, TypeError, "unique_masks"),
    ],
)
def test_constructor_errors_name_the_argument(kwargs, exception, name):
    args = {"in_channels": 2, "out_channels": 4, "nmasks": 2, "input_size": 4, **kwargs}
    with pytest.raises(exception, match=name):
        PerturbConv2d(args.pop("in_channels"), args.pop("out_channels"), args.pop("nmasks"), **args)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match=r"\['normal', 'uniform'\]"):
        NoiseMask(2, 1, 4, level=0.1, noise_type="unifrom")
    with pytest.raises(ValueError, match="did you mean 'relu'"):
        MixMaps(4, act="reul")


def test_forward_rejects_wrong_channels_and_size():
    layer = PerturbConv2d(3, 6, 2, input_size=4)
    with pytest.raises(ValueError, match="3 channels"):
        layer(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="spatial size"):
        layer(torch.zeros(1, 3, 5, 5))


def test_mix_maps_structure():
    layer = PerturbLayer(4, 8, 2, input_size=3, mix_maps=True)
    assert isinstance(layer[-1], MixMaps)
    conv = layer[-1][0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is not None
    assert layer(torch.randn(2, 4, 3, 3)).shape == (2, 8, 3, 3)


@pytest.mark.parametrize(
    ("filter_size", "bias", "out_size"), [(1, True, 8), (3, False, 8), (5, False, 8), (7, False, 4)]
)
def test_regular_conv_layer(filter_size, bias, out_size):
    layer = PerturbLayer(3, 5, filter_size=filter_size)
    conv = layer[0]
    assert isinstance(conv, nn.Conv2d)
    assert conv.kernel_size == (filter_size, filter_size)
    assert (conv.bias is not None) is bias
    assert layer(torch.randn(2, 3, 8, 8)).shape == (2, 5, out_size, out_size)


def test_perturb_layer_errors():
    with pytest.raises(ValueError, match="stride"):
        PerturbLayer(3, 6, filter_size=0, stride=0)
    with pytest.raises(ValueError, match="pool_type"):
        PerturbLayer(3, 6, filter_size=0, pool_type="min")
    with pytest.raises(ValueError, match="filter_size"):
        PerturbLayer(3, 6, filter_size=2)


def test_extra_repr_shows_non_defaults():
    text = repr(
        PerturbConv2d(2, 4, 2, input_size=3, level=0.2, unique_masks=False, train_masks=True)
    )
    assert "nmasks=2" in text and "unique_masks=False" in text and "train_masks=True" in text
    assert "noise_type" not in text and "bias" not in text


# --- lazy size (input_size=None) -------------------------------------------------------------


def test_lazy_masks_take_the_first_input_size_then_stay_fixed():
    layer = PerturbConv2d(3, 6, 2, level=0.5, use_act=True)
    assert layer.input_size is None and layer.noise.masks.shape == (3, 2, 0, 0)
    x = torch.randn(2, 3, 5, 9)  # non-square
    y = layer(x)
    assert y.shape == (2, 6, 5, 9)
    assert layer.input_size == (5, 9) and layer.noise.masks.shape == (3, 2, 5, 9)
    masks = layer.noise.masks.clone()
    assert masks.abs().max() > 0  # drawn, not left empty or zero
    assert torch.equal(layer(x), y)  # fixed from then on
    assert torch.equal(layer.noise.masks, masks)
    with pytest.raises(ValueError, match=r"\(9, 5\).*\(5, 9\)"):
        layer(torch.randn(2, 3, 9, 5))


def test_lazy_noise_mask_and_perturb_layer():
    noise = NoiseMask(2, 3, level=0.2)
    assert noise(torch.zeros(1, 2, 4, 6)).shape == (1, 6, 4, 6)
    assert noise.input_size == (4, 6)
    with pytest.raises(ValueError, match="differs from the masks' size"):
        noise(torch.zeros(1, 2, 6, 4))
    block = PerturbLayer(3, 6, 2, use_act=True)
    assert block(torch.randn(2, 3, 7, 4)).shape == (2, 6, 7, 4)
    assert block[0].input_size == (7, 4)


def test_lazy_generator_gives_reproducible_masks():
    def build(seed):
        return PerturbConv2d(2, 4, 2, generator=torch.Generator().manual_seed(seed))

    a, b, c = build(1), build(1), build(2)
    x = torch.randn(1, 2, 3, 4)
    for layer in (a, b, c):
        layer(x)
    assert torch.equal(a.noise.masks, b.noise.masks)
    assert not torch.equal(a.noise.masks, c.noise.masks)


@pytest.mark.parametrize("train_masks", [False, True])
def test_lazy_state_dict_round_trips_before_and_after_materialization(train_masks):
    x = torch.randn(2, 3, 6, 5)
    lazy_state = PerturbConv2d(3, 6, 2, train_masks=train_masks).state_dict()
    fresh = PerturbConv2d(3, 6, 2, train_masks=train_masks)
    fresh.load_state_dict(lazy_state)  # lazy into lazy: stays lazy
    assert fresh.input_size is None
    assert is_lazy(fresh.noise.masks) == train_masks  # trainable: torch's UninitializedParameter
    assert fresh(x).shape == (2, 6, 6, 5)

    trained = PerturbConv2d(3, 6, 2, use_act=True, train_masks=train_masks)
    expected = trained(x)
    state = trained.state_dict()
    assert state["noise.masks"].shape == (3, 2, 6, 5)
    restored = PerturbConv2d(3, 6, 2, use_act=True, train_masks=train_masks)
    restored.load_state_dict(state)  # materialized into lazy: materializes
    assert restored.input_size == (6, 5)
    assert torch.equal(restored.noise.masks, trained.noise.masks)
    assert torch.equal(restored(x), expected)
    other = PerturbConv2d(3, 6, 2, use_act=True, input_size=4, train_masks=train_masks)
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(state)


def test_lazy_reset_parameters_and_to_before_and_after():
    layer = PerturbConv2d(3, 6, 2, use_act=True)
    layer.reset_parameters()
    layer.noise.reset_parameters(torch.Generator().manual_seed(0))
    assert layer.input_size is None
    layer.to(torch.float64)
    y = layer(torch.randn(2, 3, 4, 5, dtype=torch.float64))
    assert y.dtype == torch.float64 and layer.noise.masks.dtype == torch.float64
    before = layer.noise.masks.clone()
    layer.noise.reset_parameters()
    assert layer.noise.masks.shape == before.shape and not torch.equal(layer.noise.masks, before)
    layer.to(torch.float32)
    assert layer.noise.masks.dtype == torch.float32


@pytest.mark.parametrize("materialized", [False, True])
def test_lazy_deepcopy_and_pickle(materialized):
    layer = PerturbConv2d(3, 6, 2, level=0.3, use_act=True)
    x = torch.randn(2, 3, 4, 7)
    if materialized:
        y = layer(x)
    for clone in (copy.deepcopy(layer), torch.load(_pickled(layer), weights_only=False)):
        out = clone(x)
        assert clone.input_size == (4, 7)
        if materialized:
            assert torch.equal(out, y)
    if not materialized:
        assert layer.input_size is None  # the copies did not materialize the original


def _pickled(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return buffer


def test_lazy_trainable_masks_keep_their_parameter_for_an_optimizer():
    layer = PerturbConv2d(2, 4, 2, train_masks=True, level=1.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    masks = layer.noise.masks
    assert isinstance(masks, torch.nn.parameter.UninitializedParameter)
    assert perturbnn.count_mask_values(layer) == 0
    layer(torch.randn(2, 2, 3, 3)).pow(2).sum().backward()
    assert type(masks) is torch.nn.Parameter  # materialized in place, as torch's lazy modules
    assert layer.noise.masks is masks and masks.grad is not None
    before = masks.detach().clone()
    optimizer.step()
    assert masks.shape == (2, 2, 3, 3) and not torch.equal(masks.detach(), before)


# --- stride ----------------------------------------------------------------------------------


def _reference_pool(y, stride, pool_type):
    """Pool ``y`` by ``stride`` with partial windows at the border, one window at a time."""
    rows = range(0, y.shape[2], stride)
    cols = range(0, y.shape[3], stride)
    out = torch.empty(*y.shape[:2], len(rows), len(cols), dtype=y.dtype)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            window = y[:, :, r : r + stride, c : c + stride]
            out[:, :, i, j] = window.amax((2, 3)) if pool_type == "max" else window.mean((2, 3))
    return out


@given(
    stride=st.integers(1, 4),
    kernel=st.sampled_from([1, 3, 5, 7]),
    height=st.integers(1, 11),
    width=st.integers(1, 11),
    pool_type=st.sampled_from(["max", "avg"]),
    nmasks=st.integers(1, 3),
)
def test_stride_matches_conv2d_size_and_pools_the_unstrided_layer(
    stride, kernel, height, width, pool_type, nmasks
):
    torch.manual_seed(0)
    x = torch.randn(2, 2, height, width, dtype=torch.float64)
    conv = nn.Conv2d(2, 4, kernel, stride=stride, padding=kernel // 2)
    layer = PerturbConv2d(
        2, 4, nmasks, stride=stride, pool_type=pool_type, use_act=True, dtype=torch.float64
    )
    y = layer(x)
    assert y.shape == conv(x.float()).shape
    plain = copy.deepcopy(layer)
    plain.stride = 1
    torch.testing.assert_close(y, _reference_pool(plain(x), stride, pool_type))


def test_data_parallel_replication_refused_only_before_the_first_forward():
    layer = PerturbConv2d(2, 4)
    with pytest.raises(RuntimeError, match="run one forward"):
        layer._replicate_for_data_parallel()
    layer(torch.randn(1, 2, 3, 3))
    replica = layer._replicate_for_data_parallel()
    assert replica.noise.masks is layer.noise.masks


@pytest.mark.parametrize("use_act", [False, True])
def test_one_activation_module_serves_the_whole_perturb_layer(use_act):
    """As in Klachko's, one ``PReLU`` (one slope) after the noise, after BatchNorm, in MixMaps."""
    layer = PerturbLayer(4, 8, 2, input_size=3, act="prelu", use_act=use_act, mix_maps=True)
    prelus = {id(m) for m in layer.modules() if isinstance(m, nn.PReLU)}
    assert len(prelus) == 1
    shared = layer[2]
    assert layer[-1][2] is shared
    assert (layer[0].activation is shared) is use_act
    relu = PerturbLayer(4, 8, 2, input_size=3, act="relu", use_act=use_act, mix_maps=True)
    count = sum(p.numel() for p in layer.parameters())
    assert count == sum(p.numel() for p in relu.parameters()) + 1
    x = torch.randn(2, 4, 3, 3)
    layer(x).sum().backward()
    assert shared.weight.grad is not None and shared.weight.grad.abs().item() > 0


def test_activation_module_must_be_a_module():
    with pytest.raises(TypeError, match="activation"):
        PerturbConv2d(2, 4, 2, input_size=3, use_act=True, activation="relu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="activation"):
        MixMaps(4, activation=torch.relu)  # type: ignore[arg-type]


def test_given_activation_module_is_used():
    act = nn.PReLU()
    layer = PerturbConv2d(2, 4, 2, input_size=3, use_act=True, act="prelu", activation=act)
    assert layer.activation is act
    assert PerturbConv2d(2, 4, 2, input_size=3, activation=act).activation is None  # no use_act
    assert MixMaps(4, "prelu", activation=act)[2] is act


# ------------------------------------------- what mutation testing found unchecked (issue 15)


def test_extra_repr_shows_exactly_what_differs_from_the_defaults():
    assert NoiseMask(3, 4, (5, 6), level=0.1).extra_repr() == (
        "3, nmasks=4, input_size=(5, 6), level=0.1"
    )
    assert NoiseMask(
        3, 4, 5, level=0.2, noise_type="normal", unique_masks=False, train_masks=True
    ).extra_repr() == (
        "3, nmasks=4, input_size=(5, 5), level=0.2, noise_type='normal', unique_masks=False, "
        "train_masks=True"
    )
    assert PerturbConv2d(3, 6, input_size=4).extra_repr() == "3, 6"
    assert (
        PerturbConv2d(
            3, 6, 2, input_size=4, use_act=True, act="elu", bias=False, impl="eager"
        ).extra_repr()
        == "3, 6, nmasks=2, use_act=True, act='elu', bias=False, impl='eager'"
    )
    assert PerturbConv2d(3, 6, 2, input_size=4, impl="grouped").extra_repr() == (
        "3, 6, nmasks=2, impl='grouped'"
    )
    assert PerturbConv2d(3, 6, input_size=4, stride=2).extra_repr() == "3, 6, stride=2"
    assert PerturbConv2d(3, 6, input_size=4, stride=3, pool_type="avg").extra_repr() == (
        "3, 6, stride=3, pool_type='avg'"
    )


def test_conv_output_size_halves_only_for_the_seven_by_seven_stem():
    from perturbnn.layers import conv_output_size

    # ceil(n / 2) for filter 7 (stride 2, padding 3), counted by hand; unchanged otherwise.
    assert [conv_output_size(n, 7) for n in (1, 2, 5, 6, 32)] == [1, 1, 3, 3, 16]
    assert [conv_output_size(n, f) for n, f in ((5, 0), (5, 1), (6, 3), (7, 5), (8, 9))] == [
        5,
        5,
        6,
        7,
        8,
    ]
    for n in (5, 6, 32):
        layer = PerturbLayer(3, 4, filter_size=7)
        assert layer(torch.randn(1, 3, n, n)).shape[-1] == conv_output_size(n, 7)


def test_shared_noise_mask_still_checks_the_channel_count():
    """Shared masks (one set for all channels) cannot tell the channel count: the layer does."""
    noise = NoiseMask(3, 2, 4, level=0.5, unique_masks=False)
    assert noise(torch.zeros(2, 3, 4, 4)).shape == (2, 6, 4, 4)
    with pytest.raises(ValueError, match="input must have 3 channels, got 2"):
        noise(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="input must be 4-D"):
        noise(torch.zeros(3, 4, 4))


def test_perturb_layer_defaults_are_the_seeds():
    """Klachko's PerturbLayer defaults: one mask, level 0.5, unique fixed masks, no inner act."""
    layer = PerturbLayer(3, 6, input_size=4)
    conv = layer[0]
    assert len(layer) == 3 and isinstance(layer[1], nn.BatchNorm2d)
    assert isinstance(layer[2], nn.ReLU)
    assert (conv.nmasks, conv.level, conv.noise.unique_masks) == (1, 0.5, True)
    assert conv.noise.noise_type == "uniform" and not conv.noise.train_masks
    assert conv.activation is None and conv.bias is not None and conv.impl == "auto"
    mix = MixMaps(4)
    assert isinstance(mix[2], nn.ReLU) and mix[0].bias is not None
    assert mix[0].kernel_size == (1, 1) and mix[0].in_channels == mix[0].out_channels == 4


def test_perturb_layer_passes_every_option_to_its_perturbation():
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    options = dict(
        input_size=(4, 5), level=0.3, noise_type="normal", unique_masks=False, train_masks=True,
        use_act=True, act="elu", mix_maps=True, impl="eager",
    )  # fmt: skip
    layer = PerturbLayer(3, 6, 2, generator=gen_a, **options)
    conv = layer[0]
    assert (conv.nmasks, conv.level, conv.noise.noise_type) == (2, 0.3, "normal")
    assert conv.noise.masks.shape == (1, 2, 4, 5)
    assert conv.noise.train_masks and isinstance(conv.noise.masks, nn.Parameter)
    assert isinstance(conv.activation, nn.ELU) and isinstance(layer[2], nn.ELU)
    assert conv.impl == "eager" and conv.bias is not None
    assert isinstance(layer[3], MixMaps) and isinstance(layer[3][2], nn.ELU)
    assert layer.input_size == (4, 5) and layer.in_channels == 3
    assert conv.act == "elu" and "act='elu'" in repr(conv)  # the name it shows
    assert layer.stride == conv.stride == 1
    strided = PerturbLayer(3, 6, 2, input_size=4, stride=2, pool_type="avg")
    assert strided.stride == strided[0].stride == 2 and strided[0].pool_type == "avg"
    assert PerturbLayer(3, 6, filter_size=7).stride == 2  # Klachko's stem
    same = PerturbLayer(3, 6, 2, generator=gen_b, **options)
    assert torch.equal(same[0].noise.masks, conv.noise.masks)  # drawn from the generator


@pytest.mark.parametrize("filter_size", [0, 1, 3, 7])
def test_perturb_layer_factory_kwargs_reach_every_module(filter_size):
    layer = PerturbLayer(
        3, 6, 2, filter_size=filter_size, input_size=8, mix_maps=True, dtype=torch.float64
    )
    assert {t.dtype for t in [*layer.parameters(), *layer.buffers()] if t.is_floating_point()} == {
        torch.float64
    }
    assert layer(torch.randn(2, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64
    mix = MixMaps(4, dtype=torch.float64)
    assert {p.dtype for p in mix.parameters()} == {torch.float64}
    assert mix[1].running_mean.dtype == torch.float64


@pytest.mark.parametrize(("filter_size", "has_bias"), [(1, True), (3, False), (5, False)])
def test_regular_convolution_layer(filter_size, has_bias):
    layer = PerturbLayer(3, 6, filter_size=filter_size, input_size=(5, 6))
    conv = layer[0]
    assert isinstance(conv, nn.Conv2d) and (conv.bias is not None) == has_bias
    assert conv.kernel_size == (filter_size, filter_size) and conv.stride == (1, 1)
    assert layer(torch.randn(2, 3, 5, 6)).shape == (2, 6, 5, 6)
    with pytest.raises(ValueError, match="input must have 3 channels, got 4"):
        layer(torch.randn(2, 4, 5, 6))
    with pytest.raises(ValueError, match=r"input spatial size must equal input_size = \(5, 6\)"):
        layer(torch.randn(2, 3, 6, 6))
    free = PerturbLayer(3, 6, filter_size=filter_size)  # no input_size: any spatial size
    assert free(torch.randn(1, 3, 9, 4)).shape == (1, 6, 9, 4)
    with pytest.raises(ValueError, match="input must have 3 channels, got 2"):
        free(torch.randn(1, 2, 9, 4))


def test_perturb_layer_messages():
    with pytest.raises(TypeError, match=r"^filter_size must be an int, got str '3'$"):
        PerturbLayer(3, 6, filter_size="3")
    assert PerturbLayer(3, 6, filter_size=0)[0].input_size is None  # lazy, not an error
    with pytest.raises(TypeError, match=r"^input_size must be an int or a \(height, width\)"):
        PerturbLayer(3, 6, filter_size=3, input_size="5")
    for even in (2, 4):
        with pytest.raises(ValueError, match=rf"odd kernel size, got {even}$"):
            PerturbLayer(3, 6, filter_size=even)


def test_weights_initialised_like_nn_conv2d():
    """kaiming_uniform_(a=sqrt(5)): weights within 1/sqrt(fan_in), and filling that range."""
    layer = PerturbConv2d(64, 128, 4, input_size=2)
    bound = 1 / 4**0.5  # fan_in = nmasks = 4 (grouped)
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.95 * bound
    assert layer.bias is not None and layer.bias.abs().max() <= bound


def test_perturb_conv2d_defaults_and_bias_initialisation():
    layer = PerturbConv2d(3, 6, 2, input_size=4)
    assert layer.noise.masks.shape == (3, 2, 4, 4)  # unique masks by default
    assert layer.level == 0.1 and layer.activation is None
    big = PerturbConv2d(64, 256, 4, input_size=2)
    bound = 1 / 4**0.5
    assert big.bias is not None
    assert big.bias.abs().max() <= bound
    assert big.bias.min() < -bound / 2 and big.bias.max() > bound / 2  # uniform(-b, b), spread


def test_noise_mask_generator_message_and_device():
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator or None, got int$"):
        NoiseMask(3, 2, 4, level=0.1, generator=0)
    meta = NoiseMask(3, 2, 4, level=0.1, device="meta")
    assert meta.masks.is_meta and meta.masks.shape == (3, 2, 4, 4)


def test_layer_checks_the_channel_count_itself_with_shared_masks():
    """Shared masks cannot tell the channel count, and the weight check would blame the weight."""
    layer = PerturbConv2d(3, 6, 2, input_size=4, unique_masks=False)
    assert layer(torch.zeros(1, 3, 4, 4)).shape == (1, 6, 4, 4)
    with pytest.raises(ValueError) as info:
        layer(torch.zeros(1, 2, 4, 4))
    assert str(info.value) == "input must have 3 channels, got 2"


def test_activation_of_the_wrong_type_is_named_with_its_type():
    with pytest.raises(TypeError) as info:
        PerturbConv2d(3, 6, use_act=True, activation=torch.relu)  # a function, not a Module
    assert (
        str(info.value) == "activation must be an nn.Module or None, got builtin_function_or_method"
    )


# ---------------------------------------------------------------------------------------------
# Lazy masks, their hooks and the tracer refusal, at the unit level: these reach noise.py's lazy
# machinery from the files mutation testing runs (docs/testing.md), without exporters' cost.


REFUSAL = (
    "{where} has lazy noise masks (input_size=None) that are not created yet, and {tracer} "
    "cannot create them: run one forward pass on a real input first (it draws the masks at "
    "that input's size), or give input_size, then export"
)


def _fake(shape: tuple[int, ...]) -> torch.Tensor:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return torch.zeros(shape)


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"is_exporting": True}, "torch.export"),
        ({"onnx": True}, "torch.onnx.export"),
        ({}, None),
    ],
)
def test_tracer_name_names_the_running_exporter(monkeypatch, patch, expected):
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: patch.get("is_exporting", False))
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: patch.get("onnx", False))
    assert noise_module.tracer_name(torch.zeros(1, 2, 3, 3)) == expected


def test_tracer_name_without_is_exporting_recognises_a_fake_tensor_outside_compile(monkeypatch):
    """Older torch (no ``torch.compiler.is_exporting``): a fake-tensor input outside
    ``torch.compile`` is an export; a real input, or a fake one under compile, is not."""
    fake = _fake((1, 2, 3, 3))  # before: FakeTensorMode itself calls is_exporting
    monkeypatch.delattr(torch.compiler, "is_exporting")
    assert noise_module.tracer_name(fake) == "a fake-tensor trace"
    assert noise_module.tracer_name(torch.zeros(1, 2, 3, 3)) is None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert noise_module.tracer_name(fake) is None


@pytest.mark.parametrize("name", [None, "features.3"])
@pytest.mark.parametrize("cls", ["NoiseMask", "PerturbConv2d"])
def test_lazy_layer_refuses_a_trace_with_its_name_and_stays_lazy(monkeypatch, cls, name):
    module = NoiseMask(2, 2, level=0.1) if cls == "NoiseMask" else PerturbConv2d(2, 4, 2, level=0.1)
    noise = module if isinstance(module, NoiseMask) else module.noise
    noise.module_name = name
    where = cls + (f" {name!r}" if name else "")
    x = torch.zeros(1, 2, 4, 5)
    with pytest.raises(RuntimeError) as info:
        torch.jit.trace(module, (x,))
    assert str(info.value) == REFUSAL.format(where=where, tracer="torch.jit.trace")
    # Older torch's fake-tensor export: the refusal looks at the input itself.
    fake = _fake((1, 2, 4, 5))
    with monkeypatch.context() as patch:
        patch.delattr(torch.compiler, "is_exporting")
        with pytest.raises(RuntimeError) as info:
            module.initialize_parameters(fake)
    assert str(info.value) == REFUSAL.format(where=where, tracer="a fake-tensor trace")
    assert noise.input_size is None and noise.masks.shape[2:] == (0, 0)
    assert module(x).shape[2:] == (4, 5) and noise.input_size == (4, 5)


@pytest.mark.parametrize("lazy", [True, False])
def test_no_lazy_hook_is_left_once_the_masks_have_a_size(lazy):
    layer = PerturbConv2d(2, 4, 2, input_size=None if lazy else 4, level=0.1)
    if lazy:
        layer(torch.zeros(1, 2, 4, 4))
    for module in (layer, layer.noise):
        assert not hasattr(module, "_initialize_hook") and not hasattr(module, "_load_hook")
        assert not module._forward_pre_hooks and not module._load_state_dict_pre_hooks


def test_lazy_masks_load_any_positive_size_and_refuse_an_empty_one():
    for size in [(1, 5), (5, 1)]:
        lazy = NoiseMask(2, 3, level=0.1)
        lazy.load_state_dict(NoiseMask(2, 3, size, level=0.1).state_dict())
        assert lazy.input_size == size and lazy.masks.shape == (2, 3, *size)
    for shape in [(2, 3, 0, 5), (2, 3, 5, 0)]:
        lazy = NoiseMask(2, 3, level=0.1)
        with pytest.raises(RuntimeError, match="size mismatch"):
            lazy.load_state_dict({"masks": torch.zeros(shape)})
        assert lazy.input_size is None


def test_lazy_masks_shape_device_dtype_and_materialize_errors():
    lazy = NoiseMask(3, 2, level=0.1, device="meta", dtype=torch.float64)
    assert lazy.masks.shape == (3, 2, 0, 0) and lazy.module_name is None
    with pytest.raises(ValueError, match=r"^input_size must"):
        lazy.materialize(0)
    lazy.materialize((4, 5))
    assert lazy.masks.shape == (3, 2, 4, 5)
    assert lazy.masks.device.type == "meta" and lazy.masks.dtype == torch.float64
    with pytest.raises(RuntimeError) as info:
        lazy.materialize((4, 5))
    assert str(info.value) == "the masks already have a size, (4, 5)"


def test_trainable_masks_take_the_factory_kwargs():
    masks = NoiseMask(3, 2, 4, level=0.1, train_masks=True, device="meta", dtype=torch.float64)
    assert masks.masks.device.type == "meta" and masks.masks.dtype == torch.float64


def test_lazy_reset_parameters_takes_a_new_seed_only_from_a_generator():
    lazy = NoiseMask(2, 2, level=0.1, generator=torch.Generator().manual_seed(1))
    seed = lazy.seed
    lazy.reset_parameters()
    assert lazy.seed == seed
    lazy.reset_parameters(torch.Generator().manual_seed(5))
    same = NoiseMask(2, 2, level=0.1, generator=torch.Generator().manual_seed(5))
    assert lazy.seed == same.seed != seed
    lazy.materialize(3)
    same.materialize(3)
    assert torch.equal(lazy.masks, same.masks)


def test_seeds_drawn_for_lazy_masks_span_a_wide_range():
    seeds = {noise_module.draw_seed(torch.Generator().manual_seed(i)) for i in range(20)}
    assert len(seeds) == 20 and all(0 <= s < 2**62 for s in seeds) and max(seeds) > 2**40


def test_masks_are_drawn_in_float32_whatever_the_default_dtype():
    reference = NoiseMask(2, 3, 4, level=0.1, generator=torch.Generator().manual_seed(0)).masks
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        masks = NoiseMask(
            2, 3, 4, level=0.1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        ).masks
    finally:
        torch.set_default_dtype(default)
    assert torch.equal(masks, reference.double())


@pytest.mark.parametrize("name", [None, "features.3"])
def test_input_size_message_in_full(name):
    noise = NoiseMask(2, 1, (4, 4), level=0.1)
    noise.module_name = name
    with pytest.raises(ValueError) as info:
        noise(torch.zeros(1, 2, 4, 5))
    assert str(info.value) == (
        ("features.3: " if name else "")
        + "input spatial size (4, 5) differs from the masks' size (4, 4) (given as input_size, "
        "or taken from the first input of a lazy layer); the noise masks are fixed, so every "
        "input must have that size. In a network, the size reaching a layer follows the size of "
        "the images fed to the network: feed images of the size of its first input, or convert "
        "(or build) a new network for another size"
    )


@pytest.mark.parametrize("cls", [NoiseMask, PerturbConv2d])
def test_data_parallel_refusal_message_in_full(cls):
    module = NoiseMask(2, 2, level=0.1) if cls is NoiseMask else PerturbConv2d(2, 4, 2, level=0.1)
    with pytest.raises(RuntimeError) as info:
        module._replicate_for_data_parallel()
    assert str(info.value) == (
        f"{cls.__name__} has lazy masks (input_size=None) and has not run yet; run one forward "
        "(or give input_size) before nn.DataParallel replicates it"
    )
    module(torch.zeros(1, 2, 3, 3))
    assert isinstance(module._replicate_for_data_parallel(), cls)
