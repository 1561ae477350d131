"""Progress bars (tqdm when installed) and the batch iterator of the loop."""

from __future__ import annotations

import functools
import logging
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
