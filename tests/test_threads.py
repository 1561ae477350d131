"""``perturbnn.share_cpu``: the contention guard on a model of one's own, one line.

The guard's decisions are scripted here (as the harness's tests in ``tests/repro`` do): no timing,
no competing process (the speed is ``benchmarks/bench_contention.py``'s own-loop rows).
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import Tensor, nn

import perturbnn
from perturbnn import PerturbConv2d, share_cpu
from perturbnn.repro.thread_record import ThreadSchedule, load_thread_record
from perturbnn.threads import ContentionGuard


class ScriptedGuard:
    """A guard that sets the counts of ``script`` (``{poll: threads}``) at those polls."""

    def __init__(self, script: dict[int, int]) -> None:
        self.script = dict(script)
        self.polls = 0
        self.threads = torch.get_num_threads()

    def poll(self) -> int:
        wanted = self.script.get(self.polls)
        self.polls += 1
        if wanted is not None:
            torch.set_num_threads(wanted)
        self.threads = torch.get_num_threads()
        return self.threads


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Run the test at 2 threads (the user's choice), then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        PerturbConv2d(3, 6, nmasks=2, input_size=8, unique_masks=False), nn.ReLU(), nn.Flatten()
    )


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def counts_seen(model: nn.Module, steps: int, outputs: Optional[list[Tensor]] = None) -> list[int]:
    """The thread count in force inside each of ``steps`` forward calls (their outputs are
    appended to ``outputs``)."""
    seen: list[int] = []
    probe = model[0].register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    for _ in range(steps):
        out = model(X)
        if outputs is not None:
            outputs.append(out)
    probe.remove()
    return seen


# ------------------------------------------------------------------------- polling, restoring


@pytest.mark.usefixtures("two_threads")
def test_the_hook_polls_every_forward_records_and_remove_restores() -> None:
    model = network()
    handle = share_cpu(model)
    handle.guard = ScriptedGuard({2: 1, 5: 2})  # type: ignore[assignment]
    assert counts_seen(model, 7) == [2, 2, 1, 1, 1, 2, 2]
    assert handle.record == {
        "initial": 2,
        "adaptive": True,
        "changes": [[2, 1], [5, 2]],
        "calls": 7,
    }
    handle.guard.script = {0: 1}  # type: ignore[union-attr]
    handle.guard.polls = 0  # type: ignore[union-attr]
    model(X)
    assert torch.get_num_threads() == 1
    handle.remove()
    assert torch.get_num_threads() == 2  # the count found
    assert len(model._forward_pre_hooks) == 0
    model(X)
    assert handle.calls == 8  # removed: no longer counted


class FakeMachine:
    """A clock and ``/proc/stat`` under the test's control (as tests/repro/test_runtime.py)."""

    def __init__(self) -> None:
        self.now = self.busy = self.own = 0.0

    def advance(self, seconds: float, *, others: float, own: float) -> None:
        self.now += seconds
        self.busy += seconds * (others + own)
        self.own += seconds * own

    def guard(self, interval: float = 1.0) -> ContentionGuard:
        return ContentionGuard(
            2, {0, 1}, interval=interval, clock=lambda: self.now,
            own_cpu=lambda: self.own, read_stat=lambda: (self.busy, 0.0),
        )  # fmt: skip


@pytest.mark.usefixtures("two_threads")
def test_the_real_guard_decides_once_per_interval_through_the_hook() -> None:
    machine, model = FakeMachine(), network()
    handle = share_cpu(model)
    handle.guard = machine.guard()
    machine.advance(0.5, others=2.0, own=0.0)
    model(X)
    assert torch.get_num_threads() == 2  # too early to decide
    machine.advance(0.6, others=2.0, own=0.0)
    model(X)
    assert torch.get_num_threads() == 1  # a competitor: one thread
    machine.advance(1.5, others=0.0, own=1.0)
    model(X)
    assert torch.get_num_threads() == 2  # it stopped
    assert handle.record["changes"] == [[1, 1], [2, 2]]
    handle.remove()


@pytest.mark.usefixtures("two_threads")
def test_a_quiet_machine_changes_nothing_and_gives_the_same_results() -> None:
    machine, plain, shared = FakeMachine(), network(), network()
    handle = share_cpu(shared)
    handle.guard = machine.guard()
    for _ in range(4):
        machine.advance(1.5, others=0.3, own=1.7)  # background noise only
        out, expected = shared(X), plain(X)
        assert torch.equal(out, expected)
    assert handle.record == {"initial": 2, "adaptive": True, "changes": [], "calls": 4}
    handle.remove()


@pytest.mark.usefixtures("two_threads")
def test_the_users_count_is_the_maximum() -> None:
    torch.set_num_threads(1)
    handle = share_cpu(network())
    assert handle.guard is None  # one thread: nothing to lower
    handle.remove()
    torch.set_num_threads(2)
    handle = share_cpu(network(), max_threads=1)
    assert torch.get_num_threads() == 1
    handle.remove()
    assert torch.get_num_threads() == 2
    with share_cpu(network()) as handle:
        assert handle.guard is not None and handle.guard.max_threads == 2


# -------------------------------------------------------------------------- record and replay


