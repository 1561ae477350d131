"""The demo command: its noise estimate and sentence, and that it is the default command."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest

from perturbnn.repro import cli
from perturbnn.repro.cli import demo
from perturbnn.repro.signals import TrainingInterrupted


def test_smoothed_noise_by_hand() -> None:
    # p = 0.5, batch 10: 0.25 / 10 = 0.025; times (1 - 0.7) / (1 + 0.7) = 0.3 / 1.7.
    assert demo.smoothed_noise(0.5, 10) == pytest.approx(math.sqrt(0.025 * 0.3 / 1.7))
    assert demo.smoothed_noise(1.0, 10) == 0.0


def test_gap_sentence_says_when_the_gap_is_within_the_noise() -> None:
    noise = math.sqrt(0.025 * 0.3 / 1.7)  # 0.0664: twice is 13.3 points
    assert "overstates the exact accuracy by 20.0 points" in demo.gap_sentence(0.2, 0.5, 10)
    within = demo.gap_sentence(0.1, 0.5, 10)
    assert "not reliably positive" in within and f"{100 * noise:.1f} points" in within
    assert "(-3.0 points, not above twice that, 13.3)" in demo.gap_sentence(-0.03, 0.5, 10)


def test_demo_is_the_default_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "main", lambda argv: calls.append(list(argv)) or 0)
    assert cli.main([]) == 0 and cli.main(["demo", "--manual-seed", "2"]) == 0
    assert calls == [[], ["--manual-seed", "2"]]


def test_demo_config_is_a_short_run_at_width_over_8() -> None:
    args = demo.build_parser().parse_args(["--manual-seed", "3"])
    config = demo.demo_config(args)
    assert (config.experiment, config.nfilters, config.nepochs) == ("no-noise-1x1", 16, 8)
    assert (config.train_subset, config.test_subset, config.manual_seed) == (4000, 2000, 3)
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--experiment", "nope"])


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
    def interrupted(config: object, logger: object = None) -> None:
        raise error

    monkeypatch.setattr(demo, "run_experiment", interrupted)
    monkeypatch.setattr(demo, "log_to_stdout", lambda: None)
    assert demo.main(["--threads", "1"]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [line]  # no traceback
