"""A spandrel module as spandrel runs it: padded to its size requirements, its outputs flat.

spandrel's ``ImageModelDescriptor.__call__`` pads an input that does not meet the
architecture's ``size_requirements`` (a multiple, a minimum side, square) and crops the
output back; glam analyses the model the same way (:class:`PadToMultiple`, without
spandrel's final clamp, which would cut the gradients). A model that returns more than an
image is run as a flat tuple of tensors (:class:`FlatOutputs`) so that each output can be
named, compared and chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["FlatOutputs", "PadToMultiple", "flatten_outputs", "pad_like_spandrel", "padded_side"]


def _max(a: object, b: object) -> object:
    """``max`` of sizes: ints, SymInts (torch.export) or 0-dim tensors (torch.jit.trace)."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return torch.sym_max(a, b)
    return max(a, b)  # type: ignore[call-overload]


def _min(a: object, b: object) -> object:
    """``min`` of sizes, as :func:`_max`."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return torch.sym_min(a, b)
    return min(a, b)  # type: ignore[call-overload]


def padded_side(d: object, multiple: int, minimum: int = 0) -> object:
    """The side ``d`` padded to spandrel's requirement: at least ``minimum``, rounded up to a
    multiple of ``multiple`` (ints or SymInts)."""
    d = _max(d, minimum) if minimum else d
    return (d + multiple - 1) // multiple * multiple


def pad_like_spandrel(x: torch.Tensor, multiple: int, minimum: int = 0, square: bool = False,
                      mode: str = "reflect") -> torch.Tensor:
    """Pad ``x`` on the bottom / right to spandrel's size requirements as
    ``spandrel.__helpers.size_req.pad_tensor`` does: reflect as far as reflect can (size - 1),
    the rest replicate. Other modes (``"constant"``, ``"replicate"``) pad in one step;
    ``"reflect-or-constant"`` reflects, or pads zeros when reflect cannot (a pad not smaller
    than the side)."""
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = padded_side(h, multiple, minimum), padded_side(w, multiple, minimum)
    if square:
        ph = pw = _max(ph, pw)
    ph, pw = ph - h, pw - w
    if mode == "reflect-or-constant":
        mode = "reflect" if ph < h and pw < w else "constant"
        return nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    if mode != "reflect":
        return nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    rh, rw = _min(ph, h - 1), _min(pw, w - 1)
    x = nn.functional.pad(x, (0, rw, 0, rh), mode="reflect")
    return nn.functional.pad(x, (0, pw - rw, 0, ph - rh), mode="replicate")


# torch.fx.symbolic_trace records the padding as one call (its size arithmetic branches on
# sizes, which a symbolic proxy cannot); torch.export and torch.jit.trace trace through it
torch.fx.wrap("pad_like_spandrel")


class PadToMultiple(nn.Module):
    """Pad the input to spandrel's size requirements (a multiple of ``multiple``, at least
    ``minimum``, square if asked), crop the output.

    The padding spandrel's ``ImageModelDescriptor.__call__`` applies (:func:`pad_like_spandrel`:
    reflect on the bottom / right, replicate beyond what reflect can), without its final
    clamp, which would cut the gradients GL-AM needs.
    """

    def __init__(self, model: nn.Module, multiple: int, scale: int, minimum: int = 0,
                 square: bool = False) -> None:
        super().__init__()
        self.model = model
        self.multiple = int(multiple)
        self.scale = int(scale)
        self.minimum = int(minimum)
        self.square = bool(square)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        h, w = x.shape[-2], x.shape[-1]
        x = pad_like_spandrel(x, self.multiple, self.minimum, self.square)
        y = self.model(x)
        if isinstance(y, (tuple, list, dict)):  # several outputs: crop the images, keep the rest
            return tuple(o[..., : h * self.scale, : w * self.scale] if o.dim() == 4 else o
                         for o in flatten_outputs(y))
        return y[..., : h * self.scale, : w * self.scale]


class SpandrelCall(nn.Module):
    """The module called the way spandrel's descriptor calls it (its ``call_fn``): DRUNet
    and FDnCNN append a constant noise-level channel, MixDehazeNet maps its output to
    [0, 1], IPT scales to its ``rgb_range`` and runs its patch model, MPRNet and MMRealSR
    keep the image output. What the user's checkpoint computes under spandrel is what glam
    traces, taps and proves parity against."""

    def __init__(self, model: nn.Module, call_fn: Callable[[nn.Module, torch.Tensor], Any]) -> None:
        super().__init__()
        self.model = model
        self.call_fn = call_fn

    def forward(self, x: torch.Tensor) -> Any:
        return self.call_fn(self.model, x)


def custom_call(descriptor: Any) -> Callable[[nn.Module, torch.Tensor], Any] | None:
    """The descriptor's ``call_fn`` when the architecture gives one (``None`` for spandrel's
    default ``model(image)``)."""
    fn = getattr(descriptor, "_call_fn", None)
    if fn is None or "ImageModelDescriptor.__init__" in getattr(fn, "__qualname__", ""):
        return None
    return fn


class FlatOutputs(nn.Module):
    """A model returning nested outputs (MMRealSR: ``(image, [degree, degree])``) as one
    flat tuple of tensors, in order, so that each output can be named and compared."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten_outputs(self.model(x)))


def flatten_outputs(out: object) -> list[torch.Tensor]:
    """The tensors of a (nested) model output, depth first."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flatten_outputs(o)]
    return []
