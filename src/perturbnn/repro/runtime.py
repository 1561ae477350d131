"""Process set-up shared by the harness: logging to stdout, seeds, devices, threads, type aliases.

The thread count (:func:`configure_threads`) is chosen from what the process can see (its
affinity mask, a cgroup CPU quota; ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` set by the
user win) and lowered while other processes keep the CPUs busy (the layer library's
:class:`~perturbnn.threads.ContentionGuard`, which :func:`perturbnn.share_cpu` puts on a loop of
your own); each run records the counts (:func:`record_threads`), which ``--threads-from`` replays exactly
(:mod:`perturbnn.repro.thread_record`); see docs/performance.md, "Sharing the CPU".

Source: Klachko's ``main.py`` (``--manual-seed``, ``--device``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from perturbnn.repro.thread_record import ThreadRecorder, ThreadSchedule
from perturbnn.threads import ContentionGuard, _affinity, _read_text

__all__ = [
    "THREAD_ENV_VARS",
    "ContentionGuard",
    "ThreadPlan",
    "adapt_threads",
    "available_cpus",
    "cgroup_cpu_quota",
    "check_threads",
    "choose_threads",
    "configure_threads",
    "install_recorder",
    "log_to_stdout",
    "record_threads",
    "resolve_device",
    "set_seed",
    "threads_for_run",
]

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
        seed (int): a non-negative integer (Klachko's ``--manual-seed``).

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


# ---------------------------------------------------------------------------------------------
# Threads: how many, chosen from what the process can see, and lowered while others are busy.
# ---------------------------------------------------------------------------------------------

#: Environment variables through which a user fixes the number of threads (torch reads them).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_CGROUP_V2_MAX = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
_CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def cgroup_cpu_quota(
    read: Callable[[str], Optional[str]] = _read_text,
) -> Optional[float]:
    """The CPU quota of this process's control group, in CPUs (``1.5``), or ``None`` if unlimited.

    Reads cgroup v2 ``cpu.max`` (``"150000 100000"``, or ``"max 100000"``), else cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of ``-1`` is unlimited), as a container
    runtime (``docker run --cpus``) sets them.

    Args:
        read: reads a file's text, ``None`` when it is missing (a seam for the tests).
    """
    text = read(_CGROUP_V2_MAX)
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                return max(int(parts[0]) / int(parts[1]), 0.01)
            except (ValueError, ZeroDivisionError):
                return None
        return None
    quota, period = read(_CGROUP_V1_QUOTA), read(_CGROUP_V1_PERIOD)
    if quota is None or period is None:
        return None
    try:
        q, p = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    return None if q <= 0 or p <= 0 else max(q / p, 0.01)


def available_cpus(
    affinity: Optional[set[int]] = None, quota: Optional[float] = None, *, read_quota: bool = True
) -> int:
    """CPUs this process may use: its affinity mask (``taskset``), capped by a cgroup quota.

    Args:
        affinity: the CPUs the process may run on (default: ``os.sched_getaffinity(0)``).
        quota: the cgroup quota in CPUs (default: :func:`cgroup_cpu_quota` if ``read_quota``).
        read_quota: read the quota from the cgroup files when ``quota`` is ``None``.

    Returns:
        int: at least 1; a fractional quota rounds up (1.5 CPUs -> 2).
    """
    cpus = len(_affinity() if affinity is None else affinity)
    if quota is None and read_quota:
        quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota - 1e-9))
    return max(1, cpus)


def _physical_cores() -> Optional[int]:
    """Physical cores listed in ``/proc/cpuinfo`` (what torch's default thread count follows)."""
    text = _read_text("/proc/cpuinfo")
    if not text:
        return None
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
            cores.add((physical, core))
    return len(cores) or None


def _torch_defaults(available: int) -> set[int]:
    """Thread counts torch may have chosen by itself at start (one per core, logical or not)."""
    counts = {available, len(_affinity()), os.cpu_count() or 1}
    physical = _physical_cores()
    if physical:
        counts.add(physical)
    return counts


@dataclass(frozen=True)
class ThreadPlan:
    """The number of compute threads of a run and where it comes from.

    Attributes:
        threads (int): intra-op threads (``torch.set_num_threads``).
        source (str): ``"--threads"``, the environment variable (``"OMP_NUM_THREADS"``),
            ``"torch.set_num_threads"`` (set by the user before the run), ``"available"`` (the
            CPUs this process may use: affinity mask, cgroup quota), or ``"--threads-from"``.
        available (int): :func:`available_cpus`.
        adaptive (bool): the count drops while other processes keep the CPUs busy, and comes
            back when they stop (only when nobody chose the count: ``source == "available"``).
        replayed_from (str, optional): the file of the replayed schedule.
    """

    threads: int
    source: str
    available: int
    adaptive: bool
    replayed_from: Optional[str] = None

    def describe(self) -> str:
        """One line for the command line's output."""
        if self.source == "--threads-from":
            return (
                f"threads: {self.threads} at the start, then as recorded in "
                f"{self.replayed_from} (--threads-from: replayed exactly, not adapted)"
            )
        what = {
            "--threads": "--threads",
            "torch.set_num_threads": "set by torch.set_num_threads before the run",
            "available": f"the CPUs this process may use: {self.available}",
        }.get(self.source, f"{self.source}={os.environ.get(self.source, '?')}")
        line = f"threads: {self.threads} ({what})"
        if self.adaptive and self.threads > 1:
            line += "; fewer while other processes keep the CPUs busy"
        return line


def check_threads(threads: object, *, name: str = "threads") -> int:
    """``threads`` as a positive int.

    Raises:
        TypeError: if it is not an int (``bool`` included).
        ValueError: if it is not positive.
    """
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"{name} must be a positive int, got {type(threads).__name__} {threads!r}")
    if threads < 1:
        raise ValueError(f"{name} must be a positive int, got {threads}")
    return threads


