"""Tests of the training loop, evaluation, checkpoints, resume, optimizers and schedule.

Everything runs on tiny synthetic data (TensorDataset) with tiny models, in a few seconds.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from perturbnn import NoiseMask, PerturbConv2d
from perturbnn.metrics import OriginalSmoothedAccuracy, overstatement_over_orderings
from perturbnn.repro import checkpoint as checkpoint_mod
from perturbnn.repro import progress as progress_mod
from perturbnn.repro import runtime as runtime_mod
from perturbnn.repro.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from perturbnn.repro.config import RunConfig
from perturbnn.repro.debug import attach_debug_hooks
from perturbnn.repro.fit import HISTORY_KEYS, fit
from perturbnn.repro.loop import evaluate, train_one_epoch
from perturbnn.repro.optim import lr_factor, make_optimizer, make_scheduler
from perturbnn.repro.runtime import set_seed

# ------------------------------------------------------------------------------ helpers


def blobs(n: int = 96, *, seed: int = 0) -> TensorDataset:
    """Two well separated classes of 3x4x4 "images"."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, 4, 4, generator=g) * 0.5
    x += (2 * y - 1).view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def loaders(batch_size: int = 16, *, seed: int = 1) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(
        blobs(96, seed=0),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    test = DataLoader(blobs(40, seed=1), batch_size=batch_size)
    return train, test


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 2))


def noisy_model(seed: int = 0) -> nn.Module:
    """A tiny model with a noise layer (fixed masks, a buffer)."""
    torch.manual_seed(seed)
    return nn.Sequential(NoiseMask(3, 2, 4, level=0.1), nn.Flatten(), nn.Linear(96, 2))


def train_for(epochs: int, out_dir: Path | None, *, resume: Path | None = None, seed: int = 0):
    model = tiny_model(seed)
    optimizer = make_optimizer("Adam", model, lr=0.01)
    scheduler = make_scheduler(optimizer, "CIFAR10", milestones=[2])
    train, test = loaders()
    summary = fit(
        model,
        train,
        test,
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=epochs,
        device="cpu",
        out_dir=out_dir,
        config={"name": "tiny", "path": Path("/x"), "sizes": (1, 2)},
        resume=resume,
        progress=False,
    )
    return summary, model, optimizer, scheduler


# ------------------------------------------------------------------------------ fit


def test_fit_reduces_training_loss() -> None:
    summary, *_ = train_for(5, None)
    losses = summary.history["train_loss"]
    assert len(losses) == 5
    assert losses[-1] < 0.5 * losses[0]
    assert summary.best_acc >= 0.9  # the blobs are separable
    assert summary.out_dir is None


def test_fit_writes_log_summary_and_checkpoints(tmp_path: Path) -> None:
    summary, model, _, _ = train_for(3, tmp_path)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert set(record) == set(HISTORY_KEYS)
        assert 0.0 <= record["test_acc"] <= 1.0 and 0.0 <= record["original_acc"] <= 1.0
    assert [r["lr"] for r in records] == pytest.approx([0.01, 0.01, 0.002])  # milestone 2

    data = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "config", "best_acc", "best_epoch", "last_acc", "original_best_acc", "gap",
        "parameters", "mask_values", "wall_time_s", "device", "epochs", "history",
    ):  # fmt: skip
        assert key in data, key
    test_acc = [r["test_acc"] for r in records]
    assert data["best_acc"] == max(test_acc) == summary.best_acc
    assert data["best_epoch"] == 1 + test_acc.index(max(test_acc))
    assert data["last_acc"] == test_acc[-1]
    assert data["original_best_acc"] == max(r["original_acc"] for r in records)
    assert data["parameters"] == sum(p.numel() for p in model.parameters())
    assert data["mask_values"] == 0
    assert data["epochs"] == 3 and data["device"] == "cpu"
    assert data["history"]["test_acc"] == test_acc
    assert data["config"] == {"name": "tiny", "path": "/x", "sizes": [1, 2]}
    assert (tmp_path / "checkpoint_last.pt").is_file()
    assert (tmp_path / "checkpoint_best.pt").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_fit_rejects_bad_epochs() -> None:
    model = tiny_model()
    train, test = loaders()
    opt = make_optimizer("SGD", model, lr=0.1)
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        fit(model, train, test, optimizer=opt, epochs=0, device="cpu", progress=False)


