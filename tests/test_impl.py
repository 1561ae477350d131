"""Every ``impl`` of the PNN layer against the literal grouped formulation written out here.

The fast paths (``eager``: the algebraic form without activation, masks in blocks recomputed in
backward with one; ``compiled``: ``torch.compile`` fused kernels) must give the outputs and the
gradients of the grouped formulation (input, weights, bias, trainable masks, the PReLU slope).
Timings live in ``benchmarks/bench_layers.py``, not here.
"""

from __future__ import annotations

import copy
import os
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import COMPILE_BACKEND, scaled
from perturbnn import (
    PerturbConv2d,
    PerturbLayer,
    build_model,
    list_models,
)
from perturbnn.activations import ACTIVATIONS, make_activation
from perturbnn.functional import IMPLS, perturb_conv2d, resolve_impl
from perturbnn.kernels import chunked as _fast_chunked
from perturbnn.kernels import compiled as _fast_compiled
from perturbnn.models import ModelConfig


def reference(x, masks, weight, bias, level, activation):
    """Literal PNN layer: every channel plus every mask, activation, grouped 1x1 convolution."""
    batch, channels, height, width = x.shape
    nmasks = masks.shape[1]
    noise = (level * masks.to(x.dtype)).expand(channels, -1, -1, -1)
    perturbed = torch.stack([x[:, c : c + 1] + noise[c] for c in range(channels)], 1)
    perturbed = perturbed.reshape(batch, channels * nmasks, height, width)
    if activation is not None:
        perturbed = activation(perturbed)
    groups = channels if nmasks > 1 else 1
    return F.conv2d(
        perturbed, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), groups=groups
    )


def literal(x, masks, weight, bias, level, activation):
    """The layer written out output channel by output channel, with no convolution at all.

    ``out[:, o] = sum_k W[o, k] * act(x[:, c] + level * masks[c, m]) + bias[o]``, where output
    ``o`` reads input channel ``c = o // fanout`` (its masks ``m = k``) when ``nmasks > 1`` and
    every (channel, mask) pair ``k = c`` when ``nmasks == 1`` (a dense 1x1 convolution).
    Computed in float64 from the given leaves, so autograd gives float64-accurate gradients.
    """
    x64, m64, w64 = x.double(), masks.double(), weight.double()
    if activation is None:
        act = lambda t: t  # noqa: E731
    elif isinstance(activation, nn.PReLU):  # written out, its slope promoted to float64
        slope = activation.weight.double()  # derivative at 0: the slope, as torch's prelu
        act = lambda t: torch.where(t > 0, t, slope * t)  # noqa: E731
    else:
        act = activation
    channels, nmasks = x.shape[1], masks.shape[1]
    out_channels = weight.shape[0]
    fanout = out_channels // channels

    def mask(c, m):
        return m64[0 if m64.shape[0] == 1 else c, m]

    outs = []
    for o in range(out_channels):
        pairs = (
            [(o // fanout, m) for m in range(nmasks)]
            if nmasks > 1
            else [(c, 0) for c in range(channels)]
        )
        total = sum(
            w64[o, k, 0, 0] * act(x64[:, c] + level * mask(c, m)) for k, (c, m) in enumerate(pairs)
        )
        if bias is not None:
            total = total + bias.double()[o]
        outs.append(total)
    return torch.stack(outs, 1)


def make_inputs(cfg, dtype=torch.float32, device="cpu"):
    """Random x, masks, weight, bias (leaf tensors requiring gradients where asked)."""
    gen = torch.Generator().manual_seed(cfg["seed"])
    c, m, h, w = cfg["channels"], cfg["nmasks"], cfg["height"], cfg["width"]
    out_channels = c * cfg["fanout"] if m > 1 else cfg["fanout"] + 1
    opts = {"generator": gen, "dtype": dtype}
    x = torch.randn(cfg["batch"], c, h, w, **opts).to(device)
    masks = (torch.rand(c if cfg["unique"] else 1, m, h, w, **opts) * 2 - 1).to(device)
    weight = torch.randn(out_channels, m if m > 1 else c, 1, 1, **opts).to(device)
    bias = torch.randn(out_channels, **opts).to(device) if cfg["bias"] else None
    x.requires_grad_(cfg.get("x_grad", True))
    masks.requires_grad_(cfg["train_masks"])
    weight.requires_grad_()
    if bias is not None:
        bias.requires_grad_()
    return x, masks, weight, bias


def activation_for(name, dtype=torch.float32, device="cpu"):
    if name is None:
        return None
    act = make_activation(name).to(device, dtype)
    if name == "prelu":  # a slope that is not the default 0.25, and learnable
        with torch.no_grad():
            act.weight.fill_(0.3)
    return act.eval() if name == "rrelu" else act  # RReLU is deterministic only in eval mode


def outputs_and_grads(impl, x, masks, weight, bias, level, activation, gen_seed=1):
    """``perturb_conv2d`` output and the gradients of a random projection of it."""
    out = perturb_conv2d(x, masks, weight, bias, level=level, activation=activation, impl=impl)
    return output_and_grads_of(out, x, masks, weight, bias, activation, gen_seed)


def output_and_grads_of(out, x, masks, weight, bias, activation, gen_seed=1):
    """``out`` (float32) and the gradients of a fixed random projection of it w.r.t. the leaves."""
    # Drawn in float32 whatever out's dtype, so the float64 literal gets the same projection.
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(gen_seed))
    proj = proj.to(out.device, out.dtype)
    leaves = [t for t in (x, masks, weight, bias) if t is not None and t.requires_grad]
    if isinstance(activation, nn.Module):
        leaves += [p for p in activation.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, leaves, proj)
    return [out, *grads]


def literal_outputs_and_grads(x, masks, weight, bias, level, activation, gen_seed=1):
    """The same as :func:`outputs_and_grads` through :func:`literal`, cast back to ``x``'s dtype."""
    out = literal(x, masks, weight, bias, level, activation)
    results = output_and_grads_of(out, x, masks, weight, bias, activation, gen_seed)
    return [results[0].to(x.dtype), *results[1:]]


def assert_same(results, expected, rtol=1e-4, atol=0.0):
    """Each tensor within ``rtol`` of its largest reference value (plus ``atol``)."""
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        scale = want.abs().max().clamp_min(1e-6)
        error = (got - want).abs().max()
        assert error <= rtol * scale + atol, (error, scale)


# ---------------------------------------------------------------- every branch, by construction
#
# The axes that select different code in the fast paths (functional._fast, kernels/*): the path
# (linear: no activation; chunked: impl="eager" with an activation; compiled), shared or unique
# masks, bias or not, one mask or several, fixed or trainable masks, and the activation family:
# a known in-place derivative (ReLU, tanh, sigmoid: the backward's in-place branch), a derivative
# by autograd (ELU, leaky ReLU), a learnable parameter (PReLU: the full autograd branch). Each
# combination is one pinned test case, checked against the literal layer written above, for the
# output and every gradient (input, weight, bias, trainable masks, PReLU slope).

IN_PLACE_DERIVATIVE = ["relu", "tanh", "sigmoid"]
AUTOGRAD_DERIVATIVE = ["elu", "lrelu", "selu"]
LEARNABLE = ["prelu"]
FAMILIES = IN_PLACE_DERIVATIVE + AUTOGRAD_DERIVATIVE + LEARNABLE


def pinned(**overrides):
    cfg = {
        "batch": 3,
        "channels": 3,
        "fanout": 2,
        "nmasks": 4,
        "height": 3,
        "width": 4,
        "unique": True,
        "train_masks": False,
        "bias": True,
        "level": 0.7,
        "seed": 11,
    }
    cfg.update(overrides)
    return cfg


def check_against_literal(impl, cfg, act_name, path, device="cpu", rtol=1e-4):
    """Dispatch to ``path``, then compare output and gradients with :func:`literal`."""
    x, masks, weight, bias = make_inputs(cfg, device=device)
    activation = activation_for(act_name, device=device)
    assert resolve_impl(impl, cfg["nmasks"], activation) == path
    expected = literal_outputs_and_grads(x, masks, weight, bias, cfg["level"], activation)
    got = outputs_and_grads(impl, x, masks, weight, bias, cfg["level"], activation)
    assert all(t.device == x.device for t in got)
    assert_same(got, expected, rtol=rtol)
    return got


@pytest.mark.parametrize("train_masks", [False, True], ids=["fixed", "trained"])
@pytest.mark.parametrize("nmasks", [1, 4])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "shared"])
@pytest.mark.parametrize("impl", ["eager", "compiled"])
def test_linear_path_matches_literal(impl, unique, bias, nmasks, train_masks):
    """No activation: the algebraic form (every impl but grouped), all 16 branch combinations."""
    cfg = pinned(unique=unique, bias=bias, nmasks=nmasks, train_masks=train_masks, level=0.8)
    check_against_literal(impl, cfg, None, "linear")


