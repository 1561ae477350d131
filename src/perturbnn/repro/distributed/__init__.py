"""Multi-process training with ``torch.distributed``: DDP, sharded loaders and exact metrics.

Launch the example (or any script that calls :func:`perturbnn.repro.run.prepare_run`) with
``torchrun``; nothing else changes::

    torchrun --nproc_per_node=4 examples/cifar10_repro.py --experiment pnn-fanout64-shared

:func:`init_distributed` reads the variables ``torchrun`` sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), joins the process group (backend ``nccl``
on CUDA, ``gloo`` on the CPU) and gives each process its device, ``cuda:LOCAL_RANK``.
:func:`distribute_loaders` gives every process its part of the data: a
``DistributedSampler`` (shuffled, re-seeded each epoch by :func:`set_sampler_epoch`) for
training and a :class:`ShardSampler` for the test set. :func:`wrap_model` checks that the
noise masks are the same on every rank (:func:`check_masks_match`) and wraps the model in
``DistributedDataParallel``, optionally with ``SyncBatchNorm``.

Conventions:

* **Batch size.** ``batch_size`` is per process, as in PyTorch: with ``N`` processes one
  optimizer step sees ``N * batch_size`` training images. The learning rate is not scaled.
* **Exact test accuracy.** :class:`ShardSampler` splits ``range(len(test_set))`` into
  contiguous shards of uneven sizes (they differ by at most one) and never pads, so every
  test image is evaluated exactly once. :func:`evaluate_sharded` sums the integer counts of
  correct predictions and samples, and the per-sample loss, over the ranks; the accuracy is
  the one a single process gets on the same weights (the loss agrees up to rounding).
* **The original-method figure** (:class:`~perturbnn.metrics.OriginalSmoothedAccuracy`) is a
  moving average over the batches of one process. Under DDP it is defined as the figure a
  single process would print for the same weights: the per-sample correctness is gathered
  from all ranks in test-set order, cut into batches of ``batch_size`` as the single-process
  test loader would, and replayed on every rank. It is therefore identical to the
  single-process figure.
* **Noise masks.** Every rank builds its model after ``set_seed(manual_seed)`` with the same
  seed, so the fixed masks (buffers) are equal; :func:`check_masks_match` verifies it from a
  hash of the mask bytes and raises otherwise. Trainable masks are parameters and DDP keeps
  them equal. DDP is built without per-step buffer broadcasts (the masks can hold millions of
  values); instead :func:`broadcast_buffers` copies rank 0's buffers (masks and BatchNorm
  running statistics) to every rank before each evaluation, so every rank evaluates exactly
  the weights rank 0 saves.
* **Files.** Only rank 0 writes logs, checkpoints and ``summary.json`` and prints epoch lines
  (:func:`is_main_process`). Checkpoints hold the unwrapped model's ``state_dict`` (no
  ``module.`` prefix): they load in a single-process run and the other way round.

Source: PyTorch's DDP tutorial and ``torch.utils.data.distributed.DistributedSampler``; the
metric rules of ``STYLE.md`` (sum the counts across ranks, never average per-rank means).
"""

from __future__ import annotations

from perturbnn.repro.distributed.metrics import (
    evaluate_sharded,
    reduce_train_totals,
    uses_sharded_evaluation,
)
from perturbnn.repro.distributed.models import (
    broadcast_buffers,
    check_masks_match,
    mask_checksums,
    plain_state_dict,
    unwrap_model,
    wrap_model,
)
from perturbnn.repro.distributed.process_group import (
    DistributedContext,
    any_rank,
    destroy_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    quiet_logger,
)
from perturbnn.repro.distributed.sampling import ShardSampler, distribute_loaders, set_sampler_epoch

__all__ = [
    "DistributedContext",
    "ShardSampler",
    "any_rank",
    "broadcast_buffers",
    "check_masks_match",
    "destroy_distributed",
    "distribute_loaders",
    "evaluate_sharded",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "mask_checksums",
    "plain_state_dict",
    "quiet_logger",
    "reduce_train_totals",
    "set_sampler_epoch",
    "unwrap_model",
    "uses_sharded_evaluation",
    "wrap_model",
]
