"""Log the input, noise and output values of every noise layer, to check that noise is applied.

Klachko's ``--debug`` flag printed these values at every update step from inside its layers.
Here the layers stay silent: :func:`attach_debug_hooks` registers forward hooks that log through
:mod:`logging`, and removing the returned handles turns it off again.

Example::

    >>> import logging
    >>> logging.basicConfig(level=logging.DEBUG)
    >>> from perturbnn.layers import NoiseMask
    >>> model = torch.nn.Sequential(NoiseMask(3, 2, 4, level=0.5))
    >>> handles = attach_debug_hooks(model)
    >>> _ = model(torch.zeros(1, 3, 4, 4))   # logs one line: "0: input [...] noise [...] output [...]"
    >>> for h in handles:
    ...     h.remove()
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["attach_debug_hooks"]

_LOGGER = logging.getLogger(__name__)


def _head(tensor: Tensor, count: int) -> list[float]:
    values = tensor.detach().reshape(-1)[:count].to("cpu", torch.float64)
    return [round(float(v), 6) for v in values.tolist()]


def _noise_of(module: nn.Module, noise_cls: type) -> Optional[Any]:
    """The ``NoiseMask`` a layer applies through a fused kernel (``module.noise``), if any."""
    noise = getattr(module, "noise", None)
    if isinstance(noise, noise_cls) and not isinstance(module, noise_cls):
        return noise
    return None


def attach_debug_hooks(
    model: nn.Module,
    *,
    logger: Optional[logging.Logger] = None,
    max_values: int = 4,
    level: int = logging.DEBUG,
) -> list[RemovableHandle]:
    """Log the first values of the input, noise and output of every noise layer at each forward.

    Two kinds of layers are watched:

    * a :class:`~perturbnn.layers.NoiseMask` called on its own logs one line
      ``"<name>: input [...] noise [...] output [...]"``, where the noise is ``level * masks``
      flattened and the output is the perturbed tensor;
    * a layer that applies a ``NoiseMask`` held as its ``.noise`` attribute in a fused kernel
      (:class:`~perturbnn.layers.PerturbConv2d`, where the mask module's own ``forward`` never
      runs) logs ``"<name>: input [...] noise [...] perturbed [...] output [...]"``, where
      ``perturbed`` is recomputed as ``noise(input)`` and ``output`` is the layer's output.

    Each noise layer is logged once per forward. Nothing is computed when ``logger`` is not
    enabled for ``level``, so the hooks cost nothing then.

    Args:
        model (nn.Module): the model to watch.
        logger (logging.Logger, optional): where to log. Default: ``perturbnn.repro.debug``.
        max_values (int): how many leading values of each tensor to show. Default: ``4``.
        level (int): the logging level of the lines. Default: ``logging.DEBUG``.

    Returns:
        list[RemovableHandle]: one handle per watched layer; call ``.remove()`` to detach.
        Empty (with a warning logged) if the model has no noise layer.

    Raises:
        ValueError: if ``max_values`` is not positive.
    """
    if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 1:
        raise ValueError(f"max_values must be a positive int, got {max_values!r}")
    from perturbnn.layers import NoiseMask

    log = logger if logger is not None else _LOGGER

    def first_input(inputs: tuple[Any, ...]) -> Optional[Tensor]:
        return inputs[0] if inputs and isinstance(inputs[0], Tensor) else None

    def show(tensor: Optional[Any]) -> Optional[list[float]]:
        return _head(tensor, max_values) if isinstance(tensor, Tensor) else None

    def mask_hook(name: str, layer: NoiseMask) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not log.isEnabledFor(level):
                return
            noise = layer.level * layer.masks.detach()
            log.log(
                level,
                "%s: input %s noise %s output %s",
                name,
                show(first_input(inputs)),
                show(noise),
                show(output),
            )

        return hook

    def fused_hook(name: str, layer: NoiseMask) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not log.isEnabledFor(level):
                return
            x = first_input(inputs)
            noise = layer.level * layer.masks.detach()
            perturbed = None
            if x is not None:
                with torch.no_grad():
                    perturbed = layer(x.detach())
            log.log(
                level,
                "%s: input %s noise %s perturbed %s output %s",
                name,
                show(x),
                show(noise),
                show(perturbed),
                show(output),
            )

        return hook

    owned = set()
    handles: list[RemovableHandle] = []
    for name, module in model.named_modules():
        noise = _noise_of(module, NoiseMask)
        if noise is not None:
            owned.add(id(noise))
            label = name or type(module).__name__
            handles.append(module.register_forward_hook(fused_hook(label, noise)))
    for name, module in model.named_modules():
        if isinstance(module, NoiseMask) and id(module) not in owned:
            label = name or type(module).__name__
            handles.append(module.register_forward_hook(mask_hook(label, module)))
    if not handles:
        log.warning(
            "attach_debug_hooks: %s has no NoiseMask layer; nothing to log", type(model).__name__
        )
    return handles
