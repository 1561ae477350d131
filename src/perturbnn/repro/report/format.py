"""How the report writes numbers: percentages, durations, counts, and the names of its images."""

from __future__ import annotations

from typing import Optional

__all__ = ["format_duration", "format_percent", "image_name"]


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def format_percent(fraction: Optional[float], decimals: int = 2) -> str:
    """``0.8591`` as ``"85.91%"``; ``None`` as ``"n/a"``."""
    if fraction is None:
        return "n/a"
    return f"{100 * fraction:.{decimals}f}%"


def format_reported(fraction: Optional[float]) -> str:
    """A reported accuracy with the digits its source gave: ``0.918`` as ``"91.8%"``,
    ``0.9035`` as ``"90.35%"``; ``None`` as ``"n/a"``."""
    if fraction is None:
        return "n/a"
    return f"{round(100 * fraction, 2):g}%"


def _points(difference: float) -> str:
    """A difference of fractions in signed percentage points: ``0.0462`` as ``"+4.62"``."""
    return f"{100 * difference:+.2f}"


def format_duration(seconds: Optional[float]) -> str:
    """``75.3`` as ``"1 min 15 s"``, ``12.0`` as ``"12.0 s"``, ``3725`` as ``"1 h 2 min"``."""
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {(whole % 3600) // 60} min"


def _count(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value:,}"


def image_name(run_name: str) -> str:
    """File name of a run's plot: ``"repro_<run_name>.png"``."""
    return f"repro_{run_name}.png"


_COMPARISON_IMAGE = "repro_all_test_acc.png"
_METRIC_IMAGE = "repro_metric_error.png"
