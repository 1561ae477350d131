"""Training loop, evaluation and checkpoints: what the examples call.

The loop reports two test figures each epoch:

* the **exact** test accuracy (:class:`~perturbnn.metrics.ExactAccuracy`: correct / total over
  the whole test set), the number to report;
* the **original-method** figure (:class:`~perturbnn.metrics.OriginalSmoothedAccuracy`): the
  per-batch accuracy smoothed ``0.7 * previous + 0.3 * current`` and never reset, as the
  original PNN code printed it. It is kept only to show how far it is from the exact figure.

Low level: :func:`train_one_epoch`, :func:`evaluate`, :func:`make_optimizer`,
:func:`make_scheduler`, :func:`save_checkpoint` / :func:`load_checkpoint` /
:func:`restore_checkpoint`. Mid level: :func:`fit`, which writes ``log.jsonl``,
``summary.json``, ``checkpoint_last.pt`` and ``checkpoint_best.pt`` and can resume. High level:
:class:`RunConfig` (the seed's options and defaults), :func:`prepare_run` and
:func:`run_experiment`.

Source: the seed's ``main.py`` options, optimizers (``Adam``, ``RMSprop``, ``SGD``) and
learning-rate schedule (x0.2 at epochs 150, 250, 300, 350, 400 on CIFAR-10; 30, 60, 90 on
MNIST), as described in ``../shared/reference/pnn-reproduction-notes.txt``.

Example::

    >>> from perturbnn.repro.training import RunConfig, run_experiment
    >>> config = RunConfig.from_experiment(
    ...     "pnn-fanout64-shared", nfilters=8, nepochs=1, train_subset=256, test_subset=200,
    ...     data_dir="../shared/data", out_dir="runs/smoke")
    >>> summary = run_experiment(config)
    >>> f"{summary.best_acc:.2%} exact vs {summary.original_best_acc:.2%} original-method"
    '...% exact vs ...% original-method'
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, MultiStepLR
from torch.utils.data import DataLoader
from torch.utils.hooks import RemovableHandle

from perturbnn._validation import check_choice
from perturbnn._version import __version__
from perturbnn.activations import ACTIVATIONS
from perturbnn.functional import IMPLS
from perturbnn.layers import NOISE_TYPES
from perturbnn.metrics import ExactAccuracy, OriginalSmoothedAccuracy
from perturbnn.models import POOL_TYPES
from perturbnn.models._registry import check_model_name
from perturbnn.repro import distributed as _distributed
from perturbnn.repro.data import dataset_info
from perturbnn.repro.experiments import Experiment, get_experiment
from perturbnn.repro.mismatch import config_mismatch, format_mismatch, state_mismatch
from perturbnn.repro.outdir import (
    CHECKPOINT_COPIES,
    OutDirError,
    check_out_dir,
    estimate_checkpoint_bytes,
)
from perturbnn.repro.signals import StopOnSignal, TrainingInterrupted

__all__ = [
    "CHECKPOINT_FORMAT",
    "HISTORY_KEYS",
    "LR_DECAY",
    "LR_MILESTONES",
    "MACHINE_FIELDS",
    "MODEL_OPTIONS",
    "OPTIMIZERS",
    "RESUME_FIELDS",
    "CheckpointError",
    "EvalResult",
    "FitSummary",
    "OutDirError",
    "PreparedRun",
    "RunConfig",
    "TrainResult",
    "TrainingInterrupted",
    "check_out_dir",
    "default_out_dir",
    "evaluate",
    "fit",
    "load_checkpoint",
    "log_to_stdout",
    "make_optimizer",
    "make_scheduler",
    "prepare_run",
    "resolve_device",
    "restore_checkpoint",
    "run_experiment",
    "save_checkpoint",
    "set_seed",
    "train_one_epoch",
]

_LOGGER = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
DeviceLike = Union[str, torch.device]
LossFn = Callable[[Tensor, Tensor], Tensor]
_T = TypeVar("_T")

#: Optimizer names accepted by :func:`make_optimizer` (the seed's ``--optim-method``).
OPTIMIZERS: tuple[str, ...] = ("Adam", "RMSprop", "SGD")

#: Epochs (0-based index of the first epoch at the lower rate) at which the seed multiplied the
#: learning rate by :data:`LR_DECAY`, per training data set.
LR_MILESTONES: Mapping[str, tuple[int, ...]] = {
    "CIFAR10": (150, 250, 300, 350, 400),
    "MNIST": (30, 60, 90),
}

#: The seed's learning-rate decay factor.
LR_DECAY = 0.2

#: Value of the ``"format"`` entry that marks a perturbnn checkpoint.
CHECKPOINT_FORMAT = "perturbnn-checkpoint"
_CHECKPOINT_VERSION = 1

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

#: :class:`RunConfig` fields passed to :func:`perturbnn.build_model` (with ``in_channels``,
#: ``input_size`` and ``nclasses`` from the data set).
MODEL_OPTIONS: tuple[str, ...] = (
    "nfilters",
    "nmasks",
    "level",
    "filter_size",
    "first_filter_size",
    "scale_noise",
    "act",
    "use_act",
    "pool_type",
    "dropout",
    "unique_masks",
    "train_masks",
    "noise_type",
    "mix_maps",
)


class CheckpointError(ValueError):
    """A file is not a readable perturbnn checkpoint (or one of a newer format)."""


# --------------------------------------------------------------------------------------------
# Seeds, devices, optimizers, schedules
# --------------------------------------------------------------------------------------------


def log_to_stdout(level: int = logging.INFO) -> None:
    """Print the ``perturbnn`` loggers' lines (epoch lines, debug values) to stdout, bare.

    For scripts: adds one plain ``StreamHandler`` to the ``perturbnn`` logger (once per
    process, however often it is called) and sets its level.

    Args:
        level (int): the logging level of the ``perturbnn`` logger. Default: ``logging.INFO``.
    """
    package_logger = logging.getLogger("perturbnn")
    if not any(getattr(h, "_perturbnn_stdout", False) for h in package_logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._perturbnn_stdout = True  # type: ignore[attr-defined]
        package_logger.addHandler(handler)
    package_logger.setLevel(level)


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, torch (CPU and all CUDA devices) and NumPy if installed.

    Args:
        seed (int): a non-negative integer (the seed's ``--manual-seed``).

    Raises:
        TypeError: if ``seed`` is not an int.
        ValueError: if ``seed`` is negative.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        return
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global state on purpose


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device`` into a device.

    Args:
        device (str or torch.device): ``"auto"`` picks CUDA when available, else the CPU.

    Returns:
        torch.device: the device.

    Raises:
        ValueError: if the name is not a device, or CUDA is requested but not available.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available")
    return resolved


def _canonical_optimizer(name: str) -> str:
    lookup = {n.lower(): n for n in OPTIMIZERS}
    try:
        return lookup[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}"
        ) from None


def make_optimizer(
    name: str,
    params: Union[nn.Module, Iterable[nn.Parameter]],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
) -> Optimizer:
    """Build one of the seed's optimizers over the trainable parameters.

    ``Adam`` uses ``betas`` and ``weight_decay``; ``RMSprop`` uses ``momentum`` and
    ``weight_decay``; ``SGD`` uses ``momentum``, ``weight_decay`` and Nesterov momentum. Only
    parameters with ``requires_grad`` are optimized, so fixed noise masks (buffers) and frozen
    weights are left alone; trained masks (``train_masks=True``) are parameters and included.

    Args:
        name (str): ``"Adam"``, ``"RMSprop"`` or ``"SGD"`` (case-insensitive).
        params (nn.Module or Iterable[nn.Parameter]): a model, or its parameters.
        lr (float): learning rate, positive.
        momentum (float): momentum for RMSprop and SGD. Default: ``0.9``.
        weight_decay (float): L2 penalty, non-negative. Default: ``1e-4``.
        betas (tuple[float, float]): Adam's betas. Default: ``(0.9, 0.999)``.

    Returns:
        torch.optim.Optimizer: the optimizer.

    Raises:
        ValueError: on an unknown name (the message lists the valid ones), a non-positive
            ``lr``, a negative ``weight_decay`` or ``momentum``, or no trainable parameter.

    Example::

        >>> opt = make_optimizer("sgd", nn.Linear(3, 2), lr=0.1)
        >>> type(opt).__name__, opt.defaults["nesterov"]
        ('SGD', True)
    """
    canonical = _canonical_optimizer(name)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    if not (math.isfinite(momentum) and momentum >= 0):
        raise ValueError(f"momentum must be non-negative, got {momentum}")
    source = params.parameters() if isinstance(params, nn.Module) else params
    trainable = [p for p in source if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameter (none has requires_grad=True), got 0")
    if canonical == "Adam":
        return torch.optim.Adam(trainable, lr=lr, betas=betas, weight_decay=weight_decay)
    if canonical == "RMSprop":
        return torch.optim.RMSprop(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(
        trainable, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
    )


def make_scheduler(
    optimizer: Optimizer,
    dataset: str,
    *,
    milestones: Optional[Sequence[int]] = None,
    gamma: float = LR_DECAY,
) -> MultiStepLR:
    """The seed's step schedule: multiply the learning rate by 0.2 at fixed epochs.

    Call ``scheduler.step()`` once at the end of every epoch. The rate used in 0-based epoch
    ``e`` is ``lr * 0.2 ** (number of milestones <= e)``: on CIFAR-10 epoch 150 is the first
    one at ``0.2 * lr``.

    Args:
        optimizer (Optimizer): the optimizer.
        dataset (str): the training data set, a key of :data:`LR_MILESTONES`
            (``"CIFAR10"`` or ``"MNIST"``). Ignored if ``milestones`` is given.
        milestones (Sequence[int], optional): epochs to decay at, instead of the seed's.
        gamma (float): decay factor. Default: ``0.2``.

    Returns:
        torch.optim.lr_scheduler.MultiStepLR: the scheduler.

    Raises:
        ValueError: if ``dataset`` has no known schedule and no ``milestones`` are given.

    Example::

        >>> opt = make_optimizer("Adam", nn.Linear(3, 2), lr=1.0)
        >>> sched = make_scheduler(opt, "CIFAR10")
        >>> for _ in range(150):
        ...     sched.step()
        >>> opt.param_groups[0]["lr"]
        0.2
    """
    if milestones is None:
        try:
            milestones = LR_MILESTONES[dataset]
        except KeyError:
            raise ValueError(
                f"no learning-rate schedule for data set {dataset!r}; known: "
                f"{', '.join(LR_MILESTONES)} (or pass milestones=...)"
            ) from None
    return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


# --------------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_one_epoch`.

    Attributes:
        loss (float): training loss averaged per sample (not per batch).
        accuracy (float): exact training accuracy, a fraction (of the model in training mode,
            while it was learning).
        steps (int): optimizer steps taken.
        samples (int): training samples seen.
    """

    loss: float
    accuracy: float
    steps: int
    samples: int


