"""Fake quantization in float32: ONNX ``QuantizeLinear`` / ``DequantizeLinear`` arithmetic.

glam analyses a quantized ONNX graph as a float graph that computes the same numbers
(``docs/quantized.md``). A quantized tensor (``uint8``, ``int8``, ``int32`` ...) is carried
through the FX graph as a float32 tensor holding its integer *codes*, exactly: every code
of an 8- or 16-bit type, and every ``int32`` up to 2**24, is a float32 integer.

* :func:`quantize` is ``QuantizeLinear``: ``clamp(round(x / scale) + zero_point, qmin, qmax)``
  with round half to even, as the ONNX spec and onnxruntime define it (``x / scale`` is a
  float32 division, not a multiplication by ``1 / scale``);
* :func:`dequantize` is ``DequantizeLinear``: ``(q - zero_point) * scale`` in float32.

Gradients. Rounding has a zero derivative almost everywhere, so the engine could take no
gradient through a quantized graph. :func:`round_ste` rounds in the forward pass and passes
the gradient through unchanged (a straight-through estimator). Saturation is **not**
straight-through: where the rounded code ``round(x / scale) + zero_point`` lies outside
``[qmin, qmax]`` the gradient is 0, inside it (end codes included) it passes, as
``torch.fake_quantize_per_tensor_affine`` and quantization-aware training do. This matters for SR graphs: onnxruntime's quantizer drops
a ``Relu`` after a convolution and lets the saturation at the zero point do its work, so a
zero gradient at saturation is what keeps the float model's ReLU mask in the gradient.
Through ``quantize`` then ``dequantize`` the gradient is ``(1 / scale) * scale``, 1 up to
float32 rounding, inside the range.

Scales and zero points computed at run time (``DynamicQuantizeLinear``) are constants for the
gradient, like an observer's statistics in quantization-aware training.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

#: ``(qmin, qmax)`` of the integer types quantization uses, by ONNX ``TensorProto`` type.
INT_RANGES: dict[int, tuple[int, int]] = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT4: (0, 15),
    onnx.TensorProto.INT4: (-8, 7),
    onnx.TensorProto.INT32: (-(2**31), 2**31 - 1),
}

#: ONNX type names for messages.
TYPE_NAMES: dict[int, str] = {
    t: onnx.helper.tensor_dtype_to_np_dtype(t).name if t not in (
        onnx.TensorProto.UINT4, onnx.TensorProto.INT4) else ("uint4" if t == onnx.TensorProto.UINT4
                                                            else "int4")
    for t in INT_RANGES
}


class _RoundSTE(torch.autograd.Function):
    """``torch.round`` (half to even) forward, identity backward."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        del ctx, inputs, output

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        del ctx
        return grad

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        del ctx
        return tangent

    generate_vmap_rule = True


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even, with a straight-through (identity) gradient."""
    return _RoundSTE.apply(x)


def broadcast_param(p: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-tensor (0-d / 1-element) or per-axis (1-D) parameter shaped to broadcast on ``x``.

    Raises
    ------
    ValueError
        When a 1-D parameter's length is not ``x``'s size along ``axis``.
    """
    if p.dim() == 0 or p.numel() == 1 and p.dim() <= 1:
        return p.reshape(())
    if p.dim() != 1:
        return p  # already broadcastable (e.g. QLinearAdd's constant operand)
    ax = axis if axis >= 0 else axis + x.dim()
    if not 0 <= ax < x.dim() or x.shape[ax] != p.shape[0]:
        raise ValueError(
            f"a per-axis quantization parameter of length {p.shape[0]} does not fit axis {axis} "
            f"of a tensor of shape {list(x.shape)}"
        )
    shape = [1] * x.dim()
    shape[ax] = p.shape[0]
    return p.reshape(shape)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qrange: tuple[int, int],
    axis: int = 1,
) -> torch.Tensor:
    """ONNX ``QuantizeLinear``: the codes ``clamp(round(x / scale) + zero_point, qmin, qmax)``.

    Parameters
    ----------
    x:
        Float input.
    scale, zero_point:
        Float tensors, per-tensor (0-d) or per-axis (1-D along ``axis``).
    qrange:
        ``(qmin, qmax)`` of the quantized type (:data:`INT_RANGES`).
    axis:
        The axis of per-axis parameters.

    Returns
    -------
    torch.Tensor
        Float32 integer codes, with a straight-through gradient for the rounding and zero
        gradient where the codes saturate.
    """
    s = broadcast_param(scale, x, axis)
    zp = broadcast_param(zero_point, x, axis)
    q = round_ste(x / s) + zp
    inside = (q >= qrange[0]) & (q <= qrange[1])
    return torch.where(inside, q, torch.clamp(q.detach(), float(qrange[0]), float(qrange[1])))


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int = 1
) -> torch.Tensor:
    """ONNX ``DequantizeLinear``: ``(q - zero_point) * scale`` (float32)."""
    s = broadcast_param(scale, q, axis)
    zp = broadcast_param(zero_point, q, axis)
    return (q - zp) * s


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qrange: tuple[int, int],
    axis: int = 1,
) -> torch.Tensor:
    """``dequantize(quantize(x))``: ``x`` on the quantization grid, in float."""
    return dequantize(quantize(x, scale, zero_point, qrange, axis), scale, zero_point, axis)


def dynamic_params(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``DynamicQuantizeLinear``'s uint8 ``(scale, zero_point)`` of ``x``, without gradient.

    ONNX: ``x_min = min(0, min(x))``, ``x_max = max(0, max(x))``,
    ``scale = (x_max - x_min) / 255``, ``zero_point = saturate(round(0 - x_min / scale))``;
    onnxruntime takes ``scale = 1`` for an all-zero input (the spec divides by zero there).
    """
    with torch.no_grad():
        lo = torch.clamp(x.min(), max=0.0)
        hi = torch.clamp(x.max(), min=0.0)
        scale = (hi - lo) / 255.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.clamp(torch.round(0.0 - lo / scale), 0.0, 255.0)
    return scale.detach(), zp.detach()


def fold_quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int,
                  qrange: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """``QuantizeLinear`` of a constant in numpy (float32 division, round half to even)."""
    s, zp = _np_param(scale, x, axis), _np_param(zero_point, x, axis)
    q = np.rint(x.astype(np.float32) / s.astype(np.float32)) + zp.astype(np.float64)
    return np.clip(q, qrange[0], qrange[1]).astype(dtype)


def fold_dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                    axis: int) -> np.ndarray:
    """``DequantizeLinear`` of a constant in numpy: float32 ``(q - zero_point) * scale``."""
    s, zp = _np_param(scale, q, axis), _np_param(zero_point, q, axis)
    diff = (q.astype(np.int64) - zp.astype(np.int64)).astype(np.float32)
    return (diff * s.astype(np.float32)).astype(np.float32)


def _np_param(p: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    ax = axis if axis >= 0 else axis + x.ndim
    shape = [1] * x.ndim
    shape[ax] = p.shape[0]
    return p.reshape(shape)
