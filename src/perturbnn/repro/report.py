"""The reproduction report: read run logs, compare them with the seed, write markdown and plots.

Everything here is computed from the files :func:`perturbnn.repro.training.fit` writes in each run's
folder (``log.jsonl``: one JSON object per epoch; ``summary.json``: parameters, configuration,
the seed's command and accuracy) and, if present, the ``reproduce.json`` manifest that
``examples/reproduce.py`` writes in the output folder (scale name, description, command). No
number in the report is typed in by hand: the seed's figures come from
:mod:`perturbnn.repro.experiments`, the measured ones from the logs, and the statements on the seed's
orderings (:func:`compare_with_seed`) are computed from both.

Main entry points:

* :func:`load_run` / :func:`load_runs`: one run folder, or every run folder under a root.
* :func:`compare_with_seed`: the seed's three ordering claims, checked against the runs.
* :func:`metric_error`: one run's exact accuracy against the original method's figure.
* :func:`render_markdown`: the report as a string.
* :func:`plot_run`, :func:`plot_comparison`, :func:`plot_metric_error`: PNG plots (need
  matplotlib, the optional ``examples`` extra: ``pip install perturbnn[examples]``).
* :func:`build_report`: all of the above, written to disk.

Source: the seed's results and claims in ``../shared/reference/pnn-reproduction-notes.txt``.

Example::

    >>> from perturbnn.repro.report import build_report  # doctest: +SKIP
    >>> report = build_report("runs/reproduce", "docs/reproduction.md", "docs/img")  # doctest: +SKIP
    >>> report.markdown  # doctest: +SKIP
    PosixPath('docs/reproduction.md')
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from perturbnn.repro.experiments import EXPERIMENTS, get_experiment

__all__ = [
    "ABOUT_EQUAL_POINTS",
    "LOG_FILE",
    "MANIFEST_FILE",
    "SUMMARY_FILE",
    "Finding",
    "MetricError",
    "Report",
    "RunLog",
    "build_report",
    "compare_with_seed",
    "format_duration",
    "format_percent",
    "image_name",
    "load_manifest",
    "load_run",
    "load_runs",
    "metric_error",
    "plot_comparison",
    "plot_metric_error",
    "plot_run",
    "render_markdown",
    "seed_scale_counts",
]

_LOGGER = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Per-epoch log of a run (written by :func:`perturbnn.repro.training.fit`).
LOG_FILE = "log.jsonl"
#: End-of-run summary of a run (written by :func:`perturbnn.repro.training.fit`).
SUMMARY_FILE = "summary.json"
#: Manifest ``examples/reproduce.py`` writes in its output folder (scale, command).
MANIFEST_FILE = "reproduce.json"

#: Two accuracies closer than this many percentage points count as "about equal": the seed's
#: own threshold ("less than 1% improvement" of PNN over 1x1 convolutions without noise).
ABOUT_EQUAL_POINTS = 1.0

_REQUIRED_KEYS = ("epoch", "test_acc", "original_acc", "seconds")

# The experiments the seed's claims are about (names of :mod:`perturbnn.repro.experiments`).
_BASELINE = "baseline"
_NO_NOISE = "no-noise-1x1"
# The PNN the seed sets against the 1x1 network without noise: ~5.5M parameters, 3x3 first
# layer, perturbations followed by 1x1 convolutions elsewhere (86.2% against 85.5%).
_PNN_MATCHED = "original-first3"


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def format_percent(fraction: Optional[float], decimals: int = 2) -> str:
    """``0.8591`` as ``"85.91%"``; ``None`` as ``"n/a"``."""
    if fraction is None:
        return "n/a"
    return f"{100 * fraction:.{decimals}f}%"


def _points(difference: float) -> str:
    """A difference of fractions in signed percentage points: ``0.0462`` as ``"+4.62"``."""
    return f"{100 * difference:+.2f}"


def format_duration(seconds: Optional[float]) -> str:
    """``75.3`` as ``"1 min 15 s"``, ``12.0`` as ``"12.0 s"``, ``3725`` as ``"1 h 2 min"``."""
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {(whole % 3600) // 60} min"


def _count(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value:,}"


def image_name(run_name: str) -> str:
    """File name of a run's plot: ``"repro_<run_name>.png"``."""
    return f"repro_{run_name}.png"


_COMPARISON_IMAGE = "repro_all_test_acc.png"
_METRIC_IMAGE = "repro_metric_error.png"


# --------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------


