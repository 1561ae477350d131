"""perturbnn.reparameterize: folded models compute what the PNN models compute, with plain ops."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import pytest
import torch
import torchvision
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import perturbnn
from conftest import assert_identical, scaled, snapshot
from perturbnn import (
    FoldedConv2d,
    MixMaps,
    NoiseMask,
    PerturbConv2d,
    PerturbLayer,
    build_model,
    convert,
    list_models,
    reparameterize,
)

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine weights away from the identity, so they are checked too."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                for tensor, low, high in (
                    (module.running_mean, -0.5, 0.5),
                    (module.running_var, 0.5, 2.0),
                    (module.weight, 0.5, 1.5),
                    (module.bias, -0.5, 0.5),
                ):
                    values = torch.rand(tensor.shape, generator=generator) * (high - low) + low
                    tensor.copy_(values.to(tensor.dtype))
    return model


def assert_equal_outputs(folded: torch.Tensor, reference: torch.Tensor) -> None:
    tolerance = TOLERANCE[reference.dtype]
    assert folded.shape == reference.shape and folded.dtype == reference.dtype
    scale = max(1.0, float(reference.abs().max()))
    error = float((folded - reference).abs().max())
    assert error <= tolerance * scale, (error, tolerance * scale)


def assert_invariants(original: nn.Module, folded: nn.Module, report) -> None:
    """Every NoiseMask is reported; the folded ones are gone, replaced by one FoldedConv2d each."""
    masks = [m for m in original.modules() if isinstance(m, NoiseMask)]
    assert len(report.layers) == len(masks)
    left = [m for m in folded.modules() if isinstance(m, NoiseMask)]
    assert len(left) == len(report.kept)
    assert sum(isinstance(m, FoldedConv2d) for m in folded.modules()) == len(report.folded)
    for layer in report.folded:  # nothing of PNN remains where folding applied
        module = folded.get_submodule(layer.name)
        if layer.stride > 1:
            assert type(module) is nn.Sequential and len(module) == 2
            assert isinstance(module[1], (nn.MaxPool2d, nn.AvgPool2d))
            module = module[0]
        assert isinstance(module, FoldedConv2d)
    if not report.kept:
        assert not any(isinstance(m, (PerturbConv2d, MixMaps)) for m in folded.modules())
        assert not any(isinstance(m, PerturbLayer) and m.filter_size == 0 for m in folded.modules())


# ---------------------------------------------------------------------------------------------
# Every registered builder, with the options that leave no activation between noise and mix.

CONFIGS = {
    # The stem is a perturbation layer without activation; inner PNN layers have one (kept).
    "fanout1": {"nmasks": 1, "level": 0.3},
    "fanout3-shared-normal-mix": {
        "nmasks": 3,
        "unique_masks": False,
        "noise_type": "normal",
        "mix_maps": True,
        "level": 0.2,
    },
    # Inner layers regular: every PNN layer of the model folds.
    "fanout3-regular-inner": {"nmasks": 3, "filter_size": 3, "level": 0.5},
    "trained-masks-avg": {"nmasks": 2, "train_masks": True, "pool_type": "avg", "filter_size": 1},
}
BASE = {"nfilters": 6, "input_size": 32, "use_act": False, "first_filter_size": 0}


@functools.cache
def takes_option(name: str, key: str, value: object) -> bool:
    """Whether builder ``name`` takes ``key=value`` (a builder refuses options it does not use,
    and the original noise ResNets a perturbation stem), tried on a lazy model."""
    if key in ("nfilters", "input_size"):
        return True
    try:
        build_model(name, nfilters=6, **{key: value})
    except ValueError:
        return False
    return True


def accepted_options(name: str, options: dict) -> dict:
    return {key: value for key, value in options.items() if takes_option(name, key, value)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("name", list_models())
def test_every_builder_folds_to_the_same_outputs(name, config, dtype):
    options = accepted_options(name, {**BASE, **CONFIGS[config]})
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(name, dtype=dtype, **options)).eval()
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    snap = snapshot(model)
    folded, report = reparameterize(model)
    assert_identical(model, snap)
    with torch.no_grad():
        assert_equal_outputs(folded(x), model(x))
    assert_invariants(model, folded, report)
    perturbation_layers = [n for n, m in model.named_modules() if isinstance(m, PerturbConv2d)]
    if name.startswith("noiseresnet"):  # every noise layer has an activation inside
        assert not report.folded and report.kept
        assert all(layer.reason.startswith("NoiseLayer") for layer in report.kept)
    elif perturbation_layers:
        assert [layer.name for layer in report.layers] == perturbation_layers
        assert report.layers[0].name in ("stem.0.0", "features.0.0")  # the stem
        assert report.layers[0].folded
        if options.get("filter_size", 0) > 0:
            assert not report.kept
        else:
            assert report.kept
            assert all("activation" in layer.reason for layer in report.kept)
    else:  # resnet18: no PNN layer
        assert name == "resnet18" and not report.layers


# ---------------------------------------------------------------------------------------------
# Converted torchvision networks.


@pytest.mark.parametrize(
    "options",
    [
        {"nmasks": 2, "mix_maps": True},
        {"nmasks": 1, "unique_masks": False, "noise_type": "normal"},
    ],
    ids=["fanout2-mix", "fanout1-shared"],
)
def test_converted_torchvision_resnet18_folds_to_the_same_outputs(options):
    torch.manual_seed(0)
    model, _ = convert(torchvision.models.resnet18(num_classes=10), level=0.3, **options)
    x = torch.randn(2, 3, 32, 32)
    model(x)  # draws the lazy masks at 32x32
    model = randomize_batchnorm(model).eval()
    folded, report = reparameterize(model)
    assert len(report.folded) == len(report.layers) == 19 and not report.kept
    assert_invariants(model, folded, report)
    merged = [layer.mix_merged for layer in report.folded]
    if options.get("mix_maps"):  # a strided layer pools by max before its MixMaps
        assert merged == [layer.stride == 1 for layer in report.folded] and any(merged)
    else:
        assert not any(merged)
    with torch.no_grad():
        assert_equal_outputs(folded(x), model(x))
        model64, folded64 = model.double(), reparameterize(model.double())[0]
        assert_equal_outputs(folded64(x.double()), model64(x.double()))


def test_converted_with_activation_is_kept_and_reported():
    torch.manual_seed(0)
    model, _ = convert(torchvision.models.resnet18(num_classes=10), use_act=True)
    x = torch.randn(2, 3, 32, 32)
    model(x)
    model.eval()
    folded, report = reparameterize(model)
    assert not report.folded and len(report.kept) == 19
    assert all(layer.reason.startswith("activation ReLU") for layer in report.kept)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=0)
    assert "kept: activation ReLU between noise and 1x1 convolution" in str(report)


# ---------------------------------------------------------------------------------------------
# Random layer options.

LAYER_OPTIONS = st.fixed_dictionaries(
    {
        "in_channels": st.integers(1, 5),
        "fanout": st.integers(1, 3),
        "nmasks": st.integers(1, 4),
        "unique_masks": st.booleans(),
        "level": st.floats(0.0, 2.0),
        "noise_type": st.sampled_from(["uniform", "normal"]),
        "mix_maps": st.booleans(),
        "stride": st.integers(1, 3),
        "pool_type": st.sampled_from(["max", "avg"]),
        "bias": st.booleans(),
        "train_masks": st.booleans(),
        "height": st.integers(1, 9),
        "width": st.integers(1, 9),
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=scaled(40))
@given(LAYER_OPTIONS)
@example(  # fanout with MixMaps merged through average pooling
    {
        "in_channels": 3,
        "fanout": 2,
        "nmasks": 4,
        "unique_masks": False,
        "level": 0.5,
        "noise_type": "normal",
        "mix_maps": True,
        "stride": 2,
        "pool_type": "avg",
        "bias": False,
        "train_masks": True,
        "height": 5,
        "width": 7,
        "dtype": torch.float64,
        "seed": 1,
    }
)
def test_random_layers_fold_to_the_same_outputs(options):
    torch.manual_seed(options["seed"])
    dtype = options["dtype"]
    in_channels = options["in_channels"]
    out_channels = in_channels * options["fanout"]
    layer = PerturbConv2d(
        in_channels,
        out_channels,
        options["nmasks"],
        input_size=(options["height"], options["width"]),
        level=options["level"],
        stride=options["stride"],
        pool_type=options["pool_type"],
        noise_type=options["noise_type"],
        unique_masks=options["unique_masks"],
        train_masks=options["train_masks"],
        bias=options["bias"],
        dtype=dtype,
    )
    model: nn.Module = layer
    if options["mix_maps"]:
        model = nn.Sequential(layer, MixMaps(out_channels, "elu", dtype=dtype))
    model = randomize_batchnorm(model, options["seed"]).eval()
    folded, report = reparameterize(model)
    x = torch.randn(3, in_channels, options["height"], options["width"], dtype=dtype)
    with torch.no_grad():
        assert_equal_outputs(folded(x), model(x))
    assert_invariants(model, folded, report)
    (record,) = report.layers
    mergeable = options["stride"] == 1 or options["pool_type"] == "avg"
    assert record.folded and record.mix_merged == (options["mix_maps"] and mergeable)
    (conv,) = [m for m in folded.modules() if isinstance(m, FoldedConv2d)]
    merged = record.mix_merged
    assert conv.groups == (in_channels if options["nmasks"] > 1 and not merged else 1)
    assert all(p.dtype == dtype for p in folded.parameters())


# ---------------------------------------------------------------------------------------------
# Standard operators only.


def small_folded_models():
    torch.manual_seed(0)
    pnn = build_model(
        "perturb_resnet18", nfilters=6, nmasks=3, filter_size=3, mix_maps=True, input_size=16
    )
    converted, _ = convert(torchvision.models.resnet18(num_classes=10), nmasks=2, mix_maps=True)
    converted(torch.randn(2, 3, 16, 16))
    models = {}
    for name, model in (("perturb_resnet18", pnn), ("converted", converted)):
        model = randomize_batchnorm(model).eval()
        folded, report = reparameterize(model)
        assert report.folded and not report.kept
        models[name] = (model, folded)
    return models


@pytest.mark.parametrize("name", ["perturb_resnet18", "converted"])
def test_torch_export_of_a_folded_model_has_only_aten_ops(name):
    model, folded = small_folded_models()[name]
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(folded, (x,))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets
    for target in targets:
        assert isinstance(target, torch._ops.OpOverload), target
        assert target.namespace == "aten", target
    names = {target.name() for target in targets}
    assert "aten::convolution" in names or "aten::conv2d" in names
    with torch.no_grad():
        assert_equal_outputs(program.module()(x), model(x))


@pytest.mark.parametrize("name", ["perturb_resnet18", "converted"])
def test_onnx_export_of_a_folded_model_has_only_standard_ops(name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, folded = small_folded_models()[name]
    x = torch.randn(2, 3, 16, 16)
    program = torch.onnx.export(folded, (x,), dynamo=True, verbose=False)
    proto = program.model_proto
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    assert {node.domain for node in nodes} <= {"", "ai.onnx"}, {n.domain for n in nodes}
    ops = {node.op_type for node in nodes}
    assert {"Conv", "Add"} <= ops, ops
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Refusals, the original, inplace.


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet", nfilters=6, nmasks=3, filter_size=3, input_size=16)


def test_training_mode_is_refused_naming_the_module():
    model = small_model()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"eval mode: the model \(PlainNet\) is in training mode"):
        reparameterize(model)
    model.eval()
    model.features[0].train()
    with pytest.raises(ValueError, match=r"'features\.0' \(PerturbLayer\) is in training mode"):
        reparameterize(model)
    model.features[0].eval()
    model.features[0][1].train()  # only a BatchNorm
    with pytest.raises(ValueError, match=r"'features\.0\.1' \(BatchNorm2d\)"):
        reparameterize(model)
    model.train()
    assert_identical(model, snap)


def test_lazy_layers_are_refused_until_they_run():
    torch.manual_seed(0)
    model = build_model("perturb_resnet18", nfilters=6, filter_size=3).eval()
    with pytest.raises(ValueError, match=r"lazy PNN layer 'stem\.0\.0' \(PerturbConv2d\).*forward"):
        reparameterize(model)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y = model(x)
        folded, report = reparameterize(model)
        assert len(report.folded) == 1
        assert_equal_outputs(folded(x), y)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        reparameterize("resnet18")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inplace"):
        reparameterize(small_model().eval(), inplace=1)  # type: ignore[arg-type]


def test_original_untouched_and_inplace():
    model = randomize_batchnorm(small_model()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y = model(x)
    snap = snapshot(model)
    folded, _ = reparameterize(model)
    assert folded is not model
    assert_identical(model, snap)
    assert isinstance(model.features[0][0], PerturbConv2d)
    same, report = reparameterize(model, inplace=True)
    assert same is model and len(report.folded) == 1
    assert type(model.features[0]) is nn.Sequential
    assert isinstance(model.features[0][0], FoldedConv2d)
    with torch.no_grad():
        assert_equal_outputs(model(x), y)
    again, report = reparameterize(model)  # nothing left to fold
    assert not report.layers
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_a_layer_itself_is_replaced_and_returned():
    torch.manual_seed(0)
    layer = PerturbConv2d(2, 4, nmasks=2, input_size=3).eval()
    original = copy.deepcopy(layer)
    folded, report = reparameterize(layer, inplace=True)
    assert type(folded) is FoldedConv2d and report.layers[0].name == ""
    x = torch.randn(1, 2, 3, 3)
    with torch.no_grad():
        assert_equal_outputs(folded(x), original(x))


def test_report_table_written_out():
    """The report's table, checked against text written out by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(
        PerturbConv2d(3, 6, nmasks=2, input_size=4),  # 12 weights + 6 bias; masks 3*2*4*4 = 96
        MixMaps(6),  # 36 + 6 conv, 12 BatchNorm; buffers 6 + 6 + 1
        PerturbConv2d(6, 6, input_size=4, stride=2, use_act=True),  # 36 + 6; masks 96
        NoiseMask(6, 1, 2, level=0.1),  # masks 24
    ).eval()
    folded, report = reparameterize(model)
    # After: conv 3 -> 6 merged (18), MixMaps' BatchNorm (12); bias map 6*4*4 = 96.
    assert str(report).split("\n") == [
        "perturbnn.reparameterize: 1 of 3 PNN layers folded, 2 kept",
        "name  layer          in  out  nmasks  stride  action",
        "0     PerturbConv2d  3   6    2       1       folded (MixMaps merged)",
        "2     PerturbConv2d  6   6    1       2       "
        "kept: activation ReLU between noise and 1x1 convolution (not affine)",
        "3     NoiseMask      6   6    1       1       "
        "kept: bare NoiseMask (only a PerturbConv2d, noise then 1x1 convolution, is folded)",
        "parameter values: 114 -> 72; buffer values: 229 -> 229",
    ]
    assert [type(m).__name__ for m in folded] == [
        "FoldedConv2d",
        "Sequential",
        "PerturbConv2d",
        "NoiseMask",
    ]
    assert report.buffers_after == 96 + 13 + 96 + 24


