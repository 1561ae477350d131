"""The thread counts of a run, recorded so that the run can be regenerated exactly.

The thread count changes the float rounding of a CPU run (oneDNN convolutions, BatchNorm
reductions), and training amplifies it: two runs of the same configuration whose counts differ
differ by points of accuracy. The harness lowers the count while other processes keep the CPUs
busy (:class:`~perturbnn.repro.runtime.ContentionGuard`), so every run records the counts it
used as a :class:`ThreadSchedule`, keyed by the index of the
:func:`~perturbnn.repro.runtime.adapt_threads` call (one per training and one per test batch,
counted over the whole run: the same for a given configuration). ``summary.json`` stores it
under ``"threads"``, checkpoints store it too (a resumed run continues the count), and
``--threads-from`` (:func:`load_thread_record`) replays it::

    {"initial": 2, "adaptive": true, "changes": [[130, 1], [402, 2]], "calls": 1000}

Here the run started with 2 threads, used 1 from call 130 (the 131st batch) and 2 again from
call 402, out of 1000 calls. See docs/performance.md, "Sharing the CPU".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import torch

from perturbnn.repro.mismatch import format_mismatch

__all__ = [
    "ThreadRecorder",
    "ThreadSchedule",
    "load_thread_record",
    "record_mismatch",
    "replay_runs",
    "replay_schedule",
]

#: The file a run writes its results to (as :data:`perturbnn.repro.report.SUMMARY_FILE`).
_SUMMARY_FILE = "summary.json"

_Key = TypeVar("_Key")

#: Changes listed one by one in :meth:`ThreadSchedule.describe`; more are counted.
_LISTED = 3


def _count(value: object, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ThreadSchedule:
    """The intra-op thread counts a run used, by :func:`~perturbnn.repro.runtime.adapt_threads`
    call.

    Attributes:
        initial (int): the count at the start of the run (call 0).
        changes (tuple[tuple[int, int], ...]): ``(call, threads)`` pairs, calls increasing: from
            that call on (before its batch is computed), the count is ``threads``.
        adaptive (bool): the counts were chosen by the contention guard (at least in part).
        calls (int, optional): calls in the whole run (``None`` while it runs).
        complete (bool): ``False`` for a run resumed from a checkpoint that held no record (an
            older release): its counts before the resume are unknown, so it cannot be replayed.
        replayed_from (str, optional): the file this run's counts were replayed from.
    """

    initial: int
    changes: tuple[tuple[int, int], ...] = ()
    adaptive: bool = False
    calls: Optional[int] = None
    complete: bool = True
    replayed_from: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _count(self.initial, "initial", minimum=1)
        previous = -1
        for call, threads in self.changes:
            _count(call, "a change's call index", minimum=0)
            _count(threads, "a change's thread count", minimum=1)
            if call <= previous:
                raise ValueError(f"change calls must increase, got {call} after {previous}")
            previous = call
        if self.calls is not None:
            _count(self.calls, "calls", minimum=0)
            if self.changes and self.changes[-1][0] >= self.calls:
                raise ValueError(
                    f"a change at call {self.changes[-1][0]} is past the run's {self.calls} calls"
                )

    def threads_at(self, call: int) -> int:
        """The count in force at ``call`` (0-based)."""
        threads = self.initial
        for at, count in self.changes:
            if at > call:
                break
            threads = count
        return threads

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types (what ``summary.json`` stores under ``"threads"``)."""
        out: dict[str, Any] = {
            "initial": self.initial,
            "adaptive": self.adaptive,
            "changes": [[call, threads] for call, threads in self.changes],
            "calls": self.calls,
        }
        if not self.complete:
            out["complete"] = False
        if self.replayed_from is not None:
            out["replayed_from"] = self.replayed_from
        return out

    @classmethod
    def from_dict(cls, data: object) -> ThreadSchedule:
        """Read a record written by :meth:`to_dict`.

        Raises:
            ValueError: if ``data`` is not such a record; the message says what is wrong.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a thread record is a JSON object, got {type(data).__name__}")
        if "initial" not in data or "changes" not in data:
            raise ValueError("a thread record needs 'initial' and 'changes' entries")
        raw = data["changes"]
        if not isinstance(raw, list) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in raw
        ):
            raise ValueError(f"'changes' must be a list of [call, threads] pairs, got {raw!r}")
        replayed = data.get("replayed_from")
        return cls(
            initial=data["initial"],
            changes=tuple((pair[0], pair[1]) for pair in raw),
            adaptive=bool(data.get("adaptive", False)),
            calls=data.get("calls"),
            complete=bool(data.get("complete", True)),
            replayed_from=str(replayed) if replayed is not None else None,
        )

    def describe(self) -> str:
        """``"2 throughout"``, ``"2, then 1 from step 130, 2 from step 402"`` (steps: training
        and test batches counted over the run, from 0), or a count of changes when many."""
        if not self.changes:
            return f"{self.initial} throughout"
        if len(self.changes) > _LISTED:
            return f"{self.initial} at the start, changed {len(self.changes)} times"
        steps = ", ".join(f"{threads} from step {call}" for call, threads in self.changes)
        return f"{self.initial}, then {steps}"


class ThreadRecorder:
    """The thread counts of the run in progress, by :func:`~perturbnn.repro.runtime.adapt_threads`
    call (:func:`~perturbnn.repro.runtime.record_threads` makes one); :meth:`schedule` is the
    record so far.

    Args:
        saved: a checkpoint's ``"threads"`` entry (:meth:`state_dict`) when the run resumes: the
            call count and the record continue from it. ``None``: a new run, counted from 0.
        complete: ``False`` for a run resumed from a checkpoint without a record (an older
            release): its record then says that it cannot be replayed.
        replay: a schedule to apply (``--threads-from``): its count at every recorded call.
        adaptive: a :class:`~perturbnn.repro.runtime.ContentionGuard` chooses the counts.

    Attributes:
        calls (int): calls so far (the index of the next one).
        changes (list[tuple[int, int]]): ``(call, threads)`` for every call at which the count
            in force (``torch.get_num_threads()``) differed from the one before.

    Raises:
        ValueError: if ``saved`` is not a record.
    """

    def __init__(
        self,
        saved: Optional[Mapping[str, Any]] = None,
        *,
        complete: bool = True,
        replay: Optional[ThreadSchedule] = None,
        adaptive: bool = False,
    ) -> None:
        before = ThreadSchedule.from_dict(saved) if saved is not None else None
        self.calls = int(saved.get("next_call") or 0) if saved is not None else 0
        if replay is not None and torch.get_num_threads() != replay.threads_at(self.calls):
            torch.set_num_threads(replay.threads_at(self.calls))  # resumed inside a replay
        now = torch.get_num_threads()
        self.initial = before.initial if before is not None else now
        self.changes: list[tuple[int, int]] = list(before.changes) if before is not None else []
        self.adaptive = adaptive or (before is not None and before.adaptive)
        self.complete = complete and (before is None or before.complete)
        self.replayed_from = replay.replayed_from if replay is not None else None
        self._replay = dict(replay.changes) if replay is not None else None
        self._current = before.threads_at(self.calls) if before is not None else now
        self._check(self.calls)

    def _check(self, call: int) -> None:
        now = torch.get_num_threads()
        if now != self._current:
            if self.changes and self.changes[-1][0] == call:
                self.changes[-1] = (call, now)
            else:
                self.changes.append((call, now))
            self._current = now

    def step(self, decide: Optional[Callable[[], object]] = None) -> None:
        """One call: apply the replayed count of this call, or let ``decide`` (the guard's
        ``poll``) set one; then record the count in force."""
        call = self.calls
        self.calls += 1
        if self._replay is not None:
            wanted = self._replay.get(call)
            if wanted is not None:
                torch.set_num_threads(wanted)
        elif decide is not None:
            decide()
        self._check(call)

    def schedule(self, *, finished: bool = False) -> ThreadSchedule:
        """The record so far; ``finished``: with the number of calls (the run has ended)."""
        return ThreadSchedule(
            initial=self.initial,
            changes=tuple(self.changes),
            adaptive=self.adaptive,
            calls=self.calls if finished else None,
            complete=self.complete,
            replayed_from=self.replayed_from,
        )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores to continue the record on resume: the record so far and
        ``"next_call"``, the index of the next call (plain types)."""
        return {**self.schedule().to_dict(), "next_call": self.calls}


