"""Slowdown beside a competing process: PNN layer steps and a training step, quiet and busy.

For each ``impl`` (``grouped``, ``eager``, ``compiled``), with and without an activation (ReLU),
one PNN layer forward+backward (B=16, C=O=128, nmasks=64, 32x32, shared masks: the ``large``
case of ``bench_layers.py``), and a ``perturb_resnet18`` training step (the ``bench_train.py``
configuration: width 16, nmasks 16, shared masks, first_filter_size 3, batch 32 of CIFAR-10),
timed in one process, in three phases:

- **quiet**: nothing else started (the script prints the CPU that other processes used just
  before, and warns when it is more than a tenth of a CPU);
- **busy**: beside one competing process that the script starts and stops itself: 2 torch
  threads doing 512x512 matrix products in a loop, with torch's defaults (a "user's other job"),
  in this script's session, as ``python a.py & python b.py`` from one shell starts them;
- **apart**: the same competitor started in its own session (``setsid``), as a job started
  from another terminal or tmux window is. Where Linux groups processes by session
  (``/proc/sys/kernel/sched_autogroup_enabled`` is 1, outside a CPU cgroup) each session gets
  an even share of the CPU, whatever its thread count; in one session, each thread does.

Each sample is a run of consecutive steps of at least ``--sample`` seconds (as a training loop
runs them), reported per step: one step of a few milliseconds would measure where the
scheduler's time slices happen to fall, not the share of the CPU the process gets. Each row
runs in three thread modes, interleaved sample by sample so that a change of load hits all:

- ``fixed``: torch's default thread count, fixed (what a script of your own gets);
- ``harness``: what ``perturbnn-repro`` does (:func:`perturbnn.repro.runtime.configure_threads`:
  the same count, lowered by the :class:`~perturbnn.repro.runtime.ContentionGuard` while other
  processes keep the CPUs busy; the guard is asked before every step, as the training loop
  does, and decides once a second);
- ``one``: one thread throughout: how much faster the step is on all threads when quiet, and
  what share of a core one thread gets beside the competitor (the guard's choice when busy).

**Own loop** (``--only own-loop`` runs these alone: about 4 minutes on 2 quiet cores with the
defaults, 17 with the committed runs' ``--repeats 9 --sample 1.5 --cap 40 --ab-seconds 12``):
a user's script of its own, with 2 threads fixed (``torch.set_num_threads(2)``): a
``PerturbConv2d(128, 128, nmasks=64, input_size=32, level=0.1, unique_masks=False)``
forward+backward on B=16 for each ``impl``, with and without ReLU (``use_act``), and the
``perturb_resnet18`` training step above, each timed ``plain`` (nothing else) and ``shared``
(a copy of the same model under :func:`perturbnn.share_cpu`), quiet then busy (the competitor
in the same session), interleaved as above. Each ``shared`` model has its own handle; before
each of its samples the count is set to the one its guard chose last (the ``plain`` samples
between them run at 2), as the process would have it if it ran only that model, and at the
start of each phase every guard's window restarts and covers a second of that phase before the
first sample (as in a loop that ran on). The quiet phase ends with an A/B comparison per row:
``plain`` and ``shared`` steps alternating one by one for ``--ab-seconds`` (at least
``--ab-pairs`` pairs), the ratio of their total times with a 95% bootstrap interval (whole
samples taken one after the other see the machine's speed drift between them; single steps
taken in turn see it alike). It also times the hook itself (an ``nn.Identity`` called with and
without :func:`~perturbnn.share_cpu`) and counts the thread changes each handle made per phase.

The table gives medians and the busy/quiet ratios (an even share of 2 cores with one other
job is 2x). It then times the README's main job (``python -m perturbnn.repro``, the demo: under
3 minutes on 2 quiet cores) quiet and beside the competitor (both sessions), with the
harness's choice, and quiet and busy with ``--threads N`` (fixed, torch's count; ``--main-job
harness`` skips these); a busy run still going after ``--main-job-limit`` times its quiet time
is stopped and shown as ``>``.

Usage::

    python benchmarks/bench_contention.py                   # about 35 minutes on 2 cores
    python benchmarks/bench_contention.py --quick --main-job skip
    python benchmarks/bench_contention.py --only own-loop --json benchmarks/results/contention-own-1.json
    python benchmarks/bench_contention.py --json benchmarks/results/contention.json

Not part of the test run: it prints a table and checks nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perturbnn import PerturbConv2d, SharedCPU, build_model, share_cpu
from perturbnn.functional import perturb_conv2d
from perturbnn.repro.runtime import available_cpus
from perturbnn.threads import ContentionGuard, _read_proc_stat

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_train import load_batches  # noqa: E402

COMPETITOR = """
import sys, torch
torch.set_num_threads(2)
a, b = torch.randn(512, 512), torch.randn(512, 512)
print("ready", flush=True)
while True:
    torch.mm(a, b)
