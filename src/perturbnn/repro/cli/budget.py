"""The predicted time of ``perturbnn-repro reproduce``: per experiment and in all, printed before
any run (and with ``--estimate``, the per-image costs measured on this machine).

The per-image costs and the prediction are :func:`~perturbnn.repro.scales.predict_seconds` and
:func:`~perturbnn.repro.scales.estimate_costs`; this module prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from perturbnn.repro.cli.output import echo
from perturbnn.repro.experiments import EXPERIMENTS
from perturbnn.repro.report import format_duration
from perturbnn.repro.scales import Scale, predict_seconds

__all__ = ["budget_seconds", "print_budget", "print_costs"]


def print_budget(
    names: Sequence[str],
    scale: Scale,
    costs: Optional[dict[str, tuple[float, float]]] = None,
    seeds: Sequence[int] = (1,),
) -> Optional[float]:
    """Print the predicted time of each experiment (all its seeds) and the total; return the
    total in seconds (``None`` if a cost is not measured)."""
    echo(f"scale {scale.name}: {scale.summary_line()}")
    echo(f"seeds: {' '.join(str(s) for s in seeds)} (every experiment runs once per seed)")
    width = max(len(n) for n in names)
    echo(f"  {'experiment':<{width}}  width  batch  budget (all seeds)")
    total: Optional[float] = 0.0
    for name in names:
        one = predict_seconds(name, scale, costs)
        seconds = None if one is None else one * len(seeds)
        exp = EXPERIMENTS[name]
        budget = format_duration(seconds) if seconds is not None else "not measured"
        echo(
            f"  {name:<{width}}  {scale.width(int(exp.config['nfilters'])):>5}  "
            f"{exp.train['batch_size']:>5}  {budget}"
        )
        total = None if seconds is None or total is None else total + seconds
    if total is not None:
        echo(f"  {'total':<{width}}                {format_duration(total)}")
    else:
        echo(
            "  total: not predicted (per-image costs are measured for --scale cpu on the CPU "
            "only; run with --estimate to measure them here)"
        )
    return total


def budget_seconds(names: Sequence[str], scale: Scale) -> dict[str, Optional[float]]:
    """The predicted seconds of one run (one seed) of each experiment at ``scale``, to 0.1 s, as
    ``reproduce.json`` stores them (``None`` where a cost is not measured)."""
    budget: dict[str, Optional[float]] = {}
    for name in names:
        seconds = predict_seconds(name, scale)
        budget[name] = None if seconds is None else round(seconds, 1)
    return budget


def print_costs(costs: dict[str, tuple[float, float]]) -> None:
    """Print measured per-image costs (train, test; seconds) as the ``CPU_COSTS`` literal of
    :mod:`perturbnn.repro.scales`, ready to paste."""
    echo("\nCPU_COSTS = {")
    for name, (train_s, test_s) in costs.items():
        echo(f'    "{name}": ({train_s:.5f}, {test_s:.5f}),')
    echo("}")
