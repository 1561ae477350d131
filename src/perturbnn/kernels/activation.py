"""Which activations the fast PNN paths may apply piece by piece, and how.

The fast paths with an activation (:mod:`perturbnn.kernels.chunked`, :mod:`perturbnn.kernels.compiled`)
never build the whole perturbed tensor: they apply the activation to slices of it, and apply it
again in the backward pass. That is exact only for a deterministic, element-wise activation, so
this module recognises those (by exact type, so that a subclass with another ``forward`` is not
mistaken for its parent) and returns a pure function equal to the activation. Anything else
(``RReLU`` in training mode, which draws random slopes; ``PReLU`` with one slope per channel; an
unknown callable) returns ``None`` and the caller uses the literal grouped formulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Pointwise", "pointwise_activation"]


@dataclass(frozen=True)
class Pointwise:
    """A deterministic element-wise activation as a pure function.

    Attributes:
        fn: ``fn(t, *params)`` equals the activation applied to ``t``, for a tensor of any shape.
        params: the activation's learnable tensors (the ``PReLU`` slope), passed to ``fn`` so that
            a custom backward can return their gradients.
        inplace: ``inplace(t)`` replaces ``t`` by ``fn(t)`` (no learnable tensors), or ``None``.
        with_derivative: ``with_derivative(t, d)`` replaces ``t`` by ``fn(t)`` and writes the
            derivative ``fn'(t)`` (the one autograd uses, ``0`` at ReLU's kink) into ``d``, both in
            place; or ``None`` (the caller then differentiates ``fn`` by autograd).
    """

    fn: Callable[..., Tensor]
    params: tuple[Tensor, ...] = ()
    inplace: Optional[Callable[[Tensor], Tensor]] = None
    with_derivative: Optional[Callable[[Tensor, Tensor], None]] = None


def _relu_with_derivative(t: Tensor, d: Tensor) -> None:
    torch.relu_(t)
    torch.sign(t, out=d)  # 1 where relu(t) > 0, else 0


def _tanh_with_derivative(t: Tensor, d: Tensor) -> None:
    torch.tanh_(t)
    torch.mul(t, t, out=d)
    d.neg_().add_(1)  # 1 - tanh(t)^2


def _sigmoid_with_derivative(t: Tensor, d: Tensor) -> None:
    torch.sigmoid_(t)
    torch.mul(t, t, out=d)
    torch.sub(t, d, out=d)  # s - s^2


_RELU = Pointwise(F.relu, (), torch.relu_, _relu_with_derivative)
_TANH = Pointwise(torch.tanh, (), torch.tanh_, _tanh_with_derivative)
_SIGMOID = Pointwise(torch.sigmoid, (), torch.sigmoid_, _sigmoid_with_derivative)


def _constant(
    fn: Callable[[Tensor], Tensor], inplace: Optional[Callable[[Tensor], Tensor]] = None
) -> Callable[[nn.Module], Pointwise]:
    return lambda module: Pointwise(lambda t: fn(t), (), inplace)


# Module type -> factory of the equivalent pure function (None: not usable right now).
_MODULES: dict[type[nn.Module], Callable[[Any], Optional[Pointwise]]] = {
    nn.ReLU: lambda m: _RELU,
    nn.LeakyReLU: lambda m: Pointwise(
        lambda t: F.leaky_relu(t, m.negative_slope),
        (),
        lambda t: F.leaky_relu_(t, m.negative_slope),
    ),
    nn.PReLU: lambda m: (
        Pointwise(lambda t, w: F.prelu(t, w), (m.weight,)) if m.weight.numel() == 1 else None
    ),
    nn.RReLU: lambda m: (
        None if m.training else Pointwise(lambda t: F.rrelu(t, m.lower, m.upper, False))
    ),
    nn.ELU: lambda m: Pointwise(lambda t: F.elu(t, m.alpha), (), lambda t: F.elu_(t, m.alpha)),
    nn.CELU: lambda m: Pointwise(lambda t: F.celu(t, m.alpha)),
    nn.SELU: _constant(F.selu, torch.selu_),
    nn.GELU: lambda m: Pointwise(lambda t: F.gelu(t, approximate=m.approximate)),
    nn.SiLU: _constant(F.silu),
    nn.Mish: _constant(F.mish),
    nn.Tanh: lambda m: _TANH,
    nn.Sigmoid: lambda m: _SIGMOID,
    nn.Softplus: lambda m: Pointwise(lambda t: F.softplus(t, m.beta, m.threshold)),
    nn.Hardtanh: lambda m: Pointwise(lambda t: F.hardtanh(t, m.min_val, m.max_val)),
    nn.ReLU6: _constant(F.relu6),
    nn.Hardswish: _constant(F.hardswish),
    nn.Hardsigmoid: _constant(F.hardsigmoid),
    nn.Identity: _constant(lambda t: t),
}

# Plain functions that are element-wise with their default arguments.
_FUNCTIONS: dict[Callable[..., Tensor], Pointwise] = {
    torch.relu: _RELU,
    F.relu: _RELU,
    F.leaky_relu: Pointwise(F.leaky_relu, (), F.leaky_relu_),
    F.elu: Pointwise(F.elu, (), F.elu_),
    F.selu: Pointwise(F.selu, (), torch.selu_),
    F.gelu: Pointwise(F.gelu),
    F.silu: Pointwise(F.silu),
    F.mish: Pointwise(F.mish),
    torch.tanh: _TANH,
    F.tanh: _TANH,
    torch.sigmoid: _SIGMOID,
    F.sigmoid: _SIGMOID,
}


def pointwise_activation(activation: Callable[[Tensor], Tensor]) -> Optional[Pointwise]:
    """Return ``activation`` as a deterministic element-wise :class:`Pointwise`, or ``None``.

    Args:
        activation: an activation module (checked by exact type, in its current training mode,
            without hooks) or function.

    Returns:
        A :class:`Pointwise` whose ``fn(t, *params)`` equals ``activation(t)`` for any shape of
        ``t``; ``None`` if ``activation`` is not known to be deterministic and element-wise.
    """
    if isinstance(activation, nn.Module):
        factory = _MODULES.get(type(activation))
        if factory is None or activation._forward_hooks or activation._forward_pre_hooks:
            return None  # unknown, or hooks that a pure function would skip
        return factory(activation)
    try:
        return _FUNCTIONS.get(activation)
    except TypeError:  # an unhashable callable
        return None
