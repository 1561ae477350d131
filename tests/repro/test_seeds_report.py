"""The over-seeds statistics and the verdict rule, on hand-made logs with hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from perturbnn.repro.report import build_report
from perturbnn.repro.report.seeds import (
    DIFFERS,
    SAME,
    UNMEASURED,
    WITHIN,
    compare_over_seeds,
    load_seed_runs,
    spread,
    verdict,
)


def _write_run(folder: Path, tests: list[float], originals: list[float], seed: int) -> None:
    folder.mkdir(parents=True)
    lines = [
        json.dumps({"epoch": i + 1, "test_acc": t, "original_acc": o, "seconds": 1.0})
        for i, (t, o) in enumerate(zip(tests, originals))
    ]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(json.dumps({"config": {"manual_seed": seed}}))


def _write_experiment(root: Path, name: str, best: list[float], original: list[float]) -> None:
    # Two epochs: the best exact accuracy first, then 2 points lower (the last epoch); the
    # original-method figure is best in the first epoch too.
    for seed, (b, o) in enumerate(zip(best, original), start=1):
        _write_run(root / name / f"seed-{seed}", [b, b - 0.02], [o, o - 0.10], seed)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _write_experiment(root, "baseline", [0.50, 0.52, 0.54], [0.55, 0.58, 0.60])
    _write_experiment(root, "no-noise-1x1", [0.40, 0.41, 0.45], [0.40, 0.41, 0.45])
    _write_experiment(root, "original", [0.43, 0.44, 0.45], [0.43, 0.44, 0.45])
    _write_experiment(root, "pnn-all-layers", [0.42, 0.43, 0.44], [0.42, 0.43, 0.44])
    _write_experiment(root, "pnn-fanout64-shared", [0.50, 0.50, 0.50], [0.50, 0.50, 0.50])
    # One seed only, in the old one-folder layout with manual_seed 7.
    _write_run(root / "original-first3", [0.30], [0.20], 7)
    return root


def test_spread_by_hand() -> None:
    s = spread([50.0, 52.0, 54.0])  # deviations -2, 0, 2: variance 8 / 2 = 4
    assert (s.n, s.mean, s.sd) == (3, 52.0, 2.0)
    one = spread([3.0])
    assert one.mean == 3.0 and math.isnan(one.sd)
    with pytest.raises(ValueError, match="at least one"):
        spread([])


@pytest.mark.parametrize(
    ("difference", "se", "sign", "n", "expected"),
    [
        (1.0, 0.5, 1, 3, WITHIN),  # |D| = 2 SE exactly: within
        (1.01, 0.5, 1, 3, SAME),
        (-1.01, 0.5, 1, 3, DIFFERS),
        (-1.01, 0.5, -1, 3, SAME),
        (1.5, 0.5, 0, 3, DIFFERS),  # Klachko: about equal; beyond 2 SE and beyond 1 point
        (0.9, 0.1, 0, 3, SAME),  # beyond 2 SE but within 1 point
        (3.0, 2.0, 0, 3, SAME),  # within 2 SE
        (5.0, 0.1, 1, 1, UNMEASURED),
        (5.0, math.nan, 1, 3, UNMEASURED),
    ],
)
def test_verdict_rule(difference: float, se: float, sign: int, n: int, expected: str) -> None:
    assert verdict(difference, se, sign, n) == expected


def test_load_and_compare_by_hand(folder: Path) -> None:
    experiments = {e.name: e for e in load_seed_runs(folder)}
    assert experiments["original-first3"].seeds == [7]
    base = experiments["baseline"]
    assert base.seeds == [1, 2, 3]
    assert base.best.values == pytest.approx((50.0, 52.0, 54.0))
    assert (base.best.mean, base.best.sd) == pytest.approx((52.0, 2.0))
    assert (base.last.mean, base.last.sd) == pytest.approx((50.0, 2.0))
    assert (base.original.mean, base.original.sd) == pytest.approx((173 / 3, math.sqrt(19 / 3)))
    # no-noise-1x1: 40, 41, 45: mean 42, deviations -2, -1, 3: variance 14 / 2 = 7.
    assert experiments["no-noise-1x1"].best.sd == pytest.approx(math.sqrt(7))

    got = {c.label: c for c in compare_over_seeds(list(experiments.values()))}
    # baseline vs 1x1: D = 52 - 42 = 10, SE = sqrt(4/3 + 7/3); seed 91.8 - 85.5 = +6.3.
    c = got["baseline vs no-noise-1x1"]
    assert c.difference == pytest.approx(10.0)
    assert c.standard_error == pytest.approx(math.sqrt(11 / 3))
    assert c.seed_difference == pytest.approx(6.3)
    assert c.verdict == SAME
    # original vs 1x1: seed 85.7 - 85.5 = +0.2 (about equal); D = 2, 2 SE = 2 sqrt(8/3) = 3.27.
    c = got["original vs no-noise-1x1"]
    assert (c.seed_sign, c.difference) == (0, pytest.approx(2.0))
    assert c.verdict == SAME
    # all layers: seed -12.9; D = 43 - 42 = +1 < 2 sqrt(1/3 + 7/3): within the spread.
    assert got["pnn-all-layers vs no-noise-1x1"].verdict == WITHIN
    # fanout 64 shared: seed -3.1; D = +8 > 2 sqrt(7/3) = 3.06, the other sign: differs.
    c = got["pnn-fanout64-shared vs no-noise-1x1"]
    assert c.standard_error == pytest.approx(math.sqrt(7 / 3))
    assert c.verdict == DIFFERS
    # one seed: not measured.
    assert got["original-first3 vs no-noise-1x1"].verdict == UNMEASURED
    # metric error of the baseline, paired: gaps 5, 6, 6: mean 17/3, sd sqrt(1/3), SE 1/3.
    c = got["baseline: original method vs exact"]
    assert c.difference == pytest.approx(17 / 3)
    assert c.standard_error == pytest.approx(1 / 3)
    assert c.verdict == SAME
    # no-noise-1x1: gaps all 0: SE 0, |D| <= 0: within.
    assert got["no-noise-1x1: original method vs exact"].verdict == WITHIN


def test_report_over_seeds_and_conclusions(folder: Path, tmp_path: Path) -> None:
    conclusions = tmp_path / "conclusions.md"
    report = build_report(
        folder, tmp_path / "report.md", tmp_path / "img", plots=False, conclusions=conclusions
    )
    text = report.markdown.read_text()
    assert "Not written yet" in text and "## What we conclude" in text
    assert "## Over seeds" in text and "## Results of seed 1" in text
    assert "| `baseline` | 3 | 52.00 ± 2.00 | 50.00 ± 2.00 | 57.67 ± 2.52 |" in text
    assert "| baseline vs no-noise-1x1 | +6.30 | +10.00 | 3.83 | agrees with Klachko |" in text
    conclusions.write_text("Hand-written: noise adds nothing here.\n")
    text = build_report(
        folder, tmp_path / "report.md", tmp_path / "img", plots=False, conclusions=conclusions
    ).markdown.read_text()
    assert "Hand-written: noise adds nothing here." in text
    assert text.index("What we conclude") < text.index("## Over seeds")
    assert not (tmp_path / "img" / "seeds.png").exists()


def test_seeds_plot(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    build_report(folder, tmp_path / "report.md", tmp_path / "img")
    assert (tmp_path / "img" / "seeds.png").stat().st_size > 1000
