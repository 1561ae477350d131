"""High level: build everything a run needs from a :class:`~perturbnn.repro.config.RunConfig`
(:func:`prepare_run`) and train it (:func:`run_experiment`).

Example::

    >>> from perturbnn.repro.config import RunConfig
    >>> from perturbnn.repro.run import run_experiment
    >>> config = RunConfig.from_experiment(
    ...     "pnn-fanout64-shared", nfilters=8, nepochs=1, train_subset=256, test_subset=200,
    ...     data_dir="../shared/data", out_dir="runs/smoke")
    >>> summary = run_experiment(config)
    >>> f"{summary.best_acc:.2%} exact vs {summary.original_best_acc:.2%} original-method"
    '...% exact vs ...% original-method'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from torch.utils.hooks import RemovableHandle

from perturbnn.repro import distributed as _distributed
from perturbnn.repro.checkpoint import (
    CheckpointError,
    _plain,
    load_checkpoint,
)
from perturbnn.repro.config import (
    RESUME_FIELDS,
    RunConfig,
)
from perturbnn.repro.data import dataset_info
from perturbnn.repro.experiments import Experiment, get_experiment
from perturbnn.repro.fit import (
    FitSummary,
    _count,
    fit,
)
from perturbnn.repro.mismatch import config_mismatch, format_mismatch, state_mismatch
from perturbnn.repro.optim import (
    make_optimizer,
    make_scheduler,
)
from perturbnn.repro.runtime import (
    resolve_device,
    set_seed,
)

__all__ = ["PreparedRun", "prepare_run", "run_experiment"]


@dataclass
class PreparedRun:
    """Everything :func:`prepare_run` built, ready for :meth:`fit`.

    Attributes:
        config (RunConfig): the configuration.
        model (nn.Module): the model, on ``device``.
        optimizer (Optimizer), scheduler (LRScheduler): from Klachko's choices.
        train_loader, test_loader (DataLoader): the data.
        device (torch.device): where it trains.
        experiment (Experiment, optional): the preset, if one was applied.
        checkpoint (dict, optional): the loaded ``resume`` checkpoint.
        parameters (int): trainable parameters, fixed noise masks excluded.
        mask_values (int): values held in noise masks.
        frozen_parameters (int): parameters with ``requires_grad=False`` (a first convolution
            built with ``freeze_first``), not trained and not in ``parameters``.
        debug_handles (list[RemovableHandle]): hooks from ``debug=True``.
        distributed (DistributedContext, optional): rank, world size and backend when
            started by ``torchrun`` (then ``model`` is DDP-wrapped and the loaders are
            sharded); ``None`` in a single-process run.
    """

    config: RunConfig
    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    train_loader: DataLoader[Any]
    test_loader: DataLoader[Any]
    device: torch.device
    experiment: Optional[Experiment]
    checkpoint: Optional[dict[str, Any]]
    parameters: int
    mask_values: int
    debug_handles: list[RemovableHandle] = field(default_factory=list)
    distributed: Optional[_distributed.DistributedContext] = None
    frozen_parameters: int = 0

    def metadata(self) -> dict[str, Any]:
        """Entries for ``summary.json``: the experiment, the command and accuracy of its source
        (the independent reproduction or the authors; ``seed_command``, ``seed_accuracy``)."""
        meta: dict[str, Any] = {"experiment": self.config.experiment}
        if self.experiment is not None:
            meta["seed_command"] = self.experiment.seed_command
            meta["seed_accuracy"] = self.experiment.seed_accuracy
        meta["train_samples"] = _sized(self.train_loader)
        meta["test_samples"] = _sized(self.test_loader)
        meta["world_size"] = self.distributed.world_size if self.distributed else 1
        meta["torch_threads"] = torch.get_num_threads()  # results depend on it on the CPU
        meta["torch_version"] = torch.__version__
        return meta

    def fit(self, *, logger: Optional[logging.Logger] = None) -> FitSummary:
        """Run :func:`fit` with this run's objects and configuration."""
        return fit(
            self.model,
            self.train_loader,
            self.test_loader,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            epochs=self.config.nepochs,
            device=self.device,
            out_dir=self.config.out_dir,
            config=self.config.to_dict(),
            resume=self.checkpoint,
            progress=self.config.progress,
            metadata=self.metadata(),
            logger=logger,
        )


def _sized(loader: DataLoader[Any]) -> Optional[int]:
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_resume(checkpoint: Mapping[str, Any], config: RunConfig, model: nn.Module) -> None:
    """Refuse a checkpoint of another configuration, listing the options and keys that differ.

    Raises:
        CheckpointError: if an option of :data:`RESUME_FIELDS` differs from the checkpoint's
            ``config`` or the model's state dict does not match the checkpoint's.
    """
    saved = checkpoint.get("config") or {}
    options = config_mismatch(saved, _plain(config.to_dict()), RESUME_FIELDS)
    state = _distributed.plain_state_dict(checkpoint["model"])
    keys = state_mismatch(model.state_dict(), state)
    if not options and not keys:
        return
    parts = []
    if options:
        parts.append(f"Options that differ ({len(options)}): {format_mismatch(options)}")
    if keys:
        parts.append(f"Mismatched keys ({len(keys)}): {format_mismatch(keys)}")
    raise CheckpointError(
        f"cannot resume from {config.resume!r}: it was saved by a run with another "
        f"configuration. {'. '.join(parts)}. Resume with the checkpoint's options, or start a "
        "new run without --resume"
    )


