"""Runs over several seeds: the mean and spread of each experiment, and each of the independent
reproduction's comparisons stated with that spread.

Layout read: ``<out-dir>/<experiment>/seed-<n>/`` (``log.jsonl``, ``summary.json``), as
``perturbnn-repro reproduce --seeds ...`` writes it. A run folder directly in
``<out-dir>/<experiment>/`` (the one-seed layout before 0.x) is read as the seed of its
``manual_seed``.

The verdict rule (:func:`verdict`), for a comparison "A minus B" of accuracies in points:

* ``D`` = mean over seeds of A minus mean over seeds of B;
* ``SE`` = the standard error of ``D``: ``sqrt(sd_A**2 / n_A + sd_B**2 / n_B)`` for two
  experiments (sample standard deviations, ``n - 1`` in the denominator), or
  ``sd(A_i - B_i) / sqrt(n)`` for two figures of the same runs (paired by seed: the original
  method against the exact accuracy);
* Klachko's sign ``s``: the sign of the independent reproduction's own difference, ``0`` where
  it found the two within :data:`~perturbnn.repro.report.findings.ABOUT_EQUAL_POINTS` (1 point)
  of each other ("about equal"); the metric error's sign is ``+1`` (the original figure overstates).

Then: fewer than two seeds on either side: ``"spread not measured"``. Otherwise, if ``s != 0``:
``|D| <= 2 SE``: ``"within run-to-run spread"``; ``D`` of the sign ``s``: ``"agrees with
Klachko"``; else ``"differs"``. If ``s == 0`` (the independent reproduction found them about
equal): ``|D| <= 2 SE`` or ``|D| <= 1`` point: ``"agrees with Klachko"``; else ``"differs"``.
Two standard errors is about a 95% interval for normal spread; with three seeds it is a loose
rule (a t-interval would be wider), so "agrees with Klachko" and "differs" mean "beyond twice
the standard error", not "significant at 5%".

Source: the independent reproduction's table and claims in
``../shared/reference/pnn-reproduction-notes.txt``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from perturbnn.repro.experiments import EXPERIMENTS, presets_of
from perturbnn.repro.report.findings import ABOUT_EQUAL_POINTS
from perturbnn.repro.report.runs import LOG_FILE, RunLog, load_run

__all__ = [
    "DIFFERS",
    "SAME",
    "UNMEASURED",
    "WITHIN",
    "Comparison",
    "ExperimentSeeds",
    "Spread",
    "compare_over_seeds",
    "load_seed_runs",
    "seeds_markdown",
    "spread",
    "verdict",
]

PathLike = Union[str, os.PathLike[str]]

SAME = "agrees with Klachko"
DIFFERS = "differs"
WITHIN = "within run-to-run spread"
UNMEASURED = "spread not measured"

_SEED_FOLDER = re.compile(r"^seed-(\d+)$")


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one figure over seeds (in points).

    Attributes:
        values (tuple[float, ...]): one value per seed, in points (percent).
        mean (float): their mean.
        sd (float): their sample standard deviation (``n - 1``); ``nan`` for one value.
    """

    values: tuple[float, ...]
    mean: float
    sd: float

    @property
    def n(self) -> int:
        """The number of seeds."""
        return len(self.values)


