"""Model builders: Klachko's parameter table, shapes on CIFAR and MNIST sizes, registry, errors."""

from __future__ import annotations

import pytest
import torch

import perturbnn
from perturbnn import build_model, count_mask_values, count_parameters, list_models

# Seed experiments (noise level 0.5, 10 classes, 32x32 input, unique masks unless stated):
# (builder, options, trainable parameters excluding masks, noise-mask values). The last three
# rows are parameter counts measured on Klachko's own models.py (issue "Faithful to Klachko");
# their mask values are sum(C * nmasks * H * W) over the perturbation layers.
PARAMETER_TABLE = [
    # lenet: 3 perturbation layers of 64 maps at 32, 16, 8 pixels (masks 3*1024 + 64*256 + 64*64).
    ("lenet", {"nfilters": 64, "first_filter_size": 0, "filter_size": 0}, 141_706, 23_552),
    ("cifarnet", {"nfilters": 64, "first_filter_size": 3, "filter_size": 3}, 452_298, 0),
    # One PReLU slope per PerturbLayer, shared after the noise, after BatchNorm and in mix_maps.
    (
        "perturb_resnet18",
        {
            "nfilters": 8,
            "first_filter_size": 3,
            "filter_size": 0,
            "nmasks": 4,
            "unique_masks": True,
            "mix_maps": True,
            "act": "prelu",
        },
        30_371,
        274_432,
    ),
    ("resnet18", {"nfilters": 44}, 5_284_982, 0),
    ("noiseresnet18", {"nfilters": 128, "first_filter_size": 7}, 5_640_074, 68_608),
    ("noiseresnet18", {"nfilters": 128, "first_filter_size": 3}, 5_624_714, 1_097_728),
    ("perturb_resnet18", {"nfilters": 128, "first_filter_size": 3, "filter_size": 1}, 5_611_146, 0),
    (
        "perturb_resnet18",
        {"nfilters": 128, "first_filter_size": 0, "filter_size": 0, "nmasks": 1},
        5_608_202,
        1_100_800,
    ),
    (
        "perturb_resnet18",
        {"nfilters": 128, "first_filter_size": 3, "filter_size": 0, "nmasks": 64, "mix_maps": True},
        6_813_834,
        70_254_592,
    ),
    (
        "perturb_resnet18",
        {
            "nfilters": 128,
            "first_filter_size": 3,
            "filter_size": 0,
            "nmasks": 64,
            "unique_masks": False,
        },
        1_220_234,
        412_672,
    ),
    (
        "perturb_resnet18",
        {
            "nfilters": 128,
            "first_filter_size": 3,
            "filter_size": 0,
            "nmasks": 64,
            "unique_masks": False,
            "train_masks": True,
        },
        1_220_234,
        412_672,
    ),
]


@pytest.mark.parametrize("classes", ["num_classes", "nclasses"])  # the name, and its alias
@pytest.mark.parametrize(("name", "options", "parameters", "mask_values"), PARAMETER_TABLE)
def test_seed_parameter_table(name, options, parameters, mask_values, classes):
    model = build_model(name, level=0.5, input_size=32, device="meta", **{classes: 10}, **options)
    assert count_parameters(model) == parameters
    assert count_mask_values(model) == mask_values
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected_trainable = parameters + (mask_values if options.get("train_masks") else 0)
    assert trainable == expected_trainable


def test_list_models():
    assert list_models() == [
        "cifarnet",
        "lenet",
        "noiseresnet101",
        "noiseresnet152",
        "noiseresnet18",
        "noiseresnet34",
        "noiseresnet50",
        "perturb_resnet18",
        "perturb_resnet34",
        "perturb_resnet50",
        "resnet18",
    ]
    for name in list_models():
        assert getattr(perturbnn, name) is not None


CIFAR_SHAPE_CASES = [
    ("resnet18", {}),
    ("noiseresnet18", {"first_filter_size": 3}),
    ("noiseresnet18", {}),
] + [
    (name, {"first_filter_size": k})
    for name in ("perturb_resnet18", "cifarnet", "lenet")
    for k in (0, 3, 7)
]


@pytest.mark.parametrize(("name", "options"), CIFAR_SHAPE_CASES)
def test_shapes_cifar(name, options):
    model = build_model(name, nfilters=6, nclasses=7, **options)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_noiseresnet18_needs_a_regular_first_layer():
    with pytest.raises(ValueError, match="first_filter_size must be 3 or 7"):
        build_model("noiseresnet18", first_filter_size=0)


