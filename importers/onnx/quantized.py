"""Converters for quantized ONNX graphs (QDQ, QOperator and dynamic quantization).

Registered in :mod:`glam.importers.onnx.registry` like every glam converter, keyed by
``(op, opset, domain)``:

* ``QuantizeLinear`` / ``DequantizeLinear`` (opsets 10-25, per-tensor and per-axis);
* ``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``,
  ``DynamicQuantizeLinear`` (``ai.onnx``);
* ``com.microsoft`` ``QLinearAdd``, ``QLinearMul``, ``QLinearConcat``, ``QLinearSigmoid``,
  ``QLinearLeakyRelu``, ``QLinearSoftmax``, ``QLinearGlobalAveragePool`` (what
  onnxruntime's quantizer emits in QOperator format).

Every quantized tensor is carried as float32 integer codes and every integer kernel is
simulated in float32 (:mod:`glam.importers.onnx.fake_quant`: round half to even, saturate,
straight-through gradient for the rounding). A quantized operator becomes "dequantize its
inputs, run the float operator, quantize its output"; onnxruntime's integer kernels round
their accumulators differently, so the import's parity for a quantized graph is counted in
output quantization steps (:mod:`glam.importers.quant_parity`).

``QLinearConv`` becomes two FX nodes, :class:`GlamQuantizedConv2d` (an ``nn.Conv2d`` over the
integer codes, exact like onnxruntime's int32 accumulator, whose output is dequantized) and
``QuantizeLinear`` to the output scale: the tap pass finds the convolution like any other
and the tap is its dequantized output ``acc * x_scale * w_scale``, before the
requantization (``docs/quantized.md``). QDQ and dynamic graphs give the same structure once
:func:`glam.importers.onnx.quant_passes.fuse_quantized_convs` has rewritten their
convolutions as ``glam.QuantizedConv`` nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from glam.importers.onnx.converters import _attr, _const, _mapping, _result, conv_module
from glam.importers.onnx.fake_quant import (
    INT_RANGES,
    TYPE_NAMES,
    broadcast_param,
    dequantize,
    dynamic_params,
    quantize,
)
from glam.importers.onnx.quant_passes import GLAM_DOMAIN
from glam.importers.onnx.registry import register
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

MS = "com.microsoft"
#: Schema versions of QuantizeLinear / DequantizeLinear glam converts.
QDQ_OPSETS = (10, 13, 19, 21, 23, 24, 25)


# ------------------------------------------------------------------------------ helpers
def _node_name(node: OnnxNode) -> str:
    return node.name or node.unique_name


def _elem_type(graph: OnnxGraph, name: str) -> int | None:
    """The ONNX element type of a value (initializer or inferred value info)."""
    if name in graph.initializers:
        return int(graph.initializers[name].proto.data_type)
    info = graph.value_info.get(name)
    if info is not None and info.type.HasField("tensor_type"):
        return int(info.type.tensor_type.elem_type) or None
    try:
        prod, _ = graph.value_as_node_output(name)
    except KeyError:
        return None
    if prod.operation_type == "Constant" and "value" in prod.attributes:
        return int(prod.attributes["value"].proto.data_type)
    return None


def _qrange(graph: OnnxGraph, node: OnnxNode, zp_name: str, default: int) -> tuple[int, int]:
    """``(qmin, qmax)`` of the quantized type named by a zero point (else ``default``)."""
    etype = _elem_type(graph, zp_name) if zp_name else default
    if etype is None:
        etype = default
    if etype not in INT_RANGES or etype == onnx.TensorProto.INT32:
        tname = onnx.TensorProto.DataType.Name(etype)
        raise NotImplementedError(
            f"node {_node_name(node)!r} quantizes to {tname}; glam simulates "
            f"{', '.join(TYPE_NAMES[t] for t in INT_RANGES if t != onnx.TensorProto.INT32)}"
        )
    return INT_RANGES[etype]


def _float(value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value.to(torch.float32)


def _inputs(node: OnnxNode, n: int) -> list[str]:
    names = list(node.input_values)
    return names + [""] * (n - len(names))


class QuantOp(nn.Module, OnnxToTorchModule):
    """Base of glam's quantized-op modules: constant inputs are buffers, the rest arguments.

    ``consts[i]`` is the float32 value of input ``i`` when it is a constant (initializer or
    ``Constant``), ``None`` when it is computed (passed to ``forward`` in input order), and
    absent inputs are ``None`` with ``absent[i]`` set (the op's default applies).
    """

    def __init__(self, consts: Sequence[torch.Tensor | None], absent: Sequence[bool]) -> None:
        super().__init__()
        self.n_inputs = len(consts)
        self.dynamic = [c is None and not a for c, a in zip(consts, absent, strict=True)]
        self.absent = list(absent)
        for i, c in enumerate(consts):
            if c is not None:
                self.register_buffer(f"c{i}", c, persistent=False)

    def values(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        it = iter(args)
        out: list[torch.Tensor | None] = []
        for i in range(self.n_inputs):
            if self.absent[i]:
                out.append(None)
            elif self.dynamic[i]:
                out.append(next(it))
            else:
                out.append(getattr(self, f"c{i}"))
        return out


def _quant_result(
    cls: type[QuantOp], node: OnnxNode, graph: OnnxGraph, n: int, **kwargs: Any
) -> OperationConverterResult:
    """Build ``cls(consts, absent, **kwargs)`` over the node's first ``n`` inputs."""
    names = _inputs(node, n)
    consts = [_float(_const(graph, nm)) if nm else None for nm in names]
    absent = [not nm for nm in names]
    module = cls(consts, absent, **kwargs)
    dyn = [nm for nm, c, a in zip(names, consts, absent, strict=True) if c is None and not a]
    return OperationConverterResult(torch_module=module, onnx_mapping=_mapping(dyn, node))


def _zp(v: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return v if v is not None else torch.zeros((), dtype=like.dtype, device=like.device)


# ================================================================ QuantizeLinear & co
def _check_qdq(node: onnx.NodeProto) -> str | None:
    block = _attr(node, "block_size", 0)
    if block:
        return f"{node.op_type} with block_size {block} (blocked quantization) is not simulated"
    out_dtype = _attr(node, "output_dtype", 0)
    if node.op_type == "QuantizeLinear" and out_dtype and out_dtype not in INT_RANGES:
        return (f"{node.op_type} to {onnx.TensorProto.DataType.Name(out_dtype)} is not simulated "
                "(glam simulates integer quantization)")
    if node.op_type == "DequantizeLinear" and out_dtype not in (0, onnx.TensorProto.FLOAT):
        return (f"DequantizeLinear to {onnx.TensorProto.DataType.Name(out_dtype)} is not "
                "simulated (glam computes in float32)")
    precision = _attr(node, "precision", 0)
    if precision not in (0, onnx.TensorProto.FLOAT):
        return (f"QuantizeLinear with precision {onnx.TensorProto.DataType.Name(precision)} is "
                "not simulated (glam divides in float32)")
    return None


class GlamQuantizeLinear(QuantOp):
    """ONNX ``QuantizeLinear``: float → integer codes (carried as float32)."""

    def __init__(self, consts, absent, qrange: tuple[int, int], axis: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(consts, absent)
        self.qrange = qrange
        self.axis = axis

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x, scale, zp = self.values(args)
        assert x is not None and scale is not None  # required inputs
        return quantize(x, scale, _zp(zp, scale), self.qrange, self.axis)


class GlamDequantizeLinear(QuantOp):
    """ONNX ``DequantizeLinear``: integer codes → float32."""

    def __init__(self, consts, absent, axis: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(consts, absent)
        self.axis = axis

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x, scale, zp = self.values(args)
        assert x is not None and scale is not None
        return dequantize(x, scale, _zp(zp, scale), self.axis)


@register("QuantizeLinear", *QDQ_OPSETS, check=_check_qdq)
def _quantize_linear(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    names = _inputs(node, 3)
    default = int(node.attributes.get("output_dtype", 0) or onnx.TensorProto.UINT8)
    qrange = _qrange(graph, node, names[2], default)
    return _quant_result(GlamQuantizeLinear, node, graph, 3, qrange=qrange,
                         axis=int(node.attributes.get("axis", 1)))


@register("DequantizeLinear", *QDQ_OPSETS, check=_check_qdq)
def _dequantize_linear(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _quant_result(GlamDequantizeLinear, node, graph, 3,
                         axis=int(node.attributes.get("axis", 1)))


class GlamDynamicQuantizeLinear(nn.Module, OnnxToTorchModule):
    """ONNX ``DynamicQuantizeLinear``: ``(codes, scale, zero_point)`` of a uint8 quantization
    whose range is the input's own (scale and zero point carry no gradient)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale, zp = dynamic_params(x)
        return quantize(x, scale, zp, (0, 255)), scale, zp


@register("DynamicQuantizeLinear", 11)
def _dynamic_quantize_linear(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _result(GlamDynamicQuantizeLinear(), node)


# ================================================================= quantized convolutions
class GlamQuantizedConv2d(nn.Conv2d, OnnxToTorchModule):
    """A quantized convolution with its dequantized output: the tap of a quantized conv.

    ``weight`` holds the integer codes ``w_q - w_zero_point`` (float32), and the forward pass
    computes, like onnxruntime's integer kernels::

        acc = conv(x_q - x_zero_point, w_q - w_zero_point) [+ B_q]       exact integers
        z   = acc * (x_scale * w_scale) [+ bias]                        the dequantized output

    The accumulation is exact in float32 while its partial sums stay below 2**24 (products
    of 8-bit codes summed over a few thousand terms), so ``z`` is onnxruntime's value up to
    the rounding of the final scaling. ``x_scale`` / ``x_zero_point`` are constants or, for
    dynamic quantization, inputs; padding pads ``x_q - x_zero_point`` with zeros (ONNX pads
    the codes with the zero point).
    """

    def __init__(
        self,
        codes: torch.Tensor,
        attrs: dict[str, Any],
        x_scale: torch.Tensor | None,
        x_zp: torch.Tensor | None,
        w_scale: torch.Tensor,
        b_q: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        dynamic: tuple[bool, bool] = (False, False),
    ) -> None:
        inner = conv_module("Conv", attrs, codes, None)
        pre: nn.Module | None = None
        if isinstance(inner, nn.Sequential):
            pre, inner = inner[0], inner[1]
        if not isinstance(inner, nn.Conv2d):
            raise NotImplementedError(
                "quantized convolutions with other than 2 spatial dimensions are not simulated")
        super().__init__(inner.in_channels, inner.out_channels, inner.kernel_size,
                         inner.stride, inner.padding, inner.dilation, inner.groups, bias=False)
        with torch.no_grad():
            self.weight.data = inner.weight.data
        self.pre = pre
        self.dynamic = dynamic
        c = int(codes.shape[0])
        one = torch.ones(())
        self.register_buffer("x_scale", _float(x_scale) if x_scale is not None else one,
                             persistent=False)
        self.register_buffer("x_zp", _float(x_zp) if x_zp is not None else torch.zeros(()),
                             persistent=False)
        self.register_buffer("w_scale", _channels(w_scale, c), persistent=False)
        self.register_buffer("b_q", _channels(b_q, c) if b_q is not None else None,
                             persistent=False)
        self.register_buffer("post_bias", _channels(bias, c) if bias is not None else None,
                             persistent=False)

    def forward(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        it = iter(params)
        x_scale = next(it) if self.dynamic[0] else self.x_scale
        x_zp = next(it) if self.dynamic[1] else self.x_zp
        v = x - x_zp
        if self.pre is not None:
            v = self.pre(v)
        acc = self._conv_forward(v, self.weight, None)
        if self.b_q is not None:
            acc = acc + self.b_q
        z = acc * (x_scale * self.w_scale)
        if self.post_bias is not None:
            z = z + self.post_bias
        return z


def _channels(v: torch.Tensor | None, c: int) -> torch.Tensor:
    """A scalar or per-output-channel constant as a ``[1, C, 1, 1]`` float32 tensor."""
    assert v is not None
    t = v.to(torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise NotImplementedError(f"a per-channel parameter of {t.numel()} values for {c} channels")
    return t.reshape(1, c, 1, 1).clone()


def _const_or_refuse(graph: OnnxGraph, node: OnnxNode, name: str, what: str) -> torch.Tensor | None:
    if not name:
        return None
    value = _const(graph, name)
    if value is None:
        raise NotImplementedError(
            f"{node.operation_type} node {_node_name(node)!r} takes its {what} from the computed "
            f"value {name!r}; glam needs constant {what}s (onnxruntime's quantizer writes them "
            "as initializers)"
        )
    return value


def _codes(w: torch.Tensor, w_zp: torch.Tensor | None) -> torch.Tensor:
    """``w - w_zero_point`` (per tensor or per output channel) as float32 codes."""
    wf = w.to(torch.float32)
    if w_zp is None:
        return wf
    zp = w_zp.to(torch.float32).reshape(-1)
    return wf - (zp.reshape(-1, *([1] * (wf.dim() - 1))) if zp.numel() > 1 else zp.reshape(()))


@register("QLinearConv", 10)
def _qlinear_conv(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    names = _inputs(node, 9)
    what = ["input", "x_scale", "x_zero_point", "weight", "w_scale", "w_zero_point",
            "y_scale", "y_zero_point", "bias"]
    c = [None] + [_const_or_refuse(graph, node, names[i], what[i]) for i in range(1, 9)]
    x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b_q = c[1:]
    if x_scale is None or w is None or w_scale is None or y_scale is None:
        raise NotImplementedError(f"QLinearConv node {_node_name(node)!r} lacks a required input")
    conv = GlamQuantizedConv2d(_codes(w, w_zp), dict(node.attributes), x_scale, x_zp, w_scale,
                               b_q=b_q)
    y_range = _qrange(graph, node, names[7], onnx.TensorProto.UINT8)
    q = GlamQuantizeLinear([None, _float(y_scale), _float(y_zp)],
                           [False, False, y_zp is None], qrange=y_range, axis=1)
    return _result(nn.Sequential(conv, q), node, [names[0]])


@register("ConvInteger", 10)
def _conv_integer(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """The literal ``ConvInteger``: its tap is the integer accumulator (scales of 1).

    onnxruntime's dynamic-quantization pattern around it is fused into
    ``glam.QuantizedConv`` first (:func:`glam.importers.onnx.quant_passes.fuse_quantized_convs`),
    whose tap is the dequantized output.
    """
    names = _inputs(node, 4)
    w = _const_or_refuse(graph, node, names[1], "weight")
    w_zp = _const_or_refuse(graph, node, names[3], "w_zero_point")
    if w is None:
        raise NotImplementedError(f"ConvInteger node {_node_name(node)!r} has no weight")
    x_zp = _const(graph, names[2]) if names[2] else None
    dynamic = bool(names[2]) and x_zp is None
    module = GlamQuantizedConv2d(_codes(w, w_zp), dict(node.attributes), None, x_zp,
                                 torch.ones(()), dynamic=(False, dynamic))
    return _result(module, node, [names[0], names[2]] if dynamic else [names[0]])


@register("QuantizedConv", 1, domain=GLAM_DOMAIN)
def _quantized_conv(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """``glam.QuantizedConv(x_q, x_scale, x_zp, w_q, w_scale, w_zp, B_q, bias)``: a quantized
    convolution's dequantized output (see :class:`GlamQuantizedConv2d`)."""
    names = _inputs(node, 8)
    x_scale = _const(graph, names[1]) if names[1] else None
    x_zp = _const(graph, names[2]) if names[2] else None
    dynamic = (bool(names[1]) and x_scale is None, bool(names[2]) and x_zp is None)
    w = _const_or_refuse(graph, node, names[3], "weight")
    w_scale = _const_or_refuse(graph, node, names[4], "w_scale")
    w_zp = _const_or_refuse(graph, node, names[5], "w_zero_point")
    b_q = _const_or_refuse(graph, node, names[6], "bias")
    bias = _const_or_refuse(graph, node, names[7], "bias")
    if w is None or w_scale is None:
        raise NotImplementedError(f"QuantizedConv node {_node_name(node)!r} has no weight")
    module = GlamQuantizedConv2d(_codes(w, w_zp), dict(node.attributes), x_scale, x_zp,
                                 w_scale, b_q=b_q, bias=bias, dynamic=dynamic)
    inputs = [names[0]] + [names[i + 1] for i in (0, 1) if dynamic[i]]
    return _result(module, node, inputs)


# ================================================================== MatMul (QLinear/Integer)
class GlamQLinearMatMul(QuantOp):
    """``QLinearMatMul``: ``Q(DQ(a) @ DQ(b))``; ``a`` per-row, ``b`` per-column parameters.

    Computed as ``((a - a_zp) @ (b - b_zp)) * (a_scale * b_scale)``: the integer product is
    exact in float32, as onnxruntime's int32 accumulator is."""

    def __init__(self, consts, absent, qrange: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
        super().__init__(consts, absent)
        self.qrange = qrange

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = self.values(args)
        assert a is not None and b is not None and a_s is not None and b_s is not None
        assert y_s is not None
        if a_zp is not None:
            a = a - broadcast_param(a_zp, a, -2)
        if b_zp is not None:
            b = b - broadcast_param(b_zp, b, -1)
        acc = torch.matmul(a, b)  # exact integers, as onnxruntime's int32 accumulator
        f = acc * (broadcast_param(a_s, acc, -2) * broadcast_param(b_s, acc, -1))
        return quantize(f, y_s, _zp(y_zp, y_s), self.qrange, -1)


@register("QLinearMatMul", 10, 21)
def _qlinear_matmul(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    names = _inputs(node, 8)
    qrange = _qrange(graph, node, names[7], onnx.TensorProto.UINT8)
    return _quant_result(GlamQLinearMatMul, node, graph, 8, qrange=qrange)


class GlamMatMulInteger(QuantOp):
    """``MatMulInteger``: ``(a - a_zero_point) @ (b - b_zero_point)`` (the int32 product)."""

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        a, b, a_zp, b_zp = self.values(args)
        assert a is not None and b is not None
        if a_zp is not None:
            a = a - broadcast_param(a_zp, a, -2)
        if b_zp is not None:
            b = b - broadcast_param(b_zp, b, -1)
        return torch.matmul(a, b)


@register("MatMulInteger", 10)
def _matmul_integer(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _quant_result(GlamMatMulInteger, node, graph, 4)


# ================================================================ com.microsoft QLinear ops
class _QLinearUnary(QuantOp):
    """``Y = Q(f(DQ(X)))`` with inputs ``X, X_scale, X_zero_point, Y_scale, Y_zero_point``."""

    def __init__(self, consts, absent, qrange: tuple[int, int], **attrs: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(consts, absent)
        self.qrange = qrange
        for k, v in attrs.items():
            setattr(self, k, v)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x, x_s, x_zp, y_s, y_zp = self.values(args)
        assert x is not None and x_s is not None and y_s is not None
        f = self.fn(dequantize(x, x_s, _zp(x_zp, x_s)))
        return quantize(f, y_s, _zp(y_zp, y_s), self.qrange)


class GlamQLinearSigmoid(_QLinearUnary):
    """``com.microsoft.QLinearSigmoid``."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class GlamQLinearLeakyRelu(_QLinearUnary):
    """``com.microsoft.QLinearLeakyRelu`` (``alpha``, default 0.01)."""

    alpha: float

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.alpha)


class GlamQLinearSoftmax(_QLinearUnary):
    """``com.microsoft.QLinearSoftmax``: before opset 13 over the flattened axes from ``axis``
    (default 1), from opset 13 along ``axis`` (default -1)."""

    axis: int
    opset: int

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        if self.opset >= 13:
            return torch.softmax(x, dim=self.axis)
        ax = self.axis if self.axis >= 0 else self.axis + x.dim()
        flat = x.reshape(*x.shape[:ax], -1)
        return torch.softmax(flat, dim=-1).reshape(x.shape)


class GlamQLinearGlobalAveragePool(_QLinearUnary):
    """``com.microsoft.QLinearGlobalAveragePool`` (NCHW, or NHWC with ``channels_last``)."""

    channels_last: int

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return x.mean(dim=tuple(range(1, x.dim() - 1)), keepdim=True)
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _unary(cls: type[_QLinearUnary], **defaults: Any):  # type: ignore[no-untyped-def]
    def converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = _inputs(node, 5)
        qrange = _qrange(graph, node, names[4], onnx.TensorProto.UINT8)
        attrs = {k: type(v)(node.attributes.get(k, v)) for k, v in defaults.items()}
        return _quant_result(cls, node, graph, 5, qrange=qrange, **attrs)

    converter.__name__ = f"convert_{cls.__name__}"
    return converter


register("QLinearSigmoid", 1, domain=MS)(_unary(GlamQLinearSigmoid))
register("QLinearLeakyRelu", 1, domain=MS)(_unary(GlamQLinearLeakyRelu, alpha=0.01))
register("QLinearGlobalAveragePool", 1, domain=MS)(
    _unary(GlamQLinearGlobalAveragePool, channels_last=0))


@register("QLinearSoftmax", 1, domain=MS)
def _qlinear_softmax(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    opset = int(node.attributes.get("opset", 13))
    default_axis = -1 if opset >= 13 else 1
    names = _inputs(node, 5)
    qrange = _qrange(graph, node, names[4], onnx.TensorProto.UINT8)
    return _quant_result(GlamQLinearSoftmax, node, graph, 5, qrange=qrange,
                         axis=int(node.attributes.get("axis", default_axis)), opset=opset)


class _QLinearBinary(QuantOp):
    """``C = Q(DQ(A) op DQ(B))`` with ``A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp``."""

    def __init__(self, consts, absent, qrange: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
        super().__init__(consts, absent)
        self.qrange = qrange

    def fn(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        a, a_s, a_zp, b, b_s, b_zp, c_s, c_zp = self.values(args)
        assert a is not None and b is not None and a_s is not None and b_s is not None
        assert c_s is not None
        f = self.fn(dequantize(a, a_s, _zp(a_zp, a_s)), dequantize(b, b_s, _zp(b_zp, b_s)))
        return quantize(f, c_s, _zp(c_zp, c_s), self.qrange)


class GlamQLinearAdd(_QLinearBinary):
    """``com.microsoft.QLinearAdd``."""

    def fn(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class GlamQLinearMul(_QLinearBinary):
    """``com.microsoft.QLinearMul``."""

    def fn(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


def _binary(cls: type[_QLinearBinary]):  # type: ignore[no-untyped-def]
    def converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = _inputs(node, 8)
        qrange = _qrange(graph, node, names[7], onnx.TensorProto.UINT8)
        return _quant_result(cls, node, graph, 8, qrange=qrange)

    converter.__name__ = f"convert_{cls.__name__}"
    return converter


register("QLinearAdd", 1, domain=MS)(_binary(GlamQLinearAdd))
register("QLinearMul", 1, domain=MS)(_binary(GlamQLinearMul))


class GlamQLinearConcat(QuantOp):
    """``com.microsoft.QLinearConcat``: ``Y = Q(concat(DQ(X_i)))``; inputs ``Y_scale,
    Y_zero_point`` then ``(X_i, X_i_scale, X_i_zero_point)`` triples."""

    def __init__(self, consts, absent, qrange: tuple[int, int], axis: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(consts, absent)
        self.qrange = qrange
        self.axis = axis

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        vals = self.values(args)
        y_s, y_zp = vals[0], vals[1]
        assert y_s is not None
        parts = []
        for i in range(2, len(vals), 3):
            x, x_s, x_zp = vals[i], vals[i + 1], vals[i + 2]
            assert x is not None and x_s is not None
            parts.append(dequantize(x, x_s, _zp(x_zp, x_s)))
        return quantize(torch.cat(parts, dim=self.axis), y_s, _zp(y_zp, y_s), self.qrange)


@register("QLinearConcat", 1, domain=MS)
def _qlinear_concat(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    n = len(node.input_values)
    if n < 5 or (n - 2) % 3:
        raise NotImplementedError(
            f"QLinearConcat node {_node_name(node)!r} has {n} inputs; expected Y_scale, "
            "Y_zero_point and (X, X_scale, X_zero_point) triples"
        )
    names = _inputs(node, n)
    qrange = _qrange(graph, node, names[1], onnx.TensorProto.UINT8)
    return _quant_result(GlamQLinearConcat, node, graph, n, qrange=qrange,
                         axis=int(node.attributes.get("axis", 1)))
