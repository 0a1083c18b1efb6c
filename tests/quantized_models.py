"""Quantized versions of float ONNX models, built with onnxruntime's own quantizer.

Used by ``tests/test_quantized_import.py`` and ``bench/quantized_gate.py``; nothing binary is
committed. Every variant is what a user gets from ``onnxruntime.quantization``:

* ``qdq_pc`` / ``qop_pc``: ``quantize_static``, QDQ / QOperator format, uint8 activations,
  int8 per-channel weights (the quantizer's defaults for CNNs);
* ``qop_pt``: QOperator, per-tensor weights;
* ``qdq_s8``: QDQ, int8 symmetric activations and int8 weights (TensorRT-style);
* ``dyn``: ``quantize_dynamic`` (``DynamicQuantizeLinear`` + ``ConvInteger``).

:func:`break_scale` makes the deliberately broken deployment of the gate tests: one
convolution's weight scale multiplied by a factor (as a wrong calibration or a bad
hand edit would).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from glam.importers.onnx.passes import fold_constants
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
#: The committed CC0 test image; its crops calibrate the quantized fixtures.
ASTRONAUT = ROOT / "fixtures" / "images" / "astronaut_hr.png"

#: name -> (kind, format, per_channel, activation type, weight type, symmetric activations)
VARIANTS: dict[str, tuple[str, str, bool, str, str, bool]] = {
    "qdq_pc": ("static", "QDQ", True, "QUInt8", "QInt8", False),
    "qop_pc": ("static", "QOperator", True, "QUInt8", "QInt8", False),
    "qop_pt": ("static", "QOperator", False, "QUInt8", "QInt8", False),
    "qdq_s8": ("static", "QDQ", True, "QInt8", "QInt8", True),
    "dyn": ("dynamic", "QOperator", False, "QUInt8", "QInt8", False),
}


def fixture_images(n: int = 4, size: int = 64) -> list[np.ndarray]:
    """``n`` crops (RGB float, ``size`` x ``size``) of the committed astronaut image."""
    from PIL import Image

    pil = Image.open(ASTRONAUT).convert("RGB")
    if min(pil.size) < 2 * size:  # fixed-size models (224 x 224) need larger crops
        factor = 2 * size / min(pil.size)
        pil = pil.resize((round(pil.width * factor), round(pil.height * factor)),
                         Image.Resampling.BICUBIC)
    img = np.asarray(pil, dtype=np.float32) / 255.0
    h, w = img.shape[:2]
    out = []
    for i in range(n):
        top = (h - size) * (i + 1) // (n + 1)
        left = (w - size) * (n - i) // (n + 1)
        out.append(img[top:top + size, left:left + size])
    return out


def input_spec(model: onnx.ModelProto, size: tuple[int, int]) -> tuple[str, tuple[int, ...]]:
    """The image input's name and a concrete NCHW/NHWC shape (dynamic H, W -> ``size``)."""
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0
            for d in inp.type.tensor_type.shape.dim]
    dims[0] = 1
    nhwc = dims[-1] in (1, 3) and dims[1] not in (1, 3)
    spatial = (1, 2) if nhwc else (2, 3)
    for axis, value in zip(spatial, size, strict=True):
        if dims[axis] == 0:
            dims[axis] = value
    if dims[3 if nhwc else 1] == 0:
        dims[3 if nhwc else 1] = 3
    return inp.name, tuple(dims)


def calibration_images(
    images: Sequence[np.ndarray], shape: tuple[int, ...]
) -> list[np.ndarray]:
    """Crops of RGB float images (H, W, 3 in [0, 1]) in the model's input ``shape``."""
    nhwc = shape[-1] in (1, 3) and shape[1] not in (1, 3)
    h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
    c = shape[3] if nhwc else shape[1]
    out = []
    for img in images:
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        crop = img[top:top + h, left:left + w].astype(np.float32)
        if c == 1:  # Y of BT.601 YCbCr, as glam feeds 1-channel models
            crop = (16 + 65.481 * crop[..., 0] + 128.553 * crop[..., 1]
                    + 24.966 * crop[..., 2])[..., None] / 255.0
        arr = crop if nhwc else crop.transpose(2, 0, 1)
        out.append(np.ascontiguousarray(arr[None], dtype=np.float32))
    return out


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over fixed inputs."""

    def __init__(self, name: str, inputs: Sequence[np.ndarray]) -> None:
        self._it = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - the quantizer reads once
        pass


def float_copy(src: Path, dst: Path) -> Path:
    """``src`` with constants folded into initializers (the quantizers need initializer
    weights; the legacy exporter writes de-duplicated ``Identity`` weights)."""
    model = onnx.load(str(src))
    fold_constants(model)
    onnx.save(model, str(dst))
    return dst


def quantize(
    src: Path, dst: Path, variant: str, images: Sequence[np.ndarray],
    size: tuple[int, int] = (24, 20),
) -> Path:
    """Quantize ``src`` (float ONNX) into ``dst`` as ``variant`` (:data:`VARIANTS`).

    ``images`` (RGB float H x W x 3) calibrate static variants, centre-cropped to ``size``.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    kind, fmt, per_channel, act, weight, symmetric = VARIANTS[variant]
    folded = float_copy(src, dst.with_suffix(".float.onnx"))
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dynamic":
            quantize_dynamic(str(folded), str(dst), weight_type=getattr(QuantType, weight))
        else:
            model = onnx.load(str(folded))
            name, shape = input_spec(model, size)
            reader = _Reader(name, calibration_images(images, shape))
            CalibrationDataReader.register(_Reader)
            quantize_static(
                str(folded), str(dst), reader, quant_format=getattr(QuantFormat, fmt),
                per_channel=per_channel, activation_type=getattr(QuantType, act),
                weight_type=getattr(QuantType, weight),
                extra_options={"ActivationSymmetric": symmetric},
            )
    folded.unlink()
    return dst


def _weight_scale_names(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(conv name, weight-scale initializer)`` of every quantized convolution, in order."""
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type == "QLinearConv" and node.input[4] in inits:
            found.append((node.name, node.input[4]))
        elif node.op_type == "Conv" and len(node.input) > 1:
            dq = producer.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[1] in inits:
                found.append((node.name, dq.input[1]))
        elif node.op_type == "ConvInteger":
            scale = next((n for n in model.graph.node if n.op_type == "Mul" and any(
                i.endswith("weight_scale") for i in n.input) and node.input[1].replace(
                "_quantized", "_scale") in n.input), None)
            if scale is not None:
                found.append((node.name, node.input[1].replace("_quantized", "_scale")))
    return found


def break_scale(src: Path, dst: Path, factor: float = 2.0, which: int | str = 1) -> str:
    """Copy the quantized model ``src`` to ``dst`` with one convolution's weight scale
    multiplied by ``factor``; returns that conv's name.

    ``which``: the index of the quantized convolution in graph order (default 1, the second:
    the head / feature-extraction conv of the SR nets measured, after a mean shift or the
    input conv, on the main path), or ``"middle"``. In a QDQ file the bias scale
    (``x_scale * w_scale``) is left as it was, as a hand edit of one scale would leave it.
    """
    model = onnx.load(str(src))
    convs = _weight_scale_names(model)
    if not convs:
        raise ValueError(f"{src} has no quantized convolution with a constant weight scale")
    index = len(convs) // 2 if which == "middle" else int(which)
    name, scale = convs[min(index, len(convs) - 1)]
    for i, t in enumerate(model.graph.initializer):
        if t.name == scale:
            arr = numpy_helper.to_array(t) * np.float32(factor)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float32),
                                                                        scale))
    onnx.save(model, str(dst))
    return name