@pytest.mark.parametrize("act", FAMILIES)
@pytest.mark.parametrize("train_masks", [False, True], ids=["fixed", "trained"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "shared"])
@pytest.mark.parametrize(
    ("fanout", "budget"), [(2, 1 << 20), (1, 1), (2, 7), (1, 1 << 20)], ids=str
)
def test_chunked_path_matches_literal(fanout, budget, unique, bias, train_masks, act):
    """With an activation and nmasks > 1, impl="eager": in one block and in many blocks."""
    cfg = pinned(unique=unique, bias=bias, train_masks=train_masks, fanout=fanout)
    with mock.patch.dict(_fast_chunked.CHUNK_ELEMENTS, {"cpu": budget}):
        check_against_literal("eager", cfg, act, "chunked")


@pytest.fixture
def threads():
    """``torch.set_num_threads`` for one test, restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_default_budget_halves_on_one_cpu_thread(threads):
    """One CPU thread: half the block (at least 1); other counts and devices: the table's."""
    sizes = {"cpu": 1 << 21, "cuda": 1 << 25}
    with mock.patch.dict(_fast_chunked.CHUNK_ELEMENTS, sizes):
        threads(1)
        assert _fast_chunked.default_budget("cpu") == 1 << 20
        assert _fast_chunked.default_budget("cuda") == 1 << 25
        assert _fast_chunked.default_budget("xpu") == 1 << 21  # unknown: the CPU's size
        threads(2)
        assert _fast_chunked.default_budget("cpu") == 1 << 21
        threads(1)
        with mock.patch.dict(_fast_chunked.CHUNK_ELEMENTS, {"cpu": 1}):
            assert _fast_chunked.default_budget("cpu") == 1


@pytest.mark.parametrize("count", [1, 2])
def test_chunked_path_blocks_by_default_budget(count, threads):
    """The eager path cuts its blocks by ``default_budget`` of the thread count in force."""
    threads(count)
    seen = []
    blocks = _fast_chunked._blocks

    def spy(batch, channels, nmasks, pixels, budget):
        seen.append(budget)
        return blocks(batch, channels, nmasks, pixels, budget)

    cfg = pinned()
    with (
        mock.patch.dict(_fast_chunked.CHUNK_ELEMENTS, {"cpu": 40}),
        mock.patch.object(_fast_chunked, "_blocks", spy),
    ):
        check_against_literal("eager", cfg, "relu", "chunked")
    assert seen and set(seen) == {20 if count == 1 else 40}


@pytest.mark.parametrize("act", FAMILIES)
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "shared"])
def test_chunked_path_without_input_gradient(unique, act):
    """The first layer of a network: no gradient for x (the backward skips the derivative)."""
    cfg = pinned(unique=unique, x_grad=False)
    with mock.patch.dict(_fast_chunked.CHUNK_ELEMENTS, {"cpu": 5}):
        check_against_literal("eager", cfg, act, "chunked")


