"""ONNX graph passes for quantized models, run before onnx2torch converts them.

* :func:`fold_quantized`: ``QuantizeLinear`` / ``DequantizeLinear`` of constants become
  initializers, computed exactly as the ONNX spec defines (float32, round half to even). A
  QDQ graph's ``Conv`` then reads float weights and bias like any float ``Conv`` (onnx2torch
  needs them constant), and a QOperator graph's weights quantized at run time
  (``QuantizeLinear(weight)``) become constant codes.
* :func:`fuse_quantized_convs`: a QDQ ``DequantizeLinear -> Conv`` and the dynamic
  quantizer's ``ConvInteger -> Cast -> Mul(x_scale * w_scale) [-> Add(bias)]`` become one
  ``glam.QuantizedConv`` node, a convolution of the integer codes (exact, like
  onnxruntime's int32 accumulator) whose output, the tap, is dequantized.
* :func:`infer_quantized_shapes`: shapes through the operators onnx's shape inference
  does not know (``com.microsoft`` QLinear ops, ``glam.QuantizedConv``);

Every pass keeps node and value names of what it does not replace.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from glam.importers.onnx.fake_quant import INT_RANGES, fold_dequantize, fold_quantize
from onnx import helper, numpy_helper

__all__ = [
    "float_name",
    "fold_quantized",
    "fuse_quantized_convs",
    "infer_quantized_shapes",
]

MS = "com.microsoft"
#: Domain of glam's fused operators (:mod:`glam.importers.onnx.quantized` converts them).
GLAM_DOMAIN = "glam"
#: Operators that make a graph quantized.
QUANT_OPS = {
    ("", "QuantizeLinear"), ("", "DequantizeLinear"), ("", "DynamicQuantizeLinear"),
    ("", "QLinearConv"), ("", "QLinearMatMul"), ("", "ConvInteger"), ("", "MatMulInteger"),
    *((MS, op) for op in ("QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
                          "QLinearLeakyRelu", "QLinearSoftmax", "QLinearGlobalAveragePool",
                          "QLinearAveragePool", "QLinearReduceMean", "QLinearWhere", "QGemm",
                          "QLinearConv", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")),
}
#: Suffixes onnxruntime's quantizer appends to a weight's name.
_SUFFIXES = ("_DequantizeLinear_Output", "_dequantized", "_quantized")


def float_name(name: str) -> str:
    """The float weight's name a quantizer derived ``name`` from (``w_quantized`` -> ``w``)."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


# ------------------------------------------------------------------------------ folding
def _fold_one(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    names = list(node.input) + ["", ""]
    if not all(n in inits for n in names[:2]) or (names[2] and names[2] not in inits):
        return None
    if _attr(node, "block_size", 0):
        return None
    x = numpy_helper.to_array(inits[names[0]])
    scale = numpy_helper.to_array(inits[names[1]])
    zp_t = inits.get(names[2]) if names[2] else None
    zp = numpy_helper.to_array(zp_t) if zp_t is not None else np.zeros((), np.int64)
    axis = int(_attr(node, "axis", 1))
    if node.op_type == "DequantizeLinear":
        if x.dtype.kind not in "iu" or _attr(node, "output_dtype", 0) not in (0, 1):
            return None
        return fold_dequantize(x, scale, zp, axis)
    etype = (int(zp_t.data_type) if zp_t is not None
             else int(_attr(node, "output_dtype", 0) or onnx.TensorProto.UINT8))
    if etype not in INT_RANGES or etype == onnx.TensorProto.INT32 or x.dtype != np.float32:
        return None
    if etype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return None  # no numpy dtype to store the folded codes in
    dtype = onnx.helper.tensor_dtype_to_np_dtype(etype)
    return fold_quantize(x, scale, zp, axis, INT_RANGES[etype], dtype)


def fold_quantized(
    model: onnx.ModelProto, ops: tuple[str, ...] = ("QuantizeLinear", "DequantizeLinear")
) -> int:
    """Fold ``QuantizeLinear`` / ``DequantizeLinear`` nodes (those of ``ops``) of constants
    into initializers.

    Nodes are visited in graph (topological) order, so a ``QuantizeLinear`` of a constant
    followed by its ``DequantizeLinear`` folds completely. A node whose output is a graph
    output is kept. The new initializer takes the node's output name.

    Returns
    -------
    int
        How many nodes were folded.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    inits = {t.name: t for t in graph.initializer}
    add_inputs = model.ir_version < 4
    keep: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        value = None
        if (_domain(node) == "" and node.op_type in ops
                and len(node.output) == 1 and node.output[0] not in outputs):
            value = _fold_one(node, inits)
        if value is None:
            keep.append(node)
            continue
        tensor = numpy_helper.from_array(value, node.output[0])
        graph.initializer.append(tensor)
        inits[tensor.name] = graph.initializer[-1]
        if add_inputs:
            graph.input.append(helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
    return folded


# ------------------------------------------------------------------ dynamic convolutions
def _producer(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def _only(consumers: dict[str, list[onnx.NodeProto]], name: str, op: str) -> onnx.NodeProto | None:
    users = consumers.get(name, [])
    if len(users) == 1 and users[0].op_type == op and _domain(users[0]) == "":
        return users[0]
    return None


def _const_value(name: str, inits: dict[str, onnx.TensorProto],
                 producer: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """An initializer, or ``Reshape(initializer, initializer)``, as numpy; else ``None``."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producer.get(name)
    if node is not None and node.op_type == "Reshape" and len(node.input) == 2 and all(
            n in inits for n in node.input):
        data = numpy_helper.to_array(inits[node.input[0]])
        shape = [int(d) for d in numpy_helper.to_array(inits[node.input[1]])]
        shape = [data.shape[i] if d == 0 and not _attr(node, "allowzero", 0) else d
                 for i, d in enumerate(shape)]
        try:
            return data.reshape(shape)
        except ValueError:
            return None
    return None


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """A scalar or a ``[C]``, ``[C,1,1]``, ``[1,C,1,1]`` array as a ``[C]`` vector."""
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=value.dtype)
    if value.size == channels and value.ndim >= 3 and value.shape[-2:] == (1, 1):
        if value.ndim == 3 or value.shape[0] == 1:
            return value.reshape(channels)
    return None


