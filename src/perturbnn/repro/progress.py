"""Progress bars (tqdm when installed) and the batch iterator of the loop."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = []

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")


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


def _length(iterable: Iterable[Any]) -> Optional[int]:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _progress(iterable: Iterable[_T], *, enabled: bool, desc: str) -> Iterator[_T]:
    """One iterator over ``iterable``, shown as a tqdm bar on stderr if ``enabled``, tqdm is
    installed and stderr is a terminal.

    Exactly one ``iter(iterable)`` is made here, whatever is displayed; the bar only wraps that
    iterator. ``tqdm.auto`` (``tqdm.asyncio``) calls ``iter()`` on what it wraps, and every
    iterator of a DataLoader draws its base seed from the loader's generator (the shuffling
    generator of the training loader, the global RNG for the test loader), so wrapping the
    loader itself shifted the shuffle order, and every number after it, whenever the bar was
    on.

    Into a file or a pipe a bar would write one long line of carriage returns per epoch, so
    there the bar is left out and the per-epoch log lines are all that is written.
    """
    iterator = iter(iterable)
    if not enabled:
        return iterator
    tqdm = _tqdm()
    if tqdm is None or not _is_terminal(sys.stderr):
        return iterator
    bar = tqdm(iterator, desc=desc, total=_length(iterable), leave=False, dynamic_ncols=True)
    return bar  # type: ignore[no-any-return]


def _is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (``False`` for files, pipes, captures)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # closed or detached stream
        return False


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
