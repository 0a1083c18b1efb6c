"""Quantized ONNX operators against onnxruntime, the straight-through gradient, and the
parity rule in output quantization steps (docs/quantized.md).

Every operator runs as a one-node graph in glam's converted FX graph and in onnxruntime on
the same integer codes. Operators whose result onnxruntime computes exactly
(``QuantizeLinear``, ``DequantizeLinear``, ``DynamicQuantizeLinear``, ``ConvInteger``,
``MatMulInteger``) must match bit for bit; those whose integer kernels round differently
(every ``QLinear*``) must lie within one code everywhere (a rounding tie) and match on at
least 99 % of the values (measured: all but a handful of values match exactly).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx_graphs as og
import pytest
import torch
from glam.errors import ParityError
from glam.importers.model import RawGraph
from glam.importers.onnx.backend import load_onnx
from glam.importers.onnx.fake_quant import dequantize, dynamic_params, fake_quantize, quantize
from glam.importers.quant_parity import MIN_SHARE_WITHIN_ONE, step_parity
from onnx import TensorProto, helper

U8, I8, I32, F = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, TensorProto.FLOAT
NP = {U8: np.uint8, I8: np.int8, I32: np.int32}
RANGE = {U8: (0, 255), I8: (-128, 127)}
MS = "com.microsoft"


def _codes(shape: tuple[int, ...], t: int, seed: int) -> np.ndarray:
    lo, hi = RANGE[t]
    return np.random.default_rng(seed).integers(lo, hi + 1, size=shape).astype(NP[t])


def _zp(t: int, value: int) -> np.ndarray:
    return np.asarray(value, dtype=NP[t])


def _single(op: str, inputs: list[tuple[str, int, tuple[int, ...] | None]],
            inits: dict[str, np.ndarray], n_out: int = 1, domain: str = "",
            model_opset: int = 13, **attrs: object) -> onnx.ModelProto:
    """One ``op`` node: ``inputs`` are ``(name, type, shape)`` graph inputs or initializer
    names (shape ``None``); outputs have unknown type and shape."""
    graph_inputs = [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in inputs if s]
    names = [n for n, _, _ in inputs]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name=f"{op}_node", domain=domain, **attrs)
    return og.make_model([node], graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs],
                         [og.init(k, v) for k, v in inits.items()], opset=model_opset,
                         extra_opsets={MS: 1} if domain == MS else None)


def _run(model: onnx.ModelProto, feeds: list[np.ndarray], tmp_path: Path
         ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    raw = load_onnx(og.save(model, tmp_path))
    with torch.no_grad():
        out = raw.gm(*[torch.from_numpy(f.astype(np.float32)) for f in feeds])
    ours = [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]
    ref = raw.reference(feeds)
    return ours, ref


def _exact(ours: list[np.ndarray], ref: list[np.ndarray]) -> None:
    for a, r in zip(ours, ref, strict=True):
        assert a.shape == r.shape
        np.testing.assert_array_equal(a.astype(np.float64), r.astype(np.float64))


def _within_one_code(ours: list[np.ndarray], ref: list[np.ndarray]) -> None:
    for a, r in zip(ours, ref, strict=True):
        assert a.shape == r.shape
        d = np.abs(a.astype(np.float64) - r.astype(np.float64))
        assert d.max() <= 1, f"{d.max()} codes off"
        assert np.mean(d == 0) >= 0.99, f"only {np.mean(d == 0):.4f} of the codes match"


# ======================================================================= QuantizeLinear
_Q_CASES = [
    # (id, opset, output type, scale, zero point, axis)
    ("u8-tensor-13", 13, U8, np.float32(0.02), 128, None),
    ("i8-tensor-13", 13, I8, np.float32(0.03), -5, None),
    ("i8-axis1-13", 13, I8, np.array([0.01, 0.02, 0.05, 0.1], np.float32),
     np.array([0, 3, -4, 10], np.int8), 1),
    ("u8-axis1-19", 19, U8, np.array([0.01, 0.02, 0.05, 0.1], np.float32),
     np.array([0, 30, 128, 250], np.uint8), 1),
    ("u8-no-zero-point-21", 21, U8, np.float32(0.015), None, None),
    ("i8-axis-minus3-21", 21, I8, np.array([0.01, 0.02, 0.05, 0.1], np.float32),
     np.array([0, 3, -4, 10], np.int8), -3),
]


@pytest.mark.parametrize(("opset", "qtype", "scale", "zp", "axis"),
                         [c[1:] for c in _Q_CASES], ids=[c[0] for c in _Q_CASES])
def test_quantize_dequantize_linear_match_ort_exactly(
    opset: int, qtype: int, scale: np.ndarray, zp: object, axis: int | None, tmp_path: Path
) -> None:
    """QuantizeLinear (round half to even, saturate) and DequantizeLinear, bit for bit."""
    shape = (1, 4, 5, 6)
    rng = np.random.default_rng(0)
    s = np.broadcast_to(np.asarray(scale).reshape(-1, 1, 1) if np.ndim(scale) else scale,
                        shape[1:])
    # random values, exact half steps (ties) and values far outside the range (saturation)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x[0, :, 0, :] = ((np.arange(6) - 2.5)[None, :] * s[:, 0, :]).astype(np.float32)
    x[0, :, 1, :3] = 1e4
    x[0, :, 1, 3:] = -1e4
    inits: dict[str, np.ndarray] = {"s": np.asarray(scale)}
    names = [("x", F, shape), ("s", F, None)]
    if zp is not None:
        inits["zp"] = np.asarray(zp, dtype=NP[qtype])
        names.append(("zp", qtype, None))
    attrs = {} if axis is None else {"axis": axis}
    q = _single("QuantizeLinear", names, inits, model_opset=opset, **attrs)
    ours, ref = _run(q, [x], tmp_path)
    _exact(ours, ref)
    assert ref[0].dtype == np.dtype(NP[qtype])
    # DequantizeLinear of the codes, same parameters
    codes = ref[0]
    dq = _single("DequantizeLinear", [("x", qtype, shape)] + names[1:], inits,
                 model_opset=opset, **attrs)
    ours, ref = _run(dq, [codes], tmp_path)
    _exact(ours, ref)


def test_dequantize_int32_bias_matches_ort(tmp_path: Path) -> None:
    b = np.array([-306, -3384, 18586, 2**20 + 3], np.int32)
    model = _single("DequantizeLinear", [("b", I32, (4,)), ("s", F, None)],
                    {"s": np.array([4.1e-05, 3.9e-05, 2.4e-05, 1e-3], np.float32)}, axis=0)
    ours, ref = _run(model, [b], tmp_path)
    _exact(ours, ref)


@pytest.mark.parametrize("low", [-2.0, 0.25])
def test_dynamic_quantize_linear_matches_ort(low: float, tmp_path: Path) -> None:
    """Codes, scale and zero point, including an input above 0 (the range then includes 0)."""
    x = (low + np.random.default_rng(1).random((1, 3, 7, 5)) * 3).astype(np.float32)
    model = _single("DynamicQuantizeLinear", [("x", F, x.shape)], {}, n_out=3)
    ours, ref = _run(model, [x], tmp_path)
    _exact(ours, ref)


# =========================================================================== QLinearConv
@pytest.mark.parametrize(("wtype", "per_channel", "pads", "group"), [
    (I8, True, [1, 1, 1, 1], 1),
    (I8, False, [0, 1, 1, 0], 1),
    (U8, True, [1, 1, 1, 1], 2),
])
def test_qlinear_conv_within_one_code(wtype: int, per_channel: bool, pads: list[int], group: int,
                                      tmp_path: Path) -> None:
    cin, cout = 4, 6
    x = _codes((1, cin, 9, 8), U8, 0)
    w = _codes((cout, cin // group, 3, 3), wtype, 1)
    w_scale = (np.linspace(0.002, 0.01, cout) if per_channel else np.array(0.004)).astype(
        np.float32)
    w_zp = (np.zeros(cout) if per_channel else np.array(0)).astype(NP[wtype])
    if wtype == U8:
        w_zp = (w_zp + 128).astype(np.uint8)
    x_scale = np.float32(0.02)
    bias = np.random.default_rng(2).integers(-4000, 4000, cout).astype(np.int32)
    inits = {"xs": np.asarray(x_scale), "xzp": _zp(U8, 7), "w": w, "ws": w_scale, "wzp": w_zp,
             "ys": np.asarray(np.float32(0.05)), "yzp": _zp(U8, 100), "b": bias}
    model = _single("QLinearConv", [("x", U8, x.shape), ("xs", F, None), ("xzp", U8, None),
                                    ("w", wtype, None), ("ws", F, None), ("wzp", wtype, None),
                                    ("ys", F, None), ("yzp", U8, None), ("b", I32, None)],
                    inits, pads=pads, kernel_shape=[3, 3], group=group)
    ours, ref = _run(model, [x], tmp_path)
    _within_one_code(ours, ref)


def test_conv_integer_and_matmul_integer_exact(tmp_path: Path) -> None:
    """The literal integer operators: exact int32 accumulators."""
    x = _codes((1, 3, 6, 7), U8, 3)
    w = _codes((5, 3, 3, 3), I8, 4)
    conv = _single("ConvInteger", [("x", U8, x.shape), ("w", I8, None), ("xzp", U8, None),
                                   ("wzp", I8, None)],
                   {"w": w, "xzp": _zp(U8, 12), "wzp": _zp(I8, -3)}, pads=[1, 0, 0, 1])
    _exact(*_run(conv, [x], tmp_path))
    a = _codes((2, 5, 7), U8, 5)
    b = _codes((7, 4), I8, 6)
    mm = _single("MatMulInteger", [("a", U8, a.shape), ("b", I8, None), ("azp", U8, None),
                                   ("bzp", I8, None)],
                 {"b": b, "azp": _zp(U8, 3), "bzp": np.array([1, -2, 0, 5], np.int8)})
    _exact(*_run(mm, [a], tmp_path))


@pytest.mark.parametrize("btype", [U8, I8])
def test_qlinear_matmul_within_one_code(btype: int, tmp_path: Path) -> None:
    a = _codes((1, 6, 16), U8, 7)
    b = _codes((16, 5), btype, 8)
    inits = {"as": np.asarray(np.float32(0.03)), "azp": _zp(U8, 120), "b": b,
             "bs": np.asarray(np.float32(0.01)), "bzp": _zp(btype, 0 if btype == I8 else 128),
             "ys": np.asarray(np.float32(0.2)), "yzp": _zp(U8, 128)}
    model = _single("QLinearMatMul", [("a", U8, a.shape), ("as", F, None), ("azp", U8, None),
                                      ("b", btype, None), ("bs", F, None), ("bzp", btype, None),
                                      ("ys", F, None), ("yzp", U8, None)], inits)
    _within_one_code(*_run(model, [a], tmp_path))


# ============================================================= com.microsoft QLinear ops
def _unary_case(op: str, t: int, **attrs: object):  # type: ignore[no-untyped-def]
    shape = (1, 5, 6, 7)
    inits = {"xs": np.asarray(np.float32(0.04)), "xzp": _zp(t, 10 if t == I8 else 130),
             "ys": np.asarray(np.float32(0.01 if op != "QLinearGlobalAveragePool" else 0.02)),
             "yzp": _zp(t, -100 if t == I8 else 20)}
    if op == "QLinearSoftmax":
        inits["ys"] = np.asarray(np.float32(1 / 256))
        inits["yzp"] = _zp(t, -128 if t == I8 else 0)
    inputs = [("x", t, shape), ("xs", F, None), ("xzp", t, None), ("ys", F, None),
              ("yzp", t, None)]
    return _single(op, inputs, inits, domain=MS, **attrs), [_codes(shape, t, 9)]


def _binary_case(op: str, t: int, broadcast: bool):  # type: ignore[no-untyped-def]
    shape = (1, 4, 5, 6)
    a = _codes(shape, t, 10)
    b = _codes((1, 4, 1, 1) if broadcast else shape, t, 11)
    inits = {"as": np.asarray(np.float32(0.03)), "azp": _zp(t, 5),
             "bs": np.asarray(np.float32(0.02)), "bzp": _zp(t, -7 if t == I8 else 90),
             "cs": np.asarray(np.float32(0.05 if op == "QLinearAdd" else 0.2)),
             "czp": _zp(t, 0 if t == I8 else 128)}
    inputs = [("a", t, shape), ("as", F, None), ("azp", t, None)]
    feeds = [a]
    if broadcast:
        inits["b"] = b
        inputs.append(("b", t, None))
    else:
        inputs.append(("b", t, shape))
        feeds.append(b)
    inputs += [("bs", F, None), ("bzp", t, None), ("cs", F, None), ("czp", t, None)]
    return _single(op, inputs, inits, domain=MS), feeds


def _concat_case(t: int):  # type: ignore[no-untyped-def]
    shapes = [(1, 2, 5, 4), (1, 3, 5, 4)]
    inits = {"ys": np.asarray(np.float32(0.05)), "yzp": _zp(t, 3),
             "s0": np.asarray(np.float32(0.03)), "z0": _zp(t, 1),
             "s1": np.asarray(np.float32(0.08)), "z1": _zp(t, -2 if t == I8 else 40)}
    inputs = [("ys", F, None), ("yzp", t, None), ("x0", t, shapes[0]), ("s0", F, None),
              ("z0", t, None), ("x1", t, shapes[1]), ("s1", F, None), ("z1", t, None)]
    return _single("QLinearConcat", inputs, inits, domain=MS, axis=1), [
        _codes(shapes[0], t, 12), _codes(shapes[1], t, 13)]


_MS_CASES = []
for _t, _tn in ((U8, "u8"), (I8, "i8")):
    _MS_CASES += [
        (f"sigmoid-{_tn}", lambda t=_t: _unary_case("QLinearSigmoid", t)),
        (f"leakyrelu-{_tn}", lambda t=_t: _unary_case("QLinearLeakyRelu", t, alpha=0.2)),
        (f"softmax13-{_tn}", lambda t=_t: _unary_case("QLinearSoftmax", t, axis=-1, opset=13)),
        (f"gap-{_tn}", lambda t=_t: _unary_case("QLinearGlobalAveragePool", t,
                                               channels_last=0)),
        (f"add-{_tn}", lambda t=_t: _binary_case("QLinearAdd", t, False)),
        (f"add-broadcast-{_tn}", lambda t=_t: _binary_case("QLinearAdd", t, True)),
        (f"mul-{_tn}", lambda t=_t: _binary_case("QLinearMul", t, False)),
        (f"concat-{_tn}", lambda t=_t: _concat_case(t)),
    ]


@pytest.mark.parametrize("build", [c[1] for c in _MS_CASES], ids=[c[0] for c in _MS_CASES])
def test_com_microsoft_qlinear_ops_within_one_code(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, feeds = build()
    _within_one_code(*_run(model, feeds, tmp_path))


def test_shapes_are_inferred_through_com_microsoft_ops(tmp_path: Path) -> None:
    """onnx cannot infer the output of a com.microsoft op; a MaxPool after it (onnx2torch
    reads its input's rank; OmniSR's QOperator file) converts once glam infers it."""
    shape = (1, 3, 8, 6)
    inits = {"xs": np.asarray(np.float32(0.04)), "xzp": _zp(U8, 130),
             "ys": np.asarray(np.float32(1 / 256)), "yzp": _zp(U8, 0)}
    nodes = [helper.make_node("QLinearSigmoid", ["x", "xs", "xzp", "ys", "yzp"], ["s"],
                              domain=MS),
             helper.make_node("MaxPool", ["s"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    model = og.make_model(nodes, [helper.make_tensor_value_info("x", U8, list(shape))],
                          [onnx.ValueInfoProto(name="y")],
                          [og.init(k, v) for k, v in inits.items()], opset=13,
                          extra_opsets={MS: 1})
    _within_one_code(*_run(model, [_codes(shape, U8, 14)], tmp_path))


# ==================================================================== gradient (the STE)
def test_quantize_rounds_half_to_even_and_saturates() -> None:
    s, zp = torch.tensor(0.5), torch.tensor(0.0)
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, 1000.0, -1000.0])
    np.testing.assert_array_equal(quantize(x, s, zp, (-128, 127)).numpy(),
                                  [0, 2, 2, -0, -2, 127, -128])


def test_straight_through_gradient_is_one_inside_zero_at_saturation() -> None:
    """d quantize/dx = 1/scale where the rounded code lies in [qmin, qmax] (its end codes
    included, as ``torch.fake_quantize_per_tensor_affine``), 0 where it saturates; through
    quantize -> dequantize the gradient is 1 inside, up to float32."""
    scale, zp = torch.tensor(0.1), torch.tensor(3.0)
    # codes -47, 1, 3, 6, 23, 255 (the top code: inside), 259.5 -> 260 (saturated)
    x = torch.tensor([-5.0, -0.2, 0.0, 0.33, 2.0, 25.2, 25.7], requires_grad=True)
    (g,) = torch.autograd.grad(quantize(x, scale, zp, (0, 255)).sum(), x)
    inside = torch.tensor([False, True, True, True, True, True, False])
    np.testing.assert_allclose(g.numpy(), np.where(inside.numpy(), 1 / 0.1, 0.0), rtol=1e-6)
    (g2,) = torch.autograd.grad(fake_quantize(x, scale, zp, (0, 255)).sum(), x)
    # scale * (1 / scale) rounds to 1 within one float32 ulp
    np.testing.assert_allclose(g2.numpy(), inside.numpy().astype(np.float32), atol=2 ** -23)
    (g3,) = torch.autograd.grad(dequantize(quantize(x, scale, zp, (0, 255)), scale, zp).sum(), x)
    np.testing.assert_array_equal(g3.numpy(), g2.numpy())


def test_dynamic_parameters_carry_no_gradient() -> None:
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    scale, zp = dynamic_params(x)
    assert not scale.requires_grad and not zp.requires_grad
    lo, hi = min(float(x.detach().min()), 0.0), max(float(x.detach().max()), 0.0)
    assert float(scale) == pytest.approx((hi - lo) / 255)


def test_gradient_through_an_imported_qdq_graph(tmp_path: Path) -> None:
    """x -> Q/DQ (uint8, zero point 0) -> 1x1 conv of weight 2 -> Q/DQ: dy/dx is 2 where x
    and 2x lie inside both ranges, 0 where either quantization saturates (x < 0 clips like
    the ReLU onnxruntime's quantizer removes; 2x above the output range)."""
    s_in, s_out = np.float32(0.01), np.float32(0.01)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "si", "zi"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "si", "zi"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
        helper.make_node("Conv", ["xd", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("QuantizeLinear", ["c", "so", "zo"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "so", "zo"], ["y"]),
    ]
    inits = [og.init("si", np.asarray(s_in)), og.init("zi", np.asarray(0, np.uint8)),
             og.init("wq", np.full((1, 1, 1, 1), 100, np.int8)),
             og.init("ws", np.asarray(np.float32(0.02))), og.init("wz", np.asarray(0, np.int8)),
             og.init("so", np.asarray(s_out)), og.init("zo", np.asarray(0, np.uint8))]
    model = og.make_model(nodes, [og.value("x", (1, 1, 1, 6))], [og.value("y", None)], inits,
                          opset=13)
    raw = load_onnx(og.save(model, tmp_path))
    x = torch.tensor([[[[-0.5, 0.104, 0.5, 1.2, 1.3, 3.0]]]], requires_grad=True)
    (g,) = torch.autograd.grad(raw.gm(x).sum(), x)
    # 2x <= 2.55 (the output range) and 0 <= x <= 2.55 (the input range)
    np.testing.assert_allclose(g.numpy().ravel(), [0, 2, 2, 2, 0, 0], atol=1e-6)
    np.testing.assert_allclose(raw.gm(x).detach().numpy(), raw.reference([x.detach().numpy()])[0])


# ================================================================ parity in output steps
def _raw(step: object, axis: int = 1) -> RawGraph:
    entry = None if step is None else {"step": step, "axis": axis, "through": []}
    return RawGraph(gm=None, format="onnx", reference=lambda i: i, reference_name="ref",  # type: ignore[arg-type]
                    input_names=["x"], output_names=["y"],
                    metadata={"quantization": {"outputs": {"y": entry}}})


@pytest.mark.parametrize(("moved", "steps", "passed"), [
    (0.0, 0.0, True), (0.5, 1.0, True), (0.0005, 3.0, True), (0.002, 3.0, False),
    (0.5, 2.0, False),
])
def test_step_parity_rule(moved: float, steps: float, passed: bool) -> None:
    """At most one step on >= 99.9 % of the values; the rest is reported."""
    step = 0.01
    ref = (np.round(np.random.default_rng(0).random((1, 3, 40, 50)) * 100) * step).astype(
        np.float32)
    ours = ref.copy().ravel()
    k = round(moved * ours.size)
    ours[:k] += steps * step
    res = step_parity(_raw(step), None, [torch.from_numpy(ours.reshape(ref.shape))], [ref])
    assert res is not None
    assert res.passed is passed and res.rule == "output"
    assert res.beyond_one == (k if steps > 1 else 0)
    assert res.max_steps == pytest.approx(steps if k else 0.0)
    assert res.within_one == pytest.approx(1 - (k / ref.size if steps > 1 else 0))
    assert MIN_SHARE_WITHIN_ONE == 0.999


def test_step_parity_units() -> None:
    """Per-channel steps broadcast on their axis; without a dequantized output the unit is an
    8-bit step of the reference's range; a float graph has no step parity."""
    ref = np.zeros((1, 2, 4, 4))
    ref[0, 1] = 1.0
    ours = ref.copy()
    ours[0, 0] += 0.015  # 1.5 steps of channel 0 (0.01), 0.15 of channel 1 (0.1)
    res = step_parity(_raw([0.01, 0.1]), None, [torch.from_numpy(ours)], [ref])
    assert res is not None and res.max_steps == pytest.approx(1.5) and res.beyond_one == 16
    res = step_parity(_raw(None), None, [torch.from_numpy(ours)], [ref])
    assert res is not None and res.step == pytest.approx(1 / 255)
    assert res.unit == "8-bit range of the reference output"
    assert res.max_steps == pytest.approx(0.015 * 255)
    float_raw = _raw(0.01)
    float_raw.metadata = {}
    assert step_parity(float_raw, None, [torch.from_numpy(ours)], [ref]) is None


def _small_quantized(tmp_path: Path, variant: str = "qop_pc") -> Path:
    from quantized_models import ROOT, fixture_images
    from quantized_models import quantize as ort_quantize

    return ort_quantize(ROOT / "fixtures" / "models" / "carn_small_x2.legacy.onnx",
                        tmp_path / f"carn.{variant}.onnx", variant, fixture_images())


def test_a_wrong_converter_fails_parity_in_steps(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """QLinearAdd computing a - b: the output moves by many steps and the node check names
    the node, many codes off on onnxruntime's own inputs."""
    import glam.importers
    from glam.importers.onnx import quantized

    path = _small_quantized(tmp_path)
    monkeypatch.setattr(quantized.GlamQLinearAdd, "fn", lambda self, a, b: a - b)
    with pytest.raises(ParityError) as err:
        glam.importers.load(path)
    text = str(err.value)
    assert "in output quantization steps" in text and "node by node" in text
    assert "QLinearAdd" in text and "needs <= 1" in text


def test_node_rule_decides_when_the_output_rule_fails(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With an output rule no graph can meet, the node-by-node check decides: every node of
    an honest import is within one code of onnxruntime on onnxruntime's inputs."""
    import glam.importers
    from glam.importers import quant_parity

    path = _small_quantized(tmp_path)
    monkeypatch.setattr(quant_parity, "MIN_SHARE_WITHIN_ONE", math.nextafter(1.0, 2.0))
    m = glam.importers.load(path)
    steps = m.parity.steps
    assert steps is not None and steps["rule"] == "nodes" and steps["passed"]
    nodes = steps["nodes"]
    assert nodes["nodes"] >= 19 + 10 and nodes["max_codes"] <= 1  # 19 QLinearConv, adds, concats
