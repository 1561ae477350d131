"""The demo command: its verdict sentence, its output, errors before output, and that it is
the default command."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from perturbnn.metrics import OrderingOverstatement, OriginalSmoothedAccuracy
from perturbnn.repro import cli
from perturbnn.repro.cli import demo
from perturbnn.repro.fit import FitSummary
from perturbnn.repro.signals import TrainingInterrupted


def study(figures: list[float], exact: float = 0.30, actual: float = 0.32) -> OrderingOverstatement:
    return OrderingOverstatement(
        figures=torch.tensor(figures, dtype=torch.float64), actual=actual, exact_best=exact
    )


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[+-]\d+\.\d+", text)]


def test_sentence_says_overstates_when_the_interval_is_above_zero() -> None:
    s = study([0.31, 0.32, 0.33, 0.32])  # gaps +1, +2, +3, +2 points
    low, high = s.interval
    assert low > 0
    text = demo.overstatement_sentence(s)
    assert text.startswith("The original method overstates the exact accuracy beyond its noise")
    assert "over 4 random orders" in text and "above it in 100.0% of orders" in text
    # mean, interval, this run's own gap: the printed numbers are the study's
    assert numbers(text)[:4] == pytest.approx(
        [2.0, round(100 * low, 2), round(100 * high, 2), 2.0], abs=1e-9
    )


def test_sentence_says_understates_when_the_interval_is_below_zero() -> None:
    s = study([0.27, 0.28, 0.29, 0.28], actual=0.29)
    assert s.interval[1] < 0
    text = demo.overstatement_sentence(s)
    assert text.startswith("The original method understates the exact accuracy here")
    assert "does not show at this size" in text and "above it in 0.0% of orders" in text
    assert numbers(text)[0] == pytest.approx(-2.0) and numbers(text)[-1] == pytest.approx(-1.0)


def test_sentence_says_not_measurable_when_the_interval_includes_zero() -> None:
    s = study([0.28, 0.32, 0.29, 0.31], actual=0.30)
    low, high = s.interval
    assert low < 0 < high
    text = demo.overstatement_sentence(s)
    assert text.startswith("No overstatement is measurable at this size")
    assert "an interval that includes zero" in text and "above it in 50.0% of orders" in text


def test_demo_config_is_a_short_run_of_perturbation_layers() -> None:
    args = demo.build_parser().parse_args(["--manual-seed", "3"])
    config = demo.demo_config(args)
    assert (config.experiment, config.nfilters, config.nepochs) == ("pnn-fanout64-shared", 8, 8)
    assert (config.nmasks, config.filter_size) == (64, 0)  # noise masks, fanout 64
    assert (config.train_subset, config.test_subset, config.manual_seed) == (3000, 2000, 3)
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--experiment", "nope"])


def test_demo_is_the_default_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "main", lambda argv: calls.append(list(argv)) or 0)
    assert cli.main([]) == 0 and cli.main(["demo", "--manual-seed", "2"]) == 0
    assert calls == [[], ["--manual-seed", "2"]]


def test_missing_data_is_an_error_before_any_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none"
    assert demo.main(["--data-dir", str(missing), "--threads", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # not even the demo: and threads: lines
    assert err.count("\n") == 1 and err.endswith("\n")  # one line
    how, _, looked = err.partition("Looked for:")
    assert how.startswith(f"error: CIFAR-10 train split not found in {missing.absolute()}: ")
    assert "--download" in how and "--data-dir" in how  # the flags, not download=/data_dir
    assert "download=True" not in err and "data_dir" not in err
    assert "cifar10/cifar10_train_1.npz" in looked


class FakeRun:
    """What prepare_run returns, with a fit() that gives ``summary`` or raises ``error``."""

    distributed = None
    model = torch.nn.Linear(1, 1)
    mask_values = 3 * 32 * 32  # a model with noise masks

    def __init__(self, summary: Optional[FitSummary] = None, error: Optional[BaseException] = None):
        self.summary, self.error = summary, error
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def fit(self, logger: Any = None) -> FitSummary:
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def fake_summary(seed: int = 0) -> FitSummary:
    """A run of 3 epochs on 160 test images whose figures come from its predictions."""
    correct = torch.rand(3, 160, generator=torch.Generator().manual_seed(seed)) < 0.35
    smoothed = OriginalSmoothedAccuracy(nominal_batch_size=16)
    for epoch in correct:
        for batch in epoch.split(16):
            smoothed.update(batch.long(), torch.ones_like(batch, dtype=torch.long))
        smoothed.end_epoch()
    exact = [int(row.sum()) / 160 for row in correct]
    best = max(range(3), key=exact.__getitem__)
    return FitSummary(
        best_acc=exact[best],
        best_epoch=best + 1,
        last_acc=exact[-1],
        original_best_acc=smoothed.best,
        original_last_acc=smoothed.history[-1],
        epochs=3,
        parameters=1,
        mask_values=0,
        wall_time_s=1.0,
        device="cpu",
        history={},
        config={},
        metadata={"threads": {"initial": 1, "changes": []}},
        test_correct=correct,
    )


@pytest.mark.parametrize("display", [[], ["--progress"]])
def test_demo_prints_the_ordering_study_of_the_runs_predictions(
    display: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = fake_summary()
    monkeypatch.setattr(demo, "prepare_run", lambda config: FakeRun(summary))
    monkeypatch.setattr(demo, "log_to_stdout", lambda: None)
    monkeypatch.setattr(demo, "DEMO_ORDERINGS", 50)
    assert demo.main(["--threads", "1", "--manual-seed", "4", *display]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("demo: the independent reproduction's 'pnn-fanout64-shared'")
    assert "perturbation layers, 64 noise masks per channel" in lines[0]
    assert f"{summary.best_acc:.2%}" in out and f"{summary.original_best_acc:.2%}" in out
    # The study is the metric function's, on the run's predictions, seeded by --manual-seed.
    from perturbnn.metrics import overstatement_over_orderings

    expected = overstatement_over_orderings(
        summary.test_correct, 16, orderings=50, generator=torch.Generator().manual_seed(4)
    )
    assert expected.actual == summary.original_best_acc  # the run's own order
    row = next(x for x in lines if x.lstrip().startswith("gap, mean over 50 test orders"))
    low, high = expected.interval
    assert numbers(row) == pytest.approx(
        [round(100 * v, 2) for v in (expected.mean, low, high)], abs=1e-9
    )
    assert demo.overstatement_sentence(expected) in lines


def test_demo_output_does_not_depend_on_display_flags(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "prepare_run", lambda config: FakeRun(fake_summary(1)))
    monkeypatch.setattr(demo, "log_to_stdout", lambda: None)
    monkeypatch.setattr(demo, "DEMO_ORDERINGS", 40)
    outputs = []
    for display in ([], ["--progress"]):
        assert demo.main(["--threads", "1", *display]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (
            TrainingInterrupted("SIGINT received in epoch 3", signum=signal.SIGINT),
            130,
            "demo interrupted by SIGINT",
        ),
        (
            TrainingInterrupted(
                "SIGTERM received", signum=signal.SIGTERM, checkpoint=Path("r/c.pt")
            ),
            143,
            f"demo interrupted by SIGTERM; the last completed epoch is in {Path('r/c.pt')}",
        ),
        (KeyboardInterrupt(), 130, "demo interrupted"),
    ],
)
def test_demo_interrupted_says_so_in_one_line(
    error: BaseException,
    code: int,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(demo, "prepare_run", lambda config: FakeRun(error=error))
    monkeypatch.setattr(demo, "log_to_stdout", lambda: None)
    assert demo.main(["--threads", "1"]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [line]  # no traceback


@pytest.mark.parametrize(
    ("experiment", "mask_values", "kind"),
    [
        ("pnn-fanout64-shared", 10, "(perturbation layers, 64 noise masks per channel)"),
        ("original", 10, "(perturbation layers, 1 noise mask per channel)"),
        ("no-noise-1x1", 0, "(no noise masks)"),
    ],
)
def test_demo_header_says_whether_the_network_has_noise_masks(
    experiment: str, mask_values: int, kind: str
) -> None:
    args = demo.build_parser().parse_args(["--experiment", experiment])
    header = demo._header(args, demo.demo_config(args), mask_values)
    assert f"{experiment!r} experiment {kind} at width 8" in header


def test_an_unusable_out_dir_is_an_error_before_any_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(demo, "prepare_run", lambda config: FakeRun(fake_summary()))
    assert demo.main(["--threads", "1", "--out-dir", str(blocker / "run")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
