"""Run the seed's eight CIFAR-10 experiments at one scale, then write the reproduction report.

A thin front end over :mod:`perturbnn.repro.run` (each experiment is
``RunConfig.from_experiment(name, <scale>)`` then ``run_experiment``) and
:mod:`perturbnn.repro.report` (table, orderings against the seed, metric error, plots). Every run
writes ``log.jsonl``, ``summary.json`` and checkpoints to ``<out-dir>/<experiment>/``; the
report is then built from those files alone.

Scales (``--scale``):

* ``cpu``: every preset's width divided by 8, rounded up (128 -> 16 filters, the baseline's
  44 -> 6, so that the parameter counts stay matched as in the seed), each preset's own batch
  size and learning rate, 10 epochs on class-balanced subsets of 4,000 training and 2,000 test
  images: all eight are predicted to take about 42 minutes on a 2-core CPU, from measured
  per-image times (see :data:`SCALES` and :data:`CPU_COSTS`).
* ``full``: the seed's configuration (its widths, 150 epochs, all 50,000 training and 10,000
  test images); meant for a GPU.

An interrupted run continues where it stopped: experiments whose ``summary.json`` exists are
skipped (``--force`` reruns them) and one with a ``checkpoint_last.pt`` of the same settings
resumes from it.

Examples (from the repository root)::

    python examples/reproduce.py --scale cpu --data-dir ../shared/data
    python examples/reproduce.py --scale cpu --estimate --data-dir ../shared/data
    python examples/reproduce.py --report-only --out-dir runs/reproduce
    python examples/reproduce.py --scale full --data-dir ../shared/data --out-dir runs/full \\
        --report docs/reproduction-full.md --img-dir docs/img/full
    python examples/reproduce.py --only baseline pnn-fanout64-shared --nepochs 1 \\
        --train-subset 64 --test-subset 50 --out-dir runs/tiny --report runs/tiny/report.md \\
        --img-dir runs/tiny/img --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from perturbnn.repro.checkpoint import CheckpointError, load_checkpoint
from perturbnn.repro.config import MACHINE_FIELDS, RunConfig
from perturbnn.repro.data import DataCorruptError, DataNotFoundError
from perturbnn.repro.experiments import EXPERIMENTS, list_experiments
from perturbnn.repro.report import SUMMARY_FILE, build_report, format_duration
from perturbnn.repro.run import run_experiment
from perturbnn.repro.runtime import log_to_stdout


@dataclass(frozen=True)
class Scale:
    """One shared setting for all eight experiments.

    Attributes:
        name: ``"cpu"`` or ``"full"`` (with ``+overrides`` when flags changed it).
        width_factor: every preset's ``nfilters`` is multiplied by this and rounded up.
        nepochs: epochs per experiment.
        train_subset, test_subset: class-balanced subset sizes (``None``: all images).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        description: why this scale, for the report.
    """

    name: str
    width_factor: Fraction
    nepochs: int
    train_subset: Optional[int]
    test_subset: Optional[int]
    device: str
    description: str

    def width(self, nfilters: int) -> int:
        """``nfilters`` scaled and rounded up (44 / 8 = 5.5 -> 6)."""
        return max(1, math.ceil(nfilters * self.width_factor))

    def overrides(self, name: str) -> dict[str, Any]:
        """:class:`RunConfig` fields this scale sets for preset ``name``."""
        return {
            "nfilters": self.width(int(EXPERIMENTS[name].config["nfilters"])),
            "nepochs": self.nepochs,
            "train_subset": self.train_subset,
            "test_subset": self.test_subset,
            "device": self.device,
        }

    def summary_line(self) -> str:
        widths = sorted({int(e.config["nfilters"]) for e in EXPERIMENTS.values()}, reverse=True)
        mapping = ", ".join(f"{w} -> {self.width(w)}" for w in widths)
        data = (
            f"{_size(self.train_subset, 50_000)} training / {_size(self.test_subset, 10_000)} "
            "test images"
        )
        return (
            f"width x{self.width_factor} ({mapping}), {self.nepochs} epochs, {data}, "
            f"each preset's batch size and learning rate, device {self.device}"
        )


def _size(subset: Optional[int], full: int) -> str:
    return f"all {full:,}" if subset is None else f"{subset:,}"


_CPU_DESCRIPTION = (
    "Widths divided by 8 and rounded up (128 -> 16 filters, the baseline's 44 -> 6), so that "
    "the baseline and the PNN variants keep the parameter match the seed made (about 92,000 to "
    "100,000 parameters each, except the fanout-64 variants, as at the seed's scale). Each "
    "preset keeps its own batch size (10 or 16) and learning rate: a common batch of 64 would "
    "change the optimisation the seed compared (4 to 6.4 times fewer steps per epoch), and it "
    "measured no faster for the three fanout-64 experiments that set the budget. Training uses "
    "a class-balanced subset of {train:,} of the 50,000 training images for {epochs} epochs; "
    "every epoch is tested on a class-balanced subset of {test:,} of the 10,000 test images "
    "(a binomial standard error of about {se:.1f} points near 50% accuracy). Chosen from "
    "per-image times measured on the 2-core CPU with `--estimate` (the fanout-64 experiments "
    "cost 11 to 18 ms per training image, the other five 1.6 to 2.9 ms) so that all eight are "
    "predicted to take about {minutes:.0f} minutes. At this scale the networks are far from "
    "converged: absolute accuracies are not comparable with the seed's (150 epochs, all the "
    "data, about 8 times wider). What can be compared is the ordering of the eight after the "
    "same short training, and the metric error, since both figures come from the same run."
)

#: The shared settings. ``cpu`` is sized by :data:`CPU_COSTS`; ``full`` is the seed's.
SCALES: dict[str, Scale] = {
    "cpu": Scale(
        name="cpu",
        width_factor=Fraction(1, 8),
        nepochs=10,
        train_subset=4000,
        test_subset=2000,
        device="cpu",
        description="",  # filled in below, from _CPU_DESCRIPTION and the measured costs
    ),
    "full": Scale(
        name="full",
        width_factor=Fraction(1),
        nepochs=150,
        train_subset=None,
        test_subset=None,
        device="auto",
        description=(
            "The seed's configuration: its widths (128 filters, the baseline 44), batch sizes "
            "and learning rates, 150 epochs, all 50,000 training and 10,000 test images. "
            "Meant for a GPU."
        ),
    ),
}


def _cpu_description(scale: Scale) -> str:
    assert scale.train_subset is not None and scale.test_subset is not None
    minutes = sum(predict_seconds(name, scale) or 0.0 for name in EXPERIMENTS) / 60
    return _CPU_DESCRIPTION.format(
        train=scale.train_subset,
        test=scale.test_subset,
        epochs=scale.nepochs,
        se=100 * math.sqrt(0.25 / scale.test_subset),
        minutes=minutes,
    )


#: Seconds per training image and per test image of each experiment at the ``cpu`` widths (width
#: x1/8), with the preset's batch size, on the 2-core CPU this project is developed on, torch's
#: default threads, measured with ``--estimate`` on a quiet machine (median step of 12 after 2
#: warm-up steps, loading the batch included; the larger of two measurements). Used to print
#: the budget before a ``cpu`` run.
CPU_COSTS: dict[str, tuple[float, float]] = {
    "baseline": (0.00165, 0.00041),
    "original": (0.00160, 0.00048),
    "original-first3": (0.00292, 0.00099),
    "no-noise-1x1": (0.00170, 0.00053),
    "pnn-all-layers": (0.00192, 0.00068),
    "pnn-fanout64-unique-mix": (0.01792, 0.00586),
    "pnn-fanout64-shared": (0.01130, 0.00273),
    "pnn-fanout64-shared-trained": (0.01638, 0.00264),
}


def _samples(subset: Optional[int], full: int) -> int:
    return full if subset is None else subset


def predict_seconds(
    name: str, scale: Scale, costs: Optional[dict[str, tuple[float, float]]] = None
) -> Optional[float]:
    """Predicted wall time of one experiment at ``scale``, from per-image costs.

    Args:
        name: the preset.
        scale: the scale.
        costs: seconds per training and per test image; default :data:`CPU_COSTS`, which only
            holds for the ``cpu`` widths on the CPU.

    Returns:
        float, optional: seconds, or ``None`` if no cost was measured for this setting.
    """
    if costs is None:
        if scale.width_factor != SCALES["cpu"].width_factor or scale.device != "cpu":
            return None
        costs = CPU_COSTS
    if name not in costs:
        return None
    train_s, test_s = costs[name]
    per_epoch = _samples(scale.train_subset, 50_000) * train_s
    per_epoch += _samples(scale.test_subset, 10_000) * test_s
    return scale.nepochs * per_epoch


def print_budget(
    names: Sequence[str], scale: Scale, costs: Optional[dict[str, tuple[float, float]]] = None
) -> Optional[float]:
    """Print the predicted time of each experiment and the total; return the total."""
    print(f"scale {scale.name}: {scale.summary_line()}")
    width = max(len(n) for n in names)
    print(f"  {'experiment':<{width}}  width  batch  budget")
    total: Optional[float] = 0.0
    for name in names:
        seconds = predict_seconds(name, scale, costs)
        exp = EXPERIMENTS[name]
        budget = format_duration(seconds) if seconds is not None else "not measured"
        print(
            f"  {name:<{width}}  {scale.width(int(exp.config['nfilters'])):>5}  "
            f"{exp.train['batch_size']:>5}  {budget}"
        )
        total = None if seconds is None or total is None else total + seconds
    if total is not None:
        print(f"  {'total':<{width}}                {format_duration(total)}")
    else:
        print(
            "  total: not predicted (per-image costs are measured for --scale cpu on the CPU "
            "only; run with --estimate to measure them here)"
        )
    return total


SCALES["cpu"] = dataclasses.replace(SCALES["cpu"], description=_cpu_description(SCALES["cpu"]))


def make_config(
    name: str, scale: Scale, *, data_dir: str, out_dir: Path, progress: bool
) -> RunConfig:
    """The run of preset ``name`` at ``scale``, writing to ``out_dir / name``."""
    return RunConfig.from_experiment(
        name,
        **scale.overrides(name),
        data_dir=data_dir,
        out_dir=str(out_dir / name),
        progress=progress,
    )


def _experiment_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(config).items() if k not in MACHINE_FIELDS}


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


def estimate_costs(
    names: Sequence[str], scale: Scale, *, data_dir: str, steps: int = 12
) -> dict[str, tuple[float, float]]:
    """Measure seconds per training and per test image of each experiment at ``scale``.

    The median over ``steps`` training steps after two warm-up steps (loading the batch,
    forward, backward and optimizer step), and over ``steps`` test batches after one warm-up
    batch. One-time costs are left out: loading the data set (a few seconds per experiment)
    and the first steps of a model (about 10 s for the fanout-64 ones). Run it on a quiet
    machine: other processes on the same cores inflate the times several-fold.
    """
    import torch

    from perturbnn.repro.run import prepare_run

    costs: dict[str, tuple[float, float]] = {}
    for name in names:
        config = RunConfig.from_experiment(
            name, **scale.overrides(name), data_dir=data_dir, out_dir=None, progress=False
        )
        batch = config.batch_size
        config = config.replace(train_subset=batch * (steps + 2))
        run = prepare_run(config)
        model, optimizer = run.model, run.optimizer
        criterion = torch.nn.CrossEntropyLoss()
        times = []
        batches = iter(run.train_loader)
        while True:
            began = time.perf_counter()  # loading the batch counts too
            try:
                inputs, targets = next(batches)
            except StopIteration:
                break
            inputs, targets = inputs.to(run.device), targets.to(run.device)
            optimizer.zero_grad(set_to_none=True)
            criterion(model(inputs), targets).backward()
            optimizer.step()
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        timed = sorted(times[2:]) or sorted(times)
        train_s = timed[len(timed) // 2] / batch
        model.eval()
        test_times = []
        with torch.no_grad():
            batches = iter(run.test_loader)
            for _ in range(steps + 1):
                began = time.perf_counter()
                try:
                    inputs, _ = next(batches)
                except StopIteration:
                    break
                model(inputs.to(run.device))
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                test_times.append((time.perf_counter() - began) / inputs.shape[0])
        timed = sorted(test_times[1:]) or sorted(test_times)
        test_s = timed[len(timed) // 2]
        costs[name] = (train_s, test_s)
        print(
            f"  {name:<28} {1000 * train_s:8.2f} ms per training image  "
            f"{1000 * test_s:7.2f} ms per test image",
            flush=True,
        )
    return costs


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


def build_parser() -> argparse.ArgumentParser:
    defaults = RunConfig()
    parser = argparse.ArgumentParser(
        description="Run the seed's eight CIFAR-10 experiments at one scale and write the "
        "reproduction report (table, orderings against the seed, metric error, plots).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="shared setting")
    parser.add_argument(
        "--data-dir",
        default=defaults.data_dir,
        help="folder holding cifar10/ (here: ../shared/data; env PERTURBNN_DATA_DIR)",
    )
    parser.add_argument("--out-dir", default="runs/reproduce", help="one sub-folder per run")
    parser.add_argument("--report", default="docs/reproduction.md", help="markdown to write")
    parser.add_argument("--img-dir", default="docs/img", help="where the PNG plots go")
    parser.add_argument(
        "--gpu-runs",
        default="docs/data/gpu_h200_runs.json",
        help="JSON of short seed-width GPU runs to add to the report if the file exists ('' for none)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=list_experiments(),
        help="run only these experiments (the report covers every run in --out-dir)",
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
        help="run of the metric-error section; None: 'original' (the network of the seed's own "
        "metric comparison) if it ran",
    )
    parser.add_argument("--progress", action="store_true", help="show tqdm bars")
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


def _rounded(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds, 1)


def _write_manifest(
    out_dir: Path, scale: Scale, argv: Sequence[str], budget: dict[str, Any]
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
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
        "command": "python examples/reproduce.py " + shlex.join(argv),
        "budget_s": budget,
    }
    (out_dir / "reproduce.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def train_all(names: Sequence[str], scale: Scale, args: argparse.Namespace, out_dir: Path) -> int:
    """Run (or skip, or resume) each experiment; return 0, or 1 if one failed."""
    status = 0
    started = time.perf_counter()
    for position, name in enumerate(names, start=1):
        config = make_config(
            name, scale, data_dir=args.data_dir, out_dir=out_dir, progress=args.progress
        )
        run_dir = out_dir / name
        wanted = _experiment_fields(_plain(config))
        summary_path = run_dir / SUMMARY_FILE
        print(f"\n[{position}/{len(names)}] {name}", flush=True)
        if summary_path.is_file() and not args.force:
            saved = _experiment_fields(json.loads(summary_path.read_text()).get("config", {}))
            differences = _differences(saved, wanted)
            if differences:
                raise ValueError(
                    f"{summary_path} was run with other settings ({'; '.join(differences)}); "
                    "pass --force to rerun it or choose another --out-dir"
                )
            print(f"  done already ({summary_path}); skipped (--force reruns it)")
            continue
        if summary_path.is_file():
            summary_path.unlink()  # --force: an interrupted rerun must not look finished
        last = run_dir / "checkpoint_last.pt"
        if last.is_file() and not args.force:
            saved = _experiment_fields(load_checkpoint(last)["config"])
            if not _differences(saved, wanted):
                print(f"  resuming from {last}")
                config = config.replace(resume=str(last))
            else:
                print(f"  {last} has other settings; starting over")
        predicted = predict_seconds(name, scale)
        if predicted is not None:
            print(f"  budget {format_duration(predicted)}")
        began = time.perf_counter()
        try:
            summary = run_experiment(config, logger=logging.getLogger("perturbnn.repro.fit"))
        except FloatingPointError as exc:
            print(f"  error: {exc}", file=sys.stderr)
            status = 1
            continue
        took = time.perf_counter() - began
        budget = f" (budget {format_duration(predicted)})" if predicted is not None else ""
        print(
            f"  {name}: best exact {summary.best_acc:.2%} (epoch {summary.best_epoch}), "
            f"original-method {summary.original_best_acc:.2%}, in {format_duration(took)}{budget}",
            flush=True,
        )
    print(f"\ntraining took {format_duration(time.perf_counter() - started)} in all")
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(arguments)
    out_dir = Path(args.out_dir)
    names = list(args.only) if args.only else list_experiments()
    status = 0

    if not args.report_only:
        try:
            scale = resolve_scale(args)
        except ValueError as exc:
            parser.error(str(exc))
        if args.estimate:
            print(f"measuring at scale {scale.name}: {scale.summary_line()}")
            try:
                costs = estimate_costs(names, scale, data_dir=args.data_dir)
            except (DataNotFoundError, DataCorruptError, ValueError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print()
            print_budget(names, scale, costs)
            print("\nCPU_COSTS = {")
            for name, (train_s, test_s) in costs.items():
                print(f'    "{name}": ({train_s:.5f}, {test_s:.5f}),')
            print("}")
            return 0
        total = print_budget(names, scale)
        if total is not None and total > 3600:
            print("warning: the predicted total is over one hour", file=sys.stderr)
        budget = {name: _rounded(predict_seconds(name, scale)) for name in names}
        _write_manifest(out_dir, scale, arguments, budget)
        log_to_stdout()
        try:
            status = train_all(names, scale, args, out_dir)
        except KeyboardInterrupt:
            print(
                "\ninterrupted; run the same command again to continue (finished experiments "
                "are skipped, the interrupted one resumes from its last checkpoint)",
                file=sys.stderr,
            )
            return 130
        except (DataNotFoundError, DataCorruptError, CheckpointError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    try:
        gpu_runs = Path(args.gpu_runs) if args.gpu_runs else None
        report = build_report(
            out_dir,
            args.report,
            args.img_dir,
            metric_run=args.metric_run,
            gpu_runs=gpu_runs if gpu_runs is not None and gpu_runs.is_file() else None,
        )
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\nreport: {report.markdown} ({len(report.runs)} run(s)); plots in {args.img_dir}")
    for finding in report.findings:
        print(f"  {finding.verdict}: {finding.claim}")
    return status


if __name__ == "__main__":
    sys.exit(main())
