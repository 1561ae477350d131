""":func:`fit`: train for a number of epochs, write ``log.jsonl``, ``summary.json``,
``checkpoint_last.pt`` and ``checkpoint_best.pt``, and resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from perturbnn._version import __version__
from perturbnn.metrics import OriginalSmoothedAccuracy
from perturbnn.repro import distributed as _distributed
from perturbnn.repro.checkpoint import (
    _atomic_write_text,
    _plain,
    _restore_rng,
    _rng_state,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from perturbnn.repro.data.seeding import set_loader_epoch
from perturbnn.repro.loop import (
    evaluate,
    train_one_epoch,
)
from perturbnn.repro.outdir import (
    CHECKPOINT_COPIES,
    check_out_dir,
    estimate_checkpoint_bytes,
)
from perturbnn.repro.runtime import (
    DeviceLike,
    LossFn,
    PathLike,
    _device_of,
    install_recorder,
    record_threads,
)
from perturbnn.repro.signals import StopOnSignal, TrainingInterrupted

__all__ = ["HISTORY_KEYS", "FitSummary", "fit"]

_LOGGER = logging.getLogger(__name__)


#: Per-epoch records kept by :func:`fit` (``log.jsonl`` fields, ``summary.json`` arrays).
HISTORY_KEYS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "original_acc",
    "lr",
    "seconds",
)


@dataclass
class FitSummary:
    """What :func:`fit` returns and writes to ``summary.json``.

    Attributes:
        best_acc (float): best exact test accuracy over the epochs, a fraction.
        best_epoch (int): its 1-based epoch.
        last_acc (float): exact test accuracy after the last epoch.
        original_best_acc (float): best end-of-epoch value of the original method's smoothed
            figure, what the original code reported.
        original_last_acc (float): that figure after the last epoch.
        epochs (int): epochs completed (including those before a resume).
        parameters (int): trainable parameters, fixed noise masks excluded.
        mask_values (int): values held in noise masks.
        wall_time_s (float): seconds over all epochs (including those before a resume).
        device (str): where the run trained.
        history (dict[str, list]): per-epoch arrays (keys :data:`HISTORY_KEYS`).
        config (dict): the run's configuration.
        metadata (dict): extra entries for ``summary.json`` (e.g. the experiment's seed figure).
        out_dir (str, optional): where the files are, if written.
        test_correct (Tensor[epochs, test_samples] of bool, optional): whether each test
            sample was classified correctly after each epoch, in the test loader's order (the
            input of :func:`perturbnn.metrics.overstatement_over_orderings`). Kept in memory
            only, not in ``summary.json``; ``None`` after a resume (the earlier epochs' are
            not saved) or under sharded evaluation.
    """

    best_acc: float
    best_epoch: int
    last_acc: float
    original_best_acc: float
    original_last_acc: float
    epochs: int
    parameters: int
    mask_values: int
    wall_time_s: float
    device: str
    history: dict[str, list[Any]]
    config: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    out_dir: Optional[str] = None
    test_correct: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)

    @property
    def gap(self) -> float:
        """``original_best_acc - best_acc``, as a fraction (how much the old figure inflates)."""
        return self.original_best_acc - self.best_acc

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON types (the content of ``summary.json``)."""
        out: dict[str, Any] = {
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "last_acc": self.last_acc,
            "original_best_acc": self.original_best_acc,
            "original_last_acc": self.original_last_acc,
            "gap": self.gap,
            "epochs": self.epochs,
            "parameters": self.parameters,
            "mask_values": self.mask_values,
            "wall_time_s": self.wall_time_s,
            "device": self.device,
            "config": self.config,
            **self.metadata,
            "history": self.history,
            "perturbnn_version": __version__,
            "torch_version": str(torch.__version__),
        }
        return _plain(out)  # type: ignore[no-any-return]


def _count(model: nn.Module) -> tuple[int, int]:
    from perturbnn import count_mask_values, count_parameters

    return int(count_parameters(model)), int(count_mask_values(model))


