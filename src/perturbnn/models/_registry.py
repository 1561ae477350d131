"""Model registry: ``register_model``, ``list_models`` and ``build_model``.

Source: the seed's ``--net-type`` option (resnet18, noiseresnet18, perturb_resnet18, cifarnet,
lenet).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, TypeVar

from torch import nn

__all__ = ["build_model", "check_model_name", "list_models", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Register a keyword-only model builder under its function name.

    Raises:
        ValueError: if a builder of that name is already registered.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Return the names of the registered model builders, sorted.

    Example::

        >>> list_models()
        ['cifarnet', 'lenet', 'noiseresnet18', 'perturb_resnet18', 'resnet18']
    """
    return sorted(_MODELS)


def build_model(name: str, **config: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword options ``config``.

    Args:
        name: a name from :func:`list_models`.
        **config: the builder's options (see :class:`perturbnn.models.ModelConfig`).

    Returns:
        The model, mapping ``Tensor[batch_size, in_channels, input_size, input_size]`` to logits
        ``Tensor[batch_size, nclasses]``.

    Raises:
        TypeError: if ``name`` is not a string, or on an unknown option.
        ValueError: if ``name`` is unknown (the message lists close matches and all names), or
            on an invalid option value.

    Example::

        >>> build_model("lenet", nfilters=8)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return _MODELS[check_model_name(name)](**config)


def check_model_name(name: object) -> str:
    """Return ``name`` if it is a registered model name.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if it is unknown; the message lists close matches and all names.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name string, got {type(name).__name__} {name!r}")
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint}; valid names: {list_models()}")
    return name