@pytest.mark.parametrize("name", ["cifarnet", "lenet"])
@pytest.mark.parametrize("nmasks", [1, 3])
def test_shapes_mnist(name, nmasks):
    model = build_model(name, nfilters=4, nmasks=nmasks, in_channels=1, input_size=28)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", ["noiseresnet18", "perturb_resnet18"])
def test_unservable_input_size_is_a_construction_error(name):
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model(name, nfilters=4, in_channels=1, input_size=28)


@pytest.mark.parametrize("name", ["cifarnet", "lenet"])
def test_too_small_input_is_a_construction_error(name):
    with pytest.raises(ValueError, match="at least 8 pixels"):
        build_model(name, nfilters=4, input_size=6)


def test_fanout_mix_maps_and_first_layer_noise_scaling():
    model = build_model(
        "perturb_resnet18", nfilters=6, nmasks=4, level=0.2, scale_noise=3.0, mix_maps=True
    )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    masks = [m for m in model.modules() if isinstance(m, perturbnn.NoiseMask)]
    assert masks[0].level == pytest.approx(0.6)
    assert all(m.level == pytest.approx(0.2) for m in masks[1:])
    assert all(m.nmasks == 4 for m in masks)


def test_first_layer_fanout_needs_nfilters_multiple_of_channels():
    with pytest.raises(ValueError, match="nfilters must be a multiple of in_channels=3"):
        build_model("perturb_resnet18", nfilters=128, nmasks=64, first_filter_size=0)


def test_use_act_only_in_first_layer_option():
    model = build_model("lenet", nfilters=4, use_act=False)
    convs = [m for m in model.modules() if isinstance(m, perturbnn.PerturbConv2d)]
    assert [c.use_act for c in convs] == [False, True, True]
    model = build_model("lenet", nfilters=4, use_act=True)
    assert all(c.use_act for c in model.modules() if isinstance(c, perturbnn.PerturbConv2d))


def test_same_generator_seed_same_model_masks():
    def masks(seed):
        model = build_model(
            "lenet", nfilters=4, input_size=32, generator=torch.Generator().manual_seed(seed)
        )
        return [b for n, b in model.named_buffers() if n.endswith("masks")]

    first, again, other = masks(1), masks(1), masks(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize(
    ("name", "options", "exception", "match"),
    [
        ("resnet19", {}, ValueError, "did you mean 'resnet18'"),
        ("lenet", {"nfilter": 4}, TypeError, "unknown option"),
        ("lenet", {"pool_type": "min"}, ValueError, "pool_type"),
        ("lenet", {"act": "swish"}, ValueError, "act"),
        ("lenet", {"noise_type": "poisson"}, ValueError, "noise_type"),
        ("lenet", {"level": -1.0}, ValueError, "level"),
        ("lenet", {"dropout": 1.0}, ValueError, "dropout"),
        ("lenet", {"filter_size": 7}, ValueError, "filter_size"),
        ("lenet", {"nfilters": 0}, ValueError, "nfilters"),
        ("resnet18", {"nmasks": 4}, ValueError, "does not use option 'nmasks'"),
        (
            "perturb_resnet18",
            {"nfilters": 4, "nmasks": 2, "filter_size": 0, "first_filter_size": 3, "dropout": 0.1},
            ValueError,
            "dropout",
        ),
    ],
)
def test_builder_errors(name, options, exception, match):
    with pytest.raises(exception, match=match):
        build_model(name, **options)


@pytest.mark.parametrize("name", list_models())
def test_every_builder_takes_num_classes_and_its_alias_nclasses(name):
    builder = getattr(perturbnn, name)
    for options in ({"num_classes": 7}, {"nclasses": 7}, {"num_classes": 7, "nclasses": 7}):
        model = builder(nfilters=4, input_size=32, device="meta", **options)
        assert model.config.num_classes == model.config.nclasses == 7
        heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert heads[-1].out_features == 7
    with pytest.raises(ValueError, match=r"num_classes=7 and nclasses=5") as info:
        builder(nfilters=4, num_classes=7, nclasses=5)
    assert "give one of them" in str(info.value)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        build_model(name, num_classes=0)
    with pytest.raises(TypeError, match="num_classes must be a positive int, got str"):
        build_model(name, num_classes="10")


def test_build_model_with_timm_and_torchvision_keyword():
    model = build_model("perturb_resnet18", num_classes=10, nfilters=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("lenet", num_classes=3, nfilters=4)(torch.randn(2, 3, 32, 32)).shape == (
        2,
        3,
    )


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("num_clases", "num_classes"), ("nmask", "nmasks"), ("first-filter-size", "first_filter_size")],
)
def test_unknown_builder_option_is_a_type_error_with_a_guess(typo, meant):
    with pytest.raises(TypeError, match=rf"unknown option\(s\) \['{typo}'\]") as info:
        build_model("perturb_resnet18", **{typo: 1})
    assert f"did you mean '{meant}'?" in str(info.value)
    with pytest.raises(TypeError) as info:
        build_model("perturb_resnet18", colour=1)
    assert "did you mean" not in str(info.value) and "valid options:" in str(info.value)


