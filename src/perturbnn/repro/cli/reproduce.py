"""``perturbnn-repro reproduce``: run the ten CIFAR-10 experiments (the independent
reproduction's eight and the authors' updated recipe's two) at one scale, then write the
reproduction report (``examples/reproduce.py``).

Each experiment is ``RunConfig.from_experiment(name, <scale>)`` then
:func:`~perturbnn.repro.run.run_experiment`; the report comes from :mod:`perturbnn.repro.report`
(mean and spread over seeds, comparisons with the independent reproduction, metric error,
plots). Each experiment runs once per seed of ``--seeds`` (default ``1 2 3``: the report states
every comparison with its run-to-run spread, which one seed cannot measure); the seed sets
``manual_seed``, hence the initial weights, the masks, the shuffling, the augmentation and the
training subset (the test subset is the same for every run). Every run writes ``log.jsonl``,
``summary.json`` and checkpoints to ``<out-dir>/<experiment>/seed-<n>/``; the report is then
built from those files alone. The scales are in :mod:`perturbnn.repro.scales`.

An interrupted run continues where it stopped, and seeds or experiments can be added to an
existing output folder: a run (experiment and seed) whose ``summary.json`` exists is skipped
(``--force`` reruns it) and one with a ``checkpoint_last.pt`` of the same settings resumes
from it.

Examples (from the repository root)::

    perturbnn-repro reproduce            # --scale cpu --seeds 1 2 3
    perturbnn-repro reproduce --seeds 4 5 --out-dir runs/reproduce   # two more seeds
    perturbnn-repro reproduce --estimate
    perturbnn-repro reproduce --report-only --out-dir runs/reproduce
    perturbnn-repro reproduce --scale full --out-dir runs/full \\
        --report docs/reproduction-full.md --img-dir docs/img/full
    perturbnn-repro reproduce --only baseline pnn-fanout64-shared --nepochs 1 \\
        --train-subset 64 --test-subset 50 --out-dir runs/tiny --report runs/tiny/report.md \\
        --img-dir runs/tiny/img
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from perturbnn.repro.checkpoint import CheckpointError, load_checkpoint
from perturbnn.repro.cli.budget import budget_seconds, print_budget, print_costs
from perturbnn.repro.cli.output import (
    Parser,
    add_data_flags,
    add_progress_flag,
    add_threads_flag,
    choice,
    echo,
    flag_names,
    name_flags,
    plural,
)
from perturbnn.repro.config import MACHINE_FIELDS, RunConfig
from perturbnn.repro.data import DataCorruptError, DataNotFoundError
from perturbnn.repro.experiments import list_experiments
from perturbnn.repro.report import SUMMARY_FILE, build_report, format_duration
from perturbnn.repro.run import run_experiment
from perturbnn.repro.runtime import log_to_stdout, threads_for_run
from perturbnn.repro.scales import SCALES, Scale, estimate_costs, predict_seconds
from perturbnn.repro.thread_record import ThreadSchedule, replay_runs

__all__ = ["build_parser", "main", "resolve_scale"]

PROG = "perturbnn-repro reproduce"


def run_folder(out_dir: Path, name: str, seed: int) -> Path:
    """Where the run of preset ``name`` with seed ``seed`` writes: ``out_dir/name/seed-<seed>``."""
    return out_dir / name / f"seed-{seed}"


def make_config(
    name: str,
    scale: Scale,
    *,
    data_dir: Optional[str],
    out_dir: Path,
    progress: bool,
    seed: int = 1,
    download: bool = False,
) -> RunConfig:
    """The run of preset ``name`` at ``scale`` with ``manual_seed=seed``, writing to
    :func:`run_folder` ``(out_dir, name, seed)``; ``download``: see ``RunConfig.download``."""
    return RunConfig.from_experiment(
        name,
        **scale.overrides(name),
        manual_seed=seed,
        data_dir=data_dir,
        download=download,
        out_dir=str(run_folder(out_dir, name, seed)),
        progress=progress,
    )


def _experiment_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    # A field the saved configuration lacks was added after it was written (lr_schedule,
    # first_layer_type, freeze_first): the run used that field's default.
    defaults = _plain(RunConfig())
    values = {k: defaults[k] for k in _ADDED_FIELDS if k not in config}
    values.update(config)
    return {k: v for k, v in values.items() if k not in MACHINE_FIELDS}


#: RunConfig fields added after logs were committed; older summaries and checkpoints lack them.
_ADDED_FIELDS: tuple[str, ...] = ("lr_schedule", "first_layer_type", "freeze_first")


def _plain(config: RunConfig) -> dict[str, Any]:
    """The configuration as ``summary.json`` and checkpoints store it (plain JSON types)."""
    plain: dict[str, Any] = json.loads(json.dumps(config.to_dict()))
    return plain


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(wanted))
    return [
        f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} here"
        for k in keys
        if saved.get(k) != wanted.get(k)
    ]


def _subset_arg(text: str) -> Optional[int]:
    if text.lower() == "all":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int or 'all', got {text!r}")
    return value


def _fraction_arg(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command-line parser of the reproduce-all command."""
    parser = Parser(
        prog=prog,
        description="Run the ten CIFAR-10 experiments (the independent reproduction's eight, "
        "the authors' recipe's two) at one scale and write the reproduction report (table, "
        "orderings against the independent reproduction, the authors' recipe side by side, "
        "metric error, plots).",
    )
    parser.add_argument(
        "--scale",
        type=choice(sorted(SCALES), what="scale"),
        default="cpu",
        metavar="NAME",
        help=f"shared setting: {', '.join(sorted(SCALES))}",
    )
    add_data_flags(parser, holding="cifar10/ or cifar-10-batches-py/")
    parser.add_argument("--out-dir", default="runs/reproduce", help="one sub-folder per run")
    parser.add_argument("--report", default="docs/reproduction.md", help="markdown to write")
    parser.add_argument("--img-dir", default="docs/img", help="where the PNG plots go")
    parser.add_argument(
        "--conclusions",
        default="docs/reproduction_conclusions.md",
        help="hand-written markdown included at the top of the report under 'What we "
        "conclude' (never written by this command; '' for none)",
    )
    parser.add_argument(
        "--gpu-runs",
        default="docs/data/gpu_h200_runs.json",
        help="JSON of short full-width GPU runs to add to the report if the file exists ('' for none)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        type=choice(list_experiments(), what="experiment"),
        help="run only these experiments (the report covers every run in --out-dir)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[1, 2, 3],
        metavar="N",
        help="run every experiment once per seed (manual_seed); default: 1 2 3",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="no training: rebuild the report from the logs"
    )
    parser.add_argument(
        "--force", action="store_true", help="rerun experiments that already have a summary.json"
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="no training: measure a few steps of each experiment and print the predicted times",
    )
    parser.add_argument(
        "--metric-run",
        metavar="NAME",
        default=None,
        help="run of the metric-error section; None: 'original' (the network of Klachko's own "
        "metric comparison) if it ran",
    )
    add_progress_flag(parser)
    add_threads_flag(
        parser,
        replay_source="an earlier reproduce's --out-dir (each run replays the record of the "
        "same experiment and seed there)",
    )
    group = parser.add_argument_group("overrides of the scale (recorded in the report)")
    group.add_argument("--nepochs", type=int, default=None, help="epochs per experiment")
    group.add_argument(
        "--train-subset",
        type=_subset_arg,
        default=argparse.SUPPRESS,
        metavar="N|all",
        help="class-balanced training images",
    )
    group.add_argument(
        "--test-subset",
        type=_subset_arg,
        default=argparse.SUPPRESS,
        metavar="N|all",
        help="class-balanced test images",
    )
    group.add_argument(
        "--width-factor",
        type=_fraction_arg,
        default=None,
        metavar="FRACTION",
        help="multiplies every preset's nfilters, rounded up (e.g. 1/8)",
    )
    group.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    return parser


