"""ONNX import: glam's converters against onnxruntime, refusals, file errors, real models.

Every hand-built graph is converted by :func:`glam.importers.onnx.backend.load_onnx` and its FX
graph is compared with onnxruntime on the original file (the backend's own reference).
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import glam.importers
import numpy as np
import onnx
import pytest
import torch
from glam.errors import (
    ConversionError,
    ModelFileError,
    ParityError,
    UnsupportedOpsError,
)
from glam.importers.onnx import converters as onnx_converters
from glam.importers.onnx import registry as onnx_registry
from glam.importers.onnx.backend import load_onnx, unsupported_ops
from numerics import assert_close, assert_error_within
from onnx import helper
from torch import nn

try:  # tests/ is on sys.path when it is not a package (pytest's default "prepend" mode)
    import onnx_graphs as og
except ImportError:  # pragma: no cover - tests/ turned into a package
    from tests import onnx_graphs as og

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MODELS = sorted((SHARED / "models").glob("*.onnx")) if (SHARED / "models").is_dir() else []
#: A converted graph against onnxruntime: the same operator through other kernels (MLAS vs
#: ATen/oneDNN), float32 epsilons of the output's largest magnitude: measured 8.68 (cubic
#: Resize, x86-64 baseline), 7.85 (AVX-512); x4, rounded up (tests/numerics.py).
ULPS_ORT = 64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _rand(shape: tuple[int, ...], seed: int = 0, low: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (low + (1 - low) * rng.random(shape)).astype(np.float32)


def _weights(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.2).astype(np.float32)


def _outputs(gm: torch.fx.GraphModule, x: np.ndarray) -> list[torch.Tensor]:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the deprecated list-of-slices indexing
        y = gm(torch.from_numpy(x))
    return list(y) if isinstance(y, (tuple, list)) else [y]


def assert_matches_ort(
    model: onnx.ModelProto, x: np.ndarray, tmp_path: Path, ulps: float = ULPS_ORT
) -> glam.importers.RawGraph:
    """Convert ``model`` and check every output against onnxruntime on ``x``."""
    raw = load_onnx(og.save(model, tmp_path))
    ours = _outputs(raw.gm, x)
    ref = raw.reference([x])
    assert len(ours) == len(ref)
    for a, r in zip(ours, ref, strict=True):
        assert tuple(a.shape) == r.shape
        assert_close(a, r, ulps=ulps, err_msg="against onnxruntime")
    return raw


# ================================================================================ Resize
_S = (1, 2, 7, 9)
_RESIZE_CASES: list[tuple[str, dict, list[float]]] = []
for _coord in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
    for _scales in ([1, 1, 2, 2], [1, 1, 1.5, 2.5], [1, 1, 0.6, 0.5]):
        _variants = [{"mode": "linear"}, {"mode": "cubic"}] + [
            {"mode": "nearest", "nearest_mode": nm}
            for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
        ]
        for _v in _variants:
            _id = "-".join([_v["mode"], _coord, _v.get("nearest_mode", ""), str(_scales[2])])
            _RESIZE_CASES.append(
                (_id.replace("--", "-"), {**_v, "coordinate_transformation_mode": _coord}, _scales)
            )
_RESIZE_CASES += [
    (
        "nearest-tf_half_pixel_for_nn",
        {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn"},
        [1, 1, 2, 1.5],
    ),
    ("cubic-a-0.5", {"mode": "cubic", "cubic_coeff_a": -0.5}, [1, 1, 2, 3]),
    ("cubic-exclude_outside", {"mode": "cubic", "exclude_outside": 1}, [1, 1, 2, 1.5]),
    (
        "cubic-asymmetric-a-0.5",
        {"mode": "cubic", "coordinate_transformation_mode": "asymmetric", "cubic_coeff_a": -0.5},
        [1, 1, 2, 2],
    ),
    ("linear-antialias-down", {"mode": "linear", "antialias": 1}, [1, 1, 0.6, 0.45]),
    ("cubic-antialias-down", {"mode": "cubic", "antialias": 1}, [1, 1, 0.3, 0.5]),
    (
        "linear-antialias-exclude",
        {"mode": "linear", "antialias": 1, "exclude_outside": 1},
        [1, 1, 0.5, 0.7],
    ),
    (
        "linear-half_pixel_symmetric",
        {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
        [1, 1, 1.7, 0.6],
    ),
    (
        "cubic-half_pixel_symmetric",
        {"mode": "cubic", "coordinate_transformation_mode": "half_pixel_symmetric"},
        [1, 1, 2.3, 1.5],
    ),
]


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("attrs", "scales"), [(c[1], c[2]) for c in _RESIZE_CASES], ids=[c[0] for c in _RESIZE_CASES]
)
def test_resize19_scales_matches_ort(attrs: dict, scales: list[float], tmp_path: Path) -> None:
    model = og.single_op(
        "Resize", _S, [("roi", None), ("scales", np.array(scales, np.float32))], opset=19, **attrs
    )
    assert_matches_ort(model, _rand(_S), tmp_path)


@pytest.mark.numerics
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize(
    ("sizes", "extra"),
    [
        ([1, 2, 10, 4], {}),
        ([10, 4], {"axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}),
        ([10, 4], {"axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"}),
        ([3, 14], {"axes": [2, 3]}),
    ],
    ids=["sizes", "not_larger", "not_smaller", "axes"],
)
def test_resize18_sizes_matches_ort(
    mode: str, sizes: list[int], extra: dict, tmp_path: Path
) -> None:
    model = og.single_op(
        "Resize",
        _S,
        [("roi", None), ("scales", None), ("sizes", np.array(sizes, np.int64))],
        opset=18,
        mode=mode,
        **extra,
    )
    assert_matches_ort(model, _rand(_S), tmp_path)


@pytest.mark.numerics
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("opset", [7, 9, 10])
def test_upsample_and_resize10_match_ort(mode: str, opset: int, tmp_path: Path) -> None:
    scales = [1.0, 1.0, 2.0, 3.0]
    if opset == 7:
        model = og.single_op("Upsample", _S, [], opset=7, mode=mode, scales=scales)
    else:
        op = "Upsample" if opset == 9 else "Resize"
        model = og.single_op(
            op, _S, [("scales", np.array(scales, np.float32))], opset=opset, mode=mode
        )
    assert_matches_ort(model, _rand(_S), tmp_path)


@pytest.mark.numerics
def test_resize_dynamic_sizes_from_shape(tmp_path: Path) -> None:
    """``sizes`` computed from the input shape (how exporters spell scale_factor=2)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Mul", ["shp", "two"], ["sz"]),
        helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="cubic", name="up/Resize"),
    ]
    model = og.make_model(
        nodes,
        [og.value("x", [1, 2, "h", "w"])],
        [og.value("y", None)],
        [og.init("two", np.array([1, 1, 2, 2], np.int64))],
        opset=18,
    )
    raw = assert_matches_ort(model, _rand(_S), tmp_path)
    x2 = _rand((1, 2, 5, 4), seed=3)
    assert_close(_outputs(raw.gm, x2)[0], raw.reference([x2])[0], ulps=ULPS_ORT)


