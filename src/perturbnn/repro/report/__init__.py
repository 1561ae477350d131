"""The reproduction report: read run logs, compare them with the independent
reproduction, write markdown and plots.

Everything here is computed from the files :func:`perturbnn.repro.fit.fit` writes in each run's
folder (``log.jsonl``: one JSON object per epoch; ``summary.json``: parameters, configuration,
the independent reproduction's command and accuracy) and, if present, the ``reproduce.json``
manifest that ``examples/reproduce.py`` writes in the output folder (scale name, description,
command). No
number in the report is typed in by hand: the independent reproduction's figures come from
:mod:`perturbnn.repro.experiments`, the measured ones from the logs, and the statements on its
orderings (:func:`compare_with_seed`) are computed from both.

Main entry points:

* :func:`load_run` / :func:`load_runs`: one run folder, or every run folder under a root.
* :func:`compare_with_seed`: the independent reproduction's three ordering claims, checked
  against the runs.
* :func:`compare_authors`, :func:`authors_markdown`: the authors' updated recipe against the
  1x1 network and the baseline, over seeds.
* :func:`metric_error`: one run's exact accuracy against the original method's figure.
* :func:`render_markdown`: the report as a string.
* :func:`plot_run`, :func:`plot_comparison`, :func:`plot_metric_error`: PNG plots (need
  matplotlib, the optional ``examples`` extra: ``pip install perturbnn[examples]``).
* :func:`build_report`: all of the above, written to disk.

Source: the independent reproduction's (Klachko's) results and claims in
``../shared/reference/pnn-reproduction-notes.txt``.

Example::

    >>> from perturbnn.repro.report import build_report  # doctest: +SKIP
    >>> report = build_report("runs/reproduce", "docs/reproduction.md", "docs/img")  # doctest: +SKIP
    >>> report.markdown  # doctest: +SKIP
    PosixPath('docs/reproduction.md')
"""

from __future__ import annotations

from perturbnn.repro.report.authors import AUTHORS_PAIRS, authors_markdown, compare_authors
from perturbnn.repro.report.build import Report, build_report
from perturbnn.repro.report.findings import (
    ABOUT_EQUAL_POINTS,
    Finding,
    MetricError,
    compare_with_seed,
    metric_error,
)
from perturbnn.repro.report.format import format_duration, format_percent, image_name
from perturbnn.repro.report.markdown import gpu_runs_section, render_markdown
from perturbnn.repro.report.plots import (
    plot_comparison,
    plot_metric_error,
    plot_run,
    plot_seeds,
)
from perturbnn.repro.report.runs import (
    LOG_FILE,
    MANIFEST_FILE,
    SUMMARY_FILE,
    RunLog,
    load_manifest,
    load_run,
    load_runs,
    seed_scale_counts,
)
from perturbnn.repro.report.seeds import (
    Comparison,
    ExperimentSeeds,
    Spread,
    compare_over_seeds,
    load_seed_runs,
    seeds_markdown,
    spread,
    verdict,
)

__all__ = [
    "ABOUT_EQUAL_POINTS",
    "AUTHORS_PAIRS",
    "LOG_FILE",
    "MANIFEST_FILE",
    "SUMMARY_FILE",
    "Comparison",
    "ExperimentSeeds",
    "Finding",
    "MetricError",
    "Report",
    "RunLog",
    "Spread",
    "authors_markdown",
    "build_report",
    "compare_authors",
    "compare_over_seeds",
    "compare_with_seed",
    "format_duration",
    "format_percent",
    "gpu_runs_section",
    "image_name",
    "load_manifest",
    "load_run",
    "load_runs",
    "load_seed_runs",
    "metric_error",
    "plot_comparison",
    "plot_metric_error",
    "plot_run",
    "plot_seeds",
    "render_markdown",
    "seed_scale_counts",
    "seeds_markdown",
    "spread",
    "verdict",
]
