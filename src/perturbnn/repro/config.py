""":class:`RunConfig`: all options of a run, with Klachko's ``main.py`` defaults.

Source: Klachko's ``main.py`` options, as described in
``../shared/reference/pnn-reproduction-notes.txt``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from perturbnn._validation import check_choice
from perturbnn.activations import ACTIVATIONS
from perturbnn.functional import IMPLS
from perturbnn.layers import NOISE_TYPES
from perturbnn.models import FIRST_LAYER_TYPES, POOL_TYPES
from perturbnn.models._registry import check_model_name
from perturbnn.repro.data import dataset_info
from perturbnn.repro.experiments import Experiment, get_experiment
from perturbnn.repro.optim import (
    LR_RULES,
    _canonical_optimizer,
)
from perturbnn.repro.runtime import (
    PathLike,
)

__all__ = ["MACHINE_FIELDS", "MODEL_OPTIONS", "RESUME_FIELDS", "RunConfig", "default_out_dir"]


#: :class:`RunConfig` fields passed to :func:`perturbnn.build_model` (with ``in_channels``,
#: ``input_size`` and ``num_classes`` from the data set).
MODEL_OPTIONS: tuple[str, ...] = (
    "nfilters",
    "nmasks",
    "level",
    "filter_size",
    "first_filter_size",
    "scale_noise",
    "act",
    "use_act",
    "pool_type",
    "dropout",
    "unique_masks",
    "train_masks",
    "noise_type",
    "mix_maps",
    "first_layer_type",
    "freeze_first",
)


def _default_data_dir(download: bool = False) -> str:
    """``$PERTURBNN_DATA_DIR``, else the first existing of ``./data`` and ``../shared/data``
    (the order of :func:`perturbnn.repro.data.resolve_data_dir`), else ``./data``; with
    ``download``, ``$PERTURBNN_DATA_DIR``, else ``./data`` (downloads never go elsewhere)."""
    env = os.environ.get("PERTURBNN_DATA_DIR")
    if env:
        return env
    if download:
        return "./data"
    for candidate in ("./data", "../shared/data"):
        if os.path.isdir(candidate):
            return candidate
    return "./data"


@dataclass(frozen=True)
class RunConfig:
    """All options of a run, with Klachko's ``main.py`` defaults.

    Field names are Klachko's flags with dashes as underscores (``--net-type`` is
    ``net_type``, ``--optim-method`` is ``optim_method``). :meth:`from_experiment` starts from
    a preset of :mod:`perturbnn.repro.experiments`.

    Attributes:
        experiment: name of the preset applied, if any (recorded in the summary).
        net_type, dataset_train, dataset_test: model and data set names.
        data_dir: where the data sets are (``None``, the default: ``$PERTURBNN_DATA_DIR``, else
            the first existing of ``./data`` and ``../shared/data``, else ``./data``; with
            ``download``: ``$PERTURBNN_DATA_DIR``, else ``./data``). Always a ``str`` once the
            configuration is built.
        download: download a missing data set with torchvision into ``data_dir`` (see
            :func:`perturbnn.repro.data.load_dataset`); not for ``ImageFolder``.
        nfilters, nmasks, level, filter_size, first_filter_size, scale_noise, act, use_act, pool_type, dropout, unique_masks, train_masks, noise_type, mix_maps: model options
            (see :func:`perturbnn.build_model`).
        first_layer_type, freeze_first: model options of the authors' updated networks
            (``--first-layer-type``, ``--freeze-first``; see :class:`perturbnn.models.ModelConfig`):
            ``"independent"`` and ``False``, the defaults, build the independent
            reproduction's networks; the authors' presets set them.
        impl: how perturbation layers compute (``"auto"``, ``"eager"``, ``"compiled"``,
            ``"grouped"``; the same results, see ``docs/performance.md``). Not part of
            :data:`RESUME_FIELDS`: a run may resume with another ``impl``.
        batch_size, learning_rate, nepochs, optim_method, weight_decay, momentum, manual_seed: training options; Klachko's defaults are batch 64, rate 1e-3, 150
            epochs, SGD with Nesterov momentum 0.9 and weight decay 1e-4, seed 1 (the rate then
            follows :func:`perturbnn.repro.optim.lr_factor`).
        lr_schedule: which learning-rate schedules, a key of
            :data:`perturbnn.repro.optim.LR_RULES` (``--lr-schedule``): ``"independent"`` (the
            default, the independent reproduction's) or ``"authors"`` (the authors' updated
            repository: on CIFAR-10 x0.2 from epochs 150, 250, 300, 350, 400).
        train_subset, test_subset: use a deterministic, class-balanced subset of N samples
            (``None``: all).
        out_dir: where to write logs and checkpoints (``None``: nothing is written).
        resume: checkpoint to continue from.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_workers: DataLoader worker processes.
        progress: show tqdm bars.
        debug: log input, noise and output values of every noise layer
            (:func:`perturbnn.repro.debug.attach_debug_hooks`).
        sync_bn: under ``torchrun``, convert BatchNorm to SyncBatchNorm (ignored in a
            single-process run). ``batch_size`` is per process (see
            :mod:`perturbnn.repro.distributed`).

    Raises:
        ValueError: on an invalid value; the message names the option and the value.
    """

    experiment: Optional[str] = None
    net_type: str = "resnet18"
    dataset_train: str = "CIFAR10"
    dataset_test: str = "CIFAR10"
    data_dir: Optional[str] = None
    download: bool = False
    nfilters: int = 64
    nmasks: int = 1
    level: float = 0.5
    filter_size: int = 0
    first_filter_size: Optional[int] = None
    scale_noise: float = 1.0
    act: str = "relu"
    use_act: bool = False
    pool_type: str = "max"
    dropout: float = 0.5
    unique_masks: bool = True
    train_masks: bool = False
    noise_type: str = "uniform"
    mix_maps: bool = False
    first_layer_type: str = "independent"
    freeze_first: bool = False
    impl: str = "auto"
    batch_size: int = 64
    learning_rate: float = 1e-3
    nepochs: int = 150
    optim_method: str = "SGD"
    lr_schedule: str = "independent"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    manual_seed: int = 1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    out_dir: Optional[str] = None
    resume: Optional[str] = None
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    debug: bool = False
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.download, bool):
            raise ValueError(f"download must be a bool, got {self.download!r}")
        if self.data_dir is None:
            object.__setattr__(self, "data_dir", _default_data_dir(self.download))
        if self.download and "ImageFolder" in (
            dataset_info(self.dataset_train).name,
            dataset_info(self.dataset_test).name,
        ):
            raise ValueError(
                "download must be off for ImageFolder: a folder of class subfolders cannot be "
                "downloaded; put it in data_dir yourself"
            )
        for name in ("batch_size", "nepochs", "nfilters", "nmasks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        for name in ("num_workers", "manual_seed", "filter_size", "first_filter_size"):
            value = getattr(self, name)
            if name == "first_filter_size" and value is None:
                continue  # the builder's default: 0, or 7 for noiseresnet18
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("weight_decay", "momentum", "level", "scale_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        check_choice("impl", self.impl, IMPLS)
        check_choice("lr_schedule", self.lr_schedule, LR_RULES)
        # Names are checked here, before any data is looked for or a line is printed.
        check_model_name(self.net_type)
        check_choice("act", self.act, ACTIVATIONS)
        check_choice("noise_type", self.noise_type, NOISE_TYPES)
        check_choice("pool_type", self.pool_type, POOL_TYPES)
        check_choice("first_layer_type", self.first_layer_type, FIRST_LAYER_TYPES)
        if not isinstance(self.freeze_first, bool):
            raise ValueError(f"freeze_first must be a bool, got {self.freeze_first!r}")
        dataset_info(self.dataset_train)
        dataset_info(self.dataset_test)
        object.__setattr__(self, "optim_method", _canonical_optimizer(self.optim_method))
        if self.experiment is not None:
            get_experiment(self.experiment)
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )

    @classmethod
    def from_experiment(cls, name: str, **overrides: Any) -> RunConfig:
        """Klachko's defaults, then preset ``name``, then ``overrides``.

        Args:
            name (str): a name from :func:`perturbnn.repro.experiments.list_experiments`.
            **overrides: :class:`RunConfig` fields to change (e.g. ``nfilters=8``).

        Returns:
            RunConfig: the configuration, with ``experiment=name``.

        Raises:
            ValueError: if ``name`` is unknown or a value is invalid.
            TypeError: if an override is not a field.
        """
        preset: Experiment = get_experiment(name)
        return cls.from_dict({**preset.overrides(), "experiment": name, **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping of field names (e.g. a checkpoint's ``config``).

        Raises:
            TypeError: on a key that is not a field (the message lists them).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown RunConfig field(s) {unknown}; valid: {sorted(names)}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict."""
        return dataclasses.asdict(self)

    def model_config(
        self,
        *,
        in_channels: int,
        input_size: int,
        num_classes: Optional[int] = None,
        nclasses: Optional[int] = None,
    ) -> dict[str, Any]:
        """Keyword options for :func:`perturbnn.build_model` (:data:`MODEL_OPTIONS` plus shape).

        Args:
            in_channels (int): image channels of the data set.
            input_size (int): image side, pixels.
            num_classes (int): number of classes (``nclasses``: the same, its older name; give
                one).

        Returns:
            dict[str, Any]: the options, the number of classes as ``num_classes``.

        Raises:
            TypeError: if neither ``num_classes`` nor ``nclasses`` is given.
            ValueError: if both are given with different values.
        """
        if num_classes is None and nclasses is None:
            raise TypeError("model_config() needs num_classes")
        if num_classes is not None and nclasses is not None and num_classes != nclasses:
            raise ValueError(
                f"model_config() got num_classes={num_classes!r} and nclasses={nclasses!r}: "
                "nclasses is another name of num_classes; give one of them"
            )
        classes = num_classes if num_classes is not None else nclasses
        # ``None`` leaves an option to the builder (first_filter_size: 0, noiseresnet18: 7).
        options = {
            name: getattr(self, name) for name in MODEL_OPTIONS if getattr(self, name) is not None
        }
        options.update(
            in_channels=in_channels, input_size=input_size, num_classes=classes, impl=self.impl
        )
        return options


def default_out_dir(config: RunConfig, root: PathLike = "runs") -> Path:
    """``<root>/<experiment or net_type>-<YYYYmmdd-HHMMSS>``.

    Returns:
        Path: the directory (not created).
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.experiment or config.net_type}-{stamp}"


#: :class:`RunConfig` fields a resumed run must share with its checkpoint: the model, the
#: shape of its data and the optimizer.
#: Fields of :class:`RunConfig` that describe the machine or the way a run executes, not the
#: experiment: a run resumed or compared with other values for these is still the same run.
MACHINE_FIELDS: tuple[str, ...] = (
    "data_dir",
    "download",
    "out_dir",
    "resume",
    "device",
    "num_workers",
    "progress",
    "debug",
    "sync_bn",
    "impl",
)

RESUME_FIELDS: tuple[str, ...] = (
    "net_type",
    "dataset_train",
    *MODEL_OPTIONS,
    "optim_method",
    "lr_schedule",
)