@pytest.mark.parametrize(
    ("attrs", "needle"),
    [
        (
            {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"},
            "tf_crop_and_resize",
        ),
        (
            {"mode": "nearest", "coordinate_transformation_mode": "half_pixel_symmetric"},
            "half_pixel_symmetric",
        ),
        ({"mode": "nearest", "antialias": 1}, "antialias"),
    ],
    ids=["tf_crop_and_resize", "nearest-half_pixel_symmetric", "nearest-antialias"],
)
def test_inexact_resize_is_refused(attrs: dict, needle: str, tmp_path: Path) -> None:
    model = og.single_op(
        "Resize",
        _S,
        [
            ("roi", np.array([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9], np.float32)),
            ("scales", np.array([1, 1, 2, 2], np.float32)),
        ],
        opset=19,
        **attrs,
    )
    with pytest.raises(UnsupportedOpsError, match=needle) as info:
        load_onnx(og.save(model, tmp_path))
    assert ("Resize", 19) in info.value.ops
    assert "\n" not in str(info.value)


# ======================================================================== Conv family
def _conv_model(
    op: str, w_shape: tuple[int, ...], opset: int = 17, bias: bool = True, **attrs
) -> onnx.ModelProto:
    out_ch = w_shape[1] * attrs.get("group", 1) if op == "ConvTranspose" else w_shape[0]
    inits = [og.init("enc.conv.weight", _weights(w_shape))]
    inputs = ["x", "enc.conv.weight"]
    if bias:
        inits.append(og.init("enc.conv.bias", _weights((out_ch,), seed=2)))
        inputs.append("enc.conv.bias")
    node = helper.make_node(op, inputs, ["y"], name="enc/conv/Conv", **attrs)
    rank = len(w_shape) - 2
    return og.make_model(
        [node],
        [
            og.value(
                "x",
                [1, w_shape[0] if op == "ConvTranspose" else w_shape[1] * attrs.get("group", 1)]
                + ["d"] * rank,
            )
        ],
        [og.value("y", None)],
        inits,
        opset=opset,
    )


_CONV_CASES = [
    ("same_upper-k3-s1", "Conv", (4, 3, 3, 3), {"auto_pad": "SAME_UPPER"}),
    ("same_upper-k4-s1", "Conv", (4, 3, 4, 4), {"auto_pad": "SAME_UPPER"}),
    ("same_lower-k4-s1", "Conv", (4, 3, 4, 2), {"auto_pad": "SAME_LOWER"}),
    ("same_upper-k3-s2", "Conv", (4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    (
        "same_lower-k4-s2",
        "Conv",
        (4, 3, 4, 3),
        {"auto_pad": "SAME_LOWER", "strides": [2, 3]},
    ),
    ("valid-s2", "Conv", (4, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ("asym-pads", "Conv", (4, 3, 3, 3), {"pads": [0, 1, 2, 1]}),
    (
        "group-dilation",
        "Conv",
        (4, 2, 3, 3),
        {"pads": [2, 2, 2, 2], "dilations": [2, 2], "group": 2},
    ),
    ("conv1d", "Conv", (4, 3, 3), {"pads": [1, 0]}),
    (
        "convT-sym",
        "ConvTranspose",
        (3, 4, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    ),
    ("convT-asym", "ConvTranspose", (3, 4, 3, 3), {"strides": [2, 2], "pads": [1, 0, 0, 2]}),
    (
        "convT-asym-outpad",
        "ConvTranspose",
        (3, 4, 4, 4),
        {"strides": [2, 2], "pads": [2, 1, 1, 1], "output_padding": [1, 0]},
    ),
    (
        "convT-output_shape",
        "ConvTranspose",
        (3, 4, 3, 3),
        {"strides": [2, 2], "output_shape": [13, 16]},
    ),
    (
        "convT-output_shape-k5",
        "ConvTranspose",
        (3, 4, 5, 5),
        {"strides": [2, 2], "output_shape": [14, 16]},
    ),
    (
        "convT-output_shape-same_upper",
        "ConvTranspose",
        (3, 4, 4, 4),
        {"strides": [2, 2], "auto_pad": "SAME_UPPER", "output_shape": [13, 15]},
    ),
    (
        "convT-output_shape-same_lower",
        "ConvTranspose",
        (3, 4, 4, 4),
        {"strides": [2, 2], "auto_pad": "SAME_LOWER", "output_shape": [15, 13]},
    ),
    (
        "convT-same_upper",
        "ConvTranspose",
        (3, 4, 3, 3),
        {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
    ),
    (
        "convT-same_lower",
        "ConvTranspose",
        (3, 4, 4, 4),
        {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
    ),
    (
        "convT-group",
        "ConvTranspose",
        (4, 2, 3, 3),
        {"strides": [3, 3], "group": 2, "pads": [0, 1, 1, 0]},
    ),
]


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("op", "w_shape", "attrs"), [c[1:] for c in _CONV_CASES], ids=[c[0] for c in _CONV_CASES]
)
def test_conv_variants_match_ort_and_stay_plain_convs(
    op: str, w_shape: tuple[int, ...], attrs: dict, tmp_path: Path
) -> None:
    model = _conv_model(op, w_shape, **attrs)
    c_in = w_shape[0] if op == "ConvTranspose" else w_shape[1] * attrs.get("group", 1)
    shape = (1, c_in, 7, 8)[: len(w_shape)]
    raw = assert_matches_ort(model, _rand(shape), tmp_path)
    convs = [
        n
        for n in raw.gm.graph.nodes
        if n.op == "call_module"
        and isinstance(raw.gm.get_submodule(str(n.target)), nn.modules.conv._ConvNd)
    ]
    wrapped = [
        n
        for n in raw.gm.graph.nodes
        if n.op == "call_module" and isinstance(raw.gm.get_submodule(str(n.target)), nn.Sequential)
    ]
    for n in wrapped:  # only Sequential(pad, conv), which the tap pass unwraps
        assert isinstance(raw.gm.get_submodule(str(n.target))[-1], nn.modules.conv._ConvNd)
    assert len(convs) + len(wrapped) == 1
    node = (convs + wrapped)[0]
    assert node.meta["glam_name"] == "enc.conv"
    dynamic = op == "ConvTranspose" or "strides" in attrs  # also right at another size
    if dynamic and "output_shape" not in attrs:
        x2 = _rand((1, c_in, 9, 6)[: len(w_shape)], seed=5)
        assert_close(_outputs(raw.gm, x2)[0], raw.reference([x2])[0], ulps=ULPS_ORT)


@pytest.mark.numerics
def test_conv22_and_identity_weight(tmp_path: Path) -> None:
    """Conv-22 and a weight de-duplicated as ``Identity(initializer)`` (legacy exporter)."""
    w = _weights((3, 3, 1, 1))
    nodes = [
        helper.make_node("Identity", ["sub_mean.weight"], ["add_mean.weight"]),
        helper.make_node("Conv", ["x", "sub_mean.weight"], ["a"], name="sub_mean"),
        helper.make_node("Conv", ["a", "add_mean.weight"], ["y"], name="add_mean"),
    ]
    model = og.make_model(
        nodes,
        [og.value("x", [1, 3, "h", "w"])],
        [og.value("y", None)],
        [og.init("sub_mean.weight", w)],
        opset=22,
    )
    raw = assert_matches_ort(model, _rand((1, 3, 6, 5)), tmp_path)
    names = [n.meta.get("glam_name") for n in raw.gm.graph.nodes if "glam_name" in n.meta]
    assert names == ["sub_mean", "add_mean"]


# =============================================================== other extra converters
_RESHAPE_CASES = [
    (14, 0, [0, 6, -1]),
    (14, 1, [2, 3, 12]),
    (19, 1, [1, 2, 3, 12]),
    (21, 0, [0, 0, 36]),
]


@pytest.mark.numerics
@pytest.mark.parametrize(("opset", "allowzero", "shape"), _RESHAPE_CASES)
def test_reshape_allowzero(opset: int, allowzero: int, shape: list[int], tmp_path: Path) -> None:
    model = og.single_op(
        "Reshape",
        (1, 2, 4, 9),
        [("shape", np.array(shape, np.int64))],
        opset=opset,
        allowzero=allowzero,
    )
    assert_matches_ort(model, _rand((1, 2, 4, 9)), tmp_path)


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("opset", "inputs", "attrs", "n"),
    [
        (18, [], {"num_outputs": 3, "axis": 1}, 3),
        (18, [("split", np.array([2, 6], np.int64))], {"axis": 1}, 2),
        (13, [("split", np.array([5, 3], np.int64))], {"axis": -3}, 2),
        (11, [], {"split": [1, 7], "axis": 1}, 2),
        (18, [], {"num_outputs": 2, "axis": 3}, 2),
    ],
    ids=["num_outputs-uneven", "split-input", "split13", "split11", "even"],
)
def test_split_matches_ort(opset: int, inputs: list, attrs: dict, n: int, tmp_path: Path) -> None:
    model = og.single_op("Split", (1, 8, 3, 4), inputs, opset=opset, n_outputs=n, **attrs)
    assert_matches_ort(model, _rand((1, 8, 3, 4)), tmp_path)


@pytest.mark.numerics
def test_split_output_feeding_nodes_and_graph(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2, name="split"),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    model = og.make_model(
        nodes, [og.value("x", [1, 4, 3, 3])], [og.value("y", None), og.value("b", None)], opset=18
    )
    assert_matches_ort(model, _rand((1, 4, 3, 3)), tmp_path)


_REDUCE_OPS = [
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
]


@pytest.mark.numerics
@pytest.mark.parametrize("op", _REDUCE_OPS)
@pytest.mark.parametrize(
    ("axes", "keepdims"), [([2, 3], 1), ([-1, 1], 0), (None, 1)], ids=["hw-keep", "neg-drop", "all"]
)
def test_reduce18_matches_ort(
    op: str, axes: list[int] | None, keepdims: int, tmp_path: Path
) -> None:
    extra = [] if axes is None else [("axes", np.array(axes, np.int64))]
    model = og.single_op(op, (2, 3, 4, 5), extra, opset=18, keepdims=keepdims)
    assert_matches_ort(model, _rand((2, 3, 4, 5), low=0.5), tmp_path)


@pytest.mark.numerics
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceProd", "ReduceMean"])
def test_reduce13_negative_axes_keepdims0(op: str, tmp_path: Path) -> None:
    model = og.single_op(op, (2, 3, 4, 5), [], opset=13, axes=[-1, -3], keepdims=0)
    assert_matches_ort(model, _rand((2, 3, 4, 5), low=0.5), tmp_path)


@pytest.mark.numerics
def test_reduce_noop_and_reducemax20(tmp_path: Path) -> None:
    model = og.single_op("ReduceMean", (2, 3, 4), [], opset=18, noop_with_empty_axes=1)
    assert_matches_ort(model, _rand((2, 3, 4)), tmp_path)
    model = og.single_op(
        "ReduceMax", (2, 3, 4), [("axes", np.array([1], np.int64))], opset=20, keepdims=0
    )
    assert_matches_ort(model, _rand((2, 3, 4)), tmp_path)


_PAD_CASES = [
    (18, "constant", [0, 0, 1, 2, 0, 0, 2, 1], 0.5, None),
    (18, "reflect", [0, 0, 2, 1, 0, 0, 1, 3], None, None),
    (18, "edge", [0, 0, 3, 0, 0, 0, 1, 2], None, None),
    (19, "wrap", [0, 0, 2, 1, 0, 0, 1, 3], None, None),
    (18, "reflect", [1, 2, 2, 1], None, [2, -1]),
    (18, "edge", [0, -1, 2, 0], None, [2, 3]),
    (13, "reflect", [0, 0, 1, 1, 0, 0, 1, 1], None, None),
    (11, "constant", [0, 1, 0, 0, 0, 0, 1, 0], 0.25, None),
    (21, "wrap", [0, 0, 1, 3, 0, 0, 2, 1], None, None),
]


@pytest.mark.numerics
@pytest.mark.parametrize(("opset", "mode", "pads", "value", "axes"), _PAD_CASES)
def test_pad_matches_ort(
    opset: int,
    mode: str,
    pads: list[int],
    value: float | None,
    axes: list[int] | None,
    tmp_path: Path,
) -> None:
    extra: list = [("pads", np.array(pads, np.int64))]
    extra.append(("value", None if value is None else np.array(value, np.float32)))
    if axes is not None:
        extra.append(("axes", np.array(axes, np.int64)))
    while extra and extra[-1][1] is None:
        extra.pop()
    model = og.single_op("Pad", (1, 2, 4, 5), extra, opset=opset, mode=mode)
    assert_matches_ort(model, _rand((1, 2, 4, 5)), tmp_path)


@pytest.mark.numerics
def test_pad2_attributes(tmp_path: Path) -> None:
    model = og.single_op(
        "Pad", (1, 2, 4, 5), [], opset=10, mode="edge", pads=[0, 0, 1, 2, 0, 0, 2, 1]
    )
    assert_matches_ort(model, _rand((1, 2, 4, 5)), tmp_path)


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("op", "opset", "attrs"),
    [
        ("DepthToSpace", 13, {"blocksize": 2, "mode": "DCR"}),
        ("DepthToSpace", 13, {"blocksize": 2, "mode": "CRD"}),
        ("DepthToSpace", 11, {"blocksize": 3}),
        ("DepthToSpace", 9, {"blocksize": 2}),
        ("SpaceToDepth", 13, {"blocksize": 2}),
        ("SpaceToDepth", 9, {"blocksize": 3}),
    ],
)
def test_depth_space_match_ort(op: str, opset: int, attrs: dict, tmp_path: Path) -> None:
    shape = (1, 36, 3, 4) if op == "DepthToSpace" else (1, 2, 6, 12)
    model = og.single_op(op, shape, [], opset=opset, **attrs)
    assert_matches_ort(model, _rand(shape), tmp_path)


@pytest.mark.numerics
@pytest.mark.parametrize("opset", [19, 21, 23])
def test_type_only_schema_bumps(opset: int, tmp_path: Path) -> None:
    """Identity/Constant/Shape/Reshape/Transpose/(Un)Squeeze/Flatten/Cast at opset 19-23."""
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["c"],
            value=helper.make_tensor("cv", onnx.TensorProto.FLOAT, [1], [0.5]),
        ),
        helper.make_node("Add", ["x", "c"], ["a"]),
        helper.make_node("Identity", ["a"], ["i"]),
        helper.make_node("Shape", ["i"], ["s"]),
        helper.make_node("Reshape", ["i", "s"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Unsqueeze", ["t", "ax"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax"], ["q"]),
        helper.make_node("Cast", ["q"], ["f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Flatten", ["f"], ["fl"], axis=2),
        helper.make_node("Gelu" if opset >= 20 else "Relu", ["fl"], ["y"]),
    ]
    model = og.make_model(
        nodes,
        [og.value("x", [1, 2, 3, 4])],
        [og.value("y", None)],
        [og.init("ax", np.array([0], np.int64))],
        opset=opset,
    )
    assert_matches_ort(model, _rand((1, 2, 3, 4)), tmp_path)


@pytest.mark.numerics
def test_slice_uses_tuple_indexing(tmp_path: Path) -> None:
    """onnx2torch's Slice indexes with a list of slices (deprecated); glam patches it."""
    model = og.single_op(
        "Slice",
        (1, 3, 8, 9),
        [
            ("starts", np.array([1, -7], np.int64)),
            ("ends", np.array([7, 100], np.int64)),
            ("axes", np.array([2, -1], np.int64)),
            ("steps", np.array([2, 3], np.int64)),
        ],
        opset=13,
    )
    assert_matches_ort(model, _rand((1, 3, 8, 9)), tmp_path)  # warnings are errors here


@pytest.mark.numerics
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd18_matches_ort(reduction: str, tmp_path: Path) -> None:
    model = og.single_op(
        "ScatterND",
        (2, 3, 4),
        [("idx", np.array([[1, 2], [0, 0], [1, 2]], np.int64)), ("upd", _rand((3, 4), seed=7))],
        opset=18,
        reduction=reduction,
    )
    if reduction == "none":  # duplicate indices are undefined without a reduction
        model.graph.initializer[0].CopyFrom(
            og.init("idx", np.array([[1, 2], [0, 0], [-1, 1]], np.int64))
        )
    assert_matches_ort(model, _rand((2, 3, 4)), tmp_path)


@pytest.mark.numerics
def test_down_conversion_when_needed(tmp_path: Path) -> None:
    """TopK-24 has no converter; onnx.version_converter brings it to TopK-11 (opset 17)."""
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, name="topk")
    model = og.make_model(
        [node],
        [og.value("x", [1, 3, 4, 5])],
        [og.value("v", None), og.value("i", None, onnx.TensorProto.INT64)],
        [og.init("k", np.array([2], np.int64))],
        opset=24,
    )
    raw = assert_matches_ort(model, _rand((1, 3, 4, 5)), tmp_path)
    assert raw.metadata["opset"] == 24 and raw.metadata["converted_opset"] == 17
    assert any("opset 17" in w for w in raw.warnings)


def test_raw_graph_fields(tmp_path: Path) -> None:
    raw = load_onnx(og.save(_dcr_sr_model(), tmp_path))
    assert raw.format == "onnx"
    assert raw.input_names == ["x"] and raw.output_names == ["y"]
    assert raw.input_shape == (1, 3, None, None)
    assert raw.metadata["opset"] == 13 and raw.metadata["ir_version"] == 7
    assert {"producer_name", "producer_version"} <= set(raw.metadata)
    assert "converted_opset" not in raw.metadata
    assert re.fullmatch(r"onnxruntime \S+ \[CPUExecutionProvider\]", raw.reference_name)


def test_tap_name_falls_back_to_node_scope(tmp_path: Path) -> None:
    """Legacy exports name BatchNorm-folded weights ``onnx::Conv_N``; use the node scope."""
    nodes = [
        helper.make_node("Conv", ["x", "onnx::Conv_7"], ["a"], name="/block2/conv1/Conv"),
        helper.make_node("Conv", ["a", "onnx::Conv_9"], ["y"], name="/block1/block1.0/Conv"),
    ]
    model = og.make_model(
        nodes,
        [og.value("x", [1, 2, "h", "w"])],
        [og.value("y", None)],
        [
            og.init("onnx::Conv_7", _weights((2, 2, 1, 1))),
            og.init("onnx::Conv_9", _weights((2, 2, 1, 1))),
        ],
        opset=17,
    )
    raw = load_onnx(og.save(model, tmp_path))
    names = [n.meta["glam_name"] for n in raw.gm.graph.nodes if "glam_name" in n.meta]
    assert names == ["block2.conv1", "block1.0"]


# ============================================================ unsupported ops, registry
def test_all_unsupported_ops_listed_at_once(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Trilu", ["x"], ["a"]),
        helper.make_node("Foo", ["a"], ["b"], domain="com.example"),
        helper.make_node(
            "Resize",
            ["b", "", "sc"],
            ["c"],
            mode="linear",
            coordinate_transformation_mode="tf_crop_and_resize",
        ),
        helper.make_node("Col2Im", ["c", "shape", "shape"], ["d"]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    model = og.make_model(
        nodes,
        [og.value("x", [1, 1, 4, 4])],
        [og.value("y", None)],
        [
            og.init("sc", np.array([1, 1, 2, 2], np.float32)),
            og.init("shape", np.array([2, 2], np.int64)),
        ],
        opset=18,
        extra_opsets={"com.example": 1},
    )
    with pytest.raises(UnsupportedOpsError) as info:
        glam.importers.load(og.save(model, tmp_path))
    assert set(info.value.ops) == {
        ("Trilu", 14),
        ("com.example.Foo", 1),
        ("Resize", 18),
        ("Col2Im", 18),
    }
    msg = str(info.value)
    assert "\n" not in msg and "tf_crop_and_resize" in msg and "Trilu-14" in msg
    pairs, _ = unsupported_ops(model)
    assert ("Relu", 14) not in pairs


def test_registry_duplicates_and_lookup() -> None:
    with pytest.raises(ValueError, match="already registered"):
        onnx_registry.register("Resize", 19)(lambda node, graph: None)
    assert onnx_registry.lookup("Resize", 20).version == 19
    assert onnx_registry.lookup("Pad", 22).version == 21
    with pytest.raises(UnsupportedOpsError, match="glam registers converters for: .*Resize"):
        onnx_registry.lookup("NoSuchOp", 18)
    with pytest.raises(UnsupportedOpsError, match="glam registers Upsample for opsets 7, 9, 10"):
        onnx_registry.lookup("Upsample", 6)


def test_registry_patch_is_scoped_and_reversible() -> None:
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    before = dict(_CONVERTER_REGISTRY)
    with pytest.raises(RuntimeError, match="boom"), onnx_converters.patched_onnx2torch():
        assert len(_CONVERTER_REGISTRY) > len(before)
        raise RuntimeError("boom")
    assert _CONVERTER_REGISTRY == before


def test_converter_failure_is_typed(tmp_path: Path) -> None:
    """A Conv whose weight is computed at run time cannot be a plain nn.Conv2d."""
    nodes = [
        helper.make_node("Relu", ["w0"], ["w"]),
        helper.make_node("Mul", ["w", "x2"], ["w2"]),
        helper.make_node("Conv", ["x", "w2"], ["y"], name="dyn_conv"),
    ]
    model = og.make_model(
        nodes,
        [og.value("x", [1, 2, 4, 4]), og.value("x2", [1])],
        [og.value("y", None)],
        [og.init("w0", _weights((2, 2, 1, 1)))],
        opset=17,
    )
    with pytest.raises(ConversionError, match="dyn_conv.*constant convolution weights"):
        load_onnx(og.save(model, tmp_path))


# ===================================================================== first divergence
def _dcr_sr_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node(
            "Conv", ["x", "head.weight", "head.bias"], ["h"], pads=[1, 1, 1, 1], name="head"
        ),
        helper.make_node("DepthToSpace", ["h"], ["d"], blocksize=2, mode="DCR", name="d2s"),
        helper.make_node("Conv", ["d", "tail.weight"], ["y"], pads=[1, 1, 1, 1], name="tail"),
    ]
    return og.make_model(
        nodes,
        [og.value("x", [1, 3, "h", "w"])],
        [og.value("y", [1, 3, "H", "W"])],
        [
            og.init("head.weight", _weights((12, 3, 3, 3))),
            og.init("head.bias", _weights((12,), seed=3)),
            og.init("tail.weight", _weights((3, 3, 3, 3), seed=4)),
        ],
        opset=13,
    )


def test_first_divergence_names_the_wrong_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = og.save(_dcr_sr_model(), tmp_path)
    raw = load_onnx(path)
    x = _rand((1, 3, 6, 5))
    assert raw.first_divergence is not None and raw.first_divergence([x]) is None

    def crd(self, x):  # deliberately wrong: CRD instead of DCR
        return torch.pixel_shuffle(x, self.blocksize)

    monkeypatch.setattr(onnx_converters.GlamDepthToSpace, "forward", crd)
    with pytest.raises(ParityError) as info:
        glam.importers.load(path)
    assert info.value.node is not None
    assert re.match(r"DepthToSpace node 'd2s' \(max abs error [0-9.e-]+\)", info.value.node)


# ========================================================================= file errors
def test_file_errors(tmp_path: Path) -> None:
    good = og.save(_dcr_sr_model(), tmp_path, "good.onnx")
    data = good.read_bytes()
    cases = {
        "empty.onnx": b"",
        "garbage.onnx": bytes(range(256)) * 4,
        "text.onnx": b"hello, I am not a model\n",
        "truncated.onnx": data[: len(data) // 2],
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ModelFileError) as info:
            glam.importers.load(p)
        assert "\n" not in str(info.value), name
    # parses, but the truncation lost the initializers
    model = _dcr_sr_model()
    del model.graph.initializer[:]
    with pytest.raises(ModelFileError, match="head.weight.*incomplete or corrupt"):
        glam.importers.load(og.save(model, tmp_path, "lost.onnx"))
    with pytest.raises(ModelFileError, match="does not exist"):
        load_onnx(tmp_path / "absent.onnx")


def test_external_data_missing_or_truncated(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(
        _dcr_sr_model(),
        str(path),
        save_as_external_data=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    data = tmp_path / "ext.onnx.data"
    assert load_onnx(path).input_shape == (1, 3, None, None)
    content = data.read_bytes()
    data.write_bytes(content[:10])
    with pytest.raises(ModelFileError, match="truncated"):
        glam.importers.load(path)
    data.unlink()
    with pytest.raises(ModelFileError, match="ext.onnx.data.*missing"):
        glam.importers.load(path)


# =========================================================== full pipeline, torch exports
class TinySR(nn.Module):
    """Conv -> ReLU -> Conv -> PixelShuffle (DepthToSpace CRD)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.tail = nn.Conv2d(8, 12, 3, padding=1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.tail(self.act(self.head(x))))


@pytest.mark.parametrize("flavour", ["legacy17", "legacy11", "dynamo"])
def test_torch_export_full_pipeline(flavour: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinySR().eval()
    x = torch.rand(1, 3, 24, 20)
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flavour.startswith("legacy"):
            torch.onnx.export(
                net,
                (x,),
                str(path),
                dynamo=False,
                opset_version=int(flavour[-2:]),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {2: "h", 3: "w"}, "output": {2: "H", 3: "W"}},
            )
        else:
            h, w = torch.export.Dim("h", min=4, max=512), torch.export.Dim("w", min=4, max=512)
            torch.onnx.export(
                net,
                (x,),
                str(path),
                dynamo=True,
                external_data=True,
                dynamic_shapes=({2: h, 3: w},),
            )
            assert (tmp_path / "tiny.onnx.data").is_file()
    model = glam.importers.load(path)
    assert_error_within(model.parity.max_abs_error, ulps=ULPS_ORT, label="parity")  # output ~1
    assert model.conventions.scale == 2 and model.conventions.offset == (0, 0)
    assert model.n_taps == 2
    assert [t.name for t in model.taps] == ["head", "tail"]
    if flavour == "dynamo":
        assert model.metadata["opset"] >= 18


# ============================================================== shared real SR models
_EXPECT = {  # file stem -> (in_channels, fixed size, offset)
    "subpixelcnn_x3_niazwazir": (1, (224, 224), (0, 0)),
    "waifu2x_upconv7_anime_x2": (3, (156, 156), (-28, -28)),
}
_Y_MODELS = ("fsrcnn", "espcn_tf", "lapsrn_tf", "subpixelcnn")


@pytest.mark.shared
@pytest.mark.parametrize(
    "path",
    SHARED_MODELS or [pytest.param(None, marks=pytest.mark.skip(reason="no ../shared/models"))],
    ids=[p.stem for p in SHARED_MODELS] or ["absent"],
)
def test_shared_model_imports(path: Path) -> None:
    t0 = time.perf_counter()
    try:  # a small probe keeps the suite fast; fixed-size models use their own size
        model = glam.importers.load(path, probe_size=(24, 20))
    except UnsupportedOpsError as exc:  # only where truly unsupported
        assert exc.ops, str(exc)
        pytest.xfail(f"unsupported: {exc}")
    elapsed = time.perf_counter() - t0
    conv = model.conventions
    assert model.parity.passed  # within glam's parity tolerance (1e-4; real models, any size)
    scale = int(re.search(r"_x(\d)", path.stem).group(1))
    channels, fixed, offset = _EXPECT.get(path.stem, (None, None, (0, 0)))
    if channels is None:
        channels = 1 if path.stem.startswith(_Y_MODELS) else 3
    assert conv.in_channels == channels
    assert conv.fixed_size == fixed
    assert conv.scale == scale
    assert conv.offset == offset
    onnx_convs = sum(
        n.op_type in ("Conv", "ConvTranspose")
        for n in onnx.load(str(path), load_external_data=False).graph.node
    )
    assert model.n_taps == onnx_convs
    assert model.parity.reference.startswith("onnxruntime ")
    assert not any(t.name.startswith("onnx::") for t in model.taps)
    print(f"{path.stem}: err {model.parity.max_abs_error:.2e}, {model.n_taps} taps, {elapsed:.1f}s")
