"""Full-width runs of presets on a GPU for as many epochs as a time box allows, from npz files.

Usage: ``python examples/seed_width_gpu.py OUT SECONDS [DATA_DIR]`` (DATA_DIR: a folder with
``cifar10/cifar10_train_1.npz`` and ``cifar10/cifar10_test.npz``; default ``../shared/data``).
Writes one run folder per preset and ``OUT/gpu_exps.json``; ``docs/data/gpu_h200_runs.json``
holds what it gave on an H200 (see ``docs/reproduction.md``).

The device gets only what fits the 64 MiB transfer: CIFAR-10 train file 1 (10,000 images) and
the full 10,000-image test set. Everything else is the preset (width, batch size, lr) and the
independent reproduction's recipe (SGD with Nesterov momentum, Klachko's initialization and
schedule).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from perturbnn import build_model, count_mask_values, count_parameters, init_weights_
from perturbnn.repro.config import RunConfig
from perturbnn.repro.data import ArrayImageDataset, build_transform
from perturbnn.repro.fit import fit
from perturbnn.repro.optim import make_optimizer, make_scheduler
from perturbnn.repro.runtime import set_seed

out = Path(sys.argv[1])
budget = float(sys.argv[2])
data = Path(sys.argv[3] if len(sys.argv) > 3 else "../shared/data") / "cifar10"
tr = np.load(data / "cifar10_train_1.npz")
te = np.load(data / "cifar10_test.npz")


def ds(arr, train):
    images = torch.from_numpy(arr["images"]).permute(0, 3, 1, 2).contiguous()
    return ArrayImageDataset(
        images, torch.from_numpy(arr["labels"]), transform=build_transform("CIFAR10", train=train)
    )


train_ds, test_ds = ds(tr, True), ds(te, False)
results = {}
for name in ("baseline", "no-noise-1x1", "pnn-fanout64-shared"):
    cfg = RunConfig.from_experiment(name, device="cuda")
    set_seed(cfg.manual_seed)
    model = build_model(
        cfg.net_type, **cfg.model_config(in_channels=3, input_size=32, num_classes=10)
    )
    model = init_weights_(model).cuda()
    opt = make_optimizer(
        cfg.optim_method,
        model,
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    sched = make_scheduler(opt, "CIFAR10")
    g = torch.Generator().manual_seed(cfg.manual_seed)
    train = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=g,
        num_workers=8,
        pin_memory=True,
        persistent_workers=True,
    )
    test = DataLoader(
        test_ds, batch_size=cfg.batch_size, num_workers=8, pin_memory=True, persistent_workers=True
    )
    run_dir = out / name
    start = time.time()
    summary = fit(
        model,
        train,
        test,
        optimizer=opt,
        scheduler=sched,
        epochs=1,
        device="cuda",
        out_dir=run_dir,
        config=cfg.to_dict() if hasattr(cfg, "to_dict") else None,
        progress=False,
    )
    per_epoch = time.time() - start
    extra = int((budget - per_epoch) // (per_epoch * 1.05))
    if extra > 0:
        summary = fit(
            model,
            train,
            test,
            optimizer=opt,
            scheduler=sched,
            epochs=1 + extra,
            device="cuda",
            out_dir=run_dir,
            resume=run_dir / "checkpoint_last.pt",
            progress=False,
        )
    results[name] = {
        "epochs": summary.epochs,
        "best_acc": summary.best_acc,
        "last_acc": summary.last_acc,
        "original_best_acc": summary.original_best_acc,
        "parameters": count_parameters(model),
        "mask_values": count_mask_values(model),
        "wall_s": time.time() - start,
        "first_epoch_s": per_epoch,
        "batch_size": cfg.batch_size,
        "nfilters": cfg.nfilters,
        "history": summary.history,
    }
    print(name, {k: v for k, v in results[name].items() if k != "history"}, flush=True)
    (out / "gpu_exps.json").write_text(json.dumps(results, indent=1))
