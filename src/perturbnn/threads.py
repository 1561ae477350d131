"""Sharing the CPU with other jobs: fewer compute threads while other processes keep it busy.

torch's OpenMP threads wait for each other at the end of every parallel operation, spinning
for a while first. When another process holds a core, one thread is off its core and the others
spin for it: a training step can become 3-16x slower beside one other 2-thread job on 2 cores,
where an even share would be 2x (docs/performance.md, "Sharing the CPU"). One thread has
nobody to wait for. :class:`ContentionGuard` watches the CPU time other processes use and lowers
the count while they are busy; :func:`share_cpu` puts one on a model of your own in one line::

    handle = perturbnn.share_cpu(model)   # before the training loop
    ...                                   # train as usual
    json.dump(handle.record, file)        # the counts used, for an exact repeat
    handle.remove()                       # the thread count as it was

The reproduction harness (``perturbnn.repro``) uses the same guard in its training loop.

Source: this library's issue 22 and the measurements of docs/performance.md (the independent
reproduction has no thread handling).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import nn

from perturbnn._validation import check_positive_int

__all__ = ["ContentionGuard", "SharedCPU", "share_cpu"]

_LOGGER = logging.getLogger(__name__)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as file:
            return file.read()
    except (OSError, UnicodeDecodeError):
        return None


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))  # pragma: no cover - macOS, Windows


def _read_proc_stat(cpus: set[int]) -> Optional[tuple[float, float]]:
    """(busy, total) seconds of the given CPUs since boot, from ``/proc/stat``."""
    text = _read_text("/proc/stat")
    if text is None:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = total = 0.0
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            index = int(name[3:])
        except ValueError:
            continue
        if index not in cpus or len(fields) < 5:
            continue
        # user nice system idle iowait irq softirq steal [guest guest_nice: within user/nice]
        values = [int(v) for v in fields[:8]]
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return busy / tick, total / tick


class ContentionGuard:
    """Lowers the thread count while other processes keep this process's CPUs busy.

    Every ``interval`` seconds, :meth:`poll` reads the CPU time of the process's CPUs
    (``/proc/stat``) and subtracts its own (``time.process_time``): the rest is what other
    processes used. The thread count becomes ``round(cpus - others)`` (at least 1, at most
    ``max_threads``). Where ``/proc/stat`` is missing, it does nothing. Call :meth:`poll` once
    per step (it costs a clock read, and a file read per ``interval``); :func:`share_cpu` does
    it for a model.

    Source: issue 12 and docs/performance.md, "Sharing the CPU" (measured with
    ``benchmarks/bench_contention.py``).

    Args:
        max_threads: the count when the CPUs are free (threads, a positive int).
        cpus: the CPUs to watch (default: the affinity mask).
        interval: seconds between two decisions.
        set_threads: applies a count (default: ``torch.set_num_threads``).
        clock, own_cpu, read_stat: seams for the tests (wall clock, own CPU seconds,
            ``(busy, total)`` CPU seconds of ``cpus``).

    Raises:
        TypeError, ValueError: if ``max_threads`` is not a positive int.
    """

    def __init__(
        self,
        max_threads: int,
        cpus: Optional[set[int]] = None,
        *,
        interval: float = 1.0,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        clock: Callable[[], float] = time.monotonic,
        own_cpu: Callable[[], float] = time.process_time,
        read_stat: Optional[Callable[[], Optional[tuple[float, float]]]] = None,
    ) -> None:
        self.max_threads = check_positive_int("max_threads", max_threads)
        watched = _affinity() if cpus is None else set(cpus)
        self.cpus = watched
        self.interval = interval
        self.threads = max_threads
        self._set = set_threads
        self._clock = clock
        self._own = own_cpu
        self._stat = read_stat if read_stat is not None else (lambda: _read_proc_stat(watched))
        self._last = self._sample()

    def _sample(self) -> Optional[tuple[float, float, float]]:
        stat = self._stat()
        return None if stat is None else (self._clock(), stat[0], self._own())

    def others(self) -> Optional[float]:
        """CPUs (fractional) that other processes used since the last decision, or ``None``."""
        now = self._sample()
        if now is None or self._last is None:
            return None
        wall = now[0] - self._last[0]
        if wall <= 0:
            return None
        busy = now[1] - self._last[1]
        own = now[2] - self._last[2]
        self._last = now
        return max(0.0, (busy - own) / wall)

    def poll(self) -> int:
        """Decide again if ``interval`` has passed; return the thread count in force."""
        if self._last is None or self._clock() - self._last[0] < self.interval:
            return self.threads
        others = self.others()
        if others is None:
            return self.threads
        free = len(self.cpus) - others
        wanted = max(1, min(self.max_threads, int(free + 0.5)))
        if wanted != self.threads:
            _LOGGER.debug("other processes use %.1f CPUs: %d threads", others, wanted)
            self._set(wanted)
            self.threads = wanted
        return self.threads


def _replay_changes(replay: Mapping[str, Any]) -> tuple[int, dict[int, int]]:
    """``(initial, {call: threads})`` of a record (:attr:`SharedCPU.record`), checked."""
    if not isinstance(replay, Mapping):
        raise TypeError(f"replay must be a thread record (a dict), got {type(replay).__name__}")
    initial, raw = replay.get("initial"), replay.get("changes")
    if isinstance(initial, bool) or not isinstance(initial, int) or initial < 1:
        raise ValueError(f"replay['initial'] must be a positive int, got {initial!r}")
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"replay['changes'] must be a list of [call, threads] pairs, got {raw!r}")
    changes: dict[int, int] = {}
    previous = -1
    for pair in raw:
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2
        if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
            raise ValueError(f"replay['changes'] must hold [call, threads] int pairs, got {pair!r}")
        call, threads = pair
        if call <= previous or threads < 1:
            raise ValueError(
                f"replay['changes'] needs increasing calls and positive counts, got {pair!r}"
            )
        changes[call], previous = threads, call
    return initial, changes


def _running_eagerly() -> bool:
    """False while torch.compile, torch.export, ONNX export or TorchScript traces the model."""
    return not (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch._C._get_tracing_state() is not None  # torch.jit.is_tracing(), typed
    )


def _step(shared: SharedCPU) -> None:
    if _running_eagerly():
        shared.step()


# torch.compile runs the hook's work eagerly (a graph break), at every call of the model
_step = torch.compiler.disable(_step)  # type: ignore[no-untyped-call]


class _Poll:
    """The forward pre-hook :func:`share_cpu` registers. A copy or a pickle of the model gets an
    inert :class:`_Released` in its place: the guard and its record belong to this model."""

    __slots__ = ("shared",)

    def __init__(self, shared: SharedCPU) -> None:
        self.shared = shared

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not torch.compiler.is_exporting():  # torch.export traces the hook: leave it out
            _step(self.shared)  # torch.compile runs it eagerly, at every call

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _Released, ()

    def __deepcopy__(self, memo: dict[int, Any]) -> _Released:
        return _Released()


class _Released:
    """What a copy or an unpickled model holds where :func:`share_cpu`'s hook was: nothing."""

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        return None


