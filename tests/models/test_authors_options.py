"""The two model options of the authors' updated networks: ``freeze_first`` (a fixed random
first convolution) and ``first_layer_type="authors"`` (:class:`AuthorsFirstLayer`).

Source: https://github.com/juefeix/pnn.pytorch.update, commit 2c1604fa, ``models.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perturbnn import MixMaps, NoiseMask, build_model, count_mask_values, count_parameters
from perturbnn.models import AuthorsFirstLayer
from perturbnn.repro.config import RunConfig
from perturbnn.repro.experiments import presets_of
from perturbnn.repro.optim import make_optimizer

RESNETS = [
    ("resnet18", {}),
    ("noiseresnet18", {"first_filter_size": 3}),
    ("noiseresnet18", {}),
    ("noiseresnet34", {}),
    ("perturb_resnet18", {}),
    ("perturb_resnet18", {"first_filter_size": 3, "nmasks": 2}),
    ("perturb_resnet50", {"first_filter_size": 7}),
]


def _build(name: str, **options: object) -> nn.Module:
    return build_model(
        name, nfilters=4, input_size=32, generator=torch.Generator().manual_seed(3), **options
    )


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(("name", "options"), RESNETS)
def test_the_defaults_build_the_same_network(name: str, options: dict) -> None:
    torch.manual_seed(0)
    implicit = _build(name, **options)
    torch.manual_seed(0)
    defaults = {"freeze_first": False}
    if name.startswith("perturb"):
        defaults["first_layer_type"] = "independent"
    explicit = _build(name, **options, **defaults)
    _same(implicit, explicit)
    assert all(p.requires_grad for p in explicit.parameters())
    assert count_parameters(explicit, frozen=True) == 0
    assert "Authors" not in repr(explicit)


# Those with a regular first convolution (noiseresnet's default first_filter_size is 7).
@pytest.mark.parametrize(("name", "options"), [RESNETS[i] for i in (0, 1, 2, 3, 5, 6)])
def test_freeze_first_draws_the_same_weights_and_fixes_only_the_first_convolution(
    name: str, options: dict
) -> None:
    torch.manual_seed(0)
    plain = _build(name, **options)
    torch.manual_seed(0)
    frozen = _build(name, **options, freeze_first=True)
    _same(plain, frozen)  # same initial values: freezing draws nothing
    fixed = [n for n, p in frozen.named_parameters() if not p.requires_grad]
    first = next(n for n, p in frozen.named_parameters() if p.dim() == 4)
    assert fixed == [first]
    weight = dict(frozen.named_parameters())[first]
    assert count_parameters(frozen, frozen=True) == weight.numel()
    assert count_parameters(frozen) == count_parameters(plain) - weight.numel()


def test_a_frozen_first_convolution_gets_no_gradient_and_no_optimizer_update() -> None:
    model = _build("noiseresnet18", first_filter_size=3, freeze_first=True)
    conv, bn = model.stem[0], model.stem[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    before_w, before_bn = conv.weight.detach().clone(), bn.weight.detach().clone()
    optimizer = make_optimizer("Adam", model, lr=1e-2, weight_decay=1e-4)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(conv.weight) not in optimized and id(bn.weight) in optimized
    assert len(optimized) == sum(1 for p in model.parameters()) - 1
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        assert conv.weight.grad is None
        optimizer.step()
    assert torch.equal(conv.weight, before_w)
    assert not torch.equal(bn.weight, before_bn)  # its BatchNorm still trains
    assert "stem.0.weight" in model.state_dict()  # saved with the model, same key


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("perturb_resnet18", {"freeze_first": True}, "freeze_first .* first_filter_size > 0"),
        ("lenet", {"freeze_first": True}, "does not use option 'freeze_first'"),
        ("cifarnet", {"first_layer_type": "authors"}, "does not use option 'first_layer_type'"),
        ("noiseresnet18", {"first_layer_type": "authors"}, "does not use option 'first_layer_type'"),
        ("resnet18", {"first_layer_type": "authors"}, "does not use option 'first_layer_type'"),
        (
            "perturb_resnet18",
            {"first_layer_type": "authors", "first_filter_size": 3},
            "first_layer_type='authors' .* first_filter_size=0, got first_filter_size=3",
        ),
        ("perturb_resnet18", {"first_layer_type": "author"}, "first_layer_type"),
    ],
)
def test_invalid_uses_are_value_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(name, nfilters=4, **options)


def test_a_non_bool_freeze_first_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="freeze_first"):
        build_model("resnet18", freeze_first=1)


def _reference(layer: AuthorsFirstLayer, x: torch.Tensor) -> torch.Tensor:
    """The authors' first layer written out step by step from its modules (training mode)."""
    noise, bn1, _, conv1, bn2, _, conv2, bn3, act = list(layer)
    masks = noise.masks  # [C or 1, nmasks, H, W]
    y = x.unsqueeze(2) + noise.level * masks.unsqueeze(0)  # [B, C, nmasks, H, W]
    y = y.reshape(x.shape[0], -1, *x.shape[2:])  # channel c's copies side by side
    y = torch.sigmoid(bn1(y))
    y = torch.sigmoid(bn2(conv1(y)))
    return act(bn3(conv2(y)))


