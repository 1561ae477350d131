"""PNG plots of the runs (need matplotlib, the optional ``examples`` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from perturbnn.repro.report.findings import (
    MetricError,
)
from perturbnn.repro.report.format import (
    format_percent,
    format_reported,
)
from perturbnn.repro.report.runs import (
    RunLog,
)
from perturbnn.repro.report.seeds import ExperimentSeeds

__all__ = ["plot_comparison", "plot_metric_error", "plot_run", "plot_seeds"]

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` (no pyplot, no global backend change)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "the reproduction plots need matplotlib, the optional 'examples' extra: "
            "pip install perturbnn[examples]"
        ) from exc
    return Figure(**kwargs)


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, path: PathLike) -> Path:
    for ax in fig.axes:
        _integer_epochs(ax)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png", dpi=100, metadata={"Software": None})
    return target


def _percent(values: Sequence[float]) -> list[float]:
    return [100 * v for v in values]


def plot_run(run: RunLog, path: PathLike) -> Path:
    """Plot one run: exact test accuracy and the original-method figure per epoch.

    The best epoch of each is marked; the accuracy the preset's source reports (the independent
    reproduction's 150 epochs, or the authors' 450, on the full data) is drawn as a grey line for
    reference.

    Args:
        run (RunLog): the run.
        path (str or os.PathLike): the PNG file to write.

    Returns:
        Path: ``path``.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    fig = _figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(run.epochs, _percent(run.test_acc), "o-", color="C0", ms=3, label="exact (real)")
    ax.plot(
        run.epochs,
        _percent(run.original_acc),
        "s--",
        color="C3",
        ms=3,
        label="original method (smoothed)",
    )
    ax.plot([run.best_epoch], [100 * run.best_acc], "*", color="C0", ms=12)
    ax.plot([run.original_best_epoch], [100 * run.original_best_acc], "*", color="C3", ms=12)
    if run.seed_accuracy is not None:
        ax.axhline(
            100 * run.seed_accuracy,
            color="0.5",
            lw=1,
            ls=":",
            label=f"source reports {format_reported(run.seed_accuracy)} (full scale)",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{run.name}: exact vs original-method figure (stars: best epoch)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_comparison(runs: Sequence[RunLog], path: PathLike) -> Path:
    """Plot every run's exact test accuracy per epoch on one chart.

    Args:
        runs (Sequence[RunLog]): the runs.
        path (str or os.PathLike): the PNG file to write.

    Returns:
        Path: ``path``.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    fig = _figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    styles = ("-", "--", "-.", ":")
    for index, run in enumerate(runs):
        ax.plot(
            run.epochs,
            _percent(run.test_acc),
            marker="o",
            ms=3,
            ls=styles[(index // 10) % len(styles)],
            label=f"{run.name} (best {format_percent(run.best_acc, 1)})",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("exact test accuracy (%)")
    ax.set_title("Exact test accuracy per epoch, all experiments")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_metric_error(metric: MetricError, path: PathLike) -> Path:
    """Plot the metric error of one run: both figures with their best-over-epochs lines (top)
    and the per-epoch difference (bottom).

    Args:
        metric (MetricError): from :func:`metric_error`.
        path (str or os.PathLike): the PNG file to write.

    Returns:
        Path: ``path``.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    run = metric.run
    fig = _figure(figsize=(7.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    top.plot(run.epochs, _percent(run.test_acc), "o-", color="C0", ms=3, label="exact (real)")
    top.plot(
        run.epochs, _percent(run.original_acc), "s--", color="C3", ms=3, label="original method"
    )
    top.axhline(
        100 * run.best_acc,
        color="C0",
        lw=1,
        ls=":",
        label=f"best exact {format_percent(run.best_acc)} (epoch {run.best_epoch})",
    )
    top.axhline(
        100 * run.original_best_acc,
        color="C3",
        lw=1,
        ls=":",
        label=(
            f"best original-method {format_percent(run.original_best_acc)} "
            f"(epoch {run.original_best_epoch})"
        ),
    )
    top.axhline(
        100 * run.last_acc,
        color="0.3",
        lw=1,
        ls="-.",
        label=f"last-epoch exact {format_percent(run.last_acc)}",
    )
    top.set_ylabel("test accuracy (%)")
    top.set_title(f"{run.name}: the original method's figure against the exact accuracy")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    gaps = _percent(metric.gaps)
    bottom.bar(run.epochs, gaps, color=["C3" if g > 0 else "C0" for g in gaps])
    bottom.axhline(0, color="0.3", lw=0.8)
    bottom.set_xlabel("epoch")
    bottom.set_ylabel("original - exact (points)")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def plot_seeds(experiments: Sequence[ExperimentSeeds], path: PathLike) -> Path:
    """Plot, per experiment, each seed's best exact accuracy and original-method figure
    (dots) with their means and standard deviations (bars), one row per experiment.

    Args:
        experiments (Sequence[ExperimentSeeds]): the experiments and their runs by seed.
        path (str or os.PathLike): the PNG file to write.

    Returns:
        Path: ``path``.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    fig = _figure(figsize=(7.5, 0.55 * len(experiments) + 1.6), layout="constrained")
    ax = fig.subplots()
    names = [e.name for e in experiments]
    rows = list(range(len(experiments)))[::-1]
    for offset, (label, attr, color) in enumerate(
        (("best exact", "best", "tab:blue"), ("original-method figure", "original", "tab:red"))
    ):
        for row, entry in zip(rows, experiments):
            figure = getattr(entry, attr)
            y = row + (0.15 if offset == 0 else -0.15)
            ax.plot(figure.values, [y] * figure.n, "o", color=color, alpha=0.45, ms=4)
            err = figure.sd if figure.n > 1 else 0.0
            ax.errorbar(
                [figure.mean],
                [y],
                xerr=[err],
                fmt="D",
                color=color,
                ms=6,
                capsize=4,
                label=label if row == rows[0] else None,
            )
    ax.set_yticks(rows, names)
    ax.set_xlabel("test accuracy (%): dots are seeds, diamonds the mean ± 1 sd")
    ax.set_title("Best exact accuracy and original-method figure over seeds")
    ax.grid(alpha=0.3, axis="x")
    fig.legend(fontsize=8, loc="outside lower center", ncol=2)
    return _save(fig, path)
