"""Can a PNN layer match a 3x3 convolution? On one image, and on a data set, by least squares.

Measures the independent reproduction's critique of Sec. 3.3 of the paper ("Weakness of
reasoning": for one input one can always solve for the noise that matches a convolution's
output; it does not follow for every input of a data set at once).

Two target convolutions, 3 input channels (normalized CIFAR-10 images as the harness feeds the
first layer: ``build_transform("cifar10", train=False)``, zero padding 1):

- ``random``: a 3x3 convolution 3 -> ``--out-channels`` (48) drawn as ``nn.Conv2d`` draws it;
- ``trained``: the stem's 3x3 convolution (3 -> ``--width``, 12) of the harness's ``resnet18``
  baseline at width ``--width``, trained here for ``--train-steps`` SGD steps (batch 128) on the
  fitting images (seeded; too short to converge: the JSON records its test accuracy and how far
  the stem's weights moved from their initial values).

Both output counts are multiples of 3 because a ``PerturbConv2d`` with ``nmasks > 1`` groups its
1x1 convolution by input channel. Every output map is fitted on its own (the least-squares
problems of different outputs share no parameter), so the output count changes only the sample
of target filters, not the problem.

Fitted to each target's output, each by linear least squares (normal equations accumulated in
float64 over batches of images, solved by ``torch.linalg.lstsq``), on one fitting image and on
``--fit-images`` images (5,000), then scored on the fitting set and on ``--test-images``
held-out test images (1,000) by the relative error ``||y_hat - y|| / ||y||`` over all outputs,
pixels and images of the set:

- ``3x3 conv``: a 3x3 convolution with bias (the ceiling: it contains the target, error ~0);
- ``1x1 conv``: a dense 1x1 convolution with bias (the floor the noise must beat);
- ``1x1 grouped``: each output a scaled copy of the one input channel it sees in a grouped PNN
  layer, plus a bias (the floor of the grouped layers without noise);
- ``free noise``: a dense 1x1 convolution plus a free map per output channel (one value per
  output, row and column), the best that any input-independent additive noise can add to a 1x1
  convolution without an activation (the noise of the paper's argument, solved for; with
  trainable masks a PNN layer without activation can reach at most this);
- ``pnn``: the library's ``PerturbConv2d(3, out, nmasks, level=..., use_act=..., unique_masks=...)``
  with its fixed random masks; its 1x1 weights and bias are the least-squares solution on the
  features ``act(x + level * masks)`` (linear in the weights with or without the ReLU, as the
  masks are fixed), loaded into the layer, and the scores come from the layer's own forward pass.

Usage::

    python benchmarks/critique.py             # full setting: table, JSON, figure (~10 min)
    python benchmarks/critique.py --quick     # 8x8 crops, 200 images: seconds

Writes ``benchmarks/results/critique.{json,md}`` and ``docs/img/critique.png`` (``--quick``:
``benchmarks/results/critique-quick.*``). Not part of the test run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perturbnn import PerturbConv2d
from perturbnn.functional import perturb
from perturbnn.models import build_model
from perturbnn.repro.data import build_transform, load_dataset

ROOT = Path(__file__).resolve().parent.parent
IN_CHANNELS = 3
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "fit_images": 5000,
        "test_images": 1000,
        "crop": 32,
        "train_steps": 80,
        "nmasks": [1, 8, 64],
        "levels": [0.1, 0.5],
    },
    "quick": {
        "fit_images": 200,
        "test_images": 100,
        "crop": 8,
        "train_steps": 2,
        "nmasks": [1, 8, 64],
        "levels": [0.1, 0.5],
    },
}
BATCH = 100  # images per accumulation step: 100 x 192 maps x 32 x 32 float64 is 157 MB


# ----------------------------------------------------------------------------- data and targets


def load_images(
    n_fit: int, n_test: int, crop: int, seed: int, data_dir: Optional[Path] = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalized CIFAR-10 images, float64, center-cropped to ``crop``, and their labels.

    The fitting images are a seeded random sample of the training split; the held-out images are
    the first ``n_test`` of the test split. Each image goes through the harness's test
    transform (``build_transform("cifar10", train=False)``: scaling to [0, 1], normalization).

    Returns:
        ``(fit Tensor[n_fit, 3, crop, crop], fit labels Tensor[n_fit], held-out
        Tensor[n_test, 3, crop, crop], held-out labels Tensor[n_test])``.
    """
    transform = build_transform("cifar10", train=False)
    train = load_dataset("cifar10", data_dir, train=True, transform=transform)
    test = load_dataset("cifar10", data_dir, train=False, transform=transform)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n_fit]
    fit = torch.stack([train[int(i)][0] for i in order])
    held = torch.stack([test[i][0] for i in range(n_test)])
    lo = (32 - crop) // 2
    window = (slice(None), slice(None), slice(lo, lo + crop), slice(lo, lo + crop))
    return (
        fit[window].double(),
        torch.as_tensor(train.targets)[order],
        held[window].double(),
        torch.as_tensor(test.targets)[:n_test],
    )


