"""The original PNN code's smoothed figure for fixed test predictions over many test orders.

Public through :mod:`perturbnn.metrics` (import it from there): :func:`original_best_of_orders`,
:func:`overstatement_over_orderings` and :class:`OrderingOverstatement`. All values are
fractions in ``[0, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from perturbnn._validation import check_positive_int

__all__ = ["OrderingOverstatement", "original_best_of_orders", "overstatement_over_orderings"]


#: Orderings evaluated together in :func:`original_best_of_orders` (bounds its memory).
_ORDER_CHUNK = 64


def _check_correct(correct: object) -> Tensor:
    """Return ``correct`` as a ``Tensor[epochs, num_samples]`` of ``bool``, or raise."""
    if not isinstance(correct, Tensor):
        raise TypeError(f"correct must be a torch.Tensor, got {type(correct).__name__}")
    if correct.dim() != 2 or correct.shape[0] == 0 or correct.shape[1] == 0:
        raise ValueError(
            "correct must be a non-empty Tensor[epochs, num_samples], got shape "
            f"{tuple(correct.shape)}"
        )
    if correct.dtype == torch.bool:
        return correct
    if correct.is_floating_point() or correct.is_complex():
        raise ValueError(f"correct must hold bool or 0/1 integers, got dtype {correct.dtype}")
    if bool(((correct != 0) & (correct != 1)).any()):
        raise ValueError("correct must hold only 0 and 1 (or bool)")
    return correct.bool()


def _check_smoothing(smoothing: object) -> float:
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
        raise TypeError(
            f"smoothing must be a float in [0, 1), got {type(smoothing).__name__} {smoothing!r}"
        )
    if not (math.isfinite(smoothing) and 0.0 <= smoothing < 1.0):
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return float(smoothing)


def original_best_of_orders(
    correct: Tensor, batch_size: int, orders: Tensor, *, smoothing: float = 0.7
) -> Tensor:
    """The original method's reported figure for the given predictions, once per test order.

    Replays :class:`perturbnn.metrics.OriginalSmoothedAccuracy` as the harness's training
    loop feeds it (one value carried over all epochs, starting at ``0.0`` and never reset; each
    batch's correct count divided by the nominal ``batch_size``, an uneven last batch
    included; the value at the end of each epoch recorded; the best of these reported), for
    each row of ``orders``: the test set visited in that order, the same order every epoch
    (the harness's test loader does not shuffle). The predictions are fixed once an epoch's
    weights are, so only the order of the batches changes: the spread of the result over
    orders is the figure's own noise. With ``orders`` the identity, it equals the run's
    :attr:`perturbnn.metrics.OriginalSmoothedAccuracy.best`. Source: the original PNN code's
    monitor (see :class:`perturbnn.metrics.OriginalSmoothedAccuracy`) and the independent
    reproduction's note that it overstates the exact accuracy.

    Args:
        correct: ``Tensor[epochs, num_samples]`` of ``bool`` (or 0/1 integers): whether each
            test sample was classified correctly after each epoch, in the test loader's order.
        batch_size: the test batch size (the nominal one), positive.
        orders: ``Tensor[num_orders, num_samples]`` of integers, each row a permutation of
            ``range(num_samples)``: row ``r`` visits sample ``orders[r, i]`` ``i``-th.
        smoothing: weight of the previous value, in ``[0, 1)``. Default: ``0.7``.

    Returns:
        Tensor[num_orders] of ``float64``: the best end-of-epoch figure for each order, a
        fraction (on ``correct``'s device).

    Raises:
        TypeError: if ``correct`` or ``orders`` is not a tensor, ``batch_size`` not an int or
            ``smoothing`` not a real number.
        ValueError: on a wrong shape or dtype, a value of ``correct`` other than 0 or 1, a row
            of ``orders`` that is not a permutation, a non-positive ``batch_size`` or a
            ``smoothing`` outside ``[0, 1)``.

    Example::

        >>> correct = torch.tensor([[True, False, True, True]])  # one epoch, four samples
        >>> orders = torch.tensor([[0, 1, 2, 3], [2, 3, 0, 1]])
        >>> [round(v, 4) for v in original_best_of_orders(correct, 2, orders).tolist()]
        [0.405, 0.36]
        >>> [round(v, 4) for v in original_best_of_orders(correct, 3, orders).tolist()]
        [0.24, 0.21]

        The exact accuracy is 0.75; with batches of 3 the last batch (one sample) still
        counts as 3, as in the harness.
    """
    flags = _check_correct(correct)
    check_positive_int("batch_size", batch_size)
    keep = _check_smoothing(smoothing)
    if not isinstance(orders, Tensor):
        raise TypeError(f"orders must be a torch.Tensor, got {type(orders).__name__}")
    epochs, num_samples = flags.shape
    if orders.dim() != 2 or orders.shape[1] != num_samples or orders.shape[0] == 0:
        raise ValueError(
            f"orders must be a non-empty Tensor[num_orders, {num_samples}] (one permutation "
            f"of the {num_samples} samples per row), got shape {tuple(orders.shape)}"
        )
    if orders.is_floating_point() or orders.is_complex() or orders.dtype == torch.bool:
        raise ValueError(f"orders must hold integer indices, got dtype {orders.dtype}")
    orders = orders.to(device=flags.device, dtype=torch.int64)
    expected = torch.arange(num_samples, device=flags.device)
    if not bool((orders.sort(dim=1).values == expected).all()):
        raise ValueError(f"each row of orders must be a permutation of range({num_samples})")
    fresh = 1.0 - keep
    num_batches = -(-num_samples // batch_size)
    padding = num_batches * batch_size - num_samples
    results = []
    for first in range(0, orders.shape[0], _ORDER_CHUNK):
        chunk = orders[first : first + _ORDER_CHUNK]
        visited = flags[:, chunk]  # [epochs, chunk, num_samples]
        if padding:
            visited = torch.nn.functional.pad(visited, (0, padding))  # pads with False
        counts = visited.reshape(epochs, chunk.shape[0], num_batches, batch_size).sum(dim=3)
        batch_acc = counts.to(torch.float64) / batch_size  # [epochs, chunk, num_batches]
        value = torch.zeros(chunk.shape[0], dtype=torch.float64, device=flags.device)
        best = torch.full_like(value, -math.inf)
        for epoch in range(epochs):
            for batch in range(num_batches):
                value = keep * value + fresh * batch_acc[epoch, :, batch]
            best = torch.maximum(best, value)
        results.append(best)
    return torch.cat(results)


@dataclass(frozen=True)
class OrderingOverstatement:
    """The original method's figure against the exact accuracy over many test orders.

    Returned by :func:`overstatement_over_orderings`. Fractions throughout.

    Attributes:
        figures (Tensor[num_orders], float64): the original method's reported figure for each
            random order of the test set.
        actual (float): its figure for the given order (the run's own).
        exact_best (float): the best exact test accuracy over the epochs.
    """

    figures: Tensor
    actual: float
    exact_best: float

    @property
    def mean(self) -> float:
        """Mean overstatement, ``figures.mean() - exact_best``."""
        return float(self.figures.mean()) - self.exact_best

    @property
    def interval(self) -> tuple[float, float]:
        """95% confidence interval of :attr:`mean` (normal approximation: 1.96 standard errors
        over the orders; zero width with a single order)."""
        count = self.figures.numel()
        spread = float(self.figures.std()) if count > 1 else 0.0
        half = 1.96 * spread / math.sqrt(count)
        return self.mean - half, self.mean + half

    @property
    def fraction_above(self) -> float:
        """Fraction of the orders whose figure exceeds :attr:`exact_best`."""
        return float((self.figures > self.exact_best).to(torch.float64).mean())


def overstatement_over_orderings(
    correct: Tensor,
    batch_size: int,
    *,
    orderings: int = 1000,
    smoothing: float = 0.7,
    generator: Optional[torch.Generator] = None,
) -> OrderingOverstatement:
    """How much the original method's figure overstates the exact accuracy for these predictions.

    Draws ``orderings`` random permutations of the test set (``torch.randperm`` with
    ``generator``), computes the original method's reported figure for each
    (:func:`original_best_of_orders`) and for the given order, and the best exact accuracy over
    the epochs. It measures the metric's error for these very predictions: no assumed noise
    model and no fixed number, only the same predictions in other batch orders. The result's
    :attr:`~OrderingOverstatement.interval` is the uncertainty of the mean over the orders
    (it does not include the run-to-run spread of training). Source: the original PNN code's
    monitor (see :class:`perturbnn.metrics.OriginalSmoothedAccuracy`) and the independent
    reproduction's finding that its figure overstates the exact accuracy (90.53% against
    85.91%).

    Args:
        correct: ``Tensor[epochs, num_samples]`` of ``bool`` (or 0/1 integers): whether each
            test sample was classified correctly after each epoch, in the test loader's order.
        batch_size: the test batch size, positive.
        orderings: how many random orders, positive. Default: ``1000``.
        smoothing: weight of the previous value, in ``[0, 1)``. Default: ``0.7``.
        generator: the random number generator (on the CPU) that draws the orders; seed it for
            a repeatable result. Default: the global one.

    Returns:
        OrderingOverstatement: the figures, the given order's figure and the exact best.

    Raises:
        TypeError, ValueError: as :func:`original_best_of_orders`, or if ``orderings`` is not
            a positive int or ``generator`` is not a ``torch.Generator``.

    Example::

        >>> correct = torch.rand(8, 2000, generator=torch.Generator().manual_seed(0)) < 0.4
        >>> study = overstatement_over_orderings(
        ...     correct, 16, orderings=200, generator=torch.Generator().manual_seed(1))
        >>> study.figures.shape, study.mean > 0  # best of 8 noisy figures: above the exact
        (torch.Size([200]), True)
    """
    flags = _check_correct(correct)
    check_positive_int("orderings", orderings)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    num_samples = flags.shape[1]
    identity = torch.arange(num_samples).unsqueeze(0)
    actual = original_best_of_orders(flags, batch_size, identity, smoothing=smoothing)
    orders = torch.stack(
        [torch.randperm(num_samples, generator=generator) for _ in range(orderings)]
    )
    figures = original_best_of_orders(flags, batch_size, orders, smoothing=smoothing)
    exact_best = max(int(row.sum()) / num_samples for row in flags)
    return OrderingOverstatement(figures=figures, actual=float(actual[0]), exact_best=exact_best)
