"""The thread count of a run: what the user chose wins, else the CPUs the process may use, lowered
while other processes keep them busy (no timing here: the speed is ``bench_contention.py``'s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from perturbnn import threads
from perturbnn.repro import runtime
from perturbnn.repro.cli import demo as demo_cli
from perturbnn.repro.cli import reproduce as reproduce_cli
from perturbnn.repro.cli import train as train_cli
from perturbnn.repro.runtime import (
    ContentionGuard,
    available_cpus,
    cgroup_cpu_quota,
    choose_threads,
    threads_for_run,
)

SRC = Path(__file__).resolve().parents[2] / "src"

# ------------------------------------------------------------------------------------ choosing


def test_threads_flag_wins_over_everything() -> None:
    plan = choose_threads(3, environ={"OMP_NUM_THREADS": "2"}, current=5, available=2, defaults={2})
    assert (plan.threads, plan.source, plan.adaptive) == (3, "--threads", False)


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_environment_variable_wins_and_is_kept(var: str) -> None:
    plan = choose_threads(environ={var: "3"}, current=3, available=2, defaults={2, 3})
    assert (plan.threads, plan.source, plan.adaptive) == (3, var, False)
    assert f"{var}=" in plan.describe()


def test_empty_environment_variable_does_not_count() -> None:
    plan = choose_threads(environ={"OMP_NUM_THREADS": " "}, current=2, available=2, defaults={2})
    assert plan.source == "available"


def test_users_set_num_threads_wins() -> None:
    # 1 is none of the counts torch picks by itself on this (simulated) 4-core machine
    plan = choose_threads(environ={}, current=1, available=4, defaults={4})
    assert (plan.threads, plan.source, plan.adaptive) == (1, "torch.set_num_threads", False)
    assert "torch.set_num_threads" in plan.describe()


def test_default_follows_the_available_cpus_and_adapts() -> None:
    plan = choose_threads(environ={}, current=8, available=2, defaults={8, 16})
    assert (plan.threads, plan.source, plan.adaptive) == (2, "available", True)
    assert plan.describe().startswith("threads: 2 (the CPUs this process may use: 2)")


def test_never_more_than_torchs_default() -> None:
    # torch chose the 4 physical cores of 8 logical CPUs: keep 4
    plan = choose_threads(environ={}, current=4, available=8, defaults={4, 8})
    assert plan.threads == 4


@pytest.mark.parametrize("bad", [0, -1])
def test_threads_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match=f"threads must be a positive int, got {bad}"):
        choose_threads(bad)


@pytest.mark.parametrize("bad", ["2", 2.0, True])
def test_threads_must_be_an_int(bad: Any) -> None:
    with pytest.raises(TypeError, match="threads must be a positive int"):
        choose_threads(bad)


# ------------------------------------------------------------------------ what the process sees


def test_affinity_caps_the_cpus() -> None:
    assert available_cpus({0}, read_quota=False) == 1
    assert available_cpus({0, 1, 2, 3}, read_quota=False) == 4


@pytest.mark.parametrize(("quota", "expected"), [(1.5, 2), (0.5, 1), (2.0, 2), (16.0, 4)])
def test_cgroup_quota_caps_the_cpus(quota: float, expected: int) -> None:
    assert available_cpus({0, 1, 2, 3}, quota) == expected


def _files(contents: dict[str, str]) -> Any:
    return lambda path: contents.get(path)


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ({"/sys/fs/cgroup/cpu.max": "150000 100000\n"}, 1.5),
        ({"/sys/fs/cgroup/cpu.max": "max 100000\n"}, None),
        (
            {
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000\n",
                "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            },
            2.0,
        ),
        (
            {
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
                "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            },
            None,
        ),
        ({}, None),
    ],
)
def test_cgroup_quota_is_read_from_v2_or_v1(
    contents: dict[str, str], expected: Optional[float]
) -> None:
    assert cgroup_cpu_quota(_files(contents)) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_a_process_pinned_to_one_cpu_chooses_one_thread() -> None:
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "os.environ.pop('OMP_NUM_THREADS', None); os.environ.pop('MKL_NUM_THREADS', None); "
        "from perturbnn.repro.runtime import choose_threads; p = choose_threads(); "
        "print(p.threads, p.source, p.available)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "available", "1"]


# ------------------------------------------------------------------------------------- the guard


class FakeMachine:
    """A clock and CPU counters that the test advances: ``others`` CPUs busy besides us."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0
        self.own = 0.0
        self.readable = True
        self.applied: list[int] = []

    def advance(self, seconds: float, *, others: float, own: float) -> None:
        self.now += seconds
        self.busy += seconds * (others + own)
        self.own += seconds * own

    def guard(self, max_threads: int = 2, cpus: int = 2) -> ContentionGuard:
        return ContentionGuard(
            max_threads,
            set(range(cpus)),
            interval=1.0,
            set_threads=self.applied.append,
            clock=lambda: self.now,
            own_cpu=lambda: self.own,
            read_stat=lambda: (self.busy, 0.0) if self.readable else None,
        )


