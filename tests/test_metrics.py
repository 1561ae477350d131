"""Tests for perturbnn.metrics: exact accuracy and the original code's smoothed figure."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import scaled
from perturbnn.metrics import (
    ExactAccuracy,
    OriginalSmoothedAccuracy,
    original_best_of_orders,
    overstatement_over_orderings,
)


def one_hot_logits(labels: list[int], num_classes: int = 3) -> torch.Tensor:
    """Logits whose arg-max is ``labels``, with distracting values elsewhere."""
    logits = torch.linspace(-1.0, 0.5, num_classes).repeat(len(labels), 1)
    logits[torch.arange(len(labels)), torch.tensor(labels)] = 2.0
    return logits


# Three batches of 4, 4 and 2 examples; correct counts 3, 4 and 1 (counted by hand).
BATCHES = [
    ([0, 1, 2, 0], [0, 1, 2, 1]),  # 3 of 4
    ([2, 2, 1, 0], [2, 2, 1, 0]),  # 4 of 4
    ([1, 0], [1, 2]),  # 1 of 2
]


# --------------------------------------------------------------------------- ExactAccuracy


def test_exact_accuracy_uneven_last_batch() -> None:
    acc = ExactAccuracy()
    for pred, target in BATCHES:
        acc.update(torch.tensor(pred), torch.tensor(target))
    assert (acc.correct, acc.total) == (8, 10)
    assert acc.compute() == 0.8
    # The mean of the per-batch means would be (0.75 + 1 + 0.5) / 3 = 0.75: not what we report.
    assert acc.compute() != pytest.approx(0.75)


def test_exact_accuracy_logits_equal_labels() -> None:
    from_labels, from_logits = ExactAccuracy(), ExactAccuracy()
    for pred, target in BATCHES:
        from_labels.update(torch.tensor(pred), torch.tensor(target))
        from_logits.update(one_hot_logits(pred), torch.tensor(target))
    assert from_logits.state_dict() == from_labels.state_dict() == {"correct": 8, "total": 10}


def test_exact_accuracy_argmax_over_dim_1() -> None:
    acc = ExactAccuracy()
    # Column arg-max would be [1, 0]; the row arg-max is [1, 1]; targets [1, 1].
    acc.update(torch.tensor([[0.0, 1.0], [0.5, 0.6]]), torch.tensor([1, 1]))
    assert acc.correct == 2


def test_exact_accuracy_reset() -> None:
    acc = ExactAccuracy()
    acc.update(torch.tensor([1, 1]), torch.tensor([1, 0]))
    acc.reset()
    assert (acc.correct, acc.total) == (0, 0)
    with pytest.raises(ValueError, match="total == 0"):
        acc.compute()
    acc.update(torch.tensor([2]), torch.tensor([2]))
    assert acc.compute() == 1.0


def test_exact_accuracy_expected_total() -> None:
    acc = ExactAccuracy()
    acc.update(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 0]))
    assert acc.compute(expected_total=3) == 2 / 3
    with pytest.raises(ValueError, match="expected_total is 4"):
        acc.compute(expected_total=4)


def test_exact_accuracy_state_dict_round_trip() -> None:
    acc = ExactAccuracy()
    for pred, target in BATCHES[:2]:
        acc.update(torch.tensor(pred), torch.tensor(target))
    state = acc.state_dict()
    assert all(type(v) is int for v in state.values())
    restored = ExactAccuracy()
    restored.load_state_dict(state)
    assert (restored.correct, restored.total) == (7, 8)
    # Counting continues from the restored counts.
    pred, target = BATCHES[2]
    restored.update(torch.tensor(pred), torch.tensor(target))
    assert restored.compute() == 0.8
    assert repr(restored) == "ExactAccuracy(correct=8, total=10)"


def test_exact_accuracy_perfect_score_round_trips() -> None:
    """correct == total is valid everywhere: a ``>`` turned into ``>=`` must fail here."""
    acc = ExactAccuracy()
    acc.update(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 1]))
    assert (acc.correct, acc.total) == (4, 4)
    assert acc.compute(expected_total=4) == 1.0
    restored = ExactAccuracy()
    restored.load_state_dict({"correct": 4, "total": 4})
    assert (restored.correct, restored.total) == (4, 4)
    restored.load_state_dict({"correct": 0, "total": 0})  # the empty state is valid too
    assert (restored.correct, restored.total) == (0, 0)
    with pytest.raises(ValueError, match="correct=5, total=4"):
        restored.load_state_dict({"correct": 5, "total": 4})


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ({"correct": 3}, KeyError),
        ({"correct": 3, "total": 2}, ValueError),
        ({"correct": -1, "total": 2}, ValueError),
        ({"correct": 1.0, "total": 2}, TypeError),
    ],
)
def test_exact_accuracy_load_bad_state(state: dict[str, Any], error: type[Exception]) -> None:
    acc = ExactAccuracy()
    with pytest.raises(error):
        acc.load_state_dict(state)
    assert (acc.correct, acc.total) == (0, 0)


@pytest.mark.parametrize(
    ("output", "target", "match"),
    [
        (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long), r"target must be 1-D.*\(4, 1\)"),
        (torch.zeros(4, 3), torch.zeros(4), "target must hold integer"),
        (torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long), r"output must be.*\(4, 3, 2\)"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), r"same batch size.*\(4, 3\).*\(5,\)"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "1-D output must hold integer"),
        (torch.zeros(4, 0), torch.zeros(4, dtype=torch.long), "num_classes >= 1"),
    ],
)
def test_exact_accuracy_bad_shapes(output: torch.Tensor, target: torch.Tensor, match: str) -> None:
    acc = ExactAccuracy()
    with pytest.raises(ValueError, match=match):
        acc.update(output, target)
    assert acc.total == 0


def test_exact_accuracy_not_a_tensor() -> None:
    with pytest.raises(TypeError, match="output"):
        ExactAccuracy().update([0, 1], torch.tensor([0, 1]))  # type: ignore[arg-type]


@settings(max_examples=scaled(60), deadline=None)
@given(
    data=st.data(),
    n=st.integers(min_value=1, max_value=60),
    num_classes=st.integers(min_value=1, max_value=4),
)
def test_exact_accuracy_independent_of_batch_split(
    data: st.DataObject, n: int, num_classes: int
) -> None:
    labels = st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)
    pred = data.draw(labels, label="pred")
    target = data.draw(labels, label="target")
    cuts = (
        sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=8), label="cuts")) if n > 1 else []
    )
    bounds = [0, *cuts, n]
    acc = ExactAccuracy()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        acc.update(torch.tensor(pred[start:stop]), torch.tensor(target[start:stop]))
    expected_correct = sum(p == t for p, t in zip(pred, target))
    assert acc.correct == expected_correct
    assert acc.total == n
    assert acc.compute(expected_total=n) == expected_correct / n


def test_all_reduce_without_distributed_is_a_no_op() -> None:
    assert not dist.is_initialized()
    acc = ExactAccuracy()
    acc.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    acc.all_reduce()
    assert (acc.correct, acc.total) == (1, 2)


def _all_reduce_worker(rank: int, world_size: int, init_file: str, queue: Any) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        acc = ExactAccuracy()
        # Rank 0: 3 of 4 correct; rank 1: 1 of 1 correct. Exact: 4/5, mean of means: 0.875.
        if rank == 0:
            acc.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]))
        else:
            acc.update(torch.tensor([5]), torch.tensor([5]))
        acc.all_reduce()
        queue.put((rank, acc.correct, acc.total, acc.compute()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_all_reduce_sums_counts_over_two_processes(tmp_path: Any) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    init_file = str(tmp_path / "init")
    procs = [
        ctx.Process(target=_all_reduce_worker, args=(rank, 2, init_file, queue)) for rank in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = sorted(queue.get(timeout=5) for _ in procs)
    assert results == [(0, 4, 5, 0.8), (1, 4, 5, 0.8)]


# --------------------------------------------------------------------------- OriginalSmoothedAccuracy


def test_smoothed_hand_computed_sequence() -> None:
    smoothed = OriginalSmoothedAccuracy()
    # Batch accuracies 1.0 then 0.5: 0.3 * 1.0 = 0.3, then 0.7 * 0.3 + 0.3 * 0.5 = 0.36.
    assert smoothed.update(torch.tensor([0, 1]), torch.tensor([0, 1])) == pytest.approx(0.3)
    assert smoothed.update(torch.tensor([0, 0]), torch.tensor([0, 1])) == pytest.approx(0.36)
    assert smoothed.value == pytest.approx(0.36)


def test_smoothed_never_reset_across_epochs() -> None:
    smoothed = OriginalSmoothedAccuracy()
    smoothed.update(torch.tensor([0, 1]), torch.tensor([0, 1]))  # 0.3
    smoothed.update(torch.tensor([0, 0]), torch.tensor([0, 1]))  # 0.36
    assert smoothed.end_epoch() == pytest.approx(0.36)
    # Next epoch starts from 0.36, not 0: one all-wrong batch gives 0.7 * 0.36 = 0.252.
    assert smoothed.update(torch.tensor([1, 1]), torch.tensor([0, 0])) == pytest.approx(0.252)
    assert smoothed.end_epoch() == pytest.approx(0.252)
    assert smoothed.history == pytest.approx([0.36, 0.252])
    assert smoothed.best == pytest.approx(0.36)


def test_smoothed_nominal_batch_size_undercounts_last_batch() -> None:
    nominal = OriginalSmoothedAccuracy(nominal_batch_size=4)
    actual = OriginalSmoothedAccuracy()
    for smoothed in (nominal, actual):
        smoothed.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]))  # 4 of 4
        smoothed.update(torch.tensor([0, 1]), torch.tensor([0, 1]))  # 2 of 2
    # First batch: 0.3. Last batch 2/4 = 0.5 with the nominal divisor, 2/2 = 1.0 without.
    assert nominal.value == pytest.approx(0.7 * 0.3 + 0.3 * 0.5)
    assert actual.value == pytest.approx(0.7 * 0.3 + 0.3 * 1.0)


def test_smoothed_skip_uneven_batches() -> None:
    smoothed = OriginalSmoothedAccuracy(nominal_batch_size=4, skip_uneven_batches=True)
    smoothed.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]))  # 3/4 -> 0.225
    assert smoothed.update(torch.tensor([0, 1]), torch.tensor([1, 0])) == pytest.approx(0.225)


def test_smoothed_differs_from_exact_accuracy() -> None:
    exact, smoothed = ExactAccuracy(), OriginalSmoothedAccuracy(nominal_batch_size=4)
    for pred, target in BATCHES:  # batch accuracies 3/4, 4/4, 1/4 (nominal divisor 4)
        exact.update(torch.tensor(pred), torch.tensor(target))
        smoothed.update(torch.tensor(pred), torch.tensor(target))
    expected = 0.0
    for batch_acc in (0.75, 1.0, 0.25):
        expected = 0.7 * expected + 0.3 * batch_acc
    assert smoothed.end_epoch() == pytest.approx(expected)  # 0.34275
    assert exact.compute() == 0.8
    assert abs(smoothed.best - exact.compute()) > 0.4


@settings(max_examples=scaled(40), deadline=None)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=8),
        min_size=1,
        max_size=10,
    ),
    smoothing=st.floats(min_value=0.0, max_value=0.99),
)
def test_smoothed_matches_reference_loop(
    batches: list[list[tuple[int, int]]], smoothing: float
) -> None:
    smoothed = OriginalSmoothedAccuracy(smoothing=smoothing)
    value = 0.0
    for batch in batches:
        pred, target = zip(*batch)
        batch_acc = sum(p == t for p, t in batch) / len(batch)
        value = smoothing * value + (1 - smoothing) * batch_acc
        assert smoothed.update(torch.tensor(pred), torch.tensor(target)) == pytest.approx(value)


def test_smoothed_best_needs_an_epoch() -> None:
    with pytest.raises(ValueError, match="no epoch recorded"):
        _ = OriginalSmoothedAccuracy().best


def test_smoothed_state_dict_round_trip() -> None:
    smoothed = OriginalSmoothedAccuracy(smoothing=0.5, nominal_batch_size=2)
    smoothed.update(torch.tensor([0, 1]), torch.tensor([0, 1]))  # 0.5
    smoothed.end_epoch()
    smoothed.update(torch.tensor([0]), torch.tensor([0]))  # 0.5 * 0.5 + 0.5 * 0.5 = 0.5
    state = smoothed.state_dict()
    restored = OriginalSmoothedAccuracy(smoothing=0.5, nominal_batch_size=2)
    restored.load_state_dict(state)
    assert restored.value == smoothed.value
    assert restored.history == smoothed.history
    assert restored.history is not smoothed.history
    with pytest.raises(ValueError, match="smoothing"):
        OriginalSmoothedAccuracy(smoothing=0.7, nominal_batch_size=2).load_state_dict(state)


@pytest.mark.parametrize("smoothing", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_smoothed_bad_smoothing(smoothing: float) -> None:
    with pytest.raises(ValueError, match=f"got {smoothing}"):
        OriginalSmoothedAccuracy(smoothing=smoothing)


@pytest.mark.parametrize(("size", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError)])
def test_smoothed_bad_nominal_batch_size(size: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"got .*{size}"):
        OriginalSmoothedAccuracy(nominal_batch_size=size)


def test_smoothed_skip_needs_nominal_batch_size() -> None:
    with pytest.raises(ValueError, match="nominal_batch_size"):
        OriginalSmoothedAccuracy(skip_uneven_batches=True)


def test_smoothed_rejects_batch_larger_than_nominal_and_empty_batch() -> None:
    smoothed = OriginalSmoothedAccuracy(nominal_batch_size=2)
    with pytest.raises(ValueError, match="batch size 3 exceeds nominal_batch_size 2"):
        smoothed.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="empty"):
        OriginalSmoothedAccuracy().update(
            torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        )
    assert smoothed.value == 0.0


# ------------------------------------------- what mutation testing found unchecked (issue 15)


def test_error_messages_name_the_argument_and_the_value() -> None:
    acc = ExactAccuracy()
    with pytest.raises(ValueError, match=r"^no example counted yet \(total == 0\); call update"):
        acc.compute()
    acc.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    with pytest.raises(
        ValueError, match=r"^counted 2 examples but expected_total is 3; a batch was dropped"
    ):
        acc.compute(expected_total=3)
    with pytest.raises(TypeError, match=r"^output must be a torch.Tensor, got list$"):
        acc.update([1, 0], torch.tensor([1, 1]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^target must be a torch.Tensor, got tuple$"):
        acc.update(torch.tensor([1, 0]), (1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^correct must be a non-negative int, got float 1.0$"):
        acc.load_state_dict({"correct": 1.0, "total": 2})
    with pytest.raises(ValueError, match=r"^total must be a non-negative int, got -1$"):
        acc.load_state_dict({"correct": 0, "total": -1})
    with pytest.raises(TypeError, match=r"^smoothing must be a float in \[0, 1\), got bool True"):
        OriginalSmoothedAccuracy(smoothing=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^nominal_batch_size must be a positive int, got 0"):
        OriginalSmoothedAccuracy(nominal_batch_size=0)
    with pytest.raises(TypeError, match=r"^skip_uneven_batches must be a bool, got int 1"):
        OriginalSmoothedAccuracy(skip_uneven_batches=1)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"^skip_uneven_batches=True needs nominal_batch_size, got nominal_batch_size=None",
    ):
        OriginalSmoothedAccuracy(skip_uneven_batches=True)
    with pytest.raises(ValueError, match=r"^the batch is empty \(batch_size 0\)"):
        OriginalSmoothedAccuracy().update(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_all_reduce_in_process_single_rank(tmp_path: Any, caplog: Any) -> None:
    """One gloo rank in this process: the counts survive the all-reduce, as int, and it logs."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        acc = ExactAccuracy()
        acc.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]))
        with caplog.at_level("DEBUG", logger="perturbnn.metrics"):
            acc.all_reduce()
        assert (acc.correct, acc.total) == (3, 4)
        assert type(acc.correct) is int and type(acc.total) is int
        messages = [r.getMessage() for r in caplog.records if r.name == "perturbnn.metrics"]
        assert messages == [
            "all-reduced accuracy counts over gloo: ExactAccuracy(correct=3, total=4)"
        ]
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    ("output", "target", "message"),
    [
        (torch.tensor([1, 0]), torch.tensor([True, False]), r"^target must hold integer class "
         r"labels, got dtype torch.bool$"),
        (torch.tensor([True, False]), torch.tensor([1, 0]), r"^1-D output must hold integer "
         r"predicted labels, got dtype torch.bool; pass logits as Tensor\[batch_size, num_cl"),
        (torch.zeros(2, 0), torch.tensor([1, 0]), r"^output logits Tensor\[batch_size, "
         r"num_classes\] must have num_classes >= 1, got shape \(2, 0\)$"),
        (torch.zeros(2, 3, 1), torch.tensor([1, 0]), r"^output must be logits Tensor\[batch_size,"
         r" num_classes\] or labels Tensor\[batch_size\], got 3-D with shape \(2, 3, 1\)$"),
    ],
)  # fmt: skip
def test_exact_accuracy_shape_and_dtype_messages(
    output: torch.Tensor, target: torch.Tensor, message: str
) -> None:
    acc = ExactAccuracy()
    acc.update(torch.tensor([1, 0]), torch.tensor([1, 1]))  # the valid call first
    with pytest.raises(ValueError, match=message):
        acc.update(output, target)
    assert (acc.correct, acc.total) == (1, 2)  # nothing counted by the refused call


