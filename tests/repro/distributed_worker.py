"""One process of the two-process checks in ``test_distributed.py``; started by torchrun.

Usage: ``torchrun --standalone --nproc_per_node=2 tests/repro/distributed_worker.py OUT DATA_DIR``.

Each rank builds two small runs with :func:`perturbnn.repro.run.prepare_run` (which joins the
gloo group, shards the loaders and wraps the model in DDP):

* fixed masks: mask hashes after construction and after one epoch of :meth:`PreparedRun.fit`,
  then one :func:`perturbnn.repro.loop.evaluate` on a 49-image test set (shards of 24 and 25,
  batches of 8: 3 and 4 batches) with a fresh original-method figure; rank 0 saves its model
  weights so that the test can evaluate them in a single process;
* trained masks: mask hashes after construction and after one epoch;

then it checks that altered masks on rank 1 are refused, that a ``DistributedSampler``
test loader is refused, and that a stop signal or a non-finite loss on rank 1 alone stops both
ranks at the same step. Rank 0 writes everything to ``OUT/worker.json``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from perturbnn.metrics import OriginalSmoothedAccuracy
from perturbnn.repro.config import RunConfig
from perturbnn.repro.distributed import (
    ShardSampler,
    check_masks_match,
    mask_checksums,
    unwrap_model,
    uses_sharded_evaluation,
)
from perturbnn.repro.loop import evaluate, train_one_epoch
from perturbnn.repro.run import prepare_run
from perturbnn.repro.signals import TrainingInterrupted


def gather(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def main(out: Path, data_dir: str) -> None:
    common = {
        "nfilters": 4,
        "nepochs": 1,
        "train_subset": 64,
        "test_subset": 49,
        "batch_size": 8,
        "device": "cpu",
        "progress": False,
        "data_dir": data_dir,
    }
    result: dict[str, Any] = {}

    # Fixed masks (buffers).
    run = prepare_run(
        RunConfig.from_experiment("pnn-fanout64-shared", **common, out_dir=str(out / "run"))
    )
    result["fixed_constructed"] = gather(mask_checksums(run.model))
    summary = run.fit()
    result["fixed_trained"] = gather(mask_checksums(run.model))
    result["out_dir"] = gather(summary.out_dir)
    result["world_size"] = gather(run.metadata()["world_size"])
    result["ddp"] = gather(type(run.model).__name__)
    result["train_sampler"] = gather(type(run.train_loader.sampler).__name__)
    result["test_shard"] = gather(len(run.test_loader.sampler))  # type: ignore[arg-type]
    result["test_batches"] = gather(len(run.test_loader))
    smoothed = OriginalSmoothedAccuracy(nominal_batch_size=run.test_loader.batch_size)
    test = evaluate(run.model, run.test_loader, device=run.device, smoothed=smoothed)
    result["eval"] = gather(
        {
            "loss": test.loss,
            "accuracy": test.accuracy,
            "correct": test.correct,
            "total": test.total,
            "smoothed": smoothed.value,
        }
    )
    if dist.get_rank() == 0:
        torch.save(unwrap_model(run.model).state_dict(), out / "worker_model.pt")

    # Refused: a DistributedSampler test loader (it pads with repeated images).
    padded = DataLoader(
        run.test_loader.dataset, batch_size=8, sampler=DistributedSampler(run.test_loader.dataset)
    )
    try:
        uses_sharded_evaluation(padded)
        result["distributed_sampler_error"] = gather(None)
    except ValueError as exc:
        result["distributed_sampler_error"] = gather(str(exc))
    result["shard_sampler"] = gather(repr(run.test_loader.sampler))
    assert isinstance(run.test_loader.sampler, ShardSampler)

    # Trained masks (parameters, kept equal by DDP).
    trained = prepare_run(
        RunConfig.from_experiment("pnn-fanout64-shared-trained", **common, manual_seed=2)
    )
    result["trained_constructed"] = gather(mask_checksums(trained.model))
    trained.fit()
    result["trained_trained"] = gather(mask_checksums(trained.model))

    # Refused: masks that differ on one rank.
    if dist.get_rank() == 1:
        noise = next(m for m in unwrap_model(run.model).modules() if hasattr(m, "masks"))
        with torch.no_grad():
            noise.masks.view(-1)[0] += 1.0
    try:
        check_masks_match(run.model)
        result["mismatch_error"] = gather(None)
    except RuntimeError as exc:
        result["mismatch_error"] = gather(str(exc))

    # A stop signal, then a non-finite loss, seen by rank 1 only: both ranks stop at the same
    # step (a rank stopping alone would leave the other waiting in the gradient all-reduce).
    class RankOneStop:
        signum = signal.SIGTERM if dist.get_rank() == 1 else None
        signal_name = "SIGTERM"

        def requested(self) -> bool:
            return self.signum is not None

    def rank_one_nan(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(logits, targets)
        return loss * float("nan") if dist.get_rank() == 1 else loss

    for name, kwargs in (("stop", {"stop": RankOneStop()}), ("nan", {"loss_fn": rank_one_nan})):
        try:
            train_one_epoch(run.model, run.train_loader, run.optimizer, device="cpu", **kwargs)  # type: ignore[arg-type]
            result[name] = gather(None)
        except (TrainingInterrupted, FloatingPointError) as exc:
            result[name] = gather([type(exc).__name__, str(exc)])

    if dist.get_rank() == 0:
        (out / "worker.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), sys.argv[2])