@pytest.mark.parametrize("unique", [True, False])
def test_authors_first_layer_structure(unique: bool) -> None:
    n, level = 4, 0.1
    layer = AuthorsFirstLayer(
        3, n, input_size=8, level=level, unique_masks=unique,
        generator=torch.Generator().manual_seed(0),
    )
    kinds = [type(m) for m in layer]
    assert kinds == [
        NoiseMask, nn.BatchNorm2d, nn.Sigmoid, nn.Conv2d, nn.BatchNorm2d, nn.Sigmoid,
        nn.Conv2d, nn.BatchNorm2d, nn.ReLU,
    ]
    noise, bn1, _, conv1, bn2, _, conv2, bn3, _ = list(layer)
    assert noise.nmasks == 5 * n and noise.level == pytest.approx(20 * level)
    assert tuple(noise.masks.shape) == (3 if unique else 1, 5 * n, 8, 8)
    assert bn1.num_features == 3 * 5 * n
    assert (conv1.in_channels, conv1.out_channels, conv1.groups) == (15 * n, 3 * n, 3)
    assert conv1.kernel_size == (1, 1) and conv1.bias is not None
    assert bn2.num_features == 3 * n
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size) == (3 * n, n, (1, 1))
    assert conv2.bias is None and bn3.num_features == n
    # The masks are a fixed buffer, not a parameter, uniform in [-1, 1).
    assert any(b is noise.masks for b in layer.buffers())
    assert not any(p is noise.masks for p in layer.parameters())
    assert noise.masks.abs().max() <= 1 and noise.masks.std() > 0.5
    x = torch.randn(2, 3, 8, 8)
    out = layer(x)
    assert out.shape == (2, n, 8, 8)
    torch.testing.assert_close(out, _reference(layer, x))
    assert count_mask_values(layer) == (3 if unique else 1) * 5 * n * 64
    # An optimizer step changes the weights, never the masks.
    masks = noise.masks.clone()
    optimizer = make_optimizer("Adam", layer, lr=0.1)
    layer(x).sum().backward()
    optimizer.step()
    assert torch.equal(noise.masks, masks)


def test_authors_first_layer_mix_maps_uses_the_sigmoid() -> None:
    layer = AuthorsFirstLayer(3, 4, input_size=8, level=0.1, mix_maps=True, act="tanh")
    mix = [m for m in layer if isinstance(m, MixMaps)]
    assert len(mix) == 1 and isinstance(mix[0][2], nn.Sigmoid)
    assert (mix[0][0].in_channels, mix[0][0].out_channels) == (12, 12)
    assert isinstance(layer[-1], nn.Tanh) and isinstance(layer[-3], nn.Conv2d)
    assert layer(torch.randn(2, 3, 8, 8)).shape == (2, 4, 8, 8)


