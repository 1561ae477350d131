"""Tests of the eight frozen presets of the reproduction notes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from perturbnn import build_model, list_models
from perturbnn.repro.config import RunConfig
from perturbnn.repro.experiments import EXPERIMENTS, Experiment, get_experiment, list_experiments

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
    assert list_experiments() == [name for name, _, _ in SEED]
    assert list(EXPERIMENTS) == list_experiments()
    for name, net_type, accuracy in SEED:
        exp = get_experiment(name)
        assert exp.name == name
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


@pytest.mark.parametrize("name", [name for name, _, _ in SEED])
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
