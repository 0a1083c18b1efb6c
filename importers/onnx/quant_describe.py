"""What a quantized ONNX model is: :func:`describe_quantization` for ``glam inspect`` and
the archive (format, integer types, per-channel, operator counts), and the quantization
step of each output (:func:`output_step`), the unit of the import's parity check
(:mod:`glam.importers.quant_parity`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from glam.importers.onnx.fake_quant import TYPE_NAMES
from glam.importers.onnx.quant_passes import MS, QUANT_OPS, _attr, _consumers, _domain, _producer
from onnx import numpy_helper

__all__ = ["describe_quantization", "output_step"]

#: Operators that move values without arithmetic: a value on a quantization grid stays on it.
_GRID_PRESERVING = {
    "DepthToSpace", "SpaceToDepth", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
    "Identity", "Slice", "Split", "Concat", "Relu", "MaxPool", "Pad", "Gather",
}
def _type_of(name: str, inits: dict[str, onnx.TensorProto]) -> str | None:
    t = inits.get(name)
    if t is None:
        return None
    return TYPE_NAMES.get(int(t.data_type))


def _scale(name: str, inits: dict[str, onnx.TensorProto]) -> float | list[float] | None:
    t = inits.get(name)
    if t is None:
        return None
    v = numpy_helper.to_array(t).astype(np.float64).reshape(-1)
    return float(v[0]) if v.size == 1 else [float(s) for s in v]


def output_step(model: onnx.ModelProto, output: str) -> dict[str, Any] | None:
    """The quantization step of graph output ``output``: the scale of the
    ``DequantizeLinear`` that produces it, seen through operators that move values without
    arithmetic (``DepthToSpace``, ``Reshape``, ``Transpose``...).

    Returns ``{"step": scale, "through": [ops]}`` (a list of per-channel scales for a
    per-axis output), or ``None`` when the output does not come from a constant-scale
    ``DequantizeLinear`` that way (a float operator or a dynamic quantization lies between).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = _producer(graph)
    through: list[str] = []
    name = output
    for _ in range(len(graph.node) + 1):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "DequantizeLinear" and _domain(node) == "":
            step = _scale(node.input[1], inits)
            if step is None:
                return None
            return {"step": step, "axis": int(_attr(node, "axis", 1)), "through": through}
        if node.op_type not in _GRID_PRESERVING or _domain(node) != "":
            return None
        data = [n for n in node.input[:1] if n and n not in inits]
        if len(data) != 1:
            return None
        through.append(node.op_type)
        name = data[0]
    return None


def describe_quantization(model: onnx.ModelProto) -> dict[str, Any] | None:
    """What a quantized model is, for ``glam inspect`` and the parity check; ``None`` for a
    float model.

    Returns
    -------
    dict or None
        ``formats`` (``QDQ``, ``QOperator``, ``dynamic``), ``ops`` (count per quantization
        operator), ``activation_types`` and ``weight_types`` (integer type names),
        ``per_channel``, ``outputs`` (graph output -> :func:`output_step` or ``None``) and
        ``simulation`` (one line: how glam computes it).
    """
    graph = model.graph
    ops: Counter[str] = Counter()
    for node in graph.node:
        dom = _domain(node)
        if (dom, node.op_type) in QUANT_OPS:
            ops[f"{dom}.{node.op_type}" if dom else node.op_type] += 1
    if not ops:
        return None
    inits = {t.name: t for t in graph.initializer}
    formats: list[str] = []
    names = set(ops)
    if any("QLinear" in n or n.endswith("QGemm") for n in names):
        formats.append("QOperator")
    if names & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                f"{MS}.DynamicQuantizeMatMul", f"{MS}.MatMulIntegerToFloat"}:
        formats.append("dynamic")
    consumers = _consumers(graph)
    qdq = any(
        node.op_type == "DequantizeLinear" and any(
            (_domain(u), u.op_type) not in QUANT_OPS for u in consumers.get(node.output[0], []))
        and any((_domain(u), u.op_type) in {("", "Conv"), ("", "ConvTranspose"), ("", "MatMul"),
                                            ("", "Gemm")}
                for u in consumers.get(node.output[0], []))
        for node in graph.node
    )
    if qdq or not formats:
        formats.insert(0, "QDQ")
    act: set[str] = set()
    weight: set[str] = set()
    per_channel = False
    for node in graph.node:
        dom = _domain(node)
        if (dom, node.op_type) not in QUANT_OPS:
            continue
        inp = list(node.input)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and dom == "":
            t = _type_of(inp[2], inits) if len(inp) > 2 and inp[2] else "uint8"
            target = weight if inp[0] in inits else act
            if t and t != "int32":
                target.add(t)
            if len(inp) > 1 and isinstance(_scale(inp[1], inits), list):
                per_channel = True
        elif node.op_type == "QLinearConv":
            for i, target in ((2, act), (5, weight)):
                t = _type_of(inp[i], inits) if len(inp) > i and inp[i] else None
                if t:
                    target.add(t)
            if len(inp) > 4 and isinstance(_scale(inp[4], inits), list):
                per_channel = True
        elif node.op_type in ("ConvInteger", "MatMulInteger"):
            t = _type_of(inp[1], inits)
            if t:
                weight.add(t)
        elif node.op_type == "DynamicQuantizeLinear":
            act.add("uint8")
    return {
        "formats": formats,
        "ops": dict(sorted(ops.items())),
        "activation_types": sorted(act),
        "weight_types": sorted(weight),
        "per_channel": per_channel,
        "outputs": {o.name: output_step(model, o.name) for o in graph.output},
        "simulation": (
            "fake quantization in float32 (round half to even, saturate); straight-through "
            "gradient for the rounding, zero gradient where a value saturates"
        ),
    }
