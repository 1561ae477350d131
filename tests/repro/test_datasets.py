"""Klachko's other data sets (CIFAR-100, SVHN, STL-10, FashionMNIST, ImageFolder), end to end.

Only CIFAR-10 and MNIST exist offline, so each test writes a few images in the official
torchvision layout itself (pickles, ``.mat``, ``.bin``, IDX files, class folders of PNGs). The
official files' MD5 checksums cannot match such files: the tests that read them replace
torchvision's ``check_integrity`` by a plain existence check (:func:`accept_any_checksum`), and
one test shows that without it torchvision refuses them, with one clear error line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import struct
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import pytest
import torch

from perturbnn import build_model, count_parameters
from perturbnn.repro.data import (
    DATASETS,
    DataCorruptError,
    DataNotFoundError,
    build_transform,
    dataset_info,
    load_dataset,
)
from perturbnn.repro.optim import LR_SCHEDULES

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "cifar10_repro.py"


# ----------------------------------------------------------------- writers (official layouts)


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _labels(n: int, nclasses: int) -> np.ndarray:
    return np.arange(n) % nclasses


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 20) -> dict[bool, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    images = {}
    for name, n, train in (("train", n_train, True), ("test", n_test, False)):
        hwc = _images(n, (32, 32, 3), seed=n)
        images[train] = hwc
        rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # the official row layout
        entry = {"data": rows, "fine_labels": _labels(n, 100).tolist(), "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"fine_label_names": [f"class{i:03d}" for i in range(100)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return images


def write_svhn(root: Path, n_train: int = 30, n_test: int = 20) -> dict[bool, np.ndarray]:
    from scipy.io import savemat

    folder = root / "svhn"
    folder.mkdir(parents=True)
    images = {}
    for name, n, train in (("train", n_train, True), ("test", n_test, False)):
        chw = _images(n, (3, 32, 32), seed=n + 1)
        images[train] = chw
        labels = _labels(n, 10)
        labels[labels == 0] = 10  # SVHN stores digit 0 as label 10
        x = chw.transpose(2, 3, 1, 0)  # (32, 32, 3, N): H, W, C, N as in the .mat files
        savemat(str(folder / f"{name}_32x32.mat"), {"X": x, "y": labels.reshape(-1, 1)})
    return images


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10) -> dict[bool, np.ndarray]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    images = {}
    for name, n, train in (("train", n_train, True), ("test", n_test, False)):
        chw = _images(n, (3, 96, 96), seed=n + 2)
        images[train] = chw
        # The binary files are column-major per channel: store each image transposed.
        (folder / f"{name}_X.bin").write_bytes(chw.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{name}_y.bin").write_bytes((_labels(n, 10) + 1).astype(np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(b"")
    (folder / "class_names.txt").write_text(
        "\n".join("airplane bird car cat deer dog horse monkey ship truck".split())
    )
    return images


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(root: Path, n_train: int = 40, n_test: int = 20) -> dict[bool, np.ndarray]:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = {}
    for prefix, n, train in (("train", n_train, True), ("t10k", n_test, False)):
        hw = _images(n, (28, 28), seed=n + 3)
        images[train] = hw
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(hw))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(_labels(n, 10)))
    return images


def write_image_folder(root: Path, per_class: int = 6, classes: int = 3) -> dict[bool, None]:
    from PIL import Image

    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = _images(1, (40, 48, 3), seed=100 * c + i)[0]
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return {True: None, False: None}


WRITERS: dict[str, Callable[[Path], Any]] = {
    "CIFAR100": write_cifar100,
    "SVHN": write_svhn,
    "STL10": write_stl10,
    "FashionMNIST": write_fashion_mnist,
    "ImageFolder": write_image_folder,
}


@pytest.fixture
def accept_any_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the official files' MD5; small test files only need to exist."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10
    import torchvision.datasets.svhn as svhn

    def exists(fpath: Any, md5: Any = None) -> bool:
        return os.path.isfile(fpath)

    for module in (cifar, svhn, stl10):
        monkeypatch.setattr(module, "check_integrity", exists)


# ----------------------------------------------------------------- catalog


def test_catalog_lists_the_seeds_data_sets_with_class_counts_and_schedules() -> None:
    assert set(DATASETS) == {
        "CIFAR10", "CIFAR100", "SVHN", "STL10", "MNIST", "FashionMNIST", "ImageFolder",
    }  # fmt: skip
    expected = {
        "CIFAR10": (3, 32, 10), "CIFAR100": (3, 32, 100), "SVHN": (3, 32, 10),
        "STL10": (3, 96, 10), "MNIST": (1, 28, 10), "FashionMNIST": (1, 28, 10),
        "ImageFolder": (3, 224, None),
    }  # fmt: skip
    for name, shape in expected.items():
        info = dataset_info(name)
        assert (info.in_channels, info.input_size, info.nclasses) == shape
        assert name in LR_SCHEDULES
    assert dataset_info("fashion-mnist").name == "FashionMNIST"


def test_transforms_follow_the_seed() -> None:
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    for name in ("SVHN", "STL10"):  # mean and std 0.5: [0, 255] -> [-1, 1]
        size = dataset_info(name).input_size
        image = torch.full((3, size, size), 255, dtype=torch.uint8)
        out = build_transform(name, train=True)(image)
        assert out.shape == (3, size, size) and torch.all(out == 1.0)
    cifar10 = build_transform("CIFAR10", train=False)(white)
    assert torch.equal(build_transform("CIFAR100", train=False)(white), cifar10)
    torch.manual_seed(0)
    a = build_transform("CIFAR100", train=True)(white.clone().index_fill_(2, torch.tensor([0]), 0))
    assert a.shape == (3, 32, 32)  # random crop with padding and flip, as CIFAR-10
    gray = torch.full((1, 28, 28), 128, dtype=torch.uint8)
    assert torch.equal(
        build_transform("FashionMNIST", train=True)(gray),
        build_transform("MNIST", train=True)(gray),
    )
    from PIL import Image

    picture = Image.fromarray(np.full((300, 400, 3), 255, dtype=np.uint8))
    for train in (True, False):
        out = build_transform("ImageFolder", train=train)(picture)
        assert out.shape == (3, 224, 224)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        torch.testing.assert_close(out, ((1 - mean) / std).expand(3, 224, 224))


# ----------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["CIFAR100", "SVHN", "STL10", "FashionMNIST"])
def test_load_reads_the_official_layout_exactly(
    name: str, tmp_path: Path, accept_any_checksum: None
) -> None:
    images = WRITERS[name](tmp_path)
    info = dataset_info(name)
    for train in (True, False):
        data = load_dataset(name, tmp_path, train=train)
        expected = torch.from_numpy(images[train])
        expected = expected.unsqueeze(1) if expected.dim() == 3 else expected
        if expected.shape[-1] == 3:  # NHWC -> NCHW
            expected = expected.permute(0, 3, 1, 2)
        assert torch.equal(data.images, expected)  # type: ignore[union-attr]
        n = expected.shape[0]
        assert data.targets.tolist() == _labels(n, info.nclasses or 0).tolist()  # type: ignore[union-attr]
        assert data[0][0].shape == (info.in_channels, info.input_size, info.input_size)
    if name == "CIFAR100":
        assert load_dataset(name, tmp_path, train=True).classes[7] == "class007"  # type: ignore[union-attr]


def test_image_folder_reads_class_subfolders(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    train = load_dataset("ImageFolder", tmp_path, train=True)
    test = load_dataset("ImageFolder", tmp_path, train=False)
    assert len(train) == 18 and len(test) == 6  # type: ignore[arg-type]
    assert train.classes == ["class_0", "class_1", "class_2"]  # type: ignore[attr-defined]
    image, label = train[7]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 1


def test_checksums_are_checked_without_the_patch(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    with pytest.raises(DataCorruptError, match="cifar-100-python"):
        load_dataset("CIFAR100", tmp_path, train=True)


@pytest.mark.parametrize("name", ["CIFAR100", "SVHN", "STL10", "FashionMNIST", "ImageFolder"])
def test_missing_data_set_names_what_was_looked_at(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, tmp_path, train=True)
    assert str(tmp_path) in str(info.value)
    assert info.value.paths and "\n" not in str(info.value)
    downloadable = name != "ImageFolder"
    assert ("download=True" in str(info.value)) == downloadable


# ----------------------------------------------------------------- end to end


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cifar10_repro_datasets", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CIFAR100", "SVHN", "STL10", "FashionMNIST", "ImageFolder"])
def test_one_epoch_through_the_example(
    name: str, tmp_path: Path, accept_any_checksum: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    WRITERS[name](data)
    out = tmp_path / "run"
    status = _load_script().main(
        [
            "--net-type", "lenet", "--nfilters", "4", "--nepochs", "1", "--batch-size", "8",
            "--dataset-train", name, "--dataset-test", name, "--data-dir", str(data),
            "--out-dir", str(out), "--no-progress", "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["config"]["dataset_train"] == name
    info = dataset_info(name)
    nclasses = info.nclasses if info.nclasses is not None else 3  # three class folders
    model = build_model(
        "lenet", nfilters=4, nclasses=nclasses, in_channels=info.in_channels,
        input_size=info.input_size,
    )  # fmt: skip
    assert summary["parameters"] == count_parameters(model)  # the head has nclasses outputs
    assert summary["history"]["lr"] == [1e-3]  # Klachko's default rate in epoch 1


@pytest.mark.parametrize("name", ["CIFAR100", "ImageFolder"])
def test_missing_data_set_is_one_clear_error_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nodata"
    status = _load_script().main(
        [
            "--net-type", "lenet", "--nfilters", "4", "--nepochs", "1", "--dataset-train", name,
            "--dataset-test", name, "--data-dir", str(missing), "--out-dir",
            str(tmp_path / "run"), "--no-progress",
        ]
    )  # fmt: skip
    assert status == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0] and "--data-dir" in errors[0]
    assert not (tmp_path / "run").exists()
