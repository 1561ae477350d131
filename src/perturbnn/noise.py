"""The perturbation of a PNN layer: fixed (or trainable) additive noise masks, and the lazy-size
machinery the layers share.

Source: Juefei-Xu et al., "Perturbative Neural Networks", CVPR 2018, Sec. 3 (the noise masks), and
the options of the independent reproduction (seed notes: ``--nmasks``, ``--unique_masks``,
``--train_masks``, ``--noise_type``, ``--level``).
"""

from __future__ import annotations

from typing import Any, Optional, Union, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter, is_lazy

from perturbnn import functional as PF
from perturbnn._validation import (
    SizeLike,
    check_batch,
    check_bool,
    check_choice,
    check_level,
    check_positive_int,
    check_size,
)

__all__ = ["NOISE_TYPES", "NoiseMask"]

#: Valid ``noise_type`` names: ``uniform`` draws from U[-1, 1), ``normal`` from N(0, 1).
NOISE_TYPES = ("uniform", "normal")

DeviceLike = Union[torch.device, str, int, None]


def draw_seed(generator: torch.Generator) -> int:
    """A seed drawn from ``generator``: lazy masks are drawn later from a generator seeded with it,
    so the module keeps no reference to ``generator`` and stays deep-copyable and picklable."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def replicate_materialized(module: Any) -> Any:
    """``nn.DataParallel`` replication: refused only before a lazy layer's first forward."""
    if module.has_uninitialized_params():
        raise RuntimeError(
            f"{type(module).__name__} has lazy masks (input_size=None) and has not run yet; "
            "run one forward (or give input_size) before nn.DataParallel replicates it"
        )
    return nn.Module._replicate_for_data_parallel(module)  # type: ignore[no-untyped-call]


def _is_fake(x: Tensor) -> bool:
    try:
        from torch._subclasses.fake_tensor import FakeTensor
    except ImportError:  # pragma: no cover - private module moved
        return False
    return isinstance(x, FakeTensor)


def tracer_name(x: Tensor) -> Optional[str]:
    """The exporter or tracer running now, or ``None`` in eager mode and under ``torch.compile``.

    ``torch.export`` (strict or not, and so ``torch.onnx.export(dynamo=True)``) is recognised by
    ``torch.compiler.is_exporting`` (where torch has it; otherwise by its fake-tensor input
    outside ``torch.compile``), the TorchScript exporter by ``torch.onnx.is_in_onnx_export`` and
    ``torch.jit.trace`` by ``torch.jit.is_tracing``. (``torch.compile`` runs a lazy module's
    first forward eagerly, so it may create the masks.)
    """
    compiler = getattr(torch, "compiler", None)
    is_exporting = getattr(compiler, "is_exporting", None)
    if is_exporting is not None and bool(is_exporting()):
        return "torch.export"
    if torch.onnx.is_in_onnx_export():
        return "torch.onnx.export"
    if torch._C._get_tracing_state() is not None:  # torch.jit.is_tracing(), typed
        return "torch.jit.trace"
    is_compiling = getattr(compiler, "is_compiling", None)
    if is_exporting is None and _is_fake(x) and not (is_compiling and is_compiling()):
        return "a fake-tensor trace"  # pragma: no cover - older torch
    return None


def refuse_tracing(module: nn.Module, x: Tensor, name: Optional[str] = None) -> None:
    """Raise before a lazy layer would draw its masks inside an exporter or tracer.

    A trace cannot create module state: the masks would be drawn into the graph (or on fake
    tensors) and the module left with empty masks and no lazy hook. Nothing is changed here.

    Raises:
        RuntimeError: naming the module and the tracer, if one is running.
    """
    tracer = tracer_name(x)
    if tracer is not None:
        where = type(module).__name__ + (f" {name!r}" if name else "")
        raise RuntimeError(
            f"{where} has lazy noise masks (input_size=None) that are not created yet, and "
            f"{tracer} cannot create them: run one forward pass on a real input first (it "
            "draws the masks at that input's size), or give input_size, then export"
        )


def drop_lazy_hooks(module: nn.Module) -> None:
    """Remove the hooks ``LazyModuleMixin`` registered, as its ``_infer_parameters`` does."""
    for name in ("_initialize_hook", "_load_hook"):
        handle = module.__dict__.get(name)
        if handle is not None:
            handle.remove()
            delattr(module, name)


