"""Model registry: ``register_model``, ``list_models`` and ``build_model``.

Source: Klachko's ``--net-type`` option (resnet18, noiseresnet18, perturb_resnet18, cifarnet,
lenet).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from torch import nn

from perturbnn._suggest import did_you_mean

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

    ``resnet18`` is the CIFAR ResNet-18 (3x3 stride-1 stem, no max pooling, for 32x32
    inputs), not torchvision's ImageNet ``resnet18``; every network here is built for the
    independent reproduction's CIFAR-10 and MNIST runs (``noiseresnet34`` to ``152`` and
    ``perturb_resnet34/50`` with ``first_filter_size=7`` and ``input_size=224`` give the
    ImageNet layout). ``help(perturbnn.models.<name>)`` describes each.

    Example::

        >>> list_models()
        ['cifarnet', 'lenet', 'noiseresnet18', 'perturb_resnet18', 'resnet18']
    """
    return sorted(_MODELS)


def build_model(name: str, **config: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword options ``config``.

    Args:
        name: a name from :func:`list_models`.
        **config: the builder's options (see :class:`perturbnn.models.ModelConfig`); the number
            of classes is ``num_classes`` (timm's and torchvision's name) or its alias
            ``nclasses``.

    Returns:
        The model, mapping ``Tensor[batch_size, in_channels, input_size, input_size]`` to logits
        ``Tensor[batch_size, num_classes]``.

    Raises:
        TypeError: if ``name`` is not a string, or on an unknown option (the message suggests
            a close option name, ``num_clases`` -> ``num_classes``).
        ValueError: if ``name`` is unknown (the message gives the close matches, if any, and
            all names), on an invalid option value, or on ``num_classes`` and ``nclasses``
            both given with different values.

    Example::

        >>> build_model("lenet", nfilters=8)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> build_model("perturb_resnet18", nfilters=8, num_classes=100)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    return _MODELS[check_model_name(name)](**config)


def check_model_name(name: object) -> str:
    """Return ``name`` if it is a registered model name.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if it is unknown; the message gives the close matches (a typo or the start
            of a name; nothing when no name is close) and all names.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name string, got {type(name).__name__} {name!r}")
    if name not in _MODELS:
        hint = did_you_mean(name, list_models())
        hint = f" ({hint})" if hint else ""
        raise ValueError(f"unknown model name {name!r}{hint}; valid names: {list_models()}")
    return name
