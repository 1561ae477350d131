"""The numbers a run prints do not depend on how it is displayed or where it is written.

One small configuration (lenet, a few hundred CIFAR-10 images, one or two epochs) runs through
``examples/cifar10_repro.py`` in this process under every display and machinery flag that must
not matter: the progress bar on or off, 0 or 2 loader workers, ``--debug``, ``--out-dir`` set or
left to its default, logging on or off. The summaries must be identical, bit for bit, once the
fields that record the flags themselves (and the wall time) are set aside. A run interrupted with
the bar on and resumed with ``--no-progress`` must land on the same numbers as an uninterrupted
run.

Source: issue "results that no display flag can change" (the bar drew one extra number from
the training loader's shuffling generator, so ``--no-progress`` trained on another order).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "cifar10_repro.py"
DATA_DIR = Path(os.environ.get("PERTURBNN_DATA_DIR") or REPO.parent / "shared" / "data")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DATA_DIR / "cifar10").is_dir(), reason=f"CIFAR-10 not found in {DATA_DIR}"
    ),
]

#: lenet on 256 training and 100 test images: a second or two per epoch on one core.
BASE = [
    "--net-type", "lenet", "--nfilters", "6", "--train-subset", "256", "--test-subset", "100",
    "--batch-size", "32", "--device", "cpu", "--data-dir", str(DATA_DIR),
]  # fmt: skip

#: Summary fields that record the flags under test or the clock, not a result.
_NOT_RESULTS = {"wall_time_s", "out_dir"}
_CONFIG_FLAGS = {"progress", "num_workers", "debug", "out_dir", "resume", "nepochs"}


@pytest.fixture(autouse=True)
def bar_drawn(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Draw the bar even though pytest captures stderr (it is drawn on terminals only), and
    count the bars, so that the runs "with the bar" really go through tqdm."""
    from tqdm.auto import tqdm

    from perturbnn.repro import progress

    bars: list[int] = []

    def counting_tqdm(*args: Any, **kwargs: Any) -> Any:
        bars.append(1)
        return tqdm(*args, **kwargs)

    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    monkeypatch.setattr(progress, "_tqdm", lambda: counting_tqdm)
    return bars


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cifar10_repro_invariance", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _logging_off() -> Iterator[None]:
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _run(args: Sequence[str], out_dir: Path, *, logging_on: bool = True) -> dict[str, Any]:
    script = _load_script()
    context = contextlib.nullcontext() if logging_on else _logging_off()
    with context:
        status = script.main(list(args))
    assert status == 0
    summary: dict[str, Any] = json.loads((out_dir / "summary.json").read_text())
    return summary


def _results(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without the fields that name the flags under test or measure time."""
    kept = {k: v for k, v in summary.items() if k not in _NOT_RESULTS}
    kept["config"] = {k: v for k, v in summary["config"].items() if k not in _CONFIG_FLAGS}
    kept["history"] = {k: v for k, v in summary["history"].items() if k != "seconds"}
    return kept


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reference")
    return _run([*BASE, "--nepochs", "1", "--no-progress", "--out-dir", str(out)], out)


VARIANTS: dict[str, tuple[list[str], bool]] = {
    "progress bar": ([], True),
    "two workers": (["--no-progress", "--num-workers", "2"], True),
    "debug": (["--no-progress", "--debug"], True),
    "logging off": (["--no-progress"], False),
    "bar, workers, debug, no logging": (["--num-workers", "2", "--debug"], False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_flags_that_display_do_not_change_the_summary(
    variant: str, reference: dict[str, Any], tmp_path: Path, bar_drawn: list[int]
) -> None:
    flags, logging_on = VARIANTS[variant]
    out = tmp_path / "run"
    bar_drawn.clear()
    summary = _run(
        [*BASE, "--nepochs", "1", *flags, "--out-dir", str(out)], out, logging_on=logging_on
    )
    assert bool(bar_drawn) is ("--no-progress" not in flags)  # the bar was really on (or off)
    assert _results(summary) == _results(reference)


def test_default_out_dir_does_not_change_the_summary(
    reference: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    script = _load_script()
    assert script.main([*BASE, "--nepochs", "1", "--no-progress"]) == 0
    (summary_file,) = (tmp_path / "runs").glob("lenet-*/summary.json")
    assert _results(json.loads(summary_file.read_text())) == _results(reference)


def test_resume_without_the_bar_continues_the_same_run(tmp_path: Path) -> None:
    """Two epochs straight equal one epoch with the bar, then a resume with ``--no-progress``."""
    straight = tmp_path / "straight"
    whole = _run([*BASE, "--nepochs", "2", "--no-progress", "--out-dir", str(straight)], straight)
    split = tmp_path / "split"
    _run([*BASE, "--nepochs", "1", "--out-dir", str(split)], split)
    resumed = _run(
        [
            "--resume",
            str(split / "checkpoint_last.pt"),
            "--nepochs",
            "2",
            "--no-progress",
            "--data-dir",
            str(DATA_DIR),
            "--device",
            "cpu",
        ],  # machine options are not taken from the checkpoint
        split,
    )
    assert resumed["history"]["train_loss"] == whole["history"]["train_loss"]
    assert _results(resumed) == _results(whole)
