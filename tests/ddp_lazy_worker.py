"""One process of the two-process DDP check of lazy layers in ``test_ddp_lazy.py``.

Usage: ``torchrun --standalone --nproc_per_node=2 tests/ddp_lazy_worker.py OUT``.

Each rank builds a small network of lazy :class:`~perturbnn.PerturbConv2d` layers, trains it
three SGD steps under ``DistributedDataParallel`` on data of its own (rank ``r``, step ``s``:
``randn(4, 3, 9, 11)`` from seed ``1000 * r + s``), and gathers every rank's masks and final
state. Cases:

* ``materialized-fixed``, ``materialized-trained``: one forward before wrapping in DDP (fixed
  masks, then ``train_masks=True``); the masks right after that forward are gathered too;
* ``lazy-fixed``: fixed masks, wrapped before any forward (masks from a seeded generator);
* ``lazy-fixed-rank-seeded``: the same without a generator, each rank's global RNG seeded
  differently, so each rank draws other masks on the first forward;
* ``lazy-trained``: ``train_masks=True`` wrapped before any forward: the error DDP raises.

Rank 0 saves ``OUT/result.pt``: per case, whether all ranks ended with equal state, rank 0's
final state, the masks drawn on each rank, and the error message if any.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from perturbnn import PerturbConv2d

STEPS = 3


def network(train_masks: bool, seeded: bool = True) -> nn.Sequential:
    """The network of every case (no BatchNorm, so DDP equals one process on both batches)."""
    seeds = [torch.Generator().manual_seed(s) if seeded else None for s in (1, 2)]
    return nn.Sequential(
        PerturbConv2d(3, 6, 2, use_act=True, stride=2, train_masks=train_masks, generator=seeds[0]),
        nn.ReLU(),
        PerturbConv2d(6, 4, level=0.3, train_masks=train_masks, generator=seeds[1]),
    )


def batch(rank: int, step: int) -> torch.Tensor:
    return torch.randn(4, 3, 9, 11, generator=torch.Generator().manual_seed(1000 * rank + step))


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.detach().contiguous())
    return out


def masks_of(net: nn.Module) -> list[torch.Tensor]:
    return [m.noise.masks.detach().clone() for m in net.modules() if isinstance(m, PerturbConv2d)]


def train(net: nn.Module, rank: int, *, materialize: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if materialize:
        with torch.no_grad():
            net(batch(rank, 0))
        result["first_masks"] = [gather(m) for m in masks_of(net)]
    ddp = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step in range(STEPS):
        optimizer.zero_grad()
        ddp(batch(rank, step)).square().mean().backward()
        optimizer.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    result["equal"] = all(
        all(torch.equal(other, value) for other in gather(value)) for value in state.values()
    )
    result["state"] = state
    result["last_masks"] = [gather(m) for m in masks_of(net)]
    return result


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for name, train_masks in (("materialized-fixed", False), ("materialized-trained", True)):
        torch.manual_seed(0)
        results[name] = train(network(train_masks), rank, materialize=True)
    torch.manual_seed(0)
    results["lazy-fixed"] = train(network(False), rank, materialize=False)
    torch.manual_seed(100 + rank)
    results["lazy-fixed-rank-seeded"] = train(network(False, seeded=False), rank, materialize=False)
    try:
        nn.parallel.DistributedDataParallel(network(True))
        results["lazy-trained"] = {"error": None}
    except RuntimeError as error:
        results["lazy-trained"] = {"error": str(error)}
    dist.barrier()
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
