"""Reading run folders: the per-epoch ``log.jsonl``, the ``summary.json`` and the ``reproduce.json`` manifest."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from perturbnn.repro.experiments import EXPERIMENTS, get_experiment

__all__ = [
    "LOG_FILE",
    "MANIFEST_FILE",
    "SUMMARY_FILE",
    "RunLog",
    "load_manifest",
    "load_run",
    "load_runs",
    "seed_scale_counts",
]

_LOGGER = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


#: Per-epoch log of a run (written by :func:`perturbnn.repro.fit.fit`).
LOG_FILE = "log.jsonl"
#: End-of-run summary of a run (written by :func:`perturbnn.repro.fit.fit`).
SUMMARY_FILE = "summary.json"
#: Manifest ``examples/reproduce.py`` writes in its output folder (scale, command).
MANIFEST_FILE = "reproduce.json"

_REQUIRED_KEYS = ("epoch", "test_acc", "original_acc", "seconds")

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
        """The run's :class:`~perturbnn.repro.config.RunConfig` as a dict (empty if unfinished)."""
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
        """Best exact test accuracy over the epochs (what the independent reproduction reports per
        experiment)."""
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
        """The accuracy the preset's source reports (Klachko's independent reproduction, or the
        authors' repository for ``authors-*``), a fraction; stored as ``seed_accuracy`` in
        ``summary.json``."""
        value = (self.summary or {}).get("seed_accuracy")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return get_experiment(self.experiment).seed_accuracy if self.experiment else None

    @property
    def seed_command(self) -> Optional[str]:
        """The command line of the preset's source (the independent reproduction's ``main.py``,
        or the authors' for ``authors-*``; ``summary.json``'s ``seed_command``)."""
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
    """Parameters and noise-mask values of a preset at full scale (the independent reproduction's).

    The model is built on the ``meta`` device, so nothing is allocated.

    Args:
        name (str): a preset of :mod:`perturbnn.repro.experiments`.

    Returns:
        tuple[int, int]: ``(parameters, mask_values)`` as :func:`perturbnn.count_parameters`
        and :func:`perturbnn.count_mask_values` count them.
    """
    from perturbnn import build_model, count_mask_values, count_parameters
    from perturbnn.repro.config import RunConfig
    from perturbnn.repro.data import dataset_info

    config = RunConfig.from_experiment(name)
    info = dataset_info(config.dataset_train)
    if info.nclasses is None:
        raise ValueError(f"preset {name!r} trains on a folder data set; its class count is unknown")
    model = build_model(
        config.net_type,
        device="meta",
        **config.model_config(
            in_channels=info.in_channels, input_size=info.input_size, nclasses=info.nclasses
        ),
    )
    return int(count_parameters(model)), int(count_mask_values(model))