@dataclass
class RunLog:
    """One run, as read back from its folder.

    Attributes:
        name (str): the folder's name (the experiment's name for ``examples/reproduce.py``).
        directory (Path): the folder.
        epochs (list[int]): 1-based epoch numbers, from ``log.jsonl``.
        test_acc (list[float]): exact test accuracy per epoch (fractions).
        original_acc (list[float]): the original method's smoothed figure per epoch.
        seconds (list[float]): wall time per epoch.
        summary (dict, optional): ``summary.json``; ``None`` while the run is unfinished.
    """

    name: str
    directory: Path
    epochs: list[int]
    test_acc: list[float]
    original_acc: list[float]
    seconds: list[float]
    summary: Optional[dict[str, Any]] = None

    @property
    def finished(self) -> bool:
        """Whether ``summary.json`` was written (the run completed all its epochs)."""
        return self.summary is not None

    @property
    def config(self) -> dict[str, Any]:
        """The run's :class:`~perturbnn.repro.training.RunConfig` as a dict (empty if unfinished)."""
        if self.summary is None:
            return {}
        config = self.summary.get("config")
        return dict(config) if isinstance(config, Mapping) else {}

    @property
    def experiment(self) -> Optional[str]:
        """The preset's name: from the configuration, else the folder's name if it is one."""
        name = self.config.get("experiment")
        if isinstance(name, str) and name in EXPERIMENTS:
            return name
        return self.name if self.name in EXPERIMENTS else None

    @property
    def best_index(self) -> int:
        """Index of the best exact accuracy (the first one on a tie)."""
        return max(range(len(self.test_acc)), key=self.test_acc.__getitem__)

    @property
    def best_acc(self) -> float:
        """Best exact test accuracy over the epochs (what the seed reports per experiment)."""
        return self.test_acc[self.best_index]

    @property
    def best_epoch(self) -> int:
        """Epoch of :attr:`best_acc`."""
        return self.epochs[self.best_index]

    @property
    def last_acc(self) -> float:
        """Exact test accuracy after the last epoch (no selection on the test set)."""
        return self.test_acc[-1]

    @property
    def original_best_index(self) -> int:
        """Index of the best original-method figure (the first one on a tie)."""
        return max(range(len(self.original_acc)), key=self.original_acc.__getitem__)

    @property
    def original_best_acc(self) -> float:
        """Best original-method figure over the epochs: what the original code reported."""
        return self.original_acc[self.original_best_index]

    @property
    def original_best_epoch(self) -> int:
        """Epoch of :attr:`original_best_acc`."""
        return self.epochs[self.original_best_index]

    @property
    def original_last_acc(self) -> float:
        """The original-method figure after the last epoch."""
        return self.original_acc[-1]

    @property
    def wall_time_s(self) -> float:
        """Sum of the epochs' wall times, seconds."""
        return float(sum(self.seconds))

    def _summary_int(self, key: str) -> Optional[int]:
        value = (self.summary or {}).get(key)
        return (
            int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        )

    @property
    def parameters(self) -> Optional[int]:
        """Trainable parameters, noise masks excluded (``None`` if unfinished)."""
        return self._summary_int("parameters")

    @property
    def mask_values(self) -> Optional[int]:
        """Values held in noise masks (``None`` if unfinished)."""
        return self._summary_int("mask_values")

    @property
    def test_samples(self) -> Optional[int]:
        """Number of test images each accuracy is counted over."""
        value = self._summary_int("test_samples")
        if value is None:
            value = self.config.get("test_subset")
        return value if isinstance(value, int) else None

    @property
    def train_samples(self) -> Optional[int]:
        """Number of training images per epoch."""
        value = self._summary_int("train_samples")
        if value is None:
            value = self.config.get("train_subset")
        return value if isinstance(value, int) else None

    @property
    def device(self) -> Optional[str]:
        """Where the run trained."""
        value = (self.summary or {}).get("device")
        return str(value) if value is not None else None

    @property
    def seed_accuracy(self) -> Optional[float]:
        """The accuracy the seed reports for this experiment, a fraction."""
        value = (self.summary or {}).get("seed_accuracy")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return get_experiment(self.experiment).seed_accuracy if self.experiment else None

    @property
    def seed_command(self) -> Optional[str]:
        """The seed's command line for this experiment."""
        value = (self.summary or {}).get("seed_command")
        if isinstance(value, str):
            return value
        return get_experiment(self.experiment).seed_command if self.experiment else None

    def scale(self) -> dict[str, Any]:
        """The settings that make up the scale: width, epochs, data sizes, batch, device."""
        config = self.config
        return {
            "nfilters": config.get("nfilters"),
            "nepochs": config.get("nepochs"),
            "train_samples": self.train_samples,
            "test_samples": self.test_samples,
            "batch_size": config.get("batch_size"),
            "device": self.device,
        }

    def correct(self, fraction: float) -> Optional[int]:
        """The number of correct test images behind an exact accuracy, if the total is known."""
        total = self.test_samples
        return None if total is None else round(fraction * total)


