"""Forward+backward time and peak memory of one PNN layer: naive formulation, each impl, floor.

For each configuration (``large``: batch 16, 128 -> 128 channels, 64 masks, 32x32; ``small``:
batch 64, 16 -> 16 channels, 8 masks, 32x32), with and without an activation (ReLU) between
noise and 1x1 convolution, with shared and unique (fixed) masks, one process measures:

- ``naive``: the literal formulation written plainly here (perturbed tensor, ReLU, grouped 1x1
  ``conv2d``);
- each ``impl`` of :func:`perturbnn.functional.perturb_conv2d` (``grouped``, ``eager``,
  ``compiled``, ``auto``);
- ``dense 1x1``: a plain ``nn.Conv2d(C, O, 1)`` of the same input and output, as the floor.

Before timing, every row's output and gradients (input, weight, bias) are compared with the
naive row (``max rel err``: the largest ``max|a - b| / max|b|`` over the output and the
gradients). A step is the forward pass and ``torch.autograd.grad`` of the output against a fixed
random gradient. The first step of each row is timed apart (``torch.compile`` compiles there),
then ``--warmup`` steps, then ``--repeats`` rounds in which every row runs one step in turn (so a
change of machine load hits all rows alike); the table gives the median. Peak extra memory is
the largest running total of the bytes that torch's CPU allocator handed out during one step,
read from ``torch.profiler`` (``profile_memory=True``) memory events: every tensor the step
allocates, transient or kept for backward, including the output and the gradients.

Usage::

    python benchmarks/bench_layers.py                       # both configurations
    python benchmarks/bench_layers.py --configs small --repeats 5
    python benchmarks/bench_layers.py --device cuda

Not part of the test run: it prints tables and checks nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from perturbnn.functional import perturb_conv2d, resolve_impl

CONFIGS = {
    "large": {"batch": 16, "channels": 128, "out_channels": 128, "nmasks": 64, "size": 32},
    "small": {"batch": 64, "channels": 16, "out_channels": 16, "nmasks": 8, "size": 32},
}
IMPLS = ("grouped", "eager", "compiled", "auto")
LEVEL = 0.5


def naive(
    x: Tensor, masks: Tensor, weight: Tensor, bias: Tensor, act: Optional[nn.Module]
) -> Tensor:
    """The PNN layer as written in the paper: materialize, activate, grouped 1x1 convolution."""
    batch, channels, height, width = x.shape
    nmasks = masks.shape[1]
    perturbed = (x.unsqueeze(2) + LEVEL * masks.unsqueeze(0)).reshape(
        batch, channels * nmasks, height, width
    )
    if act is not None:
        perturbed = act(perturbed)
    return F.conv2d(perturbed, weight, bias, groups=channels if nmasks > 1 else 1)


@dataclass
class Row:
    name: str
    path: str
    forward: Callable[[], Tensor]
    inputs: list[Tensor]
    first: float = 0.0
    times: Optional[list[float]] = None
    peak: int = 0
    error: float = 0.0


def step(row: Row, grad_out: Tensor) -> list[Tensor]:
    out = row.forward()
    return [out, *torch.autograd.grad(out, row.inputs, grad_out)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(row: Row, grad_out: Tensor) -> float:
    sync(grad_out.device)
    start = time.perf_counter()
    step(row, grad_out)
    sync(grad_out.device)
    return time.perf_counter() - start


def peak_bytes(row: Row, grad_out: Tensor) -> int:
    device = grad_out.device
    if device.type == "cuda":  # the caching allocator keeps exact statistics
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(row, grad_out)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(row, grad_out)
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]"
    )
    total = peak = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    return peak


def relative_error(got: list[Tensor], want: list[Tensor]) -> float:
    return max(
        ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
        for a, b in zip(got, want)
    )


def run_case(
    config: dict[str, int],
    use_act: bool,
    shared: bool,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    b, c, o, m, s = (config[k] for k in ("batch", "channels", "out_channels", "nmasks", "size"))
    x = torch.randn(b, c, s, s, generator=gen).to(device).requires_grad_()
    masks = (torch.rand(1 if shared else c, m, s, s, generator=gen) * 2 - 1).to(device)
    conv = nn.Conv2d(c * m, o, 1, groups=c if m > 1 else 1)  # nn.Conv2d's initialization
    weight = conv.weight.detach().to(device).requires_grad_()
    bias = conv.bias.detach().to(device).requires_grad_()  # type: ignore[union-attr]
    act = nn.ReLU() if use_act else None
    dense = nn.Conv2d(c, o, 1).to(device)
    grad_out = torch.randn(b, o, s, s, generator=gen).to(device)
    params = [x, weight, bias]
    rows = [Row("naive", "literal", lambda: naive(x, masks, weight, bias, act), params)]
    for impl in IMPLS:
        rows.append(
            Row(
                impl,
                resolve_impl(impl, m, act),
                lambda impl=impl: perturb_conv2d(
                    x, masks, weight, bias, level=LEVEL, activation=act, impl=impl
                ),
                params,
            )
        )
    rows.append(Row("dense 1x1", "nn.Conv2d", lambda: dense(x), [x, dense.weight, dense.bias]))
    reference = step(rows[0], grad_out)
    for row in rows:
        row.first = timed_step(row, grad_out)
        if row.name != "dense 1x1":
            row.error = relative_error(step(row, grad_out), reference)
        for _ in range(warmup):
            timed_step(row, grad_out)
    del reference
    for row in rows:
        row.times = []
    for _ in range(repeats):
        for row in rows:
            row.times.append(timed_step(row, grad_out))  # type: ignore[union-attr]
    for row in rows:
        row.peak = peak_bytes(row, grad_out)
    return rows


def print_case(config_name: str, use_act: bool, shared: bool, rows: list[Row]) -> None:
    config = CONFIGS[config_name]
    print(
        f"\n### {config_name}: B={config['batch']}, C={config['channels']}, "
        f"O={config['out_channels']}, nmasks={config['nmasks']}, "
        f"{config['size']}x{config['size']}, {'ReLU' if use_act else 'no activation'}, "
        f"{'shared' if shared else 'unique'} masks\n"
    )
    print(
        "| row | path | first step (s) | median (s) | speed-up vs naive | peak extra (MiB) "
        "| memory / naive | max rel err |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    base_time = statistics.median(rows[0].times or [float("nan")])
    base_peak = rows[0].peak
    for row in rows:
        median = statistics.median(row.times or [float("nan")])
        error = "-" if row.name == "dense 1x1" else f"{row.error:.1e}"
        print(
            f"| {row.name} | {row.path} | {row.first:.3f} | {median:.4f} | "
            f"{base_time / median:.1f}x | {row.peak / 2**20:.1f} | "
            f"{row.peak / base_peak:.3f} | {error} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="large,small")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        f"torch {torch.__version__}, {args.threads} threads, {where}; "
        f"median of {args.repeats} interleaved steps after {args.warmup} warm-up steps"
    )
    load_before = os.getloadavg()
    for name in args.configs.split(","):
        for use_act in (False, True):
            for shared in (True, False):
                rows = run_case(CONFIGS[name], use_act, shared, args.repeats, args.warmup, device)
                print_case(name, use_act, shared, rows)
    load_after = os.getloadavg()
    print(f"\nload average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f}")


if __name__ == "__main__":
    main()