def test_resnet18_says_it_is_the_cifar_variant():
    assert "CIFAR" in perturbnn.resnet18.__doc__.splitlines()[0]
    assert "not torchvision's ImageNet" in list_models.__doc__
    model = build_model("resnet18", nfilters=4)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())  # no stem pool
    conv = model.stem[0]
    assert (conv.kernel_size, conv.stride) == ((3, 3), (1, 1))


def test_builder_dtype_and_device_factory_kwargs():
    model = build_model("lenet", nfilters=4, dtype=torch.float64)
    assert all(
        t.dtype == torch.float64 for t in model.state_dict().values() if t.is_floating_point()
    )
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


# Deeper ResNets (defaults: nfilters 64, level 0.5; perturb_* with first_filter_size 7):
# (builder, trainable parameters and mask values for 10 classes at 32x32, the same for 1000
# classes at 224x224). The same numbers are in docs/models.md.
DEEP_TABLE = [
    ("noiseresnet34", 2_568_266, 59_904, 3_076_136, 2_935_296),
    ("noiseresnet50", 13_480_074, 38_912, 15_508_584, 1_906_688),
    ("noiseresnet101", 23_572_362, 56_320, 25_600_872, 2_759_680),
    ("noiseresnet152", 31_887_498, 77_824, 33_916_008, 3_813_376),
    ("perturb_resnet34", 2_554_058, 59_904, 3_061_928, 2_935_296),
    ("perturb_resnet50", 13_472_522, 38_912, 15_501_032, 1_906_688),
]


@pytest.mark.parametrize(("name", "cifar", "cifar_masks", "imagenet", "imagenet_masks"), DEEP_TABLE)
def test_deep_parameter_table(name, cifar, cifar_masks, imagenet, imagenet_masks):
    extra = {"first_filter_size": 7} if name.startswith("perturb") else {}
    small = build_model(name, device="meta", input_size=32, **extra)
    assert (count_parameters(small), count_mask_values(small)) == (cifar, cifar_masks)
    large = build_model(name, device="meta", input_size=224, nclasses=1000, **extra)
    assert (count_parameters(large), count_mask_values(large)) == (imagenet, imagenet_masks)


@pytest.mark.parametrize(("name", "depth"), [("perturb_resnet34", 34), ("perturb_resnet50", 50)])
def test_regular_layers_give_torchvision_resnet_parameter_counts(name, depth):
    """With 3x3 layers everywhere the structure is He et al.'s: same count as torchvision's."""
    import torchvision

    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    model = build_model(
        name, filter_size=3, first_filter_size=7, nclasses=1000, input_size=224, device="meta"
    )
    assert count_parameters(model) == sum(p.numel() for p in reference.parameters())
    assert count_mask_values(model) == 0


DEEP = ["noiseresnet34", "noiseresnet50", "noiseresnet101", "noiseresnet152"]
DEEP += ["perturb_resnet34", "perturb_resnet50"]


