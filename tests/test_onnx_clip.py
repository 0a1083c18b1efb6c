"""ONNX ``Clip`` with an absent optional bound (``""``) or a computed one converts exactly."""

from __future__ import annotations

from pathlib import Path

import glam.importers
import numpy as np
import onnx
import pytest
from numerics import assert_close, assert_error_within
from onnx import TensorProto, helper, numpy_helper

#: As tests/test_onnx_import.py: a converted graph against onnxruntime, float32 epsilons of
#: the output's largest magnitude: measured 6.0 (parity), 1.54; x4, rounded up.
ULPS_ORT = 32

ort = pytest.importorskip("onnxruntime")


def _model(path: Path, clip_inputs: list[str], extra: list[onnx.NodeProto]) -> Path:
    """conv (3->12) -> Clip(...) -> DepthToSpace(2, CRD): a x2 SR net."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (12, 3, 3, 3)).astype(np.float32), "conv.weight")
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        *extra,
        helper.make_node("Clip", ["c", *clip_inputs], ["k"], name="clip"),
        helper.make_node("DepthToSpace", ["k"], ["output"], blocksize=2, mode="CRD", name="d2s"),
    ]
    graph = helper.make_graph(
        nodes, "clip", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, None, None])], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
        np.array(value, dtype=np.float32)))


@pytest.mark.numerics
@pytest.mark.parametrize("case", ["min-only", "max-only", "computed-max"])
def test_clip_with_absent_or_computed_bounds(tmp_path: Path, case: str) -> None:
    if case == "min-only":  # what the legacy exporter writes for clamp(min=eps): OmniSR
        path = _model(tmp_path / "m.onnx", ["lo", ""], [_const("lo", 0.05)])
    elif case == "max-only":
        path = _model(tmp_path / "m.onnx", ["", "hi"], [_const("hi", 0.3)])
    else:  # max = ReduceMax(conv output): a bound computed at run time
        path = _model(tmp_path / "m.onnx", ["lo", "hi"], [
            _const("lo", -0.2),
            helper.make_node("ReduceMax", ["c"], ["hi"], keepdims=0, name="rmax"),
        ])
    m = glam.importers.load(path, input_range=1)
    # clamp and conv through onnxruntime (MLAS) and torch: float32 rounding of outputs ~1
    assert_error_within(m.parity.max_abs_error, ulps=ULPS_ORT, label="parity")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, 11, 9), dtype=np.float32)
    import torch

    with torch.no_grad():
        y = m(torch.from_numpy(x))[0].numpy()
    assert_close(y, sess.run(None, {"input": x})[0], ulps=ULPS_ORT, err_msg="against onnxruntime")