def load_run(directory: PathLike, name: Optional[str] = None) -> RunLog:
    """Read a run folder: ``log.jsonl`` (required) and ``summary.json`` (if written).

    Args:
        directory (str or os.PathLike): the run's folder.
        name (str, optional): the run's name. Default: the folder's name.

    Returns:
        RunLog: the run.

    Raises:
        FileNotFoundError: if the folder has no ``log.jsonl``.
        ValueError: if a line of ``log.jsonl`` is not JSON or lacks a field, if it holds no
            epoch, or if ``summary.json`` is not a JSON object; the message names the file.
    """
    folder = Path(directory)
    log_path = folder / LOG_FILE
    if not log_path.is_file():
        raise FileNotFoundError(f"no {LOG_FILE} in {str(folder)!r}")
    columns: dict[str, list[Any]] = {key: [] for key in _REQUIRED_KEYS}
    for number, line in enumerate(log_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{log_path}:{number}: not a JSON object ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{log_path}:{number}: expected a JSON object, got {record!r:.60}")
        missing = [key for key in _REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(f"{log_path}:{number}: missing field(s) {missing}")
        for key in _REQUIRED_KEYS:
            columns[key].append(record[key])
    if not columns["epoch"]:
        raise ValueError(f"{log_path} holds no epoch")
    summary: Optional[dict[str, Any]] = None
    summary_path = folder / SUMMARY_FILE
    if summary_path.is_file():
        try:
            loaded = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{summary_path}: not JSON ({exc.msg})") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"{summary_path}: expected a JSON object, got {type(loaded).__name__}")
        summary = loaded
    return RunLog(
        name=name if name is not None else folder.name,
        directory=folder,
        epochs=[int(v) for v in columns["epoch"]],
        test_acc=[float(v) for v in columns["test_acc"]],
        original_acc=[float(v) for v in columns["original_acc"]],
        seconds=[float(v) for v in columns["seconds"]],
        summary=summary,
    )


def _order_key(name: str) -> tuple[int, str]:
    names = list(EXPERIMENTS)
    return (names.index(name) if name in names else len(names), name)


def load_runs(root: PathLike, names: Optional[Iterable[str]] = None) -> list[RunLog]:
    """Every run folder directly under ``root`` with at least one logged epoch.

    Folders whose ``log.jsonl`` is empty (a run interrupted in its first epoch) are skipped.

    Args:
        root (str or os.PathLike): the output folder (e.g. ``runs/reproduce``).
        names (Iterable[str], optional): only these folder names.

    Returns:
        list[RunLog]: the runs, the eight presets in the order of the notes first.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: from :func:`load_run`, on a malformed log.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"output folder {str(base)!r} does not exist")
    wanted = set(names) if names is not None else None
    runs = []
    for folder in sorted(base.iterdir(), key=lambda p: _order_key(p.name)):
        if not (folder / LOG_FILE).is_file() or (wanted is not None and folder.name not in wanted):
            continue
        if not (folder / LOG_FILE).read_text(encoding="utf-8").strip():
            _LOGGER.warning("skipping %s: no epoch logged yet", folder)
            continue
        runs.append(load_run(folder))
    return runs


def load_manifest(root: PathLike) -> dict[str, Any]:
    """``reproduce.json`` of an output folder, or ``{}`` if there is none."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return dict(loaded) if isinstance(loaded, dict) else {}


@functools.cache
def seed_scale_counts(name: str) -> tuple[int, int]:
    """Parameters and noise-mask values of a preset at the seed's own scale.

    The model is built on the ``meta`` device, so nothing is allocated.

    Args:
        name (str): a preset of :mod:`perturbnn.repro.experiments`.

    Returns:
        tuple[int, int]: ``(parameters, mask_values)`` as :func:`perturbnn.count_parameters`
        and :func:`perturbnn.count_mask_values` count them.
    """
    from perturbnn import build_model, count_mask_values, count_parameters
    from perturbnn.repro.data import dataset_info
    from perturbnn.repro.training import RunConfig

    config = RunConfig.from_experiment(name)
    info = dataset_info(config.dataset_train)
    model = build_model(
        config.net_type,
        device="meta",
        **config.model_config(
            in_channels=info.in_channels, input_size=info.input_size, nclasses=info.nclasses
        ),
    )
    return int(count_parameters(model)), int(count_mask_values(model))


# --------------------------------------------------------------------------------------------
# The seed's claims, checked
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One claim of the seed, checked against the measured runs.

    Attributes:
        claim (str): the seed's claim, in a few words.
        holds (bool, optional): whether the runs here agree; ``None`` if the runs it needs are
            missing.
        text (str): one or two sentences with the numbers.
    """

    claim: str
    holds: Optional[bool]
    text: str

    @property
    def verdict(self) -> str:
        """``"Same as the seed"``, ``"Differs from the seed"`` or ``"Not measured"``."""
        if self.holds is None:
            return "Not measured"
        return "Same as the seed" if self.holds else "Differs from the seed"


def _label(run: RunLog) -> str:
    return f"`{run.name}`"


def _find_baseline_best(by_name: Mapping[str, RunLog]) -> Finding:
    claim = "the baseline (regular 3x3 convolutions) has the best accuracy"
    baseline = by_name.get(_BASELINE)
    others = [run for name, run in by_name.items() if name != _BASELINE]
    if baseline is None or not others:
        return Finding(claim, None, f"needs `{_BASELINE}` and at least one other run.")
    rival = max(others, key=lambda r: r.best_acc)
    margin = baseline.best_acc - rival.best_acc
    if margin > 0:
        text = (
            f"`{_BASELINE}` is the best here: {format_percent(baseline.best_acc)}, "
            f"{_points(margin)} points above the next best, {_label(rival)} "
            f"({format_percent(rival.best_acc)})."
        )
        holds = True
    elif margin == 0:
        text = (
            f"`{_BASELINE}` ties with {_label(rival)} for the best accuracy here "
            f"({format_percent(baseline.best_acc)}): it is not ahead."
        )
        holds = False
    else:
        text = (
            f"`{_BASELINE}` is **not** the best here: {_label(rival)} reaches "
            f"{format_percent(rival.best_acc)} against the baseline's "
            f"{format_percent(baseline.best_acc)} ({_points(margin)} points)."
        )
        holds = False
    no_noise = by_name.get(_NO_NOISE)
    if no_noise is not None:
        seed_gap = get_experiment(_BASELINE).seed_accuracy - get_experiment(_NO_NOISE).seed_accuracy
        text += (
            f" The cost of 1x1 filters (`{_BASELINE}` minus `{_NO_NOISE}`) is "
            f"{_points(baseline.best_acc - no_noise.best_acc)} points here, "
            f"{_points(seed_gap)} in the seed."
        )
    return Finding(claim, holds, text)


def _find_no_noise_equal(by_name: Mapping[str, RunLog]) -> Finding:
    claim = (
        f"1x1 convolutions without noise are about equal to PNN (`{_NO_NOISE}` against "
        f"`{_PNN_MATCHED}`, within {ABOUT_EQUAL_POINTS:g} point)"
    )
    no_noise, pnn = by_name.get(_NO_NOISE), by_name.get(_PNN_MATCHED)
    if no_noise is None or pnn is None:
        return Finding(claim, None, f"needs `{_NO_NOISE}` and `{_PNN_MATCHED}`.")
    diff = pnn.best_acc - no_noise.best_acc
    seed_diff = get_experiment(_PNN_MATCHED).seed_accuracy - get_experiment(_NO_NOISE).seed_accuracy
    holds = abs(100 * diff) < ABOUT_EQUAL_POINTS
    if holds:
        head = f"about equal here: `{_PNN_MATCHED}` minus `{_NO_NOISE}` is {_points(diff)} points"
    else:
        side = "above" if diff > 0 else "below"
        head = (
            f"**not** about equal here: `{_PNN_MATCHED}` is {abs(100 * diff):.2f} points {side} "
            f"`{_NO_NOISE}`"
        )
    text = (
        f"{head} ({format_percent(pnn.best_acc)} against {format_percent(no_noise.best_acc)}; "
        f"the seed: {_points(seed_diff)})."
    )
    noisy = [
        run for name, run in by_name.items() if name not in (_BASELINE, _NO_NOISE, _PNN_MATCHED)
    ]
    if noisy:
        parts = ", ".join(f"{_label(r)} {_points(r.best_acc - no_noise.best_acc)}" for r in noisy)
        text += f" The other noise-mask runs against `{_NO_NOISE}`: {parts} points."
    return Finding(claim, holds, text)


def _find_original_above(runs: Sequence[RunLog]) -> Finding:
    claim = "the original method's figure is above the exact accuracy"
    if not runs:
        return Finding(claim, None, "needs at least one run.")
    gaps = [(run, run.original_best_acc - run.best_acc) for run in runs]
    below = [run for run, gap in gaps if gap <= 0]
    lo = min(gap for _, gap in gaps)
    hi = max(gap for _, gap in gaps)
    spread = f"by {_points(lo)} to {_points(hi)} points" if lo != hi else f"by {_points(lo)} points"
    if not below:
        text = (
            f"in all {len(runs)} runs the best original-method figure is above the best exact "
            f"accuracy, {spread}."
        )
        return Finding(claim, True, text)
    names = ", ".join(
        f"{_label(r)} ({_points(r.original_best_acc - r.best_acc)} points)" for r in below
    )
    text = (
        f"in {len(below)} of {len(runs)} runs the best original-method figure is **not** above "
        f"the best exact accuracy: {names}. Over all runs the difference goes from "
        f"{_points(lo)} to {_points(hi)} points. The smoothed figure follows the last ten or so "
        f"test batches, so whether it lands above or below the exact accuracy depends on which "
        f"images come last in the test order."
    )
    return Finding(claim, False, text)


def compare_with_seed(runs: Sequence[RunLog]) -> list[Finding]:
    """Check the seed's three ordering claims against ``runs``.

    The claims: the baseline with regular 3x3 convolutions is the best; 1x1 convolutions
    without noise are about as good as PNN (within :data:`ABOUT_EQUAL_POINTS`, the seed's own
    "less than 1%"); the original method's figure is above the exact accuracy. Accuracies are
    the best exact test accuracy over the epochs, as the seed reports them.

    Args:
        runs (Sequence[RunLog]): the runs; presets are recognised by :attr:`RunLog.name`.

    Returns:
        list[Finding]: one per claim, in that order.
    """
    by_name = {run.name: run for run in runs}
    return [
        _find_baseline_best(by_name),
        _find_no_noise_equal(by_name),
        _find_original_above(list(runs)),
    ]


def _ranking(runs: Sequence[RunLog], key: Any) -> str:
    """``"`a` 61.3% > `b` 58.0% = `c` 58.0%"``: best first, ``=`` between equal values."""
    ranked = sorted(runs, key=key, reverse=True)
    text = ""
    for index, run in enumerate(ranked):
        if index:
            text += " = " if key(run) == key(ranked[index - 1]) else " > "
        text += f"`{run.name}` {format_percent(key(run), 2)}"
    return text


def _noise_note(runs: Sequence[RunLog]) -> Optional[str]:
    totals = [r.test_samples for r in runs if r.test_samples]
    if not totals:
        return None
    total = min(totals)
    accs = sorted(r.best_acc for r in runs)
    p = accs[len(accs) // 2]
    one = 100 * math.sqrt(p * (1 - p) / total)
    return (
        f"Each accuracy here is counted over {total:,} test images: near {format_percent(p, 0)} "
        f"its binomial standard error is {one:.1f} points, so a difference between two runs "
        f"smaller than about {2 * math.sqrt(2) * one:.1f} points (two standard errors of the "
        f"difference) is within that noise. Each experiment ran once (seed "
        f"{_common(runs, 'manual_seed')}); the spread between training runs is not measured."
    )


def _common(runs: Sequence[RunLog], key: str) -> str:
    values = {str(r.config.get(key)) for r in runs if r.config}
    return values.pop() if len(values) == 1 else "varies"


# --------------------------------------------------------------------------------------------
# The metric error of one run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricError:
    """One run's exact accuracy against the original method's figure, epoch by epoch.

    Attributes:
        run (RunLog): the run.
    """

    run: RunLog

    @property
    def gaps(self) -> list[float]:
        """Original-method figure minus exact accuracy, per epoch."""
        return [o - e for o, e in zip(self.run.original_acc, self.run.test_acc)]

    @property
    def reported_gap(self) -> float:
        """Best original-method figure minus best exact accuracy (the seed's 90.53 vs 85.91)."""
        return self.run.original_best_acc - self.run.best_acc

    @property
    def selection_exact(self) -> float:
        """How much picking the best epoch raises the exact accuracy over the last epoch's."""
        return self.run.best_acc - self.run.last_acc

    @property
    def selection_original(self) -> float:
        """How much picking the best epoch raises the original-method figure over its last."""
        return self.run.original_best_acc - self.run.original_last_acc

    @property
    def total_inflation(self) -> float:
        """Best original-method figure minus the last exact accuracy (no selection at all)."""
        return self.run.original_best_acc - self.run.last_acc


def metric_error(runs: Sequence[RunLog], name: Optional[str] = None) -> Optional[MetricError]:
    """The metric error of run ``name``, or of a default run.

    Args:
        runs (Sequence[RunLog]): the runs.
        name (str, optional): the run to use. Default: ``"original"`` (the original PNN
            network, the model of the seed's own metric comparison) if present, else the run
            with the most epochs.

    Returns:
        MetricError, optional: ``None`` if there is no run.

    Raises:
        ValueError: if ``name`` is given but no run has that name.
    """
    if not runs:
        return None
    by_name = {run.name: run for run in runs}
    if name is not None:
        if name not in by_name:
            raise ValueError(f"no run named {name!r}; runs: {', '.join(by_name)}")
        return MetricError(by_name[name])
    if "original" in by_name:
        return MetricError(by_name["original"])
    return MetricError(max(runs, key=lambda r: len(r.epochs)))


def _epoch_rows(run: RunLog, limit: int = 40) -> list[int]:
    """Indices of the epochs to list: all, or at most about ``limit`` with the best ones."""
    count = len(run.epochs)
    if count <= limit:
        return list(range(count))
    step = math.ceil(count / (limit - 5))
    keep = set(range(0, count, step)) | {count - 1, run.best_index, run.original_best_index}
    return sorted(keep)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` (no pyplot, no global backend change)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "the reproduction plots need matplotlib, the optional 'examples' extra: "
            "pip install perturbnn[examples]"
        ) from exc
    return Figure(**kwargs)


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, path: PathLike) -> Path:
    for ax in fig.axes:
        _integer_epochs(ax)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png", dpi=100, metadata={"Software": None})
    return target


def _percent(values: Sequence[float]) -> list[float]:
    return [100 * v for v in values]


def plot_run(run: RunLog, path: PathLike) -> Path:
    """Plot one run: exact test accuracy and the original-method figure per epoch.

    The best epoch of each is marked; the seed's reported accuracy (150 epochs on the full
    data) is drawn as a grey line for reference.

    Args:
        run (RunLog): the run.
        path (str or os.PathLike): the PNG file to write.

    Returns:
        Path: ``path``.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    fig = _figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(run.epochs, _percent(run.test_acc), "o-", color="C0", ms=3, label="exact (real)")
    ax.plot(
        run.epochs,
        _percent(run.original_acc),
        "s--",
        color="C3",
        ms=3,
        label="original method (smoothed)",
    )
    ax.plot([run.best_epoch], [100 * run.best_acc], "*", color="C0", ms=12)
    ax.plot([run.original_best_epoch], [100 * run.original_best_acc], "*", color="C3", ms=12)
    if run.seed_accuracy is not None:
        ax.axhline(
            100 * run.seed_accuracy,
            color="0.5",
            lw=1,
            ls=":",
            label=f"seed reports {format_percent(run.seed_accuracy, 1)} (full scale)",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{run.name}: exact vs original-method figure (stars: best epoch)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_comparison(runs: Sequence[RunLog], path: PathLike) -> Path:
    """Plot every run's exact test accuracy per epoch on one chart.

    Args:
        runs (Sequence[RunLog]): the runs.
        path (str or os.PathLike): the PNG file to write.

    Returns:
        Path: ``path``.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    fig = _figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    styles = ("-", "--", "-.", ":")
    for index, run in enumerate(runs):
        ax.plot(
            run.epochs,
            _percent(run.test_acc),
            marker="o",
            ms=3,
            ls=styles[(index // 10) % len(styles)],
            label=f"{run.name} (best {format_percent(run.best_acc, 1)})",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("exact test accuracy (%)")
    ax.set_title("Exact test accuracy per epoch, all experiments")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_metric_error(metric: MetricError, path: PathLike) -> Path:
    """Plot the metric error of one run: both figures with their best-over-epochs lines (top)
    and the per-epoch difference (bottom).

    Args:
        metric (MetricError): from :func:`metric_error`.
        path (str or os.PathLike): the PNG file to write.

    Returns:
        Path: ``path``.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    run = metric.run
    fig = _figure(figsize=(7.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    top.plot(run.epochs, _percent(run.test_acc), "o-", color="C0", ms=3, label="exact (real)")
    top.plot(
        run.epochs, _percent(run.original_acc), "s--", color="C3", ms=3, label="original method"
    )
    top.axhline(
        100 * run.best_acc,
        color="C0",
        lw=1,
        ls=":",
        label=f"best exact {format_percent(run.best_acc)} (epoch {run.best_epoch})",
    )
    top.axhline(
        100 * run.original_best_acc,
        color="C3",
        lw=1,
        ls=":",
        label=(
            f"best original-method {format_percent(run.original_best_acc)} "
            f"(epoch {run.original_best_epoch})"
        ),
    )
    top.axhline(
        100 * run.last_acc,
        color="0.3",
        lw=1,
        ls="-.",
        label=f"last-epoch exact {format_percent(run.last_acc)}",
    )
    top.set_ylabel("test accuracy (%)")
    top.set_title(f"{run.name}: the original method's figure against the exact accuracy")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    gaps = _percent(metric.gaps)
    bottom.bar(run.epochs, gaps, color=["C3" if g > 0 else "C0" for g in gaps])
    bottom.axhline(0, color="0.3", lw=0.8)
    bottom.set_xlabel("epoch")
    bottom.set_ylabel("original - exact (points)")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _scale_cell(run: RunLog) -> str:
    scale = run.scale()
    if not run.finished:
        return f"unfinished: {len(run.epochs)} epoch(s) logged"
    parts = [
        f"width {scale['nfilters']}",
        f"{scale['nepochs']} epochs",
        f"train {_count(scale['train_samples'])} / test {_count(scale['test_samples'])}",
        f"batch {scale['batch_size']}",
        str(scale["device"]),
    ]
    return ", ".join(parts)


def _counted(run: RunLog, fraction: float) -> str:
    correct, total = run.correct(fraction), run.test_samples
    suffix = f" ({correct:,}/{total:,})" if correct is not None and total is not None else ""
    return f"{format_percent(fraction)}{suffix}"


def _pair(here: Optional[int], seed: Optional[int]) -> str:
    return f"{_count(here)} / {_count(seed)}"


def _results_table(runs: Sequence[RunLog]) -> list[str]:
    lines = [
        "| Experiment | Seed command | Seed reports | Exact here, best epoch | "
        "Exact here, last epoch | Original-method figure, best epoch (same run) | "
        "Parameters here / seed scale | Mask values here / seed scale | Scale | Wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for run in runs:
        seed_params: Optional[int] = None
        seed_masks: Optional[int] = None
        if run.experiment is not None:
            seed_params, seed_masks = seed_scale_counts(run.experiment)
        command = f"`{run.seed_command}`" if run.seed_command else "n/a"
        cells = [
            f"`{run.name}`",
            command,
            format_percent(run.seed_accuracy, 1),
            f"{_counted(run, run.best_acc)}, epoch {run.best_epoch}",
            f"{_counted(run, run.last_acc)}, epoch {run.epochs[-1]}",
            f"{format_percent(run.original_best_acc)}, epoch {run.original_best_epoch}",
            _pair(run.parameters, seed_params),
            _pair(run.mask_values, seed_masks),
            _scale_cell(run),
            format_duration(run.wall_time_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _metric_section(metric: MetricError, image: Optional[str]) -> list[str]:
    run = metric.run
    source = (run.directory / LOG_FILE).as_posix()
    lines = [
        "## The metric error on its own",
        "",
        f"From one logged run, `{run.name}` (`{source}`): every epoch's exact test accuracy "
        "(correct / total over the test images) next to the figure the original PNN code "
        "printed for the same epoch (per-batch accuracy, smoothed `0.7 * previous + 0.3 * "
        "current`, never reset between epochs), both measured on the same test pass.",
        "",
        "| Epoch | Exact (real) | Original method | Original minus exact (points) |",
        "|---:|---:|---:|---:|",
    ]
    shown = _epoch_rows(run)
    for index in shown:
        marks = []
        if index == run.best_index:
            marks.append("best exact")
        if index == run.original_best_index:
            marks.append("best original-method")
        note = f" ({', '.join(marks)})" if marks else ""
        lines.append(
            f"| {run.epochs[index]}{note} | {_counted(run, run.test_acc[index])} | "
            f"{format_percent(run.original_acc[index])} | {_points(metric.gaps[index])} |"
        )
    if len(shown) < len(run.epochs):
        lines += ["", f"({len(shown)} of {len(run.epochs)} epochs listed; all are in the log.)"]
    gaps = metric.gaps
    lines += [
        "",
        "| | Exact (real) | Original method |",
        "|---|---:|---:|",
        f"| Last epoch ({run.epochs[-1]}) | {format_percent(run.last_acc)} | "
        f"{format_percent(run.original_last_acc)} |",
        f"| Best over epochs | {format_percent(run.best_acc)} (epoch {run.best_epoch}) | "
        f"{format_percent(run.original_best_acc)} (epoch {run.original_best_epoch}) |",
        f"| Picking the best epoch adds (points) | {_points(metric.selection_exact)} | "
        f"{_points(metric.selection_original)} |",
        "",
        f"- Per epoch, the original method's figure minus the exact accuracy: mean "
        f"{_points(sum(gaps) / len(gaps))} points, from {_points(min(gaps))} to "
        f"{_points(max(gaps))}; above the exact accuracy in {sum(g > 0 for g in gaps)} of "
        f"{len(gaps)} epochs. The figure weighs the last test batch by 0.3, the one before by "
        f"0.21, and all batches before the last ten by under 3% together, so it measures the "
        f"end of the test set, in the test set's order, plus a remainder of the previous epoch.",
        f"- What the original code reports (its best figure over epochs) minus the best exact "
        f"accuracy: {_points(metric.reported_gap)} points. This is the comparison the seed makes "
        f"for noiseresnet18 at full scale: 90.53% reported against 85.91% actual, +4.62 "
        f"points.",
        f"- Against the exact accuracy of the last epoch, which involves no choice made on the "
        f"test set: {_points(metric.total_inflation)} points, of which "
        f"{_points(metric.selection_exact)} come from picking the best epoch of the exact "
        f"accuracy itself.",
    ]
    if image is not None:
        lines += ["", f"![metric error of {run.name}]({image})"]
    return lines


# Parts of the scale every run must share (width and batch size follow each preset).
_SHARED_SCALE = ("nepochs", "train_samples", "test_samples", "device")


def _scales_differ(runs: Sequence[RunLog]) -> bool:
    keys = {json.dumps([r.scale()[k] for k in _SHARED_SCALE]) for r in runs}
    return len(keys) > 1


def render_markdown(
    runs: Sequence[RunLog],
    *,
    images: Optional[Mapping[str, str]] = None,
    metric: Optional[MetricError] = None,
    manifest: Optional[Mapping[str, Any]] = None,
    source: Optional[str] = None,
    missing: Sequence[str] = (),
) -> str:
    """The report as markdown.

    Args:
        runs (Sequence[RunLog]): the runs, in table order.
        images (Mapping[str, str], optional): image links relative to the report: the run names,
            ``"all"`` (the comparison) and ``"metric"``. Missing keys: no image.
        metric (MetricError, optional): the run for the metric-error section.
        manifest (Mapping, optional): ``reproduce.json`` (``scale``, ``description``,
            ``command``).
        source (str, optional): the output folder, as shown in the text.
        missing (Sequence[str]): presets that have no run in the folder.

    Returns:
        str: the markdown text, ending with a newline.
    """
    links = dict(images or {})
    info = dict(manifest or {})
    lines = ["# Reproduction of the seed's eight CIFAR-10 experiments", ""]
    command = info.get("command")
    where = f" from the logs in `{source}`" if source else ""
    lines.append(
        "Generated by `examples/reproduce.py`"
        + where
        + " (each run's `log.jsonl` and `summary.json`); do not edit by hand. Rebuild it from "
        "the same logs with `--report-only`."
    )
    if command:
        lines += ["", "Command:", "", "```", str(command), "```"]
    lines += ["", "## Scale", ""]
    if info.get("scale"):
        lines.append(f"Scale `{info['scale']}`. {info.get('description', '')}".rstrip())
    else:
        lines.append("The scale of each run is in the table's *Scale* column.")
    if _scales_differ(runs):
        lines += [
            "",
            "**Warning: these runs do not share one scale** (epochs, data sizes or device "
            "differ, see the table), so their comparisons below mix scales.",
        ]
    if missing:
        lines += ["", f"Not run (no log in the folder): {', '.join(f'`{m}`' for m in missing)}."]
    lines += [
        "",
        "## Results",
        "",
        *_results_table(runs),
        "",
        "- *Seed reports*: the test accuracy the seed's notes give (150 epochs, all 50,000 "
        "training and 10,000 test images, the seed's widths), measured exactly.",
        "- *Exact here*: correct / total over the test images used, with the count; at the best "
        "epoch (how the seed reports) and at the last epoch (no selection on the test set).",
        "- *Original-method figure*: what the original PNN code would have printed for the same "
        "run (per-batch accuracy smoothed 0.7/0.3, never reset, best over epochs). Not an "
        "accuracy; shown only to measure how far it is from the exact figure.",
        "- *Parameters*: trainable, noise masks excluded; *mask values*: values held in noise "
        "masks. Here, and for the preset at the seed's width (built on the meta device).",
        "- *Wall time*: sum of the epochs' times (training and testing).",
        "",
        "## How the measured ordering compares with the seed's",
        "",
        "Accuracies compared are the best exact test accuracy over the epochs, as the seed "
        "reports them.",
        "",
    ]
    for finding in compare_with_seed(runs):
        lines.append(
            f"- **{finding.verdict}**: the seed finds that {finding.claim}; {finding.text}"
        )
    if runs:
        ranked_seed = [r for r in runs if r.seed_accuracy is not None]
        lines += ["", f"- Ranking here: {_ranking(runs, lambda r: r.best_acc)}."]
        if ranked_seed:
            lines.append(
                f"- Ranking in the seed: {_ranking(ranked_seed, lambda r: r.seed_accuracy)}."
            )
        note = _noise_note(runs)
        if note:
            lines += ["", note]
    if runs:
        lines += ["", "## Accuracy per epoch", ""]
        if "all" in links:
            lines += [f"![exact test accuracy of all experiments]({links['all']})", ""]
        for run in runs:
            if run.name in links:
                lines += [f"![{run.name}]({links[run.name]})", ""]
        if lines[-1] == "":
            lines.pop()
    if metric is not None:
        lines += ["", *_metric_section(metric, links.get("metric"))]
    return "\n".join(lines) + "\n"


def gpu_runs_section(path: PathLike) -> list[str]:
    """Markdown lines for short seed-width GPU runs recorded in a JSON file.

    The file (e.g. ``docs/data/gpu_h200_runs.json``, written from
    ``examples/seed_width_gpu.py``'s output) holds ``description``, ``device``,
    ``train_images``, ``test_images`` and ``runs``: per preset ``epochs``, ``best_acc``,
    ``original_best_acc``, ``parameters``, ``mask_values``, ``nfilters``, ``batch_size`` and
    ``wall_s``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not such a file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        runs = data["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not a GPU-runs file ({exc})") from exc
    lines = [
        "## Seed-width runs on a GPU (a few epochs only)",
        "",
        str(data.get("description", "")),
        "",
        "| # | experiment | epochs | width | batch | exact best | original-method best | gap | "
        "parameters | mask values | seed's accuracy (150 epochs) | wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = list(EXPERIMENTS)
    for name in sorted(runs, key=lambda n: order.index(n) if n in order else len(order)):
        run = runs[name]
        seed = EXPERIMENTS[name].seed_accuracy if name in EXPERIMENTS else None
        gap = run["original_best_acc"] - run["best_acc"]
        lines.append(
            f"| {order.index(name) + 1 if name in order else '-'} | `{name}` | {run['epochs']} | "
            f"{run['nfilters']} | {run['batch_size']} | {format_percent(run['best_acc'])} | "
            f"{format_percent(run['original_best_acc'])} | {_points(gap)} | "
            f"{_count(run['parameters'])} | {_count(run['mask_values'])} | "
            f"{format_percent(seed)} | {format_duration(run['wall_s'])} |"
        )
    lines += [
        "",
        f"Device: {data.get('device', '?')}; {data.get('train_images', '?'):,} training and "
        f"{data.get('test_images', '?'):,} test images. After so few epochs on a fifth of the "
        "training set these accuracies say nothing about the seed's 150-epoch figures; they "
        "show that the seed-width networks train at the seed's settings, and the metric gap on "
        "a full 10,000-image test set.",
    ]
    return lines


# --------------------------------------------------------------------------------------------
# Everything, written to disk
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What :func:`build_report` wrote.

    Attributes:
        markdown (Path): the report.
        images (list[Path]): the PNG plots.
        runs (list[RunLog]): the runs it read.
        findings (list[Finding]): the seed's claims, checked.
        metric (MetricError, optional): the run of the metric-error section.
    """

    markdown: Path
    images: list[Path] = field(default_factory=list)
    runs: list[RunLog] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    metric: Optional[MetricError] = None


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def build_report(
    out_dir: PathLike,
    report_path: PathLike,
    img_dir: PathLike,
    *,
    names: Optional[Iterable[str]] = None,
    metric_run: Optional[str] = None,
    plots: bool = True,
    gpu_runs: Optional[PathLike] = None,
) -> Report:
    """Read the runs under ``out_dir`` and write the markdown report and its plots.

    Args:
        out_dir (str or os.PathLike): the folder holding one sub-folder per run.
        report_path (str or os.PathLike): the markdown file to write.
        img_dir (str or os.PathLike): where the PNG plots go (linked relative to the report).
        names (Iterable[str], optional): only these runs. Default: every run in ``out_dir``.
        metric_run (str, optional): the run of the metric-error section (see
            :func:`metric_error`).
        plots (bool): write the plots (needs matplotlib). Default: ``True``.
        gpu_runs (str or os.PathLike, optional): a JSON file of short seed-width GPU runs to
            add as a section (see :func:`gpu_runs_section`).

    Returns:
        Report: the files written and what they were built from.

    Raises:
        FileNotFoundError: if ``out_dir`` does not exist.
        ValueError: if it holds no run with a logged epoch, or ``metric_run`` is unknown.
        ImportError: if ``plots`` and matplotlib is not installed.
    """
    root = Path(out_dir)
    wanted = list(names) if names is not None else None
    runs = load_runs(root, wanted)
    if not runs:
        raise ValueError(f"no run with a logged epoch in {str(root)!r}")
    metric = metric_error(runs, metric_run)
    markdown = Path(report_path)
    images_dir = Path(img_dir)
    links: dict[str, str] = {}
    written: list[Path] = []
    if plots:
        images_dir.mkdir(parents=True, exist_ok=True)
        markdown.parent.mkdir(parents=True, exist_ok=True)
        targets: dict[str, Path] = {"all": plot_comparison(runs, images_dir / _COMPARISON_IMAGE)}
        for run in runs:
            targets[run.name] = plot_run(run, images_dir / image_name(run.name))
        if metric is not None:
            targets["metric"] = plot_metric_error(metric, images_dir / _METRIC_IMAGE)
        written = list(targets.values())
        links = {key: _relative(path, markdown.parent) for key, path in targets.items()}
    present = {run.name for run in runs}
    expected = wanted if wanted is not None else list(EXPERIMENTS)
    missing = [name for name in expected if name not in present]
    text = render_markdown(
        runs,
        images=links,
        metric=metric,
        manifest=load_manifest(root),
        source=root.as_posix(),
        missing=missing,
    )
    if gpu_runs is not None:
        text += "\n" + "\n".join(gpu_runs_section(gpu_runs)) + "\n"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text, encoding="utf-8")
    return Report(
        markdown=markdown,
        images=written,
        runs=runs,
        findings=compare_with_seed(runs),
        metric=metric,
    )