@pytest.mark.parametrize("act", ["relu", "elu", "prelu"])
@pytest.mark.parametrize("train_masks", [False, True], ids=["fixed", "trained"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "shared"])
def test_compiled_path_matches_literal(unique, bias, train_masks, act):
    """``torch.compile``d path (one block; several for ReLU and trained masks); really compiled."""
    _fast_compiled._reset()
    cfg = pinned(unique=unique, bias=bias, train_masks=train_masks)
    check_against_literal("compiled", cfg, act, "compiled")
    if act == "relu" or train_masks:  # several blocks (each compiles anew, so not every case)
        per_channel = cfg["batch"] * cfg["nmasks"] * cfg["height"] * cfg["width"]
        with mock.patch.dict(_fast_compiled.BLOCK_ELEMENTS, {"cpu": per_channel}):
            check_against_literal("compiled", cfg, act, "compiled")
    assert _fast_compiled.compiled_available()  # it really compiled, no fallback


@pytest.mark.parametrize(
    ("impl", "act"),
    [*(("eager", a) for a in FAMILIES), ("compiled", "relu"), ("compiled", "lrelu"),
     ("compiled", "prelu")],
)  # fmt: skip
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "shared"])
def test_fast_paths_at_perturbed_values_exactly_zero(impl, act, unique):
    """At ``x + level * mask == 0`` the derivative is the activation's own (PReLU: the slope).

    Random inputs almost never hit the kink; the benchmark's large layer did (one value in 134M),
    and the compiled PReLU kernel then gave 0 instead of the slope. Here ``x`` is on a grid of
    quarters and ``level`` is 0.5, so ``mask = -x / level`` is exact and the first mask of every
    channel perturbs the first sample to exactly 0 at every pixel.
    """
    _fast_compiled._reset()
    cfg = pinned(unique=unique, level=0.5)
    x, masks, weight, bias = make_inputs(cfg)
    with torch.no_grad():
        x.copy_(torch.round(x * 4) / 4)
        masks[:, 0] = -x[0, : masks.shape[0]] / cfg["level"]
    assert (x[0, : masks.shape[0]] + cfg["level"] * masks[:, 0] == 0).all()
    activation = activation_for(act)
    expected = literal_outputs_and_grads(x, masks, weight, bias, cfg["level"], activation)
    got = outputs_and_grads(impl, x, masks, weight, bias, cfg["level"], activation)
    assert_same(got, expected)


@pytest.mark.parametrize("act", FAMILIES)
@pytest.mark.parametrize("train_masks", [False, True], ids=["fixed", "trained"])
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "shared"])
@pytest.mark.parametrize("impl", ["auto", "eager", "compiled", "grouped"])
def test_one_mask_with_activation_is_the_literal_layer(impl, unique, train_masks, act):
    """nmasks == 1 with an activation: every impl takes the grouped path, equal to the literal."""
    cfg = pinned(unique=unique, nmasks=1, train_masks=train_masks)
    check_against_literal(impl, cfg, act, "grouped")


def test_fixed_masks_get_no_gradient_and_do_not_change():
    """Fixed masks: not a leaf of the graph on any path, and never written by forward/backward."""
    for impl, act in [("eager", None), ("eager", "relu"), ("eager", "prelu"), ("grouped", "relu")]:
        x, masks, weight, bias = make_inputs(pinned())
        before = masks.clone()
        out = perturb_conv2d(
            x, masks, weight, bias, level=0.5, activation=activation_for(act), impl=impl
        )
        out.square().sum().backward()
        assert masks.grad is None and torch.equal(masks, before)
        assert x.grad is not None and weight.grad is not None and bias.grad is not None


configs = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 3),
        "channels": st.integers(1, 4),
        "fanout": st.integers(1, 3),
        "nmasks": st.integers(1, 5),
        "height": st.integers(1, 5),
        "width": st.integers(1, 5),
        "unique": st.booleans(),
        "train_masks": st.booleans(),
        "bias": st.booleans(),
        "x_grad": st.booleans(),
        "level": st.floats(0.0, 2.0),
        "act": st.sampled_from([None, None, *sorted(ACTIVATIONS)]),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=scaled(60))
@given(
    cfg=configs,
    impl=st.sampled_from(["eager", "auto"]),
    budget=st.sampled_from([1, 13, 1 << 20]),
)
def test_eager_matches_reference_float32(cfg, impl, budget):
    """Random search on top of the pinned cases: outputs and all gradients within 1e-4."""
    x, masks, weight, bias = make_inputs(cfg)
    act = activation_for(cfg["act"])
    expected = literal_outputs_and_grads(x, masks, weight, bias, cfg["level"], act)
    with torch.no_grad():
        literal_grouped = reference(x, masks, weight, bias, cfg["level"], act)
    assert_same([literal_grouped], [expected[0]], rtol=1e-5)
    with mock.patch.dict(_fast_chunked.CHUNK_ELEMENTS, {"cpu": budget}):
        got = outputs_and_grads(impl, x, masks, weight, bias, cfg["level"], act)
    assert_same(got, expected)