class NoiseMask(LazyModuleMixin, nn.Module):
    """Fixed (or trainable) additive noise masks: the perturbation of a PNN layer.

    Holds ``nmasks`` masks per input channel (``unique_masks=True``) or one set of ``nmasks``
    masks shared by all channels (``unique_masks=False``). The masks are unit noise, drawn once
    at construction (and by :meth:`reset_parameters`); ``forward`` adds ``level`` times them.
    Fixed masks are a buffer: they follow ``.to()``, are saved in ``state_dict()`` and never change
    during ``forward``, ``train()``/``eval()`` or an optimizer step. With ``train_masks=True`` they
    are an ``nn.Parameter`` and are learned with the rest of the network; a lazy module's
    trainable masks are an ``nn.parameter.UninitializedParameter`` until the first forward
    materializes them in place, as in torch's lazy modules: an optimizer built before holds the
    same object and trains them, and ``DistributedDataParallel``, which records parameter
    shapes when it is built, refuses the module until then ("Run a dummy forward pass").

    Source: PNN, Sec. 3 (fixed noise masks); Klachko's ``--nmasks``, ``--unique_masks``,
    ``--train_masks``, ``--noise_type`` and ``--level`` options.

    Args:
        channels: number of input channels ``C``.
        nmasks: masks per input channel (the paper's fanout).
        input_size: spatial size of the maps to perturb, ``int`` or ``(height, width)``;
            ``None``: taken from the first input (lazy).
        level: noise amplitude (same units as the input); ``0`` disables the noise.
        noise_type: ``"uniform"`` (U[-1, 1)) or ``"normal"`` (N(0, 1)).
        unique_masks: distinct masks for every channel if ``True``, shared otherwise.
        train_masks: make the masks a trainable ``nn.Parameter``.
        generator: CPU ``torch.Generator`` to draw the masks from (default: the global RNG).
            The masks are drawn on the CPU in float32 and then copied, so a seed gives the same
            masks on every device. A lazy module draws one seed from it at construction and
            its masks from that seed on the first forward.
        device, dtype: factory keyword arguments, as in ``torch.nn``.

    Shape:
        - Input: ``Tensor[batch_size, C, height, width]``.
        - Output: ``Tensor[batch_size, C * nmasks, height, width]``; mask ``m`` of channel ``c`` at
          channel ``c * nmasks + m``.
        - ``masks``: ``Tensor[C if unique_masks else 1, nmasks, height, width]``.

    Raises:
        TypeError: on an argument of the wrong type.
        ValueError: on a non-positive ``channels``/``nmasks``/``input_size``, a negative or
            non-finite ``level``, or an unknown ``noise_type``; in ``forward``, on an input of
            another spatial size than the masks'.

    Example::

        >>> noise = NoiseMask(3, 4, 8, level=0.1)
        >>> noise(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 12, 8, 8])
        >>> lazy = NoiseMask(3, 4, level=0.1)
        >>> lazy(torch.zeros(2, 3, 5, 7)).shape, lazy.input_size
        (torch.Size([2, 12, 5, 7]), (5, 7))
    """

    masks: Tensor
    cls_to_become = None

    def __init__(
        self,
        channels: int,
        nmasks: int,
        input_size: Optional[SizeLike] = None,
        *,
        level: float,
        noise_type: str = "uniform",
        unique_masks: bool = True,
        train_masks: bool = False,
        generator: Optional[torch.Generator] = None,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.nmasks = check_positive_int("nmasks", nmasks)
        self.input_size: Optional[tuple[int, int]] = (
            None if input_size is None else check_size("input_size", input_size)
        )
        self.level = check_level("level", level)
        self.noise_type = check_choice("noise_type", noise_type, NOISE_TYPES)
        self.unique_masks = check_bool("unique_masks", unique_masks)
        self.train_masks = check_bool("train_masks", train_masks)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        #: Qualified name of the layer in its network (set by :func:`perturbnn.convert`), or
        #: ``None``; error messages name it.
        self.module_name: Optional[str] = None
        #: Seed of the lazy masks (drawn from ``generator``), or ``None`` for the global RNG.
        self.seed: Optional[int] = None
        if train_masks and self.input_size is None:
            # torch's lazy parameter: DistributedDataParallel refuses it, naming the fix, until
            # the first forward gives it a shape (see ``_allocate``).
            factory: dict[str, Any] = {"device": device, "dtype": dtype}  # untyped in torch stubs
            self.masks = UninitializedParameter(**factory)
        elif train_masks:
            self.masks = nn.Parameter(torch.empty(self._shape(), device=device, dtype=dtype))
        else:
            shape = self._shape() if self.input_size is not None else (*self._shape()[:2], 0, 0)
            self.register_buffer("masks", torch.empty(shape, device=device, dtype=dtype))
        if self.input_size is None:
            if generator is not None:
                self.seed = draw_seed(generator)
        else:
            drop_lazy_hooks(self)
            self.reset_parameters(generator)

    def has_uninitialized_params(self) -> bool:
        """``True`` until the masks have a size (lazy module not yet materialized)."""
        return self.input_size is None

    def _replicate_for_data_parallel(self) -> Any:
        return replicate_materialized(self)

    def initialize_parameters(self, x: Tensor, *args: Any, **kwargs: Any) -> None:
        """Draw the masks for ``x``'s height and width if they have no size yet (lazy hook).

        Raises:
            TypeError, ValueError: if ``x`` is not a floating 4-D tensor.
            RuntimeError: inside ``torch.export``, ``torch.onnx.export`` or ``torch.jit.trace``
                (nothing is changed: run one forward pass on a real input first).
        """
        if self.input_size is None:
            check_batch(x)
            refuse_tracing(self, x, getattr(self, "module_name", None))
            self.materialize((int(x.shape[2]), int(x.shape[3])))

    def materialize(self, input_size: SizeLike) -> None:
        """Give a lazy module its size and draw its masks (from :attr:`seed` or the global RNG).

        Args:
            input_size: ``int`` or ``(height, width)``.

        Raises:
            TypeError, ValueError: on an invalid size.
            RuntimeError: if the module already has a size.
        """
        self._allocate(check_size("input_size", input_size))
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        self.reset_parameters(generator)

    def _shape(self, size: Optional[tuple[int, int]] = None) -> tuple[int, int, int, int]:
        """Shape of the masks for maps of ``size`` (default: :attr:`input_size`)."""
        height, width = size or self.input_size or (0, 0)
        return (self.channels if self.unique_masks else 1, self.nmasks, height, width)

    def _allocate(self, size: tuple[int, int]) -> None:
        if self.input_size is not None:
            raise RuntimeError(f"the masks already have a size, {self.input_size}")
        if is_lazy(self.masks):
            cast(UninitializedParameter, self.masks).materialize(self._shape(size))
        else:
            with torch.no_grad():
                self.masks.data = torch.empty(
                    self._shape(size), device=self.masks.device, dtype=self.masks.dtype
                )
        self.input_size = size

    def _lazy_load_hook(  # type: ignore[override]
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Before ``load_state_dict``: a lazy module takes the size of materialized masks."""
        incoming = state_dict.get(prefix + "masks")
        if (
            self.input_size is None
            and isinstance(incoming, Tensor)
            and not is_lazy(incoming)
            and incoming.dim() == 4
        ):
            height, width = int(incoming.shape[2]), int(incoming.shape[3])
            if height > 0 and width > 0:
                self._allocate((height, width))

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Draw new unit-noise masks in place (uniform in [-1, 1) or standard normal).

        A lazy module has nothing to draw yet; with a ``generator`` it takes a new seed from it.

        Args:
            generator: CPU ``torch.Generator`` (default: the global RNG).
        """
        if self.input_size is None:
            if generator is not None:
                self.seed = draw_seed(generator)
            return
        cpu = torch.empty(self.masks.shape, dtype=torch.float32)
        if self.noise_type == "uniform":
            cpu.uniform_(-1.0, 1.0, generator=generator)
        else:
            cpu.normal_(generator=generator)
        with torch.no_grad():
            self.masks.copy_(cpu)

    def check_input_size(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming both sizes (and :attr:`module_name`, when set) if ``x``'s
        height and width are not the masks'."""
        if self.input_size is not None and x.dim() == 4 and tuple(x.shape[2:]) != self.input_size:
            where = f"{self.module_name}: " if getattr(self, "module_name", None) else ""
            raise ValueError(
                f"{where}input spatial size {tuple(x.shape[2:])} differs from the masks' size "
                f"{self.input_size} (given as input_size, or taken from the first input of a "
                "lazy layer); the noise masks are fixed, so every input must have that size. "
                "In a network, the size reaching a layer follows the size of the images fed to "
                "the network: feed images of the size of its first input, or convert (or build) "
                "a new network for another size"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` perturbed by every mask: see :func:`perturbnn.functional.perturb`."""
        if x.dim() == 4 and x.shape[1] != self.channels:
            raise ValueError(f"input must have {self.channels} channels, got {x.shape[1]}")
        self.check_input_size(x)
        return PF.perturb(x, self.masks, self.level)

    def extra_repr(self) -> str:
        s = f"{self.channels}, nmasks={self.nmasks}, input_size={self.input_size}, level={self.level}"
        if self.noise_type != "uniform":
            s += f", noise_type={self.noise_type!r}"
        if not self.unique_masks:
            s += ", unique_masks=False"
        if self.train_masks:
            s += ", train_masks=True"
        return s
