"""The independent reproduction's three ordering claims checked against the runs, and the
original metric's error.

Source: the independent reproduction's (Klachko's) results and claims in
``../shared/reference/pnn-reproduction-notes.txt``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from perturbnn.repro.experiments import EXPERIMENTS, get_experiment, presets_of
from perturbnn.repro.report.format import (
    _points,
    format_percent,
)
from perturbnn.repro.report.runs import (
    RunLog,
)

__all__ = ["ABOUT_EQUAL_POINTS", "Finding", "MetricError", "compare_with_seed", "metric_error"]


#: Two accuracies closer than this many percentage points count as "about equal": the
#: independent reproduction's own threshold ("less than 1% improvement" of PNN over 1x1
#: convolutions without noise).
ABOUT_EQUAL_POINTS = 1.0

# The experiments the independent reproduction's claims are about (names of
# :mod:`perturbnn.repro.experiments`).
_BASELINE = "baseline"
_NO_NOISE = "no-noise-1x1"
# The PNN the independent reproduction sets against the 1x1 network without noise: ~5.5M
# parameters, 3x3 first layer, perturbations followed by 1x1 convolutions elsewhere (86.2%
# against 85.5%).
_PNN_MATCHED = "original-first3"


# --------------------------------------------------------------------------------------------
# The independent reproduction's claims, checked
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One claim of the independent reproduction, checked against the measured runs.

    Attributes:
        claim (str): the independent reproduction's claim, in a few words.
        holds (bool, optional): whether the runs here agree; ``None`` if the runs it needs are
            missing.
        text (str): one or two sentences with the numbers.
    """

    claim: str
    holds: Optional[bool]
    text: str

    @property
    def verdict(self) -> str:
        """``"Agrees with Klachko"``, ``"Differs from Klachko"`` or ``"Not measured"``."""
        if self.holds is None:
            return "Not measured"
        return "Agrees with Klachko" if self.holds else "Differs from Klachko"


def _label(run: RunLog) -> str:
    return f"`{run.name}`"


def _find_baseline_best(by_name: Mapping[str, RunLog]) -> Finding:
    claim = "the baseline (regular 3x3 convolutions) has the best accuracy"
    baseline = by_name.get(_BASELINE)
    others = [run for name, run in by_name.items() if name != _BASELINE]
    if baseline is None or not others:
        return Finding(claim, None, f"needs `{_BASELINE}` and at least one other run.")
    rival = max(others, key=lambda r: r.best_acc)
    margin = baseline.best_acc - rival.best_acc
    if margin > 0:
        text = (
            f"`{_BASELINE}` is the best here: {format_percent(baseline.best_acc)}, "
            f"{_points(margin)} points above the next best, {_label(rival)} "
            f"({format_percent(rival.best_acc)})."
        )
        holds = True
    elif margin == 0:
        text = (
            f"`{_BASELINE}` ties with {_label(rival)} for the best accuracy here "
            f"({format_percent(baseline.best_acc)}): it is not ahead."
        )
        holds = False
    else:
        text = (
            f"`{_BASELINE}` is **not** the best here: {_label(rival)} reaches "
            f"{format_percent(rival.best_acc)} against the baseline's "
            f"{format_percent(baseline.best_acc)} ({_points(margin)} points)."
        )
        holds = False
    no_noise = by_name.get(_NO_NOISE)
    if no_noise is not None:
        seed_gap = get_experiment(_BASELINE).seed_accuracy - get_experiment(_NO_NOISE).seed_accuracy
        text += (
            f" The cost of 1x1 filters (`{_BASELINE}` minus `{_NO_NOISE}`) is "
            f"{_points(baseline.best_acc - no_noise.best_acc)} points here, "
            f"{_points(seed_gap)} in the independent reproduction."
        )
    return Finding(claim, holds, text)


