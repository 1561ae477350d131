"""Checkpoints: atomic writes, loading with clear errors, restoring a model and its RNG state."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from perturbnn._version import __version__
from perturbnn.metrics import OriginalSmoothedAccuracy
from perturbnn.repro import distributed as _distributed
from perturbnn.repro.mismatch import format_mismatch, state_mismatch
from perturbnn.repro.outdir import (
    OutDirError,
)
from perturbnn.repro.runtime import (
    DeviceLike,
    PathLike,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "load_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
]


#: Value of the ``"format"`` entry that marks a perturbnn checkpoint.
CHECKPOINT_FORMAT = "perturbnn-checkpoint"
_CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a readable perturbnn checkpoint (or one of a newer format)."""


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
    threads: Optional[Mapping[str, Any]] = None,
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
        threads (Mapping, optional): the thread counts so far and the number of steps
            (:meth:`perturbnn.repro.runtime.ThreadRecorder.state_dict`), so that a resumed
            run continues the record.

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
        "threads": _plain(dict(threads)) if threads is not None else None,
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
        ``history``, ``smoothed``, ``best_acc``, ``best_epoch``, ``rng``, ``threads`` (absent
        from checkpoints of older releases) and version entries.

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
            mismatched keys and shapes (the model is left untouched when its keys differ), or
            its optimizer or learning-rate schedule state does not fit the given one.
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
        try:
            scheduler.load_state_dict(checkpoint["scheduler"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # e.g. a checkpoint of a release whose schedule was a MultiStepLR (before the
            # per-data-set schedule of Klachko's): its state lacks the LambdaLR's entries.
            raise CheckpointError(
                f"the checkpoint's learning-rate schedule does not fit this one "
                f"({type(exc).__name__}: {exc}); it was saved by another schedule (an older "
                "perturbnn release?): start a new run without --resume"
            ) from exc
    return int(checkpoint["epoch"])
