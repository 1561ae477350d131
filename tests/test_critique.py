"""benchmarks/critique.py at its smallest setting: the properties its table rests on.

The script fits PNN layers, a 1x1 convolution and a free-noise map to a 3x3 convolution's output
by least squares; these tests recompute what they can independently and check the orderings that
hold by construction (a larger family never fits worse on its own fitting set).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from perturbnn.repro.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "critique.py"
SMALL = ["--quick", "--fit-images", "100", "--test-images", "100", "--train-steps", "1"]
SMALL += ["--nmasks", "1", "64", "--levels", "0.5"]
TINY = ["--fit-images", "20", "--test-images", "20", "--nmasks", "64"]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("critique", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["critique"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def critique() -> ModuleType:
    return load_script()


def run_small(critique: ModuleType, data_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    args = critique.parse_args(
        [
            *SMALL,
            *("--data-dir", str(data_dir), "--json", str(out / "c.json")),
            *("--markdown", str(out / "c.md"), "--figure", str(out / "c.png")),
            *extra,
        ]
    )
    critique.run(args, log=lambda line: None)
    record: dict[str, Any] = json.loads((out / "c.json").read_text())
    return record


@pytest.fixture(scope="module")
def record(critique: ModuleType, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return run_small(critique, data_dir, tmp_path_factory.mktemp("critique"))


def rows(record: dict[str, Any], target: str, **match: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in record["results"]
        if r["target"] == target and all(r.get(k) == v for k, v in match.items())
    ]


def one(record: dict[str, Any], target: str, **match: Any) -> dict[str, Any]:
    (row,) = rows(record, target, **match)
    return row


def test_outputs_written(record: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    assert set(record["targets"]) == {"random", "trained"}
    expected = 2 * (3 + 1 + 2 * 2 * len(record["levels"]) * len(record["nmasks"]))
    assert len(record["results"]) == expected
    for row in record["results"]:
        for fit_set in ("one_image", "data_set"):
            assert all(math.isfinite(row[fit_set][k]) for k in ("fit", "held_out"))


@pytest.mark.parametrize("target", ["random", "trained"])
def test_enough_masks_fit_one_image_exactly(record: dict[str, Any], target: str) -> None:
    # --quick crops to 8x8: 64 masks and a bias are 65 weights per output for 64 pixels.
    assert record["crop"] == 8
    for row in rows(record, target, method="pnn", nmasks=64, use_act=False):
        assert row["one_image"]["fit"] < 1e-6, row
        # ... and the exact fit of one image does not carry over to other images.
        assert row["one_image"]["held_out"] > 0.3, row
    assert one(record, target, method="free noise")["one_image"]["fit"] < 1e-9
    assert one(record, target, method="3x3 conv")["data_set"]["held_out"] < 1e-6


@pytest.mark.parametrize("target", ["random", "trained"])
def test_held_out_not_below_fit_by_much(record: dict[str, Any], target: str) -> None:
    for row in rows(record, target):
        if row["method"] == "3x3 conv":
            continue
        assert row["data_set"]["held_out"] > row["data_set"]["fit"] - 0.05, row
        assert row["one_image"]["held_out"] > row["one_image"]["fit"] - 0.05, row


@pytest.mark.parametrize("target", ["random", "trained"])
def test_larger_families_fit_better(record: dict[str, Any], target: str) -> None:
    """Free noise (1x1 conv + any map) contains the 1x1 conv and every PNN layer without ReLU."""
    tol = 1e-9
    free = one(record, target, method="free noise")
    dense = one(record, target, method="1x1 conv")
    grouped = one(record, target, method="1x1 grouped")
    for fit_set in ("one_image", "data_set"):
        assert free[fit_set]["fit"] <= dense[fit_set]["fit"] + tol
        assert dense[fit_set]["fit"] <= grouped[fit_set]["fit"] + tol
        for row in rows(record, target, method="pnn", use_act=False):
            assert free[fit_set]["fit"] <= row[fit_set]["fit"] + tol, row


def test_floor_matches_an_independent_lstsq(
    critique: ModuleType, record: dict[str, Any], data_dir: Path
) -> None:
    fit, _, held, _ = critique.load_images(
        record["fit_images"], record["test_images"], record["crop"], record["seed"], data_dir
    )
    # The images are the harness's normalized CIFAR-10 pixels, center-cropped.
    train = load_dataset("cifar10", data_dir, train=True, transform=None)
    index = torch.randperm(50000, generator=torch.Generator().manual_seed(record["seed"]))[0]
    raw = train.images[int(index)].double() / 255
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(3, 1, 1)
    lo = (32 - record["crop"]) // 2
    expected = ((raw - mean) / std)[:, lo : lo + record["crop"], lo : lo + record["crop"]]
    torch.testing.assert_close(fit[0], expected, rtol=1e-6, atol=1e-6)

    weight = critique.random_conv(record["targets"]["random"]["out_channels"], record["seed"])

    def design(x: torch.Tensor) -> torch.Tensor:
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 3)
        return torch.cat([pixels, torch.ones(len(pixels), 1, dtype=x.dtype)], dim=1)

    def target(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, padding=1).permute(0, 2, 3, 1).reshape(-1, weight.shape[0])

    solution = torch.linalg.lstsq(design(fit), target(fit)).solution
    floor = one(record, "random", method="1x1 conv")["data_set"]
    for x, key in ((fit, "fit"), (held, "held_out")):
        error = (design(x) @ solution - target(x)).norm() / target(x).norm()
        assert floor[key] == pytest.approx(float(error), rel=1e-7)


def test_deterministic(critique: ModuleType, data_dir: Path, tmp_path: Path) -> None:
    first = run_small(critique, data_dir, tmp_path / "a", *TINY)
    again = run_small(critique, data_dir, tmp_path / "b", *TINY)

    def strip(record: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in record["results"]]

    assert strip(first) == strip(again)
    assert first["targets"] == again["targets"]
    assert (tmp_path / "a" / "c.png").stat().st_size > 0
    assert "| 1x1 conv |" in (tmp_path / "a" / "c.md").read_text()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--out-channels", "16"], "--out-channels"),
        (["--width", "0"], "--width"),
        (["--levels", "nan"], "--levels"),
        (["--nmasks", "two"], "--nmasks"),
        (["--crop", "33"], "--crop"),
        (["--fit-images", "50001"], "--fit-images"),
    ],
)
def test_bad_flags_are_named(
    critique: ModuleType, argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        critique.parse_args(argv)
    assert excinfo.value.code == 2
    assert flag in capsys.readouterr().err