def _read_json(path: Path, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"{flag} {path}: not a readable JSON file ({reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{flag} {path}: not a results file (a JSON {type(data).__name__})")
    return data


def load_thread_record(
    path: Union[str, Path], *, flag: str = "--threads-from"
) -> tuple[ThreadSchedule, dict[str, Any], Path]:
    """Read the thread record of an earlier run: its ``summary.json`` or its run folder.

    Args:
        path: a ``summary.json`` written by ``train``, ``demo --out-dir`` or one run of
            ``reproduce``, or the folder that holds it; or a JSON file holding only a record
            (as the demo prints it without ``--out-dir``: no configuration to check).
        flag: the flag the user typed, for the messages.

    Returns:
        ``(schedule, config, file)``: the record (its ``replayed_from`` set to the file), the
        run's configuration as stored (``{}`` if none), and the file read.

    Raises:
        ValueError: one line naming ``flag`` and the path: a missing or unreadable file, a
            results file without a thread record (written before records existed, or not a
            results file), a malformed record, or the record of a run that cannot be replayed
            (resumed from a checkpoint without a record; not finished).
    """
    source = Path(path)
    file = source / _SUMMARY_FILE if source.is_dir() else source
    if source.is_dir() and not file.is_file():
        raise ValueError(f"{flag} {source}: the folder holds no {_SUMMARY_FILE} (no finished run)")
    data = _read_json(file, flag)
    if "threads" not in data and {"initial", "changes"} <= set(data):
        data = {"threads": data}  # a bare record, as the demo prints it without --out-dir
    if "threads" not in data:
        raise ValueError(
            f"{flag} {file}: no thread record in it (written by an older release, or not a "
            "results file)"
        )
    try:
        schedule = ThreadSchedule.from_dict(data["threads"])
    except ValueError as exc:
        raise ValueError(f"{flag} {file}: bad thread record ({exc})") from None
    if not schedule.complete:
        raise ValueError(
            f"{flag} {file}: the run resumed from a checkpoint without a thread record, so its "
            "counts before the resume are unknown; it cannot be replayed"
        )
    if schedule.calls is None:
        raise ValueError(f"{flag} {file}: the thread record is of an unfinished run")
    config = data.get("config")
    return (
        ThreadSchedule(
            initial=schedule.initial,
            changes=schedule.changes,
            adaptive=schedule.adaptive,
            calls=schedule.calls,
            replayed_from=str(file),
        ),
        dict(config) if isinstance(config, Mapping) else {},
        file,
    )


