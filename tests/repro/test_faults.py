"""Faults during training: kills, signals, divergence, foreign checkpoints, bad folders, bad data.

Each test is one row of ``docs/robustness.md``. The in-process tests use tiny synthetic data and
run in seconds; the ``slow`` ones start ``examples/cifar10_repro.py`` (or a save loop) as a
subprocess on a few hundred real CIFAR-10 images, with timeouts on every wait.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from perturbnn import build_model
from perturbnn.repro import fit as fit_mod
from perturbnn.repro import loop as loop_mod
from perturbnn.repro import outdir as _outdir
from perturbnn.repro.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from perturbnn.repro.fit import fit
from perturbnn.repro.optim import make_optimizer, make_scheduler
from perturbnn.repro.outdir import OutDirError, check_out_dir
from perturbnn.repro.signals import StopOnSignal, TrainingInterrupted

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "cifar10_repro.py"
DATA_DIR = Path(
    os.environ.get("PERTURBNN_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
HAVE_CIFAR10 = (DATA_DIR / "cifar10").is_dir() or bool(list(DATA_DIR.glob("cifar10_*.npz")))
needs_cifar10 = pytest.mark.skipif(
    not HAVE_CIFAR10, reason=f"CIFAR-10 not found in {DATA_DIR} (set PERTURBNN_DATA_DIR)"
)
# One thread per subprocess: two of them are compared bit for bit, and CI has two cores.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# ------------------------------------------------------------------------------ helpers


def blobs(n: int, *, seed: int) -> TensorDataset:
    """Two well separated classes of 3x4x4 "images"."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, 4, 4, generator=g) * 0.5 + (2 * y - 1).view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    """96 training samples in 6 shuffled batches, 40 test samples in 3 batches."""
    train = DataLoader(
        blobs(96, seed=0), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    return train, DataLoader(blobs(40, seed=1), batch_size=16)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 2))


class AtForward:
    """Call ``action`` at the ``at``-th forward pass made in training (or in eval) mode."""

    def __init__(
        self, model: nn.Module, *, at: int, action: Callable[[], None], training: bool = True
    ) -> None:
        self.at, self.action, self.training, self.count = at, action, training, 0
        model.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: Any) -> None:
        if module.training == self.training:
            self.count += 1
            if self.count == self.at:
                self.action()


def send(signum: int, times: int = 1) -> Callable[[], None]:
    def action() -> None:
        for _ in range(times):
            os.kill(os.getpid(), signum)

    return action


def run(
    epochs: int,
    out_dir: Path | None,
    *,
    resume: Path | None = None,
    seed: int = 0,
    hook: Callable[[nn.Module], Any] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[fit_mod.FitSummary, nn.Module]:
    model = tiny_model(seed)
    optimizer = make_optimizer("Adam", model, lr=0.01)
    scheduler = make_scheduler(optimizer, "CIFAR10", milestones=[2])
    if hook is not None:
        hook(model)
    train, test = loaders()
    summary = fit(
        model,
        train,
        test,
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=epochs,
        device="cpu",
        out_dir=out_dir,
        resume=resume,
        loss_fn=loss_fn,
        progress=False,
    )
    return summary, model


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[fit_mod.FitSummary, nn.Module]:
    """Four uninterrupted epochs: what every interrupted-then-resumed run must reproduce."""
    return run(4, tmp_path_factory.mktemp("straight"))


def assert_same_run(resumed: fit_mod.FitSummary, model: nn.Module, straight: Any) -> None:
    summary, straight_model = straight
    for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "original_acc"):
        assert resumed.history[key] == summary.history[key], key
    for p, q in zip(straight_model.parameters(), model.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------ kill mid-save

SAVE_LOOP = """
import sys, torch
from torch import nn
from perturbnn.repro.checkpoint import save_checkpoint
model = nn.Linear(1024, 1024)  # 4 MB of weights per checkpoint
epoch = 0
while True:
    epoch += 1
    with torch.no_grad():
        model.weight.fill_(epoch)
        model.bias.fill_(epoch)
    save_checkpoint(sys.argv[1], model=model, epoch=epoch)
    print(epoch, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_save_loop_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    path = tmp_path / "checkpoint_last.pt"
    tmp = path.with_name(path.name + ".tmp")
    mid_save = 0
    for delay in (0.0, 0.05, 0.2):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env=SUBPROCESS_ENV,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # blocks until one save has completed
            assert first.strip().isdigit(), first
            time.sleep(delay)
            deadline = time.monotonic() + 10
            while not tmp.exists() and time.monotonic() < deadline:
                pass  # aim at a moment when a save is under way
            proc.kill()  # SIGKILL: no handler, no cleanup
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        mid_save += tmp.exists()
        checkpoint = load_checkpoint(path)  # never truncated
        epoch = checkpoint["epoch"]
        assert epoch >= int(first)
        assert torch.equal(checkpoint["model"]["weight"], torch.full((1024, 1024), float(epoch)))
    assert mid_save >= 1, "no kill landed inside a save; the test proved nothing"


def test_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint_last.pt"
    model = tiny_model()
    save_checkpoint(path, model=model, epoch=1)

    def disk_full(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OutDirError, match=r"No space left on device.*previous checkpoint_last\.pt"):
        save_checkpoint(path, model=model, epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_disk_full_during_fit_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    calls = 0

    def full_on_third(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1  # 1: start state, 2: epoch 1, 3: epoch 2
        if calls == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_on_third)
    with pytest.raises(OutDirError, match="No space left on device"):
        run(3, tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["epoch"] == 1


# ------------------------------------------------------------------------------ signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_step_and_resume_matches(
    tmp_path: Path, signum: int, straight: Any
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # Forward pass 9 of training is epoch 2, step 3 (6 steps per epoch).
    with pytest.raises(TrainingInterrupted) as info:
        run(4, tmp_path, hook=lambda m: AtForward(m, at=9, action=send(signum)))
    exc = info.value
    assert exc.signum == signum and exc.exit_code == 128 + signum
    assert exc.epochs_completed == 1
    assert exc.checkpoint == tmp_path / "checkpoint_last.pt"
    assert "in epoch 2 after step 3" in str(exc) and "holds epoch 1" in str(exc)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers put back

    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert checkpoint["epoch"] == 1 and checkpoint["history"]["epoch"] == [1]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]

    resumed, model = run(4, tmp_path / "resumed", resume=tmp_path / "checkpoint_last.pt", seed=9)
    assert_same_run(resumed, model, straight)


def test_signal_in_the_first_epoch_saves_the_starting_state(tmp_path: Path, straight: Any) -> None:
    with pytest.raises(TrainingInterrupted) as info:
        run(4, tmp_path, hook=lambda m: AtForward(m, at=2, action=send(signal.SIGINT)))
    assert info.value.epochs_completed == 0
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["epoch"] == 0
    resumed, model = run(4, tmp_path / "resumed", resume=tmp_path / "checkpoint_last.pt", seed=9)
    assert_same_run(resumed, model, straight)


def test_signal_during_the_test_pass_completes_the_epoch(tmp_path: Path) -> None:
    # Eval forward 4 is the first test batch of epoch 2 (3 test batches per epoch).
    with pytest.raises(TrainingInterrupted) as info:
        run(
            4,
            tmp_path,
            hook=lambda m: AtForward(m, at=4, action=send(signal.SIGTERM), training=False),
        )
    assert info.value.epochs_completed == 2
    assert "at the end of epoch 2" in str(info.value)
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["epoch"] == 2


def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    with pytest.raises(TrainingInterrupted) as info:
        run(4, tmp_path, hook=lambda m: AtForward(m, at=9, action=send(signal.SIGINT, times=2)))
    assert "received again" in str(info.value)
    assert info.value.epochs_completed == 1
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["epoch"] == 1


def test_handle_signals_false_leaves_ctrl_c_alone(tmp_path: Path) -> None:
    model = tiny_model()
    AtForward(model, at=2, action=send(signal.SIGINT))
    train, test = loaders()
    optimizer = make_optimizer("Adam", model, lr=0.01)
    # Python's own Ctrl-C handler, as in a terminal: a job started in the background by a
    # non-interactive shell (`cmd &`) inherits SIGINT ignored, and Python then keeps it ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            fit(model, train, test, optimizer=optimizer, epochs=2, device="cpu", progress=False,
                handle_signals=False)  # fmt: skip
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not isinstance(info.value, TrainingInterrupted)


def test_stop_on_signal_outside_the_main_thread_does_nothing() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with StopOnSignal() as stop:
                assert not stop.requested()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "StopOnSignal hung outside the main thread"
    assert not errors


# ------------------------------------------------------------------------------ divergence


def nan_at(step: int) -> Callable[[Tensor, Tensor], Tensor]:
    """Cross-entropy, but NaN at the ``step``-th training call (counted over all epochs)."""
    calls = 0

    def loss_fn(logits: Tensor, targets: Tensor) -> Tensor:
        nonlocal calls
        loss = F.cross_entropy(logits, targets)
        if logits.requires_grad:  # training, not the test pass
            calls += 1
            if calls == step:
                return loss * float("nan")
        return loss

    return loss_fn


def test_nan_loss_names_epoch_and_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_holder: list[nn.Module] = []
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 3:"):
        run(4, tmp_path, loss_fn=nan_at(9), hook=model_holder.append)
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    # On the CPU the check runs before backward(): the model in memory is still finite too.
    assert all(torch.isfinite(p).all() for p in model_holder[0].parameters())
    assert "checkpoint_last.pt still holds epoch 1" in caplog.text


def test_infinite_loss_found_late_still_names_the_first_bad_step() -> None:
    # On an accelerator the check runs every 50 steps; the message keeps the first bad step.
    with pytest.raises(FloatingPointError, match=r"inf at epoch 2, step 3 \(detected at step 50\)"):
        loop_mod._check_finite(torch.tensor(3), torch.tensor(float("inf")), epoch=2, at_step=50)


# ------------------------------------------------------------------------------ foreign checkpoints


def lenet(nmasks: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        "lenet", nfilters=6, nmasks=nmasks, in_channels=3, input_size=32, nclasses=10
    )


def test_checkpoint_of_other_nmasks_is_refused_listing_the_keys(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", model=lenet(nmasks=2), epoch=3)
    model = lenet(nmasks=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        restore_checkpoint(load_checkpoint(path), model)
    message = str(info.value)
    assert "does not fit this model" in message
    assert "features.0.0.noise.masks: shape (3, 2, 32, 32) in the checkpoint, (3, 1, 32, 32)" in (
        message
    )
    assert "features.0.0.weight" in message
    for key, value in model.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key])


def test_checkpoint_of_other_architecture_is_refused_listing_the_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    other = build_model("cifarnet", nfilters=6, nmasks=1, in_channels=3, input_size=32, nclasses=10)
    path = save_checkpoint(tmp_path / "c.pt", model=other, epoch=1)
    with pytest.raises(CheckpointError) as info:
        fit(lenet(1), *loaders(), optimizer=make_optimizer("SGD", lenet(1), lr=0.1), epochs=1,
            device="cpu", resume=path, progress=False)  # fmt: skip
    message = str(info.value)
    assert re.search(r"\d+ mismatched key\(s\)", message)
    assert "missing from the checkpoint: " in message and "more" in message  # long lists cut
    assert len(message) < 2000


def test_optimizer_state_of_other_parameters_is_refused(tmp_path: Path) -> None:
    model = tiny_model()
    foreign = make_optimizer("Adam", nn.Linear(3, 2), lr=0.1)
    path = save_checkpoint(tmp_path / "c.pt", model=model, epoch=1, optimizer=foreign)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        restore_checkpoint(load_checkpoint(path), model, make_optimizer("Adam", model, lr=0.1))


# ------------------------------------------------------------------------------ output folder


def count_training_steps(model: nn.Module) -> AtForward:
    return AtForward(model, at=0, action=lambda: None)


def test_out_dir_under_a_file_is_refused_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    steps: list[AtForward] = []
    with pytest.raises(OutDirError, match=r"not-a-folder' is a file, not a folder"):
        run(2, blocker / "run", hook=lambda m: steps.append(count_training_steps(m)))
    assert steps[0].count == 0
    with pytest.raises(OutDirError, match="exists and is not a folder"):
        check_out_dir(blocker)


def test_unwritable_out_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(fd: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "fsync", read_only)
    with pytest.raises(OutDirError, match=r"is not writable: .*Read-only file system"):
        check_out_dir(tmp_path / "run")
    assert not list((tmp_path / "run").iterdir())  # the probe file is removed


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores chmod")
def test_read_only_out_dir_is_refused(tmp_path: Path) -> None:  # pragma: no cover - as root
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutDirError, match="not writable"):
            check_out_dir(folder)
    finally:
        folder.chmod(0o755)


