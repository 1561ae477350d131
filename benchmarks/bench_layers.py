"""Forward+backward time, peak memory and exactness of one PNN layer: literal, each impl, floor.

For each configuration (``large``: batch 16, 128 -> 128 channels, 64 masks, 32x32; ``small``:
batch 64, 16 -> 16 channels, 8 masks, 32x32; ``tiny``: a seconds-long check of the pipeline),
each activation between noise and 1x1 convolution (none, ReLU, ELU, PReLU) and each kind of masks
(shared fixed, unique fixed, shared trainable), one process measures these rows:

- ``literal``: the layer written plainly here (perturbed tensor, activation, grouped 1x1
  ``conv2d``): the reference;
- each ``impl`` of :func:`perturbnn.functional.perturb_conv2d` (``grouped``, ``eager``,
  ``compiled``, ``auto``);
- ``floor``: the cheapest computation of the same layer's shape, the 1x1 convolution it reduces
  to without noise and masks: grouped by input channel (``groups = C``; depthwise when ``O = C``)
  when ``nmasks > 1``, dense when ``nmasks == 1``. No exact PNN layer can beat it by much.

Before timing, every row's output and gradients (input, weight, bias, trainable masks, the PReLU
slope) are compared with the literal row: ``rel_error`` is the largest ``max|a - b| / max|b|``
over them. The script exits with status 1 when any row's error exceeds ``--tolerance``
(default 1e-5), after writing its results. A step is the forward pass and
``torch.autograd.grad`` of the output against a fixed random gradient. The first step of each row
is timed apart (``torch.compile`` compiles there), then ``--warmup`` steps, then ``--repeats``
rounds in which every row runs one step in turn (so a change of machine load hits all rows
alike); the tables give medians and ratios within one run. Peak extra memory is the largest
running total of the bytes torch's CPU allocator handed out during one step, from
``torch.profiler`` memory events (on CUDA: the caching allocator's peak statistics).

Usage::

    python benchmarks/bench_layers.py --json benchmarks/results/layers-cpu.json
    python benchmarks/make_tables.py      # regenerates the tables in docs/performance.md
    python benchmarks/bench_layers.py --configs tiny --repeats 2 --json tiny.json  # quick

Not part of the test run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from perturbnn.functional import perturb_conv2d, resolve_impl

CONFIGS = {
    "large": {"batch": 16, "channels": 128, "out_channels": 128, "nmasks": 64, "size": 32},
    "small": {"batch": 64, "channels": 16, "out_channels": 16, "nmasks": 8, "size": 32},
    "tiny": {"batch": 4, "channels": 8, "out_channels": 16, "nmasks": 4, "size": 8},
}
IMPLS = ("grouped", "eager", "compiled", "auto")
ACTIVATIONS: dict[str, Optional[Callable[[], nn.Module]]] = {
    "none": None,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "prelu": nn.PReLU,
}
MASKS = ("shared", "unique", "shared-trained")
LEVEL = 0.5


def literal(
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
    times: list[float] = field(default_factory=list)
    peak: int = 0
    error: Optional[float] = None


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
    act_name: str,
    masks_kind: str,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    b, c, o, m, s = (config[k] for k in ("batch", "channels", "out_channels", "nmasks", "size"))
    x = torch.randn(b, c, s, s, generator=gen).to(device).requires_grad_()
    shared = masks_kind.startswith("shared")
    masks = (torch.rand(1 if shared else c, m, s, s, generator=gen) * 2 - 1).to(device)
    masks.requires_grad_(masks_kind.endswith("trained"))
    groups = c if m > 1 else 1
    conv = nn.Conv2d(c * m, o, 1, groups=groups)  # nn.Conv2d's initialization
    weight = conv.weight.detach().to(device).requires_grad_()
    bias = conv.bias.detach().to(device).requires_grad_()  # type: ignore[union-attr]
    factory = ACTIVATIONS[act_name]
    act = None if factory is None else factory().to(device)
    floor = nn.Conv2d(c, o, 1, groups=groups).to(device)  # the same shape without the masks
    grad_out = torch.randn(b, o, s, s, generator=gen).to(device)
    params = [t for t in (x, masks, weight, bias) if t.requires_grad]
    if act is not None:
        params += list(act.parameters())
    rows = [Row("literal", "literal", lambda: literal(x, masks, weight, bias, act), params)]
    for impl in IMPLS:
        rows.append(
            Row(
                impl,
                resolve_impl(impl, m, act),
                lambda impl=impl: perturb_conv2d(  # type: ignore[misc]
                    x, masks, weight, bias, level=LEVEL, activation=act, impl=impl
                ),
                params,
            )
        )
    kind = "dense" if groups == 1 else ("depthwise" if o == c else "grouped")
    rows.append(
        Row("floor", f"{kind} 1x1 conv", lambda: floor(x), [x, floor.weight, floor.bias])  # type: ignore[list-item]
    )
    reference = step(rows[0], grad_out)
    for row in rows:
        row.first = timed_step(row, grad_out)
        if row.name != "floor":
            row.error = relative_error(step(row, grad_out), reference)
        for _ in range(warmup):
            timed_step(row, grad_out)
    del reference
    for _ in range(repeats):
        for row in rows:
            row.times.append(timed_step(row, grad_out))
    for row in rows:
        row.peak = peak_bytes(row, grad_out)
    return rows


def case_record(config_name: str, act: str, masks: str, rows: list[Row]) -> dict[str, Any]:
    return {
        "config": config_name,
        **CONFIGS[config_name],
        "activation": act,
        "masks": masks,
        "rows": [
            {
                "name": row.name,
                "path": row.path,
                "first_s": row.first,
                "median_s": statistics.median(row.times),
                "times_s": row.times,
                "peak_bytes": row.peak,
                "rel_error": row.error,
            }
            for row in rows
        ],
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--configs", default="large,small", help=f"of {sorted(CONFIGS)}")
    parser.add_argument("--activations", default=",".join(ACTIVATIONS))
    parser.add_argument("--masks", default=",".join(MASKS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest rel. error")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    for flag, given, valid in (
        ("--configs", args.configs, CONFIGS),
        ("--activations", args.activations, ACTIVATIONS),
        ("--masks", args.masks, MASKS),
    ):
        unknown = sorted(set(given.split(",")) - set(valid))
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; valid: {sorted(valid)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # exactness is checked in float32, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(f"torch {torch.__version__}, {args.threads} threads, {where}", flush=True)
    load_before = os.getloadavg()[0]
    cases = []
    failures = []
    for name in args.configs.split(","):
        for act in args.activations.split(","):
            for masks in args.masks.split(","):
                rows = run_case(CONFIGS[name], act, masks, args.repeats, args.warmup, device)
                record = case_record(name, act, masks, rows)
                cases.append(record)
                literal_median = record["rows"][0]["median_s"]
                for row in record["rows"]:
                    bad = row["rel_error"] is not None and row["rel_error"] > args.tolerance
                    if bad:
                        failures.append(f"{name}/{act}/{masks}/{row['name']}")
                    print(
                        f"{name:5s} {act:5s} {masks:14s} {row['name']:8s} {row['path']:20s} "
                        f"median {row['median_s']:.4f} s "
                        f"({literal_median / row['median_s']:.1f}x literal) "
                        f"err {row['rel_error'] if row['rel_error'] is not None else '-'}"
                        f"{'  EXCEEDS TOLERANCE' if bad else ''}",
                        flush=True,
                    )
    result = {
        "benchmark": "bench_layers",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_layers.py", *(argv or sys.argv[1:])]),
        "torch": torch.__version__,
        "device": where,
        "device_type": device.type,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "tolerance": args.tolerance,
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "cases": cases,
        "failures": failures,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    if failures:
        print(f"error above {args.tolerance:g} relative in: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
