"""``init_weights_``: Klachko's initialization, checked against a literal draw in this file."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import perturbnn
from perturbnn import PerturbConv2d, PerturbLayer, build_model, init_weights_


def reference_draws(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The weights Klachko's rule gives, drawn in module order from a fresh generator."""
    g = torch.Generator().manual_seed(seed)
    expected = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, PerturbConv2d)):
            out_channels, _, kh, kw = module.weight.shape
            std = math.sqrt(2.0 / (kh * kw * out_channels))
            expected[name] = torch.empty(module.weight.shape).normal_(0.0, std, generator=g)
    return expected


@given(
    out_channels=st.integers(1, 6),
    in_per_group=st.integers(1, 3),
    groups=st.integers(1, 3),
    kernel=st.sampled_from([1, 3, 5]),
    seed=st.integers(0, 2**16),
)
def test_conv_weights_follow_the_fan_out_rule(out_channels, in_per_group, groups, kernel, seed):
    model = nn.Sequential(
        nn.Conv2d(in_per_group * groups, out_channels * groups, kernel, groups=groups),
        nn.Conv2d(out_channels * groups, 2, 1, bias=False),
    )
    bias = model[0].bias.detach().clone()
    expected = reference_draws(model, seed)
    init_weights_(model, generator=torch.Generator().manual_seed(seed))
    for name, weight in expected.items():
        torch.testing.assert_close(
            model.get_submodule(name).weight.detach(), weight, rtol=0, atol=0
        )
    assert torch.equal(model[0].bias.detach(), bias)  # biases untouched


def test_whole_network_batchnorm_and_untouched_modules():
    torch.manual_seed(0)
    model = build_model("lenet", nfilters=6, nmasks=2, act="prelu", mix_maps=True, input_size=32)
    for module in model.modules():  # make every BatchNorm differ from 1 / 0
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.uniform_(module.weight, 2, 3)
            nn.init.uniform_(module.bias, 2, 3)
    kept = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if not any(
            isinstance(model.get_submodule(name.rsplit(".", 1)[0]), kind)
            for kind in (nn.Conv2d, PerturbConv2d, nn.BatchNorm2d)
        )
    }
    kept_buffers = {name: b.clone() for name, b in model.named_buffers()}
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".bias")}
    expected = reference_draws(model, 7)
    assert any(isinstance(model.get_submodule(n), PerturbConv2d) for n in expected)
    init_weights_(model, generator=torch.Generator().manual_seed(7))
    for name, weight in expected.items():
        assert torch.equal(model.get_submodule(name).weight.detach(), weight), name
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    params = dict(model.named_parameters())
    assert kept and all(
        torch.equal(params[n].detach(), v) for n, v in kept.items()
    )  # Linear, BN1d, PReLU
    for name, value in biases.items():
        if not isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.BatchNorm2d):
            assert torch.equal(params[name].detach(), value), name
    buffers = dict(model.named_buffers())
    masks = [n for n in kept_buffers if n.endswith("masks")]
    assert masks and all(torch.equal(buffers[n], kept_buffers[n]) for n in masks)


def test_global_rng_and_generator_agree_and_are_reproducible():
    def build() -> nn.Module:
        torch.manual_seed(0)  # the same construction (biases) for both
        return PerturbLayer(3, 6, 2, input_size=4, mix_maps=True, generator=torch.Generator())

    a = init_weights_(build(), generator=torch.Generator().manual_seed(3))
    b = build()
    torch.manual_seed(3)
    init_weights_(b)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_returns_the_model_and_works_in_double_and_on_meta():
    model = nn.Conv2d(2, 3, 3).double()
    assert init_weights_(model) is model
    assert model.weight.dtype == torch.float64
    meta = build_model("cifarnet", nfilters=4, device="meta")
    init_weights_(meta)  # no data to fill; must not fail
    assert perturbnn.init_weights_ is init_weights_


@pytest.mark.parametrize("name", ["lenet", "cifarnet", "perturb_resnet18"])
def test_lazy_model_before_its_first_forward_gets_the_sized_models_weights(name):
    """input_size=None (the default): the convolutions get the same draws as a sized model."""
    options = {"nfilters": 4, "first_filter_size": 3}
    lazy = init_weights_(build_model(name, **options), generator=torch.Generator().manual_seed(5))
    sized = build_model(name, input_size=32, **options)
    init_weights_(sized, generator=torch.Generator().manual_seed(5))
    convs = [
        (a.weight, b.weight)
        for a, b in zip(lazy.modules(), sized.modules())
        if isinstance(a, (nn.Conv2d, perturbnn.PerturbConv2d))
    ]
    assert convs and all(torch.equal(a, b) for a, b in convs)
    assert lazy(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # the lazy parts materialize after


def test_uninitialized_weights_it_would_draw_are_refused_before_any_draw():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyConv2d(5, 3), nn.LazyBatchNorm2d())
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"\['1.weight', '1.bias'\].*forward"):
        init_weights_(model)
    assert torch.equal(model[0].weight, before)
    model(torch.randn(1, 3, 8, 8))
    init_weights_(model)
    assert torch.equal(model[2].weight, torch.ones(5))


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        init_weights_("lenet")  # type: ignore[type-var]
    with pytest.raises(TypeError, match="generator"):
        init_weights_(nn.Conv2d(1, 1, 1), generator=1)  # type: ignore[arg-type]
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU"):
            init_weights_(nn.Conv2d(1, 1, 1), generator=torch.Generator(device="cuda"))