def spread(values: Sequence[float]) -> Spread:
    """The :class:`Spread` of ``values`` (points).

    Raises:
        ValueError: if ``values`` is empty.
    """
    if not values:
        raise ValueError("spread needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Spread(tuple(float(v) for v in values), mean, sd)


def verdict(difference: float, standard_error: float, seed_sign: int, n: int) -> str:
    """The verdict of a comparison (see the module docstring for the rule).

    Args:
        difference: ``D``, our mean difference in points.
        standard_error: ``SE`` of ``D`` in points.
        seed_sign: ``+1``, ``-1`` or ``0`` (the independent reproduction found them about equal).
        n: the smallest number of seeds on either side.

    Returns:
        str: :data:`SAME`, :data:`DIFFERS`, :data:`WITHIN` or :data:`UNMEASURED`.
    """
    if n < 2 or math.isnan(standard_error):
        return UNMEASURED
    within = abs(difference) <= 2 * standard_error
    if seed_sign == 0:
        return SAME if within or abs(difference) <= ABOUT_EQUAL_POINTS else DIFFERS
    if within:
        return WITHIN
    return SAME if (difference > 0) == (seed_sign > 0) else DIFFERS


@dataclass
class ExperimentSeeds:
    """One experiment's runs, one per seed.

    Attributes:
        name (str): the experiment (folder name).
        runs (dict[int, RunLog]): the runs by seed, in seed order.
    """

    name: str
    runs: dict[int, RunLog] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    def _figure(self, attribute: str) -> Spread:
        return spread([100 * float(getattr(self.runs[s], attribute)) for s in self.seeds])

    @property
    def best(self) -> Spread:
        """Best exact test accuracy over epochs, in points, over seeds."""
        return self._figure("best_acc")

    @property
    def last(self) -> Spread:
        """Exact test accuracy of the last epoch, in points, over seeds."""
        return self._figure("last_acc")

    @property
    def original(self) -> Spread:
        """The original method's figure (best smoothed value over epochs), in points."""
        return self._figure("original_best_acc")

    @property
    def gap(self) -> Spread:
        """Original-method figure minus best exact accuracy, per seed, in points."""
        return spread([o - b for o, b in zip(self.original.values, self.best.values)])


def load_seed_runs(root: PathLike) -> list[ExperimentSeeds]:
    """Every experiment under ``root`` with its runs by seed.

    Reads ``root/<experiment>/seed-<n>/`` folders, and ``root/<experiment>/`` itself when it
    holds a ``log.jsonl`` (a one-seed folder of the old layout; its seed is the
    ``manual_seed`` of its ``summary.json``, else 1). Runs with an empty log are skipped. Each
    run's ``name`` is set to the experiment's name.

    Returns:
        list[ExperimentSeeds]: the presets in :func:`~perturbnn.repro.experiments.list_experiments`
        order first, then others by name; experiments without any run are left out.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: from :func:`~perturbnn.repro.report.runs.load_run`, on a malformed log.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"output folder {str(base)!r} does not exist")
    order = list(EXPERIMENTS)
    found: list[ExperimentSeeds] = []
    folders = [p for p in base.iterdir() if p.is_dir()]
    folders.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    for folder in folders:
        entry = ExperimentSeeds(folder.name)
        candidates: list[tuple[Optional[int], Path]] = []
        if (folder / LOG_FILE).is_file():
            candidates.append((None, folder))
        for sub in folder.iterdir():
            match = _SEED_FOLDER.match(sub.name)
            if match and sub.is_dir() and (sub / LOG_FILE).is_file():
                candidates.append((int(match.group(1)), sub))
        for seed, path in candidates:
            if not (path / LOG_FILE).read_text(encoding="utf-8").strip():
                continue
            run = dataclasses.replace(load_run(path), name=folder.name)
            if seed is None:
                seed = int(run.config.get("manual_seed", 1))
            entry.runs[seed] = run
        if entry.runs:
            entry.runs = dict(sorted(entry.runs.items()))
            found.append(entry)
    return found


@dataclass(frozen=True)
class Comparison:
    """One of the independent reproduction's comparisons, with our spread.

    Attributes:
        label (str): what is compared, "A vs B".
        seed_difference (float, optional): the independent reproduction's A minus B in points
            (``None`` where it gave a direction only: the metric error).
        seed_sign (int): ``+1``, ``-1`` or ``0`` (about equal).
        difference (float): our ``D`` in points.
        standard_error (float): our ``SE`` in points (``nan`` with one seed).
        n (int): the smallest number of seeds on either side.
        verdict (str): from :func:`verdict`.
    """

    label: str
    seed_difference: Optional[float]
    seed_sign: int
    difference: float
    standard_error: float
    n: int
    verdict: str


def _seed_sign(difference: float) -> int:
    if abs(difference) < ABOUT_EQUAL_POINTS:
        return 0
    return 1 if difference > 0 else -1


def _between(a: ExperimentSeeds, b: ExperimentSeeds) -> Comparison:
    seed_diff = 100 * (EXPERIMENTS[a.name].seed_accuracy - EXPERIMENTS[b.name].seed_accuracy)
    sa, sb = a.best, b.best
    n = min(sa.n, sb.n)
    se = math.sqrt(sa.sd**2 / sa.n + sb.sd**2 / sb.n) if n >= 2 else math.nan
    diff = sa.mean - sb.mean
    sign = _seed_sign(seed_diff)
    return Comparison(
        f"{a.name} vs {b.name}", seed_diff, sign, diff, se, n, verdict(diff, se, sign, n)
    )


def _metric(entry: ExperimentSeeds) -> Comparison:
    gaps = entry.gap
    se = gaps.sd / math.sqrt(gaps.n) if gaps.n >= 2 else math.nan
    return Comparison(
        f"{entry.name}: original method vs exact",
        None,
        1,
        gaps.mean,
        se,
        gaps.n,
        verdict(gaps.mean, se, 1, gaps.n),
    )


def compare_over_seeds(experiments: Sequence[ExperimentSeeds]) -> list[Comparison]:
    """The independent reproduction's comparisons that the runs allow, each with its verdict.

    Between experiments (best exact accuracy): ``baseline`` vs ``no-noise-1x1`` (1x1 layers
    against the baseline), ``no-noise-1x1`` vs each noise variant (``original``,
    ``original-first3``, ``pnn-*``; the independent reproduction's sign is that of the noise
    variant's accuracy minus the 1x1 one's, so the label reads "variant vs no-noise-1x1").
    Within runs (paired by seed): the original method's figure vs the best exact accuracy, for
    every experiment. Only the independent reproduction's presets: the authors' are compared in
    :mod:`perturbnn.repro.report.authors`, against their own reported figures.
    """
    by_name = {e.name: e for e in experiments}
    independent = presets_of("independent")
    out: list[Comparison] = []
    if "baseline" in by_name and "no-noise-1x1" in by_name:
        out.append(_between(by_name["baseline"], by_name["no-noise-1x1"]))
    if "no-noise-1x1" in by_name:
        for name in independent:
            if name in ("baseline", "no-noise-1x1") or name not in by_name:
                continue
            out.append(_between(by_name[name], by_name["no-noise-1x1"]))
    out += [_metric(e) for e in experiments if e.name in independent]
    return out


def _cell(s: Spread) -> str:
    if s.n < 2:
        return f"{s.mean:.2f}"
    return f"{s.mean:.2f} ± {s.sd:.2f}"


def _values(s: Spread) -> str:
    return " / ".join(f"{v:.2f}" for v in s.values)


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def seeds_markdown(
    experiments: Sequence[ExperimentSeeds],
    comparisons: Sequence[Comparison],
    image: Optional[str] = None,
) -> list[str]:
    """The over-seeds section of the report: the table of means and spreads, each seed's
    values, and the comparisons with their verdicts (markdown lines)."""
    seeds = sorted({s for e in experiments for s in e.seeds})
    lines = [
        "## Over seeds",
        "",
        f"Every experiment ran once per seed ({', '.join(str(s) for s in seeds)}); the seed "
        "sets the initial weights, the noise masks, the training subset, its order and its "
        "augmentation; every run is tested on the same test images. Figures in points "
        "(percent): mean ± sample standard deviation over seeds, then each seed's value in "
        "seed order.",
        "",
        "| Experiment | Seeds | Best exact | Last exact | Original-method figure | Best exact "
        "per seed | Last exact per seed | Original-method per seed |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for e in experiments:
        lines.append(
            f"| `{e.name}` | {len(e.seeds)} | {_cell(e.best)} | {_cell(e.last)} | "
            f"{_cell(e.original)} | {_values(e.best)} | {_values(e.last)} | "
            f"{_values(e.original)} |"
        )
    if image:
        lines += ["", f"![mean and spread over seeds]({image})"]
    lines += [
        "",
        "### The independent reproduction's comparisons, with the spread",
        "",
        "*D*: our difference of the means (points); *SE*: its standard error (two experiments: "
        "sqrt(sd_A²/n_A + sd_B²/n_B); the original method against the exact figure: the "
        "standard deviation of the per-seed gaps over sqrt(n)). Rule: fewer than two seeds: "
        f"*{UNMEASURED}*. Where the independent reproduction found a difference of at least "
        f"{ABOUT_EQUAL_POINTS:g} point: |D| ≤ 2 SE is *{WITHIN}*, else *{SAME}* if D has "
        f"its sign and *{DIFFERS}* if not. Where it found the two within "
        f"{ABOUT_EQUAL_POINTS:g} point: *{SAME}* if |D| ≤ 2 SE or |D| ≤ "
        f"{ABOUT_EQUAL_POINTS:g}, else *{DIFFERS}*. Between experiments the figure compared "
        "is the best exact accuracy, as the independent reproduction reports it.",
        "",
        "| Comparison (A vs B) | Klachko: A - B | Here: D | 2 SE | Verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for c in comparisons:
        seed = (
            "+ (overstates)"
            if c.seed_difference is None
            else (f"{_signed(c.seed_difference)}" + (" (about equal)" if c.seed_sign == 0 else ""))
        )
        se = "n/a" if math.isnan(c.standard_error) else f"{2 * c.standard_error:.2f}"
        lines.append(f"| {c.label} | {seed} | {_signed(c.difference)} | {se} | {c.verdict} |")
    return lines
