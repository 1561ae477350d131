"""Argument checks shared by the layers and the model builders.

Every check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value out
of range, with a message that names the argument, the value received and what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Optional, Union

import torch

from perturbnn._suggest import did_you_mean

__all__ = [
    "check_batch",
    "check_bool",
    "check_choice",
    "check_level",
    "check_positive_int",
    "check_size",
]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) greater than zero.

    Raises:
        TypeError: if ``value`` is not an integer.
        ValueError: if ``value`` is not positive.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``.

    Raises:
        TypeError: if ``value`` is not a ``bool``.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_level(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite, non-negative real number.

    Raises:
        TypeError: if ``value`` is not a real number.
        ValueError: if ``value`` is negative, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a non-negative finite float, got {type(value).__name__} {value!r}"
        )
    level = float(value)
    if not math.isfinite(level) or level < 0:
        raise ValueError(f"{name} must be a non-negative finite float, got {value}")
    return level


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Raises:
        TypeError: if ``value`` is not a string.
        ValueError: if ``value`` is not a valid name; the message lists the valid names, close
            matches first.
    """
    valid = sorted(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {valid}, got {type(value).__name__} {value!r}")
    if value not in valid:
        hint = did_you_mean(value, valid)
        hint = f" ({hint})" if hint else ""
        raise ValueError(f"{name} must be one of {valid}, got {value!r}{hint}")
    return value


SizeLike = Union[int, tuple[int, int]]


def check_size(name: str, value: object) -> tuple[int, int]:
    """Return ``value`` as ``(height, width)``; an ``int`` means a square map.

    Raises:
        TypeError: if ``value`` is neither an int nor a pair of ints.
        ValueError: if a side is not positive.
    """
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return (
            check_positive_int(f"{name}[0]", value[0]),
            check_positive_int(f"{name}[1]", value[1]),
        )
    if isinstance(value, int) and not isinstance(value, bool):
        side = check_positive_int(name, value)
        return (side, side)
    raise TypeError(
        f"{name} must be an int or a (height, width) pair of ints, got {type(value).__name__} {value!r}"
    )


def check_batch(
    x: object,
    *,
    channels: Optional[int] = None,
    size: Optional[tuple[int, int]] = None,
    size_name: str = "input_size",
    device: Optional[torch.device] = None,
    device_name: str = "the module",
    hint: str = "",
) -> None:
    """Check an image batch ``Tensor[batch_size, channels, height, width]`` before a layer uses it.

    Args:
        x: the input.
        channels: the channel count it must have (``None``: any).
        size: the ``(height, width)`` it must have (``None``: any), named ``size_name`` in the
            message.
        device: the device it must be on (``None``: any), named ``device_name``.
        hint: appended to the channel-count message.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: on a wrong number of dimensions, channel count, spatial size or device.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(
            "input must be 4-D Tensor[batch_size, channels, height, width], "
            f"got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"input must have {channels} channels, got {x.shape[1]}{hint}")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise ValueError(
            f"input spatial size must equal {size_name} = {tuple(size)}, got {tuple(x.shape[2:])}"
        )
    if device is not None and x.device != device:
        raise ValueError(
            f"input is on {x.device}, a different device from {device_name} ({device}); move "
            "the module with .to(device) or the input to that device"
        )