@pytest.mark.parametrize("name", DEEP)
def test_deep_shapes_cifar_imagenet_and_lazy(name):
    torch.manual_seed(0)
    fanout = {} if name.startswith("noise") else {"nmasks": 2, "nfilters": 3}
    model = build_model(name, **{"nfilters": 2, "nclasses": 5, **fanout})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    stem = {"first_filter_size": 7} if name.startswith("perturb") else {}
    model = build_model(name, nfilters=2, nclasses=5, input_size=224, **stem)
    kinds = [type(m) for m in model.stem.modules()]
    assert torch.nn.MaxPool2d in kinds  # the original's 7x7 stride-2 stem and max pooling
    out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 5)
    lazy = build_model(name, nfilters=2, nclasses=5, input_size=None, **stem)
    assert count_mask_values(lazy) == 0
    out = lazy(torch.randn(2, 3, 45, 61))  # any size, non-square, odd
    assert out.shape == (2, 5) and count_mask_values(lazy) > 0
    out.sum().backward()
    with pytest.raises(ValueError, match=r"\(61, 45\) differs from the size \(45, 61\)"):
        lazy(torch.randn(2, 3, 61, 45))


def test_perturb_bottleneck_block():
    block = perturbnn.PerturbBottleneck(8, 4, stride=2, nmasks=2, input_size=9)
    assert block(torch.randn(2, 8, 9, 9)).shape == (2, 16, 5, 5)
    assert block.shortcut is not None
    identity = perturbnn.PerturbBottleneck(16, 4)
    assert identity.shortcut is None
    assert identity(torch.randn(2, 16, 6, 7)).shape == (2, 16, 6, 7)
    with pytest.raises(ValueError, match="planes"):
        perturbnn.PerturbBottleneck(16, 0)


def _small(name):
    if name.startswith("perturb") or name in ("lenet", "cifarnet"):
        return {"nfilters": 3, "nmasks": 2}  # fanout > 1 through every perturbation layer
    return {"nfilters": 2}


@pytest.mark.parametrize("name", list_models())
def test_default_input_size_is_lazy_and_fixed_by_the_first_input(name):
    """Every builder defaults to input_size=None: built on the first forward, then fixed."""
    torch.manual_seed(0)
    lazy = build_model(name, **_small(name))
    assert lazy.config.input_size is None and count_mask_values(lazy) == 0
    if name in ("lenet", "cifarnet"):  # the linear head is an nn.LazyLinear until then
        with pytest.raises(ValueError, match=r"uninitialized.*forward"):
            count_parameters(lazy)
    sized = build_model(name, input_size=32, **_small(name))
    assert lazy(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(lazy) == count_parameters(sized)
    assert count_mask_values(lazy) == count_mask_values(sized)
    assert [p.shape for p in lazy.parameters()] == [p.shape for p in sized.parameters()]
    if name == "resnet18":  # no masks, global average pooling: nothing to fix
        assert lazy(torch.randn(2, 3, 40, 24)).shape == (2, 10)
    else:
        with pytest.raises(ValueError, match=r"\(40, 24\) differs from .*\(32, 32\)"):
            lazy(torch.randn(2, 3, 40, 24))
    other = build_model(name, **_small(name))  # non-square
    out = other(torch.randn(2, 3, 40, 24))
    assert out.shape == (2, 10)
    out.sum().backward()


@pytest.mark.parametrize("name", ["lenet", "cifarnet"])
def test_lazy_plain_nets_check_the_size_before_any_layer_runs(name):
    model = build_model(name, nfilters=4, filter_size=3, first_filter_size=3)  # no masks at all
    with pytest.raises(ValueError, match="at least 8 pixels"):
        model(torch.randn(2, 3, 6, 32))
    model(torch.randn(2, 3, 40, 24))
    with pytest.raises(ValueError, match=r"\(32, 32\) differs from the size \(40, 24\)"):
        model(torch.randn(2, 3, 32, 32))
    fresh = build_model(name, nfilters=4, filter_size=3, first_filter_size=3)
    fresh.load_state_dict(model.state_dict())  # materializes the lazy linear layer
    with pytest.raises(ValueError, match="materialized for"):
        fresh(torch.randn(2, 3, 32, 32))
    model.eval(), fresh.eval()
    x = torch.randn(2, 3, 40, 24)
    assert torch.equal(fresh(x), model(x))


def test_lazy_network_state_dict_materializes_a_fresh_lazy_network():
    torch.manual_seed(0)
    trained = build_model("perturb_resnet18", nfilters=3, nmasks=2, input_size=None).eval()
    x = torch.randn(2, 3, 40, 24)
    expected = trained(x)
    fresh = build_model("perturb_resnet18", nfilters=3, nmasks=2, input_size=None).eval()
    assert count_mask_values(fresh) == 0
    fresh.load_state_dict(trained.state_dict())
    assert count_mask_values(fresh) == count_mask_values(trained) > 0
    assert torch.equal(fresh(x), expected)
