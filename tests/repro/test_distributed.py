"""Tests of :mod:`perturbnn.repro.distributed`: samplers, wrapping, and two real gloo processes.

The unit tests need no process group. The two-process tests start ``torchrun`` twice (the
example script, and ``tests/repro/distributed_worker.py``) with two gloo processes on the CPU, on
64 training and 49 test images of the real CIFAR-10 (49 is not a multiple of 2 x 8, so the
shards hold 24 and 25 images, in 3 and 4 batches). Each launch takes about 15-30 s on two
cores and is killed after 300 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from conftest import shared_data_dir
from perturbnn import build_model
from perturbnn.metrics import OriginalSmoothedAccuracy
from perturbnn.repro.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from perturbnn.repro.config import RunConfig
from perturbnn.repro.distributed import (
    DistributedContext,
    ShardSampler,
    check_masks_match,
    distribute_loaders,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    mask_checksums,
    plain_state_dict,
    set_sampler_epoch,
    unwrap_model,
    uses_sharded_evaluation,
    wrap_model,
)
from perturbnn.repro.loop import evaluate
from perturbnn.repro.run import prepare_run, run_experiment

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "cifar10_repro.py"
WORKER = REPO / "tests" / "repro" / "distributed_worker.py"
DATA_DIR = shared_data_dir()
TIMEOUT_S = 300
SMALL = {
    "nfilters": 4,
    "train_subset": 64,
    "test_subset": 49,
    "batch_size": 8,
    "device": "cpu",
    "progress": False,
    "data_dir": str(DATA_DIR),
}
needs_cifar10 = pytest.mark.skipif(
    not (DATA_DIR / "cifar10").is_dir(), reason=f"CIFAR-10 not found in {DATA_DIR}"
)
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests run as a single process, whatever the environment says."""
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``torchrun --standalone --nproc_per_node=2 ARGS``; kill its process group on timeout."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"torchrun did not finish in {TIMEOUT_S} s:\n{stdout[-2000:]}\n{stderr[-2000:]}"
        )
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def tiny_model() -> nn.Module:
    return build_model(
        "perturb_resnet18", nfilters=2, nmasks=2, first_filter_size=3, input_size=8, nclasses=3
    )


# ------------------------------------------------------------------------- ShardSampler


@given(n=st.integers(0, 200), world=st.integers(1, 9))
def test_shards_cover_every_index_once_in_order(n: int, world: int) -> None:
    samplers = [ShardSampler(range(n), num_replicas=world, rank=r) for r in range(world)]
    shards = [list(s) for s in samplers]
    assert [i for shard in shards for i in shard] == list(range(n))  # once each, in order
    sizes = [len(s) for s in samplers]
    assert sizes == [len(shard) for shard in shards] == samplers[0].shard_sizes
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == n


