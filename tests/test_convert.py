"""perturbnn.convert on torchvision networks and on small models that hit every skip reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import assert_identical, snapshot
from perturbnn import MixMaps, PerturbConv2d, convert


def conv_modules(model):
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]


TORCHVISION = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_torchvision_models_convert_run_and_report(arch, size):
    torch.manual_seed(0)
    original = TORCHVISION[arch]()
    snap = snapshot(original)
    found = conv_modules(original)
    converted, report = convert(original, nmasks=2 if arch == "resnet18" else 1, use_act=True)

    assert [layer.name for layer in report.layers] == [name for name, _ in found]
    replaced = [m for m in converted.modules() if isinstance(m, PerturbConv2d)]
    assert len(report.replaced) == len(replaced) > 0
    assert len(report.replaced) + len(report.skipped) == len(found)
    assert report.skipped[0].reason == "first convolution (keep_first=True)"
    originals = dict(found)
    for layer in report.skipped:  # untouched: same class, same weights
        module = converted.get_submodule(layer.name)
        assert type(module) is type(originals[layer.name])
        assert torch.equal(module.weight, originals[layer.name].weight)
    for layer in report.replaced:
        assert isinstance(converted.get_submodule(layer.name), PerturbConv2d)
    assert report.parameters_before == sum(p.numel() for p in original.parameters())
    assert report.parameters_after == sum(p.numel() for p in converted.parameters())
    assert report.mask_values() == 0  # lazy until the first forward

    x = torch.randn(2, 3, size, size, requires_grad=True)
    out = converted(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(m.weight.grad is not None for m in replaced)
    assert all(m.input_size is not None for m in replaced)
    assert report.mask_values() == sum(m.noise.masks.numel() for m in replaced) > 0
    assert_identical(original, snap)  # inplace=False: the original is bit-identical
    text = str(report)
    assert all(layer.name in text for layer in report.layers)
    assert f"{len(report.replaced)} of {len(found)} convolutions replaced" in text


def test_mobilenet_skips_depthwise_and_fanout_mismatches():
    _, report = convert(torchvision.models.mobilenet_v2(weights=None), nmasks=2)
    reasons = {layer.reason.split(" (")[0].split("=")[0] for layer in report.skipped}
    assert "depthwise convolution" in reasons
    assert "out_channels" in reasons  # e.g. 32 -> 16 channels cannot be grouped by input


class Zoo(nn.Module):
    """One convolution per skip reason, and strided ones that must keep the output size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.strided = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.wide = nn.Conv2d(8, 8, 5, stride=3, padding=2)
        self.down = nn.Conv2d(8, 8, 1, stride=2)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.valid = nn.Conv2d(8, 8, 3)
        self.uneven = nn.Conv2d(8, 8, 3, stride=(2, 1), padding=1)
        self.same = nn.Conv2d(8, 6, 3, padding="same")
        self.up = nn.ConvTranspose2d(6, 6, 2, stride=2)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x


def test_every_skip_reason_and_output_sizes():
    model = Zoo()
    converted, report = convert(model, nmasks=2)
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert reasons["stem"].startswith("first convolution")
    assert reasons["strided"] == reasons["wide"] == reasons["down"] == ""
    assert reasons["grouped"] == "grouped convolution (groups=2)"
    assert reasons["dilated"].startswith("dilation")
    assert reasons["valid"].startswith("padding (0, 0) with kernel (3, 3) changes the map size")
    assert reasons["uneven"].startswith("unequal strides")
    assert reasons["same"].startswith("out_channels=6 not a multiple of in_channels=8")
    assert reasons["up"] == "transposed convolution"
    assert converted.strided.stride == 2 and converted.strided.bias is None
    assert converted.wide.stride == 3 and converted.wide.bias is not None
    for size in [(47, 61), (64, 64)]:  # one size per converted model: the masks are fixed
        converted, _ = convert(model, nmasks=2)
        x = torch.randn(2, 3, *size)
        assert converted(x).shape == model(x).shape


