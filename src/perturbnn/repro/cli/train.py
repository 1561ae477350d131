"""``perturbnn-repro train``: one run with the independent reproduction's ``main.py`` flags
(``examples/cifar10_repro.py``).

It parses the independent reproduction's flags (same defaults; spelled with dashes,
``--first-filter-size``, with that code's own spellings, ``--first_filter_size`` or
``--no-unique_masks``, accepted as hidden aliases so its commands run unchanged), optionally
applies one of the ten presets (the independent reproduction's eight and the authors' two,
``--list-experiments``), and calls the library. Flags given explicitly on the command
line override the preset. Every option is checked, and the data, model and optimizer are built
(:func:`perturbnn.repro.run.prepare_run`), before the configuration is printed: bad input gives
one ``error:`` line naming the flag, and nothing else.

Examples (from the repository root, with the data in ``../shared/data``)::

    perturbnn-repro train --list-experiments
    perturbnn-repro train --experiment pnn-fanout64-shared
    perturbnn-repro train --experiment baseline --nepochs 10 --train-subset 5000 \\
        --out-dir runs/baseline-short
    perturbnn-repro train --resume runs/baseline-short/checkpoint_last.pt --nepochs 20

The same command runs on several GPUs or nodes under ``torchrun`` (DistributedDataParallel;
``--batch-size`` is per process; see ``docs/distributed.md``)::

    torchrun --nproc_per_node=4 -m perturbnn.repro train --experiment pnn-fanout64-shared --sync-bn

Each run writes ``log.jsonl``, ``summary.json``, ``checkpoint_last.pt`` and
``checkpoint_best.pt`` to ``--out-dir`` (default ``runs/<experiment or net-type>-<time>``).
At the end it prints the best exact test accuracy, the figure the original code would have
reported (per-batch accuracy smoothed 0.7/0.3 and never reset, best over epochs), the gap
between them, and the accuracy the notes report for the experiment.

Exit status: 0 when done; 1 when the loss became NaN or infinite (the message names the epoch
and step; ``checkpoint_last.pt`` keeps the last good epoch); 2 on bad input found before
training (options, missing or corrupt data, a checkpoint of another configuration, an
unwritable or full ``--out-dir``), with one ``error:`` line and no traceback; 130 after Ctrl-C
(SIGINT) and 143 after SIGTERM, once the current step has finished and with
``checkpoint_last.pt`` holding the last completed epoch (``--resume`` re-runs the interrupted
one). See ``docs/robustness.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from perturbnn import ACTIVATIONS, list_models
from perturbnn.functional import IMPLS
from perturbnn.models import FIRST_LAYER_TYPES
from perturbnn.repro.checkpoint import CheckpointError, load_checkpoint
from perturbnn.repro.cli.output import (
    Parser,
    add_alias,
    add_data_flags,
    add_progress_flag,
    add_threads_flag,
    choice,
    echo,
    flag_names,
    name_flags,
    plural,
)
from perturbnn.repro.config import MACHINE_FIELDS, RunConfig, default_out_dir
from perturbnn.repro.data import DATASETS, DataCorruptError, DataNotFoundError
from perturbnn.repro.distributed import destroy_distributed, is_main_process
from perturbnn.repro.experiments import EXPERIMENTS, get_experiment
from perturbnn.repro.fit import FitSummary
from perturbnn.repro.optim import LR_RULES, LR_SCHEDULES
from perturbnn.repro.outdir import OutDirError, check_out_dir
from perturbnn.repro.run import PreparedRun, prepare_run
from perturbnn.repro.runtime import log_to_stdout, threads_for_run
from perturbnn.repro.signals import TrainingInterrupted
from perturbnn.repro.thread_record import ThreadSchedule, replay_schedule

__all__ = ["build_parser", "main", "resolve_config"]

PROG = "perturbnn-repro train"


def build_parser(*, suppress_defaults: bool = False, prog: str = PROG) -> argparse.ArgumentParser:
    """The command-line parser; with ``suppress_defaults`` only explicit flags are set."""
    defaults = RunConfig()
    parser = Parser(
        prog=prog,
        description="Train a PNN or baseline model with the recipe of Klachko's independent "
        "reproduction on CIFAR-10 (or another of its data sets) and report the exact test "
        "accuracy next to the figure the original PNN code reported. Its main.py spellings "
        "(--first_filter_size, --no-unique_masks, ...) are accepted too.",
    )

    def add(*flags: str, default: Any, alias: Optional[str] = None, **kwargs: Any) -> None:
        """Add ``flags``; ``alias``: the independent reproduction's spelling, hidden."""
        kwargs["default"] = argparse.SUPPRESS if suppress_defaults else default
        if alias is None:
            parser.add_argument(*flags, **kwargs)
        else:
            add_alias(parser, alias, *flags, **kwargs)

    boolean = argparse.BooleanOptionalAction
    add(
        "--experiment",
        default=None,
        metavar="NAME",
        help="apply a preset (the independent reproduction's eight or the authors' two, see "
        "--list-experiments); explicit flags override it",
    )
    add(
        "--list-experiments",
        default=False,
        action="store_true",
        help="print the presets with the independent reproduction's command and reported "
        "accuracy, then exit",
    )
    # The independent reproduction's flags (its main.py), spelled with dashes; its own
    # spellings (--first_filter_size, --no-unique_masks, ...) are hidden aliases.
    add(
        "--net-type",
        default=defaults.net_type,
        type=choice(list_models(), what="model name"),
        metavar="NAME",
        help=f"model: {', '.join(list_models())} (resnet18 is the CIFAR ResNet-18: 3x3 stem "
        "without max pooling, for 32x32 images; not torchvision's ImageNet one)",
    )
    datasets = ", ".join(DATASETS)
    add("--dataset-train", default=defaults.dataset_train, help=f"training data set: {datasets}")
    add("--dataset-test", default=defaults.dataset_test, help="test data set (the same kinds)")
    add("--nfilters", type=int, default=defaults.nfilters, help="width of the first stage")
    add("--batch-size", type=int, default=defaults.batch_size, help="batch size")
    add("--learning-rate", type=float, default=defaults.learning_rate, help="learning rate")
    add(
        "--first-filter-size",
        alias="--first_filter_size",
        type=int,
        default=defaults.first_filter_size,
        help="first layer: 0 = perturbation layer, n > 0 = n x n convolution (default: the "
        "network's own: 0, but 7 for noiseresnet18)",
    )
    add(
        "--filter-size",
        alias="--filter_size",
        type=int,
        default=defaults.filter_size,
        help="other layers: 0 = perturbation layer, n > 0 = n x n convolution",
    )
    add("--nmasks", type=int, default=defaults.nmasks, help="noise masks per input channel")
    add(
        "--unique-masks",
        alias="--unique_masks",
        action=boolean,
        default=defaults.unique_masks,
        help="a different set of masks for every input channel",
    )
    add(
        "--train-masks",
        alias="--train_masks",
        action=boolean,
        default=defaults.train_masks,
        help="train the noise masks as parameters",
    )
    add(
        "--mix-maps",
        alias="--mix_maps",
        action=boolean,
        default=defaults.mix_maps,
        help="extra 1x1 mixing convolution in perturbation layers",
    )
    add(
        "--first-layer-type",
        type=choice(list(FIRST_LAYER_TYPES), what="first layer type"),
        metavar="NAME",
        default=defaults.first_layer_type,
        help="first perturbation layer (--first-filter-size 0, perturb_resnet*): independent "
        "(the independent reproduction's) or authors (the authors' update: 5 x nfilters masks "
        "per channel at 20 x the noise level, BatchNorm, sigmoid, 1x1 convolutions)",
    )
    add(
        "--freeze-first",
        action=boolean,
        default=defaults.freeze_first,
        help="fix the weights of the regular first convolution (--first-filter-size > 0) at "
        "their random values, as the authors' updated noiseresnet18 does",
    )
    add(
        "--impl",
        type=choice(sorted(IMPLS), what="implementation"),
        metavar="IMPL",
        default=defaults.impl,
        help="how perturbation layers compute (same results): auto (fastest exact path "
        "without compilation), eager, compiled (torch.compile), grouped (literal formulation)",
    )
    add(
        "--noise-type",
        alias="--noise_type",
        default=defaults.noise_type,
        metavar="NAME",
        help="uniform or normal",
    )
    add("--level", type=float, default=defaults.level, help="noise level")
    add(
        "--scale-noise",
        alias="--scale_noise",
        type=float,
        default=defaults.scale_noise,
        help="factor on the noise level of the first layer",
    )
    add(
        "--pool-type",
        alias="--pool_type",
        default=defaults.pool_type,
        metavar="NAME",
        help="max or avg",
    )
    add(
        "--act",
        default=defaults.act,
        type=choice(sorted(ACTIVATIONS), what="activation"),
        metavar="NAME",
        help=f"activation function: {', '.join(sorted(ACTIVATIONS))}",
    )
    add(
        "--use-act",
        alias="--use_act",
        action=boolean,
        default=defaults.use_act,
        help="activation right after perturbing the input image",
    )
    add("--dropout", type=float, default=defaults.dropout, help="dropout (lenet, cifarnet)")
    add("--nepochs", type=int, default=defaults.nepochs, help="number of epochs in total")
    add("--optim-method", default=defaults.optim_method, help="Adam, RMSprop or SGD")
    add(
        "--lr-schedule",
        type=choice(list(LR_RULES), what="learning-rate schedule"),
        metavar="NAME",
        default=defaults.lr_schedule,
        help="learning-rate schedule: independent (the independent reproduction's; CIFAR-10 "
        "x0.2 from epochs 60, 90, 120, 160) or authors (the authors' updated recipe; CIFAR-10 "
        "x0.2 from epochs 150, 250, 300, 350, 400)",
    )
    add("--weight-decay", type=float, default=defaults.weight_decay, help="weight decay")
    add("--momentum", type=float, default=defaults.momentum, help="momentum (RMSprop, SGD)")
    add("--manual-seed", type=int, default=defaults.manual_seed, help="random seed")
    add(
        "--debug",
        default=False,
        action="store_true",
        help="log input, noise and output values of every noise layer at every step",
    )
    # This reproduction's own flags.
    add_data_flags(
        parser,
        holding="the data set (cifar10/, mnist/ or torchvision's folders)",
        suppress_defaults=suppress_defaults,
    )
    add(
        "--train-subset",
        type=int,
        default=None,
        metavar="N",
        help="train on N class-balanced samples only",
    )
    add(
        "--test-subset",
        type=int,
        default=None,
        metavar="N",
        help="test on N class-balanced samples only",
    )
    add(
        "--out-dir",
        default=None,
        help="where logs and checkpoints go (default: runs/<experiment or net-type>-<time>, "
        "or the checkpoint's folder with --resume)",
    )
    add("--resume", default=None, metavar="PATH", help="continue from this checkpoint")
    add("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    add("--num-workers", type=int, default=defaults.num_workers, help="data loader workers")
    add_threads_flag(parser, default=argparse.SUPPRESS if suppress_defaults else None)
    add_progress_flag(parser, default=argparse.SUPPRESS if suppress_defaults else True)
    add(
        "--sync-bn",
        default=False,
        action="store_true",
        help="under torchrun: convert BatchNorm to SyncBatchNorm (statistics over all processes)",
    )
    return parser


def _one_line(exc: BaseException, argv: Optional[Sequence[str]] = None) -> str:
    """The error as one line, naming the flags the user typed (in ``argv``) rather than the
    fields."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines) if lines else type(exc).__name__
    return name_flags(text, flag_names(build_parser(), argv))


def print_experiments() -> None:
    """Print the recipe every preset runs, then the presets: name, reported accuracy, command."""
    d = RunConfig()
    schedule = LR_SCHEDULES[d.dataset_train]
    echo(
        f"recipe (the independent reproduction's main.py defaults): {d.optim_method} with Nesterov momentum "
        f"{d.momentum}, weight decay {d.weight_decay}, {d.nepochs} epochs, learning rate "
        f"x{schedule.gamma} from epochs {', '.join(map(str, schedule.milestones))} "
        f"({d.dataset_train}), seed {d.manual_seed}, dropout {d.dropout}, noise level {d.level}, "
        "weights initialized by perturbnn.init_weights_; each command sets its own batch size "
        "and learning rate"
    )
    echo(
        "the authors' presets (authors-*) set their own recipe instead: Adam at 1e-4, weight "
        "decay 1e-4, 450 epochs, --lr-schedule authors (x0.2 from epochs 150, 250, 300, 350, "
        "400), noise level 0.1"
    )
    width = max(len(name) for name in EXPERIMENTS)
    echo(f"{'name':<{width}}  {'source':<11}  {'reported':>8}  command")
    for name, exp in EXPERIMENTS.items():
        reported = f"{100 * exp.seed_accuracy:g}%"
        echo(f"{name:<{width}}  {exp.source:<11}  {reported:>8}  {exp.seed_command}")


def resolve_config(argv: Optional[Sequence[str]]) -> RunConfig:
    """Klachko's defaults, then the checkpoint's (with --resume), then the preset, then flags."""
    args = vars(build_parser().parse_args(argv))
    explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))
    explicit.pop("list_experiments", None)
    explicit.pop("threads", None)  # settings of this process, not of the run
    explicit.pop("threads_from", None)

    values: dict[str, Any] = {}
    resume = explicit.get("resume")
    if resume is not None:
        saved = load_checkpoint(resume)["config"]
        fields = RunConfig.__dataclass_fields__
        values.update({k: v for k, v in saved.items() if k in fields and k not in MACHINE_FIELDS})
        if explicit.get("out_dir") is None:
            explicit["out_dir"] = str(Path(resume).parent)
    if explicit.get("experiment") is not None:
        values.update(get_experiment(explicit["experiment"]).overrides())
    values.update(explicit)
    values.setdefault("data_dir", args["data_dir"])
    config = RunConfig.from_dict(values)
    if config.out_dir is None:
        config = config.replace(out_dir=str(default_out_dir(config)))
    return config


def print_config(config: RunConfig) -> None:
    echo("configuration:")
    for key, value in config.to_dict().items():
        echo(f"  {key}: {value}")
    if config.experiment is not None:
        exp = get_experiment(config.experiment)
        echo(f"  {exp.source} command: {exp.seed_command}")


def print_result(summary: FitSummary, config: RunConfig) -> None:
    rows = [
        (f"best exact test accuracy (epoch {summary.best_epoch})", f"{summary.best_acc:.2%}"),
        ("original-method figure (best over epochs)", f"{summary.original_best_acc:.2%}"),
        ("gap (original-method minus exact)", f"{100 * summary.gap:+.2f} points"),
        ("last exact test accuracy", f"{summary.last_acc:.2%}"),
    ]
    if config.experiment is not None:
        exp = get_experiment(config.experiment)
        who = "independent reproduction" if exp.source == "independent" else "authors"
        rows.append((f"reported accuracy ({exp.name}, {who})", f"{100 * exp.seed_accuracy:g}%"))
    width = max(len(label) for label, _ in rows)
    echo()
    echo(
        f"result after {plural(summary.epochs, 'epoch')} on "
        f"{summary.metadata.get('test_samples')} "
        f"test samples, {summary.wall_time_s:.1f} s:"
    )
    for label, value in rows:
        echo(f"  {label:<{width}}  {value}")
    if config.train_subset is not None or config.test_subset is not None:
        echo("  (subsets of the data were used: not comparable with Klachko's figures)")
    threads = summary.metadata.get("threads")
    if threads is not None and summary.device == "cpu":
        schedule = ThreadSchedule.from_dict(threads)
        how = (
            f"replayed from {schedule.replayed_from}"
            if schedule.replayed_from is not None
            else f"recorded; --threads-from {summary.out_dir} repeats this run exactly"
        )
        echo(f"thread counts: {schedule.describe()} ({how})")
    echo(f"files in {summary.out_dir}")


def print_run(run: PreparedRun) -> None:
    """The model, the data and the processes of a prepared run, one line each."""
    config = run.config
    echo(
        f"model: {config.net_type} with {run.parameters:,} trainable parameters"
        + (f" (and {run.frozen_parameters:,} frozen)" if run.frozen_parameters else "")
        + f" and {run.mask_values:,} noise mask values, on {run.device}"
    )
    meta = run.metadata()
    echo(f"data: {meta['train_samples']} train and {meta['test_samples']} test samples")
    if run.distributed is not None:
        world = run.distributed.world_size
        echo(
            f"distributed: {world} processes ({run.distributed.backend}), batch size "
            f"{config.batch_size} per process, {world * config.batch_size} per step"
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status.

    Under ``torchrun`` every process runs it: only rank 0 prints to stdout (errors go to
    stderr on every rank), and the process group is destroyed at the end.
    """
    with contextlib.ExitStack() as stack:
        if not is_main_process():
            devnull = stack.enter_context(open(os.devnull, "w", encoding="utf-8"))
            stack.enter_context(contextlib.redirect_stdout(devnull))
        try:
            return _main(argv)
        finally:
            destroy_distributed()


def _first_missing(folder: Path) -> Optional[Path]:
    """The outermost folder of ``folder``'s path that does not exist yet, if any."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def _remove_if_empty(top: Optional[Path]) -> None:
    """Remove the folders this run created (``top`` and below) if a failure left them empty."""
    if top is None or not top.is_dir():
        return
    for path in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()
    if not any(top.iterdir()):
        top.rmdir()


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)  # errors name the flags typed here
    args = build_parser().parse_args(argv)
    if args.list_experiments:
        print_experiments()
        return 0

    log_to_stdout()

    created: Optional[Path] = None  # an output folder this run made, removed if left empty
    try:  # check everything (options, out-dir, data, model, checkpoint) before printing
        config = resolve_config(argv)
        replay: Optional[ThreadSchedule] = None
        if args.threads_from is not None:
            replay = replay_schedule(args.threads_from, config.to_dict(), ignore=MACHINE_FIELDS)
        if config.out_dir is not None:
            created = _first_missing(Path(config.out_dir))
            check_out_dir(config.out_dir)  # unwritable: fail before loading anything
        run = prepare_run(config)
    except (
        DataNotFoundError,
        DataCorruptError,
        CheckpointError,
        OutDirError,
        FileNotFoundError,
        ImportError,
        ValueError,
        TypeError,
    ) as exc:
        echo(f"error: {_one_line(exc, argv)}", err=True)
        _remove_if_empty(created)
        return 2
    except KeyboardInterrupt:
        echo("\ninterrupted before training started; nothing to save", err=True)
        _remove_if_empty(created)
        return 130
    print_config(config)
    print_run(run)
    threads = contextlib.ExitStack()
    if run.device.type == "cpu":
        echo(threads.enter_context(threads_for_run(args.threads, replay=replay)).describe())
    try:
        with threads:
            summary = run.fit(logger=logging.getLogger("perturbnn.repro.fit"))
    except TrainingInterrupted as exc:  # SIGINT or SIGTERM: the last completed epoch is saved
        echo(
            f"\ninterrupted by {exc.signal_name} after "
            f"{plural(exc.epochs_completed or 0, 'completed epoch')}; "
            f"continue with --resume {exc.checkpoint}",
            err=True,
        )
        return exc.exit_code  # 130 (SIGINT) or 143 (SIGTERM)
    except KeyboardInterrupt:
        last = Path(config.out_dir or ".") / "checkpoint_last.pt"
        echo(f"\ninterrupted; continue with --resume {last}", err=True)
        return 130
    except (CheckpointError, OutDirError) as exc:
        echo(f"error: {_one_line(exc, argv)}", err=True)
        return 2
    except FloatingPointError as exc:
        echo(f"error: {_one_line(exc, argv)}", err=True)
        return 1
    print_result(summary, config)
    return 0