def test_guard_drops_to_one_thread_beside_a_busy_process_and_comes_back() -> None:
    machine = FakeMachine()
    guard = machine.guard()
    machine.advance(1.5, others=1.0, own=1.0)  # a competitor took a whole CPU
    assert guard.poll() == 1
    machine.advance(1.5, others=1.3, own=0.7)
    assert guard.poll() == 1
    machine.advance(1.5, others=0.0, own=1.0)  # it stopped
    assert guard.poll() == 2
    assert machine.applied == [1, 2]


def test_guard_keeps_the_threads_on_a_quiet_machine() -> None:
    machine = FakeMachine()
    guard = machine.guard()
    machine.advance(2.0, others=0.3, own=2.0)  # a little background noise
    assert guard.poll() == 2
    assert machine.applied == []


def test_guard_decides_only_once_per_interval() -> None:
    machine = FakeMachine()
    guard = machine.guard()
    machine.advance(0.5, others=2.0, own=0.0)
    assert guard.poll() == 2  # too early to tell
    machine.advance(0.6, others=2.0, own=0.0)
    assert guard.poll() == 1


def test_guard_on_a_larger_machine_keeps_the_free_cpus() -> None:
    machine = FakeMachine()
    guard = machine.guard(max_threads=8, cpus=8)
    machine.advance(2.0, others=3.0, own=5.0)
    assert guard.poll() == 5


def test_guard_without_proc_stat_does_nothing() -> None:
    machine = FakeMachine()
    machine.readable = False
    guard = machine.guard()
    machine.advance(2.0, others=2.0, own=0.0)
    assert guard.poll() == 2
    assert machine.applied == []


def test_threads_for_run_sets_then_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    target = 2 if before != 2 else 1
    with threads_for_run(target) as plan:
        assert plan.threads == torch.get_num_threads() == target
        assert runtime._GUARD[0] is None  # a count the user chose does not adapt
    assert torch.get_num_threads() == before


def test_adaptive_run_installs_and_removes_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = runtime.ThreadPlan(2, "available", 2, adaptive=True)
    monkeypatch.setattr(runtime, "choose_threads", lambda threads=None: plan)
    before = torch.get_num_threads()
    with threads_for_run():
        assert isinstance(runtime._GUARD[0], ContentionGuard)
        runtime.adapt_threads()  # too early to decide: nothing changes
        assert torch.get_num_threads() == 2
    assert runtime._GUARD[0] is None
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------ the command line


