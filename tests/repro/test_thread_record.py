"""Every run records its thread counts by step, and ``--threads-from`` replays them exactly.

The thread count changes the rounding of a CPU run, and the harness lowers it while other
processes keep the CPUs busy; so the counts of a run are part of what regenerates its numbers.
A scripted guard forces changes at given steps; the record must equal what was applied, and a
replay must apply the recorded counts at the same steps (a spy on ``torch.set_num_threads``)
and give the same numbers bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from perturbnn.repro import runtime
from perturbnn.repro.cli import demo as demo_cli
from perturbnn.repro.cli import reproduce as reproduce_cli
from perturbnn.repro.cli import train as train_cli
from perturbnn.repro.fit import HISTORY_KEYS, fit
from perturbnn.repro.runtime import threads_for_run
from perturbnn.repro.thread_record import ThreadSchedule, load_thread_record

# ------------------------------------------------------------------------------------ the record


def test_schedule_round_trips_and_says_which_count_is_in_force() -> None:
    schedule = ThreadSchedule(2, ((3, 1), (7, 2)), adaptive=True, calls=10)
    assert ThreadSchedule.from_dict(json.loads(json.dumps(schedule.to_dict()))) == schedule
    assert [schedule.threads_at(i) for i in range(10)] == [2, 2, 2, 1, 1, 1, 1, 2, 2, 2]
    assert schedule.describe() == "2, then 1 from step 3, 2 from step 7"
    assert ThreadSchedule(4).describe() == "4 throughout"
    many = ThreadSchedule(2, tuple((i, 1 + i % 2) for i in range(1, 6)))
    assert many.describe() == "2 at the start, changed 5 times"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([2], "a thread record is a JSON object"),
        ({"initial": 2}, "needs 'initial' and 'changes'"),
        ({"initial": 0, "changes": []}, "initial must be an int >= 1, got 0"),
        ({"initial": 2, "changes": [[3, 1], [3, 2]]}, "change calls must increase"),
        ({"initial": 2, "changes": [[3]]}, "list of \\[call, threads\\] pairs"),
        ({"initial": 2, "changes": [[3, 0]]}, "thread count must be an int >= 1"),
        ({"initial": 2, "changes": [[9, 1]], "calls": 9}, "past the run's 9 calls"),
    ],
)
def test_a_bad_record_is_refused_saying_why(record: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThreadSchedule.from_dict(record)


# -------------------------------------------------------------------- recording and replaying


class ScriptedGuard:
    """A guard that sets the counts of ``script`` (``{poll: threads}``) at those polls."""

    def __init__(self, script: dict[int, int]) -> None:
        self.script = dict(script)
        self.polls = 0

    def poll(self) -> int:
        wanted = self.script.get(self.polls)
        self.polls += 1
        if wanted is not None:
            torch.set_num_threads(wanted)
        return torch.get_num_threads()


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The counts passed to ``torch.set_num_threads`` (a spy that calls through), from 1."""
    before = torch.get_num_threads()
    real = torch.set_num_threads
    real(1)
    seen: list[int] = []

    def spy(threads: int) -> None:
        seen.append(threads)
        real(threads)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    yield seen
    real(before)


# 24 training images in batches of 8 and 16 test images in batches of 8: 3 + 2 = 5 steps a
# epoch, 10 over two epochs.
STEPS_PER_EPOCH = 5


def _fit(
    out_dir: Path, *, epochs: int = 2, resume: Optional[Path] = None
) -> dict[str, Any]:
    """Train a tiny convolutional network (BatchNorm included) on fixed random data."""
    torch.manual_seed(0)
    images, labels = torch.randn(40, 3, 8, 8), torch.randint(0, 4, (40,))
    train = DataLoader(TensorDataset(images[:24], labels[:24]), batch_size=8)
    test = DataLoader(TensorDataset(images[24:], labels[24:]), batch_size=8)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fit(
        model, train, test, optimizer=optimizer, epochs=epochs, device="cpu", out_dir=out_dir,
        resume=resume, progress=False, handle_signals=False,
    )  # fmt: skip
    summary: dict[str, Any] = json.loads((out_dir / "summary.json").read_text())
    return summary


def _numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """The recorded metrics and losses (all but the times), compared exactly."""
    return {key: summary["history"][key] for key in HISTORY_KEYS if key != "seconds"}


def _guarded(monkeypatch: pytest.MonkeyPatch, script: dict[int, int]) -> None:
    monkeypatch.setattr(runtime, "_GUARD", [ScriptedGuard(script)])