def random_conv(out_channels: int, seed: int) -> Tensor:
    """A 3x3 convolution's weight ``Tensor[out, 3, 3, 3]``, drawn as ``nn.Conv2d`` draws it."""
    torch.manual_seed(seed)
    return nn.Conv2d(IN_CHANNELS, out_channels, 3, padding=1, bias=False).weight.detach().double()


def trained_conv(
    width: int,
    steps: int,
    images: Tensor,
    labels: Tensor,
    held: Tensor,
    held_labels: Tensor,
    seed: int,
) -> tuple[Tensor, dict[str, float]]:
    """Train the harness's ``resnet18`` (width ``width``) briefly; return its stem's 3x3 weight.

    SGD (momentum 0.9, learning rate 0.05, weight decay 5e-4), batch 128, seeded shuffling, on
    ``images`` (no augmentation). Returns the weight ``Tensor[width, 3, 3, 3]`` and a record: test
    accuracy on ``held`` and the relative change of the stem's weight from its initial value.
    """
    torch.manual_seed(seed)
    model = build_model("resnet18", nfilters=width, input_size=images.shape[-1])
    stem = model.stem[0]
    start = stem.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    x32, batch = images.float(), 128
    model.train()
    order = torch.randperm(len(x32), generator=gen)
    for step in range(steps):
        lo = (step * batch) % len(x32)
        if lo + batch > len(x32):
            order, lo = torch.randperm(len(x32), generator=gen), 0
        index = order[lo : lo + batch]
        optimizer.zero_grad()
        F.cross_entropy(model(x32[index]), labels[index]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(held[i : i + 500].float()).argmax(1) == held_labels[i : i + 500]).sum())
            for i in range(0, len(held), 500)
        )
    weight = stem.weight.detach().double()
    moved = float((weight - start.double()).norm() / start.double().norm())
    return weight, {"test_accuracy": correct / len(held), "stem_relative_change": moved}


# ----------------------------------------------------------------------------- least squares


@dataclass
class Method:
    """A predictor linear in its parameters, for any number of output channels ``out``.

    ``features(x)`` gives ``Tensor[B, P, H, W]``; output ``o`` of ``out`` is fitted on the
    feature channels ``groups[g]`` (plus a constant), ``g = group_of(o, out)``;
    ``predict(x, solutions, out)`` gives ``Tensor[B, out, H, W]`` from the per-group solutions
    ``Tensor[len(group) + 1, out]`` (zero in the columns of outputs outside the group).
    """

    name: str
    features: Callable[[Tensor], Tensor]
    groups: list[list[int]]
    group_of: Callable[[int, int], int]
    predict: Callable[[Tensor, list[Tensor], int], Tensor]


def rows(features: Tensor, channels: list[int]) -> Tensor:
    """``Tensor[B * H * W, len(channels) + 1]``: the chosen feature maps and a constant column."""
    picked = features[:, channels].permute(0, 2, 3, 1).reshape(-1, len(channels))
    return torch.cat([picked, torch.ones(len(picked), 1, dtype=picked.dtype)], dim=1)