"""
LAYER = {"batch": 16, "channels": 128, "out_channels": 128, "nmasks": 64, "size": 32}
LAYER_IMPLS = ("grouped", "eager", "compiled")
TRAIN_IMPLS = ("grouped", "auto", "compiled")
MODES = ("fixed", "harness", "one")
PHASES = ("quiet", "busy", "apart")
OWN_THREADS = 2  # what the user's script fixes
OWN_LAYER = {"in_channels": 128, "out_channels": 128, "nmasks": 64, "input_size": 32}
OWN_MODES = ("plain", "shared")
OWN_PHASES = ("quiet", "busy")


@dataclass
class Row:
    name: str
    step: Callable[[], None]
    times: dict[str, list[float]] = field(default_factory=dict)  # "quiet/fixed" -> seconds
    spent: dict[str, float] = field(default_factory=dict)
    model: Optional[nn.Module] = None  # the training rows' network, optimizer and batches
    optimizer: Optional[torch.optim.Optimizer] = None
    batches: list[tuple[Tensor, Tensor]] = field(default_factory=list)


def others_cpu(seconds: float = 1.0) -> Optional[float]:
    """CPUs (fractional) that other processes used during ``seconds``, on this process's CPUs."""
    cpus = set(os.sched_getaffinity(0))
    before, own0, t0 = _read_proc_stat(cpus), time.process_time(), time.monotonic()
    time.sleep(seconds)
    after, own1, t1 = _read_proc_stat(cpus), time.process_time(), time.monotonic()
    if before is None or after is None:
        return None
    return max(0.0, (after[0] - before[0] - (own1 - own0)) / (t1 - t0))