@settings(max_examples=scaled(15))
@given(cfg=configs, budget=st.sampled_from([1, 17, 1 << 20]))
def test_eager_gradcheck_float64(cfg, budget):
    """``gradcheck`` of the eager paths in float64 (x, weight, bias, trainable masks)."""
    cfg = {**cfg, "batch": min(cfg["batch"], 2), "height": 2, "width": 3}
    x, masks, weight, bias = make_inputs(cfg, torch.float64)
    act = activation_for(cfg["act"], torch.float64)
    inputs = tuple(t for t in (x, masks, weight, bias) if t is not None)

    def layer(*args):
        xi, mi, wi, *bi = args
        return perturb_conv2d(
            xi, mi, wi, bi[0] if bi else None, level=cfg["level"], activation=act, impl="eager"
        )

    with mock.patch.dict(_fast_chunked.CHUNK_ELEMENTS, {"cpu": budget}):
        assert torch.autograd.gradcheck(layer, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("unique", "train_masks", "fanout", "act"),
    [(True, True, 2, "prelu"), (False, False, 1, "relu")],
)
def test_compiled_matches_reference(unique, train_masks, fanout, act):
    """The compiled path, in one block and in several blocks, on two fixed configurations."""
    _fast_compiled._reset()
    cfg = {
        "batch": 3,
        "channels": 4,
        "fanout": fanout,
        "nmasks": 3,
        "height": 4,
        "width": 5,
        "unique": unique,
        "train_masks": train_masks,
        "bias": True,
        "level": 0.7,
        "seed": 3,
    }
    x, masks, weight, bias = make_inputs(cfg)
    activation = activation_for(act)
    expected = outputs_and_grads("grouped", x, masks, weight, bias, 0.7, activation)
    got = outputs_and_grads("compiled", x, masks, weight, bias, 0.7, activation)
    assert_same(got, expected)
    per_channel = 3 * 3 * 4 * 5
    with mock.patch.dict(_fast_compiled.BLOCK_ELEMENTS, {"cpu": 2 * per_channel}):
        got = outputs_and_grads("compiled", x, masks, weight, bias, 0.7, activation)
    assert_same(got, expected)
    assert _fast_compiled.compiled_available()  # it really compiled, no fallback


def test_compiled_falls_back_to_eager_with_one_warning():
    _fast_compiled._reset()

    def broken(fn):
        raise RuntimeError("no C++ compiler\nmore detail")

    cfg = {
        "batch": 2,
        "channels": 3,
        "fanout": 1,
        "nmasks": 4,
        "height": 3,
        "width": 3,
        "unique": True,
        "train_masks": False,
        "bias": True,
        "level": 0.5,
        "seed": 0,
    }
    x, masks, weight, bias = make_inputs(cfg)
    act = nn.ReLU()
    expected = outputs_and_grads("grouped", x, masks, weight, bias, 0.5, act)
    try:
        with mock.patch.object(_fast_compiled, "_compile", broken):
            with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as record:
                first = outputs_and_grads("compiled", x, masks, weight, bias, 0.5, act)
                second = outputs_and_grads("compiled", x, masks, weight, bias, 0.5, act)
        warned = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
        assert warned == [
            "impl='compiled': torch.compile is unavailable here (RuntimeError: no C++ compiler); "
            "using the eager chunked path instead"
        ]
        assert not _fast_compiled.compiled_available()
        assert_same(first, expected)
        assert_same(second, expected)
    finally:
        _fast_compiled._reset()


def saved_bytes(fn):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


@pytest.mark.parametrize("impl", ["eager", "compiled"])
@pytest.mark.parametrize("use_act", [False, True])
def test_fast_paths_never_save_the_perturbed_tensor(impl, use_act):
    """What is kept for backward is about the inputs' size, not batch * channels * nmasks maps."""
    if impl == "compiled" and use_act and COMPILE_BACKEND:
        pytest.skip(f"inductor's fusion saves the memory; the tests compile with {COMPILE_BACKEND}")
    _fast_compiled._reset()
    batch, channels, nmasks, size = 8, 4, 32, 8
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    layer = PerturbConv2d(channels, channels, nmasks, input_size=size, use_act=use_act)
    perturbed_bytes = batch * channels * nmasks * size * size * 4
    inputs_bytes = 4 * (
        x.numel() + layer.noise.masks.numel() + layer.weight.numel() + 2 * x.numel()
    )
    layer.impl = "grouped"
    _, grouped = saved_bytes(lambda: layer(x))
    layer.impl = impl
    out, fast = saved_bytes(lambda: layer(x))
    assert grouped >= perturbed_bytes
    assert fast <= inputs_bytes < perturbed_bytes / 4, (fast, inputs_bytes, perturbed_bytes)
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_named_activation_has_a_fast_path(name):
    """Each activation of Klachko's ``--act`` (RReLU in eval mode) takes the chunked path."""
    act = activation_for(name)
    assert resolve_impl("eager", 4, act) == "chunked"
    assert resolve_impl("compiled", 4, act) == "compiled"


def test_resolve_impl():
    relu = nn.ReLU()
    assert resolve_impl("grouped", 4, relu) == "grouped"
    for impl in ("auto", "eager", "compiled"):
        assert resolve_impl(impl, 4, None) == "linear"
        assert resolve_impl(impl, 1, None) == "linear"
        assert resolve_impl(impl, 1, relu) == "grouped"  # no blow-up with one mask
        assert resolve_impl(impl, 4, nn.RReLU()) == "grouped"  # random in training mode
        assert resolve_impl(impl, 4, nn.PReLU(8)) == "grouped"  # one slope per channel
        assert resolve_impl(impl, 4, lambda t: t.softmax(1)) == "grouped"  # not element-wise
    assert resolve_impl("auto", 4, relu) == "chunked"
    assert resolve_impl("eager", 4, nn.RReLU().eval()) == "chunked"
    assert resolve_impl("eager", 4, torch.tanh) == "chunked"
    assert resolve_impl("compiled", 4, relu) == "compiled"
    with pytest.raises(ValueError, match=r"impl must be one of .* got 'fast'"):
        resolve_impl("fast", 4, relu)