class SharedCPU:
    """The handle :func:`share_cpu` returns: the guard on one model, its record, and
    :meth:`remove`. Also a context manager (removed on exit).

    Source: this library's issue 22 (docs/performance.md, "A training loop of your own").

    Attributes:
        calls (int): forward calls of the model so far (the index of the next one); calls made
            while torch.compile, torch.export or ONNX export trace the model do not count.
        found (int): the thread count found by :func:`share_cpu`, restored by :meth:`remove`.
        initial (int): the count at the first call (``found``, ``max_threads`` or the
            replayed initial count).
        guard (ContentionGuard, optional): the guard deciding the counts (``None`` when
            replaying, or when at most one thread is allowed).
    """

    def __init__(
        self,
        model: nn.Module,
        guard: Optional[ContentionGuard],
        replay: Optional[Mapping[str, Any]],
        found: int,
    ) -> None:
        self.found = found
        self.initial = torch.get_num_threads()
        self.guard = guard
        self.calls = 0
        self._adaptive = replay is None
        self._replay = _replay_changes(replay)[1] if replay is not None else {}
        self._current = self.initial
        self._changes: list[list[int]] = []
        self._removed = False
        self._hook = model.register_forward_pre_hook(_Poll(self))

    @property
    def threads(self) -> int:
        """The intra-op thread count in force (``torch.get_num_threads()``)."""
        return torch.get_num_threads()

    @property
    def record(self) -> dict[str, Any]:
        """The counts in force at each forward call so far, as plain JSON types::

            {"initial": 2, "adaptive": true, "changes": [[130, 1], [402, 2]], "calls": 1000}

        2 threads at the start, 1 from call 130 (the 131st forward), 2 again from call 402,
        out of 1000 calls. The format of the harness's ``summary.json`` ``"threads"`` entry:
        ``perturbnn-repro ... --threads-from FILE`` reads a JSON file holding it, and
        ``share_cpu(model, replay=record)`` applies it to a run of your own.
        """
        return {
            "initial": self.initial,
            "adaptive": self._adaptive,
            "changes": [list(change) for change in self._changes],
            "calls": self.calls,
        }

    def step(self) -> None:
        """One forward call (the hook calls it): apply the replayed count of this call, or let
        the guard decide; then record the count in force."""
        if self._removed:
            return
        call = self.calls
        self.calls += 1
        wanted = self._replay.get(call)
        if wanted is not None and wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
        elif self.guard is not None:
            self.guard.poll()
        now = torch.get_num_threads()
        if now != self._current:
            self._changes.append([call, now])
            self._current = now

    def remove(self) -> None:
        """Take the hook off the model and restore the thread count found at the start."""
        if self._removed:
            return
        self._removed = True
        self._hook.remove()
        if torch.get_num_threads() != self.found:
            torch.set_num_threads(self.found)

    def __enter__(self) -> SharedCPU:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        what = "replaying" if not self._adaptive else "adaptive" if self.guard else "fixed"
        return f"SharedCPU({what}, threads={self.threads}, calls={self.calls})"


