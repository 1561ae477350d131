"""Models under DDP: wrapping, unwrapping, identical noise masks on every rank, buffers, state dicts.

Source: PyTorch's ``DistributedDataParallel`` and ``SyncBatchNorm``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.nn.parallel import DataParallel, DistributedDataParallel

from perturbnn.layers import NoiseMask
from perturbnn.repro.distributed.process_group import (
    DistributedContext,
    _collective_device,
    _is_initialized,
)

__all__ = [
    "broadcast_buffers",
    "check_masks_match",
    "mask_checksums",
    "plain_state_dict",
    "unwrap_model",
    "wrap_model",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (or ``model``)."""
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def plain_state_dict(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """A copy of ``state_dict`` without the ``module.`` prefix that a DDP wrapper adds.

    Lets a checkpoint written from a wrapped model by other code load into a plain one.
    """
    copy: OrderedDict[str, Any] = OrderedDict(state_dict)
    consume_prefix_in_state_dict_if_present(copy, "module.")
    return copy


def _tensor_hash(tensor: Tensor) -> int:
    """A signed 64-bit hash of a tensor's dtype, shape and bytes."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def mask_checksums(model: nn.Module) -> dict[str, int]:
    """A 64-bit hash of the bytes of every :class:`~perturbnn.NoiseMask`'s masks, by name.

    Equal hashes mean equal masks (bit for bit), fixed or trainable.

    Args:
        model (nn.Module): a model, wrapped in DDP or not.

    Returns:
        dict[str, int]: module name -> hash, in module order.
    """
    return {
        name: _tensor_hash(module.masks)
        for name, module in unwrap_model(model).named_modules()
        if isinstance(module, NoiseMask)
    }


def check_masks_match(model: nn.Module) -> None:
    """Raise unless every rank holds the same noise masks, bit for bit.

    One ``all_gather`` of one 64-bit hash per :class:`~perturbnn.NoiseMask`. A no-op without
    a process group of two or more. Every rank raises, with the same message.

    Raises:
        RuntimeError: if the ranks have different numbers of masks or different mask values;
            the message names the first module that differs and the rank.
    """
    if not _is_initialized() or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    sums = mask_checksums(model)
    names = list(sums)
    device = _collective_device()
    count = torch.tensor([len(names)], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    numbers = [int(c.item()) for c in counts]
    if len(set(numbers)) != 1:
        raise RuntimeError(
            f"the ranks hold different numbers of NoiseMask modules, got {numbers} (by rank): "
            "every rank must build the same model"
        )
    if not names:
        return
    local = torch.tensor([sums[name] for name in names], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    reference = gathered[0].tolist()
    for rank, values in enumerate(gathered[1:], start=1):
        for name, ref, value in zip(names, reference, values.tolist()):
            if ref != value:
                raise RuntimeError(
                    f"noise masks differ across ranks: {name!r} on rank {rank} is not rank 0's; "
                    "every rank must build the model after set_seed(manual_seed) with the same "
                    "seed (perturbnn.repro.run.prepare_run does)"
                )


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (fixed noise masks, BatchNorm statistics) to every rank.

    In place; a no-op without a process group of two or more.
    """
    if not _is_initialized() or dist.get_world_size() < 2:
        return
    with torch.no_grad():
        for buffer in unwrap_model(model).buffers():
            dist.broadcast(buffer, src=src)


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's keyword for "do not broadcast buffers at every forward", for this torch version."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:  # torch >= 2.13
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def wrap_model(
    model: nn.Module, context: DistributedContext, *, sync_bn: bool = False
) -> DistributedDataParallel:
    """Check the masks and wrap ``model`` (already on ``context.device``) in DDP.

    With ``sync_bn`` every ``BatchNorm`` becomes ``SyncBatchNorm`` (statistics over the
    batches of all ranks; the ``state_dict`` keys do not change). DDP broadcasts rank 0's
    parameters and buffers once here and averages gradients at every step; buffers are not
    broadcast at every forward (see :func:`broadcast_buffers`).

    Args:
        model (nn.Module): the model, on ``context.device``.
        context (DistributedContext): from :func:`init_distributed`.
        sync_bn (bool): convert BatchNorm to SyncBatchNorm. Default: ``False``.

    Returns:
        DistributedDataParallel: the wrapped model; ``.module`` is ``model`` (converted).

    Raises:
        ValueError: if ``sync_bn`` is set on a CPU device (SyncBatchNorm runs on CUDA only).
        RuntimeError: if the noise masks differ across ranks (:func:`check_masks_match`).
    """
    if sync_bn and context.device.type != "cuda":
        raise ValueError(
            "sync_bn needs CUDA devices (DDP runs SyncBatchNorm on GPUs only), got device "
            f"{str(context.device)!r}"
        )
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    check_masks_match(model)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    wrapped = DistributedDataParallel(
        model,
        device_ids=device_ids,
        **_no_forward_buffer_sync(),  # type: ignore[arg-type]
    )
    broadcast_buffers(wrapped)  # older torch skips buffers at init without forward broadcasts
    return wrapped