def _dq_of_constant(name: str, inits: dict[str, onnx.TensorProto],
                    producer: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The ``DequantizeLinear`` of constants that produces ``name``, or ``None``."""
    node = producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or _domain(node) != "":
        return None
    if _attr(node, "block_size", 0) or not all(n in inits for n in node.input if n):
        return None
    return node


def _array(name: str, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]) if name and name in inits else None


def _qdq_conv(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
              producer: dict[str, onnx.NodeProto]) -> tuple[list[str], list[onnx.TensorProto]] | None:
    """``QuantizedConv`` inputs for ``DQ(x_q) -> Conv(., DQ(W_q), DQ(B_q) | bias)``."""
    names = list(node.input) + [""]
    dqx = producer.get(names[0])
    dqw = _dq_of_constant(names[1], inits, producer)
    if dqx is None or dqx.op_type != "DequantizeLinear" or _domain(dqx) != "" or dqw is None:
        return None
    x_in = list(dqx.input) + [""]
    x_scale, x_zp = _array(x_in[1], inits), _array(x_in[2], inits)
    if x_scale is None or x_scale.size != 1 or (x_zp is not None and x_zp.size != 1):
        return None
    if _attr(dqx, "block_size", 0):
        return None
    w_in = list(dqw.input) + [""]
    w_scale = _array(w_in[1], inits)
    channels = int(inits[w_in[0]].dims[0])
    if w_scale is None or (w_scale.size != 1 and (w_scale.size != channels
                                                  or int(_attr(dqw, "axis", 1)) != 0)):
        return None
    extra: list[onnx.TensorProto] = []
    b_q, bias = "", ""
    if names[2]:
        dqb = _dq_of_constant(names[2], inits, producer)
        if dqb is not None:
            b_in = list(dqb.input) + [""]
            b_scale, b_zp = _array(b_in[1], inits), _array(b_in[2], inits)
            want = (x_scale.astype(np.float32).reshape(()) * w_scale.astype(np.float32))
            if (b_scale is not None and b_scale.size == want.size and np.array_equal(
                    b_scale.reshape(-1), want.reshape(-1).astype(np.float32))
                    and (b_zp is None or not np.any(b_zp))):
                b_q = b_in[0]  # in units of x_scale * w_scale: added to the int accumulator
        if not b_q:
            if dqb is not None:
                value = fold_dequantize(
                    numpy_helper.to_array(inits[dqb.input[0]]),
                    numpy_helper.to_array(inits[dqb.input[1]]),
                    _array((list(dqb.input) + ["", ""])[2], inits) if len(dqb.input) > 2
                    else np.zeros((), np.int64), int(_attr(dqb, "axis", 1)))
                extra.append(numpy_helper.from_array(value, names[2]))
                bias = names[2]
            elif names[2] in inits:
                bias = names[2]
            else:
                return None
    return [x_in[0], x_in[1], x_in[2], w_in[0], w_in[1], w_in[2], b_q, bias], extra


def _dynamic_conv(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                  producer: dict[str, onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]],
                  outputs: set[str]) -> tuple[list[str], list[onnx.NodeProto], str,
                                              list[onnx.TensorProto]] | None:
    """``QuantizedConv`` inputs, replaced nodes and output for the dynamic pattern."""
    names = list(node.input) + ["", ""]
    x_q, w_name, x_zp, w_zp_name = names[:4]
    if w_name not in inits or (w_zp_name and w_zp_name not in inits):
        return None
    if node.output[0] in outputs:
        return None
    cast = _only(consumers, node.output[0], "Cast")
    if cast is None or _attr(cast, "to") != onnx.TensorProto.FLOAT or cast.output[0] in outputs:
        return None
    mul = _only(consumers, cast.output[0], "Mul")
    if mul is None:
        return None
    scale_name = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
    smul = producer.get(scale_name)
    if smul is None or smul.op_type != "Mul":
        return None
    w_scale_name = next((n for n in smul.input if n in inits), None)
    x_scale = next((n for n in smul.input if n not in inits), None)
    if w_scale_name is None or x_scale is None or smul.input[0] != x_scale:
        return None  # x_scale * w_scale, in that order (the float product onnxruntime takes)
    channels = int(inits[w_name].dims[0])
    if _per_channel(numpy_helper.to_array(inits[w_scale_name]), channels) is None:
        return None
    replaced = [cast, mul]
    out_name = mul.output[0]
    extra: list[onnx.TensorProto] = []
    bias = ""
    add = _only(consumers, out_name, "Add") if out_name not in outputs else None
    if add is not None:
        other = add.input[1] if add.input[0] == out_name else add.input[0]
        value = _const_value(other, inits, producer)
        vec = _per_channel(value, channels) if value is not None and value.ndim >= 3 else None
        if vec is not None and vec.dtype == np.float32:
            bias = f"{add.output[0]}_bias"
            extra.append(numpy_helper.from_array(vec, bias))
            replaced.append(add)
            out_name = add.output[0]
    inputs = [x_q, x_scale, x_zp, w_name, w_scale_name, w_zp_name, "", bias]
    return inputs, replaced, out_name, extra


def fuse_quantized_convs(model: onnx.ModelProto) -> int:
    """Rewrite quantized convolutions as ``glam.QuantizedConv`` nodes, in place.

    Two patterns, the QDQ one and onnxruntime's dynamic quantization::

        DequantizeLinear(x_q, x_scale, x_zp) -> Conv(., DQ(W_q, w_scale, w_zp), DQ(B_q) | bias)

        ConvInteger(x_q, W_q, x_zp, w_zp) -> Cast(to=float) -> Mul(., x_scale * w_scale)
            [-> Add(., bias)]

    become ``glam.QuantizedConv(x_q, x_scale, x_zp, W_q, w_scale, w_zp, B_q, bias)`` named
    after the ``Conv`` (resp. ``Mul`` / ``Add``) output: the convolution of the integer
    codes, exact like onnxruntime's int32 accumulator, times ``x_scale * w_scale``
    (:class:`glam.importers.onnx.quantized.GlamQuantizedConv2d`); the tap is that dequantized
    output. The bias is added to the accumulator when its scale is ``x_scale * w_scale``
    (what onnxruntime's quantizer writes), else in float afterwards. A ``DequantizeLinear``
    that nothing else reads is removed. Other convolutions are left alone.

    Returns
    -------
    int
        How many convolutions were rewritten.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    consumers = _consumers(graph)
    producer = _producer(graph)
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    index = {id(n): i for i, n in enumerate(graph.node)}
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        if _domain(node) != "":
            continue
        if node.op_type == "Conv":
            found = _qdq_conv(node, inits, producer)
            if found is None:
                continue
            inputs, extra = found
            out_name, replaced = node.output[0], []
        elif node.op_type == "ConvInteger":
            dyn = _dynamic_conv(node, inits, producer, consumers, outputs)
            if dyn is None:
                continue
            inputs, replaced, out_name, extra = dyn
        else:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        while inputs and not inputs[-1]:
            inputs.pop()
        replace[index[id(node)]] = helper.make_node(
            "QuantizedConv", inputs, [out_name], name=node.name or out_name,
            domain=GLAM_DOMAIN, **attrs)
        drop.update(index[id(n)] for n in replaced)
        new_inits.extend(extra)
    if not replace:
        return 0
    kept_inits = {t.name for t in new_inits}
    new_nodes = [replace.get(i, n) for i, n in enumerate(graph.node) if i not in drop]
    del graph.node[:]
    graph.node.extend(new_nodes)
    keep = [t for t in graph.initializer if t.name not in kept_inits]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    if not any(o.domain == GLAM_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(GLAM_DOMAIN, 1))
    _drop_dead(model)
    return len(replace)


def _drop_dead(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nothing reads (the scale ``Mul`` and bias ``Reshape``)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {n for node in graph.node for n in node.input} | outputs
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {n for node in graph.node for n in node.input} | outputs
    kept_inits = [t for t in graph.initializer if t.name in used]
    if len(kept_inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)


# ------------------------------------------------------------------------ shape inference
_MS_SAME_SHAPE = {"QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"}


def _dims(info: onnx.ValueInfoProto) -> list[int | None] | None:
    t = info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim]


def _broadcast(a: list[int | None], b: list[int | None]) -> list[int | None]:
    n = max(len(a), len(b))
    a = [1] * (n - len(a)) + a
    b = [1] * (n - len(b)) + b
    out: list[int | None] = []
    for x, y in zip(a, b, strict=True):
        out.append(y if x == 1 else x if y == 1 else x if x == y else None)
    return out


def _conv_dims(x: list[int | None], w: list[int], node: onnx.NodeProto) -> list[int | None]:
    rank = len(w) - 2
    pads = list(_attr(node, "pads", None) or [0] * (2 * rank))
    strides = list(_attr(node, "strides", None) or [1] * rank)
    dil = list(_attr(node, "dilations", None) or [1] * rank)
    same = str(_attr(node, "auto_pad", b"NOTSET"), "utf-8") if isinstance(
        _attr(node, "auto_pad", b"NOTSET"), bytes) else str(_attr(node, "auto_pad", "NOTSET"))
    out: list[int | None] = [x[0] if x else None, int(w[0])]
    for i in range(rank):
        size = x[2 + i] if len(x) > 2 + i else None
        if size is None:
            out.append(None)
        elif same.startswith("SAME"):
            out.append(-(-size // strides[i]))
        else:
            extent = (w[2 + i] - 1) * dil[i] + 1
            pad = 0 if same == "VALID" else pads[i] + pads[i + rank]
            out.append((size + pad - extent) // strides[i] + 1)
    return out


def _inferred(node: onnx.NodeProto, known: dict[str, onnx.ValueInfoProto],
              inits: dict[str, onnx.TensorProto]) -> tuple[int, list[int | None]] | None:
    """``(element type, dims)`` of the output of a quantized operator onnx cannot infer."""
    def dims(name: str) -> list[int | None] | None:
        if name in inits:
            return [int(d) for d in inits[name].dims]
        return _dims(known[name]) if name in known else None

    def qtype(name: str) -> int:
        return int(inits[name].data_type) if name in inits else onnx.TensorProto.UINT8

    inp = list(node.input) + [""] * 8
    dom = _domain(node)
    if dom == GLAM_DOMAIN and node.op_type == "QuantizedConv":
        x, w = dims(inp[0]), dims(inp[3])
        return (onnx.TensorProto.FLOAT, _conv_dims(x, w, node)) if x and w else None
    if dom != MS:
        return None
    if node.op_type in _MS_SAME_SHAPE:
        x = dims(inp[0])
        return (qtype(inp[4]), x) if x is not None else None
    if node.op_type == "QLinearGlobalAveragePool":
        x = dims(inp[0])
        if x is None:
            return None
        last = bool(_attr(node, "channels_last", 0))
        return qtype(inp[4]), ([x[0]] + [1] * (len(x) - 2) + [x[-1]] if last
                               else x[:2] + [1] * (len(x) - 2))
    if node.op_type in ("QLinearAdd", "QLinearMul"):
        a, b = dims(inp[0]), dims(inp[3])
        return (qtype(inp[7]), _broadcast(a, b)) if a is not None and b is not None else None
    if node.op_type == "QLinearConcat":
        parts = [dims(n) for n in node.input[2::3]]
        if not parts or any(p is None for p in parts):
            return None
        axis = int(_attr(node, "axis", 1))
        out = list(parts[0])  # type: ignore[arg-type]
        ax = axis if axis >= 0 else axis + len(out)
        sizes = [p[ax] for p in parts]  # type: ignore[index]
        out[ax] = None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]
        return qtype(inp[1]), out
    return None


def infer_quantized_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference through the operators onnx does not know (``com.microsoft`` QLinear
    ops, ``glam.QuantizedConv``), so that converters downstream of them that read an input's
    rank (onnx2torch's ``MaxPool``: OmniSR's QOperator file) find it.

    Alternates onnx shape inference with this module's rules for those operators until
    nothing new is learned. Returns the (new) model; a float model is returned unchanged.
    """
    from glam.importers.onnx.passes import infer_shapes

    if not any(_domain(n) in (MS, GLAM_DOMAIN) for n in model.graph.node):
        return model
    for _ in range(len(model.graph.node) + 1):
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        known = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)
                 if v.type.tensor_type.HasField("shape")}
        added = 0
        for node in graph.node:
            if not node.output or node.output[0] in known:
                continue
            found = _inferred(node, known, inits)
            if found is None:
                continue
            etype, dims = found
            info = helper.make_tensor_value_info(node.output[0], etype, dims)
            graph.value_info.append(info)
            known[info.name] = info
            added += 1
        if not added:
            return model
        model = infer_shapes(model)
    return model