def share_cpu(
    model: nn.Module,
    *,
    max_threads: Optional[int] = None,
    interval: float = 1.0,
    replay: Optional[Mapping[str, Any]] = None,
) -> SharedCPU:
    """Lower the model's CPU threads while other processes keep the CPUs busy: one line.

    Registers a forward pre-hook on ``model`` that, before each forward call, asks a
    :class:`ContentionGuard` (which decides at most once per ``interval``) and records the
    count in force. Beside a competing 2-thread job on 2 cores it keeps a training step near an
    even share of the CPU instead of 3-16x slower (docs/performance.md). On a quiet machine
    nothing changes: the count stays as found, so the results are those without it. The count
    found (set by ``OMP_NUM_THREADS``, ``torch.set_num_threads`` or torch's default) is the
    maximum. The thread count is process-wide: share one model per process (the one you train).

    Call it before the first forward; ``torch.compile``, ``torch.export``, ONNX export,
    ``copy.deepcopy``, pickling, ``state_dict`` and DDP are unaffected (a copy of the model
    carries no guard). With ``impl="compiled"`` the first step at a new count compiles again.

    Source: this library's issue 22; measured with ``benchmarks/bench_contention.py``
    (docs/performance.md, "Sharing the CPU").

    Args:
        model: the module whose forward marks a step (its top module: the one you call).
        max_threads: the most threads to use, set at once (default: ``torch.get_num_threads()``,
            left as it is).
        interval: seconds between two decisions of the guard.
        replay: a record (:attr:`SharedCPU.record`, or a harness run's ``"threads"`` entry) to
            apply exactly instead of deciding: its initial count, then each change at its call.

    Returns:
        SharedCPU: the handle: ``.record``, ``.threads``, ``.remove()``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or an argument has the wrong type.
        ValueError: if ``max_threads`` or ``interval`` is not positive, ``model`` already
            shares the CPU, or ``replay`` is not a thread record.

    Example::

        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        >>> handle = share_cpu(model)
        >>> model(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 8, 6, 6])
        >>> handle.record["calls"]
        1
        >>> handle.remove()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    limit = torch.get_num_threads() if max_threads is None else max_threads
    check_positive_int("max_threads", limit)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise TypeError(f"interval must be a number of seconds, got {type(interval).__name__}")
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"interval must be a positive number of seconds, got {interval}")
    if any(isinstance(hook, _Poll) for hook in model._forward_pre_hooks.values()):
        raise ValueError("model already shares the CPU (share_cpu was called on it before)")
    start = limit if replay is None else _replay_changes(replay)[0]  # checked before any change
    found = torch.get_num_threads()
    if start != found:
        torch.set_num_threads(start)
    guard = ContentionGuard(limit, interval=interval) if replay is None and limit > 1 else None
    return SharedCPU(model, guard, replay, found)
