"""End-to-end tests of ``examples/cifar10_repro.py`` on the real CIFAR-10 (a few hundred images).

The data is looked for in ``$PERTURBNN_DATA_DIR`` or in ``../shared/data`` beside the repository;
the tests that need it are skipped when it is absent. The smoke run takes about 15-30 s on two
CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from perturbnn.repro.cli import train as train_cli
from perturbnn.repro.config import RunConfig
from perturbnn.repro.experiments import EXPERIMENTS, list_experiments

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "cifar10_repro.py"
DATA_DIR = Path(
    os.environ.get("PERTURBNN_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
needs_cifar10 = pytest.mark.skipif(
    not ((DATA_DIR / "cifar10").is_dir() or list(DATA_DIR.glob("cifar10_*.npz"))),
    reason=f"CIFAR-10 not found in {DATA_DIR} (set PERTURBNN_DATA_DIR)",
)


def load_script() -> ModuleType:
    """The train command (``perturbnn-repro train``) that ``examples/cifar10_repro.py`` runs."""
    return train_cli


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not ((DATA_DIR / "cifar10").is_dir() or list(DATA_DIR.glob("cifar10_*.npz"))):
        pytest.skip(f"CIFAR-10 not found in {DATA_DIR} (set PERTURBNN_DATA_DIR)")
    out = tmp_path_factory.mktemp("smoke")
    args = [
        "--experiment", "pnn-fanout64-shared", "--nfilters", "8", "--nepochs", "1",
        "--train-subset", "128", "--test-subset", "100", "--batch-size", "32",
        "--no-progress", "--device", "cpu", "--data-dir", str(DATA_DIR), "--out-dir", str(out),
    ]  # fmt: skip
    proc = run_script(*args, cwd=out)
    return {"proc": proc, "out": out}


@needs_cifar10
def test_smoke_run_prints_both_figures_and_writes_files(smoke: dict[str, Any]) -> None:
    proc, out = smoke["proc"], smoke["out"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    assert "Traceback" not in proc.stderr

    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1
    assert summary["config"]["experiment"] == "pnn-fanout64-shared"
    assert summary["config"]["nfilters"] == 8 and summary["config"]["nmasks"] == 64
    assert summary["seed_accuracy"] == 0.824
    assert summary["test_samples"] == 100 and summary["train_samples"] == 128

    # The per-epoch line and the final table carry the same numbers as summary.json.
    epoch_line = re.search(
        r"epoch 1/1  train loss [\d.]+ acc [\d.]+%  test loss [\d.]+  acc ([\d.]+)% \(exact\)"
        r"  original-method ([\d.]+)%",
        stdout,
    )
    assert epoch_line, stdout
    assert float(epoch_line.group(1)) == pytest.approx(100 * summary["best_acc"], abs=0.006)
    assert float(epoch_line.group(2)) == pytest.approx(
        100 * summary["original_best_acc"], abs=0.006
    )
    best = re.search(r"best exact test accuracy \(epoch 1\)\s+([\d.]+)%", stdout)
    original = re.search(r"original-method figure \(best over epochs\)\s+([\d.]+)%", stdout)
    gap = re.search(r"gap \(original-method minus exact\)\s+([+-][\d.]+) points", stdout)
    seed = re.search(r"reported accuracy \(pnn-fanout64-shared, independent reproduction\)\s+82\.4%", stdout)
    assert best and original and gap and seed, stdout
    assert float(best.group(1)) == pytest.approx(100 * summary["best_acc"], abs=0.006)
    assert float(original.group(1)) == pytest.approx(100 * summary["original_best_acc"], abs=0.006)
    assert float(gap.group(1)) == pytest.approx(
        100 * (summary["original_best_acc"] - summary["best_acc"]), abs=0.006
    )
    # The exact figure is a count over the 100 test images.
    assert summary["best_acc"] * 100 == pytest.approx(round(summary["best_acc"] * 100))
    assert "412,672 noise mask values" in stdout  # 8 filters, 64 shared masks per layer

    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        checkpoint = torch.load(out / name, weights_only=True)
        assert checkpoint["epoch"] == 1
        assert checkpoint["config"]["net_type"] == "perturb_resnet18"
        assert any(key.endswith("masks") for key in checkpoint["model"])


@needs_cifar10
def test_resume_takes_the_configuration_from_the_checkpoint(smoke: dict[str, Any]) -> None:
    assert smoke["proc"].returncode == 0, smoke["proc"].stderr[-3000:]
    script = load_script()
    checkpoint = str(smoke["out"] / "checkpoint_last.pt")
    config = script.resolve_config(["--resume", checkpoint, "--nepochs", "3"])
    assert config.experiment == "pnn-fanout64-shared"
    assert (config.nfilters, config.batch_size, config.train_subset) == (8, 32, 128)
    assert config.nepochs == 3
    assert config.resume == checkpoint
    assert config.out_dir == str(smoke["out"])


def test_list_experiments_prints_the_ten_presets(tmp_path: Path) -> None:
    proc = run_script("--list-experiments", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    recipe, authors, header, *rows = proc.stdout.splitlines()
    for fact in ("Adam at 1e-4", "450 epochs", "--lr-schedule authors", "noise level 0.1"):
        assert fact in authors
    for fact in ("SGD with Nesterov momentum 0.9", "weight decay 0.0001", "150 epochs",
                 "from epochs 60, 90, 120, 160", "seed 1", "init_weights_"):  # fmt: skip
        assert fact in recipe
    assert header.split()[0] == "name"
    assert [row.split()[0] for row in rows] == list_experiments()
    for row, exp in zip(rows, EXPERIMENTS.values()):
        assert row.split()[1] == exp.source
        assert f" {100 * exp.seed_accuracy:g}% " in row  # 91.8%, 90.35%
        assert exp.seed_command in row


def test_missing_data_dir_exits_with_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-data"
    proc = run_script(
        "--experiment", "baseline", "--nfilters", "4", "--nepochs", "1",
        "--data-dir", str(missing), "--no-progress", "--out-dir", str(tmp_path / "run"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert str(missing) in errors[0]
    assert "--data-dir" in errors[0]


def test_bad_option_exits_with_one_line(tmp_path: Path) -> None:
    proc = run_script(
        "--experiment", "pnn-fanout64-share", "--data-dir", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "Did you mean 'pnn-fanout64-shared'" in proc.stderr


@pytest.mark.parametrize("name", list_experiments())
def test_seed_commands_parse_to_the_presets(name: str) -> None:
    """The preset equals what the example parses from its source's own command line, except
    the options that source's main.py applies without a flag (``Experiment.implicit``: the
    authors' schedule and network changes), which the command alone leaves at other values."""
    script = load_script()
    argv = shlex.split(EXPERIMENTS[name].seed_command)[2:]  # drop "python main.py"
    from_command = script.resolve_config([*argv, "--out-dir", "x"])
    from_preset = script.resolve_config(["--experiment", name, "--out-dir", "x"])
    implicit = EXPERIMENTS[name].implicit_options()
    assert (EXPERIMENTS[name].source == "authors") == bool(implicit)
    for key, value in implicit.items():
        assert getattr(from_command, key) != value, key  # really not set by the command
    assert from_command.replace(experiment=name, **implicit) == from_preset


