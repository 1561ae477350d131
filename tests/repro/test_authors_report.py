"""The report's section on the authors' recipe, on hand-made logs with hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from perturbnn.repro.experiments import presets_of
from perturbnn.repro.report import build_report
from perturbnn.repro.report.authors import authors_markdown, compare_authors
from perturbnn.repro.report.seeds import compare_over_seeds, load_seed_runs


def _write_experiment(root: Path, name: str, best: list[float], original: list[float]) -> None:
    # Per seed two epochs: the best exact accuracy, then 2 points lower; the original-method
    # figure is best in the first epoch.
    for seed, (b, o) in enumerate(zip(best, original), start=1):
        folder = root / name / f"seed-{seed}"
        folder.mkdir(parents=True)
        lines = [
            json.dumps({"epoch": 1, "test_acc": b, "original_acc": o, "seconds": 1.0}),
            json.dumps({"epoch": 2, "test_acc": b - 0.02, "original_acc": o - 0.1, "seconds": 1.0}),
        ]
        (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "summary.json").write_text(json.dumps({"config": {"manual_seed": seed}}))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _write_experiment(root, "baseline", [0.50, 0.52, 0.54], [0.55, 0.58, 0.60])
    _write_experiment(root, "no-noise-1x1", [0.40, 0.41, 0.45], [0.40, 0.41, 0.45])
    _write_experiment(root, "original-first3", [0.38, 0.40, 0.42], [0.40, 0.42, 0.44])
    _write_experiment(root, "pnn-all-layers", [0.30, 0.31, 0.32], [0.30, 0.31, 0.32])
    _write_experiment(root, "authors-first3", [0.44, 0.46, 0.48], [0.47, 0.50, 0.53])
    # One seed only: every comparison with it is "spread not measured".
    _write_experiment(root, "authors-all-layers", [0.35], [0.37])
    return root


def test_comparisons_by_hand(folder: Path) -> None:
    experiments = load_seed_runs(folder)
    got = {c.label: c for c in compare_authors(experiments)}
    assert list(got) == [
        "authors-first3 vs no-noise-1x1",
        "authors-first3 vs baseline",
        "authors-first3 vs original-first3",
        "authors-all-layers vs no-noise-1x1",
        "authors-all-layers vs baseline",
        "authors-all-layers vs pnn-all-layers",
        "authors-first3: original method vs exact",
        "authors-all-layers: original method vs exact",
    ]
    # authors-first3: 44, 46, 48 (mean 46, sd 2); no-noise-1x1: mean 42, sd sqrt(7).
    # Reported: 90.35 - 85.5 = +4.85. D = 4, SE = sqrt(4/3 + 7/3): 2 SE = 3.83 < 4: same sign.
    c = got["authors-first3 vs no-noise-1x1"]
    assert c.seed_difference == pytest.approx(4.85)
    assert (c.difference, c.standard_error) == pytest.approx((4.0, math.sqrt(11 / 3)))
    assert c.verdict == "same as reported"
    # Against the baseline (52 ± 2): reported 90.35 - 91.8 = -1.45; D = -6, SE = sqrt(8/3).
    c = got["authors-first3 vs baseline"]
    assert c.seed_difference == pytest.approx(-1.45)
    assert c.difference == pytest.approx(-6.0) and c.verdict == "same as reported"
    # Against original-first3 (40 ± 2): reported 90.35 - 86.2 = +4.15; D = +6 > 2 sqrt(8/3).
    assert got["authors-first3 vs original-first3"].difference == pytest.approx(6.0)
    for label in ("authors-all-layers vs no-noise-1x1", "authors-all-layers vs baseline"):
        assert got[label].verdict == "spread not measured"
    # Metric error of authors-first3: gaps 3, 4, 5 points: mean 4, SE 1/sqrt(3).
    c = got["authors-first3: original method vs exact"]
    assert (c.difference, c.standard_error) == pytest.approx((4.0, 1 / math.sqrt(3)))
    # The independent reproduction's comparisons leave the authors' presets out.
    labels = [c.label for c in compare_over_seeds(experiments)]
    assert not [label for label in labels if label.startswith("authors")]
    assert "original-first3 vs no-noise-1x1" in labels


def test_section_shows_both_recipes_side_by_side(folder: Path) -> None:
    text = "\n".join(authors_markdown(load_seed_runs(folder)))
    assert "## The authors' recipe at this scale" in text
    assert (
        "| authors | `authors-first3` | 90.35 | 3 | 46.00 ± 2.00 | 44.00 ± 2.00 | 50.00 ± 3.00 |"
        in text
    )
    assert "| authors | `authors-all-layers` | 85.92 | 1 | 35.00 | 33.00 | 37.00 |" in text
    assert "| independent | `no-noise-1x1` | 85.50 | 3 | 42.00 ± 2.65 |" in text
    assert "| independent | `baseline` | 91.80 | 3 | 52.00 ± 2.00 |" in text
    assert (
        "| authors-first3 vs no-noise-1x1 | +4.85 | +4.00 | 3.83 | same as reported |"
    ) in text
    assert "| authors-first3: original method vs exact | + (overstates) | +4.00 | 1.15 |" in text
    assert "89.4% to 90.8%" in text  # the users' re-runs


def test_report_places_the_section_and_builds_without_the_authors_runs(
    folder: Path, tmp_path: Path
) -> None:
    text = build_report(
        folder, tmp_path / "r.md", tmp_path / "img", plots=False
    ).markdown.read_text()
    assert text.index("## Over seeds") < text.index("## The authors' recipe at this scale")
    assert text.index("## The authors' recipe at this scale") < text.index("## Results of seed 1")
    # The independent reproduction's claims and ranking leave the authors' runs out.
    claims = text.split(
        "## How the measured ordering compares with the independent reproduction's"
    )[1]
    ranking = [
        line
        for line in claims.splitlines()
        if line.startswith("- Ranking in the independent reproduction")
    ]
    assert ranking and "authors" not in ranking[0]
    # Logs written before the authors' presets existed (as docs/data/reproduce-cpu/): the
    # report still builds; the presets are named as not run, in the section too.
    for name in presets_of("authors"):
        for sub in (folder / name).iterdir():
            for f in sub.iterdir():
                f.unlink()
            sub.rmdir()
        (folder / name).rmdir()
    text = build_report(
        folder, tmp_path / "r.md", tmp_path / "img", plots=False
    ).markdown.read_text()
    assert "Not run (no log in the folder): " in text
    assert "`authors-first3`, `authors-all-layers`" in text
    assert "| authors | `authors-first3` | 90.35 | 0 | not run | | |" in text
    assert "(no run of the authors' presets in this folder)" in text
