"""Does a lower ``GOMP_SPINCOUNT`` keep 2 threads fast beside a competing process? (issue 12)

GNU OpenMP (libgomp, which torch's Linux wheels use) lets a waiting thread spin for
``GOMP_SPINCOUNT`` rounds (300,000 by default) before it sleeps; beside another busy process the
spinning takes the core that the late thread needs (docs/performance.md, "Sharing the CPU").
libgomp reads the variable only when torch loads it, so each setting runs in a process of its
own: for each ``(GOMP_SPINCOUNT, threads)`` pair (``default`` = unset), one worker process
builds the rows of ``bench_contention.py`` (the PNN layer, B=16, C=O=128, nmasks=64, 32x32,
shared masks, each impl with and without ReLU; a ``perturb_resnet18`` training step for three
impls), runs each row twice (compilation), then times ``--repeats`` interleaved rounds quiet and
then ``--repeats`` beside a competing process (2 torch threads doing 512x512 matrix products,
started and stopped by this script). The settings are visited in turn, ``--reps`` times over.

The table gives, per setting and row, the median over the visits of (busy median / the quiet
median of ``default`` with 2 threads), the slowdown a user sees against the quiet default, and
each setting's quiet median against that same reference. ``threads = 1`` is what the harness's
``ContentionGuard`` chooses beside a 2-thread competitor on 2 cores.

Usage::

    python benchmarks/bench_spincount.py --json benchmarks/results/spincount-cpu.json  # ~14 min
    python benchmarks/bench_spincount.py --settings default:2 100000:2 --reps 1

Not part of the test run: it prints a table and checks nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_contention import Competitor  # noqa: E402  (the same competing process)

CLEAN = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def worker(threads: int, data_dir: Path, repeats: int, cap: float) -> None:
    """Build and warm the rows, then on each ``PHASE`` line on stdin time one phase as JSON."""
    import torch

    from bench_contention import layer_rows, train_rows

    torch.set_num_threads(threads)
    rows = layer_rows() + train_rows(data_dir)
    for row in rows:
        row.step()
        row.step()
    print("ready", flush=True)
    for line in sys.stdin:
        times: dict[str, list[float]] = {row.name: [] for row in rows}
        spent = dict.fromkeys(times, 0.0)
        for round_ in range(repeats):
            for row in rows:
                if round_ >= 3 and spent[row.name] > cap:
                    continue
                start = time.perf_counter()
                row.step()
                took = time.perf_counter() - start
                times[row.name].append(took)
                spent[row.name] += took
        print(json.dumps({"phase": line.strip(), "times": times}), flush=True)


def visit(spin: Optional[int], threads: int, args: argparse.Namespace) -> dict[str, object]:
    """One worker with this setting: quiet phase, then busy phase; medians per row."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if spin is not None:
        env["GOMP_SPINCOUNT"] = str(spin)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(threads)]
    command += ["--data-dir", str(args.data_dir), "--repeats", str(args.repeats)]
    command += ["--cap", str(args.cap)]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the worker for {spin}:{threads} failed (exit {proc.wait()})")
        medians: dict[str, dict[str, float]] = {}
        for phase in ("quiet", "busy"):
            with Competitor() if phase == "busy" else contextlib.nullcontext():
                proc.stdin.write(phase + "\n")
                proc.stdin.flush()
                answer = json.loads(proc.stdout.readline())
            medians[phase] = {k: statistics.median(v) for k, v in answer["times"].items()}
        return medians
    finally:
        proc.kill()
        proc.wait()


def parse_setting(text: str) -> Optional[tuple[Optional[int], int]]:
    """``"100000:2"`` -> ``(100000, 2)``, ``"default:1"`` -> ``(None, 1)``; ``None`` if malformed."""
    spin, _, threads = text.partition(":")
    try:
        pair = (None if spin == "default" else int(spin)), int(threads)
    except ValueError:
        return None
    return pair if pair[1] > 0 and (pair[0] is None or pair[0] >= 0) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["default:2", "100000:2", "30000:2", "default:1"],
        help="GOMP_SPINCOUNT:THREADS pairs ('default' = unset); the first is the reference",
    )
    parser.add_argument("--reps", type=int, default=2, help="visits of every setting")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per phase")
    parser.add_argument("--cap", type=float, default=12.0, help="seconds per row and phase")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.data_dir, args.repeats, args.cap)
        return
    parsed = [parse_setting(s) for s in args.settings]
    for text, pair in zip(args.settings, parsed):
        if pair is None:
            parser.error(f"--settings: {text!r} is not SPIN:THREADS (SPIN >= 0 or 'default')")
    settings = [pair for pair in parsed if pair is not None]
    if args.reps < 1 or args.repeats < 1:
        parser.error("--reps and --repeats must be positive")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min); settings {args.settings}")
    visits: dict[str, list[dict[str, object]]] = {s: [] for s in args.settings}
    for rep in range(args.reps):
        for text, (spin, threads) in zip(args.settings, settings):
            result = visit(spin, threads, args)
            visits[text].append(result)
            print(f"visit {rep + 1}: {text} done", flush=True)
    reference = args.settings[0]
    rows = list(visits[reference][0]["quiet"])  # type: ignore[call-overload]

    def median_of(setting: str, phase: str, row: str) -> float:
        return statistics.median(v[phase][row] for v in visits[setting])  # type: ignore[index]

    print(
        f"\nBusy median / quiet median of {reference} (median over {args.reps} visits); "
        "in brackets: quiet median / that of the reference"
    )
    print("| step | " + " | ".join(args.settings) + " |")
    print("|---|" + "---:|" * len(args.settings))
    table = []
    for row in rows:
        base = median_of(reference, "quiet", row)
        cells = []
        for setting in args.settings:
            busy = median_of(setting, "busy", row) / base
            quiet = median_of(setting, "quiet", row) / base
            cells.append(f"{busy:.1f}x ({quiet:.2f})")
            table.append({"step": row, "setting": setting, "busy": busy, "quiet": quiet})
        print(f"| {row} | " + " | ".join(cells) + " |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        results = {
            "command": " ".join(["python", "benchmarks/bench_spincount.py", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "reference": reference,
            "visits": visits,
            "table": table,
        }
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