def solve(method: Method, x: Tensor, weights: list[Tensor]) -> list[list[Tensor]]:
    """Least squares of ``method`` against each ``conv2d(x, weight, padding=1)`` over all of ``x``.

    Normal equations per group (one Gram matrix for all targets), accumulated in float64 over
    batches of :data:`BATCH` images and solved by ``torch.linalg.lstsq`` (``gelsd``: the
    minimum-norm solution where the fit is underdetermined).

    Returns:
        For each weight, the per-group solutions (see :class:`Method`).
    """
    outs = [w.shape[0] for w in weights]
    members = [
        [[o for o in range(out) if method.group_of(o, out) == g] for g in range(len(method.groups))]
        for out in outs
    ]
    grams = [torch.zeros(len(c) + 1, len(c) + 1, dtype=torch.float64) for c in method.groups]
    rhs = [
        [torch.zeros(len(c) + 1, len(m), dtype=torch.float64) for c, m in zip(method.groups, mem)]
        for mem in members
    ]
    for lo in range(0, len(x), BATCH):
        xb = x[lo : lo + BATCH]
        ys = [
            F.conv2d(xb, w, padding=1).permute(0, 2, 3, 1).reshape(-1, out)
            for w, out in zip(weights, outs)
        ]
        feats = method.features(xb)
        for g, channels in enumerate(method.groups):
            a = rows(feats, channels)
            grams[g] += a.T @ a
            for t, y in enumerate(ys):
                rhs[t][g] += a.T @ y[:, members[t][g]]
    solutions = []
    for t, out in enumerate(outs):
        per_group = []
        for g in range(len(method.groups)):
            full = torch.zeros(len(method.groups[g]) + 1, out, dtype=torch.float64)
            full[:, members[t][g]] = torch.linalg.lstsq(
                grams[g], rhs[t][g], driver="gelsd"
            ).solution
            per_group.append(full)
        solutions.append(per_group)
    return solutions


def relative_error(predict: Callable[[Tensor], Tensor], x: Tensor, weight: Tensor) -> float:
    """``||predict(x) - y|| / ||y||`` over all of ``x``, ``y = conv2d(x, weight, padding=1)``."""
    err = norm = 0.0
    with torch.no_grad():
        for lo in range(0, len(x), BATCH):
            xb = x[lo : lo + BATCH]
            y = F.conv2d(xb, weight, padding=1)
            err += float((predict(xb) - y).square().sum())
            norm += float(y.square().sum())
    return math.sqrt(err / norm)