def test_train_one_epoch_raises_on_divergence() -> None:
    model = tiny_model()
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    train, _ = loaders()
    opt = make_optimizer("SGD", model, lr=0.1)
    with pytest.raises(FloatingPointError, match="nan"):
        train_one_epoch(model, train, opt, device="cpu")


def test_train_one_epoch_counts_samples_and_steps() -> None:
    model = tiny_model()
    train, _ = loaders(batch_size=20)  # 96 samples: 5 batches, the last of 16
    result = train_one_epoch(model, train, make_optimizer("Adam", model, lr=1e-3), device="cpu")
    assert (result.steps, result.samples) == (5, 96)
    assert 0.0 <= result.accuracy <= 1.0 and math.isfinite(result.loss)


class FixedLogits(nn.Module):
    """Returns its input as logits; one dummy parameter that gets a zero gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0 * self.dummy


def test_train_one_epoch_loss_is_per_sample_mean() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(20, 4, generator=g) * 3
    targets = torch.randint(0, 4, (20,), generator=g)
    loader = DataLoader(TensorDataset(logits, targets), batch_size=7)  # 7 + 7 + 6
    model = FixedLogits()
    result = train_one_epoch(model, loader, make_optimizer("SGD", model, lr=0.1), device="cpu")
    assert result.loss == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    assert result.accuracy == (logits.argmax(1) == targets).sum().item() / 20
    assert (result.steps, result.samples) == (3, 20)


# ------------------------------------------------------------------------------ evaluate


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    batch_size=st.integers(1, 17),
    nclasses=st.integers(2, 6),
    seed=st.integers(0, 2**16),
)
def test_evaluate_matches_hand_count(n: int, batch_size: int, nclasses: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, nclasses, generator=g)
    targets = torch.randint(0, nclasses, (n,), generator=g)
    loader = DataLoader(TensorDataset(logits, targets), batch_size=batch_size)
    smoothed = OriginalSmoothedAccuracy()
    result = evaluate(nn.Identity(), loader, device="cpu", smoothed=smoothed)

    correct = 0
    for i in range(n):  # slow and obvious
        best = max(range(nclasses), key=lambda c: (logits[i, c].item(), -c))
        correct += int(best == targets[i].item())
    assert (result.correct, result.total) == (correct, n)
    assert result.accuracy == correct / n
    assert result.sample_correct is not None and result.sample_correct.dtype == torch.bool
    hand = [
        max(range(nclasses), key=lambda c: (logits[i, c].item(), -c)) == targets[i].item()
        for i in range(n)
    ]
    assert result.sample_correct.tolist() == hand  # in the loader's order
    expected_loss = F.cross_entropy(logits.double(), targets).item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)

    value = 0.0  # the original code's figure: per-batch accuracy, EMA 0.7 / 0.3
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        batch_acc = (logits[part].argmax(1) == targets[part]).double().mean().item()
        value = 0.7 * value + 0.3 * batch_acc
    assert smoothed.value == pytest.approx(value)


def test_evaluate_uses_eval_mode_no_grad_and_restores_mode() -> None:
    seen: list[tuple[bool, bool]] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return x

    spy = Spy().train()
    loader = DataLoader(TensorDataset(torch.randn(5, 3), torch.zeros(5, dtype=torch.long)))
    evaluate(spy, loader, device="cpu")
    assert seen and all(state == (False, False) for state in seen)
    assert spy.training


def test_evaluate_empty_loader_raises() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="no sample"):
        evaluate(nn.Identity(), loader, device="cpu")


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_weights_only(tmp_path: Path) -> None:
    _, model, optimizer, scheduler = train_for(2, tmp_path)
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        raw = torch.load(tmp_path / name, weights_only=True)  # plain types and tensors only
        assert raw["format"] == checkpoint_mod.CHECKPOINT_FORMAT
    ckpt = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert ckpt["epoch"] == 2
    assert ckpt["config"]["sizes"] == [1, 2]
    assert ckpt["history"]["epoch"] == [1, 2]
    assert ckpt["smoothed"]["history"] == ckpt["history"]["original_acc"]
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt["model"][key], value), key

    fresh = tiny_model(seed=123)
    fresh_opt = make_optimizer("Adam", fresh, lr=0.01)
    fresh_sched = make_scheduler(fresh_opt, "CIFAR10", milestones=[2])
    assert restore_checkpoint(ckpt, fresh, fresh_opt, fresh_sched) == 2
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    saved_state = optimizer.state_dict()["state"]
    restored_state = fresh_opt.state_dict()["state"]
    assert saved_state.keys() == restored_state.keys()
    for k in saved_state:
        assert torch.equal(saved_state[k]["exp_avg"], restored_state[k]["exp_avg"])
    assert fresh_sched.last_epoch == scheduler.last_epoch == 2
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(0.002)


def test_checkpoint_keeps_noise_masks(tmp_path: Path) -> None:
    model = noisy_model()
    path = save_checkpoint(tmp_path / "c.pt", model=model, epoch=0)
    other = noisy_model(seed=5)
    assert not torch.equal(model[0].masks, other[0].masks)
    restore_checkpoint(load_checkpoint(path), other)
    assert torch.equal(model[0].masks, other[0].masks)


def test_load_checkpoint_rejects_foreign_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt.*not a perturbnn checkpoint"):
        load_checkpoint(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt.*not a perturbnn checkpoint"):
        load_checkpoint(text)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": checkpoint_mod.CHECKPOINT_FORMAT, "obj": logging.Formatter()}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.pt.*weights_only=True"):
        load_checkpoint(unsafe)
    newer = tmp_path / "newer.pt"
    torch.save({"format": checkpoint_mod.CHECKPOINT_FORMAT, "format_version": 99}, newer)
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(newer)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_continues_at_next_epoch_and_matches_uninterrupted(tmp_path: Path) -> None:
    straight, straight_model, *_ = train_for(4, tmp_path / "straight")
    train_for(2, tmp_path / "first")
    resumed, resumed_model, optimizer, scheduler = train_for(
        4, tmp_path / "second", resume=tmp_path / "first" / "checkpoint_last.pt", seed=99
    )
    assert resumed.history["epoch"] == [1, 2, 3, 4]
    assert resumed.epochs == 4
    assert scheduler.last_epoch == 4
    assert int(next(iter(optimizer.state.values()))["step"]) == 4 * 6  # 6 batches per epoch
    # Same data order, same RNG, same optimizer state: bit-identical to an uninterrupted run.
    assert resumed.history["train_loss"] == straight.history["train_loss"]
    assert resumed.history["original_acc"] == straight.history["original_acc"]
    for p, q in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
    lines = (tmp_path / "second" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_fit_keeps_each_test_samples_correctness_per_epoch(tmp_path: Path) -> None:
    summary, *_ = train_for(3, None)
    correct = summary.test_correct
    assert correct is not None and correct.shape == (3, 40) and correct.dtype == torch.bool
    # The recorded predictions regenerate the run's exact and original-method figures.
    assert (correct.sum(dim=1).double() / 40).tolist() == summary.history["test_acc"]
    study = overstatement_over_orderings(correct, 16, orderings=3)
    assert study.actual == summary.original_best_acc and study.exact_best == summary.best_acc
    assert "test_correct" not in summary.to_dict()  # in memory only
    train_for(2, tmp_path / "first")
    resumed, *_ = train_for(3, None, resume=tmp_path / "first" / "checkpoint_last.pt")
    assert resumed.test_correct is None  # the first two epochs' predictions are not saved


def test_resume_when_already_done_trains_nothing(tmp_path: Path) -> None:
    first, *_ = train_for(2, tmp_path)
    again, *_ = train_for(2, tmp_path, resume=tmp_path / "checkpoint_last.pt")
    assert again.history == first.history


@pytest.mark.parametrize(("epochs", "words"), [(1, "1 epoch already"), (2, "2 epochs already")])
def test_nothing_to_train_message_is_grammatical(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, epochs: int, words: str
) -> None:
    train_for(epochs, tmp_path)
    with caplog.at_level(logging.INFO, logger="perturbnn"):
        train_for(epochs, tmp_path, resume=tmp_path / "checkpoint_last.pt")
    messages = [r.getMessage() for r in caplog.records if "nothing to train" in r.getMessage()]
    assert messages == [f"the checkpoint has {words}; nothing to train"]


# ------------------------------------------------------------------------------ optimizers


@pytest.mark.parametrize(
    ("name", "cls"),
    [("Adam", torch.optim.Adam), ("RMSprop", torch.optim.RMSprop), ("SGD", torch.optim.SGD),
     ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)],
)  # fmt: skip
def test_make_optimizer_names(name: str, cls: type) -> None:
    opt = make_optimizer(name, tiny_model(), lr=0.1, momentum=0.8, weight_decay=1e-3)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.1 and group["weight_decay"] == 1e-3
    if cls is torch.optim.SGD:
        assert group["nesterov"] is True and group["momentum"] == 0.8
    if cls is torch.optim.RMSprop:
        assert group["momentum"] == 0.8


def test_make_optimizer_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'LBFGS'.*Adam, RMSprop, SGD"):
        make_optimizer("LBFGS", tiny_model(), lr=0.1)
    with pytest.raises(ValueError, match="lr must be a positive number, got 0"):
        make_optimizer("Adam", tiny_model(), lr=0)


def test_make_optimizer_only_trainable_parameters() -> None:
    model = noisy_model()
    model[2].bias.requires_grad_(False)
    opt = make_optimizer("Adam", model, lr=0.1)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(model[2].weight)}  # fixed masks are buffers, the bias is frozen
    trained = nn.Sequential(NoiseMask(3, 2, 4, level=0.1, train_masks=True))
    opt = make_optimizer("SGD", trained, lr=0.1)
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(trained[0].masks)}
    with pytest.raises(ValueError, match="no trainable parameter"):
        make_optimizer("Adam", nn.Sequential(NoiseMask(3, 2, 4, level=0.1)), lr=0.1)


# ------------------------------------------------------------------------------ schedule


def lr_of_epochs(dataset: str, epochs: int) -> list[float]:
    """The rate each epoch 1..epochs runs at, read as the training loop reads it."""
    opt = make_optimizer("SGD", nn.Linear(2, 2), lr=1.0)
    sched = make_scheduler(opt, dataset)
    rates = []
    for _ in range(epochs):
        rates.append(float(opt.param_groups[0]["lr"]))  # set before the epoch's first step
        opt.step()  # no gradients: a no-op, but the order torch expects
        sched.step()
    return rates


def seed_rule(dataset: str, e: int) -> float:
    """The issue's statement of Klachko's schedule, literally (epoch e counted from 1)."""
    if dataset == "CIFAR10":
        return 0.2 ** sum(1 for m in (60, 90, 120, 160) if m <= e)
    if dataset == "CIFAR100":
        return 0.1 ** sum(1 for m in (80, 120, 160) if m <= e)
    if dataset in ("MNIST", "FashionMNIST"):
        return 0.2 ** sum(1 for m in (30, 60, 90) if m <= e)
    if dataset == "ImageFolder":
        return 0.1 ** ((e - 1) // 30)
    return 1.0  # SVHN, STL10: no rule in Klachko's schedule


@pytest.mark.parametrize(
    "dataset", ["CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "ImageFolder", "SVHN", "STL10"]
)
def test_schedule_is_the_seeds_rule_for_every_epoch(dataset: str) -> None:
    rates = lr_of_epochs(dataset, 200)
    for e, rate in enumerate(rates, start=1):
        assert rate == pytest.approx(seed_rule(dataset, e), rel=1e-12), (dataset, e)
        assert lr_factor(dataset, e) == pytest.approx(seed_rule(dataset, e), rel=1e-12)


def test_schedule_boundaries_and_errors() -> None:
    rates = lr_of_epochs("CIFAR10", 61)
    assert rates[58] == 1.0 and rates[59] == pytest.approx(0.2)  # epoch 59: lr; epoch 60: 0.2 lr
    assert lr_factor("cifar-10", 160) == pytest.approx(0.2**4)
    with pytest.raises(ValueError, match="'Imagenette'"):
        make_scheduler(make_optimizer("SGD", nn.Linear(2, 2), lr=1.0), "Imagenette")
    with pytest.raises(ValueError, match="epoch must be an int >= 1"):
        lr_factor("CIFAR10", 0)


def test_custom_milestones_keep_multistep_semantics() -> None:
    opt = make_optimizer("SGD", nn.Linear(2, 2), lr=1.0)
    sched = make_scheduler(opt, "CIFAR10", milestones=[2], gamma=0.5)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.5


def test_seed_defaults_sgd_nesterov() -> None:
    config = RunConfig()
    assert (config.optim_method, config.learning_rate, config.batch_size) == ("SGD", 1e-3, 64)
    assert (config.nepochs, config.level, config.dropout, config.manual_seed) == (150, 0.5, 0.5, 1)
    assert (config.momentum, config.weight_decay) == (0.9, 1e-4)
    group = make_optimizer(config.optim_method, tiny_model(), lr=config.learning_rate).param_groups[
        0
    ]
    assert group["nesterov"] is True and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    adam = make_optimizer("Adam", tiny_model(), lr=1e-3).param_groups[0]
    assert adam["betas"] == (0.9, 0.999)


# ------------------------------------------------------------------------------ misc


def test_set_seed_is_reproducible() -> None:
    set_seed(7)
    a = (torch.rand(3), __import__("random").random())
    set_seed(7)
    b = (torch.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ValueError, match="-1"):
        set_seed(-1)


def test_resolve_device() -> None:
    assert runtime_mod.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime_mod.resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="'tpu9'"):
        runtime_mod.resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime_mod.resolve_device("cuda")


def test_progress_without_tqdm_warns_and_trains(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    progress_mod._tqdm.cache_clear()
    try:
        model = tiny_model()
        train, test = loaders()
        with caplog.at_level(logging.INFO, logger="perturbnn"):
            summary = fit(
                model, train, test, optimizer=make_optimizer("Adam", model, lr=0.01),
                epochs=1, device="cpu", progress=True,
            )  # fmt: skip
    finally:
        progress_mod._tqdm.cache_clear()
    assert summary.epochs == 1
    assert any("tqdm" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1")]
    assert len(epoch_lines) == 1
    assert "(exact)" in epoch_lines[0] and "original-method" in epoch_lines[0]


def test_run_config_from_experiment_and_validation() -> None:
    config = RunConfig.from_experiment("pnn-fanout64-shared", nfilters=8, batch_size=4)
    assert config.net_type == "perturb_resnet18" and config.experiment == "pnn-fanout64-shared"
    assert (config.nmasks, config.unique_masks, config.first_filter_size) == (64, False, 3)
    assert (config.nfilters, config.batch_size, config.learning_rate) == (8, 4, 1e-3)
    assert config.nepochs == 150 and config.optim_method == "SGD"  # seed defaults
    options = config.model_config(in_channels=3, input_size=32, nclasses=10)
    assert options["nmasks"] == 64 and options["in_channels"] == 3
    assert options["num_classes"] == 10 and "nclasses" not in options  # timm's name
    assert config.model_config(in_channels=3, input_size=32, num_classes=10) == options
    with pytest.raises(ValueError, match="num_classes=10 and nclasses=5"):
        config.model_config(in_channels=3, input_size=32, num_classes=10, nclasses=5)
    assert RunConfig(optim_method="sgd").optim_method == "SGD"
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        RunConfig(batch_size=0)
    with pytest.raises(ValueError, match="learning_rate must be positive, got -1"):
        RunConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="unknown experiment"):
        RunConfig(experiment="nope")
    with pytest.raises(TypeError, match="bogus"):
        RunConfig.from_dict({"bogus": 1})


# ------------------------------------------------------------------------------ debug hooks


def test_debug_hooks_log_input_noise_output(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(NoiseMask(3, 2, 4, level=0.5), nn.Flatten())
    handles = attach_debug_hooks(model, max_values=3)
    assert len(handles) == 1
    x = torch.arange(48, dtype=torch.float32).view(1, 3, 4, 4)
    with caplog.at_level(logging.DEBUG, logger="perturbnn.repro.debug"):
        model(x)
    records = [r for r in caplog.records if r.name == "perturbnn.repro.debug"]
    assert len(records) == 1
    message = records[0].getMessage()
    noise = (0.5 * model[0].masks).flatten()[:3].tolist()
    out = model[0](x).flatten()[:3].tolist()
    assert message.startswith("0: input [")
    lists = [[float(v) for v in group.split(",")] for group in re.findall(r"\[([^\]]*)\]", message)]
    assert len(lists) == 3 and all(len(values) == 3 for values in lists)
    assert lists[0] == [0.0, 1.0, 2.0]
    assert lists[1] == pytest.approx(noise, abs=1e-6)
    assert lists[2] == pytest.approx(out, abs=1e-6)
    assert lists[1] != pytest.approx([0.0, 0.0, 0.0])

    for handle in handles:
        handle.remove()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="perturbnn.repro.debug"):
        model(x)
    assert not [r for r in caplog.records if r.name == "perturbnn.repro.debug"]


def test_debug_hooks_on_fused_perturb_conv(caplog: pytest.LogCaptureFixture) -> None:
    """PerturbConv2d applies its masks in a fused kernel; it is still logged, once per call."""
    torch.manual_seed(0)
    model = nn.Sequential(
        PerturbConv2d(3, 6, nmasks=2, input_size=4, level=0.5),
        nn.ReLU(),
        PerturbConv2d(6, 6, nmasks=1, input_size=4, level=0.25),
    )
    handles = attach_debug_hooks(model, max_values=3, level=logging.INFO)
    assert len(handles) == 2
    x = torch.randn(2, 3, 4, 4)
    with caplog.at_level(logging.INFO, logger="perturbnn.repro.debug"):
        model(x)
        model(x)
    messages = [r.getMessage() for r in caplog.records if r.name == "perturbnn.repro.debug"]
    assert [m.split(":")[0] for m in messages] == ["0", "2", "0", "2"]
    first = messages[0]
    lists = [[float(v) for v in group.split(",")] for group in re.findall(r"\[([^\]]*)\]", first)]
    assert len(lists) == 4  # input, noise, perturbed, output
    noise = (0.5 * model[0].noise.masks).flatten()[:3]
    assert lists[0] == pytest.approx(x.flatten()[:3].tolist(), abs=1e-5)
    assert lists[1] == pytest.approx(noise.tolist(), abs=1e-5)
    # channel 0 of the perturbed tensor is input channel 0 plus mask 0
    assert lists[2] == pytest.approx((x.flatten()[:3] + noise).tolist(), abs=1e-5)
    assert lists[3] == pytest.approx(model[0](x).flatten()[:3].tolist(), abs=1e-5)


def test_debug_hooks_without_noise_layers_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="perturbnn.repro.debug"):
        assert attach_debug_hooks(tiny_model()) == []
    assert any("no NoiseMask" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="max_values must be a positive int, got 0"):
        attach_debug_hooks(tiny_model(), max_values=0)
