"""The PyTorch tool chain on every public layer and builder, at small widths.

torch.compile, torch.export, ONNX (onnxruntime), bfloat16 autocast, channels_last, float64,
torch.func.functional_call, deepcopy, pickle, DDP; lazy modules before and after their first
forward. Each check compares against the eager float32 output of the same module.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch._dynamo
import torch.distributed as dist
from torch import nn
from torch.func import functional_call
from torch.nn.parameter import is_lazy

from perturbnn import (
    MixMaps,
    NoiseMask,
    PerturbBottleneck,
    PerturbConv2d,
    PerturbLayer,
    build_model,
    convert,
    list_models,
)


def _builder_options(name: str) -> dict:
    if name.startswith("perturb") or name in ("lenet", "cifarnet"):
        return {"nfilters": 3, "nmasks": 2}  # fanout > 1 through every perturbation layer
    return {"nfilters": 2}


def _converted() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    return convert(net, nmasks=2, use_act=True, generator=torch.Generator().manual_seed(0))[0]


# name -> (factory, input shape). Layers are lazy (input_size=None) unless stated.
LAYERS = {
    "NoiseMask": (lambda: NoiseMask(3, 2, level=0.3), (2, 3, 6, 7)),
    "PerturbConv2d": (lambda: PerturbConv2d(3, 6, level=0.3), (2, 3, 6, 7)),
    "PerturbConv2d-act-fanout-stride": (
        lambda: PerturbConv2d(3, 6, 2, level=0.3, use_act=True, stride=2),
        (2, 3, 7, 6),
    ),
    "PerturbConv2d-trained-masks": (
        lambda: PerturbConv2d(3, 6, 2, level=0.3, train_masks=True),
        (2, 3, 5, 7),
    ),
    "PerturbConv2d-avg-sized": (
        lambda: PerturbConv2d(3, 6, 2, input_size=(6, 7), stride=3, pool_type="avg"),
        (2, 3, 6, 7),
    ),
    "MixMaps": (lambda: MixMaps(3), (2, 3, 5, 5)),
    "PerturbLayer": (lambda: PerturbLayer(3, 6, 2, use_act=True, mix_maps=True), (2, 3, 6, 6)),
    "PerturbBottleneck": (lambda: PerturbBottleneck(8, 2, stride=2, nmasks=2), (2, 8, 8, 8)),
    "convert": (_converted, (2, 3, 9, 9)),
}
BUILDERS = {
    name: ((lambda name=name: build_model(name, **_builder_options(name))), (2, 3, 32, 32))
    for name in list_models()
}
CASES = {**LAYERS, **BUILDERS}
ALL = sorted(CASES)


def make(name: str, materialize: bool = True):
    """The module in eval mode (fixed BatchNorm and dropout), its input and eager output."""
    factory, shape = CASES[name]
    torch.manual_seed(0)
    module = factory().eval()
    x = torch.randn(shape)
    if not materialize:
        return module, x, None
    with torch.no_grad():
        y = module(x)
    return module, x, y


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# torch.compile with the default backend (inductor), as users call it, for every layer and
# builder. Inductor generates C++ kernels: with a cold cache on 2 cores, 6 s (lenet) to 38 s
# (noiseresnet101) per builder, 212 s for the 11 builders and 37 s for the layers.
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_compile_matches_eager(name):
    torch._dynamo.reset()  # a fresh cache: no silent fallback to eager after recompile limits
    module, x, y = make(name)
    compiled = torch.compile(module, fullgraph=False)
    with torch.no_grad():
        close(compiled(x), y, 1e-5)


@pytest.mark.parametrize(
    "name", ["PerturbConv2d-act-fanout-stride", "PerturbConv2d-trained-masks", "PerturbLayer"]
)
def test_compile_before_materialization(name):
    torch._dynamo.reset()
    module, x, _ = make(name, materialize=False)
    compiled = torch.compile(module)
    with torch.no_grad():
        first = compiled(x)  # the lazy masks are drawn during compilation's first call
        close(first, module(x), 1e-5)
        close(compiled(x), first, 1e-5)


@pytest.mark.parametrize("name", ALL)
def test_torch_export(name):
    module, x, y = make(name)
    program = torch.export.export(module, (x,))
    with torch.no_grad():
        close(program.module()(x), y, 1e-5)


ONNX = [
    "PerturbConv2d",
    "PerturbConv2d-act-fanout-stride",
    "PerturbConv2d-avg-sized",
    "PerturbLayer",
    "PerturbBottleneck",
    "convert",
    "perturb_resnet18",
    "noiseresnet18",
    "perturb_resnet50",
    "lenet",
]


@pytest.mark.parametrize("name", ONNX)
def test_onnx_export_runs_in_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    module, x, y = make(name)
    program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    close(torch.from_numpy(out), y, 1e-4)


def _export(module: nn.Module, x: torch.Tensor, exporter: str) -> None:
    if exporter == "export":
        torch.export.export(module, (x,))
    elif exporter == "export-strict":
        torch.export.export(module, (x,), strict=True)
    elif exporter == "onnx-dynamo":
        pytest.importorskip("onnxscript")
        torch.onnx.export(module, (x,), dynamo=True, verbose=False)
    elif exporter == "onnx-torchscript":
        torch.onnx.export(module, (x,), io.BytesIO(), dynamo=False)
    else:
        torch.jit.trace(module, (x,))


@pytest.mark.parametrize(
    "exporter", ["export", "export-strict", "onnx-dynamo", "onnx-torchscript", "jit-trace"]
)
@pytest.mark.parametrize(
    "name",
    [
        "NoiseMask",
        "PerturbConv2d-trained-masks",
        "PerturbLayer",
        "convert",
        "lenet",
        "perturb_resnet18",
    ],
)
def test_export_before_first_forward_is_refused_and_leaves_the_module_usable(name, exporter):
    """Exporting lazy masks is a clear error at export time; a forward then works as usual."""
    module, x, _ = make(name, materialize=False)
    untouched = copy.deepcopy(module)
    # Trainable lazy masks and lenet's nn.LazyLinear head are UninitializedParameters: the
    # non-strict exporters refuse those themselves, with torch's message, before any forward.
    message = (
        "run one forward pass on a real input|Call `forward` with a dummy batch"
        "|uninitialized parameters .* forget to run a forward pass"
    )
    with pytest.raises((RuntimeError, ValueError), match=message):
        _export(module, x, exporter)
    masks = [m for m in module.modules() if isinstance(m, NoiseMask)]
    assert masks and all(m.input_size is None for m in masks)
    assert all(is_lazy(m.masks) or m.masks.numel() == 0 for m in masks)
    with torch.no_grad():
        torch.manual_seed(1)
        out = module(x)
        torch.manual_seed(1)
        close(out, untouched(x), 0.0)
    assert all(m.input_size is not None and m.masks.numel() > 0 for m in masks)


@pytest.mark.parametrize("name", ["convert", "perturb_resnet18"])
def test_onnx_export_with_a_dynamic_batch(name):
    """The export of docs/convert.md: a graph exported at batch 2 runs at batch 4 and 1."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    module, x, _ = make(name)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        module, (x,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False
    )
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for size in (4, 1):
        images = torch.randn(size, *x.shape[1:])
        (out,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        with torch.no_grad():
            close(torch.from_numpy(out), module(images), 1e-4)


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_autocast_on_cpu(name):
    module, x, y = make(name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert torch.isfinite(out).all()
    error = (out.float() - y).norm() / y.norm()
    assert error < 0.05, error


@pytest.mark.parametrize("name", ALL)
def test_channels_last_float64_functional_call_copies(name):
    module, x, y = make(name)
    with torch.no_grad():
        last = copy.deepcopy(module).to(memory_format=torch.channels_last)
        close(last(x.contiguous(memory_format=torch.channels_last)), y, 1e-5)

        double = copy.deepcopy(module).double()
        out64 = double(x.double())
        assert out64.dtype == torch.float64
        close(out64.float(), y, 1e-4)

        state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        assert torch.equal(functional_call(module, state, (x,)), y)
        if any(True for _ in module.parameters()):
            doubled = {
                k: 2 * v if k in dict(module.named_parameters()) else v for k, v in state.items()
            }
            assert not torch.equal(functional_call(module, doubled, (x,)), y)

        assert torch.equal(copy.deepcopy(module)(x), y)
        assert torch.equal(pickle.loads(pickle.dumps(module))(x), y)
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), y)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_copies_before_materialization(name):
    module, x, _ = make(name, materialize=False)
    copies = [copy.deepcopy(module), pickle.loads(pickle.dumps(module))]
    with torch.no_grad():
        outs = [m(x) for m in copies]
    assert all(o.shape == outs[0].shape for o in outs)


@pytest.fixture
def process_group():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("materialize", [False, True])
def test_ddp_before_and_after_materialization(process_group, materialize):
    """DDP wraps a lazy or a materialized network and trains it as the plain network does."""
    torch.manual_seed(0)
    seeds = [torch.Generator().manual_seed(s) for s in (1, 2)]  # masks independent of timing
    net = nn.Sequential(
        PerturbConv2d(3, 6, 2, use_act=True, stride=2, generator=seeds[0]),
        nn.ReLU(),
        PerturbConv2d(6, 4, generator=seeds[1]),
    )
    x = torch.randn(4, 3, 9, 11)
    if materialize:
        net(x)
    reference = copy.deepcopy(net)
    ddp = nn.parallel.DistributedDataParallel(net)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ddp, reference)]
    for _ in range(3):
        for model, optimizer in zip((ddp, reference), optimizers):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    assert net[0].input_size == (9, 11) and net[2].input_size == (5, 6)
    for a, b in zip(net.state_dict().values(), reference.state_dict().values()):
        close(a, b, 1e-6)
    with torch.no_grad():
        assert ddp(x).shape == (4, 4, 5, 6)