def test_smoothed_repr_shows_the_options_and_state() -> None:
    smoothed = OriginalSmoothedAccuracy()
    assert repr(smoothed) == "OriginalSmoothedAccuracy(smoothing=0.7, value=0.0000, epochs=0)"
    smoothed = OriginalSmoothedAccuracy(
        smoothing=0.5, nominal_batch_size=4, skip_uneven_batches=True
    )
    smoothed.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]))  # 3/4: 0.5 * 0.75
    smoothed.end_epoch()
    assert repr(smoothed) == (
        "OriginalSmoothedAccuracy(smoothing=0.5, nominal_batch_size=4, "
        "skip_uneven_batches=True, value=0.3750, epochs=1)"
    )


# ------------------------------------------------------- the original figure over test orders


def literal_best(correct: torch.Tensor, batch_size: int, order: list[int]) -> float:
    """The original figure of one order, through OriginalSmoothedAccuracy batch by batch, as
    fit() feeds it (nominal batch size, never reset)."""
    smoothed = OriginalSmoothedAccuracy(nominal_batch_size=batch_size)
    for epoch in correct.tolist():
        visited = [epoch[i] for i in order]
        for start in range(0, len(visited), batch_size):
            hits = visited[start : start + batch_size]
            # predicted label 1 where correct, 0 where wrong, against targets all 1
            smoothed.update(
                torch.tensor([int(h) for h in hits]), torch.ones(len(hits), dtype=torch.long)
            )
        smoothed.end_epoch()
    return smoothed.best


