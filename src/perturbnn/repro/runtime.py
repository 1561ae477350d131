"""Process set-up shared by the harness: logging to stdout, seeds, devices and type aliases.

Source: the seed's ``main.py`` (``--manual-seed``, ``--device``).
"""

from __future__ import annotations

import logging
import os
import random
import sys
from typing import Callable, Union

import torch
from torch import Tensor

__all__ = ["log_to_stdout", "resolve_device", "set_seed"]


PathLike = Union[str, "os.PathLike[str]"]
DeviceLike = Union[str, torch.device]
LossFn = Callable[[Tensor, Tensor], Tensor]


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


def _device_of(device: DeviceLike) -> torch.device:
    return resolve_device(device) if isinstance(device, str) else device
