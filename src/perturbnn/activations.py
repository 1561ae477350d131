"""Activation functions by name, spelled as in Klachko's PNN reproduction (its ``--act``).

Source: Klachko's ``--act`` option (relu, lrelu, prelu, rrelu, elu, selu, tanh, sigmoid).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from perturbnn._validation import check_choice

__all__ = ["ACTIVATIONS", "make_activation"]

#: Name -> factory of a fresh activation module. ``prelu`` has one learnable slope.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "lrelu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "rrelu": nn.RReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    """Return a new activation module for ``name``.

    Args:
        name: one of ``relu``, ``lrelu``, ``prelu``, ``rrelu``, ``elu``, ``selu``, ``tanh``,
            ``sigmoid``.

    Returns:
        A fresh, not in-place ``nn.Module`` (``prelu`` carries one learnable parameter).

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if ``name`` is unknown; the message lists the valid names.

    Example::

        >>> make_activation("lrelu")
        LeakyReLU(negative_slope=0.01)
    """
    return ACTIVATIONS[check_choice("act", name, ACTIVATIONS)]()