def record_mismatch(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str]
) -> list[str]:
    """The options (other than ``ignore``) whose values differ: ``"nfilters: 16 there, 8 here"``.

    Options only one side holds count as differing (a record of another version's options);
    ``experiment`` comes first, the others in alphabetical order.

    Args:
        saved: the recorded run's configuration (plain JSON types).
        current: this run's, as plain JSON types.
        ignore: options of the machine rather than the run (``MACHINE_FIELDS``).
    """
    keys = sorted((set(saved) | set(current)) - set(ignore), key=lambda k: (k != "experiment", k))
    return [
        f"{key}: {saved.get(key)!r} there, {current.get(key)!r} here"
        for key in keys
        if saved.get(key) != current.get(key)
    ]


def replay_schedule(
    path: Union[str, Path],
    current: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
    flag: str = "--threads-from",
) -> ThreadSchedule:
    """The schedule to replay for a run of configuration ``current``, read from ``path``.

    Args:
        path: as :func:`load_thread_record`.
        current: this run's configuration (``RunConfig.to_dict()``).
        ignore: options that may differ (where the files go, the device, ...).
        flag: the flag the user typed, for the messages.

    Returns:
        ThreadSchedule: the record, ``replayed_from`` set to the file.

    Raises:
        ValueError: one line naming ``flag``: see :func:`load_thread_record`, or the record is of
            a run with another configuration (the options that differ are listed).
    """
    schedule, saved, file = load_thread_record(path, flag=flag)
    plain = json.loads(json.dumps(dict(current), default=str))  # as summary.json stores it
    differences = record_mismatch(saved, plain, ignore) if saved else []
    if differences:
        raise ValueError(
            f"{flag} {file}: recorded by a run of another configuration, so its counts would not "
            f"fall on the same steps ({format_mismatch(differences, limit=4)})"
        )
    return schedule


def replay_runs(
    source: Union[str, Path],
    runs: Mapping[_Key, tuple[Path, Mapping[str, Any]]],
    *,
    ignore: Iterable[str] = (),
    flag: str = "--threads-from",
) -> dict[_Key, ThreadSchedule]:
    """The schedules of several runs in an earlier command's output folder (``reproduce``'s).

    Args:
        source: the folder (or a file in it, such as its ``reproduce.json``).
        runs: for each key, the run's folder relative to ``source`` and its configuration
            here; every one must hold a finished run (its ``summary.json``).
        ignore, flag: as :func:`replay_schedule`.

    Returns:
        dict: the schedule of each key, checked as :func:`replay_schedule` does.

    Raises:
        ValueError: one line naming ``flag``: no such folder, a run missing there, or one of
            :func:`replay_schedule`'s reasons.
    """
    folder = Path(source)
    folder = folder.parent if folder.is_file() else folder
    if not folder.is_dir():
        raise ValueError(f"{flag} {folder}: no such folder (an earlier run's --out-dir)")
    schedules: dict[_Key, ThreadSchedule] = {}
    for key, (relative, config) in runs.items():
        path = folder / relative / _SUMMARY_FILE
        if not path.is_file():
            raise ValueError(f"{flag} {folder}: no finished run {relative} there ({path} is missing)")
        schedules[key] = replay_schedule(path, config, ignore=ignore, flag=flag)
    return schedules
