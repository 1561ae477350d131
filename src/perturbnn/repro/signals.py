"""Stop training cleanly on Ctrl-C (SIGINT) or SIGTERM: finish the step, keep the checkpoint.

:func:`perturbnn.repro.fit.fit` installs a :class:`StopOnSignal` for the length of its epoch
loop and puts the previous handlers back when it returns. The first SIGINT or SIGTERM only sets
a flag: the training step under way finishes, the loop stops at the next step boundary (or
after the epoch, if the signal came during the test pass) and :func:`fit` raises
:class:`TrainingInterrupted`. ``checkpoint_last.pt`` then holds the last *completed* epoch, so
``--resume`` re-runs the interrupted epoch from its start and gives the same numbers as a run
that was never interrupted. A second signal stops at once (the checkpoint on disk is still the
last completed epoch: checkpoints are written to a temporary file and renamed).

Handlers can only be installed from the main thread; elsewhere :class:`StopOnSignal` does
nothing. A forked ``DataLoader`` worker inherits the handler but ignores the signal: the main
process decides when to stop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Callable, Optional, Union

__all__ = ["HANDLED_SIGNALS", "StopOnSignal", "TrainingInterrupted"]

_LOGGER = logging.getLogger("perturbnn.repro.fit")

#: The signals :class:`StopOnSignal` turns into a clean stop.
HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


def signal_name(signum: int) -> str:
    """``"SIGINT"`` for ``signal.SIGINT``; ``"signal N"`` for an unknown number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM; the last completed epoch is saved.

    A ``KeyboardInterrupt``, so that code which handles Ctrl-C keeps working and
    ``except Exception`` does not swallow it.

    Args:
        message (str): what happened, for people.
        signum (int): the signal received.
        epochs_completed (int, optional): epochs completed and saved (the epoch ``--resume``
            continues after).
        checkpoint (Path, optional): the checkpoint that holds them, if files were written.

    Attributes:
        signum (int), epochs_completed (int or None), checkpoint (Path or None): as above.
        exit_code (int): ``128 + signum``, the shell's convention: 130 for SIGINT, 143 for
            SIGTERM.
    """

    def __init__(
        self,
        message: str,
        *,
        signum: int,
        epochs_completed: Optional[int] = None,
        checkpoint: Optional[Path] = None,
    ) -> None:
        super().__init__(message)
        self.signum: int = int(signum)
        self.epochs_completed: Optional[int] = epochs_completed
        self.checkpoint: Optional[Path] = checkpoint

    @property
    def exit_code(self) -> int:
        """``128 + signum``: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        """``"SIGINT"`` or ``"SIGTERM"``."""
        return signal_name(self.signum)


class StopOnSignal:
    """Turn SIGINT and SIGTERM into a flag that the training loop polls.

    Use as a context manager, or call :meth:`install` and :meth:`restore` (in a ``finally``).
    The previous handlers are put back on exit.

    Args:
        signals (Sequence[int]): the signals to handle. Default: :data:`HANDLED_SIGNALS`.
        enabled (bool): if ``False``, install nothing (the flag stays down). Default: ``True``.
        logger (logging.Logger, optional): where the "received SIGINT" warning goes.

    Example::

        >>> with StopOnSignal() as stop:
        ...     for step in range(3):
        ...         if stop.requested():
        ...             break
        >>> stop.signum is None
        True
    """

    def __init__(
        self,
        signals: Sequence[int] = HANDLED_SIGNALS,
        *,
        enabled: bool = True,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self._signals = tuple(int(s) for s in signals)
        self._enabled = enabled
        self._log = logger if logger is not None else _LOGGER
        self._previous: dict[int, _Handler] = {}
        self._pid = os.getpid()
        self.signum: Optional[int] = None

    def install(self) -> StopOnSignal:
        """Install the handlers (main thread only; a no-op elsewhere or when disabled)."""
        if not self._enabled or self._previous:
            return self
        if threading.current_thread() is not threading.main_thread():
            self._log.debug("not in the main thread: SIGINT and SIGTERM are not handled")
            return self
        self._pid = os.getpid()
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def requested(self) -> bool:
        """Whether a stop was requested (a handled signal arrived)."""
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        """Name of the signal received, or ``""``."""
        return signal_name(self.signum) if self.signum is not None else ""

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the main process decides
        if self.signum is not None:
            raise TrainingInterrupted(
                f"{signal_name(signum)} received again: stopping at once", signum=signum
            )
        self.signum = signum
        self._log.warning(
            "%s received: finishing the current step, then stopping (send it again to stop "
            "at once)",
            signal_name(signum),
        )

    def __enter__(self) -> StopOnSignal:
        return self.install()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.restore()
