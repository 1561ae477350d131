"""Generate the benchmark tables of docs/performance.md from the benchmarks' JSON results.

Reads ``benchmarks/results/layers-*.json`` (written by ``bench_layers.py --json``) and
``benchmarks/results/train-*.json`` (``bench_train.py --json``), and replaces, in
docs/performance.md, everything between ``<!-- tables:start -->`` and ``<!-- tables:end -->``;
likewise ``benchmarks/results/contention-*.json`` (``bench_contention.py --json``) between
``<!-- contention:start -->`` and ``<!-- contention:end -->``.
Every number, ratio and "met" verdict in that block is computed here from the JSON; nothing is
typed by hand. Run it after the benchmarks::

    python benchmarks/bench_layers.py --json benchmarks/results/layers-cpu.json
    python benchmarks/bench_train.py --json benchmarks/results/train-cpu.json
    python benchmarks/bench_contention.py --json benchmarks/results/contention-1.json
    python benchmarks/make_tables.py

``--check`` exits with status 1 if docs/performance.md is not what the JSON gives (for CI).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- tables:start -->", "<!-- tables:end -->"
CONTENTION_START, CONTENTION_END = "<!-- contention:start -->", "<!-- contention:end -->"
#: Issue 12's targets: busy / quiet at most this beside one 2-thread competitor ...
MAX_SLOWDOWN = 3.0
#: ... and the harness's quiet median at most this over the fixed count's, same run.
MAX_QUIET_COST = 1.10
#: Issue 22's target: with share_cpu, a script's quiet median within this of its plain one.
OWN_QUIET_TOLERANCE = 0.05
IMPLS = ("grouped", "eager", "compiled", "auto")
ACT_NAMES = {"none": "none", "relu": "ReLU", "elu": "ELU", "prelu": "PReLU"}


def rows_by_name(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in case["rows"]}


def speedup(case: dict[str, Any], name: str) -> float:
    rows = rows_by_name(case)
    return float(rows["literal"]["median_s"] / rows[name]["median_s"])


def memory_ratio(case: dict[str, Any], name: str) -> float:
    rows = rows_by_name(case)
    return float(rows[name]["peak_bytes"] / max(rows["literal"]["peak_bytes"], 1))


def max_error(case: dict[str, Any]) -> float:
    return max(row["rel_error"] for row in case["rows"] if row["rel_error"] is not None)


def layer_tables(result: dict[str, Any]) -> list[str]:
    lines = [
        f"#### `bench_layers.py` on {result['device']}",
        "",
        f"torch {result['torch']}, {result['threads']} threads, {result['date']}, median of "
        f"{result['repeats']} interleaved steps after {result['warmup']} warm-up steps, load "
        "average (1 min) before/after "
        f"{result['load_average_before_after'][0]:.2f}/{result['load_average_before_after'][1]:.2f}."
        f" Command: `{result['command']}`.",
        "",
    ]
    configs: dict[str, list[dict[str, Any]]] = {}
    for case in result["cases"]:
        configs.setdefault(case["config"], []).append(case)
    for name, cases in configs.items():
        c = cases[0]
        floor_path = rows_by_name(c)["floor"]["path"]
        lines += [
            f"**{name}**: B={c['batch']}, C={c['channels']}, O={c['out_channels']}, "
            f"nmasks={c['nmasks']}, {c['size']}x{c['size']}; floor: {floor_path}. Speed-ups are "
            "literal time / row time; memory is peak extra bytes / the literal row's.",
            "",
            "| activation | masks | literal (ms) | grouped | eager | compiled | auto | floor "
            "| eager / floor time | memory eager | memory compiled | max rel err | within "
            f"{result['tolerance']:g} |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for case in cases:
            rows = rows_by_name(case)
            error = max_error(case)
            paths = {impl: rows[impl]["path"] for impl in IMPLS}
            cells = [
                ACT_NAMES.get(case["activation"], case["activation"]),
                case["masks"],
                f"{rows['literal']['median_s'] * 1e3:.1f}",
                *(f"{speedup(case, impl):.1f}x ({paths[impl]})" for impl in IMPLS),
                f"{speedup(case, 'floor'):.1f}x",
                f"{rows['eager']['median_s'] / rows['floor']['median_s']:.2f}",
                f"{memory_ratio(case, 'eager'):.3f}",
                f"{memory_ratio(case, 'compiled'):.3f}",
                f"{error:.1e}",
                "yes" if error <= result["tolerance"] else "**no**",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


# Targets: (description, predicate over one case, value shown), judged on the large configuration.
Target = tuple[str, Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], str]]
TARGETS: list[Target] = [
    (
        "no activation, eager >= 50x faster than literal",
        lambda c: c["activation"] == "none",
        lambda c: f"{speedup(c, 'eager'):.0f}x",
    ),
    (
        "no activation, eager <= 2x the floor's time",
        lambda c: c["activation"] == "none",
        lambda c: (
            f"{rows_by_name(c)['eager']['median_s'] / rows_by_name(c)['floor']['median_s']:.2f}"
        ),
    ),
    (
        "activation, eager >= 3x faster than literal",
        lambda c: c["activation"] != "none",
        lambda c: f"{speedup(c, 'eager'):.1f}x",
    ),
    (
        "activation, compiled >= 10x faster than literal (steady state)",
        lambda c: c["activation"] != "none",
        lambda c: f"{speedup(c, 'compiled'):.1f}x",
    ),
    (
        "activation, eager and compiled peak memory <= 1/8 of literal",
        lambda c: c["activation"] != "none",
        lambda c: f"{max(memory_ratio(c, 'eager'), memory_ratio(c, 'compiled')):.3f}",
    ),
    (
        "every row within the tolerance of the literal layer",
        lambda c: True,
        lambda c: f"{max_error(c):.1e}",
    ),
]
THRESHOLDS: dict[str, Callable[[dict[str, Any], float], bool]] = {
    TARGETS[0][0]: lambda c, tol: speedup(c, "eager") >= 50,
    TARGETS[1][0]: lambda c, tol: (
        rows_by_name(c)["eager"]["median_s"] <= 2 * rows_by_name(c)["floor"]["median_s"]
    ),
    TARGETS[2][0]: lambda c, tol: speedup(c, "eager") >= 3,
    TARGETS[3][0]: lambda c, tol: speedup(c, "compiled") >= 10,
    TARGETS[4][0]: lambda c, tol: (
        max(memory_ratio(c, "eager"), memory_ratio(c, "compiled")) <= 1 / 8
    ),
    TARGETS[5][0]: lambda c, tol: max_error(c) <= tol,
}


def target_table(result: dict[str, Any], config: str = "large") -> list[str]:
    cases = [c for c in result["cases"] if c["config"] == config]
    if not cases:
        return [f"Targets: not judged (no `{config}` configuration in this run).", ""]
    lines = [
        f"Targets on the `{config}` configuration of this run (computed from the JSON):",
        "",
        "| target | measured (each activation x masks case) | met |",
        "|---|---|---|",
    ]
    for description, applies, show in TARGETS:
        chosen = [c for c in cases if applies(c)]
        if not chosen:
            continue
        met = all(THRESHOLDS[description](c, result["tolerance"]) for c in chosen)
        values = ", ".join(
            f"{ACT_NAMES.get(c['activation'], c['activation'])}/{c['masks']} {show(c)}"
            for c in chosen
        )
        lines.append(f"| {description} | {values} | {'yes' if met else '**no**'} |")
    lines.append("")
    return lines


def train_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"#### `bench_train.py` on {result['device']}",
        "",
        f"{result['description']}; torch {result['torch']}, {result['date']}, load average "
        f"before/after {result['load_average_before_after'][0]:.2f}/"
        f"{result['load_average_before_after'][1]:.2f}. Command: `{result['command']}`.",
        "",
        "| impl | first step (s) | median step (s) | images/s | x grouped |",
        "|---|---:|---:|---:|---:|",
    ]
    base: Optional[float] = next(
        (r["median_s"] for r in result["rows"] if r["impl"] == "grouped"), None
    )
    for row in result["rows"]:
        ratio = "-" if base is None else f"{base / row['median_s']:.1f}"
        lines.append(
            f"| {row['impl']} | {row['first_s']:.2f} | {row['median_s']:.3f} | "
            f"{result['batch_size'] / row['median_s']:.0f} | {ratio} |"
        )
    lines.append("")
    return lines


def _seconds(value: float) -> str:
    return f"{value:.3g}"


def _slowdown(seconds: float, quiet: float, finished: bool = True) -> str:
    mark = "" if finished else ">"
    return f"{mark}{seconds:.3g} ({mark}{seconds / quiet:.1f}x)"


def contention_tables(result: dict[str, Any], name: str) -> list[str]:
    """The tables of one ``bench_contention.py --json`` result, verdicts computed here."""
    grouping = {True: "yes", False: "no", None: "unknown"}[result.get("autogroup")]
    others = ""
    if all(f"{phase}_phase_others_cpu" in result for phase in ("quiet", "busy", "apart")):
        others = (
            f" Other processes used {result['quiet_phase_others_cpu']:.2f} CPUs during the quiet "
            f"phase, {result['busy_phase_others_cpu']:.2f} during the busy one and "
            f"{result['apart_phase_others_cpu']:.2f} during the apart one (the competitor "
            "included)."
        )
    run = f" The run took {result['run_s'] / 60:.1f} minutes." if "run_s" in result else ""
    lines = [
        f"Source: `benchmarks/results/{name}`: torch {result['torch']}, {result['threads']} "
        f"threads, {result.get('date', 'date not recorded')}; median of up to "
        f"{result.get('repeats', '?')} interleaved rounds per phase (a row stops after 3 once its "
        "samples took the `--cap`), each sample at least "
        f"{result.get('sample_s', '?')} s of consecutive steps. Command: "
        f"`{result.get('command', 'python benchmarks/bench_contention.py')}`. CPU shared out by "
        f"session (`sched_autogroup_enabled`): {grouping}.{others}{run}",
        "",
    ]
    steps = result.get("steps", [])
    if steps:
        lines += [
            "Seconds per step and slowdown against quiet; **busy**: the competitor in the same "
            "session, **apart**: in a session of its own.",
            "",
            "| step | fixed: quiet | busy | apart | harness: quiet | busy | apart "
            f"| harness <= {MAX_SLOWDOWN:g}x: busy, apart | harness / fixed, quiet |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        by_step: dict[str, dict[str, dict[str, Any]]] = {}
        for row in steps:
            by_step.setdefault(row["step"], {})[row["mode"]] = row
        for step, modes in by_step.items():
            fixed, harness = modes["fixed"], modes["harness"]
            verdicts = [
                "yes" if harness[key] <= MAX_SLOWDOWN else "**no**"
                for key in ("slowdown", "slowdown_apart")
            ]
            cells = []
            for mode in (fixed, harness):
                quiet = mode["quiet_median_s"]
                cells += [
                    _seconds(quiet),
                    _slowdown(mode["busy_median_s"], quiet),
                    _slowdown(mode["apart_median_s"], quiet),
                ]
            vs_fixed = harness["quiet_median_s"] / fixed["quiet_median_s"]
            lines.append(
                f"| {step} | {' | '.join(cells)} | {', '.join(verdicts)} | {vs_fixed:.2f} |"
            )
        lines.append("")
        ones = {step: modes for step, modes in by_step.items() if "one" in modes}
        if ones:
            lines += [
                f"One thread throughout (the `one` mode): how much slower than {result['threads']} "
                "threads when quiet, how much slower beside the competitor than alone (in the "
                "same session; apart), and the product, what one thread costs busy against the "
                "quiet fixed count:",
                "",
                "| step | one / fixed, quiet | one: busy / quiet | apart / quiet "
                "| one busy / fixed quiet | one apart / fixed quiet |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for step, modes in ones.items():
                one, fixed_quiet = modes["one"], modes["fixed"]["quiet_median_s"]
                quiet = one["quiet_median_s"]
                lines.append(
                    f"| {step} | {quiet / fixed_quiet:.2f} | {one['slowdown']:.2f} | "
                    f"{one['slowdown_apart']:.2f} | {one['busy_median_s'] / fixed_quiet:.1f}x | "
                    f"{one['apart_median_s'] / fixed_quiet:.1f}x |"
                )
            lines.append("")
    lines += own_loop_table(result.get("own_loop"))
    job = result.get("main_job")
    if job:
        lines += [
            f"The README main job (`{job.get('command', 'python -m perturbnn.repro')}`), one run "
            "each, wall seconds (slowdown against quiet):",
            "",
            "| main job | quiet (s) | busy | apart |",
            "|---|---:|---:|---:|",
        ]
        for run in job["runs"]:
            quiet = run["quiet_s"]
            cells = [
                _slowdown(run[f"{phase}_s"], quiet, run[f"{phase}_finished"])
                if f"{phase}_s" in run
                else "-"
                for phase in ("busy", "apart")
            ]
            lines.append(f"| {run['mode']} | {quiet:.0f} | {' | '.join(cells)} |")
        lines.append("")
    return lines


def own_loop_table(own: Optional[dict[str, Any]]) -> list[str]:
    """The own-loop rows (``bench_contention.py --only own-loop``): a script of one's own at a
    fixed count, without and with ``perturbnn.share_cpu``, quiet and busy, verdicts computed here
    (the quiet one from the step-by-step A/B, ``quiet_ab``).
    """
    if not own:
        return []
    quiet, busy = own.get("quiet_phase_others_cpu"), own.get("busy_phase_others_cpu")
    others = (
        f"{quiet:.2f} CPUs during its quiet phase and {busy:.2f} during its busy one"
        if isinstance(quiet, (int, float)) and isinstance(busy, (int, float))
        else "unknown CPUs"
    )
    lines = [
        f"A script of your own with {own['threads']} threads fixed (`torch.set_num_threads`), "
        "without and with `perturbnn.share_cpu(model)`; **busy**: the competitor in the same "
        f"session (other processes used {others}, the competitor included). Seconds per step and "
        "slowdown against quiet; **A/B**: plain and share_cpu steps alternating one by one, "
        "quiet, ratio of their total times (95% bootstrap interval); **changes**: thread-count "
        "changes share_cpu made, quiet and busy:",
        "",
        "| own loop | plain: quiet | busy | share_cpu: quiet | busy "
        f"| share_cpu busy <= {MAX_SLOWDOWN:g}x | share_cpu / plain, quiet (A/B) "
        f"| within {OWN_QUIET_TOLERANCE:.0%} | changes |",
        "|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for row in own["rows"]:
        plain, shared = row["plain"], row["shared"]
        cells = []
        for mode in (plain, shared):
            quiet = mode["quiet_median_s"]
            cells += [_seconds(quiet), _slowdown(mode["busy_median_s"], quiet)]
        busy_ok = "yes" if shared["slowdown"] <= MAX_SLOWDOWN else "**no**"
        ab, changes = row["quiet_ab"], row["thread_changes"]
        low, high = ab["interval"]
        quiet_ok = "yes" if abs(ab["ratio"] - 1) <= OWN_QUIET_TOLERANCE else "**no**"
        lines.append(
            f"| {row['step']} | {' | '.join(cells)} | {busy_ok} | {ab['ratio']:.3f} "
            f"({low:.2f}-{high:.2f}) | {quiet_ok} | {changes['quiet']}, {changes['busy']} |"
        )
    lines.append("")
    fastest = min(row["plain"]["quiet_median_s"] for row in own["rows"])
    lines += [
        f"share_cpu's hook costs {own['hook_s'] * 1e6:.1f} µs per forward call, quiet (an "
        f"`nn.Identity` called with and without it): {own['hook_s'] / fastest:.2%} of the "
        "fastest row's step.",
        "",
    ]
    return lines


def _block(start: str, end: str, sources: str, body: list[str]) -> str:
    """One generated block of the doc: its markers, the do-not-edit line, then ``body``."""
    header = f"<!-- generated by benchmarks/make_tables.py from {sources}; do not edit by hand -->"
    return "\n".join([start, header, "", *body, end])


def generate_contention(results_dir: Path) -> str:
    lines: list[str] = []
    files = sorted(results_dir.glob("contention-*.json"))
    if not files:
        lines += ["No contention results yet: run `python benchmarks/bench_contention.py`.", ""]
    for path in files:
        lines += contention_tables(json.loads(path.read_text()), path.name)
    return _block(CONTENTION_START, CONTENTION_END, "benchmarks/results/contention-*.json", lines)


def _replace(text: str, start: str, end: str, block: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail


def generate(results_dir: Path) -> str:
    lines: list[str] = []
    layer_files = sorted(results_dir.glob("layers-*.json"))
    train_files = sorted(results_dir.glob("train-*.json"))
    if not layer_files and not train_files:
        lines += ["No benchmark results yet: run the commands under *Reproduce*.", ""]
    for path in layer_files:
        result = json.loads(path.read_text())
        lines += [f"Source: `benchmarks/results/{path.name}`.", ""]
        lines += layer_tables(result)
        lines += target_table(result)
    for path in train_files:
        lines += [f"Source: `benchmarks/results/{path.name}`.", ""]
        lines += train_table(json.loads(path.read_text()))
    return _block(START, END, "benchmarks/results/*.json", lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--check", action="store_true", help="fail if the doc is out of date")
    args = parser.parse_args(argv)
    text = args.doc.read_text()
    for start, end in ((START, END), (CONTENTION_START, CONTENTION_END)):
        if start not in text or end not in text:
            parser.error(f"--doc {args.doc} has no {start} ... {end} block")
    new = _replace(text, START, END, generate(args.results))
    new = _replace(new, CONTENTION_START, CONTENTION_END, generate_contention(args.results))
    if args.check:
        if new != text:
            print(
                f"{args.doc} is out of date: run python benchmarks/make_tables.py", file=sys.stderr
            )
            return 1
        return 0
    args.doc.write_text(new)
    print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
