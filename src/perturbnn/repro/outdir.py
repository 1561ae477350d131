"""Prove, before training starts, that the output folder can take the run's checkpoints.

:func:`check_out_dir` creates the folder, writes, fsyncs and removes a small probe file, and
compares the free space with :func:`estimate_checkpoint_bytes`. A read-only or full file
system, or a path under a regular file, is then reported as one :class:`OutDirError` naming
the folder, before the first training step instead of at the end of the first epoch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Union

from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["OutDirError", "check_out_dir", "estimate_checkpoint_bytes"]

StrPath = Union[str, "os.PathLike[str]"]

#: Copies of a checkpoint that can be on disk at once: ``checkpoint_last.pt``, its temporary
#: file during a save, and ``checkpoint_best.pt``.
CHECKPOINT_COPIES = 3

_OVERHEAD_BYTES = 1 << 16  # pickled metadata, history, RNG states


class OutDirError(OSError):
    """The output folder cannot be created or written, or has no room for the checkpoints.

    Args:
        message (str): the reason, naming the folder.
        path (Path): the folder.

    Attributes:
        path (Path): the folder.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path: Path = path

    def __str__(self) -> str:
        return str(self.args[0])


def _tensor_bytes(tensor: Tensor) -> int:
    return int(tensor.numel()) * int(tensor.element_size())


def estimate_checkpoint_bytes(model: nn.Module, optimizer: Optional[Optimizer] = None) -> int:
    """Approximate size of one checkpoint of ``model`` and ``optimizer``, in bytes.

    Model: every tensor of ``state_dict()`` (parameters and buffers, noise masks included).
    Optimizer: its state tensors; if it has none yet (before the first step), twice the
    trainable parameters' bytes (Adam's two moments, an upper bound for RMSprop and SGD).

    Args:
        model (nn.Module): the model.
        optimizer (Optimizer, optional): its optimizer.

    Returns:
        int: bytes, including a small allowance for metadata.
    """
    total = sum(_tensor_bytes(t) for t in model.state_dict().values() if isinstance(t, Tensor))
    if optimizer is not None:
        state = sum(
            _tensor_bytes(value)
            for per_param in optimizer.state.values()
            for value in per_param.values()
            if isinstance(value, Tensor)
        )
        if state == 0:
            state = 2 * sum(
                _tensor_bytes(p)
                for group in optimizer.param_groups
                for p in group["params"]
                if p.requires_grad
            )
        total += state
    return total + _OVERHEAD_BYTES


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _reason(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def check_out_dir(path: StrPath, *, need_bytes: int = 0, probe_bytes: int = 1 << 20) -> Path:
    """Create ``path`` if needed and check that it can take ``need_bytes`` of files.

    Three checks, in order: the folder can be created (no parent is a regular file, the
    parent is writable); a ``probe_bytes`` file can be written, fsynced and removed (the file
    system is writable and not full); ``shutil.disk_usage`` reports at least ``need_bytes``
    free.

    Args:
        path (str or os.PathLike): the output folder.
        need_bytes (int): bytes the run will write, e.g. ``3 * estimate_checkpoint_bytes(...)``.
            Default: ``0`` (only check that the folder is writable).
        probe_bytes (int): size of the probe file. Default: 1 MiB.

    Returns:
        Path: the folder, now existing.

    Raises:
        ValueError: if ``need_bytes`` or ``probe_bytes`` is negative.
        OutDirError: (an ``OSError``) if a check fails; the message names the folder, and for
            the last check gives the space free and needed.

    Example::

        >>> check_out_dir("runs/demo", need_bytes=10_000_000)  # doctest: +SKIP
        PosixPath('runs/demo')
    """
    if need_bytes < 0:
        raise ValueError(f"need_bytes must be non-negative, got {need_bytes}")
    if probe_bytes < 0:
        raise ValueError(f"probe_bytes must be non-negative, got {probe_bytes}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutDirError(f"output folder {str(folder)!r} exists and is not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in folder.parents if p.exists()), None)
        why = (
            f"{str(blocker)!r} is a file, not a folder"
            if blocker is not None and not blocker.is_dir()
            else _reason(exc)
        )
        raise OutDirError(f"cannot create output folder {str(folder)!r}: {why}", folder) from exc

    probe = folder / f".perturbnn-write-probe-{os.getpid()}"
    try:
        with probe.open("wb") as handle:
            handle.write(b"\0" * probe_bytes)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise OutDirError(
            f"output folder {str(folder)!r} is not writable: writing a "
            f"{_megabytes(probe_bytes)} test file failed ({_reason(exc)})",
            folder,
        ) from exc
    finally:
        try:
            probe.unlink()
        except OSError:
            pass

    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise OutDirError(
            f"output folder {str(folder)!r} has {_megabytes(free)} free, but the checkpoints "
            f"need about {_megabytes(need_bytes)}; free some space or choose another folder",
            folder,
        )
    return folder
