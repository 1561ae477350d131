"""Tests for perturbnn.repro.data: loading, transforms, subsets and loaders. Nothing is downloaded."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import SequentialSampler

from perturbnn.repro.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    MNIST_MEAN,
    MNIST_STD,
    TEST_SUBSET_SEED,
    ArrayImageDataset,
    DataCorruptError,
    DataNotFoundError,
    DatasetInfo,
    build_transform,
    class_balanced_subset,
    dataset_info,
    load_dataset,
    make_loaders,
    resolve_data_dir,
)


def _shared_data_dir() -> Path:
    env = os.environ.get("PERTURBNN_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


DATA_DIR = _shared_data_dir()
needs_cifar = pytest.mark.skipif(
    not (DATA_DIR / "cifar10" / "cifar10_test.npz").is_file(),
    reason=f"CIFAR-10 npz files not found in {DATA_DIR / 'cifar10'} (set PERTURBNN_DATA_DIR)",
)
needs_mnist = pytest.mark.skipif(
    not (DATA_DIR / "mnist" / "mnist_test.npz").is_file(),
    reason=f"MNIST npz files not found in {DATA_DIR / 'mnist'} (set PERTURBNN_DATA_DIR)",
)

# From shared/data/cifar10/README.md and shared/data/mnist/README.md.
CIFAR_FIRST_TRAIN_LABELS = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
CIFAR_FIRST_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def cifar_train() -> ArrayImageDataset:
    if not (DATA_DIR / "cifar10" / "cifar10_train_1.npz").is_file():
        pytest.skip(f"CIFAR-10 npz files not found in {DATA_DIR / 'cifar10'}")
    return load_dataset("CIFAR10", DATA_DIR, train=True)


@pytest.fixture(scope="module")
def cifar_test() -> ArrayImageDataset:
    if not (DATA_DIR / "cifar10" / "cifar10_test.npz").is_file():
        pytest.skip(f"CIFAR-10 npz files not found in {DATA_DIR / 'cifar10'}")
    return load_dataset("cifar10", DATA_DIR, train=False)


@pytest.fixture(scope="module")
def mnist_test() -> ArrayImageDataset:
    if not (DATA_DIR / "mnist" / "mnist_test.npz").is_file():
        pytest.skip(f"MNIST npz files not found in {DATA_DIR / 'mnist'}")
    return load_dataset("mnist", DATA_DIR, train=False)


def fake_array_dataset(n: int, shape: tuple[int, int, int], nclasses: int = 3) -> ArrayImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    return ArrayImageDataset(images, torch.arange(n) % nclasses)


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, images=images, labels=labels)
    return path


# --------------------------------------------------------------------------- names, info, transforms


def test_dataset_info() -> None:
    assert DATASETS[:2] == ("CIFAR10", "CIFAR100") and "MNIST" in DATASETS
    assert dataset_info("CIFAR10") == DatasetInfo("CIFAR10", 3, 32, 10)
    assert dataset_info("MNIST") == DatasetInfo("MNIST", 1, 28, 10)
    assert dataset_info("cifar10") == dataset_info("Cifar-10") == dataset_info("CIFAR10")
    with pytest.raises(ValueError, match=r"'imagenet'.*CIFAR10, CIFAR100, SVHN"):
        dataset_info("imagenet")


def test_test_transform_is_plain_normalization() -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    out = build_transform("CIFAR10", train=False)(image)
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (image.double() / 255 - mean.double()).div(std).float())
    # MNIST: no augmentation even for training.
    digit = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    expected = ((digit.double() / 255 - MNIST_MEAN[0]) / MNIST_STD[0]).float()
    for train in (True, False):
        torch.testing.assert_close(build_transform("mnist", train=train)(digit), expected)


def test_train_transform_is_a_padded_crop_and_flip() -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    transform = build_transform("CIFAR10", train=True)
    padded = F.pad(image, (4, 4, 4, 4))  # zero padding in uint8, before normalization
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    candidates = []
    for top in range(9):
        for left in range(9):
            crop = (padded[:, top : top + 32, left : left + 32].float() / 255 - mean) / std
            candidates += [crop, crop.flip(-1)]
    torch.manual_seed(0)
    outputs = [transform(image) for _ in range(20)]
    for out in outputs:
        assert out.shape == (3, 32, 32)
        assert any(torch.allclose(out, c, atol=1e-5) for c in candidates)
    distinct = {tuple(out.flatten()[:200].tolist()) for out in outputs}
    assert len(distinct) > 5  # random, not a fixed crop


# --------------------------------------------------------------------------- ArrayImageDataset


def test_array_image_dataset_items() -> None:
    images = torch.arange(2 * 1 * 2 * 2, dtype=torch.uint8).view(2, 1, 2, 2) * 10
    ds = ArrayImageDataset(images, [1, 0])
    assert len(ds) == 2
    image, label = ds[1]
    assert label == 0 and isinstance(label, int)
    torch.testing.assert_close(image, images[1].float() / 255)
    assert ds.classes == ["0", "1"]
    assert ds.targets.dtype == torch.int64


@pytest.mark.parametrize(
    ("images", "targets", "match"),
    [
        (torch.zeros(2, 1, 2, 2), [0, 1], "uint8"),
        (torch.zeros(2, 2, 2, dtype=torch.uint8), [0, 1], "uint8 Tensor"),
        (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), [0, 1, 1], "same length, got 2 images and 3"),
        (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), [0.0, 1.0], "integer labels"),
        (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), [0, -1], "non-negative, got -1"),
    ],
)
def test_array_image_dataset_validates(images: torch.Tensor, targets: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArrayImageDataset(images, targets)


# --------------------------------------------------------------------------- real data


@needs_cifar
def test_cifar_train(cifar_train: ArrayImageDataset) -> None:
    assert len(cifar_train) == 50_000
    assert cifar_train.images.shape == (50_000, 3, 32, 32)
    assert cifar_train.images.dtype == torch.uint8
    assert cifar_train.targets[:10].tolist() == CIFAR_FIRST_TRAIN_LABELS
    assert Counter(cifar_train.targets.tolist()) == {c: 5000 for c in range(10)}
    assert cifar_train.classes[6] == "frog"
    image, label = cifar_train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == 6
    # Raw pixel mean matches the README's exact statistic (125.30691805 / 255 for red).
    red_mean = cifar_train.images[:, 0].double().mean().item()
    assert red_mean == pytest.approx(125.30691805, abs=1e-6)


@needs_cifar
def test_cifar_test_normalized(cifar_test: ArrayImageDataset) -> None:
    assert len(cifar_test) == 10_000
    assert cifar_test.targets[:10].tolist() == CIFAR_FIRST_TEST_LABELS
    with np.load(DATA_DIR / "cifar10" / "cifar10_test.npz") as archive:
        raw = archive["images"][[0, 1234, 9999]]  # NHWC
    for image, expected in zip(cifar_test.images[[0, 1234, 9999]], raw):
        assert np.array_equal(image.numpy(), expected.transpose(2, 0, 1))  # CHW
    batch = torch.stack([cifar_test[i][0] for i in range(len(cifar_test))])
    assert batch.shape == (10_000, 3, 32, 32) and batch.dtype == torch.float32
    mean = batch.mean(dim=(0, 2, 3))
    std = batch.std(dim=(0, 2, 3))
    assert mean.abs().max().item() < 0.05
    # Klachko's "std" (0.2023, ...) is smaller than the data's (0.247, ...): std about 1.2.
    assert 1.1 < std.min().item() and std.max().item() < 1.4
    # Deterministic: no augmentation on the test set.
    torch.testing.assert_close(cifar_test[3][0], cifar_test[3][0])


@needs_cifar
def test_data_dir_can_be_the_cifar10_folder() -> None:
    ds = load_dataset("CIFAR10", DATA_DIR / "cifar10", train=False)
    assert ds.targets[:10].tolist() == CIFAR_FIRST_TEST_LABELS


@needs_mnist
def test_mnist(mnist_test: ArrayImageDataset) -> None:
    train = load_dataset("MNIST", DATA_DIR, train=True)
    assert len(train) == 60_000 and len(mnist_test) == 10_000
    assert train.images.shape == (60_000, 1, 28, 28)
    counts = Counter(train.targets.tolist())
    assert [counts[c] for c in range(10)] == MNIST_TRAIN_CLASS_COUNTS
    counts = Counter(mnist_test.targets.tolist())
    assert [counts[c] for c in range(10)] == MNIST_TEST_CLASS_COUNTS
    image, label = mnist_test[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert label == int(mnist_test.targets[0])
    batch = torch.stack([mnist_test[i][0] for i in range(2000)])
    assert abs(batch.mean().item()) < 0.05


@needs_mnist
def test_env_var_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERTURBNN_DATA_DIR", str(DATA_DIR))
    assert resolve_data_dir() == DATA_DIR
    assert len(load_dataset("MNIST", train=False)) == 10_000


def test_resolve_data_dir_without_anything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PERTURBNN_DATA_DIR", raising=False)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(DataNotFoundError, match="PERTURBNN_DATA_DIR is not set"):
        resolve_data_dir()
    (work / "data").mkdir()
    assert resolve_data_dir() == Path("data")
    assert resolve_data_dir(tmp_path) == tmp_path


# --------------------------------------------------------------------------- errors


def test_missing_dir_lists_every_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("CIFAR10", missing, train=True)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    message = str(err)
    expected_paths = [missing / "cifar10" / f"cifar10_train_{i}.npz" for i in range(1, 6)]
    expected_paths += [missing / f"cifar10_train_{i}.npz" for i in range(1, 6)]
    expected_paths.append(missing / "cifar-10-batches-py")
    assert err.paths == expected_paths
    # One line: how to get the data first, then where it was looked for, in short.
    assert "\n" not in message
    how, _, looked = message.partition("Looked for:")
    assert "download=True" in how and "data_dir" in how and "shared" not in message
    assert looked.split(", ") == [  # every place once, each naming its folder
        f" {os.path.join('cifar10', 'cifar10_train_1.npz')} .. cifar10_train_5.npz",
        f"{os.path.join('.', 'cifar10_train_1.npz')} .. cifar10_train_5.npz",
        os.path.join(".", "cifar-10-batches-py"),
    ]


def test_partial_layout_is_not_found(tmp_path: Path) -> None:
    write_npz(
        tmp_path / "mnist" / "mnist_test.npz",
        np.zeros((10_000, 28, 28), np.uint8),
        np.zeros(10_000, np.int64),
    )
    assert len(load_dataset("MNIST", tmp_path, train=False)) == 10_000
    with pytest.raises(
        DataNotFoundError, match=r"MNIST train split not found.*mnist/mnist_train\.npz"
    ):
        load_dataset("MNIST", tmp_path, train=True)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.int64), "must hold 10000 images, got 5"),
        (np.zeros((10_000, 28, 28), np.float32), np.zeros(10_000, np.int64), "dtype uint8"),
        (np.zeros((10_000, 28, 29), np.uint8), np.zeros(10_000, np.int64), r"shape \(N, 28, 28\)"),
        (np.zeros((10_000, 28, 28), np.uint8), np.full(10_000, 10), r"0\.\.9, got values in 10"),
        (np.zeros((10_000, 28, 28), np.uint8), np.zeros(9_999, np.int64), "labels must have shape"),
        (np.zeros((10_000, 28, 28), np.uint8), np.zeros(10_000, np.float32), "integer dtype"),
    ],
)
def test_wrong_arrays_are_corrupt(
    tmp_path: Path, images: np.ndarray, labels: np.ndarray, match: str
) -> None:
    path = write_npz(tmp_path / "mnist" / "mnist_test.npz", images, labels)
    with pytest.raises(DataCorruptError, match=match) as info:
        load_dataset("MNIST", tmp_path, train=False)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and info.value.path == path


@needs_mnist
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file_is_corrupt(tmp_path: Path, keep: float) -> None:
    source = (DATA_DIR / "mnist" / "mnist_test.npz").read_bytes()
    path = tmp_path / "mnist_test.npz"
    path.write_bytes(source[: int(len(source) * keep)])
    with pytest.raises(DataCorruptError) as info:
        load_dataset("mnist", tmp_path, train=False)  # data_dir is the mnist folder itself
    assert str(path) in str(info.value)


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((10_000, 32, 32, 3), np.uint8))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "BadZipFile|EOFError"),
        (b"not a zip file at all", "ValueError"),
        (b"PK\x03\x04garbage", "BadZipFile"),
        (_npy_bytes(), "single array"),
    ],
)
def test_garbage_file_is_corrupt(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "cifar10" / "cifar10_test.npz"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(DataCorruptError, match=rf"cifar10_test\.npz.*({match})"):
        load_dataset("CIFAR10", tmp_path, train=False)


def test_npz_without_labels_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "mnist" / "mnist_test.npz"
    path.parent.mkdir()
    with path.open("wb") as f:
        np.savez(f, images=np.zeros((10_000, 28, 28), np.uint8))
    with pytest.raises(DataCorruptError, match=r"mnist_test\.npz.*labels"):
        load_dataset("MNIST", tmp_path, train=False)


def test_broken_torchvision_folder_is_corrupt(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"junk")
    with pytest.raises(DataCorruptError, match="cifar-10-batches-py"):
        load_dataset("CIFAR10", tmp_path, train=False)


# --------------------------------------------------------------------------- torchvision layouts


def _write_idx(path: Path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@needs_mnist
def test_mnist_torchvision_layout(tmp_path: Path, mnist_test: ArrayImageDataset) -> None:
    with np.load(DATA_DIR / "mnist" / "mnist_test.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "t10k-images-idx3-ubyte", images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    # torchvision checks that all four files exist; only the test split is read here.
    _write_idx(raw / "train-images-idx3-ubyte", images[:1])
    _write_idx(raw / "train-labels-idx1-ubyte", labels[:1])
    for data_dir in (tmp_path, tmp_path / "MNIST"):
        ds = load_dataset("MNIST", data_dir, train=False)
        assert torch.equal(ds.images, mnist_test.images)
        assert torch.equal(ds.targets, mnist_test.targets)
    # The train files hold one image, not 60,000.
    with pytest.raises(DataCorruptError, match="must hold 60000 images, got 1"):
        load_dataset("MNIST", tmp_path, train=True)


@needs_cifar
def test_cifar_torchvision_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cifar_test: ArrayImageDataset
) -> None:
    import torchvision.datasets.cifar as tv_cifar

    # The official files cannot be rebuilt byte for byte, so skip torchvision's MD5 checks.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with np.load(DATA_DIR / "cifar10" / "cifar10_test.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    batch = {
        "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
        "labels": labels.tolist(),
    }
    with (folder / "test_batch").open("wb") as f:
        pickle.dump(batch, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": cifar_test.classes}, f)
    for i in range(1, 6):  # torchvision needs every file of the release to read either split
        (folder / f"data_batch_{i}").write_bytes(b"")
    for data_dir in (tmp_path, folder):
        ds = load_dataset("CIFAR10", data_dir, train=False)
        assert torch.equal(ds.images, cifar_test.images)
        assert torch.equal(ds.targets, cifar_test.targets)


@needs_cifar
def test_npz_layout_wins_over_torchvision(tmp_path: Path) -> None:
    shutil.copy(DATA_DIR / "cifar10" / "cifar10_test.npz", tmp_path / "cifar10_test.npz")
    (tmp_path / "cifar-10-batches-py").mkdir()  # empty: would fail if it were read
    assert len(load_dataset("CIFAR10", tmp_path, train=False)) == 10_000


# --------------------------------------------------------------------------- class_balanced_subset


def test_class_balanced_subset_by_hand() -> None:
    targets = [0, 1, 0, 1, 2, 2, 0]
    # 3 classes, n=4: class 0 gets 2 of its 3 (indices 0, 2, 6), classes 1 and 2 get 1 each.
    for labels in (targets, torch.tensor(targets), np.array(targets)):
        subset = class_balanced_subset(labels, 4, seed=5)
        assert Counter(targets[i] for i in subset) == {0: 2, 1: 1, 2: 1}
    assert sorted(class_balanced_subset(targets, 7, seed=3)) == list(range(7))
    with pytest.raises(ValueError, match="class 1 has 2 examples, fewer than its share of 3"):
        class_balanced_subset([0, 0, 0, 1, 1, 2, 2, 2, 2], 9)
    with pytest.raises(TypeError, match="seed must be an int"):
        class_balanced_subset(targets, 4, seed=1.5)  # type: ignore[arg-type]


def test_class_balanced_subset_seeded_and_shuffled() -> None:
    # 10 classes of 1,000, stored class by class (the worst order for a prefix subset).
    targets = np.repeat(np.arange(10), 1000)
    subset = class_balanced_subset(targets, 2000, seed=0)
    assert subset == class_balanced_subset(targets, 2000, seed=0)  # deterministic per seed
    assert Counter(targets[subset].tolist()) == {c: 200 for c in range(10)}
    other = class_balanced_subset(targets, 2000, seed=1)
    assert set(other) != set(subset) and other != subset  # another seed, other images
    # Shuffled: the last 10% (200 images) holds every class near its 20 (binomial sd ~4.2;
    # 20 +- 13 is over 3 sd). The stored order would give 200 images of class 9 there.
    tail = Counter(targets[subset[-200:]].tolist())
    assert set(tail) == set(range(10))
    assert all(7 <= tail[c] <= 33 for c in range(10)), tail
    # Not sorted: the order is a permutation, not the data set's order.
    assert subset != sorted(subset)


@pytest.mark.parametrize(("n", "error"), [(0, ValueError), (8, ValueError), (2.0, TypeError)])
def test_class_balanced_subset_bad_n(n: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"got .*{n}"):
        class_balanced_subset([0, 1, 0, 1, 2, 2, 0], n)


def test_class_balanced_subset_bad_targets() -> None:
    with pytest.raises(ValueError, match="1-D integer"):
        class_balanced_subset([[0, 1], [1, 0]], 1)
    with pytest.raises(ValueError, match="1-D integer"):
        class_balanced_subset([0.0, 1.0], 1)


@settings(max_examples=80, deadline=None)
@given(
    targets=st.lists(st.integers(0, 5), min_size=1, max_size=80),
    data=st.data(),
)
def test_class_balanced_subset_properties(targets: list[int], data: st.DataObject) -> None:
    n = data.draw(st.integers(1, len(targets)), label="n")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    classes = sorted(set(targets))
    available = {c: targets.count(c) for c in classes}
    shares = {
        c: n // len(classes) + (1 if r < n % len(classes) else 0) for r, c in enumerate(classes)
    }
    if any(available[c] < shares[c] for c in classes):
        with pytest.raises(ValueError, match="fewer than its share"):
            class_balanced_subset(targets, n, seed)
        return
    subset = class_balanced_subset(targets, n, seed)
    assert len(subset) == n
    assert len(set(subset)) == n
    assert all(0 <= i < len(targets) for i in subset)
    counts = Counter(targets[i] for i in subset)
    assert {c: counts[c] for c in classes} == shares
    assert class_balanced_subset(targets, n, seed) == subset


# --------------------------------------------------------------------------- make_loaders


@needs_cifar
def test_make_loaders_with_subsets(
    cifar_train: ArrayImageDataset, cifar_test: ArrayImageDataset
) -> None:
    train_loader, test_loader = make_loaders(
        cifar_train, cifar_test, batch_size=32, train_subset=100, test_subset=50
    )
    assert len(train_loader.dataset) == 100  # type: ignore[arg-type]
    assert len(test_loader.dataset) == 50  # type: ignore[arg-type]
    train_batches = list(train_loader)
    assert [len(y) for _, y in train_batches] == [32, 32, 32, 4]
    images, labels = train_batches[0]
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    all_train_labels = torch.cat([y for _, y in train_batches]).tolist()
    assert Counter(all_train_labels) == {c: 10 for c in range(10)}
    test_labels = torch.cat([y for _, y in test_loader]).tolist()
    assert Counter(test_labels) == {c: 5 for c in range(10)}
    # The test loader keeps the subset's (shuffled) order, drawn with the fixed test seed,
    # whatever the run's seed.
    subset = class_balanced_subset(cifar_test.targets, 50, TEST_SUBSET_SEED)
    assert test_labels == cifar_test.targets[subset].tolist()


def test_make_loaders_shuffle_is_seeded() -> None:
    train, test = fake_array_dataset(40, (3, 8, 8)), fake_array_dataset(10, (3, 8, 8))

    def first_epoch_labels(seed: int) -> list[int]:
        loader, _ = make_loaders(train, test, batch_size=8, seed=seed)
        return torch.cat([y for _, y in loader]).tolist()

    assert first_epoch_labels(1) == first_epoch_labels(1)
    assert first_epoch_labels(1) != first_epoch_labels(2)
    assert first_epoch_labels(1) != train.targets.tolist()  # shuffled
    assert sorted(first_epoch_labels(1)) == sorted(train.targets.tolist())
    loader, _ = make_loaders(train, test, batch_size=8, train_sampler=SequentialSampler(train))
    assert torch.cat([y for _, y in loader]).tolist() == train.targets.tolist()
    loader, test_loader = make_loaders(train, test, batch_size=16, drop_last=True)
    assert [len(y) for _, y in loader] == [16, 16]
    assert [len(y) for _, y in test_loader] == [10]


@needs_mnist
def test_make_loaders_by_name() -> None:
    train_loader, test_loader = make_loaders(
        "mnist", "MNIST", DATA_DIR, batch_size=64, train_subset=200, test_subset=30
    )
    images, _ = next(iter(train_loader))
    assert images.shape == (64, 1, 28, 28)
    assert len(test_loader.dataset) == 30  # type: ignore[arg-type]


def test_make_loaders_rejects_mismatched_shapes_and_bad_batch_size() -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(3, 32, 32\).*\(1, 28, 28\)"):
        make_loaders("CIFAR10", "MNIST", "/nonexistent", batch_size=8)  # fails before loading
    small, large = fake_array_dataset(4, (3, 8, 8)), fake_array_dataset(4, (3, 16, 16))
    with pytest.raises(ValueError, match=r"same shape.*\(3, 8, 8\).*\(3, 16, 16\)"):
        make_loaders(small, large, batch_size=2)
    for batch_size in (0, -4):
        with pytest.raises(
            ValueError, match=f"batch_size must be a positive int, got {batch_size}"
        ):
            make_loaders(small, small, batch_size=batch_size)
    with pytest.raises(ValueError, match="got 5"):
        make_loaders(small, small, batch_size=2, train_subset=5)


def test_make_loaders_workers_keep_the_seeded_order() -> None:
    train, test = fake_array_dataset(24, (1, 4, 4)), fake_array_dataset(6, (1, 4, 4))
    orders = []
    for num_workers in (0, 2):
        loader, test_loader = make_loaders(
            train, test, batch_size=5, num_workers=num_workers, seed=3
        )
        orders.append(torch.cat([y for _, y in loader]).tolist())
        assert torch.cat([y for _, y in test_loader]).tolist() == test.targets.tolist()
    assert orders[0] == orders[1]
    with pytest.raises(ValueError, match="num_workers must be non-negative, got -1"):
        make_loaders(train, test, batch_size=5, num_workers=-1)
