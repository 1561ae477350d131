"""SeededAugmentation: the augmentation depends on the seed, the epoch and the sample only."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Subset

from perturbnn.repro.data import (
    ArrayImageDataset,
    SeededAugmentation,
    build_transform,
    make_loaders,
    set_loader_epoch,
)


def cifar_like(n: int = 24, seed: int = 0) -> ArrayImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ArrayImageDataset(images, torch.arange(n) % 10, build_transform("CIFAR10", train=True))


@given(seed=st.integers(0, 2**31), epoch=st.integers(0, 500), index=st.integers(0, 23))
def test_an_item_is_a_function_of_seed_epoch_and_index(seed, epoch, index):
    data = SeededAugmentation(cifar_like(), seed)
    data.set_epoch(epoch)
    state = torch.get_rng_state()
    first = data[index][0]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    torch.rand(5)  # whatever the global generator does in between
    assert torch.equal(data[index][0], first)
    again = SeededAugmentation(cifar_like(), seed)
    again.set_epoch(epoch)
    assert torch.equal(again[index][0], first)


def test_epochs_and_seeds_change_the_augmentation():
    data = SeededAugmentation(cifar_like(), 1)
    crops = []
    for epoch in range(6):
        data.set_epoch(epoch)
        crops.append(data[3][0])
    assert len({c.sum().item() for c in crops}) > 1
    other = SeededAugmentation(cifar_like(), 2)
    assert any(
        not torch.equal(other[i][0], SeededAugmentation(cifar_like(), 1)[i][0]) for i in range(8)
    )


def test_workers_give_the_same_batches_as_the_main_process():
    base = Subset(cifar_like(40), list(range(0, 40, 2)))  # Subset has __getitems__
    data = SeededAugmentation(base, 7)
    assert not hasattr(data, "__getitems__")  # batches go through the seeded __getitem__

    def batches(workers: int, epoch: int) -> list[torch.Tensor]:
        loader = DataLoader(
            data, batch_size=6, shuffle=True, num_workers=workers,
            generator=torch.Generator().manual_seed(3),
        )  # fmt: skip
        set_loader_epoch(loader, epoch)
        return [images for images, _ in loader]

    for epoch in (0, 4):
        main, workers = batches(0, epoch), batches(2, epoch)
        assert len(main) == len(workers)
        assert all(torch.equal(a, b) for a, b in zip(main, workers))


def test_attributes_come_from_the_wrapped_set():
    data = SeededAugmentation(cifar_like(), 0)
    assert torch.equal(data.targets, data.dataset.targets)
    assert len(data) == 24


def test_make_loaders_wraps_the_training_set_and_drops_a_last_batch_of_one():
    train, test = make_loaders(cifar_like(65), cifar_like(10), batch_size=64, seed=1)
    assert isinstance(train.dataset, SeededAugmentation) and train.dataset.seed == 1
    assert len(train) == 1 and train.drop_last  # 65 = 64 + 1: BatchNorm cannot train on one
    assert not test.drop_last and len(test) == 1
    train, _ = make_loaders(cifar_like(66), cifar_like(10), batch_size=64, seed=1)
    assert len(train) == 2 and not train.drop_last