def test_the_record_is_what_the_guard_applied(
    applied: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _guarded(monkeypatch, {2: 2, 6: 1, 8: 2, 9: 2})  # the last one changes nothing
    summary = _fit(tmp_path / "run")
    assert applied == [2, 1, 2, 2]
    assert summary["threads"] == {
        "initial": 1, "adaptive": True, "changes": [[2, 2], [6, 1], [8, 2]], "calls": 10,
    }  # fmt: skip
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["threads"]["next_call"] == 2 * STEPS_PER_EPOCH


def test_a_replay_applies_the_record_and_gives_the_same_numbers(
    applied: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _guarded(monkeypatch, {2: 2, 6: 1, 8: 2})
    original = _fit(tmp_path / "original")
    monkeypatch.setattr(runtime, "_GUARD", [None])
    torch.set_num_threads(1)
    applied.clear()
    schedule, _, _ = load_thread_record(tmp_path / "original")
    with threads_for_run(replay=schedule) as plan:
        assert runtime._GUARD[0] is None  # no guard: only the record decides
        replayed = _fit(tmp_path / "replay")
    assert plan.source == "--threads-from" and str(tmp_path / "original") in plan.describe()
    assert applied == [2, 1, 2, 1]  # the three changes, then threads_for_run restores 1
    assert _numbers(replayed) == _numbers(original)
    record = replayed["threads"]
    assert (record["initial"], record["changes"], record["calls"]) == (1, [[2, 2], [6, 1], [8, 2]], 10)
    assert record["adaptive"] is False
    assert record["replayed_from"] == str(tmp_path / "original" / "summary.json")


def test_a_replay_of_an_altered_record_applies_the_altered_counts(
    applied: list[int], tmp_path: Path
) -> None:
    altered = ThreadSchedule(2, ((1, 1), (7, 3)), calls=10)
    with threads_for_run(replay=altered):
        summary = _fit(tmp_path / "run")
    assert applied[:3] == [2, 1, 3]
    assert summary["threads"]["initial"] == 2
    assert summary["threads"]["changes"] == [[1, 1], [7, 3]]


def test_a_resumed_run_continues_the_count_and_its_replay_matches_it(
    applied: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    _guarded(monkeypatch, {2: 2})
    _fit(run, epochs=1)
    torch.set_num_threads(1)  # the resumed process starts with another count
    _guarded(monkeypatch, {1: 2})  # its second step is the run's step 6
    resumed = _fit(run, epochs=2, resume=run / "checkpoint_last.pt")
    assert resumed["threads"]["changes"] == [[2, 2], [5, 1], [6, 2]]
    assert resumed["threads"]["calls"] == 2 * STEPS_PER_EPOCH
    monkeypatch.setattr(runtime, "_GUARD", [None])
    torch.set_num_threads(1)
    applied.clear()
    schedule, _, _ = load_thread_record(run)
    with threads_for_run(replay=schedule):
        replayed = _fit(tmp_path / "replay")
    assert applied == [2, 1, 2, 1]  # the three changes, then threads_for_run restores 1
    assert _numbers(replayed) == _numbers(resumed)


def test_a_run_resumed_from_a_checkpoint_without_a_record_cannot_be_replayed(
    applied: list[int], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    _fit(run, epochs=1)
    checkpoint = torch.load(run / "checkpoint_last.pt", weights_only=True)
    del checkpoint["threads"]  # as an older release wrote it
    torch.save(checkpoint, run / "old.pt")
    resumed = _fit(run, epochs=2, resume=run / "old.pt")
    assert resumed["threads"]["complete"] is False
    with pytest.raises(ValueError, match=r"--threads-from .*: the run resumed from a checkpoint"):
        load_thread_record(run)


# ------------------------------------------------------------------------------ the command line


@pytest.mark.parametrize("module", [train_cli, reproduce_cli, demo_cli])
def test_threads_and_threads_from_are_exclusive(
    module: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        module.build_parser().parse_args(["--threads", "2", "--threads-from", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --threads-from: not allowed with argument --threads" in err[0]


def _summary(path: Path, config: dict[str, Any], threads: Optional[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"config": config}
    if threads is not None:
        data["threads"] = threads
    path.write_text(json.dumps(data))
    return path


RECORD = {"initial": 2, "adaptive": True, "changes": [[4, 1]], "calls": 20}


def _demo_config(*flags: str) -> dict[str, Any]:
    config = demo_cli.demo_config(demo_cli.build_parser().parse_args(list(flags)))
    plain: dict[str, Any] = json.loads(json.dumps(config.to_dict()))
    return plain


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.json", "--threads-from {p}/missing.json: no such file"),
        (lambda p: p, "--threads-from {p}: the folder holds no summary.json"),
        (
            lambda p: (p / "bad.json").write_text("{not json") and p / "bad.json",
            "--threads-from {p}/bad.json: not a readable JSON file",
        ),
        (
            lambda p: _summary(p / "s.json", _demo_config(), None),
            "--threads-from {p}/s.json: no thread record in it",
        ),
        (
            lambda p: _summary(p / "s.json", _demo_config("--experiment", "baseline"), RECORD),
            "--threads-from {p}/s.json: recorded by a run of another configuration, so its "
            "counts would not fall on the same steps (experiment: 'baseline' there, "
            "'pnn-fanout64-shared' here",
        ),
        (
            lambda p: _summary(p / "s.json", _demo_config("--manual-seed", "2"), RECORD),
            "manual_seed: 2 there, 1 here",
        ),
    ],
)
def test_demo_refuses_a_bad_threads_from_in_one_line_before_any_output(
    make: Any,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(demo_cli, "prepare_run", lambda *a, **k: pytest.fail("it ran"))
    assert demo_cli.main(["--threads-from", str(make(tmp_path))]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and message.format(p=tmp_path) in err


def test_demo_replays_a_matching_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _summary(tmp_path / "run" / "summary.json", _demo_config(), RECORD)
    seen: list[Optional[ThreadSchedule]] = []

    class Stop(Exception):
        pass

    class FakeRun:  # what prepare_run returns; its fit() sees the replayed schedule
        distributed = None
        mask_values = 0

        def fit(self, logger: Any = None) -> Any:
            seen.append(runtime._REPLAY[0])
            raise Stop

    monkeypatch.setattr(demo_cli, "prepare_run", lambda config: FakeRun())
    monkeypatch.setattr(demo_cli, "log_to_stdout", lambda: None)
    before = torch.get_num_threads()
    with pytest.raises(Stop):
        demo_cli.main(["--threads-from", str(tmp_path / "run")])
    assert torch.get_num_threads() == before and runtime._REPLAY[0] is None
    assert seen == [ThreadSchedule(2, ((4, 1),), adaptive=True, calls=20)]
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("threads:")]
    assert lines == [
        f"threads: 2 at the start, then as recorded in {path} (--threads-from: replayed "
        "exactly, not adapted)"
    ]


@pytest.mark.parametrize(
    ("record", "out_dir", "expected"),
    [
        ({"initial": 2, "changes": []}, None, "2 throughout; --threads 2 repeats this run"),
        ({"initial": 2, "changes": [[4, 1]]}, "r", "recorded; --threads-from r repeats this run"),
        (
            {"initial": 2, "changes": [[4, 1]], "calls": 9},
            None,
            'pass it to --threads-from (--out-dir saves it): {"initial": 2, "adaptive": false, '
            '"changes": [[4, 1]], "calls": 9}',
        ),
        (None, None, "thread counts: not recorded"),
    ],
)
def test_demo_says_how_to_repeat_the_run(
    record: Any, out_dir: Optional[str], expected: str
) -> None:
    assert expected in demo_cli.thread_sentence(record, out_dir)


def test_a_bare_record_as_the_demo_prints_it_is_replayed(tmp_path: Path) -> None:
    line = demo_cli.thread_sentence(RECORD, None)
    (tmp_path / "record.json").write_text(line[line.index("{") :])
    schedule, config, _ = load_thread_record(tmp_path / "record.json")
    assert schedule == ThreadSchedule.from_dict(RECORD) and config == {}


def test_train_refuses_a_record_of_another_configuration_before_any_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(train_cli, "log_to_stdout", lambda: None)
    flags = ["--net-type", "lenet", "--nfilters", "4", "--out-dir", str(tmp_path / "new")]
    config = json.loads(json.dumps(train_cli.resolve_config(flags).to_dict()))
    path = _summary(tmp_path / "old" / "summary.json", {**config, "nfilters": 8}, RECORD)
    assert train_cli.main([*flags, "--threads-from", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "error: --threads-from" in err and "nfilters: 8 there, 4 here" in err
    assert not (tmp_path / "new").exists()


def test_reproduce_needs_every_run_in_the_threads_from_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--only", "baseline", "--seeds", "1", "--threads-from", str(tmp_path / "old")]
    argv += ["--out-dir", str(tmp_path / "runs"), "--report", str(tmp_path / "r.md")]
    (tmp_path / "old").mkdir()
    assert reproduce_cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        f"error: --threads-from {tmp_path / 'old'}: no finished run {Path('baseline/seed-1')} there "
        f"({tmp_path / 'old' / 'baseline' / 'seed-1' / 'summary.json'} is missing)"
    )
    assert not (tmp_path / "runs").exists()


def test_train_replays_a_run_exactly(
    data_dir: Path,
    tmp_path: Path,
    applied: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A recorded train run whose counts changed at steps 1 and 3 (of 2 epochs x (2 + 1)).
    monkeypatch.setattr(train_cli, "log_to_stdout", lambda: None)
    configure = runtime.configure_threads
    monkeypatch.setattr(runtime, "configure_threads", _configure_with(ScriptedGuard({1: 2, 3: 1})))
    flags = ["--net-type", "lenet", "--nfilters", "4", "--nepochs", "2", "--train-subset", "40"]
    flags += ["--test-subset", "20", "--batch-size", "20", "--no-progress", "--device", "cpu"]
    flags += ["--data-dir", str(data_dir)]
    assert train_cli.main([*flags, "--out-dir", str(tmp_path / "a")]) == 0
    original = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert original["threads"]["changes"] == [[1, 2], [3, 1]]
    monkeypatch.setattr(runtime, "configure_threads", configure)
    capsys.readouterr()
    applied.clear()
    argv = [*flags, "--out-dir", str(tmp_path / "b"), "--threads-from", str(tmp_path / "a")]
    assert train_cli.main(argv) == 0
    replayed = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert _numbers(replayed) == _numbers(original)
    assert replayed["threads"]["changes"] == [[1, 2], [3, 1]]
    assert applied == [2, 1]
    out = capsys.readouterr().out
    assert f"then as recorded in {tmp_path / 'a' / 'summary.json'}" in out
    assert "thread counts: 1, then 2 from step 1, 1 from step 3 (replayed from " in out


def _configure_with(guard: ScriptedGuard) -> Any:
    """``configure_threads`` that installs ``guard`` (at 1 thread) instead of choosing."""

    def configure(threads: Optional[int] = None, *, replay: Any = None) -> runtime.ThreadPlan:
        torch.set_num_threads(1)
        runtime._GUARD[0] = guard  # type: ignore[assignment]
        return runtime.ThreadPlan(1, "available", 2, adaptive=True)

    return configure


def test_reproduce_replays_each_run_exactly(
    data_dir: Path,
    tmp_path: Path,
    applied: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(reproduce_cli, "log_to_stdout", lambda: None)
    report = SimpleNamespace(markdown="r.md", runs=[], comparisons=[], findings=[], authors=[])
    monkeypatch.setattr(reproduce_cli, "build_report", lambda *a, **k: report)  # not tested here
    configure = runtime.configure_threads
    monkeypatch.setattr(runtime, "configure_threads", _configure_with(ScriptedGuard({1: 2})))
    common = ["--only", "baseline", "--seeds", "1", "--nepochs", "1", "--train-subset", "40"]
    common += ["--test-subset", "30", "--data-dir", str(data_dir), "--conclusions", ""]
    common += ["--gpu-runs", "", "--img-dir", str(tmp_path / "img")]

    def reproduce(name: str, *flags: str) -> dict[str, Any]:
        argv = [*common, "--out-dir", str(tmp_path / name), "--report", str(tmp_path / f"{name}.md")]
        assert reproduce_cli.main([*argv, *flags]) == 0
        summary = tmp_path / name / "baseline" / "seed-1" / "summary.json"
        return dict(json.loads(summary.read_text()))

    original = reproduce("a")
    assert original["threads"]["changes"] == [[1, 2]]
    monkeypatch.setattr(runtime, "configure_threads", configure)
    capsys.readouterr()
    applied.clear()
    replayed = reproduce("b", "--threads-from", str(tmp_path / "a"))
    assert _numbers(replayed) == _numbers(original)
    assert replayed["threads"]["changes"] == [[1, 2]] and applied == [2, 1]
    out = capsys.readouterr().out
    assert f"threads: as recorded for each run in {tmp_path / 'a'} (--threads-from" in out
    assert "  thread counts: 1, then 2 from step 1 (replayed)" in out
