"""Tests of the frozen presets: the independent reproduction's eight and the authors' two."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from perturbnn import build_model, list_models
from perturbnn.repro.config import RunConfig
from perturbnn.repro.experiments import (
    EXPERIMENTS,
    Experiment,
    get_experiment,
    list_experiments,
    presets_of,
)
from perturbnn.repro.optim import lr_factor

# The notes' eight experiments, in their order, with the reported (exact) accuracies.
SEED = [
    ("baseline", "resnet18", 0.918),
    ("original", "noiseresnet18", 0.857),
    ("original-first3", "noiseresnet18", 0.862),
    ("no-noise-1x1", "perturb_resnet18", 0.855),
    ("pnn-all-layers", "perturb_resnet18", 0.726),
    ("pnn-fanout64-unique-mix", "perturb_resnet18", 0.827),
    ("pnn-fanout64-shared", "perturb_resnet18", 0.824),
    ("pnn-fanout64-shared-trained", "perturb_resnet18", 0.859),
]


def test_eight_presets_in_the_notes_order() -> None:
    assert presets_of("independent") == [name for name, _, _ in SEED]
    assert list_experiments() == [name for name, _, _ in SEED] + list(AUTHORS)
    assert list(EXPERIMENTS) == list_experiments()
    for name, net_type, accuracy in SEED:
        exp = get_experiment(name)
        assert exp.name == name and exp.source == "independent"
        assert exp.net_type == net_type and net_type in list_models()
        assert exp.seed_accuracy == accuracy
        assert exp.config["level"] == 0.5
        assert exp.seed_command.startswith(f"python main.py --net-type '{net_type}'")
        assert exp.dataset == "CIFAR10"


@pytest.mark.parametrize(
    ("name", "config", "train"),
    [
        ("baseline", {"nfilters": 44}, {"batch_size": 10, "learning_rate": 1e-3}),
        ("original", {"nfilters": 128, "first_filter_size": 7},
         {"batch_size": 10, "learning_rate": 1e-4}),
        ("original-first3", {"nfilters": 128, "first_filter_size": 3},
         {"batch_size": 10, "learning_rate": 1e-4}),
        ("no-noise-1x1", {"nfilters": 128, "first_filter_size": 3, "filter_size": 1},
         {"batch_size": 16, "learning_rate": 1e-3}),
        ("pnn-all-layers",
         {"nfilters": 128, "first_filter_size": 0, "filter_size": 0, "nmasks": 1},
         {"batch_size": 16, "learning_rate": 1e-3}),
        ("pnn-fanout64-unique-mix",
         {"nfilters": 128, "first_filter_size": 3, "filter_size": 0, "nmasks": 64,
          "unique_masks": True, "mix_maps": True},
         {"batch_size": 16, "learning_rate": 1e-3}),
        ("pnn-fanout64-shared",
         {"nfilters": 128, "first_filter_size": 3, "filter_size": 0, "nmasks": 64,
          "unique_masks": False},
         {"batch_size": 16, "learning_rate": 1e-3}),
        ("pnn-fanout64-shared-trained",
         {"nfilters": 128, "first_filter_size": 3, "filter_size": 0, "nmasks": 64,
          "unique_masks": False, "train_masks": True},
         {"batch_size": 16, "learning_rate": 1e-3}),
    ],
)  # fmt: skip
def test_preset_values(name: str, config: dict, train: dict) -> None:
    exp = get_experiment(name)
    assert dict(exp.config) == {**config, "level": 0.5}
    assert dict(exp.train) == train


# The authors' updated recipe (juefeix/pnn.pytorch.update): README commands quoted in its
# issues 2 and 3 and its expr_commands.txt; figures 90.35% and 85.92%; the network changes of
# its models.py (commit 2c1604fa): a frozen first convolution, a wider first perturbation layer.
AUTHORS = {
    "authors-first3": (
        "noiseresnet18",
        0.9035,
        {"nfilters": 128, "first_filter_size": 3, "level": 0.1, "freeze_first": True},
        10,
        "--nfilters 128 --batch-size 10 --learning-rate 1e-4 --first_filter_size 3 --level 0.1 "
        "--optim-method Adam --nepochs 450",
    ),
    "authors-all-layers": (
        "perturb_resnet18",
        0.8592,
        {
            "nfilters": 256,
            "first_filter_size": 0,
            "filter_size": 0,
            "nmasks": 1,
            "level": 0.1,
            "first_layer_type": "authors",
        },
        20,
        "--nfilters 256 --batch-size 20 --learning-rate 1e-4 --first_filter_size 0 "
        "--filter_size 0 --nmasks 1 --level 0.1 --optim-method Adam --nepochs 450",
    ),
}


@pytest.mark.parametrize("name", list(AUTHORS))
def test_authors_presets(name: str) -> None:
    net_type, accuracy, config, batch, flags = AUTHORS[name]
    exp = get_experiment(name)
    assert presets_of("authors") == list(AUTHORS)
    assert (exp.source, exp.net_type, exp.seed_accuracy, exp.dataset) == (
        "authors", net_type, accuracy, "CIFAR10"
    )
    assert exp.seed_command == (
        f"python main.py --net-type '{net_type}' --dataset-test 'CIFAR10' "
        f"--dataset-train 'CIFAR10' {flags}"
    )
    assert dict(exp.config) == config
    assert dict(exp.train) == {
        "batch_size": batch,
        "learning_rate": 1e-4,
        "optim_method": "Adam",
        "weight_decay": 1e-4,
        "nepochs": 450,
        "lr_schedule": "authors",
    }
    assert "90.35%" in exp.description or "85.92%" in exp.description
    run = RunConfig.from_experiment(name)
    assert (run.optim_method, run.lr_schedule, run.level, run.nepochs) == ("Adam", "authors", 0.1, 450)
    assert (run.batch_size, run.learning_rate, run.weight_decay) == (batch, 1e-4, 1e-4)


def test_authors_schedule_and_the_independent_one() -> None:
    # main.py of the authors' update: x0.2 from epochs 150, 250, 300, 350, 400 on CIFAR-10.
    assert [lr_factor("CIFAR10", e, "authors") for e in (1, 149, 150, 249, 250, 399, 400, 450)] == (
        pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.2**4, 0.2**5, 0.2**5])
    )
    assert lr_factor("CIFAR10", 60) == 0.2  # the independent reproduction's default
    assert lr_factor("MNIST", 30, "authors") == lr_factor("MNIST", 30) == 0.2
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'author'"):
        lr_factor("CIFAR10", 1, "author")
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        RunConfig(lr_schedule="seed")
    with pytest.raises(ValueError, match="source must be one of"):
        Experiment("x", "d", "resnet18", "cmd", 0.5, source="mine")
    with pytest.raises(ValueError, match=r"implicit names options the preset does not set"):
        Experiment("x", "d", "resnet18", "cmd", 0.5, train={"lr_schedule": "authors"},
                   implicit=("lr_schedule", "freeze_first"))  # fmt: skip


def test_implicit_options_are_the_authors_schedule_and_network_change() -> None:
    assert EXPERIMENTS["authors-first3"].implicit_options() == {
        "lr_schedule": "authors",
        "freeze_first": True,
    }
    assert EXPERIMENTS["authors-all-layers"].implicit_options() == {
        "lr_schedule": "authors",
        "first_layer_type": "authors",
    }
    assert all(not e.implicit for e in EXPERIMENTS.values() if e.source == "independent")


@pytest.mark.parametrize("name", [*(name for name, _, _ in SEED), *AUTHORS])
def test_preset_builds_and_gives_logits(name: str) -> None:
    config = RunConfig.from_experiment(name, nfilters=8)
    torch.manual_seed(0)
    model = build_model(
        config.net_type, **config.model_config(in_channels=3, input_size=32, nclasses=10)
    )
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_presets_are_frozen() -> None:
    exp = get_experiment("baseline")
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.seed_accuracy = 0.99  # type: ignore[misc]
    with pytest.raises(TypeError):
        exp.config["nfilters"] = 8  # type: ignore[index]
    with pytest.raises(TypeError):
        EXPERIMENTS["new"] = exp  # type: ignore[index]
    assert get_experiment("baseline").config["nfilters"] == 44


def test_unknown_name_suggests_close_matches_first() -> None:
    with pytest.raises(ValueError, match="unknown experiment 'pnn-fanout64-share'") as info:
        get_experiment("pnn-fanout64-share")
    message = str(info.value)
    assert "Did you mean 'pnn-fanout64-shared'" in message
    assert message.index("'pnn-fanout64-shared'") < message.index("Valid names")
    for name in list_experiments():
        assert name in message


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("basline", ["baseline"]),
        ("orignal", ["original"]),
        ("no-noise", ["no-noise-1x1"]),  # the start of a name
        ("pnn-fanout64-shared-traind", ["pnn-fanout64-shared-trained"]),  # closest first
        ("pnn-nonexistent", []),  # nothing close: no suggestion, not 'no-noise-1x1'
        ("resnet18", []),
        ("xyz", []),
    ],
)
def test_suggestions_are_close_names_or_none(typed: str, meant: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        get_experiment(typed)
    message = str(info.value)
    head = message.split("Valid names")[0]
    if meant:
        assert f"Did you mean {' or '.join(repr(m) for m in meant)}" in head, message  # first
    else:
        assert "Did you mean" not in message, message
        assert all(name not in head for name in list_experiments()), message


@given(st.text(max_size=30).filter(lambda s: s not in EXPERIMENTS))
def test_any_unknown_name_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="Valid names: baseline, original"):
        get_experiment(name)


def test_experiment_validates_accuracy_as_fraction() -> None:
    with pytest.raises(ValueError, match=r"got 91\.8"):
        Experiment("x", "d", "resnet18", "cmd", 91.8)


def test_runs_saved_before_the_authors_network_options_are_other_runs_for_the_authors() -> None:
    """A summary written before ``first_layer_type``/``freeze_first`` existed ran the
    defaults: still the same run for the independent reproduction's presets, another run for
    the authors' two (whose networks changed), named by the option."""
    from perturbnn.repro.cli.reproduce import _differences, _experiment_fields, _plain

    for name in ("baseline", "pnn-all-layers", "authors-first3", "authors-all-layers"):
        config = _plain(RunConfig.from_experiment(name, nfilters=8, out_dir="x"))
        old = {k: v for k, v in config.items() if k not in ("first_layer_type", "freeze_first")}
        differences = _differences(_experiment_fields(old), _experiment_fields(config))
        if name == "authors-first3":
            assert differences == ["freeze_first: False there, True here"]
        elif name == "authors-all-layers":
            assert differences == ["first_layer_type: 'independent' there, 'authors' here"]
        else:
            assert differences == []