def test_include_exclude_keep_first_mix_maps_and_inplace():
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
    )
    _, report = convert(model, keep_first=False, include="0")
    assert [layer.replaced for layer in report.layers] == [True, False]
    assert report.layers[1].reason == "not matched by include"
    _, report = convert(model, keep_first=False, exclude=["2", "2*"])
    assert [layer.replaced for layer in report.layers] == [True, False]
    assert report.layers[1].reason == "matched by exclude pattern '2'"
    converted, _ = convert(model, mix_maps=True)
    assert isinstance(converted[2], nn.Sequential)
    assert isinstance(converted[2][0], PerturbConv2d) and isinstance(converted[2][1], MixMaps)
    same, report = convert(model, inplace=True)
    assert same is model and isinstance(model[2], PerturbConv2d)
    single, report = convert(nn.Conv2d(3, 6, 3, padding=1), keep_first=False)
    assert isinstance(single, PerturbConv2d) and report.layers[0].name == ""


def test_generator_makes_the_conversion_reproducible():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1))
    x = torch.randn(1, 3, 5, 5)
    outs = []
    for _ in range(2):
        torch.manual_seed(1)  # the 1x1 weights come from the global RNG
        converted, _ = convert(model, nmasks=3, generator=torch.Generator().manual_seed(7))
        torch.manual_seed(2 + len(outs))  # the masks must not: a different global state
        outs.append(converted(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nmasks": 0}, ValueError, "^nmasks must be"),
        ({"level": -1.0}, ValueError, "^level must be"),
        ({"noise_type": "gauss"}, ValueError, "^noise_type must be"),
        ({"include": 3}, TypeError, "^include must be"),
        ({"include": "nothing.*"}, ValueError, r"^include pattern 'nothing\.\*' matches no "),
        ({"include": ["1", "layer4"]}, ValueError, r"^include pattern 'layer4' .*'0', '1'"),
        ({"exclude": ["0", "9*"]}, ValueError, r"^exclude pattern '9\*' matches no "),
        ({"exclude": [1]}, TypeError, "^exclude must be"),
        ({"inplace": 1}, TypeError, "^inplace must be"),
        ({"generator": 0}, TypeError, "^generator must be"),
        ({"use_act": 1}, TypeError, "^use_act must be"),
        ({"mix_maps": "yes"}, TypeError, "^mix_maps must be"),
        ({"unique_masks": None}, TypeError, "^unique_masks must be"),
        ({"keep_first": 0}, TypeError, "^keep_first must be"),
    ],
)
def test_bad_options_raise_before_any_change(kwargs, error, match):
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1))
    snap = snapshot(model)
    with pytest.raises(error, match=match):  # names that very argument
        convert(model, **{"inplace": True, **kwargs})
    assert_identical(model, snap)
    with pytest.raises(TypeError) as info:
        convert("resnet18")  # type: ignore[arg-type]
    assert str(info.value) == "model must be a torch.nn.Module, got str"
    with pytest.raises(TypeError) as info:
        convert(model, generator=0)
    assert str(info.value) == "generator must be a torch.Generator or None, got int"


def test_size_mismatch_names_the_layer_and_the_image_size():
    model, _ = convert(torchvision.models.resnet18(weights=None, num_classes=10))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
        with pytest.raises(ValueError, match=r"^layer1\.0\.conv1: input spatial size") as info:
            model(torch.randn(1, 3, 40, 40))
    message = str(info.value)
    assert "(10, 10) differs from the masks' size (8, 8)" in message
    assert "size of the images fed to the network" in message
    layer = PerturbConv2d(3, 6)  # not converted: no name, the same explanation
    layer(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"^input spatial size \(6, 6\) differs"):
        layer(torch.randn(1, 3, 6, 6))


