"""Helpers building tiny ONNX graphs for the ONNX import tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def value(name: str, shape: Sequence[int | str | None] | None, dtype: int = FLOAT):
    """A ``ValueInfoProto`` (``None`` shape: unknown rank; ``None``/str dims: symbolic)."""
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def init(name: str, array: np.ndarray | Sequence[float] | Sequence[int]) -> TensorProto:
    """An initializer; python int sequences become int64, float sequences float32."""
    arr = np.asarray(array)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return numpy_helper.from_array(arr, name)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
    opset: int = 18,
    extra_opsets: dict[str, int] | None = None,
    name: str = "g",
) -> onnx.ModelProto:
    """A model at ``opset`` with the lowest IR version that opset needs (ORT-loadable)."""
    opsets = [helper.make_opsetid("", opset)]
    for domain, version in (extra_opsets or {}).items():
        opsets.append(helper.make_opsetid(domain, version))
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    ir = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    return helper.make_model(graph, opset_imports=opsets, ir_version=max(ir, 3))


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """Write ``model`` to ``folder / name`` and return the path."""
    path = Path(folder) / name
    onnx.save(model, str(path))
    return path


def single_op(
    op_type: str,
    x_shape: Sequence[int | str | None],
    extra_inputs: Sequence[tuple[str, np.ndarray | Sequence[float] | Sequence[int] | None]] = (),
    opset: int = 18,
    n_outputs: int = 1,
    domain: str = "",
    **attrs,
) -> onnx.ModelProto:
    """``op_type(x, *extra_inputs)`` with constant extra inputs (``None``: empty input)."""
    names = ["x"]
    inits = []
    for nm, arr in extra_inputs:
        if arr is None:
            names.append("")
        else:
            names.append(nm)
            inits.append(init(nm, arr))
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(
        op_type, names, outs, name=f"{op_type.lower()}_node", domain=domain, **attrs
    )
    return make_model(
        [node],
        [value("x", x_shape)],
        [value(o, None) for o in outs],
        inits,
        opset=opset,
    )