@pytest.mark.usefixtures("two_threads")
def test_the_record_replays_through_the_harness_and_the_library(tmp_path: Path) -> None:
    model = network()
    handle = share_cpu(model)
    handle.guard = ScriptedGuard({1: 1, 4: 2})  # type: ignore[assignment]
    original: list[Tensor] = []
    assert counts_seen(model, 6, original) == [2, 1, 1, 1, 2, 2]
    handle.remove()
    file = tmp_path / "threads.json"
    file.write_text(json.dumps(handle.record))
    schedule, config, _ = load_thread_record(file)  # what --threads-from reads
    assert schedule == ThreadSchedule(2, ((1, 1), (4, 2)), adaptive=True, calls=6)
    assert config == {}
    assert ThreadSchedule.from_dict(handle.record).to_dict() == handle.record
    torch.set_num_threads(1)
    again, replayed = network(), []
    with share_cpu(again, replay=json.loads(file.read_text())) as replay:
        assert replay.guard is None
        assert counts_seen(again, 6, replayed) == [2, 1, 1, 1, 2, 2]  # the same counts
        assert replay.record["changes"] == [[1, 1], [4, 2]]
        assert not replay.record["adaptive"]
    assert torch.get_num_threads() == 1  # the count found
    assert all(torch.equal(a, b) for a, b in zip(original, replayed, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "net"}, TypeError, "model must be a torch.nn.Module, got str"),
        ({"interval": 0}, ValueError, "interval must be a positive number of seconds, got 0"),
        ({"interval": "1"}, TypeError, "interval must be a number of seconds"),
        ({"max_threads": 0}, ValueError, "max_threads must be a positive int, got 0"),
        ({"replay": [2]}, TypeError, "replay must be a thread record"),
        ({"replay": {"initial": 0, "changes": []}}, ValueError, "replay\\['initial'\\]"),
        ({"replay": {"initial": 2, "changes": [[3, 1], [2, 2]]}}, ValueError, "increasing"),
    ],
)
def test_bad_arguments_are_refused_before_anything_changes(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    kwargs = dict(kwargs)
    model = kwargs.pop("model", network())
    before = torch.get_num_threads()
    with pytest.raises(error, match=message):
        share_cpu(model, **kwargs)  # type: ignore[arg-type]
    assert torch.get_num_threads() == before
    if isinstance(model, nn.Module):
        assert len(model._forward_pre_hooks) == 0


def test_sharing_twice_is_refused() -> None:
    model = network()
    with share_cpu(model), pytest.raises(ValueError, match="already shares the CPU"):
        share_cpu(model)


# ------------------------------------------------------ copies, saving, compile, export, DDP


def test_copies_pickles_and_saves_carry_no_guard_and_no_extra_keys() -> None:
    plain, model = network(), network()
    with share_cpu(model) as handle:
        expected = model(X)
        assert model.state_dict().keys() == plain.state_dict().keys()
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        plain.load_state_dict(torch.load(buffer, weights_only=True))  # strict: no extra keys
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        copies = [
            copy.deepcopy(model),
            pickle.loads(pickle.dumps(model)),
            torch.load(buffer, weights_only=False),
        ]
        for other in copies:
            assert torch.equal(other(X), expected)
            share_cpu(other).remove()  # a copy can share the CPU on its own
        assert handle.calls == 1  # the copies' forwards were not counted


def test_torch_compile_keeps_the_hook_and_the_results() -> None:
    model = network()
    expected = model(X)
    with share_cpu(model) as handle:
        compiled = torch.compile(model)
        for _ in range(2):
            torch.testing.assert_close(compiled(X), expected)
        assert handle.calls == 2  # the guard is asked at every compiled call too


def test_export_and_onnx_leave_the_hook_out(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = network().eval()
    expected = model(X)
    with share_cpu(model) as handle:
        for strict in (False, True):
            program = torch.export.export(model, (X,), strict=strict)
            torch.testing.assert_close(program.module()(X), expected)
            assert "set_num_threads" not in program.graph_module.code
        for dynamo in (True, False):  # torch.export's graph, TorchScript tracing
            path = tmp_path / f"model-{dynamo}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (X,), str(path), dynamo=dynamo)
            session = ort.InferenceSession(str(path))
            (out,) = session.run(None, {session.get_inputs()[0].name: X.numpy()})
            torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-5)
        assert handle.calls == 0  # tracing is no step


def test_ddp_wraps_a_shared_model(tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model, plain = network(), network()
        with share_cpu(model) as handle:
            wrapped = DistributedDataParallel(model)
            wrapped(X).sum().backward()
            plain(X).sum().backward()
            assert handle.calls == 1
        for ours, theirs in zip(model.parameters(), plain.parameters()):
            torch.testing.assert_close(ours.grad, theirs.grad)
        shared_wrapper = DistributedDataParallel(network())
        with share_cpu(shared_wrapper) as outer:
            shared_wrapper(X)
            assert outer.calls == 1
    finally:
        dist.destroy_process_group()


def test_share_cpu_is_exported() -> None:
    assert perturbnn.share_cpu is share_cpu and "share_cpu" in perturbnn.__all__