def top_processes(count: int = 4) -> str:
    """The busiest other processes (``ps``: CPU share over each one's lifetime)."""
    try:
        text = subprocess.run(
            ["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "(ps unavailable)"
    lines = []
    for line in text.splitlines()[1:]:
        pid, _, rest = line.strip().partition(" ")
        if pid != str(os.getpid()):
            lines.append(f"    {rest.strip()[:100]}")
    return "\n".join(lines[:count])


def check_quiet(label: str) -> float:
    used = others_cpu()
    load = os.getloadavg()[0]
    shown = "unknown" if used is None else f"{used:.2f}"
    print(f"[{label}] other processes used {shown} CPUs; load average (1 min) {load:.2f}")
    if used is not None and used > 0.1:
        print(
            f"  warning: the machine is not quiet; the 'quiet' figures are inflated\n"
            f"{top_processes()}"
        )
    return -1.0 if used is None else used


def autogroup() -> Optional[bool]:
    """Whether Linux shares the CPU out by session (``sched_autogroup_enabled``), or ``None``."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


class Competitor:
    """One other process doing 2-thread matrix products until stopped.

    Args:
        own_session: start it in a session of its own (``setsid``), like a job started from
            another terminal, instead of in this script's session.
    """

    def __init__(self, own_session: bool = False) -> None:
        self.own_session = own_session

    def __enter__(self) -> Competitor:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", COMPETITOR],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=self.own_session,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the competing process did not start")
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def layer_inputs() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``x, masks, weight, bias, grad_out`` of the :data:`LAYER` case (seeded; shared masks)."""
    gen = torch.Generator().manual_seed(0)
    b, c, o, m, s = (LAYER[k] for k in ("batch", "channels", "out_channels", "nmasks", "size"))
    x = torch.randn(b, c, s, s, generator=gen).requires_grad_()
    masks = torch.rand(1, m, s, s, generator=gen) * 2 - 1
    conv = nn.Conv2d(c * m, o, 1, groups=c)
    weight = conv.weight.detach().requires_grad_()
    bias = conv.bias.detach().requires_grad_()  # type: ignore[union-attr]
    grad_out = torch.randn(b, o, s, s, generator=gen)
    return x, masks, weight, bias, grad_out


def layer_rows() -> list[Row]:
    x, masks, weight, bias, grad_out = layer_inputs()
    rows = []
    for impl in LAYER_IMPLS:
        for act in (None, nn.ReLU()):

            def step(impl: str = impl, act: Optional[nn.Module] = act) -> None:
                out = perturb_conv2d(x, masks, weight, bias, level=0.5, activation=act, impl=impl)
                torch.autograd.grad(out, [x, weight, bias], grad_out)

            rows.append(Row(f"layer {impl}, {'ReLU' if act else 'no activation'}", step))
    return rows


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[tuple[Tensor, Tensor]]
) -> Callable[[], None]:
    """One SGD step of ``model`` per call, on the next of ``batches`` in turn."""
    count = [0]

    def step() -> None:
        x, y = batches[count[0] % len(batches)]
        count[0] += 1
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def train_rows(data_dir: Path) -> list[Row]:
    batches = load_batches(data_dir, 32, 4)
    options = {
        "nfilters": 16,
        "nmasks": 16,
        "unique_masks": False,
        "first_filter_size": 3,
        "input_size": 32,
    }
    torch.manual_seed(0)
    reference = build_model("perturb_resnet18", impl="grouped", **options)
    rows = []
    for impl in TRAIN_IMPLS:
        model = build_model("perturb_resnet18", impl=impl, **options)
        model.load_state_dict(reference.state_dict())
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        rows.append(
            Row(
                f"perturb_resnet18 train step, {impl}",
                train_step(model, optimizer, batches),
                model=model,
                optimizer=optimizer,
                batches=batches,
            )
        )
    return rows


@dataclass
class OwnRow:
    """One step of a user's own loop, on two copies of one model: ``plain`` and ``shared``
    (under :func:`perturbnn.share_cpu`, whose handle is ``handle``)."""

    name: str
    steps: dict[str, Callable[[], None]]
    handle: SharedCPU
    times: dict[str, list[float]] = field(default_factory=dict)  # "quiet/plain" -> seconds
    first: dict[str, list[float]] = field(default_factory=dict)  # each sample's untimed step
    spent: dict[str, float] = field(default_factory=dict)


def own_loop_rows(data_dir: Path) -> list[OwnRow]:
    """The own-loop rows: the layer per impl, without and with ReLU, and the training step."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(LAYER["batch"], 128, 32, 32, generator=gen).requires_grad_()
    grad_out = torch.randn(LAYER["batch"], 128, 32, 32, generator=gen)
    rows = []
    for impl in LAYER_IMPLS:
        for relu in (False, True):
            torch.manual_seed(0)
            layer = PerturbConv2d(
                **OWN_LAYER, level=0.1, unique_masks=False, use_act=relu, impl=impl
            )
            shared = copy.deepcopy(layer)
            handle = share_cpu(shared)

            def layer_step(module: nn.Module) -> None:
                x.grad = None
                module.zero_grad(set_to_none=True)
                module(x).backward(grad_out)

            rows.append(
                OwnRow(
                    f"PerturbConv2d {impl}, {'ReLU' if relu else 'no activation'}",
                    {
                        "plain": lambda m=layer: layer_step(m),
                        "shared": lambda m=shared: layer_step(m),
                    },
                    handle,
                )
            )
    for row in train_rows(data_dir):  # the same set-up, run on a copy under share_cpu
        assert row.model is not None
        shared = copy.deepcopy(row.model)
        handle = share_cpu(shared)
        shared_optimizer = torch.optim.SGD(shared.parameters(), lr=0.01, momentum=0.9)
        rows.append(
            OwnRow(
                row.name,
                {"plain": row.step, "shared": train_step(shared, shared_optimizer, row.batches)},
                handle,
            )
        )
    return rows


def run_own_phase(phase: str, rows: list[OwnRow], repeats: int, cap: float, sample: float) -> None:
    """As :func:`run_phase`, for the own-loop rows: ``plain`` at :data:`OWN_THREADS` threads,
    ``shared`` at the count its guard chose last (its hook asks the guard at every step); the
    two take turns at going first in a row, round by round."""
    for round_ in range(repeats):
        # The mode that runs first after another row pays for that row's allocations (the
        # grouped layer's 0.5 GB tensors are fresh pages again): alternate which one it is.
        modes = OWN_MODES if round_ % 2 == 0 else OWN_MODES[::-1]
        for row in rows:
            for mode in modes:
                key = f"{phase}/{mode}"
                times = row.times.setdefault(key, [])
                if round_ >= 3 and row.spent.get(key, 0.0) > cap:
                    continue
                guard = row.handle.guard
                count = guard.threads if mode == "shared" and guard is not None else OWN_THREADS
                torch.set_num_threads(count)
                # one step first, timed apart: a loop running on has just run a step of its own,
                # not another row's (on the 2-core VM the grouped layer's first step after other
                # rows was 2-4x slower than the next: fresh pages for its 0.5 GB tensors, likely
                # ones that the VM's free page reporting had handed back to the host meanwhile)
                first, _ = time_sample(row.steps[mode], 0.0)  # exactly one step
                row.first.setdefault(key, []).append(first)
                per_step, took = time_sample(row.steps[mode], sample)
                times.append(per_step)
                row.spent[key] = row.spent.get(key, 0.0) + first + took
    torch.set_num_threads(OWN_THREADS)


def quiet_ab(row: OwnRow, seconds: float, min_pairs: int) -> dict[str, Any]:
    """``plain`` and ``shared`` steps of one row, alternating step by step, quiet: the ratio of
    their total times (shared / plain) with a 95% bootstrap interval over the pairs.

    Both models compute the same thing at the same thread count when the guard changes nothing,
    so any difference is the hook's cost plus noise; alternating single steps lets a change of
    the machine's speed (the other VMs on its host, page faults of the grouped layer's 0.5 GB
    tensors) hit both alike, which whole samples taken one after the other do not.
    """
    torch.set_num_threads(OWN_THREADS)
    for mode in OWN_MODES:  # a step each first (see run_own_phase)
        row.steps[mode]()
    times: dict[str, list[float]] = {mode: [] for mode in OWN_MODES}
    start = time.perf_counter()
    while len(times["plain"]) < min_pairs or time.perf_counter() - start < seconds:
        order = OWN_MODES if len(times["plain"]) % 2 == 0 else OWN_MODES[::-1]
        for mode in order:
            began = time.perf_counter()
            row.steps[mode]()
            times[mode].append(time.perf_counter() - began)
    plain = torch.tensor(times["plain"], dtype=torch.float64)
    shared = torch.tensor(times["shared"], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    picks = torch.randint(len(plain), (2000, len(plain)), generator=gen)
    boot = (shared[picks].sum(1) / plain[picks].sum(1)).sort().values
    return {
        "plain_s": times["plain"],
        "shared_s": times["shared"],
        "ratio": float(shared.sum() / plain.sum()),
        "interval": [float(boot[49]), float(boot[1949])],
    }


def hook_cost(calls: int = 20000, rounds: int = 7) -> float:
    """Seconds that :func:`perturbnn.share_cpu`'s hook adds to one forward call, quiet: an
    ``nn.Identity`` called ``calls`` times with and without it, median of ``rounds``."""
    plain, shared = nn.Identity(), nn.Identity()
    handle = share_cpu(shared)
    x = torch.zeros(1)
    per_call: dict[str, list[float]] = {"plain": [], "shared": []}
    for _ in range(rounds):
        for mode, module in (("plain", plain), ("shared", shared)):
            began = time.perf_counter()
            for _ in range(calls):
                module(x)
            per_call[mode].append((time.perf_counter() - began) / calls)
    handle.remove()
    return statistics.median(per_call["shared"]) - statistics.median(per_call["plain"])


def own_loop(args: argparse.Namespace) -> dict[str, object]:
    """Time the own-loop rows quiet and busy; print their table; return it for the JSON."""
    began = time.perf_counter()
    torch.set_num_threads(OWN_THREADS)
    rows = own_loop_rows(args.data_dir)
    for row in rows:  # first steps (torch.compile compiles there, once per thread count)
        for mode, counts in (("plain", (OWN_THREADS,)), ("shared", (1, OWN_THREADS))):
            for count in counts:
                torch.set_num_threads(count)
                row.steps[mode]()
                row.steps[mode]()
    torch.set_num_threads(OWN_THREADS)
    print(f"own loop: set-up and first steps {time.perf_counter() - began:.0f} s")
    out: dict[str, object] = {"threads": OWN_THREADS}
    out["quiet_others_cpu"] = check_quiet("before the own-loop quiet phase")
    out["hook_s"] = hook = hook_cost()
    print(f"share_cpu's hook: {hook * 1e6:.1f} us per forward call")
    watch = ContentionGuard(OWN_THREADS, interval=0.0)  # only its others() is used
    ab: dict[str, dict[str, Any]] = {}
    changes: dict[str, dict[str, int]] = {row.name: {} for row in rows}
    for phase in OWN_PHASES:
        start = time.perf_counter()
        with contextlib.nullcontext() if phase == "quiet" else Competitor():
            # a loop that ran on would have its guard's last look within the phase: start each
            # guard's window now, and let it cover a whole interval before the first sample
            for row in rows:
                if row.handle.guard is not None:
                    row.handle.guard.others()
            before = {row.name: len(row.handle.record["changes"]) for row in rows}
            time.sleep(1.1)
            watch.others()
            run_own_phase(phase, rows, args.repeats, args.cap, args.sample)
            if phase == "quiet":
                for row in rows:
                    ab[row.name] = quiet_ab(row, args.ab_seconds, args.ab_pairs)
            during = watch.others()
            for row in rows:
                changes[row.name][phase] = len(row.handle.record["changes"]) - before[row.name]
        out[f"{phase}_phase_others_cpu"] = during
        print(
            f"own loop, {phase} phase: {time.perf_counter() - start:.0f} s; other processes used "
            f"{during if during is None else round(during, 2)} CPUs meanwhile"
        )
    print(
        "\n| own loop, 2 threads | plain: quiet (s) | busy (s) | busy / quiet "
        "| share_cpu: quiet (s) | busy (s) | busy / quiet | share_cpu / plain, quiet (A/B) "
        "| thread changes quiet, busy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    table = []
    for row in rows:
        entry: dict[str, object] = {"step": row.name}
        cells = []
        for mode in OWN_MODES:
            quiet, busy = row.times[f"quiet/{mode}"], row.times[f"busy/{mode}"]
            entry[mode] = {
                "quiet_s": quiet,
                "busy_s": busy,
                "quiet_median_s": statistics.median(quiet),
                "busy_median_s": statistics.median(busy),
                "slowdown": ratio(busy, quiet),
                "first_quiet_s": row.first[f"quiet/{mode}"],
                "first_busy_s": row.first[f"busy/{mode}"],
            }
            cells += [
                f"{statistics.median(quiet):.4f}",
                f"{statistics.median(busy):.4f}",
                f"{ratio(busy, quiet):.1f}x",
            ]
        entry["shared_vs_plain_quiet"] = ratio(row.times["quiet/shared"], row.times["quiet/plain"])
        entry["quiet_ab"] = ab[row.name]
        entry["thread_changes"] = changes[row.name]
        table.append(entry)
        low, high = ab[row.name]["interval"]
        print(
            f"| {row.name} | {' | '.join(cells)} | {ab[row.name]['ratio']:.3f} "
            f"({low:.3f}-{high:.3f}) | {changes[row.name]['quiet']}, {changes[row.name]['busy']} |"
        )
    for row in rows:
        row.handle.remove()
    torch.set_num_threads(OWN_THREADS)
    out["rows"] = table
    out["seconds"] = time.perf_counter() - began
    print(f"own loop: {out['seconds']:.0f} s in all")
    return out


def time_sample(
    step: Callable[[], object], seconds: float, before: Optional[Callable[[], object]] = None
) -> tuple[float, float]:
    """Run ``step`` (``before`` ahead of each) until ``seconds`` have passed, at least once;
    return the seconds per step and in all."""
    steps, start, took = 0, time.perf_counter(), 0.0
    while steps == 0 or took < seconds:
        if before is not None:
            before()
        step()
        steps += 1
        took = time.perf_counter() - start
    return took / steps, took


def run_phase(
    phase: str,
    rows: list[Row],
    repeats: int,
    cap: float,
    sample: float,
    threads: int,
    guard: ContentionGuard,
) -> None:
    """``repeats`` rounds; in each, every row takes one sample per mode, in turn.

    A sample runs consecutive steps until ``sample`` seconds have passed (at least one step)
    and records the seconds per step. A row stops early (after at least 3 samples per mode)
    once its samples in this phase took ``cap`` seconds.
    """
    for round_ in range(repeats):
        for row in rows:
            for mode in MODES:
                key = f"{phase}/{mode}"
                times = row.times.setdefault(key, [])
                if round_ >= 3 and row.spent.get(key, 0.0) > cap:
                    continue
                count = {"fixed": threads, "one": 1}.get(mode, guard.threads)
                torch.set_num_threads(count)
                # the harness: the guard is asked before every step, as the training loop does
                per_step, took = time_sample(
                    row.step, sample, guard.poll if mode == "harness" else None
                )
                times.append(per_step)
                row.spent[key] = row.spent.get(key, 0.0) + took
    torch.set_num_threads(threads)


def main_job(
    data_dir: Path, threads: Optional[int], phase: str, limit: Optional[float]
) -> tuple[float, bool]:
    """Wall seconds of the README main job (``python -m perturbnn.repro``, the demo) in
    ``phase`` (one of :data:`PHASES`), and whether it finished; a run still going after
    ``limit`` seconds is stopped there."""
    command = [sys.executable, "-m", "perturbnn.repro", "demo", "--data-dir", str(data_dir)]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with contextlib.ExitStack() as stack:
        if phase != "quiet":
            stack.enter_context(Competitor(own_session=phase == "apart"))
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return time.perf_counter() - start, False
        took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the main job failed:\n{out.decode()[-2000:]}\n{err.decode()[-2000:]}")
    return took, True


def save(path: Optional[Path], results: dict[str, object]) -> None:
    """Write ``results`` as JSON to ``path`` (nothing when ``None``)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def ratio(busy: list[float], quiet: list[float]) -> float:
    return statistics.median(busy) / statistics.median(quiet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per phase")
    parser.add_argument("--cap", type=float, default=25.0, help="seconds per row, mode and phase")
    parser.add_argument(
        "--sample", type=float, default=0.5, help="seconds of consecutive steps per sample"
    )
    parser.add_argument(
        "--quick", action="store_true", help="at most 3 rounds and a 10 s cap per row"
    )
    parser.add_argument(
        "--main-job",
        choices=("both", "harness", "skip"),
        default="both",
        help="time the README main job (the demo): with the harness's thread choice quiet, "
        "busy and apart, and with --threads fixed quiet and busy (both); the harness's only; "
        "or not at all",
    )
    parser.add_argument(
        "--main-job-limit",
        type=float,
        default=6.0,
        help="stop a busy main job after this many times its quiet time (reported as '>')",
    )
    parser.add_argument("--skip-steps", action="store_true", help="only the README main job")
    parser.add_argument(
        "--only",
        choices=("own-loop",),
        default=None,
        help="run only these rows: own-loop (a script of your own with and without "
        "perturbnn.share_cpu, quiet and busy; about 4 minutes on 2 cores with the defaults)",
    )
    parser.add_argument(
        "--ab-seconds",
        type=float,
        default=10.0,
        help="own loop: seconds per row of plain and share_cpu steps alternating, quiet",
    )
    parser.add_argument(
        "--ab-pairs",
        type=int,
        default=12,
        help="own loop: at least this many alternating pairs per row, quiet",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    for name in ("repeats", "cap", "sample", "main_job_limit", "ab_seconds", "ab_pairs"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    # SIGTERM unwinds like Ctrl-C, so that the competing process and the main job are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:  # at most 3 rounds and 10 s (a smaller --repeats or --cap is kept)
        args.repeats, args.cap = min(args.repeats, 3), min(args.cap, 10.0)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    grouping = autogroup()
    print(
        f"torch {torch.__version__}, {threads} threads (torch's default), "
        f"{available_cpus()} CPUs available, {platform.processor() or platform.machine()}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}; "
        f"CPU shared out by session (sched_autogroup_enabled): "
        f"{'unknown' if grouping is None else 'yes' if grouping else 'no'}"
    )
    print(
        f"{args.repeats} interleaved rounds per phase, samples of at least {args.sample:g} s of "
        f"consecutive steps, at most {args.cap:.0f} s per row, mode and phase"
    )
    results: dict[str, object] = {
        "threads": threads,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/bench_contention.py", *sys.argv[1:]]),
        "repeats": args.repeats,
        "sample_s": args.sample,
        "autogroup": grouping,
    }
    if args.only == "own-loop":
        results["own_loop"] = own_loop(args)
        results["after_others_cpu"] = check_quiet("at the end")
        finish(args.json, results, started)
        return
    if not args.skip_steps:
        rows = layer_rows() + train_rows(args.data_dir)
        for row in rows:  # first steps (torch.compile compiles there, once per thread count)
            for count in sorted({1, threads}):
                torch.set_num_threads(count)
                row.step()
                row.step()
        torch.set_num_threads(threads)
        guard = ContentionGuard(threads, interval=1.0)
        results["quiet_others_cpu"] = check_quiet("before the quiet phase")
        watch = ContentionGuard(threads, interval=0.0)  # only its others() is used
        for phase in PHASES:
            began = time.perf_counter()
            with (
                contextlib.nullcontext()
                if phase == "quiet"
                else Competitor(own_session=phase == "apart")
            ):
                watch.others()
                run_phase(phase, rows, args.repeats, args.cap, args.sample, threads, guard)
                during = watch.others()
            results[f"{phase}_phase_others_cpu"] = during
            print(
                f"{phase} phase: {time.perf_counter() - began:.0f} s; other processes (the "
                f"competitor included) used {during if during is None else round(during, 2)} "
                "CPUs meanwhile"
            )

        print(
            "\n| step | mode | quiet (s) | busy (s) | busy / quiet | apart (s) | apart / quiet "
            "| harness quiet / fixed quiet |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        table = []
        for row in rows:
            for mode in MODES:
                quiet = row.times[f"quiet/{mode}"]
                busy, apart = row.times[f"busy/{mode}"], row.times[f"apart/{mode}"]
                vs_fixed = statistics.median(quiet) / statistics.median(row.times["quiet/fixed"])
                table.append(
                    {
                        "step": row.name,
                        "mode": mode,
                        "quiet_s": quiet,
                        "busy_s": busy,
                        "apart_s": apart,
                        "quiet_median_s": statistics.median(quiet),
                        "busy_median_s": statistics.median(busy),
                        "apart_median_s": statistics.median(apart),
                        "slowdown": ratio(busy, quiet),
                        "slowdown_apart": ratio(apart, quiet),
                        "quiet_vs_fixed": vs_fixed,
                    }
                )
                print(
                    f"| {row.name} | {mode} | {statistics.median(quiet):.4f} | "
                    f"{statistics.median(busy):.4f} | {ratio(busy, quiet):.1f}x | "
                    f"{statistics.median(apart):.4f} | {ratio(apart, quiet):.1f}x | "
                    f"{'-' if mode != 'harness' else f'{vs_fixed:.2f}'} |"
                )
        results["steps"] = table
        results["own_loop"] = own_loop(args)
        save(args.json, results)  # so far (the main job takes another quarter of an hour)

    if args.main_job != "skip":
        print("\nREADME main job: python -m perturbnn.repro (the demo), quiet, busy, apart")
        check_quiet("before the main job")
        jobs = []
        plans: list[tuple[Optional[int], tuple[str, ...]]] = [(None, PHASES)]
        if args.main_job == "both":
            plans.append((threads, ("quiet", "busy")))
        for fixed, phases in plans:
            label = "harness" if fixed is None else f"--threads {fixed}"
            run: dict[str, object] = {"mode": label}
            quiet_s = 0.0
            for phase in phases:
                limit = None if phase == "quiet" else args.main_job_limit * quiet_s
                took, done = main_job(args.data_dir, fixed, phase, limit)
                quiet_s = took if phase == "quiet" else quiet_s
                run[f"{phase}_s"], run[f"{phase}_finished"] = took, done
                mark = "" if done else ">"
                print(
                    f"  {label}, {phase}: {mark}{took:.0f} s"
                    + ("" if phase == "quiet" else f" ({mark}{took / quiet_s:.1f}x)")
                    + ("" if done else ", stopped")
                )
            jobs.append(run)
        results["main_job"] = {"command": "python -m perturbnn.repro", "runs": jobs}
    results["after_others_cpu"] = check_quiet("at the end")
    finish(args.json, results, started)


def finish(path: Optional[Path], results: dict[str, object], started: float) -> None:
    """Record and print how long the run took; write the JSON."""
    results["run_s"] = round(time.perf_counter() - started, 1)
    save(path, results)
    print(f"\nthe run took {results['run_s']:.0f} s")
    if path is not None:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