def _find_no_noise_equal(by_name: Mapping[str, RunLog]) -> Finding:
    claim = (
        f"1x1 convolutions without noise are about equal to PNN (`{_NO_NOISE}` against "
        f"`{_PNN_MATCHED}`, within {ABOUT_EQUAL_POINTS:g} point)"
    )
    no_noise, pnn = by_name.get(_NO_NOISE), by_name.get(_PNN_MATCHED)
    if no_noise is None or pnn is None:
        return Finding(claim, None, f"needs `{_NO_NOISE}` and `{_PNN_MATCHED}`.")
    diff = pnn.best_acc - no_noise.best_acc
    seed_diff = get_experiment(_PNN_MATCHED).seed_accuracy - get_experiment(_NO_NOISE).seed_accuracy
    holds = abs(100 * diff) < ABOUT_EQUAL_POINTS
    if holds:
        head = f"about equal here: `{_PNN_MATCHED}` minus `{_NO_NOISE}` is {_points(diff)} points"
    else:
        side = "above" if diff > 0 else "below"
        head = (
            f"**not** about equal here: `{_PNN_MATCHED}` is {abs(100 * diff):.2f} points {side} "
            f"`{_NO_NOISE}`"
        )
    text = (
        f"{head} ({format_percent(pnn.best_acc)} against {format_percent(no_noise.best_acc)}; "
        f"the independent reproduction: {_points(seed_diff)})."
    )
    noisy = [
        run for name, run in by_name.items() if name not in (_BASELINE, _NO_NOISE, _PNN_MATCHED)
    ]
    if noisy:
        parts = ", ".join(f"{_label(r)} {_points(r.best_acc - no_noise.best_acc)}" for r in noisy)
        text += f" The other noise-mask runs against `{_NO_NOISE}`: {parts} points."
    return Finding(claim, holds, text)


def _find_original_above(runs: Sequence[RunLog]) -> Finding:
    claim = "the original method's figure is above the exact accuracy"
    if not runs:
        return Finding(claim, None, "needs at least one run.")
    gaps = [(run, run.original_best_acc - run.best_acc) for run in runs]
    below = [run for run, gap in gaps if gap <= 0]
    lo = min(gap for _, gap in gaps)
    hi = max(gap for _, gap in gaps)
    spread = f"by {_points(lo)} to {_points(hi)} points" if lo != hi else f"by {_points(lo)} points"
    if not below:
        text = (
            f"in all {len(runs)} runs the best original-method figure is above the best exact "
            f"accuracy, {spread}."
        )
        return Finding(claim, True, text)
    names = ", ".join(
        f"{_label(r)} ({_points(r.original_best_acc - r.best_acc)} points)" for r in below
    )
    text = (
        f"in {len(below)} of {len(runs)} runs the best original-method figure is **not** above "
        f"the best exact accuracy: {names}. Over all runs the difference goes from "
        f"{_points(lo)} to {_points(hi)} points. The smoothed figure follows the last ten or so "
        f"test batches, so whether it lands above or below the exact accuracy depends on which "
        f"images come last in the test order."
    )
    return Finding(claim, False, text)


def compare_with_seed(runs: Sequence[RunLog]) -> list[Finding]:
    """Check the independent reproduction's three ordering claims against ``runs``.

    The claims: the baseline with regular 3x3 convolutions is the best; 1x1 convolutions
    without noise are about as good as PNN (within :data:`ABOUT_EQUAL_POINTS`, the independent
    reproduction's own "less than 1%"); the original method's figure is above the exact accuracy.
    Accuracies are the best exact test accuracy over the epochs, as the independent reproduction
    reports them.

    Args:
        runs (Sequence[RunLog]): the runs; presets are recognised by :attr:`RunLog.name`. Runs
            of the authors' presets are left out (the claims are the independent
            reproduction's, about its own experiments; see
            :mod:`perturbnn.repro.report.authors`).

    Returns:
        list[Finding]: one per claim, in that order.
    """
    independent = set(presets_of("independent"))
    mine = [run for run in runs if run.name in independent or run.name not in EXPERIMENTS]
    by_name = {run.name: run for run in mine}
    return [
        _find_baseline_best(by_name),
        _find_no_noise_equal(by_name),
        _find_original_above(mine),
    ]


