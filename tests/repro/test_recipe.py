"""Klachko's recipe as :func:`prepare_run` builds it: init, optimizer, schedule, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import perturbnn
from perturbnn import build_model, init_weights_
from perturbnn.repro.config import RunConfig
from perturbnn.repro.experiments import EXPERIMENTS, presets_of
from perturbnn.repro.run import prepare_run
from perturbnn.repro.runtime import set_seed


def small(data_dir: Path, **changes: object) -> RunConfig:
    return RunConfig(
        net_type="lenet", nfilters=4, dataset_train="MNIST", dataset_test="MNIST",
        train_subset=40, test_subset=20, batch_size=16, nepochs=1, data_dir=str(data_dir),
        device="cpu", progress=False, **changes,  # type: ignore[arg-type]
    )  # fmt: skip


def test_model_is_initialized_from_the_runs_seed(data_dir: Path) -> None:
    run = prepare_run(small(data_dir, manual_seed=5))
    set_seed(5)  # what prepare_run does before building, then the same draws in order
    expected = build_model("lenet", **small(data_dir).model_config(
        in_channels=1, input_size=28, nclasses=10))  # fmt: skip
    init_weights_(expected)
    plain = build_model("lenet", **small(data_dir).model_config(
        in_channels=1, input_size=28, nclasses=10))  # fmt: skip
    got = run.model.state_dict()
    for key, value in expected.state_dict().items():
        assert torch.equal(got[key], value), key
    conv = run.model.features[0][0].weight  # the first PerturbConv2d's 1x1 weight
    assert not torch.equal(conv, plain.features[0][0].weight)
    for module in run.model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_optimizer_and_schedule_are_the_seeds(data_dir: Path) -> None:
    run = prepare_run(small(data_dir))
    assert isinstance(run.optimizer, torch.optim.SGD)
    group = run.optimizer.param_groups[0]
    assert group["nesterov"] and (group["momentum"], group["weight_decay"]) == (0.9, 1e-4)
    assert group["lr"] == 1e-3
    for _ in range(30):  # MNIST: x0.2 from epoch 30 on
        run.optimizer.step()
        run.scheduler.step()
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)


def test_resume_loads_weights_and_never_initializes(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = prepare_run(small(data_dir, out_dir=str(tmp_path)))
    first.fit()
    saved = {k: v.clone() for k, v in first.model.state_dict().items()}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("init_weights_ must not run on resume")

    monkeypatch.setattr(perturbnn, "init_weights_", refuse)
    resumed = prepare_run(
        small(data_dir, out_dir=str(tmp_path), resume=str(tmp_path / "checkpoint_last.pt"))
    )
    summary = resumed.fit()  # restores the checkpoint's weights; nothing left to train
    assert summary.epochs == 1
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_presets_keep_only_batch_size_and_learning_rate() -> None:
    for name in presets_of("independent"):
        exp = EXPERIMENTS[name]
        assert set(exp.train) == {"batch_size", "learning_rate"}, name
        config = RunConfig.from_experiment(name)
        assert (config.optim_method, config.momentum, config.weight_decay) == ("SGD", 0.9, 1e-4)
        assert (config.nepochs, config.dropout, config.manual_seed) == (150, 0.5, 1)
        assert config.lr_schedule == "independent"
        assert "--optim-method" not in exp.seed_command  # Klachko's default: SGD
    for name in presets_of("authors"):  # their own recipe, every option of it stated
        config = RunConfig.from_experiment(name)
        assert (config.optim_method, config.lr_schedule, config.nepochs) == ("Adam", "authors", 450)
        assert (config.learning_rate, config.weight_decay, config.level) == (1e-4, 1e-4, 0.1)


def test_a_checkpoint_of_another_schedule_is_refused_clearly() -> None:
    from torch.optim.lr_scheduler import MultiStepLR

    from perturbnn.repro.checkpoint import CheckpointError, restore_checkpoint
    from perturbnn.repro.optim import make_optimizer, make_scheduler

    model = nn.Linear(2, 2)
    old = MultiStepLR(make_optimizer("SGD", model, lr=1.0), milestones=[150], gamma=0.2)
    optimizer = make_optimizer("SGD", model, lr=1.0)
    checkpoint = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": old.state_dict(), "epoch": 3,
    }  # fmt: skip
    with pytest.raises(CheckpointError, match="learning-rate schedule"):
        restore_checkpoint(checkpoint, model, optimizer, make_scheduler(optimizer, "CIFAR10"))


def test_a_checkpoint_of_the_other_lr_schedule_is_refused() -> None:
    from perturbnn.repro.checkpoint import CheckpointError
    from perturbnn.repro.run import _check_resume

    model = nn.Linear(2, 2)
    config = RunConfig(lr_schedule="independent")
    saved = {"model": model.state_dict(), "config": {"lr_schedule": "authors"}}
    with pytest.raises(CheckpointError, match="lr_schedule: 'authors' in the checkpoint"):
        _check_resume(saved, config, model)
    # A checkpoint written before the option existed has no lr_schedule: not compared.
    _check_resume({"model": model.state_dict(), "config": {}}, config, model)
    _check_resume(saved, config.replace(lr_schedule="authors"), model)
