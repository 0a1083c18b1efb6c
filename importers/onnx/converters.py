"""ONNX → torch converters for what onnx2torch 1.5.15 lacks or gets wrong.

The gaps are measured in the import study (``shared/notes/import-findings.md`` §2):

* opset-18+ schemas of core ops (``Pad``, ``Split``, ``Resize``, ``Reduce*``, and the many
  type-only bumps of opsets 19-25 such as ``Identity``-19 or ``Reshape``-21);
* ``Reshape(allowzero=1)`` (every dynamo export), ``DepthToSpace`` in DCR mode (TF exports),
  ``SpaceToDepth``, ``Upsample``, ``Conv`` with ``auto_pad=SAME_*`` (tf2onnx) and
  ``ConvTranspose`` with asymmetric pads;
* ``Resize`` variants that ``F.interpolate`` does not reproduce. :class:`GlamResize`
  implements the ONNX/onnxruntime arithmetic exactly (separable gathers with ORT's float32
  coordinate maths) and only ``tf_crop_and_resize`` is refused.

Converters are registered in :mod:`glam.importers.onnx.registry` and installed into onnx2torch
only inside :func:`patched_onnx2torch`, a context manager that restores onnx2torch's
registry afterwards. Convolutions always become plain ``nn.Conv*d`` / ``nn.ConvTranspose*d``
modules (optionally ``nn.Sequential(pad, conv)`` or ``nn.Sequential(conv, crop)``, which the
ONNX backend splits into separate graph nodes) so that the tap pass finds them.

One module on purpose (over 600 lines): glam's extra onnx2torch converters, one section per
op family (shape ops, Reduce, Pad, Conv, Resize, small activations, aliases), registered on
import through :mod:`glam.importers.onnx.registry`; the sections share the attribute and constant
helpers at the top.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from glam.errors import (
    ConversionError,
    GlamError,
    MissingDependencyError,
    UnsupportedOpsError,
    first_line,
)
from glam.importers.onnx.registry import entries, qualified_op, register
from torch import nn


# ----------------------------------------------------------------------- importing onnx2torch
def _missing_onnx2torch() -> MissingDependencyError:
    err = MissingDependencyError("onnx2torch", "cpu")
    err.args = (
        "onnx2torch is not installed; install it with `pip install --no-deps onnx2torch` "
        "(--no-deps: it would otherwise replace a CPU torch through torchvision)",
    )
    return err


def _import_onnx2torch() -> None:
    """Import onnx2torch, working around a missing or broken torchvision (study §0).

    onnx2torch imports torchvision only for NonMaxSuppression / RoiAlign, which SR models
    never use. When torchvision cannot be imported, a stub is placed in ``sys.modules``
    only while onnx2torch is being imported and removed right after (a stub left behind
    breaks ``torch.onnx.export(dynamo=True)``, which calls ``find_spec("torchvision")``).
    """
    try:
        importlib.import_module("onnx2torch")
        return
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "onnx2torch":
            raise _missing_onnx2torch() from None
    except (ImportError, RuntimeError, AttributeError, OSError):
        pass
    for name in [m for m in sys.modules if m == "onnx2torch" or m.startswith("onnx2torch.")]:
        del sys.modules[name]
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] == "torchvision"}

    def _unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is not available (stub used while importing onnx2torch)")

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = _unavailable  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    try:
        importlib.import_module("onnx2torch")
    except ModuleNotFoundError:
        raise _missing_onnx2torch() from None
    finally:
        for m in ("torchvision", "torchvision.ops"):
            sys.modules.pop(m, None)
        del saved  # the broken torchvision stays unimported


_import_onnx2torch()

import onnx2torch.converter as _o2t_converter  # noqa: E402
import onnx2torch.node_converters.slice as _o2t_slice  # noqa: E402
from onnx2torch.node_converters.pad import OnnxPadStatic  # noqa: E402
from onnx2torch.node_converters.registry import (  # noqa: E402
    _CONVERTER_REGISTRY,
    OperationDescription,
    add_converter,
)
from onnx2torch.onnx_graph import OnnxGraph  # noqa: E402
from onnx2torch.onnx_node import OnnxNode  # noqa: E402
from onnx2torch.utils.common import (  # noqa: E402
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)

#: onnx2torch's registry as shipped, before any patching (aliases delegate to it).
_O2T_PRISTINE: dict[Any, Any] = dict(_CONVERTER_REGISTRY)


# ------------------------------------------------------------- permanent Slice indexing fix
def _do_slice_tuple(
    x: torch.Tensor, flip_dims: list, pos_axes_slices: list, neg_axes_slices: list
) -> torch.Tensor:
    """onnx2torch's ``_do_slice`` indexing with tuples instead of lists of slices.

    Indexing with a list of slices is deprecated in torch ("will result either in an error
    or a different result"); a tuple is the supported spelling of the same index.
    """
    if flip_dims:
        x = torch.flip(x, dims=flip_dims)
    if pos_axes_slices:
        x = x[tuple(pos_axes_slices)]
    if neg_axes_slices:
        x = x[tuple(neg_axes_slices)]
    return x


_o2t_slice._do_slice = _do_slice_tuple


# ------------------------------------------- permanent module-name fix for dotted domains
def _generate_node_name(node: onnx.NodeProto) -> str:
    """onnx2torch's ``OnnxGraph.generate_node_name`` with the dots of the domain replaced too.

    onnx2torch prefixes the domain to a node's module name and replaces the dots of the
    node's name, not of the domain: every ``com.microsoft`` node (onnxruntime's quantized
    operators) fails with "module name can't contain '.'". Names of default-domain nodes
    are unchanged.
    """
    return (f"{node.domain.replace('.', '_')}/" + (node.name.replace(".", "/") or node.op_type)
            ).lstrip("/")


OnnxGraph.generate_node_name = staticmethod(_generate_node_name)  # type: ignore[method-assign]


# ------------------------------------------------------------------------------- helpers
def _const(graph: OnnxGraph, name: str) -> torch.Tensor | None:
    """The constant value of ``name`` (initializer or ``Constant`` output), else ``None``."""
    if not name:
        return None
    if name in graph.initializers:
        return graph.initializers[name].to_torch()
    try:
        node, _ = graph.value_as_node_output(name)
    except KeyError:
        return None
    if node.operation_type == "Constant" and "value" in node.attributes:
        return node.attributes["value"].to_torch()
    return None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _str_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    value = _attr(node, name, None)
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _mapping(inputs: Sequence[str], node: OnnxNode) -> OnnxMapping:
    return OnnxMapping(inputs=tuple(inputs), outputs=node.output_values)


def _result(module: nn.Module, node: OnnxNode, inputs: Sequence[str] | None = None):
    mapping = onnx_mapping_from_node(node) if inputs is None else _mapping(inputs, node)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


def _ints(t: torch.Tensor | Sequence[int] | None) -> list[int] | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


# ============================================================================== Reshape
class GlamReshape(nn.Module, OnnxToTorchModule):
    """ONNX ``Reshape`` with both ``allowzero`` semantics.

    ``allowzero=0``: a 0 in ``shape`` copies the input's dimension. ``allowzero=1``: a 0
    is a literal zero-sized dimension (``torch.reshape``'s own meaning).
    """

    def __init__(self, allowzero: int = 0) -> None:
        super().__init__()
        self.allowzero = int(allowzero)

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        dims = _ints(shape) or []
        if not self.allowzero:
            dims = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(dims)]
        return torch.reshape(x, dims)


@register("Reshape", 5, 13, 14, 19, 21, 23, 24, 25)
def _reshape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _result(GlamReshape(node.attributes.get("allowzero", 0)), node)


# =================================================================== LayerNormalization
class GlamLayerNorm(nn.Module, OnnxToTorchModule):
    """ONNX ``LayerNormalization`` over ``x.shape[axis:]``, read from the input at run time.

    onnx2torch 1.5.15 builds ``nn.LayerNorm(value_info_shape[axis:])``, and a dynamic
    dimension there reads as 0 (``normalized_shape = [0]``), which fails on every
    dynamic-size transformer export (SwinIR, HAT: the token axis is dynamic).
    """

    def __init__(self, axis: int, epsilon: float) -> None:
        super().__init__()
        self.axis = int(axis)
        self.epsilon = float(epsilon)

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        shape = tuple(x.shape[self.axis :])
        weight = scale.expand(shape) if tuple(scale.shape) != shape else scale
        if bias is not None and tuple(bias.shape) != shape:
            bias = bias.expand(shape)
        return F.layer_norm(x, shape, weight, bias, self.epsilon)


@register("LayerNormalization", 17)
def _layer_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    attrs = node.attributes
    return _result(GlamLayerNorm(attrs.get("axis", -1), attrs.get("epsilon", 1e-5)), node)


# ================================================================================= Clip
class GlamClip(nn.Module, OnnxToTorchModule):
    """ONNX ``Clip`` (11+) whose bounds are constants, absent or computed at run time.

    onnx2torch 1.5.15 reads an absent optional bound (the empty input name ``""``, as the
    legacy exporter writes ``clamp(min=eps)``: OmniSR's normalisation) as a missing constant
    and refuses the node ("Dynamic value of min/max is not implemented").
    """

    def __init__(self, min_val: float | None, max_val: float | None, dynamic: tuple[bool, bool]) -> None:
        super().__init__()
        self.min_val, self.max_val = min_val, max_val
        self.dynamic = dynamic

    def forward(self, x: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:
        it = iter(bounds)
        lo: Any = next(it) if self.dynamic[0] else self.min_val
        hi: Any = next(it) if self.dynamic[1] else self.max_val
        if lo is None and hi is None:
            return x
        if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
            lo, hi = (None if v is None else torch.as_tensor(v, dtype=x.dtype, device=x.device)
                      for v in (lo, hi))
        return torch.clamp(x, lo, hi)


@register("Clip", 11, 12, 13)
def _clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    names = list(node.input_values) + ["", ""]
    inputs = [names[0]]
    consts: list[float | None] = [None, None]
    dynamic = [False, False]
    for i, name in enumerate(names[1:3]):
        if not name:
            continue
        try:
            consts[i] = float(get_const_value(name, graph))
        except KeyError:
            dynamic[i] = True
            inputs.append(name)
    if not any(dynamic):  # the modules onnx2torch builds for constant bounds
        if consts == [None, None]:
            return _result(nn.Identity(), node, inputs)
        if consts == [0.0, None]:
            return _result(nn.ReLU(), node, inputs)
        if consts == [0.0, 6.0]:
            return _result(nn.ReLU6(), node, inputs)
    return _result(GlamClip(consts[0], consts[1], (dynamic[0], dynamic[1])), node, inputs)


# ========================================================================= DepthToSpace
class GlamDepthToSpace(nn.Module, OnnxToTorchModule):
    """``DepthToSpace`` in ``DCR`` (TF, the ONNX default) or ``CRD`` (PixelShuffle) mode."""

    def __init__(self, blocksize: int, mode: str = "DCR") -> None:
        super().__init__()
        self.blocksize = int(blocksize)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.blocksize
        if self.mode == "CRD":
            return torch.pixel_shuffle(x, b)
        n, c, h, w = x.shape
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // (b * b), h * b, w * b)


def _check_depth_to_space(node: onnx.NodeProto) -> str | None:
    mode = _str_attr(node, "mode", "DCR")
    if mode not in ("DCR", "CRD"):
        return f"DepthToSpace mode {mode!r} is not DCR or CRD"
    return None


@register("DepthToSpace", 1, 11, 13, check=_check_depth_to_space)
def _depth_to_space(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    mode = node.attributes.get("mode", "DCR")
    return _result(GlamDepthToSpace(node.attributes["blocksize"], mode), node)


class GlamSpaceToDepth(nn.Module, OnnxToTorchModule):
    """``SpaceToDepth`` (the inverse of DCR ``DepthToSpace``)."""

    def __init__(self, blocksize: int) -> None:
        super().__init__()
        self.blocksize = int(blocksize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.blocksize
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * b * b, h // b, w // b)


@register("SpaceToDepth", 1, 13)
def _space_to_depth(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _result(GlamSpaceToDepth(node.attributes["blocksize"]), node)


# ================================================================================ Split
class GlamSplit(nn.Module, OnnxToTorchModule):
    """ONNX ``Split`` (every opset): explicit sizes, or ``n`` chunks (last one smaller)."""

    def __init__(self, axis: int, n_outputs: int, split: list[int] | None = None) -> None:
        super().__init__()
        self.axis = int(axis)
        self.n_outputs = int(n_outputs)
        self.split = split

    def forward(
        self, x: torch.Tensor, split: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...] | torch.Tensor:
        sizes = self.split
        if sizes is None and split is not None and split.numel():
            sizes = _ints(split)
        if sizes is None:
            length = int(x.shape[self.axis])
            chunk = -(-length // self.n_outputs)
            sizes = [chunk] * (self.n_outputs - 1) + [length - chunk * (self.n_outputs - 1)]
        parts = torch.split(x, sizes, dim=self.axis)
        return parts[0] if self.n_outputs == 1 else tuple(parts)


@register("Split", 2, 11, 13, 18)
def _split(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    axis = node.attributes.get("axis", 0)
    n = len(node.output_values)
    split = node.attributes.get("split")
    inputs = [node.input_values[0]]
    if split is None and len(node.input_values) > 1 and node.input_values[1]:
        const = _const(graph, node.input_values[1])
        if const is None:
            inputs.append(node.input_values[1])
        else:
            split = _ints(const)
    return _result(GlamSplit(axis, n, _ints(split)), node, inputs)


# =============================================================================== Reduce*
_REDUCE_OPS = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
)


class GlamReduce(nn.Module, OnnxToTorchModule):
    """Every ONNX ``Reduce*`` op, with static (attribute) or run-time (input) axes."""

    def __init__(
        self,
        op_type: str,
        axes: list[int] | None,
        keepdims: int = 1,
        noop_with_empty_axes: int = 0,
    ) -> None:
        super().__init__()
        self.op_type = op_type
        self.axes = axes
        self.keepdims = bool(keepdims)
        self.noop_with_empty_axes = bool(noop_with_empty_axes)

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        ax = self.axes
        if ax is None and axes is not None and axes.numel():
            ax = _ints(axes)
        if not ax:
            if self.noop_with_empty_axes:
                return x
            ax = list(range(x.dim()))
        rank = max(x.dim(), 1)
        dims = sorted({a % rank for a in ax})
        keep = self.keepdims
        op = self.op_type
        if op == "ReduceSum":
            return torch.sum(x, dim=dims, keepdim=keep)
        if op == "ReduceMean":
            return torch.mean(x, dim=dims, keepdim=keep)
        if op == "ReduceMax":
            return torch.amax(x, dim=dims, keepdim=keep)
        if op == "ReduceMin":
            return torch.amin(x, dim=dims, keepdim=keep)
        if op == "ReduceProd":
            for d in reversed(dims):
                x = torch.prod(x, dim=d, keepdim=keep)
            return x
        if op == "ReduceL1":
            return torch.sum(torch.abs(x), dim=dims, keepdim=keep)
        if op == "ReduceL2":
            return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))
        if op == "ReduceSumSquare":
            return torch.sum(x * x, dim=dims, keepdim=keep)
        if op == "ReduceLogSum":
            return torch.log(torch.sum(x, dim=dims, keepdim=keep))
        if op == "ReduceLogSumExp":
            return torch.logsumexp(x, dim=dims, keepdim=keep)
        raise ConversionError(f"reduction {op!r} is not implemented")


def _reduce(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = node.attributes
    axes = attrs.get("axes")
    inputs = [node.input_values[0]]
    if axes is None and len(node.input_values) > 1 and node.input_values[1]:
        const = _const(graph, node.input_values[1])
        if const is None:
            inputs.append(node.input_values[1])
        else:
            axes = _ints(const)
    module = GlamReduce(
        node.operation_type,
        _ints(axes),
        attrs.get("keepdims", 1),
        attrs.get("noop_with_empty_axes", 0),
    )
    return _result(module, node, inputs)


for _op in _REDUCE_OPS:
    _versions = [1, 11, 13, 18]
    if _op in ("ReduceMax", "ReduceMin"):
        _versions += [12, 20]
    if _op == "ReduceSum":
        _versions = [1, 11, 13]
    register(_op, *sorted(_versions))(_reduce)


# ================================================================================== Pad
class GlamPad(nn.Module, OnnxToTorchModule):
    """ONNX ``Pad`` (every opset): constant, reflect, edge and wrap modes on any axes.

    Non-constant modes gather along each padded axis with reflected / clamped / wrapped
    indices, which is exact and also handles negative pads (crops).
    """

    def __init__(
        self,
        mode: str = "constant",
        pads: list[int] | None = None,
        value: float | None = None,
        axes: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.pads = pads
        self.value = value
        self.axes = axes

    def forward(
        self,
        x: torch.Tensor,
        pads: torch.Tensor | None = None,
        constant_value: torch.Tensor | None = None,
        axes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        p = self.pads if self.pads is not None else _ints(pads)
        if p is None:
            raise ConversionError("Pad node has no pads")
        rank = x.dim()
        ax = self.axes if self.axes is not None else _ints(axes)
        if ax is None:
            ax = list(range(rank))
        ax = [a % rank for a in ax]
        begin = [0] * rank
        end = [0] * rank
        for i, a in enumerate(ax):
            begin[a] = p[i]
            end[a] = p[len(ax) + i]
        if self.mode == "constant":
            value = self.value
            if value is None:
                value = (
                    float(constant_value.reshape(-1)[0])
                    if constant_value is not None and constant_value.numel()
                    else 0.0
                )
            torch_pads: list[int] = []
            for d in reversed(range(rank)):
                torch_pads += [begin[d], end[d]]
            return F.pad(x, torch_pads, mode="constant", value=value)
        for d in range(rank):
            b, e = begin[d], end[d]
            if b == 0 and e == 0:
                continue
            length = int(x.shape[d])
            idx = torch.arange(-b, length + e, device=x.device)
            if self.mode == "edge":
                idx = idx.clamp(0, length - 1)
            elif self.mode == "wrap":
                idx = torch.remainder(idx, length)
            elif length == 1:
                idx = torch.zeros_like(idx)
            else:
                period = 2 * (length - 1)
                idx = torch.remainder(idx, period)
                idx = torch.where(idx >= length, period - idx, idx)
            x = torch.index_select(x, d, idx)
        return x


def _check_pad(node: onnx.NodeProto) -> str | None:
    mode = _str_attr(node, "mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        return f"Pad mode {mode!r} is unknown"
    return None


@register("Pad", 2, 11, 13, 18, 19, 21, 23, 24, 25, check=_check_pad)
def _pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = node.attributes
    mode = attrs.get("mode", "constant")
    if "pads" in attrs:  # Pad-2
        module = GlamPad(mode, _ints(attrs["pads"]), float(attrs.get("value", 0.0)))
        return _result(module, node, [node.input_values[0]])
    names = list(node.input_values) + [""] * (4 - len(node.input_values))
    pads = _const(graph, names[1])
    value = _const(graph, names[2])
    axes = _const(graph, names[3])
    module = GlamPad(
        mode,
        _ints(pads),
        float(value.reshape(-1)[0]) if value is not None and value.numel() else None,
        _ints(axes),
    )
    inputs = [
        names[0],
        names[1] if pads is None else "",
        names[2] if value is None else "",
        names[3] if axes is None else "",
    ]
    while inputs and not inputs[-1]:
        inputs.pop()
    return _result(module, node, inputs)


# ================================================================================== Conv
_CONV = {
    ("Conv", 1): nn.Conv1d,
    ("Conv", 2): nn.Conv2d,
    ("Conv", 3): nn.Conv3d,
    ("ConvTranspose", 1): nn.ConvTranspose1d,
    ("ConvTranspose", 2): nn.ConvTranspose2d,
    ("ConvTranspose", 3): nn.ConvTranspose3d,
}


class GlamSamePad(nn.Module, OnnxToTorchModule):
    """Run-time ``auto_pad=SAME_UPPER/SAME_LOWER`` padding of a strided convolution input."""

    def __init__(self, kernel: list[int], strides: list[int], upper: bool) -> None:
        super().__init__()
        self.kernel = kernel  # effective kernel extent: (k - 1) * dilation + 1
        self.strides = strides
        self.upper = upper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch_pads: list[int] = []
        for i in reversed(range(len(self.kernel))):
            size = int(x.shape[2 + i])
            s = self.strides[i]
            out = -(-size // s)
            total = max((out - 1) * s + self.kernel[i] - size, 0)
            small, big = total // 2, total - total // 2
            torch_pads += [small, big] if self.upper else [big, small]
        return F.pad(x, torch_pads)


class GlamCrop(nn.Module, OnnxToTorchModule):
    """Crop ``begin[i]`` / ``end[i]`` elements of spatial dimension ``i`` (ConvTranspose pads).

    With ``target`` set, the amount to crop is computed at run time from the wanted output
    size (``ConvTranspose`` with ``output_shape``); ``upper`` crops the odd element at the
    end (``auto_pad=SAME_UPPER``), otherwise at the beginning (``NOTSET``, ``SAME_LOWER``), as
    onnxruntime does.
    """

    def __init__(
        self,
        begin: list[int] | None = None,
        end: list[int] | None = None,
        target: list[int] | None = None,
        upper: bool = True,
    ) -> None:
        super().__init__()
        self.begin = begin
        self.end = end
        self.target = target
        self.upper = upper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.dim() - 2
        for i in range(n):
            size = int(x.shape[2 + i])
            if self.target is not None:
                total = size - self.target[i]
                if total < 0:
                    raise ConversionError(
                        f"ConvTranspose output_shape {self.target} is larger than the full "
                        f"transposed-convolution output ({size} on axis {2 + i})"
                    )
                small, big = total // 2, total - total // 2
                b, e = (small, big) if self.upper else (big, small)
            else:
                b = self.begin[i] if self.begin is not None else 0
                e = self.end[i] if self.end is not None else 0
            if b or e:
                x = x.narrow(2 + i, b, size - b - e)
        return x


def _conv_weight(graph: OnnxGraph, node: OnnxNode, index: int) -> torch.Tensor | None:
    if len(node.input_values) <= index or not node.input_values[index]:
        return None
    name = node.input_values[index]
    value = _const(graph, name)
    if value is None:
        what = "weight" if index == 1 else "bias"
        raise ConversionError(
            f"{node.operation_type} node {node.name or node.unique_name!r} takes its {what} from "
            f"the computed value {name!r}; glam needs constant convolution weights (re-export "
            "the model with constant folding enabled)"
        )
    return value


def _check_conv(node: onnx.NodeProto) -> str | None:
    auto_pad = _str_attr(node, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return f"{node.op_type} auto_pad {auto_pad!r} is unknown"
    if any(p < 0 for p in (_attr(node, "pads", []) or [])):
        return f"{node.op_type} has negative pads {list(_attr(node, 'pads'))}"
    return None


@register("Conv", 1, 11, 22, check=_check_conv)
@register("ConvTranspose", 1, 11, 22, check=_check_conv)
def _conv(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    weight = _conv_weight(graph, node, 1)
    bias = _conv_weight(graph, node, 2)
    if weight is None:
        raise ConversionError(
            f"{node.operation_type} node {node.name or node.unique_name!r} has no weight input; "
            "the model is malformed"
        )
    module = conv_module(node.operation_type, node.attributes, weight, bias)
    return _result(module, node, [node.input_values[0]])


def conv_module(
    op: str, attrs: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None
) -> nn.Module:
    """The ``nn.Conv*d`` / ``nn.ConvTranspose*d`` of an ONNX ``Conv`` / ``ConvTranspose``.

    ``attrs`` are the node's attributes (``pads``, ``strides``, ``auto_pad``...). Returns the
    convolution, or ``nn.Sequential(pad, conv)`` / ``nn.Sequential(conv, crop)`` where the
    padding cannot be expressed by the module itself. Quantized convolutions
    (:mod:`glam.importers.onnx.quantized`) are built here too, from dequantized weights.
    """
    rank = weight.dim() - 2
    cls = _CONV.get((op, rank))
    if cls is None:
        raise NotImplementedError(f"{op} with {rank} spatial dimensions is not implemented")
    kernel = _ints(attrs.get("kernel_shape")) or list(weight.shape[2:])
    strides = _ints(attrs.get("strides")) or [1] * rank
    dilations = _ints(attrs.get("dilations")) or [1] * rank
    groups = int(attrs.get("group", 1))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    pads = _ints(attrs.get("pads")) or [0] * (2 * rank)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    pre: nn.Module | None = None
    post: nn.Module | None = None
    if op == "Conv":
        if auto_pad == "VALID":
            pads = [0] * (2 * rank)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            upper = auto_pad == "SAME_UPPER"
            if all(s == 1 for s in strides):
                totals = [e - 1 for e in extent]
                small = [t // 2 for t in totals]
                big = [t - t // 2 for t in totals]
                pads = small + big if upper else big + small
            else:
                pads = [0] * (2 * rank)
                pre = GlamSamePad(extent, strides, upper)
        begin, end = pads[:rank], pads[rank:]
        if begin == end:
            padding: list[int] = begin
        else:
            padding = [0] * rank
            pre = OnnxPadStatic.create_from_onnx_params(onnx_pads=pads)
        module = cls(
            in_channels=weight.shape[1] * groups,
            out_channels=weight.shape[0],
            kernel_size=kernel,
            stride=strides,
            padding=padding,
            dilation=dilations,
            groups=groups,
            bias=bias is not None,
        )
    else:
        output_padding = _ints(attrs.get("output_padding")) or [0] * rank
        output_shape = _ints(attrs.get("output_shape"))
        if output_shape is not None:
            output_shape = output_shape[-rank:]
            padding = [0] * rank
            post = GlamCrop(target=output_shape, upper=auto_pad == "SAME_UPPER")
        else:
            if auto_pad == "VALID":
                pads = [0] * (2 * rank)
            elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                totals = [
                    op_ + e - s for op_, e, s in zip(output_padding, extent, strides, strict=True)
                ]
                if any(t < 0 for t in totals):
                    raise NotImplementedError(
                        f"ConvTranspose auto_pad={auto_pad} with stride larger than the kernel"
                    )
                small = [t // 2 for t in totals]
                big = [t - t // 2 for t in totals]
                pads = small + big if auto_pad == "SAME_UPPER" else big + small
            begin, end = pads[:rank], pads[rank:]
            padding = [min(b, e) for b, e in zip(begin, end, strict=True)]
            extra_b = [b - p for b, p in zip(begin, padding, strict=True)]
            extra_e = [e - p for e, p in zip(end, padding, strict=True)]
            if any(extra_b) or any(extra_e):
                post = GlamCrop(begin=extra_b, end=extra_e)
        module = cls(
            in_channels=weight.shape[0],
            out_channels=weight.shape[1] * groups,
            kernel_size=kernel,
            stride=strides,
            padding=padding,
            output_padding=output_padding,
            dilation=dilations,
            groups=groups,
            bias=bias is not None,
        )
    with torch.no_grad():
        module.weight.data = weight
        if bias is not None:
            module.bias.data = bias
    if pre is not None:
        return nn.Sequential(pre, module)
    if post is not None:
        return nn.Sequential(module, post)
    return module


# ================================================================================ Resize
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")
_COORD_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
)
_F32 = np.float32


def _source_coords(mode: str, out_len: int, in_len: int, scale: float) -> np.ndarray:
    """onnxruntime's ``get_original_coordinate`` for every output index, in float32."""
    x = np.arange(out_len, dtype=_F32)
    s = _F32(scale)
    half = _F32(0.5)
    if mode == "half_pixel":
        return (x + half) / s - half
    if mode == "pytorch_half_pixel":
        if out_len > 1:
            return (x + half) / s - half
        return np.zeros(out_len, dtype=_F32)
    if mode == "align_corners":
        if out_len == 1:
            return np.zeros(out_len, dtype=_F32)
        return x * _F32(in_len - 1) / _F32(out_len - 1)
    if mode == "asymmetric":
        return x / s
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / s
    if mode == "half_pixel_symmetric":
        output_width = s * _F32(in_len)
        adjustment = _F32(out_len) / output_width
        center = _F32(in_len) / _F32(2.0)
        offset = center * (_F32(1.0) - adjustment)
        return offset + (x + half) / s - half
    raise ConversionError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


def _nearest_index(coords: np.ndarray, mode: str, in_len: int, scale: float) -> np.ndarray:
    """onnxruntime's nearest rounding of source coordinates, clamped to the input."""
    c = coords.astype(np.float64)
    if mode == "round_prefer_floor":
        trunc = np.trunc(coords)
        is_half = coords == (trunc + _F32(0.5))
        idx = np.where(is_half, np.floor(c), np.sign(c) * np.floor(np.abs(c) + 0.5))
    elif mode == "round_prefer_ceil":
        idx = np.sign(c) * np.floor(np.abs(c) + 0.5)
    elif mode == "floor":
        idx = np.floor(c)
    elif mode == "ceil":
        idx = np.ceil(c)
    elif mode == "simple":
        idx = np.ceil(c) if scale < 1 else np.trunc(c)
    else:
        raise ConversionError(f"Resize nearest_mode {mode!r} is not supported")
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def _cubic_kernel(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    x2, x3 = x * x, x * x * x
    near = (a + 2) * x3 - (a + 3) * x2 + 1
    far = a * x3 - 5 * a * x2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _interp_weights(
    coords: np.ndarray,
    in_len: int,
    scale: float,
    mode: str,
    cubic_a: float,
    exclude_outside: bool,
    antialias: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Gather indices and weights ``(out, taps)`` of 1-D linear/cubic interpolation.

    Follows the ONNX reference implementation (``onnx/reference/ops/op_resize.py``): the
    window around ``x`` is taken relative to ``base = floor(x)`` (or ``x - 1`` when ``x``
    is an integer), indices outside the input are clamped (edge padding) unless
    ``exclude_outside``, and the antialiased kernels are stretched by ``1 / scale``.
    """
    x = coords.astype(np.float64)
    base = np.floor(x)
    base = np.where(x == base, x - 1.0, base)
    ratio = x - base
    s = min(float(scale), 1.0) if antialias else 1.0
    if mode == "linear":
        start = int(math.floor(-1.0 / s) + 1) if antialias else 0
        offsets = np.arange(start, 2 - start) if antialias else np.arange(0, 2)
    else:
        start = int(math.floor(-2.0 / s) + 1) if antialias else -1
        offsets = np.arange(start, 2 - start) if antialias else np.arange(-1, 3)
    dist = (offsets[None, :] - ratio[:, None]) * s
    if mode == "linear":
        w = np.clip(1.0 - np.abs(dist), 0.0, 1.0)
    else:
        w = _cubic_kernel(dist, cubic_a)
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    idx = base[:, None].astype(np.int64) + offsets[None, :]
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_len - 1), w


class GlamResize(nn.Module, OnnxToTorchModule):
    """ONNX ``Resize`` (opsets 10-19) and ``Upsample`` with onnxruntime's exact arithmetic.

    Linear/cubic modes that ``F.interpolate`` reproduces (``half_pixel``,
    ``pytorch_half_pixel``, ``align_corners``; cubic with ``a = -0.75`` and no
    ``exclude_outside``; no antialiased downscale) use it. Every other case, and every
    ``nearest`` case, is computed by separable gathers along each resized axis with the
    source coordinates computed in float32 exactly as onnxruntime does, so
    ``asymmetric``, ``tf_half_pixel_for_nn``, any rounding mode, any cubic coefficient,
    ``exclude_outside`` and antialiasing are reproduced rather than approximated.
    ``tf_crop_and_resize`` is refused by the converter's check.
    """

    def __init__(
        self,
        mode: str = "nearest",
        coordinate_transformation_mode: str = "half_pixel",
        nearest_mode: str = "round_prefer_floor",
        cubic_coeff_a: float = -0.75,
        exclude_outside: int = 0,
        antialias: int = 0,
        axes: list[int] | None = None,
        keep_aspect_ratio_policy: str = "stretch",
        scales: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.coord = coordinate_transformation_mode
        self.nearest_mode = nearest_mode
        self.cubic_a = float(cubic_coeff_a)
        self.exclude_outside = bool(exclude_outside)
        self.antialias = bool(antialias)
        self.axes = axes
        self.policy = keep_aspect_ratio_policy
        self.static_scales = scales

    # -------------------------------------------------------------------- sizes
    def _plan(
        self,
        shape: list[int],
        scales: torch.Tensor | None,
        sizes: torch.Tensor | None,
    ) -> tuple[list[int], list[float]]:
        rank = len(shape)
        axes = [a % rank for a in self.axes] if self.axes is not None else list(range(rank))
        sc = self.static_scales
        if sc is None and scales is not None and scales.numel():
            sc = [float(v) for v in scales.reshape(-1).tolist()]
        sz = _ints(sizes) if sizes is not None and sizes.numel() else None
        out = list(shape)
        factor = [1.0] * rank
        if sz is not None:
            if len(sz) != len(axes):
                raise ConversionError(f"Resize sizes {sz} do not match the axes {axes}")
            if self.policy in ("not_larger", "not_smaller"):
                ratios = [_F32(sz[i]) / _F32(shape[a]) for i, a in enumerate(axes)]
                r = min(ratios) if self.policy == "not_larger" else max(ratios)
                for a in axes:
                    out[a] = int(math.floor(float(r) * shape[a] + 0.5))
                    factor[a] = float(r)
            else:
                for i, a in enumerate(axes):
                    out[a] = int(sz[i])
                    factor[a] = float(_F32(sz[i]) / _F32(shape[a])) if shape[a] else 1.0
        elif sc is not None:
            if len(sc) != len(axes):
                raise ConversionError(f"Resize scales {sc} do not match the axes {axes}")
            for i, a in enumerate(axes):
                factor[a] = float(_F32(sc[i]))
                out[a] = int(_F32(sc[i]) * _F32(shape[a]))
        else:
            raise ConversionError("Resize node has neither scales nor sizes")
        return out, factor

    def _fast_path(self, x: torch.Tensor, out: list[int], factor: list[float], by_size: bool):
        rank = x.dim()
        if self.mode == "nearest" or out[:2] != list(x.shape[:2]) or factor[:2] != [1.0, 1.0]:
            return None
        if self.coord not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            return None
        if self.antialias and any(f < 1 for f in factor[2:]):
            return None
        if self.coord == "pytorch_half_pixel" and any(o <= 1 for o in out[2:]):
            return None
        if self.mode == "cubic":
            if self.cubic_a != -0.75 or self.exclude_outside or rank != 4:
                return None
            torch_mode = "bicubic"
        else:
            torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}.get(rank)
            if torch_mode is None:
                return None
        align = self.coord == "align_corners"
        if by_size or align:
            return F.interpolate(x, size=out[2:], mode=torch_mode, align_corners=align)
        return F.interpolate(
            x,
            scale_factor=factor[2:],
            mode=torch_mode,
            align_corners=False,
            recompute_scale_factor=False,
        )

    def forward(
        self,
        x: torch.Tensor,
        roi: torch.Tensor | None = None,
        scales: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = [int(d) for d in x.shape]
        out, factor = self._plan(shape, scales, sizes)
        by_size = sizes is not None and sizes.numel() > 0 and self.policy == "stretch"
        fast = self._fast_path(x, out, factor, by_size)
        if fast is not None and list(fast.shape) == out:
            return fast
        y = x
        for d in range(x.dim()):
            if out[d] == shape[d] and factor[d] == 1.0:
                continue
            coords = _source_coords(self.coord, out[d], shape[d], factor[d])
            if self.mode == "nearest":
                idx = _nearest_index(coords, self.nearest_mode, shape[d], factor[d])
                y = torch.index_select(y, d, torch.from_numpy(idx).to(x.device))
                continue
            idx, w = _interp_weights(
                coords,
                shape[d],
                factor[d],
                self.mode,
                self.cubic_a,
                self.exclude_outside,
                self.antialias,
            )
            taps = idx.shape[1]
            flat = torch.from_numpy(idx.reshape(-1)).to(x.device)
            g = torch.index_select(y, d, flat)
            g = g.reshape(*g.shape[:d], out[d], taps, *g.shape[d + 1 :])
            wt = torch.from_numpy(w).to(device=x.device, dtype=x.dtype)
            wt = wt.reshape(out[d], taps, *([1] * (x.dim() - d - 1)))
            y = (g * wt).sum(dim=d + 1)
        return y


def _check_resize(node: onnx.NodeProto) -> str | None:
    mode = _str_attr(node, "mode", "nearest")
    coord = _str_attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _str_attr(node, "nearest_mode", "round_prefer_floor")
    policy = _str_attr(node, "keep_aspect_ratio_policy", "stretch")
    if mode not in ("nearest", "linear", "cubic"):
        return f"Resize mode {mode!r} is unknown"
    if coord == "tf_crop_and_resize":
        return (
            "Resize coordinate_transformation_mode='tf_crop_and_resize' (crop with roi and "
            "extrapolation) cannot be reproduced exactly"
        )
    if coord not in _COORD_MODES:
        return f"Resize coordinate_transformation_mode {coord!r} is unknown"
    if mode == "nearest" and nearest not in _NEAREST_MODES:
        return f"Resize nearest_mode {nearest!r} is unknown"
    if policy not in ("stretch", "not_larger", "not_smaller"):
        return f"Resize keep_aspect_ratio_policy {policy!r} is unknown"
    if mode == "nearest" and coord == "half_pixel_symmetric":
        return (
            "Resize mode='nearest' with coordinate_transformation_mode='half_pixel_symmetric' "
            "rounds ties differently in onnxruntime and cannot be reproduced exactly"
        )
    if mode == "nearest" and int(_attr(node, "antialias", 0) or 0):
        return "Resize antialias=1 is undefined for mode='nearest'"
    return None


def _resize_module(node: OnnxNode) -> GlamResize:
    a = node.attributes
    return GlamResize(
        mode=a.get("mode", "nearest"),
        coordinate_transformation_mode=a.get("coordinate_transformation_mode", "half_pixel"),
        nearest_mode=a.get("nearest_mode", "round_prefer_floor"),
        cubic_coeff_a=a.get("cubic_coeff_a", -0.75),
        exclude_outside=a.get("exclude_outside", 0),
        antialias=a.get("antialias", 0),
        axes=_ints(a.get("axes")),
        keep_aspect_ratio_policy=a.get("keep_aspect_ratio_policy", "stretch"),
    )


@register("Resize", 11, 13, 18, 19, check=_check_resize)
def _resize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _result(_resize_module(node), node)


@register("Resize", 10, check=_check_resize)
def _resize10(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = GlamResize(
        mode=node.attributes.get("mode", "nearest"),
        coordinate_transformation_mode="asymmetric",
        nearest_mode="simple",
    )
    return _result(module, node, [node.input_values[0], "", node.input_values[1]])


def _check_upsample(node: onnx.NodeProto) -> str | None:
    mode = _str_attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        return f"Upsample mode {mode!r} is unknown"
    return None


@register("Upsample", 7, 9, 10, check=_check_upsample)
def _upsample(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    mode = node.attributes.get("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    scales = node.attributes.get("scales")
    if scales is None and len(node.input_values) > 1:
        const = _const(graph, node.input_values[1])
        if const is not None:
            scales = [float(v) for v in const.reshape(-1).tolist()]
    module = GlamResize(
        mode=mode,
        coordinate_transformation_mode="asymmetric",
        nearest_mode="simple",
        scales=[float(s) for s in scales] if scales is not None else None,
    )
    if scales is not None:
        return _result(module, node, [node.input_values[0]])
    return _result(module, node, [node.input_values[0], "", node.input_values[1]])


# ================================================================================= Slice-1
class GlamSliceV1(nn.Module, OnnxToTorchModule):
    """``Slice``-1 (static ``starts``/``ends``/``axes`` attributes)."""

    def __init__(self, starts: list[int], ends: list[int], axes: list[int] | None) -> None:
        super().__init__()
        self.starts, self.ends = starts, ends
        self.axes = axes if axes is not None else list(range(len(starts)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index: list[slice] = [slice(None)] * x.dim()
        for s, e, a in zip(self.starts, self.ends, self.axes, strict=True):
            index[a % x.dim()] = slice(s, e)
        return x[tuple(index)]


@register("Slice", 1)
def _slice1(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    a = node.attributes
    module = GlamSliceV1(_ints(a["starts"]) or [], _ints(a["ends"]) or [], _ints(a.get("axes")))
    return _result(module, node)


# ============================================================================= ScatterND
class GlamScatterND(nn.Module, OnnxToTorchModule):
    """``ScatterND`` with every reduction (none, add, mul, max, min).

    onnx2torch's version indexes with a list of lists (deprecated indexing) and refuses
    reductions; this one uses a tuple of index tensors.
    """

    def __init__(self, reduction: str = "none") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(
        self, data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor
    ) -> torch.Tensor:
        out = data.clone()
        k = int(indices.shape[-1])
        flat = indices.reshape(-1, k).to(torch.long)
        flat = torch.where(flat < 0, flat + torch.tensor(data.shape[:k], device=flat.device), flat)
        upd = updates.reshape(-1, *updates.shape[indices.dim() - 1 :])
        index = tuple(flat[:, i] for i in range(k))
        if self.reduction == "none":
            return out.index_put(index, upd)
        if self.reduction == "add":
            return out.index_put(index, upd, accumulate=True)
        for row in range(flat.shape[0]):  # sequential semantics for mul / max / min
            at = tuple(int(v) for v in flat[row])
            cur = out[at]
            if self.reduction == "mul":
                new = cur * upd[row]
            elif self.reduction == "max":
                new = torch.maximum(cur, upd[row])
            else:
                new = torch.minimum(cur, upd[row])
            out = out.index_put(
                tuple(torch.tensor([v], device=out.device) for v in at), new.unsqueeze(0)
            )
        return out


def _check_scatter_nd(node: onnx.NodeProto) -> str | None:
    reduction = _str_attr(node, "reduction", "none")
    if reduction not in ("none", "add", "mul", "max", "min"):
        return f"ScatterND reduction {reduction!r} is unknown"
    return None


@register("ScatterND", 11, 13, 16, 18, check=_check_scatter_nd)
def _scatter_nd(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _result(GlamScatterND(node.attributes.get("reduction", "none")), node)


# ================================================================================== Gelu
@register("Gelu", 20)
def _gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _result(nn.GELU(approximate=node.attributes.get("approximate", "none")), node)


class GlamMish(nn.Module, OnnxToTorchModule):
    """``Mish``: ``x * tanh(softplus(x))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x)


@register("Mish", 18, 22)
def _mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _result(GlamMish(), node)


# ======================================================== aliases for type-only schema bumps
def _alias(op: str, target: int, *versions: int, check: Any = None) -> None:
    """Serve ``op``-``versions`` with onnx2torch's converter for ``op``-``target``.

    Only for schema versions that add tensor types (bfloat16, float8, int4, float4...)
    without changing semantics for the float32 SR graphs glam analyses.
    """
    description = OperationDescription(domain="", operation_type=op, version=target)
    base = _O2T_PRISTINE[description]

    def converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        return base(node, graph)

    converter.__name__ = f"alias_{op}_{target}"
    register(op, *versions, check=check)(converter)


def _check_average_pool(node: onnx.NodeProto) -> str | None:
    dilations = _attr(node, "dilations", None)
    if dilations and any(int(d) != 1 for d in dilations):
        return f"AveragePool with dilations {list(dilations)} is not implemented"
    return None


_ALIASES: list[tuple[str, int, tuple[int, ...]]] = [
    ("Identity", 16, (19, 21, 23, 24, 25)),
    ("Constant", 13, (19, 21, 23, 24, 25)),
    ("Cast", 13, (19, 21, 23)),
    ("Shape", 15, (19, 21, 23, 24, 25)),
    ("ConstantOfShape", 9, (20, 21, 23, 24, 25)),
    ("Flatten", 13, (21, 23, 24, 25)),
    ("Squeeze", 21, (23, 24, 25)),
    ("Unsqueeze", 13, (21, 23, 24, 25)),
    ("Transpose", 13, (21, 23, 24, 25)),
    ("Equal", 13, (19,)),
    ("GreaterOrEqual", 12, (16,)),
    ("LessOrEqual", 12, (16,)),
    ("MaxPool", 12, (22,)),
    ("GlobalAveragePool", 1, (22,)),
    ("InstanceNormalization", 6, (22,)),
    ("Dropout", 13, (22,)),
    ("Elu", 6, (22,)),
    ("Selu", 6, (22,)),
    ("HardSigmoid", 6, (22,)),
    ("HardSwish", 14, (22,)),
    ("Softplus", 1, (22,)),
    ("Softsign", 1, (22,)),
    ("Round", 11, (22,)),
    ("IsInf", 10, (20,)),
    ("IsNaN", 13, (20,)),
]
for _op, _target, _versions_t in _ALIASES:
    _alias(_op, _target, *_versions_t)
_alias("AveragePool", 11, 19, 22, check=_check_average_pool)


# =============================================================== scoped registry patching
_PATCH_LOCK = threading.RLock()
_MISSING = object()



def _wrap_converter(op_label: str, converter: Any) -> Any:
    """Turn a converter's exceptions into glam's typed errors naming the node."""

    def wrapped(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        try:
            return converter(node, graph)
        except GlamError:
            raise
        except NotImplementedError as exc:
            op, _, ver = op_label.rpartition("-")
            raise UnsupportedOpsError(
                [(op, int(ver))], f"node {node.name or node.unique_name!r}: {first_line(exc)}"
            ) from None
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError) as exc:
            raise ConversionError(
                f"cannot convert {op_label} node {node.name or node.unique_name!r}: "
                f"{type(exc).__name__}: {first_line(exc)}"
            ) from None

    return wrapped


@contextlib.contextmanager
def patched_onnx2torch() -> Iterator[None]:
    """Install glam's converters into onnx2torch for the duration of the ``with`` block.

    New keys are added through onnx2torch's registration API (``add_converter``); keys
    onnx2torch already has (``Reshape``, ``Resize``, ``DepthToSpace``, ``Conv``, ``Pad``,
    ``Split``, ``Reduce*``...) are overridden. Every converter is wrapped so that its
    errors become :class:`UnsupportedOpsError` / :class:`ConversionError` naming the node.
    On exit onnx2torch's registry is restored exactly. The block holds a lock: conversions
    in several threads are serialised.
    """
    with _PATCH_LOCK:
        saved: dict[Any, Any] = {}
        orig_get_converter = _o2t_converter.get_converter
        try:
            for entry in entries():
                desc = OperationDescription(
                    domain=entry.domain, operation_type=entry.op_type, version=entry.version
                )
                saved[desc] = _CONVERTER_REGISTRY.get(desc, _MISSING)
                if saved[desc] is _MISSING:
                    add_converter(entry.op_type, entry.version, entry.domain)(entry.converter)
                else:
                    _CONVERTER_REGISTRY[desc] = entry.converter

            def get_converter(operation_type: str, version: int, domain: str = "") -> Any:
                try:
                    conv = orig_get_converter(
                        operation_type=operation_type, version=version, domain=domain
                    )
                except NotImplementedError:
                    raise UnsupportedOpsError(
                        [(qualified_op(domain, operation_type), version)]
                    ) from None
                return _wrap_converter(f"{qualified_op(domain, operation_type)}-{version}", conv)

            _o2t_converter.get_converter = get_converter
            yield
        finally:
            _o2t_converter.get_converter = orig_get_converter
            for desc, prev in saved.items():
                if prev is _MISSING:
                    _CONVERTER_REGISTRY.pop(desc, None)
                else:
                    _CONVERTER_REGISTRY[desc] = prev


def o2t_has_converter(op_type: str, version: int, domain: str = "") -> bool:
    """Whether stock onnx2torch registers a converter for this schema version."""
    return OperationDescription(domain=domain, operation_type=op_type, version=version) in (
        _O2T_PRISTINE
    )