def choose_threads(
    threads: Optional[int] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    current: Optional[int] = None,
    available: Optional[int] = None,
    defaults: Optional[set[int]] = None,
) -> ThreadPlan:
    """Choose the run's intra-op thread count; what the user chose always wins.

    In order: ``threads`` (the ``--threads`` flag); ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``
    in the environment (torch has applied it: the count is kept); a count the user set with
    ``torch.set_num_threads`` (one that is none of the counts torch picks by itself); else the
    CPUs this process may use (:func:`available_cpus`), never more than torch's own default,
    and adaptive (:class:`ContentionGuard`).

    Args:
        threads: the count asked for, or ``None``.
        environ: the environment (default: ``os.environ``).
        current: ``torch.get_num_threads()`` (default: read it).
        available: :func:`available_cpus` (default: read it).
        defaults: the counts torch picks by itself here (default: one per available CPU, per
            CPU of the affinity mask, per CPU of the machine, per physical core).

    Returns:
        ThreadPlan: the count, its source, and whether it adapts to other processes.

    Raises:
        TypeError, ValueError: if ``threads`` is given and is not a positive int.
    """
    env = os.environ if environ is None else environ
    cpus = available_cpus() if available is None else available
    now = torch.get_num_threads() if current is None else current
    if threads is not None:
        return ThreadPlan(check_threads(threads), "--threads", cpus, adaptive=False)
    for var in THREAD_ENV_VARS:
        if env.get(var, "").strip():
            return ThreadPlan(now, var, cpus, adaptive=False)
    if now not in (_torch_defaults(cpus) if defaults is None else defaults):
        return ThreadPlan(now, "torch.set_num_threads", cpus, adaptive=False)
    return ThreadPlan(max(1, min(now, cpus)), "available", cpus, adaptive=True)


_GUARD: list[Optional[ContentionGuard]] = [None]
_REPLAY: list[Optional[ThreadSchedule]] = [None]
_RECORD: list[Optional[ThreadRecorder]] = [None]


def configure_threads(
    threads: Optional[int] = None, *, replay: Optional[ThreadSchedule] = None
) -> ThreadPlan:
    """Choose (:func:`choose_threads`) and apply the thread count of a run, or replay one.

    Sets ``torch.set_num_threads`` and, when the count is adaptive, installs the
    :class:`ContentionGuard` that :func:`adapt_threads` consults at every training and test
    step of :mod:`perturbnn.repro.loop`. With ``replay`` (``--threads-from``), no guard: the
    recorded initial count is set, and :func:`adapt_threads` applies the recorded changes at
    the recorded calls. Called by every command of the command line; from Python, call it
    before :func:`perturbnn.repro.run.run_experiment` to get the same.

    Args:
        threads: the count asked for (``--threads``), or ``None`` to choose.
        replay: a recorded schedule (:func:`~perturbnn.repro.thread_record.load_thread_record`)
            to apply exactly instead; not with ``threads``.

    Returns:
        ThreadPlan: what was chosen (:meth:`ThreadPlan.describe` gives the line to print).

    Raises:
        TypeError, ValueError: if ``threads`` is not a positive int, or both are given.
    """
    if replay is not None and threads is not None:
        raise ValueError(f"threads and replay are exclusive, got threads={threads}")
    plan = (
        ThreadPlan(replay.initial, "--threads-from", available_cpus(), False, replay.replayed_from)
        if replay is not None
        else choose_threads(threads)
    )
    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    _GUARD[0] = ContentionGuard(plan.threads) if plan.adaptive and plan.threads > 1 else None
    _REPLAY[0] = replay
    return plan


def adapt_threads() -> None:
    """One step of the run: the guard decides (or the replayed schedule applies), and the
    count in force is recorded (:func:`record_threads`). Cheap; a no-op without either."""
    guard, record = _GUARD[0], _RECORD[0]
    if record is not None:
        record.step(guard.poll if guard is not None else None)
    elif guard is not None:
        guard.poll()


def record_threads(
    saved: Optional[Mapping[str, Any]] = None, *, complete: bool = True
) -> ThreadRecorder:
    """A :class:`~perturbnn.repro.thread_record.ThreadRecorder` replaying the schedule, or
    adaptive, as :func:`configure_threads` set them (arguments as its own); once installed
    (:func:`install_recorder`), :func:`adapt_threads` feeds it. :func:`~perturbnn.repro.fit.fit`
    does both."""
    return ThreadRecorder(saved, complete=complete, replay=_REPLAY[0], adaptive=bool(_GUARD[0]))


def install_recorder(recorder: Optional[ThreadRecorder]) -> Optional[ThreadRecorder]:
    """Make :func:`adapt_threads` feed ``recorder`` (``None``: none); return the previous one."""
    before = _RECORD[0]
    _RECORD[0] = recorder
    return before


@contextlib.contextmanager
def threads_for_run(
    threads: Optional[int] = None, *, replay: Optional[ThreadSchedule] = None
) -> Iterator[ThreadPlan]:
    """:func:`configure_threads` for the duration of a ``with`` block, then as before.

    On exit the guard and the replayed schedule are removed and the thread count the process
    had is restored, so that a caller (a test, a notebook) finds torch as it left it.

    Args, raises: as :func:`configure_threads`.

    Yields:
        ThreadPlan: what was chosen.
    """
    before = torch.get_num_threads()
    plan = configure_threads(threads, replay=replay)
    try:
        yield plan
    finally:
        _GUARD[0] = None
        _REPLAY[0] = None
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