def _summarize(
    history: Mapping[str, list[Any]],
    *,
    parameters: int,
    mask_values: int,
    device: torch.device,
    config: dict[str, Any],
    metadata: Mapping[str, Any],
    out_dir: Optional[Path],
    test_correct: Optional[torch.Tensor] = None,
) -> FitSummary:
    test_acc = [float(v) for v in history["test_acc"]]
    original = [float(v) for v in history["original_acc"]]
    best_index = max(range(len(test_acc)), key=test_acc.__getitem__)
    return FitSummary(
        best_acc=test_acc[best_index],
        best_epoch=int(history["epoch"][best_index]),
        last_acc=test_acc[-1],
        original_best_acc=max(original),
        original_last_acc=original[-1],
        epochs=int(history["epoch"][-1]),
        parameters=parameters,
        mask_values=mask_values,
        wall_time_s=float(sum(history["seconds"])),
        device=str(device),
        history={k: list(v) for k, v in history.items()},
        config=config,
        metadata=dict(metadata),
        out_dir=str(out_dir) if out_dir is not None else None,
        test_correct=test_correct,
    )


def _stopped_by_signal(
    exc: TrainingInterrupted, completed: int, directory: Optional[Path], log: logging.Logger
) -> TrainingInterrupted:
    """Log and return the :class:`TrainingInterrupted` that :func:`fit` raises."""
    checkpoint = directory / "checkpoint_last.pt" if directory is not None else None
    if checkpoint is not None:
        where = (
            f"{checkpoint} holds epoch {completed}; --resume continues with epoch {completed + 1}"
        )
    else:
        where = f"{completed} epoch(s) completed, nothing saved (no out_dir)"
    message = f"stopped: {exc}; {where}"
    log.warning("%s", message)
    return TrainingInterrupted(
        message, signum=exc.signum, epochs_completed=completed, checkpoint=checkpoint
    )


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    *,
    optimizer: Optimizer,
    epochs: int,
    device: DeviceLike,
    scheduler: Optional[LRScheduler] = None,
    out_dir: Optional[PathLike] = None,
    config: Optional[Mapping[str, Any]] = None,
    resume: Union[PathLike, Mapping[str, Any], None] = None,
    loss_fn: Optional[LossFn] = None,
    progress: bool = True,
    smoothing: float = 0.7,
    metadata: Optional[Mapping[str, Any]] = None,
    logger: Optional[logging.Logger] = None,
    handle_signals: bool = True,
) -> FitSummary:
    """Train for ``epochs`` epochs, testing after each, with logs, checkpoints and resume.

    Each epoch: one pass of :func:`train_one_epoch` (with a tqdm bar if ``progress``), one
    :func:`evaluate` on ``test_loader`` that also feeds the original method's smoothed figure,
    one ``scheduler.step()``, then one line at INFO level on ``logger``::

        epoch 3/10  train loss 1.234 acc 45.67%  test loss 1.111  acc 50.12% (exact)  original-method 55.34%  lr 0.001  12.3s

    With ``out_dir``, it writes ``log.jsonl`` (one JSON object per epoch with the fields of
    :data:`HISTORY_KEYS`), ``checkpoint_last.pt`` after every epoch, ``checkpoint_best.pt``
    whenever the exact test accuracy improves, and ``summary.json`` at the end (see
    :class:`FitSummary`). Checkpoints load with ``torch.load(path, weights_only=True)``.

    The thread counts of the run are recorded by step
    (:class:`~perturbnn.repro.thread_record.ThreadSchedule`: the initial count and every
    change, keyed by the index of the :func:`~perturbnn.repro.runtime.adapt_threads` call over
    the run's training and test batches) and returned in the summary's metadata under
    ``"threads"`` (so ``summary.json`` holds it); checkpoints hold the record so far, and a
    resumed run continues its count. ``--threads-from`` replays it exactly.

    Faults (see ``docs/robustness.md``): before the first step, ``out_dir`` is created and
    checked (:func:`check_out_dir`: writable, room for three checkpoints) and
    ``checkpoint_last.pt`` is written with the starting state (epoch 0, or the resumed epoch).
    Checkpoints are written to a temporary file and renamed, so a kill leaves the previous one
    whole. The first SIGINT (Ctrl-C) or SIGTERM lets the current step finish, then stops with
    :class:`TrainingInterrupted`; ``checkpoint_last.pt`` then holds the last *completed* epoch,
    so a resume re-runs the interrupted epoch and matches an uninterrupted run. A NaN or
    infinite loss stops with ``FloatingPointError`` naming the epoch and step, and the last
    good checkpoint is kept.

    Under ``torchrun`` (see :mod:`perturbnn.repro.distributed`) every rank calls it with a
    DDP-wrapped model; the training sampler's ``set_epoch`` is called every epoch, figures are
    summed over the ranks, and only rank 0 logs epoch lines, shows bars and writes files.

    Args:
        model (nn.Module): already on ``device``.
        train_loader (Iterable): yields ``(inputs, targets)`` training batches.
        test_loader (Iterable): yields ``(inputs, targets)`` test batches; every sample counts.
        optimizer (Optimizer): e.g. from :func:`make_optimizer`.
        epochs (int): total number of epochs, counting any completed before a resume.
        device (str or torch.device): where the batches go.
        scheduler (LRScheduler, optional): stepped once per epoch (e.g. :func:`make_scheduler`).
        out_dir (str or os.PathLike, optional): where to write files; created if needed.
        config (Mapping, optional): the run's configuration, stored (as plain JSON) in
            checkpoints and ``summary.json``.
        resume (path or Mapping, optional): a checkpoint file (or a loaded checkpoint) to
            continue from: model, optimizer, scheduler, histories, the smoothed figure and the
            random number generator states are restored and training continues with the next
            epoch. ``log.jsonl`` is rewritten from the restored history.
        loss_fn (callable, optional): mean loss over a batch. Default: cross-entropy.
        progress (bool): show tqdm bars (a warning, then none, if tqdm is missing).
        smoothing (float): the original method's smoothing weight. Default: ``0.7``.
        metadata (Mapping, optional): extra entries for ``summary.json``.
        logger (logging.Logger, optional): where epoch lines go. Default: this module's logger.
        handle_signals (bool): turn SIGINT and SIGTERM into a clean stop while training
            (main thread only; the previous handlers are restored on return). Default: ``True``.

    Returns:
        FitSummary: best and last exact accuracy, the original-method figure, the history, and
        (in memory only, for a run not resumed) each test sample's correctness per epoch.

    Raises:
        ValueError: if ``epochs`` is not positive.
        CheckpointError: if ``resume`` is not a perturbnn checkpoint or does not fit ``model``
            (the message lists the mismatched keys).
        OutDirError: (an ``OSError``) if ``out_dir`` cannot be created or written, or lacks
            room for the checkpoints; raised before the first training step.
        FloatingPointError: if the training loss becomes NaN or infinite; the message names
            the epoch and the step.
        TrainingInterrupted: (a ``KeyboardInterrupt``) on SIGINT or SIGTERM, after the current
            step; its ``epochs_completed`` and ``checkpoint`` say where a resume continues.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    log = logger if logger is not None else _LOGGER
    if not _distributed.is_main_process():  # under torchrun only rank 0 reports and writes
        log, out_dir, progress = _distributed.quiet_logger(log), None, False
    dev = _device_of(device)
    plain_config: dict[str, Any] = _plain(dict(config or {}))
    meta = dict(metadata or {})
    nominal = getattr(test_loader, "batch_size", None)
    smoothed = OriginalSmoothedAccuracy(
        smoothing=smoothing, nominal_batch_size=nominal if isinstance(nominal, int) else None
    )
    history: dict[str, list[Any]] = {key: [] for key in HISTORY_KEYS}
    test_correct: list[Optional[torch.Tensor]] = []  # this process's epochs, in memory only
    best_acc = -math.inf
    best_epoch = 0
    start = 0
    saved_threads: Optional[Mapping[str, Any]] = None
    threads_known = True

    if resume is not None:
        checkpoint = resume if isinstance(resume, Mapping) else load_checkpoint(resume, dev)
        start = restore_checkpoint(checkpoint, model, optimizer, scheduler)
        saved = checkpoint.get("history") or {}
        history = {key: list(saved.get(key, [])) for key in HISTORY_KEYS}
        if checkpoint.get("smoothed") is not None:
            smoothed.load_state_dict(checkpoint["smoothed"])
        if checkpoint.get("best_acc") is not None:
            best_acc = float(checkpoint["best_acc"])
            best_epoch = int(checkpoint.get("best_epoch") or 0)
        if checkpoint.get("rng"):
            _restore_rng(checkpoint["rng"], train_loader)
        saved_threads = checkpoint.get("threads")
        threads_known = saved_threads is not None or start == 0  # older releases: none
        log.info("resumed from epoch %d of %d", start, epochs)
    # The thread counts, by step, continued from the checkpoint (docs/performance.md).
    recorder = record_threads(saved_threads, complete=threads_known)

    parameters, mask_values = _count(model)
    directory = Path(out_dir) if out_dir is not None else None
    log_file = None
    if directory is not None:
        need = CHECKPOINT_COPIES * estimate_checkpoint_bytes(model, optimizer)
        check_out_dir(directory, need_bytes=need)
        log_file = (directory / "log.jsonl").open("w", encoding="utf-8")
        for i in range(len(history["epoch"])):
            record = {key: history[key][i] for key in HISTORY_KEYS}
            log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        # The starting state: what a resume continues from if stopped in the first epoch.
        save_checkpoint(
            directory / "checkpoint_last.pt",
            model=model,
            epoch=start,
            optimizer=optimizer,
            scheduler=scheduler,
            config=plain_config,
            history=history,
            smoothed=smoothed,
            best_acc=best_acc if math.isfinite(best_acc) else None,
            best_epoch=best_epoch if math.isfinite(best_acc) else None,
            rng=_rng_state(train_loader),
            threads=recorder.state_dict(),
        )

    stop = StopOnSignal(enabled=handle_signals, logger=log)
    outer_recorder = None
    completed = start  # epochs completed, and saved if there is an out_dir
    try:
        stop.install()
        outer_recorder = install_recorder(recorder)
        if start >= epochs:
            log.info(
                "the checkpoint has %d epoch%s already; nothing to train",
                start,
                "" if start == 1 else "s",
            )
        for index in range(start, epochs):
            number = index + 1
            began = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            _distributed.set_sampler_epoch(train_loader, index)  # DistributedSampler shuffle
            set_loader_epoch(train_loader, index)  # the augmentation's per-sample seeds
            train = train_one_epoch(
                model,
                train_loader,
                optimizer,
                device=dev,
                loss_fn=loss_fn,
                progress=progress,
                epoch=number,
                stop=stop,
            )
            test = evaluate(model, test_loader, device=dev, smoothed=smoothed, loss_fn=loss_fn)
            original = smoothed.end_epoch()
            test_correct.append(test.sample_correct)
            if scheduler is not None:
                scheduler.step()
            seconds = time.perf_counter() - began
            record = {
                "epoch": number,
                "train_loss": train.loss,
                "train_acc": train.accuracy,
                "test_loss": test.loss,
                "test_acc": test.accuracy,
                "original_acc": original,
                "lr": lr,
                "seconds": seconds,
            }
            for key in HISTORY_KEYS:
                history[key].append(record[key])
            improved = test.accuracy > best_acc
            if improved:
                best_acc, best_epoch = test.accuracy, number
            if directory is not None and log_file is not None:
                last = save_checkpoint(
                    directory / "checkpoint_last.pt",
                    model=model,
                    epoch=number,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    config=plain_config,
                    history=history,
                    smoothed=smoothed,
                    best_acc=best_acc,
                    best_epoch=best_epoch,
                    rng=_rng_state(train_loader),
                    threads=recorder.state_dict(),
                )
                if improved:
                    best = directory / "checkpoint_best.pt"
                    shutil.copyfile(last, best.with_name(best.name + ".tmp"))
                    os.replace(best.with_name(best.name + ".tmp"), best)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            completed = number
            log.info(
                "epoch %d/%d  train loss %.3f acc %.2f%%  test loss %.3f  acc %.2f%% (exact)  "
                "original-method %.2f%%  lr %.3g  %.1fs",
                number,
                epochs,
                train.loss,
                100 * train.accuracy,
                test.loss,
                100 * test.accuracy,
                100 * original,
                lr,
                seconds,
            )
            if stop.requested():  # the signal came during the test pass: the epoch is saved
                raise TrainingInterrupted(
                    f"{stop.signal_name} received at the end of epoch {number}",
                    signum=stop.signum or 0,
                )
    except TrainingInterrupted as exc:
        raise _stopped_by_signal(exc, completed, directory, log) from None
    except FloatingPointError:
        if directory is not None:
            log.error(
                "stopped on a non-finite loss; %s still holds epoch %d, the last good one",
                directory / "checkpoint_last.pt",
                completed,
            )
        raise
    finally:
        install_recorder(outer_recorder)
        stop.restore()
        if log_file is not None:
            log_file.close()

    if not history["epoch"]:
        raise ValueError(f"nothing trained and no history to summarize (epochs={epochs})")
    meta["threads"] = recorder.schedule(finished=True).to_dict()
    recorded = [t for t in test_correct if t is not None]
    complete = start == 0 and bool(recorded) and len(recorded) == len(test_correct)
    summary = _summarize(
        history,
        parameters=parameters,
        mask_values=mask_values,
        device=dev,
        config=plain_config,
        metadata=meta,
        out_dir=directory,
        test_correct=torch.stack(recorded) if complete else None,
    )
    if directory is not None:
        _atomic_write_text(
            json.dumps(summary.to_dict(), indent=2) + "\n", directory / "summary.json"
        )
    return summary