predictions = st.integers(1, 4).flatmap(
    lambda epochs: st.integers(1, 40).flatmap(
        lambda n: st.lists(
            st.lists(st.booleans(), min_size=n, max_size=n), min_size=epochs, max_size=epochs
        )
    )
)


@settings(max_examples=scaled(40), deadline=None)
@given(rows=predictions, batch_size=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_original_best_of_orders_equals_the_literal_loop(
    rows: list[list[bool]], batch_size: int, seed: int
) -> None:
    correct = torch.tensor(rows)
    n = correct.shape[1]
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    orders = torch.stack([torch.arange(n), shuffled])
    got = original_best_of_orders(correct, batch_size, orders).tolist()
    assert got[0] == literal_best(correct, batch_size, list(range(n)))  # bit for bit
    assert got[1] == literal_best(correct, batch_size, shuffled.tolist())


def test_original_best_of_orders_does_not_depend_on_the_chunking() -> None:
    gen = torch.Generator().manual_seed(3)
    correct = torch.rand(3, 50, generator=gen) < 0.5
    orders = torch.stack([torch.randperm(50, generator=gen) for _ in range(150)])  # > 2 chunks
    together = original_best_of_orders(correct, 7, orders)
    alone = torch.cat([original_best_of_orders(correct, 7, row[None]) for row in orders])
    assert torch.equal(together, alone)
    assert together.unique().numel() > 1  # the order matters


def test_original_best_of_orders_by_hand() -> None:
    # Epoch 1 in batches of 2: [T, F] 0.5 -> 0.15; [T, T] 1.0 -> 0.405.
    # Epoch 2 (all wrong) decays it: 0.2835, 0.19845. Best: 0.405.
    correct = torch.tensor([[True, False, True, True], [False] * 4])
    got = original_best_of_orders(correct, 2, torch.tensor([[0, 1, 2, 3], [2, 3, 0, 1]]))
    # Order 2: [T, T] 0.3; [T, F] 0.21 + 0.15 = 0.36.
    assert got.tolist() == pytest.approx([0.405, 0.36])


@settings(max_examples=scaled(20), deadline=None)
@given(rows=predictions, batch_size=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_overstatement_is_deterministic_under_a_seeded_generator(
    rows: list[list[bool]], batch_size: int, seed: int
) -> None:
    correct = torch.tensor(rows)

    def study() -> Any:
        return overstatement_over_orderings(
            correct, batch_size, orderings=30, generator=torch.Generator().manual_seed(seed)
        )

    first, second = study(), study()
    assert torch.equal(first.figures, second.figures)
    assert first.figures.shape == (30,)
    n = correct.shape[1]
    assert first.actual == literal_best(correct, batch_size, list(range(n)))
    assert first.exact_best == max(sum(row) / n for row in rows)


def test_overstatement_summary_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    correct = torch.rand(8, 400, generator=gen) < 0.4
    study = overstatement_over_orderings(correct, 16, orderings=200, generator=gen)
    gaps = study.figures - study.exact_best
    assert study.mean == pytest.approx(float(gaps.mean()))
    low, high = study.interval
    half = 1.96 * float(gaps.std()) / 200**0.5
    assert (low, high) == pytest.approx((study.mean - half, study.mean + half))
    assert study.fraction_above == float((gaps > 0).double().mean())
    # Best of eight noisy figures of the same accuracy: above the exact best, beyond the noise.
    assert low > 0 and study.fraction_above > 0.5


def test_overstatement_of_perfect_predictions_is_the_uneven_batch_only() -> None:
    # All correct: every batch is 1.0 but the last (4 of 16 counted as 16), in every order.
    correct = torch.ones(2, 36, dtype=torch.bool)
    study = overstatement_over_orderings(correct, 16, orderings=5)
    assert study.figures.unique().numel() == 1 and study.interval[0] == study.interval[1]
    assert study.actual == literal_best(correct, 16, list(range(36))) < 1.0 == study.exact_best
    assert study.fraction_above == 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"correct": [[True]]}, TypeError, "correct must be a torch.Tensor"),
        ({"correct": torch.ones(4, dtype=torch.bool)}, ValueError, "correct must be a non-empty"),
        ({"correct": torch.ones(1, 4)}, ValueError, "correct must hold bool"),
        ({"correct": torch.full((1, 4), 2)}, ValueError, "only 0 and 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
        ({"orders": [[0, 1, 2, 3]]}, TypeError, "orders must be a torch.Tensor"),
        ({"orders": torch.tensor([[0, 1, 2]])}, ValueError, r"Tensor\[num_orders, 4\]"),
        ({"orders": torch.tensor([[0, 1, 1, 3]])}, ValueError, "permutation of range"),
        ({"orders": torch.zeros(1, 4)}, ValueError, "integer indices"),
        ({"smoothing": 1.0}, ValueError, r"smoothing must be in \[0, 1\), got 1.0"),
    ],
)
def test_original_best_of_orders_bad_input(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {
        "correct": torch.ones(1, 4, dtype=torch.bool),
        "batch_size": 2,
        "orders": torch.arange(4)[None],
    }
    args.update(kwargs)
    smoothing = args.pop("smoothing", 0.7)
    with pytest.raises(error, match=match):
        original_best_of_orders(
            args["correct"], args["batch_size"], args["orders"], smoothing=smoothing
        )


def test_overstatement_bad_input() -> None:
    correct = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="orderings must be a positive int, got 0"):
        overstatement_over_orderings(correct, 2, orderings=0)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        overstatement_over_orderings(correct, 2, generator=3)  # type: ignore[arg-type]
