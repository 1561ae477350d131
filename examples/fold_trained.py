"""Train a PNN without activations briefly on CIFAR-10, fold it, and compare the two.

A thin caller of the library and the harness: a small CNN (three 3x3 convolution stages) is
converted with :func:`perturbnn.convert` (every convolution becomes a PNN layer without an
activation between noise and 1x1 convolution), trained for ``--epochs`` on a class-balanced
subset of CIFAR-10 (:func:`perturbnn.repro.data.make_loaders`,
:func:`perturbnn.repro.loop.train_one_epoch`), folded with :func:`perturbnn.reparameterize`,
and both models are evaluated on the test subset: the largest output difference, the exact
accuracy of each and the number of identical predictions are printed. A minute or two on 2 CPU
cores with the defaults. The data is read from ``--data-dir`` or ``$PERTURBNN_DATA_DIR``.

Usage (from the repository root)::

    python examples/fold_trained.py
    python examples/fold_trained.py --epochs 1 --train-subset 1000 --test-subset 500
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from perturbnn import convert, reparameterize
from perturbnn.repro.data import make_loaders
from perturbnn.repro.loop import evaluate, train_one_epoch


def small_cnn(width: int) -> nn.Sequential:
    """Three stages of 3x3 convolution, BatchNorm, ReLU and 2x2 max pooling, then a linear head."""
    layers: list[nn.Module] = []
    channels = 3
    for out in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="default: $PERTURBNN_DATA_DIR")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--width", type=int, default=24, help="channels of the first stage")
    parser.add_argument("--nmasks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for flag in ("epochs", "train_subset", "test_subset", "width", "nmasks"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")

    torch.manual_seed(args.seed)
    train_loader, test_loader = make_loaders(
        "CIFAR10",
        "CIFAR10",
        args.data_dir,
        batch_size=64,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        seed=args.seed,
    )
    model, _ = convert(
        small_cnn(args.width),
        nmasks=args.nmasks,
        level=0.1,
        keep_first=False,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, args.epochs + 1):
        result = train_one_epoch(model, train_loader, optimizer, device="cpu", epoch=epoch)
        print(f"epoch {epoch}: training loss {result.loss:.3f}, accuracy {result.accuracy:.4f}")

    model.eval()
    folded, report = reparameterize(model)
    print(report)
    unfolded_eval = evaluate(model, test_loader, device="cpu")
    folded_eval = evaluate(folded, test_loader, device="cpu")
    largest, same, total = 0.0, 0, 0
    with torch.no_grad():
        for images, _ in test_loader:
            want, got = model(images), folded(images)
            largest = max(largest, float((got - want).abs().max()))
            same += int((got.argmax(1) == want.argmax(1)).sum())
            total += images.shape[0]
    print(f"max |folded - unfolded| logit difference over {total} test images: {largest:.2e}")
    print(
        f"test accuracy: unfolded {unfolded_eval.accuracy:.4f} "
        f"({unfolded_eval.correct}/{unfolded_eval.total}), folded {folded_eval.accuracy:.4f} "
        f"({folded_eval.correct}/{folded_eval.total})"
    )
    print(f"identical predictions: {same}/{total}")
    return 0 if same == total else 1


if __name__ == "__main__":
    sys.exit(main())