def test_distributed_sampler_pads_where_shard_sampler_does_not() -> None:
    data = range(49)
    padded = [list(DistributedSampler(data, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sum(map(len, padded)) == 50  # image 0 twice: why the test set is not split this way
    shards = [list(ShardSampler(data, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [len(s) for s in shards] == [24, 25] and sorted(shards[0] + shards[1]) == list(data)


@pytest.mark.parametrize(
    ("replicas", "rank", "match"),
    [(0, 0, "num_replicas must be a positive int, got 0"), (2, 2, r"rank must be .*got 2")],
)
def test_shard_sampler_rejects_bad_arguments(replicas: int, rank: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ShardSampler(range(5), num_replicas=replicas, rank=rank)


def test_shard_sampler_defaults_to_a_single_process() -> None:
    sampler = ShardSampler(range(7))
    assert (sampler.num_replicas, sampler.rank, list(sampler)) == (1, 0, list(range(7)))


def test_evaluate_without_a_process_group_counts_one_shard_only() -> None:
    data = TensorDataset(torch.randn(9, 4), torch.arange(9) % 3)
    loader = DataLoader(data, batch_size=2, sampler=ShardSampler(data, num_replicas=2, rank=1))
    assert not uses_sharded_evaluation(loader)
    result = evaluate(nn.Linear(4, 3), loader, device="cpu")
    assert result.total == 5  # indices 4..8


# ------------------------------------------------------------------ environment, loaders


def test_single_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    assert init_distributed("cpu") is None
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("auto") is None
    monkeypatch.setenv("RANK", "3")
    assert get_rank() == 3 and not is_main_process()


def test_init_distributed_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK or LOCAL_RANK is not set, got RANK=None"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=r"cuda:LOCAL_RANK.*got 'cuda:1'"):
        init_distributed("cuda:1")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK must be in \[0, 2\), got 2"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        get_world_size()


def test_distribute_loaders_keeps_batch_size_and_shards() -> None:
    data = TensorDataset(torch.randn(21, 2), torch.zeros(21, dtype=torch.int64))
    loaders = [
        distribute_loaders(
            DataLoader(data, batch_size=4, shuffle=True),
            DataLoader(data, batch_size=4),
            seed=5,
            num_replicas=2,
            rank=rank,
        )
        for rank in (0, 1)
    ]
    for train, test in loaders:
        assert isinstance(train.sampler, DistributedSampler) and train.batch_size == 4
        assert isinstance(test.sampler, ShardSampler) and test.batch_size == 4
    assert [len(test.sampler) for _, test in loaders] == [10, 11]  # type: ignore[arg-type]
    assert [len(train.sampler) for train, _ in loaders] == [11, 11]  # type: ignore[arg-type]
    train = loaders[0][0]
    set_sampler_epoch(train, 0)
    first = list(train.sampler)
    set_sampler_epoch(train, 1)
    assert list(train.sampler) != first  # a new shuffle every epoch
    set_sampler_epoch(train, 0)
    assert list(train.sampler) == first
    set_sampler_epoch([1, 2], 3)  # no sampler: nothing to do


# ----------------------------------------------------------------- models and checkpoints


def test_masks_from_the_same_seed_hash_equal() -> None:
    torch.manual_seed(0)
    first = mask_checksums(tiny_model())
    torch.manual_seed(0)
    second = mask_checksums(tiny_model())
    torch.manual_seed(1)
    other = mask_checksums(tiny_model())
    assert first and first == second
    assert all(first[name] != other[name] for name in first)
    check_masks_match(tiny_model())  # no process group: nothing to compare


def test_checkpoint_with_module_prefix_loads_into_a_plain_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_model()
    prefixed = {f"module.{k}": v for k, v in source.state_dict().items()}
    assert list(plain_state_dict(prefixed)) == list(source.state_dict())
    torch.manual_seed(1)
    target = tiny_model()
    restore_checkpoint({"model": prefixed, "epoch": 4}, target)
    assert mask_checksums(target) == mask_checksums(source)
    # save_checkpoint unwraps: no prefix in the file even from a wrapped model.
    wrapped = nn.DataParallel(source)
    assert unwrap_model(wrapped) is source
    path = save_checkpoint(tmp_path / "c.pt", model=wrapped, epoch=1)
    assert list(load_checkpoint(path)["model"]) == list(source.state_dict())


def test_sync_bn_on_the_cpu_is_refused() -> None:
    context = DistributedContext(0, 0, 2, "gloo", torch.device("cpu"), owns_group=False)
    with pytest.raises(ValueError, match=r"sync_bn needs CUDA devices.*got device 'cpu'"):
        wrap_model(tiny_model(), context, sync_bn=True)


def test_run_config_sync_bn_defaults_off() -> None:
    assert RunConfig().sync_bn is False
    assert RunConfig(sync_bn=True).to_dict()["sync_bn"] is True


# ------------------------------------------------------------- two gloo processes (slow)


def single_process_run(tmp: Path) -> Any:
    config = RunConfig.from_experiment(
        "pnn-fanout64-shared", nepochs=1, out_dir=str(tmp / "single"), **SMALL
    )
    return run_experiment(config)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A single-process epoch, then a second epoch under torchrun resuming from it."""
    if not (DATA_DIR / "cifar10").is_dir():
        pytest.skip(f"CIFAR-10 not found in {DATA_DIR}")
    tmp = tmp_path_factory.mktemp("ddp")
    single = single_process_run(tmp)
    proc = torchrun(
        str(SCRIPT), "--resume", str(tmp / "single" / "checkpoint_last.pt"), "--nepochs", "2",
        "--out-dir", str(tmp / "ddp"), "--data-dir", str(DATA_DIR), "--device", "cpu",
        "--no-progress",
        cwd=tmp,
    )  # fmt: skip
    return {"tmp": tmp, "single": single, "proc": proc}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not (DATA_DIR / "cifar10").is_dir():
        pytest.skip(f"CIFAR-10 not found in {DATA_DIR}")
    tmp = tmp_path_factory.mktemp("worker")
    proc = torchrun(str(WORKER), str(tmp), str(DATA_DIR), cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((tmp / "worker.json").read_text())
    result["tmp"] = tmp
    return result


def single_process_model(config: RunConfig) -> Any:
    return prepare_run(config.replace(resume=None, out_dir=None, device="cpu", progress=False))


@needs_cifar10
@pytest.mark.slow
def test_example_under_torchrun_prints_once_and_resumes(example_run: dict[str, Any]) -> None:
    proc, tmp = example_run["proc"], example_run["tmp"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    stdout = proc.stdout
    assert len(re.findall(r"^epoch 2/2 ", stdout, flags=re.M)) == 1, stdout  # rank 0 only
    assert stdout.count("resumed from epoch 1 of 2") == 1
    assert stdout.count("configuration:") == 1
    assert "distributed: 2 processes (gloo), batch size 8 per process, 16 per step" in stdout
    summary = json.loads((tmp / "ddp" / "summary.json").read_text())
    single = example_run["single"]
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert summary["history"]["epoch"] == [1, 2]
    assert summary["history"]["test_acc"][0] == single.history["test_acc"][0]
    assert summary["config"]["sync_bn"] is False
    written = {p.name for p in (tmp / "ddp").iterdir()}  # best: only if epoch 2 improved
    assert {"checkpoint_last.pt", "log.jsonl", "summary.json"} <= written
    assert written <= {"checkpoint_best.pt", "checkpoint_last.pt", "log.jsonl", "summary.json"}


@needs_cifar10
@pytest.mark.slow
def test_printed_accuracy_equals_single_process_evaluation(example_run: dict[str, Any]) -> None:
    proc, tmp = example_run["proc"], example_run["tmp"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = load_checkpoint(tmp / "ddp" / "checkpoint_last.pt")
    assert checkpoint["epoch"] == 2
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    run = single_process_model(RunConfig.from_dict(checkpoint["config"]))
    restore_checkpoint(checkpoint, run.model)  # strict: the DDP checkpoint loads as it is
    smoothed = OriginalSmoothedAccuracy(nominal_batch_size=8)  # continued from epoch 1
    smoothed.load_state_dict(load_checkpoint(tmp / "single" / "checkpoint_last.pt")["smoothed"])
    test = evaluate(run.model, run.test_loader, device="cpu", smoothed=smoothed)
    assert test.total == 49
    history = json.loads((tmp / "ddp" / "summary.json").read_text())["history"]
    assert history["test_acc"][-1] == test.accuracy  # to the last digit
    assert history["original_acc"][-1] == smoothed.value
    assert history["test_loss"][-1] == pytest.approx(test.loss, rel=1e-6)
    last = re.search(r"last exact test accuracy\s+([\d.]+%)", proc.stdout)
    assert last and last.group(1) == f"{test.accuracy:.2%}", proc.stdout


@needs_cifar10
@pytest.mark.slow
def test_checkpoint_from_torchrun_resumes_in_a_single_process(
    example_run: dict[str, Any],
) -> None:
    tmp = example_run["tmp"]
    assert example_run["proc"].returncode == 0, example_run["proc"].stderr[-3000:]
    ddp = json.loads((tmp / "ddp" / "summary.json").read_text())
    config = RunConfig.from_experiment(
        "pnn-fanout64-shared", nepochs=3, out_dir=str(tmp / "again"), **SMALL
    ).replace(resume=str(tmp / "ddp" / "checkpoint_last.pt"))
    summary = run_experiment(config)
    assert summary.epochs == 3 and summary.history["epoch"] == [1, 2, 3]
    assert summary.history["test_acc"][:2] == ddp["history"]["test_acc"]


@needs_cifar10
@pytest.mark.slow
def test_masks_are_identical_on_every_rank_before_and_after_steps(
    worker: dict[str, Any],
) -> None:
    for kind in ("fixed", "trained"):
        constructed, trained = worker[f"{kind}_constructed"], worker[f"{kind}_trained"]
        assert len(constructed[0]) == 16  # one NoiseMask per perturbation layer
        assert constructed[0] == constructed[1], kind
        assert trained[0] == trained[1], kind
    assert worker["fixed_trained"][0] == worker["fixed_constructed"][0]  # buffers: never change
    changed = worker["trained_trained"][0]
    assert all(changed[k] != v for k, v in worker["trained_constructed"][0].items())  # learned
    assert worker["ddp"] == ["DistributedDataParallel"] * 2
    assert worker["train_sampler"] == ["DistributedSampler"] * 2


@needs_cifar10
@pytest.mark.slow
def test_masks_that_differ_are_refused_on_every_rank(worker: dict[str, Any]) -> None:
    for message in worker["mismatch_error"]:
        assert message is not None
        assert "noise masks differ across ranks: 'layer1.0.body.0.0.noise' on rank 1" in message


@needs_cifar10
@pytest.mark.slow
def test_sharded_evaluation_counts_each_image_once(worker: dict[str, Any]) -> None:
    assert worker["test_shard"] == [24, 25] and worker["test_batches"] == [3, 4]
    assert worker["world_size"] == [2, 2]
    first, second = worker["eval"]
    assert first == second  # every rank returns the whole test set's figures
    assert first["total"] == 49
    run = single_process_model(RunConfig.from_experiment("pnn-fanout64-shared", **SMALL))
    run.model.load_state_dict(torch.load(worker["tmp"] / "worker_model.pt", weights_only=True))
    smoothed = OriginalSmoothedAccuracy(nominal_batch_size=8)
    test = evaluate(run.model, run.test_loader, device="cpu", smoothed=smoothed)
    assert (test.correct, test.total, test.accuracy) == (
        first["correct"], first["total"], first["accuracy"],
    )  # fmt: skip
    assert smoothed.value == first["smoothed"]
    assert test.loss == pytest.approx(first["loss"], rel=1e-6)  # batches differ


@needs_cifar10
@pytest.mark.slow
def test_only_rank_0_writes_and_padding_samplers_are_refused(worker: dict[str, Any]) -> None:
    rank0, rank1 = worker["out_dir"]
    assert rank0 is not None and rank1 is None
    assert (Path(rank0) / "checkpoint_last.pt").is_file()
    for message in worker["distributed_sampler_error"]:
        assert message is not None and "ShardSampler" in message


@needs_cifar10
@pytest.mark.slow
def test_a_stop_or_nan_on_one_rank_stops_every_rank_at_the_same_step(
    worker: dict[str, Any],
) -> None:
    (kind0, message0), (kind1, message1) = worker["stop"]
    assert kind0 == kind1 == "TrainingInterrupted"
    assert "after step 0" in message0 and "after step 0" in message1
    (kind0, message0), (kind1, message1) = worker["nan"]
    assert kind0 == kind1 == "FloatingPointError"
    assert "on another rank at epoch 0, step 1" in message0
    assert "step 1" in message1
