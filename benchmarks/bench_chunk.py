"""Block size of the eager chunked path against the thread count (``CHUNK_ELEMENTS``).

The eager path with an activation (:mod:`perturbnn.kernels.chunked`) computes the layer one
block of perturbed values at a time. This script times one layer forward+backward (the
``large`` case of ``bench_layers.py``: B=16, C=O=128, nmasks=64, 32x32, shared masks, ReLU) for
block sizes ``2**lo`` to ``2**hi`` values, on one thread and on torch's default count, in one
process, interleaved round by round; each sample is a run of consecutive steps of at least
``--sample`` seconds, timed per step. It prints the medians and marks the fastest size per
thread count, and the size :func:`perturbnn.kernels.chunked.default_budget` chooses.

Usage::

    python benchmarks/bench_chunk.py                    # about 2 minutes on 2 cores
    python benchmarks/bench_chunk.py --json benchmarks/results/chunk-cpu.json

Not part of the test run: it prints a table and checks nothing. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from perturbnn.functional import perturb_conv2d
from perturbnn.kernels import chunked

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_contention import LAYER, layer_inputs, time_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lo", type=int, default=17, help="smallest block, as a power of 2")
    parser.add_argument("--hi", type=int, default=23, help="largest block, as a power of 2")
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    parser.add_argument("--sample", type=float, default=0.5, help="seconds per sample")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not 1 <= args.lo <= args.hi <= 30:
        parser.error(f"--lo and --hi must satisfy 1 <= lo <= hi <= 30, got {args.lo}, {args.hi}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if not (math.isfinite(args.sample) and args.sample > 0):
        parser.error(f"--sample must be a positive number, got {args.sample}")
    default = torch.get_num_threads()
    counts = sorted({1, default})
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, thread counts {counts}; load average (1 min) {load:.2f}")
    if load > 0.5:
        print(
            "  warning: the machine is not quiet; other jobs change these times (and which is fastest)"
        )

    x, masks, weight, bias, grad_out = layer_inputs()  # bench_contention's layer
    act = nn.ReLU()

    def step() -> None:
        out = perturb_conv2d(x, masks, weight, bias, level=0.5, activation=act, impl="eager")
        torch.autograd.grad(out, [x, weight, bias], grad_out)

    sizes = list(range(args.lo, args.hi + 1))
    times: dict[tuple[int, int], list[float]] = {}
    chosen = {}
    for count in counts:
        torch.set_num_threads(count)
        chosen[count] = chunked.default_budget("cpu")
    for _ in range(args.repeats):
        for count in counts:
            torch.set_num_threads(count)
            for power in sizes:
                # exactly this size, whatever default_budget would make of the thread count
                with mock.patch.object(chunked, "default_budget", lambda _, p=power: 1 << p):
                    step()
                    per_step, _ = time_sample(step, args.sample)
                times.setdefault((count, power), []).append(per_step)
    torch.set_num_threads(default)

    print("\n| block (values) | " + " | ".join(f"{n} thread(s), ms" for n in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    medians = {key: statistics.median(value) for key, value in times.items()}
    best = {n: min(sizes, key=lambda p, n=n: medians[(n, p)]) for n in counts}
    for power in sizes:
        cells = []
        for n in counts:
            mark = " (fastest)" if best[n] == power else ""
            mark += " (default_budget)" if chosen[n] == 1 << power else ""
            cells.append(f"{medians[(n, power)] * 1000:.1f}{mark}")
        print(f"| 2**{power} | " + " | ".join(cells) + " |")
    if args.json is not None:
        result = {
            "benchmark": "bench_chunk",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "benchmarks/bench_chunk.py", *sys.argv[1:]]),
            "torch": torch.__version__,
            "load_average_before": load,
            "layer": LAYER,
            "default_budget": {str(n): chosen[n] for n in counts},
            "times_s": {f"{n}:{p}": times[(n, p)] for n in counts for p in sizes},
            "fastest": {str(n): 1 << best[n] for n in counts},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
