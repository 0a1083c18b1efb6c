"""Device selection (``auto`` picks CUDA when present, else CPU) and float32 precision on CUDA."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
from glam.errors import UserInputError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    Raises
    ------
    UserInputError
        For an unknown device string or a CUDA device that is not available.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        text = (device or "auto").strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise UserInputError(
                f"device {device!r} is not understood; use auto, cpu, cuda or cuda:N"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(
                f"device {str(dev)!r} was asked for but CUDA is not available; use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserInputError(
                f"device {str(dev)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise UserInputError(f"device {str(dev)!r} is not supported; use auto, cpu or cuda[:N]")
    return dev


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Run float32 convolutions and matrix products on CUDA in IEEE float32, not TF32.

    PyTorch lets cuDNN use TF32 for float32 convolutions by default (10-bit mantissa on
    Ampere and later GPUs): maps would differ from CPU by about 1e-3, ten times GLAM.md's
    tolerance. Inside this context both cuDNN convolutions and cuBLAS products are IEEE
    float32; the previous settings are restored on exit. Nothing changes on CPU.
    """
    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9: the new API only
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    saved_legacy = (torch.backends.cudnn.allow_tf32, matmul.allow_tf32)  # pragma: no cover
    torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = False, False  # pragma: no cover
    try:  # pragma: no cover - older torch
        yield
    finally:  # pragma: no cover
        torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved_legacy


F = TypeVar("F", bound=Callable[..., Any])


def input_in_full_precision(fn: F) -> F:
    """Decorate an engine entry point ``fn(model, x, ...)``: it runs inside
    :func:`full_precision` for ``x``'s device."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        x = kwargs["x"] if "x" in kwargs else args[1]
        with full_precision(x.device):
            return fn(*args, **kwargs)

    return cast(F, wrapper)