def _ranking(runs: Sequence[RunLog], key: Any) -> str:
    """``"`a` 61.3% > `b` 58.0% = `c` 58.0%"``: best first, ``=`` between equal values."""
    ranked = sorted(runs, key=key, reverse=True)
    text = ""
    for index, run in enumerate(ranked):
        if index:
            text += " = " if key(run) == key(ranked[index - 1]) else " > "
        text += f"`{run.name}` {format_percent(key(run), 2)}"
    return text


def _noise_note(runs: Sequence[RunLog]) -> Optional[str]:
    totals = [r.test_samples for r in runs if r.test_samples]
    if not totals:
        return None
    total = min(totals)
    accs = sorted(r.best_acc for r in runs)
    p = accs[len(accs) // 2]
    one = 100 * math.sqrt(p * (1 - p) / total)
    return (
        f"Each accuracy here is counted over {total:,} test images: near {format_percent(p, 0)} "
        f"its binomial standard error is {one:.1f} points, so a difference between two runs "
        f"smaller than about {2 * math.sqrt(2) * one:.1f} points (two standard errors of the "
        f"difference) is within that noise. Each experiment ran once (seed "
        f"{_common(runs, 'manual_seed')}); the spread between training runs is not measured."
    )


def _common(runs: Sequence[RunLog], key: str) -> str:
    values = {str(r.config.get(key)) for r in runs if r.config}
    return values.pop() if len(values) == 1 else "varies"


# --------------------------------------------------------------------------------------------
# The metric error of one run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricError:
    """One run's exact accuracy against the original method's figure, epoch by epoch.

    Attributes:
        run (RunLog): the run.
    """

    run: RunLog

    @property
    def gaps(self) -> list[float]:
        """Original-method figure minus exact accuracy, per epoch."""
        return [o - e for o, e in zip(self.run.original_acc, self.run.test_acc)]

    @property
    def reported_gap(self) -> float:
        """Best original-method figure minus best exact accuracy (Klachko's 90.53 vs 85.91)."""
        return self.run.original_best_acc - self.run.best_acc

    @property
    def selection_exact(self) -> float:
        """How much picking the best epoch raises the exact accuracy over the last epoch's."""
        return self.run.best_acc - self.run.last_acc

    @property
    def selection_original(self) -> float:
        """How much picking the best epoch raises the original-method figure over its last."""
        return self.run.original_best_acc - self.run.original_last_acc

    @property
    def total_inflation(self) -> float:
        """Best original-method figure minus the last exact accuracy (no selection at all)."""
        return self.run.original_best_acc - self.run.last_acc


def metric_error(runs: Sequence[RunLog], name: Optional[str] = None) -> Optional[MetricError]:
    """The metric error of run ``name``, or of a default run.

    Args:
        runs (Sequence[RunLog]): the runs.
        name (str, optional): the run to use. Default: ``"original"`` (the original PNN
            network, the model of the independent reproduction's own metric comparison) if
            present, else the run with the most epochs.

    Returns:
        MetricError, optional: ``None`` if there is no run.

    Raises:
        ValueError: if ``name`` is given but no run has that name.
    """
    if not runs:
        return None
    by_name = {run.name: run for run in runs}
    if name is not None:
        if name not in by_name:
            raise ValueError(f"no run named {name!r}; runs: {', '.join(by_name)}")
        return MetricError(by_name[name])
    if "original" in by_name:
        return MetricError(by_name["original"])
    return MetricError(max(runs, key=lambda r: len(r.epochs)))


def _epoch_rows(run: RunLog, limit: int = 40) -> list[int]:
    """Indices of the epochs to list: all, or at most about ``limit`` with the best ones."""
    count = len(run.epochs)
    if count <= limit:
        return list(range(count))
    step = math.ceil(count / (limit - 5))
    keep = set(range(0, count, step)) | {count - 1, run.best_index, run.original_best_index}
    return sorted(keep)