def test_converted_resnet18_trains_on_cifar10(data_dir):
    data = np.load(data_dir / "cifar10" / "cifar10_train_1.npz")
    images = torch.from_numpy(data["images"][:256]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    images = (images - mean) / std
    labels = torch.from_numpy(data["labels"][:256])
    torch.manual_seed(0)
    model, _ = convert(
        torchvision.models.resnet18(weights=None, num_classes=10),
        generator=torch.Generator().manual_seed(0),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def full_loss():
        with torch.no_grad():
            return F.cross_entropy(model(images), labels).item()

    start = full_loss()
    for _ in range(3):
        for batch in range(0, 256, 64):
            loss = F.cross_entropy(model(images[batch : batch + 64]), labels[batch : batch + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    end = full_loss()
    assert end < 0.8 * start, (start, end)


@pytest.mark.slow
def test_docs_convert_page_runs_as_written(data_dir, tmp_path, monkeypatch):
    """Every Python block of docs/convert.md, in order: convert, train on CIFAR-10, export with a
    dynamic batch; the saved ONNX graph then runs at batch 4 within 1e-4 of eager."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    page = Path(__file__).resolve().parents[1] / "docs" / "convert.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.setenv("PERTURBNN_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    pnn = namespace["pnn"]
    assert not pnn.training
    session = ort.InferenceSession(str(tmp_path / "pnn.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(4, 3, 32, 32)
    (out,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), pnn(images), rtol=1e-4, atol=1e-4)


def test_report_table_and_fields_written_out():
    """The report's table, checked against text written out by hand, before and after a forward."""
    model = nn.Sequential(
        nn.Conv2d(3, 40, 3, padding=1),  # 3*40*9 + 40 = 1,120 parameters, kept (the stem)
        nn.Conv2d(40, 80, 3, stride=2, padding=1, bias=False),  # 28,800; replaced: 80*2 = 160
        nn.ConvTranspose2d(80, 8, 2, stride=(2, 1)),  # 80*8*2*2 + 8 = 2,568, kept
    )
    converted, report = convert(model, nmasks=2)
    expected = [
        "perturbnn.convert: 1 of 3 convolutions replaced, 2 skipped",
        "name  layer            in  out  kernel  stride  params  after  action",
        "0     Conv2d           3   40   3x3     1x1     1,120   1,120  "
        "skipped: first convolution (keep_first=True)",
        "1     Conv2d           40  80   3x3     2x2     28,800  160    replaced",
        "2     ConvTranspose2d  80  8    2x2     2x1     2,568   2,568  "
        "skipped: transposed convolution",
        "trainable parameters: 32,488 -> 3,848; noise-mask values: 0 "
        "(1 layers draw theirs on the first forward)",
    ]
    assert str(report).split("\n") == expected
    converted(torch.randn(1, 3, 6, 5))  # the masks: 40 channels x 2 masks x 6 x 5 = 2,400
    expected[-1] = "trainable parameters: 32,488 -> 3,848; noise-mask values: 2,400"
    assert str(report).split("\n") == expected
    first, replaced, transposed = report.layers
    assert (replaced.kind, replaced.in_channels, replaced.out_channels) == ("Conv2d", 40, 80)
    assert (transposed.kind, transposed.in_channels, transposed.out_channels) == (
        "ConvTranspose2d",
        80,
        8,
    )
    assert (first.masks_per_pixel, replaced.masks_per_pixel, transposed.masks_per_pixel) == (
        0,
        40 * 2,
        0,
    )
    _, shared = convert(model, nmasks=3, unique_masks=False)
    assert shared.layers[1].masks_per_pixel == 3
    _, whole = convert(nn.Conv2d(3, 6, 3, padding=1), keep_first=False)
    assert str(whole).split("\n")[2].startswith("(model)  Conv2d  3   6    3x3")


def test_defaults_and_options_reach_the_replacement():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 12, 3, padding=1))
    default = convert(model)[0][1]
    assert (default.nmasks, default.level, default.use_act) == (1, 0.1, False)
    assert default.noise.unique_masks and default.noise.noise_type == "uniform"
    layer = convert(
        model, nmasks=2, level=0.3, use_act=True, unique_masks=False, noise_type="normal"
    )[0][1]
    assert (layer.nmasks, layer.level, layer.use_act) == (2, 0.3, True)
    assert not layer.noise.unique_masks and layer.noise.noise_type == "normal"
    doubles = convert(model.double(), mix_maps=True)[0]
    assert {p.dtype for p in doubles.parameters()} == {torch.float64}
    on_meta = convert(model.to("meta"), mix_maps=True)[0]
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}


def test_skip_reasons_at_the_edges():
    """Exact reasons for the cases next to a boundary; what nmasks == 1 allows."""

    def reason(conv, nmasks=1):
        return convert(nn.Sequential(conv), keep_first=False, nmasks=nmasks)[1].layers[0].reason

    assert reason(nn.LazyConv2d(4, 3, padding=1)) == (
        "lazy convolution not yet run (in_channels unknown)"
    )
    assert reason(nn.Conv2d(4, 4, 3, padding="valid")) == (
        "padding valid with kernel (3, 3) changes the map size; a perturbation layer keeps it"
    )
    assert reason(nn.Conv2d(4, 4, 2, padding=1)).startswith("padding (1, 1) with kernel (2, 2)")
    assert reason(nn.Conv2d(8, 6, 3, padding=1)) == ""  # one mask: a dense 1x1 convolution
    assert reason(nn.Conv2d(8, 6, 3, padding=1), nmasks=2).startswith("out_channels=6")
    int_padding = nn.Conv2d(4, 4, 3)
    int_padding.padding = 1  # an int, as F.conv2d accepts
    assert reason(int_padding) == ""


def test_a_lazy_convolution_not_yet_run_is_reported_not_a_crash():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LazyConv2d(6, 3, padding=1))
    converted, report = convert(model)
    assert report.layers[1].reason == "lazy convolution not yet run (in_channels unknown)"
    assert report.layers[1].parameters_before == report.layers[1].parameters_after == 0
    assert report.parameters_before == report.parameters_after == 3 * 4 * 9 + 4
    assert converted(torch.randn(1, 3, 5, 5)).shape == (1, 6, 5, 5)