def conv_method(kernel_size: int) -> Method:
    """A ``kernel_size`` convolution with bias (padding ``kernel_size // 2``), 3 input channels."""
    p = IN_CHANNELS * kernel_size**2

    def features(x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return F.unfold(x, kernel_size, padding=kernel_size // 2).reshape(b, p, h, w)

    def predict(x: Tensor, sol: list[Tensor], out: int) -> Tensor:
        f = features(x).permute(0, 2, 3, 1)
        return (f @ sol[0][:p] + sol[0][p]).permute(0, 3, 1, 2)

    name = "3x3 conv" if kernel_size == 3 else "1x1 conv"
    return Method(name, features, [list(range(p))], lambda o, out: 0, predict)


def grouped_floor() -> Method:
    """Output ``o`` = ``a_o * x[c(o)] + b_o``, ``c(o) = o // (out / 3)``: the grouped layers' floor."""

    def predict(x: Tensor, sol: list[Tensor], out: int) -> Tensor:
        # Each group's solution is zero outside its own outputs, so the groups' terms add up.
        total = torch.zeros(len(x), out, *x.shape[2:], dtype=x.dtype)
        for c in range(IN_CHANNELS):
            total += x[:, c : c + 1] * sol[c][0].view(1, -1, 1, 1) + sol[c][1].view(1, -1, 1, 1)
        return total

    return Method(
        "1x1 grouped",
        lambda x: x,
        [[c] for c in range(IN_CHANNELS)],
        lambda o, out: o // (out // IN_CHANNELS),
        predict,
    )


def pnn_layer(
    out: int, nmasks: int, level: float, use_act: bool, unique: bool, size: int, seed: int
) -> PerturbConv2d:
    """The library's layer (float64); its masks come from a generator seeded by the
    configuration (not by ``out``: layers of every width share them)."""
    key = seed * 1000 + nmasks * 10 + int(level * 10) + (5 if unique else 0)
    return PerturbConv2d(
        IN_CHANNELS,
        out,
        nmasks,
        input_size=size,
        level=level,
        use_act=use_act,
        unique_masks=unique,
        generator=torch.Generator().manual_seed(key),
        dtype=torch.float64,
    )


def pnn_method(
    nmasks: int, level: float, use_act: bool, unique: bool, size: int, seed: int
) -> Method:
    """A PNN layer's 1x1 weights and bias as least squares on ``act(x + level * masks)``.

    The features are computed from the masks of a library layer; the predictions come from the
    forward pass of a library layer of the target's width with the solution loaded.
    """
    base = pnn_layer(IN_CHANNELS, nmasks, level, use_act, unique, size, seed)
    layers: dict[int, PerturbConv2d] = {}

    def features(x: Tensor) -> Tensor:
        f = perturb(x, base.noise.masks, base.level)
        return base.activation(f) if base.activation is not None else f

    def predict(x: Tensor, sol: list[Tensor], out: int) -> Tensor:
        if out not in layers:
            layers[out] = pnn_layer(out, nmasks, level, use_act, unique, size, seed)
            if not torch.equal(layers[out].noise.masks, base.noise.masks):
                raise RuntimeError("layers of different widths drew different masks")
        load_solution(layers[out], sol)
        result: Tensor = layers[out](x)
        return result

    if nmasks == 1:
        return Method("pnn", features, [list(range(IN_CHANNELS))], lambda o, out: 0, predict)
    groups = [list(range(c * nmasks, (c + 1) * nmasks)) for c in range(IN_CHANNELS)]
    return Method("pnn", features, groups, lambda o, out: o // (out // IN_CHANNELS), predict)


def load_solution(layer: PerturbConv2d, sol: list[Tensor]) -> None:
    """Copy least-squares solutions into the layer's 1x1 ``weight`` and ``bias`` in place."""
    with torch.no_grad():
        if layer.nmasks == 1:
            layer.weight.copy_(sol[0][:-1].T.reshape(layer.weight.shape))
            layer.bias.copy_(sol[0][-1])
        else:
            per = layer.out_channels // IN_CHANNELS
            for c, s in enumerate(sol):
                outs = slice(c * per, (c + 1) * per)
                layer.weight[outs] = s[:-1, outs].T.reshape(per, layer.nmasks, 1, 1)
                layer.bias[outs] = s[-1, outs]


def free_noise(x: Tensor, weight: Tensor) -> Callable[[Tensor], Tensor]:
    """Fit ``y ~ W x + B`` (dense 1x1 ``W``, free map ``B[out, H, W]``); return the predictor.

    ``W`` solves least squares on the data centered pixel by pixel (the minimum-norm ``W = 0``
    for one image); ``B`` is the mean residual at each pixel (for one image: ``y`` itself).
    """
    xm = x.mean(0, keepdim=True)
    ym = F.conv2d(xm, weight, padding=1)
    gram = torch.zeros(IN_CHANNELS, IN_CHANNELS, dtype=torch.float64)
    cross = torch.zeros(IN_CHANNELS, weight.shape[0], dtype=torch.float64)
    for lo in range(0, len(x), BATCH):
        xb = x[lo : lo + BATCH]
        yb = (F.conv2d(xb, weight, padding=1) - ym).permute(0, 2, 3, 1).reshape(-1, weight.shape[0])
        a = (xb - xm).permute(0, 2, 3, 1).reshape(-1, IN_CHANNELS)
        gram += a.T @ a
        cross += a.T @ yb
    w = torch.linalg.lstsq(gram, cross, driver="gelsd").solution.T.reshape(-1, IN_CHANNELS, 1, 1)
    bias_map = ym - F.conv2d(xm, w)
    return lambda xb: F.conv2d(xb, w) + bias_map


# ----------------------------------------------------------------------------- the measurement


def measure(
    targets: dict[str, Tensor],
    fit: Tensor,
    held: Tensor,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every method against every target, fitted on one image and on all of ``fit``.

    Returns one row per target and method: relative errors on the fitting set (``fit``) and on
    ``held`` (``held_out``), for the fit on one image (``one_image``) and on all (``data_set``).
    """
    sets = {"one_image": fit[:1], "data_set": fit}
    weights = list(targets.values())
    size = fit.shape[-1]
    configs: list[tuple[dict[str, Any], Callable[[], Method]]] = [
        ({"method": "3x3 conv"}, lambda: conv_method(3)),
        ({"method": "1x1 conv"}, lambda: conv_method(1)),
        ({"method": "1x1 grouped"}, grouped_floor),
    ]
    for unique in (False, True):
        for use_act in (False, True):
            for level in args.levels:
                for k in args.nmasks:
                    config = {
                        "method": "pnn",
                        "nmasks": k,
                        "level": level,
                        "use_act": use_act,
                        "masks": "unique" if unique else "shared",
                    }
                    configs.append(
                        (
                            config,
                            lambda k=k, level=level, use_act=use_act, unique=unique: pnn_method(
                                k, level, use_act, unique, size, args.seed
                            ),
                        )
                    )
    by_target: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for config, make in configs:
        start = time.perf_counter()
        method = make()
        rows_ = [{"target": t, **config} for t in targets]
        for set_name, xs in sets.items():
            solutions = solve(method, xs, weights)
            for row, weight, sol in zip(rows_, weights, solutions):

                def predict(
                    xb: Tensor,
                    sol: list[Tensor] = sol,
                    out: int = weight.shape[0],
                    method: Method = method,
                ) -> Tensor:
                    return method.predict(xb, sol, out)

                row[set_name] = {
                    "fit": relative_error(predict, xs, weight),
                    "held_out": relative_error(predict, held, weight),
                }
        seconds = round(time.perf_counter() - start, 2)
        for row in rows_:
            row["seconds"] = seconds
            by_target[row["target"]].append(row)
            log(
                f"{row['target']:8s} {describe(row):40s} "
                + "  ".join(f"{s}: {row[s]['fit']:.4f}/{row[s]['held_out']:.4f}" for s in sets)
                + f"  ({seconds:.1f} s, both targets)"
            )
    for target, weight in targets.items():
        row = {"target": target, "method": "free noise"}
        for set_name, xs in sets.items():
            predict_free = free_noise(xs, weight)
            row[set_name] = {
                "fit": relative_error(predict_free, xs, weight),
                "held_out": relative_error(predict_free, held, weight),
            }
        by_target[target].append(row)
    return [row for rows_ in by_target.values() for row in rows_]


def describe(row: dict[str, Any]) -> str:
    """A row's method in words: ``pnn k=64 level=0.5 relu unique``."""
    if row["method"] != "pnn":
        return str(row["method"])
    act = "relu" if row["use_act"] else "linear"
    return f"pnn k={row['nmasks']} level={row['level']} {act} {row['masks']}"


# ----------------------------------------------------------------------------- outputs


def markdown(record: dict[str, Any]) -> str:
    """The tables: one per target, relative errors on the fitting set and held out."""
    lines = []
    for target, info in record["targets"].items():
        lines += [
            f"**{target}** ({info['description']})",
            "",
            "| method | fanout | level | ReLU | masks | one image: fit | one image: held out "
            "| 5,000 images: fit | 5,000 images: held out |".replace(
                "5,000", f"{record['fit_images']:,}"
            ),
            "|---|---:|---:|---|---|---:|---:|---:|---:|",
        ]
        for row in record["results"]:
            if row["target"] != target:
                continue
            pnn = row["method"] == "pnn"
            cells = [
                row["method"],
                str(row["nmasks"]) if pnn else "",
                f"{row['level']:g}" if pnn else "",
                ("yes" if row["use_act"] else "no") if pnn else "",
                row["masks"] if pnn else "",
            ] + [f"{row[s][k]:.4f}" for s in ("one_image", "data_set") for k in ("fit", "held_out")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(record: dict[str, Any], path: Path) -> None:
    """Held-out relative error against fanout: one panel per target and ReLU, unique masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(record["targets"])
    fig, axes = plt.subplots(len(targets), 2, figsize=(10, 4 * len(targets)), squeeze=False)
    colors = {level: f"C{i}" for i, level in enumerate(record["levels"])}
    for r, target in enumerate(targets):
        rows_ = [row for row in record["results"] if row["target"] == target]
        named = {row["method"]: row for row in rows_ if row["method"] != "pnn"}
        for c, use_act in enumerate((False, True)):
            ax = axes[r][c]
            for level in record["levels"]:
                for set_name, style in (("one_image", "--"), ("data_set", "-")):
                    pts = sorted(
                        (row["nmasks"], row[set_name]["held_out"])
                        for row in rows_
                        if row["method"] == "pnn"
                        and row["level"] == level
                        and row["use_act"] == use_act
                        and row["masks"] == "unique"
                    )
                    label = f"PNN level {level:g}, fitted on " + (
                        "1 image" if set_name == "one_image" else f"{record['fit_images']:,} images"
                    )
                    ax.plot(*zip(*pts), style, marker="o", color=colors[level], label=label)
            for name, color in (("1x1 conv", "k"), ("1x1 grouped", "0.5"), ("free noise", "C3")):
                ax.axhline(
                    named[name]["data_set"]["held_out"],
                    color=color,
                    ls=":",
                    label=f"{name}, fitted on {record['fit_images']:,} images",
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(record["nmasks"], [str(k) for k in record["nmasks"]])
            ax.set_xlabel("fanout (nmasks)")
            ax.set_ylabel(f"held-out relative error ({record['test_images']:,} test images)")
            ax.set_title(f"{target} 3x3 conv, PNN {'with' if use_act else 'without'} ReLU")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {value}")
        return value

    return parse


def level_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels must be numbers, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--levels must be positive and finite, got {text}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and validate; every error names the flag."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smallest setting (seconds)")
    parser.add_argument("--fit-images", type=positive_int("--fit-images"))
    parser.add_argument("--test-images", type=positive_int("--test-images"))
    parser.add_argument("--crop", type=positive_int("--crop"), help="center crop (pixels)")
    parser.add_argument("--nmasks", type=positive_int("--nmasks"), nargs="+")
    parser.add_argument("--levels", type=level_value, nargs="+")
    parser.add_argument("--out-channels", type=positive_int("--out-channels"), default=48)
    parser.add_argument("--width", type=positive_int("--width"), default=12)
    parser.add_argument("--train-steps", type=positive_int("--train-steps"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, help="default: $PERTURBNN_DATA_DIR")
    parser.add_argument("--threads", type=positive_int("--threads"), default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for flag, value in (("--out-channels", args.out_channels), ("--width", args.width)):
        if value % IN_CHANNELS:
            parser.error(
                f"{flag} must be a multiple of {IN_CHANNELS} (a PNN layer with nmasks > 1 "
                f"groups its 1x1 convolution by input channel), got {value}"
            )
    if args.crop > 32:
        parser.error(f"--crop must be at most 32 (CIFAR-10 images), got {args.crop}")
    if args.fit_images > 50000:
        parser.error(f"--fit-images must be at most 50000, got {args.fit_images}")
    if args.test_images > 10000:
        parser.error(f"--test-images must be at most 10000, got {args.test_images}")
    stem = "critique-quick" if args.quick else "critique"
    args.json = args.json or ROOT / "benchmarks" / "results" / f"{stem}.json"
    args.markdown = args.markdown or ROOT / "benchmarks" / "results" / f"{stem}.md"
    if args.figure is None and not args.no_figure:
        args.figure = ROOT / (
            "benchmarks/results/critique-quick.png" if args.quick else "docs/img/critique.png"
        )
    if args.no_figure:
        args.figure = None
    return args


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole measurement; returns the JSON record (also written to the paths in ``args``)."""
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    start = time.perf_counter()
    fit, labels, held, held_labels = load_images(
        args.fit_images, args.test_images, args.crop, args.seed, args.data_dir
    )
    log(f"loaded {len(fit)} + {len(held)} images in {time.perf_counter() - start:.1f} s")
    trained, training = trained_conv(
        args.width, args.train_steps, fit, labels, held, held_labels, args.seed
    )
    log(
        f"{time.perf_counter() - start:.1f} s: trained resnet18 (width {args.width}, {args.train_steps} steps): test accuracy "
        f"{training['test_accuracy']:.3f}, stem moved {training['stem_relative_change']:.3f}"
    )
    targets = {"random": random_conv(args.out_channels, args.seed), "trained": trained}
    results = measure(targets, fit, held, args, log)
    wall = time.perf_counter() - start
    record: dict[str, Any] = {
        "command": "python benchmarks/critique.py" + (" --quick" if args.quick else ""),
        "fit_images": args.fit_images,
        "test_images": args.test_images,
        "crop": args.crop,
        "nmasks": args.nmasks,
        "levels": args.levels,
        "seed": args.seed,
        "targets": {
            "random": {
                "description": f"3x3 conv 3 -> {args.out_channels}, nn.Conv2d's initialization",
                "out_channels": args.out_channels,
            },
            "trained": {
                "description": f"stem 3x3 conv 3 -> {args.width} of resnet18 (width {args.width}) "
                f"after {args.train_steps} SGD steps: test accuracy "
                f"{training['test_accuracy']:.1%}, weights moved "
                f"{training['stem_relative_change']:.0%} from their initial values",
                "out_channels": args.width,
                **training,
            },
        },
        "results": results,
        "machine": {
            "wall_seconds": round(wall, 1),
            "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown(record))
    if args.figure is not None:
        figure(record, args.figure)
    log(
        f"wall {wall:.0f} s, load average {load_start[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end; wrote {args.json}, {args.markdown}"
        + (f", {args.figure}" if args.figure else "")
    )
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    record = run(args)
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