def test_folded_conv2d_checks_its_arguments_and_input():
    dense = FoldedConv2d(3, 4, (3, 5))
    assert dense(torch.zeros(2, 3, 3, 5)).shape == (2, 4, 3, 5)
    assert repr(dense) == "FoldedConv2d(3, 4, size=(3, 5))"
    with pytest.raises(
        ValueError, match=r"Tensor\[batch_size, 3, 3, 5\].*got shape \(2, 3, 5, 3\)"
    ):
        dense(torch.zeros(2, 3, 5, 3))
    with pytest.raises(ValueError, match=r"got shape \(2, 4, 3, 5\)"):
        dense(torch.zeros(2, 4, 3, 5))
    with pytest.raises(ValueError, match="groups must be 1 or in_channels=3"):
        FoldedConv2d(3, 4, 2, groups=3)
    with pytest.raises(ValueError, match="groups must be 1 or in_channels=4"):
        FoldedConv2d(4, 8, 2, groups=2)
    with pytest.raises(ValueError, match="size"):
        FoldedConv2d(4, 8, 0)


def test_folded_model_fine_tunes_its_weights_not_its_bias_maps():
    torch.manual_seed(0)
    model = nn.Sequential(PerturbConv2d(2, 4, nmasks=3, input_size=5), MixMaps(4)).eval()
    folded, _ = reparameterize(model)
    folded.train()
    folded(torch.randn(3, 2, 5, 5)).square().sum().backward()
    conv = folded[0]
    assert isinstance(conv, FoldedConv2d) and conv.weight.grad is not None
    assert conv.weight.grad.abs().sum() > 0
    assert dict(conv.named_buffers()).keys() == {"bias"} and not conv.bias.requires_grad
    assert "0.bias" in folded.state_dict()


def test_folded_conv2d_grouped_is_the_grouped_convolution():
    """The addcmul path against ``conv2d(groups=in_channels)``, written out here."""
    torch.manual_seed(0)
    module = FoldedConv2d(3, 6, (4, 5), groups=3).double()
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, module.weight, groups=3) + module.bias
    torch.testing.assert_close(module(x), want, rtol=1e-14, atol=1e-14)


def test_exported_names():
    for name in ("reparameterize", "FoldedConv2d", "FoldReport", "FoldedLayer"):
        assert name in perturbnn.__all__ and hasattr(perturbnn, name)


def test_docs_folding_page_first_block_runs_as_written(tmp_path, monkeypatch):
    """The usage block of docs/folding.md: the folded model matches, the ONNX file is written."""
    pytest.importorskip("onnxscript")
    page = Path(__file__).resolve().parents[1] / "docs" / "folding.md"
    block = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(block, str(page), "exec"), namespace)
    deployed, pnn, x = namespace["deployed"], namespace["pnn"], namespace["x"]
    assert len(namespace["report"].folded) == 19
    with torch.no_grad():
        assert_equal_outputs(deployed(x), pnn(x))
    assert (tmp_path / "pnn-folded.onnx").stat().st_size > 0