def test_unsupported_activation_takes_the_grouped_path_exactly():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    masks, weight = torch.rand(3, 2, 4, 4), torch.randn(6, 2, 1, 1)

    def softmax(t):
        return t.softmax(1)

    for impl in IMPLS:
        out = perturb_conv2d(x, masks, weight, level=0.5, activation=softmax, impl=impl)
        assert torch.equal(out, reference(x, masks, weight, None, 0.5, softmax))


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("train", [True, False])
def test_layer_impls_agree_for_every_activation(act, train):
    """``PerturbConv2d`` of each impl: same output and gradients (RReLU in training: same RNG)."""
    torch.manual_seed(0)
    base = PerturbConv2d(3, 6, 4, input_size=(5, 4), level=0.5, use_act=True, act=act)
    base.train(train)
    x = torch.randn(2, 3, 5, 4)
    results = {}
    for impl in ("grouped", "eager", "auto"):
        layer = copy.deepcopy(base)
        layer.impl = impl
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)
        out = layer(xi)
        out.square().sum().backward()
        results[impl] = [out, xi.grad, *(p.grad for p in layer.parameters())]
    for impl in ("eager", "auto"):
        assert_same(results[impl], results["grouped"])


def test_dtype_behaviour_kept():
    """float64 input, float32 masks and weights: float64 output, equal to grouped."""
    layer = PerturbConv2d(3, 6, 4, input_size=4, use_act=True)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = perturb_conv2d(
        x, layer.noise.masks, layer.weight, layer.bias, level=0.1, activation=nn.ReLU()
    )
    for impl in ("eager", "auto"):
        layer.impl = impl
        out = layer(x)
        assert out.dtype == torch.float64
        assert_same([out], [expected], rtol=1e-6)


def test_non_contiguous_and_inference_inputs():
    layer = PerturbConv2d(4, 8, 3, input_size=5, use_act=True)
    x = torch.randn(2, 4, 5, 5).to(memory_format=torch.channels_last)
    xt = torch.randn(2, 4, 5, 5).transpose(2, 3)
    for inp in (x, xt):
        layer.impl = "grouped"
        expected = layer(inp)
        layer.impl = "eager"
        assert_same([layer(inp)], [expected])
        with torch.no_grad():
            assert_same([layer(inp)], [expected])
        with torch.inference_mode():
            assert_same([layer(inp)], [expected])


@pytest.mark.parametrize("use_act", [False, True])
def test_changes_of_weights_and_masks_are_seen_by_the_next_forward(use_act):
    """No stale bias map: every way of changing weights, bias, masks or level is seen at once."""
    torch.manual_seed(0)
    layer = PerturbConv2d(3, 6, 4, input_size=4, use_act=use_act).eval()
    x = torch.randn(2, 3, 4, 4)

    def check():
        with torch.no_grad():
            fast = layer(x)
            layer.impl = "grouped"
            expected = layer(x)
            layer.impl = "eager"
        assert_same([fast], [expected])
        return fast

    layer.impl = "eager"
    before = check()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()
    layer(x).square().sum().backward()
    optimizer.step()
    layer.eval()
    after_step = check()
    assert not torch.equal(after_step, before)
    changes = [
        lambda: layer.weight.data.mul_(2),  # .data does not bump the version counter
        lambda: layer.bias.data.add_(1),
        lambda: layer.noise.masks.data.mul_(-1),
        lambda: layer.noise.masks.copy_(torch.rand_like(layer.noise.masks)),
        lambda: layer.noise.reset_parameters(torch.Generator().manual_seed(5)),
        lambda: setattr(layer.noise, "level", 0.9),
        lambda: layer.load_state_dict(PerturbConv2d(3, 6, 4, input_size=4).state_dict()),
    ]
    previous = after_step
    for change in changes:
        with torch.no_grad():
            change()
        now = check()
        assert not torch.equal(now, previous)
        previous = now