def test_perturb_resnet18_with_the_authors_first_layer() -> None:
    model = build_model(
        "perturb_resnet18", nfilters=8, input_size=32, level=0.1, scale_noise=2.0,
        first_layer_type="authors",
    )
    first = model.stem[0]
    assert isinstance(first, AuthorsFirstLayer)
    assert first.noise.level == pytest.approx(20 * 0.1 * 2.0)
    plain = build_model("perturb_resnet18", nfilters=8, input_size=32, level=0.1)
    # Only the first layer differs: its masks (3 x 40 x 32 x 32 instead of 3 x 1 x 32 x 32)
    # and parameters (BatchNorms of 120, 24 and 8 maps, grouped 1x1 120 -> 24 with bias, 1x1
    # 24 -> 8; the plain first layer: 1x1 3 -> 8 with bias, BatchNorm of 8).
    assert count_mask_values(model) - count_mask_values(plain) == 3 * 40 * 1024 - 3 * 1024
    new = 2 * 120 + (40 * 24 + 24) + 2 * 24 + 24 * 8 + 2 * 8
    old = 3 * 8 + 8 + 2 * 8
    assert count_parameters(model) - count_parameters(plain) == new - old
    lazy = build_model("perturb_resnet18", nfilters=8, level=0.1, first_layer_type="authors")
    assert lazy(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert tuple(lazy.stem[0].noise.masks.shape) == (3, 40, 16, 16)


@pytest.mark.parametrize(("name", "width"), [("authors-first3", 16), ("authors-all-layers", 32)])
def test_authors_presets_build_their_networks_and_train_a_step(name: str, width: int) -> None:
    assert name in presets_of("authors")
    config = RunConfig.from_experiment(name, nfilters=width)
    torch.manual_seed(0)
    model = build_model(
        config.net_type, **config.model_config(in_channels=3, input_size=32, num_classes=10)
    )
    optimizer = make_optimizer(config.optim_method, model, lr=config.learning_rate)
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    first = model.stem[0]
    if name == "authors-first3":
        assert isinstance(first, nn.Conv2d) and config.freeze_first
        assert not first.weight.requires_grad and first.weight.grad is None
        assert count_parameters(model, frozen=True) == 3 * 3 * 3 * width
    else:
        assert isinstance(first, AuthorsFirstLayer) and config.first_layer_type == "authors"
        assert first.noise.level == pytest.approx(20 * config.level)
        assert all(p.grad is not None for p in model.parameters())


# docs/models.md's table (10 classes, 32x32): parameters, frozen parameters, mask values.
SOURCE_SCALE = [
    ("noiseresnet18", {"nfilters": 128, "first_filter_size": 3}, 5_624_714, 0, 1_097_728),
    (
        "noiseresnet18",
        {"nfilters": 128, "first_filter_size": 3, "freeze_first": True},
        5_621_258,
        3_456,
        1_097_728,
    ),
    ("perturb_resnet18", {"nfilters": 256, "nmasks": 1}, 22_357_514, 0, 2_198_528),
    (
        "perturb_resnet18",
        {"nfilters": 256, "nmasks": 1, "first_layer_type": "authors"},
        23_546_122,
        0,
        6_127_616,
    ),
]


@pytest.mark.parametrize(("name", "options", "parameters", "frozen", "masks"), SOURCE_SCALE)
def test_source_scale_counts(
    name: str, options: dict, parameters: int, frozen: int, masks: int
) -> None:
    model = build_model(name, device="meta", input_size=32, level=0.1, **options)
    assert count_parameters(model) == parameters
    assert count_parameters(model, frozen=True) == frozen
    assert count_mask_values(model) == masks
