""":func:`build_report`: read the runs, draw the plots and write the markdown report to disk."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from perturbnn.repro.experiments import EXPERIMENTS
from perturbnn.repro.report.authors import authors_markdown, compare_authors
from perturbnn.repro.report.findings import (
    Finding,
    MetricError,
    compare_with_seed,
    metric_error,
)
from perturbnn.repro.report.format import (
    _COMPARISON_IMAGE,
    _METRIC_IMAGE,
    image_name,
)
from perturbnn.repro.report.markdown import (
    gpu_runs_section,
    render_markdown,
)
from perturbnn.repro.report.plots import (
    plot_comparison,
    plot_metric_error,
    plot_run,
    plot_seeds,
)
from perturbnn.repro.report.runs import (
    RunLog,
    load_manifest,
)
from perturbnn.repro.report.seeds import (
    Comparison,
    ExperimentSeeds,
    compare_over_seeds,
    load_seed_runs,
    seeds_markdown,
)

__all__ = ["Report", "build_report"]

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Everything, written to disk
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What :func:`build_report` wrote.

    Attributes:
        markdown (Path): the report.
        images (list[Path]): the PNG plots.
        runs (list[RunLog]): the runs it read.
        findings (list[Finding]): the independent reproduction's claims, checked.
        metric (MetricError, optional): the run of the metric-error section.
        experiments (list[ExperimentSeeds]): the runs by experiment and seed.
        comparisons (list[Comparison]): the independent reproduction's comparisons over seeds
            (two seeds or more).
        authors (list[Comparison]): the comparisons of the authors' recipe section
            (:func:`~perturbnn.repro.report.authors.compare_authors`).
    """

    markdown: Path
    images: list[Path] = field(default_factory=list)
    runs: list[RunLog] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    metric: Optional[MetricError] = None
    experiments: list[ExperimentSeeds] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    authors: list[Comparison] = field(default_factory=list)


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


_SEEDS_IMAGE = "seeds.png"


def _conclusions(path: Optional[PathLike]) -> Optional[str]:
    if path is None:
        return None
    source = Path(path)
    if source.is_file():
        return source.read_text(encoding="utf-8")
    return (
        f"*Not written yet: the maintainers write this section by hand in `{source.as_posix()}` "
        "after reading the runs below; the generator includes that file here verbatim.*"
    )


def build_report(
    out_dir: PathLike,
    report_path: PathLike,
    img_dir: PathLike,
    *,
    names: Optional[Iterable[str]] = None,
    metric_run: Optional[str] = None,
    plots: bool = True,
    gpu_runs: Optional[PathLike] = None,
    conclusions: Optional[PathLike] = None,
) -> Report:
    """Read the runs under ``out_dir`` and write the markdown report and its plots.

    Args:
        out_dir (str or os.PathLike): the folder holding one sub-folder per run.
        report_path (str or os.PathLike): the markdown file to write.
        img_dir (str or os.PathLike): where the PNG plots go (linked relative to the report).
        names (Iterable[str], optional): only these runs. Default: every run in ``out_dir``.
        metric_run (str, optional): the run of the metric-error section (see
            :func:`metric_error`).
        plots (bool): write the plots (needs matplotlib). Default: ``True``.
        gpu_runs (str or os.PathLike, optional): a JSON file of short full-width GPU runs to
            add as a section (see :func:`gpu_runs_section`).
        conclusions (str or os.PathLike, optional): a hand-written markdown file, included
            verbatim at the top under "What we conclude" (a placeholder says so while the file
            does not exist). It is never written here, so it survives regenerations.

    Runs are read as ``out_dir/<experiment>/seed-<n>/`` (and, from older folders,
    ``out_dir/<experiment>/``). With two or more seeds the report starts with the mean and
    spread over seeds and the independent reproduction's comparisons stated with it
    (:mod:`perturbnn.repro.report.seeds`); the per-run sections then show the smallest seed.
    The section on the authors' recipe (:mod:`perturbnn.repro.report.authors`) follows; from
    a folder without the authors' presets (logs written before they existed) it lists them as
    not run, and the report's "Not run" line names them.

    Returns:
        Report: the files written and what they were built from.

    Raises:
        FileNotFoundError: if ``out_dir`` does not exist.
        ValueError: if it holds no run with a logged epoch, or ``metric_run`` is unknown.
        ImportError: if ``plots`` and matplotlib is not installed.
    """
    root = Path(out_dir)
    wanted = list(names) if names is not None else None
    experiments = [e for e in load_seed_runs(root) if wanted is None or e.name in set(wanted)]
    all_seeds = sorted({s for e in experiments for s in e.seeds})
    several = any(len(e.seeds) > 1 for e in experiments)
    detail_seed = all_seeds[0] if all_seeds else None
    runs = [
        e.runs[detail_seed] if detail_seed in e.runs else e.runs[e.seeds[0]] for e in experiments
    ]
    comparisons = compare_over_seeds(experiments) if several else []
    if not runs:
        raise ValueError(f"no run with a logged epoch in {str(root)!r}")
    metric = metric_error(runs, metric_run)
    markdown = Path(report_path)
    images_dir = Path(img_dir)
    links: dict[str, str] = {}
    written: list[Path] = []
    if plots:
        images_dir.mkdir(parents=True, exist_ok=True)
        markdown.parent.mkdir(parents=True, exist_ok=True)
        targets: dict[str, Path] = {"all": plot_comparison(runs, images_dir / _COMPARISON_IMAGE)}
        for run in runs:
            targets[run.name] = plot_run(run, images_dir / image_name(run.name))
        if metric is not None:
            targets["metric"] = plot_metric_error(metric, images_dir / _METRIC_IMAGE)
        if several:
            targets["seeds"] = plot_seeds(experiments, images_dir / _SEEDS_IMAGE)
        written = list(targets.values())
        links = {key: _relative(path, markdown.parent) for key, path in targets.items()}
    present = {run.name for run in runs}
    expected = wanted if wanted is not None else list(EXPERIMENTS)
    missing = [name for name in expected if name not in present]
    text = render_markdown(
        runs,
        images=links,
        metric=metric,
        manifest=load_manifest(root),
        source=root.as_posix(),
        missing=missing,
        conclusions=_conclusions(conclusions),
        over_seeds=seeds_markdown(experiments, comparisons, links.get("seeds")) if several else (),
        detail_seed=detail_seed if several else None,
        authors=authors_markdown(experiments),
    )
    if gpu_runs is not None:
        text += "\n" + "\n".join(gpu_runs_section(gpu_runs)) + "\n"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text, encoding="utf-8")
    return Report(
        markdown=markdown,
        images=written,
        runs=runs,
        findings=compare_with_seed(runs),
        metric=metric,
        experiments=experiments,
        comparisons=comparisons,
        authors=compare_authors(experiments),
    )
