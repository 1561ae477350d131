"""The committed reproduction logs are what today's code computes: the first epoch of the
cheapest committed run, rerun from its logged configuration, gives the logged exact test
accuracy (the same count of correct images) and training loss.

Skipped only while ``docs/data/reproduce-cpu`` holds no run in the current format
(``<experiment>/seed-<n>/`` with the torch thread count in ``summary.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from perturbnn.repro.config import RunConfig
from perturbnn.repro.run import run_experiment
from perturbnn.repro.scales import CPU_COSTS

LOGS = Path(__file__).resolve().parents[2] / "docs" / "data" / "reproduce-cpu"


def _committed_runs(logs: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for summary_path in sorted(logs.glob("*/seed-*/summary.json")):
        summary = json.loads(summary_path.read_text())
        if "torch_threads" in summary and (summary_path.parent / "log.jsonl").is_file():
            yield summary_path.parent, summary


def _cost(summary: dict[str, Any]) -> float:
    config = summary["config"]
    train_s, test_s = CPU_COSTS.get(config["experiment"], (1.0, 1.0))
    return train_s * summary["train_samples"] + test_s * summary["test_samples"]


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def check_first_epoch(logs: Path, data_dir: Path, tmp_path: Path) -> Path:
    """Rerun the first epoch of the cheapest run under ``logs``; return its folder."""
    runs = list(_committed_runs(logs))
    if not runs:
        pytest.skip(f"{logs} holds no run in the current format (regenerate the logs)")
    folder, summary = min(runs, key=lambda run: _cost(run[1]))
    logged = json.loads((folder / "log.jsonl").read_text().splitlines()[0])
    assert logged["epoch"] == 1
    torch.set_num_threads(int(summary["torch_threads"]))
    fields = dict(summary["config"])
    fields.update(
        data_dir=str(data_dir), out_dir=str(tmp_path / "rerun"), resume=None, progress=False
    )
    config = RunConfig(**fields)
    # One epoch of the same run (the learning rate of that epoch is checked below, so a
    # schedule that depended on the number of epochs would show).
    rerun = run_experiment(config.replace(nepochs=1))
    assert rerun.epochs == 1
    first = json.loads((tmp_path / "rerun" / "log.jsonl").read_text().splitlines()[0])
    tests = summary["test_samples"]
    assert round(first["test_acc"] * tests) == round(logged["test_acc"] * tests), folder
    assert first["train_loss"] == pytest.approx(logged["train_loss"], rel=1e-6), folder
    assert first["lr"] == pytest.approx(logged["lr"]), folder
    return folder


def test_first_epoch_of_the_cheapest_committed_run_is_reproduced(
    data_dir: Path, tmp_path: Path, threads: None
) -> None:
    check_first_epoch(LOGS, data_dir, tmp_path)


def test_the_check_passes_on_a_fresh_tiny_reproduction(
    data_dir: Path, tmp_path: Path, threads: None
) -> None:
    from perturbnn.repro.cli import reproduce

    logs = tmp_path / "logs"
    argv = ["--only", "baseline", "original", "--seeds", "2", "--nepochs", "2"]
    argv += ["--train-subset", "40", "--test-subset", "30", "--out-dir", str(logs)]
    argv += ["--report", str(tmp_path / "r.md"), "--img-dir", str(tmp_path / "img")]
    argv += ["--data-dir", str(data_dir), "--conclusions", ""]
    assert reproduce.main(argv) == 0
    folder = check_first_epoch(logs, data_dir, tmp_path)
    assert folder.name == "seed-2" and folder.parent.parent == logs
    # And it can fail: a run whose logged loss the code does not give is caught.
    log = folder / "log.jsonl"
    lines = log.read_text().splitlines()
    record = json.loads(lines[0])
    record["train_loss"] *= 1.001
    log.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with pytest.raises(AssertionError):
        check_first_epoch(logs, data_dir, tmp_path / "again")