def test_impl_argument_is_validated_everywhere():
    with pytest.raises(ValueError, match="impl must be one of"):
        PerturbConv2d(2, 4, 2, input_size=3, impl="fast")
    with pytest.raises(TypeError, match="impl"):
        PerturbConv2d(2, 4, 2, input_size=3, impl=None)
    with pytest.raises(ValueError, match="impl"):
        PerturbLayer(2, 4, filter_size=3, impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        ModelConfig(impl="fastest")
    assert "impl='eager'" in repr(PerturbConv2d(2, 4, 2, input_size=3, impl="eager"))
    assert "impl" not in repr(PerturbConv2d(2, 4, 2, input_size=3))
    assert PerturbLayer(2, 4, 2, input_size=3, impl="grouped")[0].impl == "grouped"


@pytest.mark.parametrize("name", list_models())
def test_every_builder_accepts_impl(name):
    model = build_model(name, nfilters=4, impl="eager")
    assert model.config.impl == "eager"
    impls = {m.impl for m in model.modules() if isinstance(m, PerturbConv2d)}
    assert impls <= {"eager"}


def test_perturb_resnet18_impls_agree():
    """A whole network: the same logits and gradients with impl 'grouped' and 'auto'.

    In float64 and seeded: in float32, BatchNorm over a batch of 2 amplifies the rounding
    differences of the two paths to about 2e-4 for some draws (a flaky test otherwise).
    """
    torch.manual_seed(0)
    options = {"nfilters": 6, "nmasks": 3, "unique_masks": False, "input_size": 16}
    grouped = build_model("perturb_resnet18", impl="grouped", dtype=torch.float64, **options)
    fast = build_model("perturb_resnet18", impl="auto", dtype=torch.float64, **options)
    fast.load_state_dict(grouped.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    results = []
    for model in (grouped, fast):
        out = model(x)
        out.square().sum().backward()
        results.append([out, *(p.grad for p in model.parameters())])
    # Biases followed by BatchNorm have a gradient that is zero up to rounding: absolute floor.
    assert_same(results[1], results[0], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("use_act", [False, True])
def test_autocast_runs_the_fast_paths_in_the_autocast_dtype(use_act):
    """Under CPU autocast the grouped path's conv2d gives bfloat16; so do the fast paths."""
    torch.manual_seed(0)
    layer = PerturbConv2d(4, 8, 3, input_size=5, level=0.3, use_act=use_act)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    with torch.no_grad():
        full = layer(x)
    outs = {}
    for impl in ("grouped", "eager"):
        layer.impl = impl
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[impl] = layer(x)
        assert outs[impl].dtype == torch.bfloat16
        torch.testing.assert_close(outs[impl].float(), full, atol=0.1, rtol=0.05)
        outs[impl].float().sum().backward()
        assert x.grad is not None and x.grad.dtype == torch.float32


@pytest.mark.parametrize(
    ("impl", "act"),
    [("eager", None), ("eager", "relu"), ("eager", "elu"), ("eager", "prelu"),
     ("compiled", "relu"), ("compiled", "prelu")],
)  # fmt: skip
def test_autocast_equals_the_explicit_bfloat16_call(impl, act):
    """Documented: under autocast the fast path runs on ``x`` cast to the autocast dtype.

    So the layer under ``torch.autocast("cpu", bfloat16)`` must give, bit for bit, the output
    and gradients of the same call made outside autocast with ``x.bfloat16()``; and since the
    kernels cast masks, weight, bias and PReLU slope to ``x``'s dtype, the output of the call
    with every tensor cast to bfloat16 beforehand (for PReLU by the eager path: a float32 slope
    sends the compiled path to the eager one).
    """
    _fast_compiled._reset()
    cfg = pinned(unique=False, train_masks=True)
    x, masks, weight, bias = make_inputs(cfg)
    activation = activation_for(act)
    params = list(activation.parameters()) if isinstance(activation, nn.Module) else []
    leaves = [t for t in (x, masks, weight, bias, *params) if t.requires_grad]
    runs = []
    for under_autocast in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=under_autocast):
            xi = x if under_autocast else x.bfloat16()
            out = perturb_conv2d(
                xi, masks, weight, bias, level=cfg["level"], activation=activation, impl=impl
            )
        assert out.dtype == torch.bfloat16
        grads = torch.autograd.grad(out.float().sin().sum(), leaves)
        runs.append([out, *grads])
    for got, expected in zip(*runs):
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    with torch.no_grad():
        all_bf16 = perturb_conv2d(
            *(t.detach().bfloat16() for t in (x, masks, weight, bias)),
            level=cfg["level"],
            activation=copy.deepcopy(activation).bfloat16() if activation else None,
            impl="eager" if act == "prelu" else impl,
        )
    assert torch.equal(runs[0][0], all_bf16)
    assert _fast_compiled.compiled_available()


def test_compiled_prelu_of_another_dtype_takes_the_chunked_path_and_keeps_compiling(recwarn):
    """A float32 PReLU slope on bfloat16 ``x`` (autocast): eager chunked path, no failure."""
    _fast_compiled._reset()
    cfg = pinned()
    x, masks, weight, bias = make_inputs(cfg)
    prelu = activation_for("prelu")
    calls = {"compiled": 0}

    def fake_compile(fn):  # the uncompiled expression: same tracing failure, no compiler needed
        def counted(*args):
            calls["compiled"] += 1
            return fn(*args)

        return counted

    chunked = mock.Mock(wraps=_fast_compiled.perturb_act_conv2d_chunked)
    try:
        with (
            mock.patch.object(_fast_compiled, "_compile", fake_compile),
            mock.patch.object(_fast_compiled, "perturb_act_conv2d_chunked", chunked),
        ):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = perturb_conv2d(
                    x, masks, weight, bias, level=0.5, activation=prelu, impl="compiled"
                )
            assert (chunked.call_count, calls["compiled"]) == (1, 0)
            perturb_conv2d(x, masks, weight, bias, level=0.5, activation=prelu, impl="compiled")
            assert (chunked.call_count, calls["compiled"]) == (1, 1)  # same dtype: compiled
        assert _fast_compiled.compiled_available()
        assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager = perturb_conv2d(
                x, masks, weight, bias, level=0.5, activation=prelu, impl="eager"
            )
        assert torch.equal(got, eager)
    finally:
        _fast_compiled._reset()


@pytest.mark.parametrize(("nmasks", "unique"), [(3, True), (3, False), (1, True), (1, False)])
def test_linear_path_is_twice_differentiable(nmasks, unique):
    gen = torch.Generator().manual_seed(0)
    opts = {"dtype": torch.float64, "generator": gen}
    x = torch.randn(2, 2, 3, 3, **opts).requires_grad_()
    masks = torch.rand(2 if unique else 1, nmasks, 3, 3, **opts).requires_grad_()
    out_channels = 4 if nmasks > 1 else 3
    weight = torch.randn(out_channels, nmasks if nmasks > 1 else 2, 1, 1, **opts).requires_grad_()
    bias = torch.randn(out_channels, **opts).requires_grad_()

    def layer(*args):
        return perturb_conv2d(*args, level=0.7, impl="eager")

    assert torch.autograd.gradgradcheck(layer, (x, masks, weight, bias))


# ------------------------------------------------------------------------------------ CUDA
#
# Every impl against the literal layer on a CUDA device, TF32 off (it would round float32
# products to 10 bits), within 1e-5 relative. Skipped without CUDA; run them on a GPU machine
# with ``python -m pytest -q -m gpu``.

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_without_tf32():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield "cuda"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def expected_path(impl, nmasks, act):
    if impl == "grouped":
        return "grouped"
    if act is None:
        return "linear"
    if nmasks == 1:
        return "grouped"
    return "compiled" if impl == "compiled" else "chunked"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("unique", "train_masks"), [(True, False), (False, True)])
@pytest.mark.parametrize("nmasks", [1, 4])
@pytest.mark.parametrize("act", [None, "relu", "elu", "prelu"])
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_every_impl_matches_literal(cuda_without_tf32, impl, act, nmasks, unique, train_masks):
    if impl == "compiled":
        _fast_compiled._reset()
    cfg = pinned(nmasks=nmasks, unique=unique, train_masks=train_masks, bias=not train_masks)
    path = expected_path(impl, nmasks, act)
    check_against_literal(impl, cfg, act, path, device=cuda_without_tf32, rtol=1e-5)
    if path == "chunked":  # and in many blocks
        with mock.patch.dict(_fast_chunked.CHUNK_ELEMENTS, {"cuda": 7}):
            check_against_literal(impl, cfg, act, path, device=cuda_without_tf32, rtol=1e-5)
    if path == "compiled":
        assert _fast_compiled.compiled_available()


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_layer_matches_its_cpu_copy(cuda_without_tf32, impl):
    """The same PerturbConv2d on CPU and CUDA: same output and gradients (1e-5 relative)."""
    torch.manual_seed(0)
    cpu = PerturbConv2d(4, 8, 8, input_size=6, level=0.5, use_act=True, impl=impl)
    gpu = copy.deepcopy(cpu).to(cuda_without_tf32)
    x = torch.randn(3, 4, 6, 6)
    results = []
    for layer, xi in ((cpu, x.clone()), (gpu, x.to(cuda_without_tf32))):
        xi.requires_grad_()
        out = layer(xi)
        out.square().sum().backward()
        results.append([t.cpu() for t in (out, xi.grad, *(p.grad for p in layer.parameters()))])
    assert_same(results[1], results[0], rtol=1e-5)


# ------------------------------------------------- block sizes of the chunked path (memory bound)


@pytest.mark.parametrize(
    ("budget", "expected"),
    # batch 4, channels 3, nmasks 5, pixels 10; worked out by hand from the docstring's rule:
    # whole images first, then masks, then channels, each at least one.
    [(1, (1, 1, 1)), (25, (2, 1, 1)), (60, (4, 1, 1)), (100, (4, 1, 2)), (200, (4, 1, 5)),
     (450, (4, 2, 5)), (600, (4, 3, 5)), (10**6, (4, 3, 5))],
)  # fmt: skip
def test_chunk_block_sizes(budget, expected):
    assert _fast_chunked._blocks(4, 3, 5, 10, budget) == expected


@settings(max_examples=scaled(50))
@given(
    batch=st.integers(1, 9), channels=st.integers(1, 9), nmasks=st.integers(2, 9),
    pixels=st.integers(1, 50), budget=st.integers(1, 5000),
)  # fmt: skip
def test_chunk_blocks_fit_the_budget(batch, channels, nmasks, pixels, budget):
    """A block never exceeds the budget (or one image row of one mask), and fills it greedily."""
    nb, nc, nk = _fast_chunked._blocks(batch, channels, nmasks, pixels, budget)
    assert 1 <= nb <= batch and 1 <= nc <= channels and 1 <= nk <= nmasks
    assert nb * nc * nk * pixels <= max(budget, pixels)
    if nb < batch:  # smaller than the whole batch only when one more image would not fit
        assert (nb + 1) * pixels > budget and nc == nk == 1


@pytest.mark.parametrize(("impl", "kernel"), [("eager", "chunked"), ("auto", "chunked"),
                                               ("compiled", "compiled")])  # fmt: skip
def test_dispatch_calls_exactly_the_resolved_kernel(impl, kernel):
    """The fast paths all give the literal result, so only this can tell which one ran."""
    from perturbnn import functional

    x, masks, weight, bias = make_inputs(pinned())
    names = {
        "linear": "perturb_conv2d_linear",
        "chunked": "perturb_act_conv2d_chunked",
        "compiled": "perturb_act_conv2d_compiled",
    }
    mocks = {k: mock.Mock(return_value=torch.zeros(())) for k in names}
    with mock.patch.multiple(functional, **{names[k]: mocks[k] for k in names}):
        perturb_conv2d(x, masks, weight, bias, level=0.5, activation=nn.ReLU(), impl=impl)
        perturb_conv2d(x, masks, weight, bias, level=0.5, activation=None, impl=impl)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the autocast branch dispatches too
            perturb_conv2d(x, masks, weight, bias, level=0.5, activation=nn.ReLU(), impl=impl)
    assert mocks[kernel].call_count == 2 and mocks["linear"].call_count == 1
    assert sum(m.call_count for m in mocks.values()) == 3


@pytest.mark.parametrize("hook", ["forward", "forward_pre"])
def test_activation_with_a_hook_takes_the_literal_path(hook):
    """A hook would be skipped by the fast paths' pure function: any one hook sends it to grouped."""
    relu = nn.ReLU()
    assert resolve_impl("eager", 4, relu) == "chunked"
    calls = []
    if hook == "forward":
        relu.register_forward_hook(lambda module, args, out: calls.append(1))
    else:
        relu.register_forward_pre_hook(lambda module, args: calls.append(1))
    assert resolve_impl("eager", 4, relu) == "grouped"
    x, masks, weight, bias = make_inputs(pinned())
    perturb_conv2d(x, masks, weight, bias, level=0.5, activation=relu, impl="eager")
    assert calls == [1]


def test_compiled_functions_follow_the_thread_count():
    """A thread count change gets its own compiled kernels (inductor may fix the count)."""
    _fast_compiled._reset()
    compiled_for = []

    def fake_compile(fn):
        compiled_for.append(torch.get_num_threads())
        return fn  # the uncompiled expression: same results, no compiler needed

    x, masks = torch.randn(2, 3, 4, 4), torch.rand(3, 5, 4, 4)
    weight = torch.randn(6, 5, 1, 1)
    before = torch.get_num_threads()
    try:
        with mock.patch.object(_fast_compiled, "_compile", fake_compile):
            outs = []
            for threads in (1, 2, 1):
                torch.set_num_threads(threads)
                outs.append(
                    perturb_conv2d(
                        x, masks, weight, level=0.5, activation=torch.relu, impl="compiled"
                    )
                )
        assert compiled_for == [1, 2]
        assert_same(outs, [outs[0]] * 3)
        _fast_compiled._reset()  # forgets the compiled functions: the next call compiles anew
        with mock.patch.object(_fast_compiled, "_compile", fake_compile):
            perturb_conv2d(x, masks, weight, level=0.5, activation=torch.relu, impl="compiled")
        assert compiled_for == [1, 2, 1]
    finally:
        torch.set_num_threads(before)
        _fast_compiled._reset()


def test_block_channels_is_the_largest_divisor_within_the_budget():
    """``_block_channels(channels, per_channel, budget)``: documented helper, worked by hand."""
    block_channels = _fast_compiled._block_channels
    assert block_channels(12, 10, 35) == 3  # at most 3 channels fit; 3 divides 12
    assert block_channels(12, 10, 50) == 4  # 5 fit, 5 does not divide 12
    assert block_channels(12, 10, 5) == 1  # not even one channel fits: one per block
    assert block_channels(4, 1, 2) == 2
    assert block_channels(7, 10, 1000) == 7


def test_compiled_calls_cover_at_most_the_block_budget():
    """Each compiled call sees whole channel groups within BLOCK_ELEMENTS perturbed values."""
    _fast_compiled._reset()
    seen = []

    def fake_compile(fn):  # the uncompiled expression, recording each call's channels
        def recorded(x, noise, weight, bias, activation):
            seen.append((x.shape[1], noise.shape[0], weight.shape[0], bias.shape[0]))
            return fn(x, noise, weight, bias, activation)

        return recorded

    cfg = pinned(batch=2, channels=4, nmasks=3, height=4, width=5, fanout=2)
    x, masks, weight, bias = make_inputs(cfg)
    per_channel = 2 * 3 * 4 * 5  # batch * nmasks * height * width
    expected = perturb_conv2d(x, masks, weight, bias, level=0.7, activation=nn.ReLU())
    try:
        with mock.patch.object(_fast_compiled, "_compile", fake_compile):
            for budget, calls in [(2 * per_channel, [(2, 2, 4, 4)] * 2), (1 << 20, [(4, 4, 8, 8)])]:
                seen.clear()
                with mock.patch.dict(_fast_compiled.BLOCK_ELEMENTS, {"cpu": budget}):
                    got = perturb_conv2d(
                        x, masks, weight, bias, level=0.7, activation=nn.ReLU(), impl="compiled"
                    )
                assert seen == calls
                torch.testing.assert_close(got, expected)
    finally:
        _fast_compiled._reset()


def test_compiled_fallback_warning_with_an_empty_error_message():
    _fast_compiled._reset()

    def broken(fn):
        raise RuntimeError()

    x, masks, weight, bias = make_inputs(pinned())
    try:
        with mock.patch.object(_fast_compiled, "_compile", broken):
            with pytest.warns(RuntimeWarning) as record:
                perturb_conv2d(
                    x, masks, weight, bias, level=0.5, activation=nn.ReLU(), impl="compiled"
                )
        assert [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)] == [
            "impl='compiled': torch.compile is unavailable here (RuntimeError: ); "
            "using the eager chunked path instead"
        ]
    finally:
        _fast_compiled._reset()