def test_full_disk_is_reported_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        _outdir.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000)
    )
    steps: list[AtForward] = []
    with pytest.raises(OutDirError, match=r"has 0\.0 MB free, but the checkpoints need about"):
        run(2, tmp_path / "run", hook=lambda m: steps.append(count_training_steps(m)))
    assert steps[0].count == 0


def test_checkpoint_size_estimate_covers_the_real_file(tmp_path: Path) -> None:
    model = lenet(2)
    optimizer = make_optimizer("Adam", model, lr=0.1)
    estimate = _outdir.estimate_checkpoint_bytes(model, optimizer)  # no state yet: 2 x params
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "c.pt", model=model, epoch=1, optimizer=optimizer)
    assert path.stat().st_size <= estimate
    with pytest.raises(ValueError, match="need_bytes must be non-negative, got -1"):
        check_out_dir(tmp_path, need_bytes=-1)


# ------------------------------------------------------------------------------ data: downloads


def test_only_the_download_module_asks_torchvision_to_download() -> None:
    """``download=True`` is written in ``repro/data/download.py`` only (everywhere else
    ``download=`` passes the user's choice on, ``False`` by default); nothing imports a network
    client: the network is torchvision's (``tests/repro/test_download.py`` checks that nothing
    is requested unless ``--download`` is given)."""
    offenders = []
    allowed = REPO / "src" / "perturbnn" / "repro" / "data" / "download.py"
    files = [*sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "examples").glob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if (
                        keyword.arg == "download"
                        and isinstance(keyword.value, ast.Constant)
                        and keyword.value.value is not False
                        and path != allowed
                    ):
                        offenders.append(f"{path}:{node.lineno} download=...")
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if name.split(".")[0] in {"urllib", "requests", "http", "httpx", "socket"}:
                    offenders.append(f"{path}:{node.lineno} imports {name}")
    assert not offenders