@dataclass(frozen=True)
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        loss (float): loss averaged per sample.
        accuracy (float): exact accuracy ``correct / total``, a fraction.
        correct (int): correctly classified samples.
        total (int): samples evaluated.
    """

    loss: float
    accuracy: float
    correct: int
    total: int


@functools.lru_cache(maxsize=1)
def _tqdm() -> Optional[Callable[..., Any]]:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        _LOGGER.warning(
            "progress bars need tqdm (pip install 'perturbnn[examples]'); continuing without"
        )
        return None
    return tqdm  # type: ignore[no-any-return]


def _progress(iterable: Iterable[_T], *, enabled: bool, desc: str) -> Iterable[_T]:
    if not enabled:
        return iterable
    tqdm = _tqdm()
    if tqdm is None:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)  # type: ignore[no-any-return]


def _batches(
    loader: Iterable[Any], device: torch.device, *, progress: bool, desc: str
) -> Iterator[tuple[Tensor, Tensor, Any]]:
    bar = _progress(loader, enabled=progress, desc=desc)
    for batch in bar:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                f"the loader must yield (inputs, targets) pairs, got {type(batch).__name__}"
            )
        inputs = batch[0].to(device, non_blocking=True)
        targets = batch[1].to(device, non_blocking=True)
        yield inputs, targets, bar


def _expected_total(loader: Iterable[Any]) -> Optional[int]:
    """Number of samples a full pass over a standard DataLoader must yield, if known."""
    if not isinstance(loader, DataLoader) or loader.drop_last:
        return None
    try:
        return len(loader.sampler)  # type: ignore[arg-type]
    except TypeError:
        return None


def _device_of(device: DeviceLike) -> torch.device:
    return resolve_device(device) if isinstance(device, str) else device


#: Steps between two checks of the training loss on an accelerator (each check synchronizes).
_FINITE_CHECK_EVERY = 50


def _check_finite(first_bad: Tensor, bad_value: Tensor, *, epoch: int, at_step: int) -> None:
    """Raise ``FloatingPointError`` if ``first_bad`` (a 1-based step, 0: none) is set."""
    step = int(first_bad.item())
    if step == 0:
        return
    late = f" (detected at step {at_step})" if at_step != step else ""
    raise FloatingPointError(
        f"training loss is {float(bad_value.item())} at epoch {epoch}, step {step}{late}: "
        "the run diverged (try a lower learning rate)"
    )


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: Optimizer,
    *,
    device: DeviceLike,
    loss_fn: Optional[LossFn] = None,
    progress: bool = False,
    epoch: int = 0,
    stop: Optional[StopOnSignal] = None,
) -> TrainResult:
    """Train ``model`` for one pass over ``loader``.

    The loss of every step is checked: a NaN or infinite loss stops the epoch with a
    ``FloatingPointError`` naming the epoch and the step. On the CPU the check runs at every
    step, before ``backward()``, so the model keeps its last good weights; on an accelerator it
    runs every 50 steps (and at the end) to avoid a synchronization per step, and the message
    still names the first bad step.

    Args:
        model (nn.Module): maps ``Tensor[batch_size, channels, height, width]`` to logits
            ``Tensor[batch_size, nclasses]``; it must already be on ``device``.
        loader (Iterable): yields ``(inputs, targets)`` with ``targets`` a
            ``Tensor[batch_size]`` of class indices.
        optimizer (Optimizer): steps once per batch.
        device (str or torch.device): where the batches go.
        loss_fn (callable, optional): ``loss_fn(logits, targets)`` returning the *mean* loss
            over the batch. Default: ``nn.CrossEntropyLoss()``.
        progress (bool): show a tqdm bar (needs tqdm). Default: ``False``.
        epoch (int): 1-based epoch number, for the bar and messages only.
        stop (StopOnSignal, optional): polled after every step; once it reports a signal,
            the epoch ends with :class:`TrainingInterrupted` (the model has then seen part of
            the epoch only).

    Returns:
        TrainResult: per-sample mean loss, exact training accuracy, steps and samples.

    Raises:
        ValueError: if the loader yields no batch or not ``(inputs, targets)`` pairs.
        FloatingPointError: if a step's loss is NaN or infinite (the run diverged); the
            message names the epoch and the step.
        TrainingInterrupted: if ``stop`` reports a signal.
    """
    dev = _device_of(device)
    criterion: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    model.train()
    accuracy = ExactAccuracy()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    steps = 0
    check_every = 1 if dev.type == "cpu" else _FINITE_CHECK_EVERY
    synced = _distributed.get_world_size() > 1 and torch.distributed.is_initialized()
    first_bad = torch.zeros((), dtype=torch.int64, device=dev)  # 1-based step; 0: none yet
    bad_value = torch.zeros((), dtype=torch.float32, device=dev)
    for inputs, targets, bar in _batches(
        loader, dev, progress=progress, desc=f"epoch {epoch} train"
    ):
        optimizer.zero_grad(set_to_none=True)
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        newly_bad = (first_bad == 0) & ~torch.isfinite(loss.detach())
        first_bad = torch.where(newly_bad, steps + 1, first_bad)
        bad_value = torch.where(newly_bad, loss.detach().float(), bad_value)
        if synced:  # under DDP every rank must stop at the same step, before backward()
            local_stop = stop is not None and stop.requested()
            any_bad, any_stop = _distributed.any_rank(bool(first_bad.item()), local_stop)
            if any_bad and not first_bad.item():
                raise FloatingPointError(
                    f"training loss is not finite on another rank at epoch {epoch}, "
                    f"step {steps + 1}"
                )
            if any_stop:
                raise TrainingInterrupted(
                    f"a stop signal reached a rank in epoch {epoch} after step {steps}",
                    signum=(stop.signum if stop is not None else None) or signal.SIGTERM,
                )
        if synced or (steps + 1) % check_every == 0:
            _check_finite(first_bad, bad_value, epoch=epoch, at_step=steps + 1)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        batch_size = targets.shape[0]
        loss_sum += loss.detach().to(torch.float64) * batch_size
        accuracy.update(outputs.detach(), targets)
        steps += 1
        if progress and hasattr(bar, "set_postfix") and steps % 20 == 0:
            bar.set_postfix(
                loss=f"{loss_sum.item() / accuracy.total:.3f}", acc=f"{accuracy.compute():.2%}"
            )
        if stop is not None and stop.requested():
            raise TrainingInterrupted(
                f"{stop.signal_name} received in epoch {epoch} after step {steps}",
                signum=stop.signum or 0,
            )
    if steps == 0:
        raise ValueError(f"the training loader yielded no batch in epoch {epoch}")
    _check_finite(first_bad, bad_value, epoch=epoch, at_step=steps)
    # Under DDP: loss and counts summed over the ranks (samples include the sampler's padding).
    loss_sum = _distributed.reduce_train_totals(model, loss_sum, accuracy)
    mean_loss = loss_sum.item() / accuracy.total
    if not math.isfinite(mean_loss):
        raise FloatingPointError(
            f"training loss is {mean_loss} in epoch {epoch}: the run diverged "
            "(try a lower learning rate)"
        )
    return TrainResult(
        loss=mean_loss, accuracy=accuracy.compute(), steps=steps, samples=accuracy.total
    )


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: DeviceLike,
    smoothed: Optional[OriginalSmoothedAccuracy] = None,
    loss_fn: Optional[LossFn] = None,
    progress: bool = False,
) -> EvalResult:
    """Exact loss and accuracy of ``model`` over ``loader``, in eval mode without gradients.

    The model's training mode is restored afterwards. Under ``torch.distributed``, when
    ``loader`` draws from a :class:`~perturbnn.repro.distributed.ShardSampler`, every rank evaluates
    its shard and the counts are summed over the ranks
    (:func:`~perturbnn.repro.distributed.evaluate_sharded`): the result is the whole test set's.

    Args:
        model (nn.Module): maps ``Tensor[batch_size, channels, height, width]`` to logits
            ``Tensor[batch_size, nclasses]``; it must already be on ``device``.
        loader (Iterable): yields ``(inputs, targets)``; every sample counts once.
        device (str or torch.device): where the batches go.
        smoothed (OriginalSmoothedAccuracy, optional): if given, updated with every batch, as
            the original code did. Call its ``end_epoch()`` afterwards to record the figure.
        loss_fn (callable, optional): ``loss_fn(logits, targets)`` returning the *mean* loss
            over the batch. Default: ``nn.CrossEntropyLoss()``.
        progress (bool): show a tqdm bar (needs tqdm). Default: ``False``.

    Returns:
        EvalResult: per-sample mean loss, exact accuracy, ``correct`` and ``total``.

    Raises:
        ValueError: if the loader yields no batch, or a standard ``DataLoader`` yields a
            number of samples different from its sampler's length, or (under a process
            group) the loader draws from a ``DistributedSampler``, which repeats samples.
    """
    dev = _device_of(device)
    if _distributed.uses_sharded_evaluation(loader):
        return _distributed.evaluate_sharded(
            model, loader, device=dev, smoothed=smoothed, loss_fn=loss_fn, progress=progress
        )
    criterion: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    accuracy = ExactAccuracy()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    try:
        with torch.no_grad():
            for inputs, targets, _ in _batches(loader, dev, progress=progress, desc="test"):
                outputs = model(inputs)
                loss_sum += criterion(outputs, targets).to(torch.float64) * targets.shape[0]
                accuracy.update(outputs, targets)
                if smoothed is not None:
                    smoothed.update(outputs, targets)
    finally:
        model.train(was_training)
    if accuracy.total == 0:
        raise ValueError("the evaluation loader yielded no sample")
    value = accuracy.compute(expected_total=_expected_total(loader))
    return EvalResult(
        loss=loss_sum.item() / accuracy.total,
        accuracy=value,
        correct=accuracy.correct,
        total=accuracy.total,
    )


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _plain(obj: Any) -> Any:
    """``obj`` as plain JSON types (dicts, lists, str, numbers, bools, None)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``<path>.tmp``, fsync, rename: ``path`` is always a whole file.

    A kill at any moment leaves the previous ``path`` readable (and at worst a stale ``.tmp``,
    overwritten by the next save). Saving through a Python file object turns a full disk into
    ``OSError: [Errno 28] No space left on device`` rather than torch's writer error.

    Raises:
        OutDirError: (an ``OSError``) if the file cannot be written; the temporary file is
            removed and the message says whether the previous ``path`` is unchanged.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        kept = f"; the previous {path.name} is unchanged" if path.is_file() else ""
        raise OutDirError(
            f"could not write checkpoint {str(path)!r} ({type(exc).__name__}: {exc}){kept}",
            path.parent,
        ) from exc


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _rng_state(train_loader: Optional[Iterable[Any]] = None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    generator = getattr(train_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        state["train_loader"] = generator.get_state()
    return state


def _restore_rng(state: Mapping[str, Any], train_loader: Optional[Iterable[Any]] = None) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    generator = getattr(train_loader, "generator", None)
    if "train_loader" in state and isinstance(generator, torch.Generator):
        generator.set_state(state["train_loader"].cpu())


def save_checkpoint(
    path: PathLike,
    *,
    model: nn.Module,
    epoch: int,
    optimizer: Optional[Optimizer] = None,
    scheduler: Optional[LRScheduler] = None,
    config: Optional[Mapping[str, Any]] = None,
    history: Optional[Mapping[str, Sequence[Any]]] = None,
    smoothed: Optional[OriginalSmoothedAccuracy] = None,
    best_acc: Optional[float] = None,
    best_epoch: Optional[int] = None,
    rng: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a checkpoint that loads with ``torch.load(path, weights_only=True)``.

    The file is written to ``<path>.tmp`` and renamed, so an interrupted save never leaves a
    truncated checkpoint behind. Everything stored is a tensor or a plain Python value.

    Args:
        path (str or os.PathLike): file to write.
        model (nn.Module): its ``state_dict()`` is saved (noise masks included); a DDP
            wrapper is removed first, so the keys have no ``module.`` prefix.
        epoch (int): number of epochs completed (1-based number of the last one).
        optimizer (Optimizer, optional): its ``state_dict()`` is saved.
        scheduler (LRScheduler, optional): its ``state_dict()`` is saved.
        config (Mapping, optional): the run's configuration, saved as plain JSON types.
        history (Mapping[str, Sequence], optional): per-epoch metric lists.
        smoothed (OriginalSmoothedAccuracy, optional): its state (the figure is never reset
            between epochs, so a resumed run needs it).
        best_acc (float, optional): best exact test accuracy so far.
        best_epoch (int, optional): the epoch of ``best_acc``.
        rng (Mapping, optional): random number generator states (see :func:`fit`).

    Returns:
        Path: ``path``.
    """
    target = Path(path)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": _CHECKPOINT_VERSION,
        "perturbnn_version": __version__,
        "torch_version": str(torch.__version__),
        "epoch": int(epoch),
        "model": _distributed.unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "config": _plain(dict(config or {})),
        "history": _plain({k: list(v) for k, v in (history or {}).items()}),
        "smoothed": smoothed.state_dict() if smoothed is not None else None,
        "best_acc": best_acc,
        "best_epoch": best_epoch,
        "rng": dict(rng) if rng is not None else None,
    }
    _atomic_save(checkpoint, target)
    return target


def _load_failure_reason(exc: BaseException) -> str:
    """The useful part of a ``torch.load`` error, on one short line."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
        text = text.split(" Please use", 1)[0].split(" Check the documentation", 1)[0].strip()
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_checkpoint(path: PathLike, map_location: DeviceLike = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` or :func:`fit`, safely.

    Uses ``torch.load(..., weights_only=True)``: no arbitrary code runs while loading.

    Args:
        path (str or os.PathLike): the file.
        map_location (str or torch.device): where tensors go. Default: ``"cpu"``.

    Returns:
        dict: ``format``, ``epoch``, ``model``, ``optimizer``, ``scheduler``, ``config``,
        ``history``, ``smoothed``, ``best_acc``, ``best_epoch``, ``rng`` and version entries.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: (a ``ValueError``) if the file is not a perturbnn checkpoint, cannot
            be read with ``weights_only=True``, or has a newer format; the message names the
            file.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {str(source)!r} does not exist")
    try:
        checkpoint = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = _load_failure_reason(exc)
        raise CheckpointError(
            f"{str(source)!r} is not a perturbnn checkpoint: torch.load(weights_only=True) "
            f"failed ({reason})"
        ) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = (
            f"a dict with keys {sorted(map(str, checkpoint))[:6]}"
            if isinstance(checkpoint, dict)
            else type(checkpoint).__name__
        )
        raise CheckpointError(
            f"{str(source)!r} is not a perturbnn checkpoint (no 'format': "
            f"{CHECKPOINT_FORMAT!r} entry; found {found})"
        )
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > _CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{str(source)!r} has checkpoint format_version {version!r}; this perturbnn "
            f"{__version__} reads versions up to {_CHECKPOINT_VERSION}"
        )
    return checkpoint


def restore_checkpoint(
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    optimizer: Optional[Optimizer] = None,
    scheduler: Optional[LRScheduler] = None,
    *,
    strict: bool = True,
) -> int:
    """Load the model, optimizer and scheduler states of a checkpoint in place.

    Args:
        checkpoint (Mapping): from :func:`load_checkpoint`.
        model (nn.Module): must have the checkpoint's architecture; DDP-wrapped or not (a
            ``module.`` prefix in the saved keys is ignored).
        optimizer (Optimizer, optional): restored if given and saved.
        scheduler (LRScheduler, optional): restored if given and saved.
        strict (bool): passed to ``model.load_state_dict``. Default: ``True``.

    Returns:
        int: the number of epochs the checkpoint had completed.

    Raises:
        CheckpointError: (a ``ValueError``) if the checkpoint was made for another model
            (other ``nmasks``, another architecture) or optimizer; the message lists the
            mismatched keys and shapes (the model is left untouched when its keys differ).
        ValueError: if an optimizer or scheduler is given but the checkpoint has no state for it.
    """
    state = _distributed.plain_state_dict(checkpoint["model"])
    target = _distributed.unwrap_model(model)
    problems = state_mismatch(target.state_dict(), state)
    if not strict:
        problems = [line for line in problems if ": shape " in line]
    if problems:
        raise CheckpointError(
            f"the checkpoint does not fit this model, {len(problems)} mismatched key(s): "
            f"{format_mismatch(problems)}"
        )
    target.load_state_dict(state, strict=strict)
    if optimizer is not None:
        if checkpoint.get("optimizer") is None:
            raise ValueError("the checkpoint holds no optimizer state, got None")
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"the checkpoint's optimizer state does not fit this optimizer ({exc})"
            ) from exc
    if scheduler is not None:
        if checkpoint.get("scheduler") is None:
            raise ValueError("the checkpoint holds no scheduler state, got None")
        scheduler.load_state_dict(checkpoint["scheduler"])
    return int(checkpoint["epoch"])


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


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
        FitSummary: best and last exact accuracy, the original-method figure, and the history.

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
    best_acc = -math.inf
    best_epoch = 0
    start = 0

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
        log.info("resumed from epoch %d of %d", start, epochs)

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
        )

    stop = StopOnSignal(enabled=handle_signals, logger=log)
    completed = start  # epochs completed, and saved if there is an out_dir
    try:
        stop.install()
        if start >= epochs:
            log.info("the checkpoint has %d epochs already; nothing to train", start)
        for index in range(start, epochs):
            number = index + 1
            began = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            _distributed.set_sampler_epoch(train_loader, index)  # DistributedSampler shuffle
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
        stop.restore()
        if log_file is not None:
            log_file.close()

    if not history["epoch"]:
        raise ValueError(f"nothing trained and no history to summarize (epochs={epochs})")
    summary = _summarize(
        history,
        parameters=parameters,
        mask_values=mask_values,
        device=dev,
        config=plain_config,
        metadata=meta,
        out_dir=directory,
    )
    if directory is not None:
        _atomic_write_text(
            json.dumps(summary.to_dict(), indent=2) + "\n", directory / "summary.json"
        )
    return summary


# --------------------------------------------------------------------------------------------
# High level: the seed's options, one call to build and train
# --------------------------------------------------------------------------------------------


def _default_data_dir() -> str:
    return os.environ.get("PERTURBNN_DATA_DIR", "./data")


@dataclass(frozen=True)
class RunConfig:
    """All options of a run, with the seed's ``main.py`` defaults.

    Field names are the seed's flags with dashes as underscores (``--net-type`` is
    ``net_type``, ``--optim-method`` is ``optim_method``). :meth:`from_experiment` starts from
    a preset of :mod:`perturbnn.repro.experiments`.

    Attributes:
        experiment: name of the preset applied, if any (recorded in the summary).
        net_type, dataset_train, dataset_test: model and data set names.
        data_dir: where the data sets are (default: ``$PERTURBNN_DATA_DIR`` or ``./data``;
            in this repository, ``../shared/data``).
        nfilters, nmasks, level, filter_size, first_filter_size, scale_noise, act, use_act,
            pool_type, dropout, unique_masks, train_masks, noise_type, mix_maps: model options
            (see :func:`perturbnn.build_model`).
        impl: how perturbation layers compute (``"auto"``, ``"eager"``, ``"compiled"``,
            ``"grouped"``; the same results, see ``docs/performance.md``). Not part of
            :data:`RESUME_FIELDS`: a run may resume with another ``impl``.
        batch_size, learning_rate, nepochs, optim_method, weight_decay, momentum,
            manual_seed: training options.
        train_subset, test_subset: use a deterministic, class-balanced subset of N samples
            (``None``: all).
        out_dir: where to write logs and checkpoints (``None``: nothing is written).
        resume: checkpoint to continue from.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_workers: DataLoader worker processes.
        progress: show tqdm bars.
        debug: log input, noise and output values of every noise layer
            (:func:`perturbnn.repro.debug.attach_debug_hooks`).
        sync_bn: under ``torchrun``, convert BatchNorm to SyncBatchNorm (ignored in a
            single-process run). ``batch_size`` is per process (see
            :mod:`perturbnn.repro.distributed`).

    Raises:
        ValueError: on an invalid value; the message names the option and the value.
    """

    experiment: Optional[str] = None
    net_type: str = "resnet18"
    dataset_train: str = "CIFAR10"
    dataset_test: str = "CIFAR10"
    data_dir: str = field(default_factory=_default_data_dir)
    nfilters: int = 64
    nmasks: int = 1
    level: float = 0.5
    filter_size: int = 0
    first_filter_size: Optional[int] = None
    scale_noise: float = 1.0
    act: str = "relu"
    use_act: bool = False
    pool_type: str = "max"
    dropout: float = 0.5
    unique_masks: bool = True
    train_masks: bool = False
    noise_type: str = "uniform"
    mix_maps: bool = False
    impl: str = "auto"
    batch_size: int = 64
    learning_rate: float = 1e-4
    nepochs: int = 150
    optim_method: str = "Adam"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    manual_seed: int = 1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    out_dir: Optional[str] = None
    resume: Optional[str] = None
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    debug: bool = False
    sync_bn: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "nepochs", "nfilters", "nmasks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        for name in ("num_workers", "manual_seed", "filter_size", "first_filter_size"):
            value = getattr(self, name)
            if name == "first_filter_size" and value is None:
                continue  # the builder's default: 0, or 7 for noiseresnet18
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("weight_decay", "momentum", "level", "scale_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        check_choice("impl", self.impl, IMPLS)
        # Names are checked here, before any data is looked for or a line is printed.
        check_model_name(self.net_type)
        check_choice("act", self.act, ACTIVATIONS)
        check_choice("noise_type", self.noise_type, NOISE_TYPES)
        check_choice("pool_type", self.pool_type, POOL_TYPES)
        dataset_info(self.dataset_train)
        dataset_info(self.dataset_test)
        object.__setattr__(self, "optim_method", _canonical_optimizer(self.optim_method))
        if self.experiment is not None:
            get_experiment(self.experiment)
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )

    @classmethod
    def from_experiment(cls, name: str, **overrides: Any) -> RunConfig:
        """The seed's defaults, then preset ``name``, then ``overrides``.

        Args:
            name (str): a name from :func:`perturbnn.repro.experiments.list_experiments`.
            **overrides: :class:`RunConfig` fields to change (e.g. ``nfilters=8``).

        Returns:
            RunConfig: the configuration, with ``experiment=name``.

        Raises:
            ValueError: if ``name`` is unknown or a value is invalid.
            TypeError: if an override is not a field.
        """
        preset: Experiment = get_experiment(name)
        return cls.from_dict({**preset.overrides(), "experiment": name, **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping of field names (e.g. a checkpoint's ``config``).

        Raises:
            TypeError: on a key that is not a field (the message lists them).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown RunConfig field(s) {unknown}; valid: {sorted(names)}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict."""
        return dataclasses.asdict(self)

    def model_config(self, *, in_channels: int, input_size: int, nclasses: int) -> dict[str, Any]:
        """Keyword options for :func:`perturbnn.build_model` (:data:`MODEL_OPTIONS` plus shape).

        Args:
            in_channels (int): image channels of the data set.
            input_size (int): image side, pixels.
            nclasses (int): number of classes.

        Returns:
            dict[str, Any]: the options.
        """
        # ``None`` leaves an option to the builder (first_filter_size: 0, noiseresnet18: 7).
        options = {
            name: getattr(self, name) for name in MODEL_OPTIONS if getattr(self, name) is not None
        }
        options.update(
            in_channels=in_channels, input_size=input_size, nclasses=nclasses, impl=self.impl
        )
        return options


def default_out_dir(config: RunConfig, root: PathLike = "runs") -> Path:
    """``<root>/<experiment or net_type>-<YYYYmmdd-HHMMSS>``.

    Returns:
        Path: the directory (not created).
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.experiment or config.net_type}-{stamp}"


@dataclass
class PreparedRun:
    """Everything :func:`prepare_run` built, ready for :meth:`fit`.

    Attributes:
        config (RunConfig): the configuration.
        model (nn.Module): the model, on ``device``.
        optimizer (Optimizer), scheduler (LRScheduler): from the seed's choices.
        train_loader, test_loader (DataLoader): the data.
        device (torch.device): where it trains.
        experiment (Experiment, optional): the preset, if one was applied.
        checkpoint (dict, optional): the loaded ``resume`` checkpoint.
        parameters (int): trainable parameters, fixed noise masks excluded.
        mask_values (int): values held in noise masks.
        debug_handles (list[RemovableHandle]): hooks from ``debug=True``.
        distributed (DistributedContext, optional): rank, world size and backend when
            started by ``torchrun`` (then ``model`` is DDP-wrapped and the loaders are
            sharded); ``None`` in a single-process run.
    """

    config: RunConfig
    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    train_loader: DataLoader[Any]
    test_loader: DataLoader[Any]
    device: torch.device
    experiment: Optional[Experiment]
    checkpoint: Optional[dict[str, Any]]
    parameters: int
    mask_values: int
    debug_handles: list[RemovableHandle] = field(default_factory=list)
    distributed: Optional[_distributed.DistributedContext] = None

    def metadata(self) -> dict[str, Any]:
        """Entries for ``summary.json``: experiment, its seed command and seed accuracy."""
        meta: dict[str, Any] = {"experiment": self.config.experiment}
        if self.experiment is not None:
            meta["seed_command"] = self.experiment.seed_command
            meta["seed_accuracy"] = self.experiment.seed_accuracy
        meta["train_samples"] = _sized(self.train_loader)
        meta["test_samples"] = _sized(self.test_loader)
        meta["world_size"] = self.distributed.world_size if self.distributed else 1
        return meta

    def fit(self, *, logger: Optional[logging.Logger] = None) -> FitSummary:
        """Run :func:`fit` with this run's objects and configuration."""
        return fit(
            self.model,
            self.train_loader,
            self.test_loader,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            epochs=self.config.nepochs,
            device=self.device,
            out_dir=self.config.out_dir,
            config=self.config.to_dict(),
            resume=self.checkpoint,
            progress=self.config.progress,
            metadata=self.metadata(),
            logger=logger,
        )


def _sized(loader: DataLoader[Any]) -> Optional[int]:
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


#: :class:`RunConfig` fields a resumed run must share with its checkpoint: the model, the
#: shape of its data and the optimizer.
#: Fields of :class:`RunConfig` that describe the machine or the way a run executes, not the
#: experiment: a run resumed or compared with other values for these is still the same run.
MACHINE_FIELDS: tuple[str, ...] = (
    "data_dir",
    "out_dir",
    "resume",
    "device",
    "num_workers",
    "progress",
    "debug",
    "sync_bn",
    "impl",
)

RESUME_FIELDS: tuple[str, ...] = ("net_type", "dataset_train", *MODEL_OPTIONS, "optim_method")


def _check_resume(checkpoint: Mapping[str, Any], config: RunConfig, model: nn.Module) -> None:
    """Refuse a checkpoint of another configuration, listing the options and keys that differ.

    Raises:
        CheckpointError: if an option of :data:`RESUME_FIELDS` differs from the checkpoint's
            ``config`` or the model's state dict does not match the checkpoint's.
    """
    saved = checkpoint.get("config") or {}
    options = config_mismatch(saved, _plain(config.to_dict()), RESUME_FIELDS)
    state = _distributed.plain_state_dict(checkpoint["model"])
    keys = state_mismatch(model.state_dict(), state)
    if not options and not keys:
        return
    parts = []
    if options:
        parts.append(f"Options that differ ({len(options)}): {format_mismatch(options)}")
    if keys:
        parts.append(f"Mismatched keys ({len(keys)}): {format_mismatch(keys)}")
    raise CheckpointError(
        f"cannot resume from {config.resume!r}: it was saved by a run with another "
        f"configuration. {'. '.join(parts)}. Resume with the checkpoint's options, or start a "
        "new run without --resume"
    )


def prepare_run(config: RunConfig) -> PreparedRun:
    """Build data loaders, model, optimizer and scheduler for ``config``, without training.

    Order: seed the generators (``manual_seed``), load the resume checkpoint if any, build the
    loaders (:func:`perturbnn.repro.data.make_loaders`), then the model (:func:`perturbnn.build_model`
    with ``in_channels``, ``input_size`` and ``nclasses`` of the training set) on the device,
    the optimizer over its trainable parameters and the seed's schedule.

    Started by ``torchrun`` with two or more processes, it first joins the process group
    (:func:`perturbnn.repro.distributed.init_distributed`: ``cuda:LOCAL_RANK`` with NCCL, or the CPU
    with gloo), shards the loaders (:func:`perturbnn.repro.distributed.distribute_loaders`) and
    wraps the model in DDP after checking that the noise masks match on every rank
    (:func:`perturbnn.repro.distributed.wrap_model`, with ``SyncBatchNorm`` if ``sync_bn``).

    Args:
        config (RunConfig): the options.

    Returns:
        PreparedRun: call its :meth:`~PreparedRun.fit`.

    Raises:
        perturbnn.repro.data.DataNotFoundError: if the data set files are not in ``data_dir``.
        perturbnn.repro.data.DataCorruptError: if they are unreadable.
        ValueError: on an invalid option, an unknown model or data set, a device that is not
            available, or a resume file that is not a perturbnn checkpoint.
        CheckpointError: (a ``ValueError``) if ``resume`` was saved with other options of
            :data:`RESUME_FIELDS` or another model; the message lists the options and the
            state-dict keys that differ.
        FileNotFoundError: if ``resume`` does not exist.
    """
    from perturbnn import build_model
    from perturbnn.repro.data import dataset_info, make_loaders

    experiment = get_experiment(config.experiment) if config.experiment else None
    context = _distributed.init_distributed(config.device)  # None unless torchrun, N >= 2
    device = context.device if context is not None else resolve_device(config.device)
    checkpoint = load_checkpoint(config.resume, map_location=device) if config.resume else None
    train_info = dataset_info(config.dataset_train)
    test_info = dataset_info(config.dataset_test)
    shape = (train_info.in_channels, train_info.input_size, train_info.nclasses)
    if (test_info.in_channels, test_info.input_size, test_info.nclasses) != shape:
        raise ValueError(
            f"dataset_test {config.dataset_test!r} does not match dataset_train "
            f"{config.dataset_train!r} (channels, size, classes differ)"
        )
    set_seed(config.manual_seed)
    train_loader, test_loader = make_loaders(
        config.dataset_train,
        config.dataset_test,
        config.data_dir,
        batch_size=config.batch_size,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        num_workers=config.num_workers,
        seed=config.manual_seed,
    )
    if context is not None:
        train_loader, test_loader = _distributed.distribute_loaders(
            train_loader, test_loader, seed=config.manual_seed
        )
    model = build_model(
        config.net_type,
        **config.model_config(
            in_channels=train_info.in_channels,
            input_size=train_info.input_size,
            nclasses=train_info.nclasses,
        ),
    ).to(device)
    if checkpoint is not None:
        _check_resume(checkpoint, config, model)
    handles: list[RemovableHandle] = []
    if config.debug:
        from perturbnn.repro.debug import attach_debug_hooks

        handles = attach_debug_hooks(model, level=logging.INFO)
    if context is not None:
        model = _distributed.wrap_model(model, context, sync_bn=config.sync_bn)
    optimizer = make_optimizer(
        config.optim_method,
        model,
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = make_scheduler(optimizer, config.dataset_train)
    parameters, mask_values = _count(model)
    return PreparedRun(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        test_loader=test_loader,
        device=device,
        experiment=experiment,
        checkpoint=checkpoint,
        parameters=parameters,
        mask_values=mask_values,
        debug_handles=handles,
        distributed=context,
    )


def run_experiment(config: RunConfig, *, logger: Optional[logging.Logger] = None) -> FitSummary:
    """Build everything for ``config`` and train: ``prepare_run(config).fit()``.

    Under ``torchrun``, the process group that :func:`prepare_run` joined is destroyed at the
    end.

    Args:
        config (RunConfig): e.g. ``RunConfig.from_experiment("baseline", nepochs=10)``.
        logger (logging.Logger, optional): where epoch lines go.

    Returns:
        FitSummary: best and last exact test accuracy, the original-method figure, history.

    Raises:
        See :func:`prepare_run` and :func:`fit`.
    """
    run = prepare_run(config)
    try:
        return run.fit(logger=logger)
    finally:
        if run.distributed is not None:
            _distributed.destroy_distributed(run.distributed)
