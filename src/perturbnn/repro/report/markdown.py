"""The report as markdown: the results table, the comparison with the independent
reproduction, the authors' recipe, the metric error, GPU runs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from perturbnn.repro.experiments import EXPERIMENTS, presets_of
from perturbnn.repro.report.findings import (
    MetricError,
    _epoch_rows,
    _noise_note,
    _ranking,
    compare_with_seed,
)
from perturbnn.repro.report.format import (
    _count,
    _points,
    format_duration,
    format_percent,
    format_reported,
)
from perturbnn.repro.report.runs import (
    LOG_FILE,
    RunLog,
    seed_scale_counts,
)

__all__ = ["gpu_runs_section", "render_markdown"]

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _scale_cell(run: RunLog) -> str:
    scale = run.scale()
    if not run.finished:
        return f"unfinished: {len(run.epochs)} epoch(s) logged"
    parts = [
        f"width {scale['nfilters']}",
        f"{scale['nepochs']} epochs",
        f"train {_count(scale['train_samples'])} / test {_count(scale['test_samples'])}",
        f"batch {scale['batch_size']}",
        str(scale["device"]),
    ]
    return ", ".join(parts)


def _counted(run: RunLog, fraction: float) -> str:
    correct, total = run.correct(fraction), run.test_samples
    suffix = f" ({correct:,}/{total:,})" if correct is not None and total is not None else ""
    return f"{format_percent(fraction)}{suffix}"


def _pair(here: Optional[int], seed: Optional[int]) -> str:
    return f"{_count(here)} / {_count(seed)}"


def _results_table(runs: Sequence[RunLog]) -> list[str]:
    lines = [
        "| Experiment | Source's command | Source reports | Exact here, best epoch | "
        "Exact here, last epoch | Original-method figure, best epoch (same run) | "
        "Parameters here / full scale | Mask values here / full scale | Scale | Wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for run in runs:
        seed_params: Optional[int] = None
        seed_masks: Optional[int] = None
        if run.experiment is not None:
            seed_params, seed_masks = seed_scale_counts(run.experiment)
        command = f"`{run.seed_command}`" if run.seed_command else "n/a"
        cells = [
            f"`{run.name}`",
            command,
            format_reported(run.seed_accuracy),
            f"{_counted(run, run.best_acc)}, epoch {run.best_epoch}",
            f"{_counted(run, run.last_acc)}, epoch {run.epochs[-1]}",
            f"{format_percent(run.original_best_acc)}, epoch {run.original_best_epoch}",
            _pair(run.parameters, seed_params),
            _pair(run.mask_values, seed_masks),
            _scale_cell(run),
            format_duration(run.wall_time_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _metric_section(metric: MetricError, image: Optional[str]) -> list[str]:
    run = metric.run
    source = (run.directory / LOG_FILE).as_posix()
    lines = [
        "## The metric error on its own",
        "",
        f"From one logged run, `{run.name}` (`{source}`): every epoch's exact test accuracy "
        "(correct / total over the test images) next to the figure the original PNN code "
        "printed for the same epoch (per-batch accuracy, smoothed `0.7 * previous + 0.3 * "
        "current`, never reset between epochs), both measured on the same test pass.",
        "",
        "| Epoch | Exact (real) | Original method | Original minus exact (points) |",
        "|---:|---:|---:|---:|",
    ]
    shown = _epoch_rows(run)
    for index in shown:
        marks = []
        if index == run.best_index:
            marks.append("best exact")
        if index == run.original_best_index:
            marks.append("best original-method")
        note = f" ({', '.join(marks)})" if marks else ""
        lines.append(
            f"| {run.epochs[index]}{note} | {_counted(run, run.test_acc[index])} | "
            f"{format_percent(run.original_acc[index])} | {_points(metric.gaps[index])} |"
        )
    if len(shown) < len(run.epochs):
        lines += ["", f"({len(shown)} of {len(run.epochs)} epochs listed; all are in the log.)"]
    gaps = metric.gaps
    lines += [
        "",
        "| | Exact (real) | Original method |",
        "|---|---:|---:|",
        f"| Last epoch ({run.epochs[-1]}) | {format_percent(run.last_acc)} | "
        f"{format_percent(run.original_last_acc)} |",
        f"| Best over epochs | {format_percent(run.best_acc)} (epoch {run.best_epoch}) | "
        f"{format_percent(run.original_best_acc)} (epoch {run.original_best_epoch}) |",
        f"| Picking the best epoch adds (points) | {_points(metric.selection_exact)} | "
        f"{_points(metric.selection_original)} |",
        "",
        f"- Per epoch, the original method's figure minus the exact accuracy: mean "
        f"{_points(sum(gaps) / len(gaps))} points, from {_points(min(gaps))} to "
        f"{_points(max(gaps))}; above the exact accuracy in {sum(g > 0 for g in gaps)} of "
        f"{len(gaps)} epochs. The figure weighs the last test batch by 0.3, the one before by "
        f"0.21, and all batches before the last ten by under 3% together, so it measures the "
        f"end of the test set, in the test set's order, plus a remainder of the previous epoch.",
        f"- What the original code reports (its best figure over epochs) minus the best exact "
        f"accuracy: {_points(metric.reported_gap)} points. This is the comparison the independent "
        f"reproduction makes for noiseresnet18 at full scale: 90.53% reported against 85.91% "
        f"actual, +4.62 points.",
        f"- Against the exact accuracy of the last epoch, which involves no choice made on the "
        f"test set: {_points(metric.total_inflation)} points, of which "
        f"{_points(metric.selection_exact)} come from picking the best epoch of the exact "
        f"accuracy itself.",
    ]
    if image is not None:
        lines += ["", f"![metric error of {run.name}]({image})"]
    return lines


# Parts of the scale every run must share (width and batch size follow each preset).
_SHARED_SCALE = ("nepochs", "train_samples", "test_samples", "device")


def _scales_differ(runs: Sequence[RunLog]) -> bool:
    keys = {json.dumps([r.scale()[k] for k in _SHARED_SCALE]) for r in runs}
    return len(keys) > 1


def render_markdown(
    runs: Sequence[RunLog],
    *,
    images: Optional[Mapping[str, str]] = None,
    metric: Optional[MetricError] = None,
    manifest: Optional[Mapping[str, Any]] = None,
    source: Optional[str] = None,
    missing: Sequence[str] = (),
    conclusions: Optional[str] = None,
    over_seeds: Sequence[str] = (),
    detail_seed: Optional[int] = None,
    authors: Sequence[str] = (),
) -> str:
    """The report as markdown.

    Args:
        runs (Sequence[RunLog]): the runs, in table order.
        images (Mapping[str, str], optional): image links relative to the report: the run names,
            ``"all"`` (the comparison) and ``"metric"``. Missing keys: no image.
        metric (MetricError, optional): the run for the metric-error section.
        manifest (Mapping, optional): ``reproduce.json`` (``scale``, ``description``,
            ``command``).
        source (str, optional): the output folder, as shown in the text.
        missing (Sequence[str]): presets that have no run in the folder.
        conclusions (str, optional): hand-written markdown put first, under "What we
            conclude" (kept across regenerations: it lives in its own file).
        over_seeds (Sequence[str]): the over-seeds section's lines
            (:func:`~perturbnn.repro.report.seeds.seeds_markdown`), put before the results.
        detail_seed (int, optional): the seed whose runs ``runs`` are, when there are several
            seeds (the per-run sections then say so).
        authors (Sequence[str]): the authors' recipe section's lines
            (:func:`~perturbnn.repro.report.authors.authors_markdown`), put after the over-seeds
            section.

    Returns:
        str: the markdown text, ending with a newline.
    """
    links = dict(images or {})
    info = dict(manifest or {})
    lines = [
        "# Reproduction of the PNN CIFAR-10 experiments: the independent reproduction's eight "
        "and the authors' recipe",
        "",
    ]
    command = info.get("command")
    where = f" from the logs in `{source}`" if source else ""
    lines.append(
        "Generated by `examples/reproduce.py`"
        + where
        + " (each run's `log.jsonl` and `summary.json`); do not edit by hand. Rebuild it from "
        "the same logs with `--report-only`."
    )
    if conclusions is not None:
        lines += ["", "## What we conclude", "", conclusions.strip()]
    if command:
        lines += ["", "Command:", "", "```", str(command), "```"]
    lines += ["", "## Scale", ""]
    if info.get("scale"):
        lines.append(f"Scale `{info['scale']}`. {info.get('description', '')}".rstrip())
    else:
        lines.append("The scale of each run is in the table's *Scale* column.")
    if _scales_differ(runs):
        lines += [
            "",
            "**Warning: these runs do not share one scale** (epochs, data sizes or device "
            "differ, see the table), so their comparisons below mix scales.",
        ]
    if missing:
        lines += ["", f"Not run (no log in the folder): {', '.join(f'`{m}`' for m in missing)}."]
    if over_seeds:
        lines += ["", *over_seeds]
    if authors:
        lines += ["", *authors]
    lines += [
        "",
        "## Results" + (f" of seed {detail_seed}" if detail_seed is not None else ""),
        "",
        *(
            [
                f"One run per experiment, the runs of seed {detail_seed}; the sections below "
                "(orderings, curves, metric error) are about these runs alone. The spread "
                "over seeds is in *Over seeds* above.",
                "",
            ]
            if detail_seed is not None
            else []
        ),
        *_results_table(runs),
        "",
        "- *Source's command*, *Source reports*: the command line and the test accuracy of the "
        "preset's source: the independent reproduction's notes (150 epochs, its widths, the "
        "exact accuracy) for the first eight, the authors' updated repository (450 epochs, "
        "Adam) for `authors-*`; all 50,000 training and 10,000 test images.",
        "- *Exact here*: correct / total over the test images used, with the count; at the best "
        "epoch (how the independent reproduction reports) and at the last epoch (no selection on "
        "the test set).",
        "- *Original-method figure*: what the original PNN code would have printed for the same "
        "run (per-batch accuracy smoothed 0.7/0.3, never reset, best over epochs). Not an "
        "accuracy; shown only to measure how far it is from the exact figure.",
        "- *Parameters*: trainable, noise masks excluded; *mask values*: values held in noise "
        "masks. Here, and for the preset at full scale, the independent reproduction's width "
        "(built on the meta device).",
        "- *Wall time*: sum of the epochs' times (training and testing).",
        "",
        "## How the measured ordering compares with the independent reproduction's",
        "",
        "Accuracies compared are the best exact test accuracy over the epochs, as the independent "
        "reproduction reports them.",
        "",
    ]
    independent = set(presets_of("independent"))
    if any(run.name not in independent and run.name in EXPERIMENTS for run in runs):
        lines += [
            "These claims are the independent reproduction's, about its own eight experiments; "
            "the authors' presets are left out of them and of its ranking (see *The authors' "
            "recipe at this scale*).",
            "",
        ]
    for finding in compare_with_seed(runs):
        lines.append(
            f"- **{finding.verdict}**: the independent reproduction finds that {finding.claim}; "
            f"{finding.text}"
        )
    if runs:
        ranked_seed = [
            r
            for r in runs
            if r.seed_accuracy is not None and (r.name in independent or r.name not in EXPERIMENTS)
        ]
        lines += ["", f"- Ranking here: {_ranking(runs, lambda r: r.best_acc)}."]
        if ranked_seed:
            lines.append(
                f"- Ranking in the independent reproduction: "
                f"{_ranking(ranked_seed, lambda r: r.seed_accuracy)}."
            )
        note = _noise_note(runs)
        if note:
            lines += ["", note]
    if runs:
        lines += ["", "## Accuracy per epoch", ""]
        if "all" in links:
            lines += [f"![exact test accuracy of all experiments]({links['all']})", ""]
        for run in runs:
            if run.name in links:
                lines += [f"![{run.name}]({links[run.name]})", ""]
        if lines[-1] == "":
            lines.pop()
    if metric is not None:
        lines += ["", *_metric_section(metric, links.get("metric"))]
    return "\n".join(lines) + "\n"


def gpu_runs_section(path: PathLike) -> list[str]:
    """Markdown lines for short full-width GPU runs recorded in a JSON file.

    The file (e.g. ``docs/data/gpu_h200_runs.json``, written from
    ``examples/seed_width_gpu.py``'s output) holds ``description``, ``device``,
    ``train_images``, ``test_images`` and ``runs``: per preset ``epochs``, ``best_acc``,
    ``original_best_acc``, ``parameters``, ``mask_values``, ``nfilters``, ``batch_size`` and
    ``wall_s``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not such a file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        runs = data["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not a GPU-runs file ({exc})") from exc
    lines = [
        "## Full-width runs on a GPU (a few epochs only)",
        "",
        str(data.get("description", "")),
        "",
        "| # | experiment | epochs | width | batch | exact best | original-method best | gap | "
        "parameters | mask values | Klachko's accuracy (150 epochs) | wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = list(EXPERIMENTS)
    for name in sorted(runs, key=lambda n: order.index(n) if n in order else len(order)):
        run = runs[name]
        seed = EXPERIMENTS[name].seed_accuracy if name in EXPERIMENTS else None
        gap = run["original_best_acc"] - run["best_acc"]
        lines.append(
            f"| {order.index(name) + 1 if name in order else '-'} | `{name}` | {run['epochs']} | "
            f"{run['nfilters']} | {run['batch_size']} | {format_percent(run['best_acc'])} | "
            f"{format_percent(run['original_best_acc'])} | {_points(gap)} | "
            f"{_count(run['parameters'])} | {_count(run['mask_values'])} | "
            f"{format_percent(seed)} | {format_duration(run['wall_s'])} |"
        )
    lines += [
        "",
        f"Device: {data.get('device', '?')}; {data.get('train_images', '?'):,} training and "
        f"{data.get('test_images', '?'):,} test images. After so few epochs on a fifth of the "
        "training set these accuracies say nothing about the independent reproduction's "
        "150-epoch figures; they show that the full-width networks train at its settings, and "
        "the metric gap on "
        "a full 10,000-image test set.",
    ]
    return lines