# ------------------------------------------------------------------------------ the example


def example(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=SUBPROCESS_ENV,
        check=False,
    )


def small(out_dir: Path, nepochs: int) -> list[str]:
    """A lenet run on 256 training and 100 test images: about a second per epoch."""
    return [
        "--net-type", "lenet", "--nfilters", "6", "--nepochs", str(nepochs),
        "--train-subset", "256", "--test-subset", "100", "--batch-size", "32",
        "--learning-rate", "1e-3", "--no-progress", "--device", "cpu",
        "--data-dir", str(DATA_DIR), "--out-dir", str(out_dir),
    ]  # fmt: skip


EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+  (.*)  [\d.]+s$", re.MULTILINE)


def epoch_lines(stdout: str) -> dict[int, str]:
    """Epoch number -> its line without the total and the seconds."""
    return {int(m.group(1)): m.group(2) for m in EPOCH_LINE.finditer(stdout)}


def log_records(out_dir: Path) -> list[dict[str, Any]]:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not HAVE_CIFAR10:
        pytest.skip(f"CIFAR-10 not found in {DATA_DIR}")
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = example(*small(out, 3), cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = epoch_lines(proc.stdout)
    assert sorted(lines) == [1, 2, 3], proc.stdout
    return {"out": out, "lines": lines, "records": log_records(out)}


@pytest.mark.slow
@needs_cifar10
def test_cli_resume_gives_the_same_epoch_2(tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    first = example(*small(tmp_path, 1), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = example(
        "--resume", str(tmp_path / "checkpoint_last.pt"), "--nepochs", "2",
        "--no-progress", "--data-dir", str(DATA_DIR), cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from epoch 1 of 2" in resumed.stdout
    assert epoch_lines(resumed.stdout) == {2: uninterrupted["lines"][2]}
    assert log_records(tmp_path) == uninterrupted["records"][:2]


def start_example(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SUBPROCESS_ENV,
    )


def signal_after_first_epoch(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    """Send ``signum`` once the ``epoch 1/`` line is out; return all stdout and stderr."""
    assert proc.stdout is not None
    seen: list[str] = []
    timer = threading.Timer(180, proc.kill)  # a hung run fails the test instead of the CI
    timer.start()
    try:
        for line in iter(proc.stdout.readline, ""):
            seen.append(line)
            if line.startswith("epoch 1/"):
                proc.send_signal(signum)
                break
        out, err = proc.communicate(timeout=180)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
    return "".join(seen) + out, err


@pytest.mark.slow
@needs_cifar10
def test_cli_ctrl_c_exits_130_and_resume_continues_exactly(
    tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    proc = start_example(small(tmp_path, 30), cwd=tmp_path)
    stdout, stderr = signal_after_first_epoch(proc, signal.SIGINT)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "SIGINT received" in stdout
    completed = max(epoch_lines(stdout))  # 1, or 2 if the signal landed in epoch 2's test pass
    assert completed in (1, 2)
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert checkpoint["epoch"] == completed
    epochs = "1 completed epoch" if completed == 1 else f"{completed} completed epochs"
    assert f"interrupted by SIGINT after {epochs};" in stderr
    assert f"--resume {tmp_path / 'checkpoint_last.pt'}" in stderr

    resumed = example(
        "--resume", str(tmp_path / "checkpoint_last.pt"), "--nepochs", str(completed + 1),
        "--no-progress", "--data-dir", str(DATA_DIR), cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    nxt = completed + 1
    assert epoch_lines(resumed.stdout) == {nxt: uninterrupted["lines"][nxt]}
    assert log_records(tmp_path) == uninterrupted["records"][:nxt]


@pytest.mark.slow
@needs_cifar10
def test_cli_sigterm_exits_143_with_the_completed_epoch_saved(tmp_path: Path) -> None:
    proc = start_example(small(tmp_path, 30), cwd=tmp_path)
    stdout, stderr = signal_after_first_epoch(proc, signal.SIGTERM)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    completed = max(epoch_lines(stdout))
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["epoch"] == completed
    assert "interrupted by SIGTERM" in stderr


@pytest.mark.slow
@needs_cifar10
def test_cli_nan_loss_exits_1_naming_epoch_and_step(tmp_path: Path) -> None:
    # Adam moves every weight by about lr per step: 1e30 overflows float32 at the next step.
    args = small(tmp_path, 2)
    args[args.index("--learning-rate") + 1] = "1e30"
    proc = example(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    no_traceback(proc)
    assert re.search(r"^error: training loss is (nan|inf|-inf) at epoch 1, step \d+", proc.stderr,
                     re.MULTILINE), proc.stderr  # fmt: skip
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert checkpoint["epoch"] == 0  # the starting state, the last good one
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


@pytest.mark.slow
@needs_cifar10
def test_cli_resume_with_other_nmasks_is_refused(
    tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    proc = example(
        "--resume", str(uninterrupted["out"] / "checkpoint_last.pt"), "--nmasks", "2",
        "--no-progress", "--data-dir", str(DATA_DIR), "--out-dir", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    no_traceback(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "nmasks: 1 in the checkpoint, 2 in this run" in errors[0]
    assert "Mismatched keys (6)" in errors[0] and "noise.masks: shape" in errors[0]


def test_cli_out_dir_under_a_file_fails_before_loading_data(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    began = time.perf_counter()
    proc = example(*small(blocker / "run", 1), cwd=tmp_path, timeout=120)
    seconds = time.perf_counter() - began
    assert proc.returncode == 2
    no_traceback(proc)
    assert f"error: cannot create output folder {str(blocker / 'run')!r}" in proc.stderr
    assert "data:" not in proc.stdout  # refused before the data was loaded
    assert seconds < 60


def test_cli_missing_data_dir_exits_fast_naming_the_paths(tmp_path: Path) -> None:
    missing = tmp_path / "no-data"
    began = time.perf_counter()
    proc = example(*small(tmp_path / "run", 1)[:-4], "--data-dir", str(missing),
                   "--out-dir", str(tmp_path / "run"), cwd=tmp_path, timeout=120)  # fmt: skip
    seconds = time.perf_counter() - began
    assert proc.returncode == 2
    no_traceback(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].count("Looked for:") == 1 and str(missing) in errors[0]
    assert "--download" in errors[0] and "--data-dir" in errors[0]
    for looked_at in ("cifar10/cifar10_train_1.npz", "cifar-10-batches-py"):
        assert looked_at in errors[0].split("Looked for:")[1]
    assert seconds < 60  # no download attempt, no network timeout


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_cli_corrupt_data_file_is_named(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data" / "cifar10"
    data.mkdir(parents=True)
    for name in [f"cifar10_train_{i}.npz" for i in range(1, 6)] + ["cifar10_test.npz"]:
        source = DATA_DIR / "cifar10" / name
        if damage == "truncated" and source.is_file():
            with source.open("rb") as handle:
                (data / name).write_bytes(handle.read(4096))
        else:
            (data / name).write_bytes(b"not an npz file at all")
    proc = example(*small(tmp_path / "run", 1)[:-4], "--data-dir", str(tmp_path / "data"),
                   "--out-dir", str(tmp_path / "run"), cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    no_traceback(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert str(data / "cifar10_train_1.npz") in errors[0]