def resolve_scale(args: argparse.Namespace) -> Scale:
    """The chosen scale with the override flags applied."""
    scale = SCALES[args.scale]
    changes: dict[str, Any] = {}
    if args.nepochs is not None:
        changes["nepochs"] = args.nepochs
    for key in ("train_subset", "test_subset"):
        if hasattr(args, key):
            changes[key] = getattr(args, key)
    if args.width_factor is not None:
        changes["width_factor"] = args.width_factor
    if args.device is not None:
        changes["device"] = args.device
    changes = {k: v for k, v in changes.items() if getattr(scale, k) != v}
    if not changes:
        return scale
    shown = ", ".join(f"{k}={v}" for k, v in changes.items())
    return dataclasses.replace(
        scale,
        name=f"{scale.name}+overrides",
        description=f"Scale `{scale.name}` with overrides ({shown}); not the preset scale. "
        + f"Settings: {dataclasses.replace(scale, **changes).summary_line()}.",
        **changes,
    )


def _write_manifest(
    out_dir: Path, scale: Scale, command: str, budget: dict[str, Any], seeds: Sequence[int]
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "reproduce.json"
    previous: list[int] = []
    if path.is_file():  # seeds added to a folder: the report covers all of them
        try:
            previous = [int(s) for s in json.loads(path.read_text()).get("seeds", [])]
        except (ValueError, TypeError, AttributeError):
            previous = []
    manifest = {
        "scale": scale.name,
        "description": scale.description,
        "settings": {
            "width_factor": str(scale.width_factor),
            "nepochs": scale.nepochs,
            "train_subset": scale.train_subset,
            "test_subset": scale.test_subset,
            "device": scale.device,
        },
        "seeds": sorted(set(previous) | set(seeds)),
        "command": command,
        "budget_s": budget,
    }
    (out_dir / "reproduce.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def load_replays(
    names: Sequence[str], scale: Scale, args: argparse.Namespace, seeds: Sequence[int]
) -> dict[tuple[str, int], ThreadSchedule]:
    """``--threads-from DIR``: each run's recorded counts, from ``DIR/<experiment>/seed-<n>/``
    (:func:`~perturbnn.repro.thread_record.replay_runs`; ``ValueError`` naming the flag)."""
    runs = {
        (name, seed): (
            run_folder(Path(), name, seed),
            make_config(name, scale, data_dir=args.data_dir, out_dir=Path(), progress=False,
                        seed=seed).to_dict(),
        )
        for name in names
        for seed in seeds
    }  # fmt: skip
    return replay_runs(args.threads_from, runs, ignore=MACHINE_FIELDS)


def train_all(
    names: Sequence[str],
    scale: Scale,
    args: argparse.Namespace,
    out_dir: Path,
    seeds: Sequence[int] = (1,),
    replays: Optional[Mapping[tuple[str, int], ThreadSchedule]] = None,
) -> int:
    """Run (or skip, or resume) each experiment once per seed; return 0, or 1 if one failed.
    With ``replays`` (``--threads-from``), each run replays its recorded thread counts."""
    status = 0
    started = time.perf_counter()
    jobs = [(name, seed) for name in names for seed in seeds]
    for position, (name, seed) in enumerate(jobs, start=1):
        config = make_config(
            name, scale, data_dir=args.data_dir, out_dir=out_dir, progress=args.progress,
            seed=seed, download=args.download,
        )  # fmt: skip
        run_dir = run_folder(out_dir, name, seed)
        wanted = _experiment_fields(_plain(config))
        summary_path = run_dir / SUMMARY_FILE
        echo(f"\n[{position}/{len(jobs)}] {name}, seed {seed}")
        if summary_path.is_file() and not args.force:
            saved = _experiment_fields(json.loads(summary_path.read_text()).get("config", {}))
            differences = _differences(saved, wanted)
            if differences:
                raise ValueError(
                    f"{summary_path} was run with other settings ({'; '.join(differences)}); "
                    "pass --force to rerun it or choose another --out-dir"
                )
            echo(f"  done already ({summary_path}); skipped (--force reruns it)")
            continue
        if summary_path.is_file():
            summary_path.unlink()  # --force: an interrupted rerun must not look finished
        last = run_dir / "checkpoint_last.pt"
        if last.is_file() and not args.force:
            saved = _experiment_fields(load_checkpoint(last)["config"])
            if not _differences(saved, wanted):
                echo(f"  resuming from {last}")
                config = config.replace(resume=str(last))
            else:
                echo(f"  {last} has other settings; starting over")
        predicted = predict_seconds(name, scale)
        if predicted is not None:
            echo(f"  budget {format_duration(predicted)}")
        began = time.perf_counter()
        replay = replays.get((name, seed)) if replays is not None else None
        try:
            with contextlib.ExitStack() as replaying:
                if replay is not None:
                    replaying.enter_context(threads_for_run(replay=replay))
                summary = run_experiment(config, logger=logging.getLogger("perturbnn.repro.fit"))
        except FloatingPointError as exc:
            echo(f"  error: {exc}", err=True)
            status = 1
            continue
        took = time.perf_counter() - began
        budget = f" (budget {format_duration(predicted)})" if predicted is not None else ""
        echo(
            f"  {name}, seed {seed}: best exact {summary.best_acc:.2%} (epoch "
            f"{summary.best_epoch}), original-method {summary.original_best_acc:.2%}, in "
            f"{format_duration(took)}{budget}"
        )
        if summary.device == "cpu" and "threads" in summary.metadata:
            used = ThreadSchedule.from_dict(summary.metadata["threads"])
            how = "replayed" if used.replayed_from is not None else "recorded"
            echo(f"  thread counts: {used.describe()} ({how})")
    echo(f"\ntraining took {format_duration(time.perf_counter() - started)} in all")
    return status


def main(argv: Optional[Sequence[str]] = None, *, command: str = PROG) -> int:
    """Run the command line; return the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        command: how the command was started, recorded with the arguments in the manifest
            (``reproduce.json``) and the report.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    flags = flag_names(parser, arguments)
    args = parser.parse_args(arguments)
    out_dir = Path(args.out_dir)
    names = list(args.only) if args.only else list_experiments()
    seeds = list(dict.fromkeys(args.seeds))  # in the order given, once each
    if any(seed < 0 for seed in seeds):
        parser.error(f"argument --seeds: seeds must be >= 0, got {args.seeds}")
    status = 0

    if not args.report_only:
        try:
            scale = resolve_scale(args)
        except ValueError as exc:
            parser.error(str(exc))
        try:  # every run's options, checked before anything is printed or written
            for name in names:
                for seed in seeds:
                    make_config(
                        name,
                        scale,
                        data_dir=args.data_dir,
                        out_dir=out_dir,
                        progress=False,
                        seed=seed,
                    )
        except (TypeError, ValueError) as exc:
            echo(f"error: {name_flags(str(exc), flags)}", err=True)
            return 2
        replays: Optional[dict[tuple[str, int], ThreadSchedule]] = None
        if args.threads_from is not None:
            try:
                replays = load_replays(names, scale, args, seeds)
            except ValueError as exc:
                echo(f"error: {exc}", err=True)
                return 2
        if args.estimate:
            echo(f"measuring at scale {scale.name}: {scale.summary_line()}")
            try:
                costs = estimate_costs(names, scale, data_dir=args.data_dir)
            except (DataNotFoundError, DataCorruptError, ValueError) as exc:
                echo(f"error: {name_flags(str(exc), flags)}", err=True)
                return 2
            echo()
            print_budget(names, scale, costs, seeds)
            print_costs(costs)
            return 0
        total = print_budget(names, scale, seeds=seeds)
        if total is not None and total > 3600:
            echo("warning: the predicted total is over one hour", err=True)
        budget = budget_seconds(names, scale)
        _write_manifest(out_dir, scale, f"{command} {shlex.join(arguments)}".strip(), budget, seeds)
        log_to_stdout()
        try:
            if replays is not None:
                where = f"as recorded for each run in {args.threads_from}"
                echo(f"threads: {where} (--threads-from: replayed exactly, not adapted)")
                status = train_all(names, scale, args, out_dir, seeds, replays)
            else:
                with threads_for_run(args.threads) as plan:
                    echo(plan.describe())
                    status = train_all(names, scale, args, out_dir, seeds)
        except KeyboardInterrupt:
            echo(
                "\ninterrupted; run the same command again to continue (finished experiments "
                "are skipped, the interrupted one resumes from its last checkpoint)",
                err=True,
            )
            return 130
        except (DataNotFoundError, DataCorruptError, CheckpointError, ValueError, OSError) as exc:
            echo(f"error: {name_flags(str(exc), flags)}", err=True)
            return 2

    try:
        gpu_runs = Path(args.gpu_runs) if args.gpu_runs else None
        report = build_report(
            out_dir,
            args.report,
            args.img_dir,
            metric_run=args.metric_run,
            gpu_runs=gpu_runs if gpu_runs is not None and gpu_runs.is_file() else None,
            conclusions=args.conclusions or None,
        )
    except (FileNotFoundError, ValueError, ImportError) as exc:
        echo(f"error: {name_flags(str(exc), flags)}", err=True)
        return 2
    echo(
        f"\nreport: {report.markdown} ({plural(len(report.runs), 'run')}); plots in {args.img_dir}"
    )
    if report.comparisons:
        echo(f"over {plural(len({s for e in report.experiments for s in e.seeds}), 'seed')}:")
        for comparison in report.comparisons:
            echo(
                f"  {comparison.verdict}: {comparison.label} ({comparison.difference:+.2f} points)"
            )
    else:
        for finding in report.findings:
            echo(f"  {finding.verdict}: {finding.claim}")
    if report.authors:
        echo("the authors' recipe (against the reported figures):")
        for comparison in report.authors:
            echo(
                f"  {comparison.verdict}: {comparison.label} ({comparison.difference:+.2f} points)"
            )
    return status