@pytest.mark.parametrize("count", [0, 6, 7])
def test_unmatched_pattern_message_lists_at_most_six_convolutions(count):
    model = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1) for _ in range(count)], nn.Flatten())
    names = ", ".join(repr(str(i)) for i in range(min(count, 6))) or "none"
    more = f", ... ({count} in all)" if count > 6 else ""
    with pytest.raises(ValueError) as info:
        convert(model, include="typo*")
    assert str(info.value) == (
        "include pattern 'typo*' matches no convolution's module name (fnmatch on the full "
        f"name, e.g. 'layer4.*'); the model's convolutions: {names}{more}"
    )


@pytest.mark.parametrize("mix_maps", [False, True])
def test_each_replacement_knows_its_own_qualified_name(mix_maps):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    converted, _ = convert(model, keep_first=False, mix_maps=mix_maps)
    layers = {n: m for n, m in converted.named_modules() if isinstance(m, PerturbConv2d)}
    assert sorted(layers) == (["0.0", "1.0"] if mix_maps else ["0", "1"])
    assert all(layer.noise.module_name == name for name, layer in layers.items())


def test_trainable_masks_already_in_the_model_are_not_counted_as_parameters():
    layer = PerturbConv2d(3, 4, 1, input_size=4, level=0.1, train_masks=True)
    model = nn.Sequential(layer, nn.Conv2d(4, 4, 1))
    _, report = convert(model, keep_first=False)
    masks = layer.noise.masks.numel()
    assert report.parameters_before == sum(p.numel() for p in model.parameters()) - masks