def prepare_run(config: RunConfig) -> PreparedRun:
    """Build data loaders, model, optimizer and scheduler for ``config``, without training.

    Order: seed the generators (``manual_seed``), load the resume checkpoint if any, build the
    loaders (:func:`perturbnn.repro.data.make_loaders`), then the model (:func:`perturbnn.build_model`
    with ``in_channels``, ``input_size`` and ``nclasses`` of the training set), initialize it
    as Klachko's reproduction does (:func:`perturbnn.init_weights_`, drawn from the global RNG that
    ``manual_seed`` seeded; skipped on resume, where the checkpoint's weights are loaded), move
    it to the device, then build the optimizer over its trainable parameters and Klachko's
    schedule (:func:`perturbnn.repro.optim.make_scheduler`).

    Started by ``torchrun`` with two or more processes, it first joins the process group
    (:func:`perturbnn.repro.distributed.init_distributed`: ``cuda:LOCAL_RANK`` with NCCL, or the CPU
    with gloo), shards the loaders (:func:`perturbnn.repro.distributed.distribute_loaders`) and
    wraps the model in DDP after checking that the noise masks match on every rank
    (:func:`perturbnn.repro.distributed.wrap_model`, with ``SyncBatchNorm`` if ``sync_bn``).

    Args:
        config (RunConfig): the options.

    Returns:
        PreparedRun: call its :meth:`~PreparedRun.fit`.

    Raises:
        perturbnn.repro.data.DataNotFoundError: if the data set files are not in ``data_dir``.
        perturbnn.repro.data.DataCorruptError: if they are unreadable.
        ValueError: on an invalid option, an unknown model or data set, a device that is not
            available, or a resume file that is not a perturbnn checkpoint.
        CheckpointError: (a ``ValueError``) if ``resume`` was saved with other options of
            :data:`RESUME_FIELDS` or another model; the message lists the options and the
            state-dict keys that differ.
        FileNotFoundError: if ``resume`` does not exist.
    """
    from perturbnn import build_model, count_parameters, init_weights_
    from perturbnn.repro.data import dataset_classes, make_loaders

    experiment = get_experiment(config.experiment) if config.experiment else None
    context = _distributed.init_distributed(config.device)  # None unless torchrun, N >= 2
    device = context.device if context is not None else resolve_device(config.device)
    checkpoint = load_checkpoint(config.resume, map_location=device) if config.resume else None
    train_info = dataset_info(config.dataset_train)
    test_info = dataset_info(config.dataset_test)
    shape = (train_info.in_channels, train_info.input_size, train_info.nclasses)
    if (test_info.in_channels, test_info.input_size, test_info.nclasses) != shape:
        raise ValueError(
            f"dataset_test {config.dataset_test!r} does not match dataset_train "
            f"{config.dataset_train!r} (channels, size, classes differ)"
        )
    set_seed(config.manual_seed)
    train_loader, test_loader = make_loaders(
        config.dataset_train,
        config.dataset_test,
        config.data_dir,
        batch_size=config.batch_size,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        num_workers=config.num_workers,
        seed=config.manual_seed,
        download=config.download,
    )
    nclasses = train_info.nclasses
    if nclasses is None:  # ImageFolder: the classes are the training folder's subfolders
        train_classes = dataset_classes(train_loader.dataset) or []
        test_classes = dataset_classes(test_loader.dataset) or []
        if train_classes != test_classes:
            raise ValueError(
                f"the training and test folders must hold the same class subfolders, got "
                f"{len(train_classes)} and {len(test_classes)} classes"
                f" ({sorted(set(train_classes) ^ set(test_classes))[:5]} differ)"
            )
        nclasses = len(train_classes)
    if context is not None:
        train_loader, test_loader = _distributed.distribute_loaders(
            train_loader, test_loader, seed=config.manual_seed
        )
    model = build_model(
        config.net_type,
        **config.model_config(
            in_channels=train_info.in_channels,
            input_size=train_info.input_size,
            nclasses=nclasses,
        ),
    )
    if checkpoint is None:  # a resumed run loads its weights from the checkpoint instead
        init_weights_(model)
    model = model.to(device)
    if checkpoint is not None:
        _check_resume(checkpoint, config, model)
    handles: list[RemovableHandle] = []
    if config.debug:
        from perturbnn.repro.debug import attach_debug_hooks

        handles = attach_debug_hooks(model, level=logging.INFO)
    if context is not None:
        model = _distributed.wrap_model(model, context, sync_bn=config.sync_bn)
    optimizer = make_optimizer(
        config.optim_method,
        model,
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = make_scheduler(optimizer, config.dataset_train, rule=config.lr_schedule)
    parameters, mask_values = _count(model)
    return PreparedRun(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        test_loader=test_loader,
        device=device,
        experiment=experiment,
        checkpoint=checkpoint,
        parameters=parameters,
        mask_values=mask_values,
        debug_handles=handles,
        distributed=context,
        frozen_parameters=count_parameters(model, frozen=True),
    )


def run_experiment(config: RunConfig, *, logger: Optional[logging.Logger] = None) -> FitSummary:
    """Build everything for ``config`` and train: ``prepare_run(config).fit()``.

    Under ``torchrun``, the process group that :func:`prepare_run` joined is destroyed at the
    end.

    Args:
        config (RunConfig): e.g. ``RunConfig.from_experiment("baseline", nepochs=10)``.
        logger (logging.Logger, optional): where epoch lines go.

    Returns:
        FitSummary: best and last exact test accuracy, the original-method figure, history.

    Raises:
        See :func:`prepare_run` and :func:`fit`.
    """
    run = prepare_run(config)
    try:
        return run.fit(logger=logger)
    finally:
        if run.distributed is not None:
            _distributed.destroy_distributed(run.distributed)