def test_explicit_flags_override_the_preset() -> None:
    script = load_script()
    config = script.resolve_config(
        ["--experiment", "baseline", "--batch-size", "7", "--nfilters", "64", "--out-dir", "x"]
    )
    assert (config.batch_size, config.nfilters) == (7, 64)  # explicit, even if a seed default
    assert config.learning_rate == 1e-3 and config.net_type == "resnet18"  # from the preset
    assert config.nepochs == RunConfig().nepochs  # seed default
    default = script.resolve_config(["--net-type", "lenet"])
    assert default.out_dir is not None and Path(default.out_dir).name.startswith("lenet-")


def test_impl_flag_reaches_the_layers_and_is_validated() -> None:
    """``--impl`` is parsed, validated and passed to every perturbation layer."""
    from perturbnn import PerturbConv2d, build_model
    from perturbnn.repro.config import RunConfig

    module = load_script()
    assert module.build_parser().parse_args(["--impl", "grouped"]).impl == "grouped"
    with pytest.raises(SystemExit):
        module.build_parser().parse_args(["--impl", "fast"])
    config = RunConfig(net_type="lenet", nfilters=4, impl="compiled")
    model = build_model("lenet", **config.model_config(in_channels=3, input_size=32, nclasses=10))
    layers = [m for m in model.modules() if isinstance(m, PerturbConv2d)]
    assert layers and all(layer.impl == "compiled" for layer in layers)
    with pytest.raises(ValueError, match="impl"):
        RunConfig(impl="fast")


def test_failed_start_leaves_no_empty_output_folder(tmp_path: Path) -> None:
    """A run refused before training removes the output folder it created."""
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--data-dir",
            str(tmp_path / "nodata"),
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "not found" in result.stderr
    assert not out.exists()


def test_bad_names_fail_before_the_configuration_is_printed() -> None:
    module = load_script()
    with pytest.raises(SystemExit):
        module.build_parser().parse_args(["--net-type", "resnt18"])
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--noise_type", "gauss"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout.strip() == ""
    assert "noise_type must be one of ['normal', 'uniform'], got 'gauss'" in result.stderr
