"""The eight CIFAR-10 experiments of the PNN reproduction notes, as frozen presets.

Each :class:`Experiment` records the command line the reproduction notes ran
(``seed_command``), the test accuracy they report for it (``seed_accuracy``, a
fraction, measured with the *exact* accuracy, not the original code's smoothed
figure), the model configuration that command implies and the training options it
sets. Options a command does not set keep the seed's defaults (see
:class:`perturbnn.repro.config.RunConfig`), except the noise ``level``, which every
preset states explicitly (0.5, the seed's default that all eight runs used).

Source: the reproduction notes in ``../shared/reference/pnn-reproduction-notes.txt``
(Klachko's "Perturbative Neural Networks" reproduction of Juefei-Xu et al., CVPR 2018).

Example::

    >>> from perturbnn.repro.experiments import get_experiment
    >>> exp = get_experiment("pnn-fanout64-shared")
    >>> exp.net_type, exp.config["nmasks"], exp.seed_accuracy
    ('perturb_resnet18', 64, 0.824)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from perturbnn._suggest import did_you_mean

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment", "list_experiments"]

_SEED_PREFIX = (
    "python main.py --net-type '{net}' --dataset-test 'CIFAR10' --dataset-train 'CIFAR10'"
)


@dataclass(frozen=True)
class Experiment:
    """One experiment of the reproduction notes, frozen.

    Args:
        name (str): short unique name, e.g. ``"pnn-fanout64-shared"``.
        description (str): one or two sentences on what the run tests.
        net_type (str): model name for :func:`perturbnn.build_model`.
        seed_command (str): the command line of the seed's ``main.py``.
        seed_accuracy (float): test accuracy the notes report, as a fraction in [0, 1].
        config (Mapping[str, Any]): model options the command sets (keys of
            :func:`perturbnn.build_model`, e.g. ``nfilters``, ``nmasks``, ``level``).
        train (Mapping[str, Any]): training options the command sets
            (``batch_size``, ``learning_rate``).
        dataset (str): training and test data set name. Default: ``"CIFAR10"``.
    """

    name: str
    description: str
    net_type: str
    seed_command: str
    seed_accuracy: float
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    train: Mapping[str, Any] = field(default_factory=dict, hash=False)
    dataset: str = "CIFAR10"

    def __post_init__(self) -> None:
        if not 0.0 <= self.seed_accuracy <= 1.0:
            raise ValueError(
                f"seed_accuracy must be a fraction in [0, 1], got {self.seed_accuracy}"
            )
        # Freeze the mappings so a preset cannot be changed by accident.
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))

    def overrides(self) -> dict[str, Any]:
        """All options this preset sets, as one flat dict of :class:`RunConfig` fields.

        Returns:
            dict[str, Any]: ``net_type``, ``dataset_train``, ``dataset_test``, the model
            options of ``config`` and the training options of ``train``.
        """
        return {
            "net_type": self.net_type,
            "dataset_train": self.dataset,
            "dataset_test": self.dataset,
            **dict(self.config),
            **dict(self.train),
        }


def _exp(
    name: str,
    description: str,
    net_type: str,
    flags: str,
    seed_accuracy: float,
    config: dict[str, Any],
    train: dict[str, Any],
) -> Experiment:
    return Experiment(
        name=name,
        description=description,
        net_type=net_type,
        seed_command=f"{_SEED_PREFIX.format(net=net_type)} {flags}",
        seed_accuracy=seed_accuracy,
        config={**config, "level": 0.5},
        train=train,
    )


_PRESETS: tuple[Experiment, ...] = (
    _exp(
        "baseline",
        "Regular ResNet-18 with 3x3 convolutions, filters reduced to 44 to match the "
        "PNN parameter count.",
        "resnet18",
        "--nfilters 44 --batch-size 10 --learning-rate 1e-3",
        0.918,
        {"nfilters": 44},
        {"batch_size": 10, "learning_rate": 1e-3},
    ),
    _exp(
        "original",
        "The original PNN implementation: 7x7 convolution first, one noise mask per "
        "channel in all other layers.",
        "noiseresnet18",
        "--nfilters 128 --batch-size 10 --learning-rate 1e-4 --first_filter_size 7",
        0.857,
        {"nfilters": 128, "first_filter_size": 7},
        {"batch_size": 10, "learning_rate": 1e-4},
    ),
    _exp(
        "original-first3",
        "As 'original' with a 3x3 first convolution (the notes give no command line; "
        "this one is 'original' with --first_filter_size 3).",
        "noiseresnet18",
        "--nfilters 128 --batch-size 10 --learning-rate 1e-4 --first_filter_size 3",
        0.862,
        {"nfilters": 128, "first_filter_size": 3},
        {"batch_size": 10, "learning_rate": 1e-4},
    ),
    _exp(
        "no-noise-1x1",
        "No noise at all: 3x3 convolution first, 1x1 convolutions in all other layers.",
        "perturb_resnet18",
        "--nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 3 --filter_size 1",
        0.855,
        {"nfilters": 128, "first_filter_size": 3, "filter_size": 1},
        {"batch_size": 16, "learning_rate": 1e-3},
    ),
    _exp(
        "pnn-all-layers",
        "Uniform noise masks in all layers, the first one included (fanout 1).",
        "perturb_resnet18",
        "--nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 0 "
        "--filter_size 0 --nmasks 1",
        0.726,
        {"nfilters": 128, "first_filter_size": 0, "filter_size": 0, "nmasks": 1},
        {"batch_size": 16, "learning_rate": 1e-3},
    ),
    _exp(
        "pnn-fanout64-unique-mix",
        "3x3 convolution first, then perturbation layers with fanout 64, a unique set "
        "of masks per input channel and an extra 1x1 mixing layer.",
        "perturb_resnet18",
        "--nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 3 "
        "--filter_size 0 --nmasks 64 --unique_masks --mix_maps",
        0.827,
        {
            "nfilters": 128,
            "first_filter_size": 3,
            "filter_size": 0,
            "nmasks": 64,
            "unique_masks": True,
            "mix_maps": True,
        },
        {"batch_size": 16, "learning_rate": 1e-3},
    ),
    _exp(
        "pnn-fanout64-shared",
        "As 'pnn-fanout64-unique-mix' but one set of 64 masks shared by all input "
        "channels and no mixing layer (closest to the paper).",
        "perturb_resnet18",
        "--nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 3 "
        "--filter_size 0 --nmasks 64 --no-unique_masks",
        0.824,
        {
            "nfilters": 128,
            "first_filter_size": 3,
            "filter_size": 0,
            "nmasks": 64,
            "unique_masks": False,
        },
        {"batch_size": 16, "learning_rate": 1e-3},
    ),
    _exp(
        "pnn-fanout64-shared-trained",
        "As 'pnn-fanout64-shared' with the noise masks trained as parameters.",
        "perturb_resnet18",
        "--nfilters 128 --batch-size 16 --learning-rate 1e-3 --first_filter_size 3 "
        "--filter_size 0 --nmasks 64 --no-unique_masks --train_masks",
        0.859,
        {
            "nfilters": 128,
            "first_filter_size": 3,
            "filter_size": 0,
            "nmasks": 64,
            "unique_masks": False,
            "train_masks": True,
        },
        {"batch_size": 16, "learning_rate": 1e-3},
    ),
)

#: The eight presets by name, in the order of the reproduction notes (read-only).
EXPERIMENTS: Mapping[str, Experiment] = MappingProxyType({e.name: e for e in _PRESETS})


def list_experiments() -> list[str]:
    """Names of the presets in the order of the reproduction notes.

    Returns:
        list[str]: ``["baseline", "original", ..., "pnn-fanout64-shared-trained"]``.
    """
    return list(EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    """Look up a preset by name.

    Args:
        name (str): one of :func:`list_experiments`.

    Returns:
        Experiment: the frozen preset.

    Raises:
        ValueError: if ``name`` is unknown; the message gives the close matches, if any
            (:func:`perturbnn._suggest.close_matches`: a typo or the start of a name, not
            anything else), then all valid names.
    """
    try:
        return EXPERIMENTS[name]
    except (KeyError, TypeError):
        pass
    names = list_experiments()
    hint = did_you_mean(str(name), names)
    hint = f" {hint[0].upper()}{hint[1:]}" if hint else ""
    raise ValueError(
        f"unknown experiment {name!r}.{hint} Valid names: {', '.join(names)}"
    ) from None
