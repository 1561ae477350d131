"""Inference time and memory of PNN models before and after :func:`perturbnn.reparameterize`.

For each configuration, one process builds the model in eval mode, folds a copy, checks that
both give the same outputs (``max|folded - unfolded| / max|unfolded|`` must stay under
``--tolerance``, else exit status 1 after the table), then times inference (``torch.no_grad``)
in ``--repeats`` rounds in which the unfolded and the folded model each run one batch in turn,
after ``--warmup`` rounds, so that a change of machine load hits both alike. The table gives
the medians, the ratio unfolded / folded (above 1: folding is faster) and the parameter and
buffer bytes of both (the unfolded model's fixed noise masks are buffers; the folded model's
bias maps too). The unfolded layers run their default ``impl="auto"``, which without an
activation is already the exact algebraic form (:mod:`perturbnn.kernels.linear`); folding
saves recomputing the bias map at every call.

Configurations (batch 16, 32x32, float32):

- ``layer-fanout64-shared``: ``PerturbConv2d(128, 128, nmasks=64, unique_masks=False)``;
- ``layer-fanout64-shared-mix``: the same followed by ``MixMaps(128)`` (merged when folded);
- ``layer-fanout1``: ``PerturbConv2d(128, 128, nmasks=1)``;
- ``perturb_resnet18``: ``nfilters=24, nmasks=8``; only its first layer has no activation, so
  only that one folds;
- ``converted-resnet18``: torchvision's ResNet-18 (10 classes) through ``perturbnn.convert``
  (``nmasks=8``, no activation): its 19 perturbation layers fold;
- ``tiny``: a seconds-long check of the pipeline.

Usage::

    python benchmarks/bench_fold.py
    python benchmarks/bench_fold.py --configs tiny layer-fanout1 --repeats 5   # quick
    python benchmarks/bench_fold.py --json fold.json

Not part of the test run. On a busy machine (the load average is printed) the ratios within
one run stay comparable; the absolute times do not.
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
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torchvision
from torch import Tensor, nn

import perturbnn
from perturbnn import MixMaps, PerturbConv2d, build_model, convert, reparameterize

SIZE = 32


def layer(nmasks: int, unique: bool, mix: bool = False, channels: int = 128) -> nn.Module:
    module: nn.Module = PerturbConv2d(
        channels, channels, nmasks, input_size=SIZE, level=0.5, unique_masks=unique
    )
    if mix:
        module = nn.Sequential(module, MixMaps(channels))
    return module


def converted_resnet18() -> nn.Module:
    model, _ = convert(torchvision.models.resnet18(num_classes=10), nmasks=8, level=0.5)
    with torch.no_grad():
        model.eval()(torch.zeros(2, 3, SIZE, SIZE))  # draws the lazy masks at 32x32
    return model


#: name -> (builder, input channels, batch)
CONFIGS: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
    "layer-fanout64-shared": (lambda: layer(64, False), 128, 16),
    "layer-fanout64-shared-mix": (lambda: layer(64, False, mix=True), 128, 16),
    "layer-fanout1": (lambda: layer(1, True), 128, 16),
    "perturb_resnet18": (
        lambda: build_model("perturb_resnet18", nfilters=24, nmasks=8, input_size=SIZE),
        3,
        16,
    ),
    "converted-resnet18": (converted_resnet18, 3, 16),
    "tiny": (lambda: layer(4, True, mix=True, channels=8), 8, 4),
}


def nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def timed(model: nn.Module, x: Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - start


def run_config(name: str, repeats: int, warmup: int, tolerance: float) -> dict[str, Any]:
    make, channels, batch = CONFIGS[name]
    torch.manual_seed(0)
    model = make().eval()
    folded, report = reparameterize(model)
    x = torch.randn(batch, channels, SIZE, SIZE)
    with torch.no_grad():
        want, got = model(x), folded(x)
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
    models = {"unfolded": model, "folded": folded}
    times: dict[str, list[float]] = {key: [] for key in models}
    for round_ in range(warmup + repeats):
        for key, module in models.items():
            seconds = timed(module, x)
            if round_ >= warmup:
                times[key].append(seconds)
    return {
        "name": name,
        "batch": batch,
        "folded_layers": len(report.folded),
        "kept_layers": len(report.kept),
        "rel_error": error,
        "ok": error <= tolerance,
        "times_s": times,
        "median_s": {key: statistics.median(values) for key, values in times.items()},
        "parameter_bytes": {key: nbytes(m.parameters()) for key, m in models.items()},
        "buffer_bytes": {key: nbytes(m.buffers()) for key, m in models.items()},
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| configuration | batch | folded / kept layers | unfolded (ms) | folded (ms) "
        "| unfolded / folded | params (MB) unfolded -> folded | buffers (MB) unfolded -> folded "
        "| rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    mb = 1e-6
    for r in results:
        median = r["median_s"]
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['folded_layers']} / {r['kept_layers']} "
            f"| {median['unfolded'] * 1e3:.2f} | {median['folded'] * 1e3:.2f} "
            f"| {median['unfolded'] / median['folded']:.2f} "
            f"| {r['parameter_bytes']['unfolded'] * mb:.3f} -> "
            f"{r['parameter_bytes']['folded'] * mb:.3f} "
            f"| {r['buffer_bytes']['unfolded'] * mb:.3f} -> {r['buffer_bytes']['folded'] * mb:.3f} "
            f"| {r['rel_error']:.1e}{'' if r['ok'] else ' FAIL'} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=sorted(CONFIGS),
        default=[name for name in CONFIGS if name != "tiny"],
        help="configurations to run (default: all but tiny)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest relative error")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    for flag, value in (("--repeats", args.repeats), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be a positive integer, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if not (args.tolerance > 0 and args.tolerance < float("inf")):
        parser.error(f"--tolerance must be a positive finite number, got {args.tolerance}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    results = [run_config(name, args.repeats, args.warmup, args.tolerance) for name in args.configs]
    load_after = os.getloadavg()[0]
    header = (
        f"perturbnn {perturbnn.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load_before:.2f} -> {load_after:.2f}, "
        f"median of {args.repeats} rounds (after {args.warmup}), inference (no_grad), float32"
    )
    print(header)
    print(table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average_before_after": [load_before, load_after],
            "repeats": args.repeats,
            "warmup": args.warmup,
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
