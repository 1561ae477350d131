"""Say, key by key, how a checkpoint differs from the model or run it is loaded into.

Used by :func:`perturbnn.repro.checkpoint.restore_checkpoint` and :func:`perturbnn.repro.run.prepare_run`
to refuse a checkpoint of another configuration (other ``nmasks``, another architecture) with
one message that lists the mismatched keys, instead of ``load_state_dict``'s stack trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["config_mismatch", "format_mismatch", "state_mismatch"]


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return str(tuple(shape)) if shape is not None else type(value).__name__


def state_mismatch(expected: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
    """One line per key of two state dicts that does not match.

    Args:
        expected (Mapping[str, Any]): the receiving model's ``state_dict()``.
        saved (Mapping[str, Any]): the checkpoint's ``"model"`` entry.

    Returns:
        list[str]: shape differences first (``"layer1.0.noise.masks: shape (64, 64, 32, 32)
        in the checkpoint, (64, 1, 32, 32) in the model"``), then ``"missing from the
        checkpoint: fc.bias"``, then ``"not in the model: conv9.weight"``; empty if every key
        and shape matches.
    """
    shapes, missing = [], []
    for key, value in expected.items():
        if key not in saved:
            missing.append(f"missing from the checkpoint: {key}")
            continue
        here, there = getattr(value, "shape", None), getattr(saved[key], "shape", None)
        if here is not None and tuple(here) != tuple(there if there is not None else ()):
            shapes.append(
                f"{key}: shape {_shape(saved[key])} in the checkpoint, {_shape(value)} in the model"
            )
    unexpected = [f"not in the model: {key}" for key in saved if key not in expected]
    return shapes + missing + unexpected


def config_mismatch(
    saved: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str]
) -> list[str]:
    """One line per option of ``keys`` whose value differs between two configurations.

    Options the saved configuration does not hold are not compared.

    Args:
        saved (Mapping[str, Any]): the checkpoint's ``"config"`` entry (plain JSON types).
        current (Mapping[str, Any]): this run's configuration, as plain JSON types.
        keys (Iterable[str]): the options to compare.

    Returns:
        list[str]: lines such as ``"nmasks: 64 in the checkpoint, 1 in this run"``.
    """
    return [
        f"{key}: {saved[key]!r} in the checkpoint, {current.get(key)!r} in this run"
        for key in keys
        if key in saved and saved[key] != current.get(key)
    ]


def format_mismatch(lines: list[str], *, limit: int = 12) -> str:
    """The first ``limit`` lines joined with ``"; "``, then ``"... and N more"``."""
    shown = "; ".join(lines[:limit])
    if len(lines) > limit:
        shown += f"; ... and {len(lines) - limit} more"
    return shown