@pytest.mark.parametrize("module", [train_cli, reproduce_cli, demo_cli])
@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_threads_flag_is_checked_and_named(
    module: Any, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        module.build_parser().parse_args(["--threads", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --threads: must be a positive int" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("module", [train_cli, reproduce_cli, demo_cli])
def test_threads_flag_is_parsed(module: Any) -> None:
    assert module.build_parser().parse_args(["--threads", "3"]).threads == 3
    assert module.build_parser().parse_args([]).threads is None


@pytest.mark.parametrize(
    ("flags", "line", "guarded"),
    [
        (["--threads", "1"], "threads: 1 (--threads)", False),
        (
            [],
            "threads: 2 (the CPUs this process may use: 2); fewer while other processes keep the CPUs busy",
            True,
        ),
    ],
)
def test_demo_runs_under_the_thread_choice_and_restores_it(
    flags: list[str],
    line: str,
    guarded: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The README's main job: the same choice, printed once, and the guard while it trains.
    for var in runtime.THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(runtime, "available_cpus", lambda *a, **k: 2)
    monkeypatch.setattr(runtime, "_affinity", lambda: {0, 1})
    monkeypatch.setattr(runtime, "_torch_defaults", lambda available: {2})
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[tuple[int, bool]] = []

    class Stop(Exception):
        pass

    class FakeRun:  # what prepare_run returns; fit() sees the thread choice and the guard
        distributed = None
        mask_values = 0

        def fit(self, logger: Any = None) -> Any:
            seen.append((torch.get_num_threads(), runtime._GUARD[0] is not None))
            raise Stop

    monkeypatch.setattr(demo_cli, "prepare_run", lambda config: FakeRun())
    monkeypatch.setattr(demo_cli, "log_to_stdout", lambda: None)  # no handler on capsys's stream
    try:
        with pytest.raises(Stop):
            demo_cli.main(flags)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(original)
    out = capsys.readouterr().out
    assert [x for x in out.splitlines() if x.startswith("threads:")] == [line]
    assert seen == [(int(line.split()[1]), guarded)]
    assert after == 2 and runtime._GUARD[0] is None


def test_threads_flag_is_not_part_of_the_run_configuration() -> None:
    config = train_cli.resolve_config(["--threads", "1", "--net-type", "lenet"])
    assert "threads" not in config.to_dict()


DATA_DIR = Path(
    os.environ.get("PERTURBNN_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data"
)


@pytest.mark.skipif(
    not ((DATA_DIR / "cifar10").is_dir() or list(DATA_DIR.glob("cifar10_*.npz"))),
    reason=f"CIFAR-10 not found in {DATA_DIR} (set PERTURBNN_DATA_DIR)",
)
@pytest.mark.parametrize(
    ("flags", "env", "line"),
    [
        (["--threads", "1"], {}, "threads: 1 (--threads)"),
        ([], {"OMP_NUM_THREADS": "1"}, "threads: 1 (OMP_NUM_THREADS=1)"),
    ],
)
def test_train_prints_the_thread_choice_once(
    flags: list[str], env: dict[str, str], line: str, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "perturbnn.repro", "train", "--net-type", "lenet",
        "--nfilters", "4", "--nepochs", "1", "--train-subset", "40", "--test-subset", "20",
        "--batch-size", "20", "--no-progress", "--device", "cpu", "--data-dir", str(DATA_DIR),
        "--out-dir", str(tmp_path / "run"), *flags,
    ]  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    full_env.update(env, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        command, capture_output=True, text=True, env=full_env, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [x for x in proc.stdout.splitlines() if x.startswith("threads:")] == [line]


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="no /proc/stat here")
def test_proc_stat_is_read_for_the_watched_cpus() -> None:
    cpus = set(os.sched_getaffinity(0))
    stat = threads._read_proc_stat(cpus)
    assert stat is not None
    busy, total = stat
    assert 0 < busy <= total
    none = threads._read_proc_stat({10**6})  # a CPU that does not exist: nothing counted
    assert none == (0.0, 0.0)


def test_training_and_test_loops_consult_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from perturbnn.repro.loop import evaluate, train_one_epoch

    class CountingGuard:
        polls = 0

        def poll(self) -> int:
            CountingGuard.polls += 1
            return 1

    monkeypatch.setattr(runtime, "_GUARD", [CountingGuard()])
    data = TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, DataLoader(data, batch_size=4), optimizer, device="cpu", epoch=1)
    assert CountingGuard.polls == 3
    evaluate(model, DataLoader(data, batch_size=6), device="cpu")
    assert CountingGuard.polls == 5
