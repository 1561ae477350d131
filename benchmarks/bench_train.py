"""Images per second of a perturb_resnet18 training step on CIFAR-10, for each ``impl``.

One process builds the same network (same masks and weights) once per ``impl``, then times
training steps (forward, cross-entropy, backward, SGD step) on real CIFAR-10 batches read from
the offline ``.npz`` files. Steps of the different impls are interleaved (one step of each, in
turn) so that a change of machine load affects them alike; the table reports the median step
time, images per second and the ratio to ``impl="grouped"``. The first step of each impl is
timed apart (``torch.compile`` compiles there).

Usage::

    python benchmarks/bench_train.py                      # nfilters 16, nmasks 16, batch 32
    python benchmarks/bench_train.py --nfilters 32 --batch-size 64 --steps 10
    python benchmarks/bench_train.py --device cuda --nfilters 64 --batch-size 128
    python benchmarks/bench_train.py --act prelu --train-masks   # PReLU/ELU, trainable masks
    python benchmarks/bench_train.py --json benchmarks/results/train-cpu.json  # for make_tables

Not part of the test run. With ``--json`` it writes its results for ``make_tables.py``.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perturbnn import build_model

IMPLS = ("grouped", "eager", "compiled", "auto")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def load_batches(
    data_dir: Path, batch_size: int, count: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` normalized CIFAR-10 training batches from ``cifar10_train_1.npz``."""
    files = sorted(glob.glob(str(data_dir / "cifar10" / "cifar10_train_[1-5].npz")))
    if not files:
        raise SystemExit(f"no CIFAR-10 .npz files under {data_dir / 'cifar10'}")
    with np.load(files[0]) as part:
        images, labels = part["images"], part["labels"]
    need = batch_size * count
    if need > len(images):
        raise SystemExit(f"{need} images requested, {files[0]} has {len(images)}")
    x = torch.from_numpy(images[:need]).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.from_numpy(labels[:need].astype(np.int64))
    return list(zip(x.split(batch_size), y.split(batch_size)))


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=here.parent.parent / "shared" / "data")
    parser.add_argument("--nfilters", type=int, default=16)
    parser.add_argument("--nmasks", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per impl")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--act", default="relu", help="activation (relu, elu, prelu, ...)")
    parser.add_argument("--train-masks", action="store_true", help="trainable noise masks")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = args.impls.split(",")
    batches = [
        (x.to(device), y.to(device))
        for x, y in load_batches(args.data_dir, args.batch_size, args.steps + 1)
    ]
    options = {
        "nfilters": args.nfilters,
        "nmasks": args.nmasks,
        "unique_masks": False,
        "first_filter_size": 3,
        "act": args.act,
        "train_masks": args.train_masks,
        "input_size": 32,  # masks drawn at construction, so the copies below share them
    }
    torch.manual_seed(0)
    reference = build_model("perturb_resnet18", impl="grouped", **options)
    models, optimizers = {}, {}
    for impl in impls:
        model = build_model("perturb_resnet18", impl=impl, device=device, **options)
        model.load_state_dict(reference.state_dict())
        models[impl] = model.train()
        optimizers[impl] = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(impl: str, x: torch.Tensor, y: torch.Tensor) -> float:
        sync()
        start = time.perf_counter()
        optimizers[impl].zero_grad(set_to_none=True)
        loss = F.cross_entropy(models[impl](x), y)
        loss.backward()
        optimizers[impl].step()
        sync()
        return time.perf_counter() - start

    first = {impl: step(impl, *batches[0]) for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    load_before = os.getloadavg()
    for x, y in batches[1:]:
        for impl in impls:
            times[impl].append(step(impl, x, y))
    load_after = os.getloadavg()

    description = (
        f"perturb_resnet18 training step: nfilters={args.nfilters}, nmasks={args.nmasks}, "
        f"shared {'trainable' if args.train_masks else 'fixed'} masks, act={args.act}, "
        f"first_filter_size=3, batch {args.batch_size}, {args.steps} steps per impl "
        f"(interleaved), CIFAR-10 train batches"
    )
    print(description)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{args.threads} threads, {platform.processor() or platform.machine()}"
    )
    print(
        f"torch {torch.__version__}, {where}, "
        f"load average before/after {load_before[0]:.2f}/{load_after[0]:.2f}"
    )
    print()
    print("| impl | first step (s) | median step (s) | images/s | x grouped |")
    print("|---|---:|---:|---:|---:|")
    base = statistics.median(times["grouped"]) if "grouped" in times else None
    for impl in impls:
        median = statistics.median(times[impl])
        ratio = f"{base / median:.1f}" if base else "-"
        print(
            f"| {impl} | {first[impl]:.2f} | {median:.3f} | {args.batch_size / median:.0f} | {ratio} |"
        )
    if args.json is not None:
        result = {
            "benchmark": "bench_train",
            "description": description,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/bench_train.py", *sys.argv[1:]]),
            "torch": torch.__version__,
            "device": where,
            "batch_size": args.batch_size,
            "load_average_before_after": [load_before[0], load_after[0]],
            "rows": [
                {
                    "impl": impl,
                    "first_s": first[impl],
                    "median_s": statistics.median(times[impl]),
                    "times_s": times[impl],
                }
                for impl in impls
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