@pytest.mark.parametrize("exporter", ["torch.export", "onnx"])
def test_while_exporting_the_blocked_paths_give_way_to_the_literal_one(exporter):
    """torch.export cannot trace the blocked kernels' preallocated buffers: grouped while exporting."""
    from perturbnn import functional

    x, masks, weight, bias = make_inputs(pinned())
    flag = (
        mock.patch.object(torch.compiler, "is_exporting", return_value=True)
        if exporter == "torch.export"
        else mock.patch.object(torch.onnx, "is_in_onnx_export", return_value=True)
    )
    kernels = {
        name: mock.Mock(side_effect=AssertionError(name))
        for name in ("perturb_act_conv2d_chunked", "perturb_act_conv2d_compiled")
    }
    expected = perturb_conv2d(x, masks, weight, bias, level=0.5, activation=nn.ReLU())
    with flag, mock.patch.multiple(functional, **kernels):
        for impl in ("eager", "compiled", "auto"):
            got = perturb_conv2d(x, masks, weight, bias, level=0.5, activation=nn.ReLU(), impl=impl)
            assert torch.equal(got, expected)
    assert functional._exporting() is False  # and not otherwise


@pytest.mark.parametrize("act", ["relu", "prelu"])
def test_compiled_path_inside_the_callers_own_torch_compile(act):
    """Inside a caller's torch.compile the expression is traced into the caller's graph."""
    if "MUTANT_UNDER_TEST" in os.environ:  # mutmut's trampolines set a ContextVar: graph break
        pytest.skip("needs one whole graph; mutmut's trampolines break it (docs/testing.md)")
    _fast_compiled._reset()
    cfg = pinned(train_masks=True)
    x, masks, weight, bias = make_inputs(cfg)
    activation = activation_for(act)
    expected = outputs_and_grads("grouped", x, masks, weight, bias, 0.5, activation)
    compiled_calls = mock.Mock(wraps=_fast_compiled._compiled_for)

    def layer(x, masks, weight, bias):
        return perturb_conv2d(
            x, masks, weight, bias, level=0.5, activation=activation, impl="compiled"
        )

    with mock.patch.object(_fast_compiled, "_compiled_for", compiled_calls):
        out = torch.compile(layer, backend="aot_eager", fullgraph=True)(x, masks, weight, bias)
    got = output_and_grads_of(out, x, masks, weight, bias, activation)
    assert_same(got, expected)
    assert compiled_calls.call_count == 0  # no compile of its own inside the caller's
