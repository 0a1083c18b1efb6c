"""Graph passes that make an FX graph analysable: functionalise, canonicalise I/O, tap convs.

Taps are made by *graph rewriting*, not hooks: the output node is rewritten to return
``(y, (f_0, ..., f_{n-1}))`` where ``f_i`` is the output node of convolution ``i`` in
execution (topological) order, or, when the convolution's only consumer is an
inference-mode batch normalisation, that normalisation's output (GLAM.md "Folded
normalisation": exporters fold such pairs, so the maps of the same weights do not depend
on the export route). In-place ops are functionalised first, so a tap is the
conv's own output even when the model applies ``ReLU(inplace=True)`` to it (otherwise its
value and gradient are silently those of the activation; see the import study §4).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from glam.errors import ConventionError
from torch import fx, nn

# --------------------------------------------------------------------------- conv detection

_CONV_FUNCTIONS: dict[Any, str] = {
    F.conv1d: "conv1d",
    F.conv2d: "conv2d",
    F.conv3d: "conv3d",
    F.conv_transpose1d: "conv_transpose1d",
    F.conv_transpose2d: "conv_transpose2d",
    F.conv_transpose3d: "conv_transpose3d",
    torch.conv1d: "conv1d",
    torch.conv2d: "conv2d",
    torch.conv3d: "conv3d",
    torch.conv_transpose1d: "conv_transpose1d",
    torch.conv_transpose2d: "conv_transpose2d",
    torch.conv_transpose3d: "conv_transpose3d",
}

_ATEN_CONV_NAMES = {
    "aten::convolution",
    "aten::_convolution",
    "aten::conv1d",
    "aten::conv2d",
    "aten::conv3d",
    "aten::conv_transpose1d",
    "aten::conv_transpose2d",
    "aten::conv_transpose3d",
    "aten::cudnn_convolution",
    "aten::mkldnn_convolution",
}


def _aten_name(target: Any) -> str | None:
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name
    return None


def _conv_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The conv module a ``call_module`` node runs (unwrapping ``Sequential(pad, conv)``)."""
    if node.op != "call_module":
        return None
    mod = gm.get_submodule(str(node.target))
    if isinstance(mod, nn.modules.conv._ConvNd):
        return mod
    if isinstance(mod, nn.Sequential) and len(mod) > 0:
        last = mod[-1]
        if isinstance(last, nn.modules.conv._ConvNd) and not any(
            isinstance(m, nn.modules.conv._ConvNd) for m in list(mod)[:-1]
        ):
            return last
    return None


def conv_op_name(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """Operator type of a convolution node, or ``None`` when ``node`` is no convolution."""
    mod = _conv_module(gm, node)
    if mod is not None:
        return type(mod).__name__
    if node.op == "call_function":
        if node.target in _CONV_FUNCTIONS:
            return _CONV_FUNCTIONS[node.target]
        name = _aten_name(node.target)
        if name in _ATEN_CONV_NAMES:
            return name.replace("::", ".")
    return None


def find_conv_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """Every convolution node of ``gm`` in execution (graph) order."""
    return [n for n in gm.graph.nodes if conv_op_name(gm, n) is not None]


# ------------------------------------------------------------------ folded normalisation

_BN_FUNCTIONS: dict[Any, str] = {F.batch_norm: "batch_norm", torch.batch_norm: "batch_norm"}
_ATEN_BN_TENSOR = {"aten::batch_norm"}  # returns the normalised tensor
_ATEN_BN_TUPLE = {  # return (output, ...): the tap is getitem(bn, 0)
    "aten::_native_batch_norm_legit_no_training",
    "aten::native_batch_norm",
}
_SHAPE_METHODS = {"size", "dim", "numel"}
_ATEN_SHAPE = {"aten::size", "aten::sym_size", "aten::numel", "aten::sym_numel", "aten::dim"}


def _training_arg(node: fx.Node, index: int) -> Any:
    """The ``training`` argument of a batch-norm call (positional ``index`` or keyword)."""
    if "training" in node.kwargs:
        return node.kwargs["training"]
    return node.args[index] if len(node.args) > index else None


def _inference_norm(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """Op name of ``node`` if it is an inference-mode batch normalisation (GLAM.md "Folded
    normalisation"): ``nn.BatchNorm*`` in eval mode with running statistics, onnx2torch's
    ``OnnxBatchNorm`` in eval mode, ``F.batch_norm``/``aten.batch_norm`` with
    ``training=False``, ``aten._native_batch_norm_legit_no_training``."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if not mod.training and mod.running_mean is not None:
                return type(mod).__name__
            return None
        if type(mod).__name__ == "OnnxBatchNorm" and not mod.training:
            return "BatchNormalization"
        return None
    if node.op != "call_function":
        return None
    if node.target in _BN_FUNCTIONS:
        training = _training_arg(node, 5)
        return "batch_norm" if training is False else None
    name = _aten_name(node.target)
    if name in _ATEN_BN_TENSOR and _training_arg(node, 5) is False:
        return name.replace("::", ".")
    if name == "aten::_native_batch_norm_legit_no_training":
        return name.replace("::", ".")
    if name == "aten::native_batch_norm" and _training_arg(node, 5) is False:
        return name.replace("::", ".")
    return None


def _reads_only_shape(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` reads only its input's shape (``x.size()``, ``aten.size``, ONNX
    ``Shape``): such a consumer takes no value, so it does not count as a consumer."""
    if node.op == "call_method":
        return str(node.target) in _SHAPE_METHODS
    if node.op == "call_function":
        if node.target is getattr and len(node.args) > 1 and node.args[1] == "shape":
            return True
        return _aten_name(node.target) in _ATEN_SHAPE
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__ == "OnnxShape"
    return False


def _is_getitem(node: fx.Node, index: int) -> bool:
    return (
        node.op == "call_function"
        and getattr(node.target, "__name__", "") in ("getitem", "_getitem")
        and len(node.args) > 1
        and node.args[1] == index
    )


def folded_output(gm: fx.GraphModule, conv: fx.Node) -> tuple[fx.Node, str] | None:
    """The node a conv's tap moves to when its only consumer is an inference-mode batch
    normalisation (GLAM.md "Folded normalisation"), with the normalisation's op name.

    Consumers that read only the conv's shape do not count. Returns ``None`` when the rule
    does not apply.
    """
    users = [u for u in conv.users if not _reads_only_shape(gm, u)]
    if len(users) != 1 or users[0].op == "output":
        return None
    bn = users[0]
    if not bn.args or bn.args[0] is not conv:
        return None
    if any(conv is v for v in list(bn.args[1:]) + list(bn.kwargs.values())):
        return None
    op = _inference_norm(gm, bn)
    if op is None:
        return None
    name = _aten_name(bn.target) if bn.op == "call_function" else None
    if name in _ATEN_BN_TUPLE:
        firsts = [u for u in bn.users if _is_getitem(u, 0)]
        if len(firsts) != 1:
            return None
        return firsts[0], op
    return bn, op


def default_tap_name(node: fx.Node) -> str:
    """Stable name of a conv node: backend-provided name, module path, or FX node name."""
    meta = node.meta
    if meta.get("glam_name"):
        return str(meta["glam_name"])
    if node.op == "call_module":
        return str(node.target)
    if meta.get("module_path"):
        return str(meta["module_path"])
    stack = meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        if path:
            return str(path)
    return node.name


# ------------------------------------------------------------------------ functionalisation

_INPLACE_OPERATORS: dict[Callable[..., Any], Callable[..., Any]] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}

_NOT_MUTATING_METHODS = {"requires_grad_", "share_memory_", "retain_grad"}


def _functional_aten(target: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    schema = target._schema
    if not schema.arguments:
        return None
    alias = schema.arguments[0].alias_info
    if alias is None or not alias.is_write or schema.name.endswith("_out"):
        return None
    base = schema.name.split("::")[1]
    if not base.endswith("_"):
        return None
    packet = getattr(torch.ops.aten, base[:-1], None)
    if packet is None:
        return None
    overload = target._overloadname
    return getattr(packet, overload, None)


def functionalize_inplace(gm: fx.GraphModule) -> list[str]:
    """Replace in-place ops by their functional forms and rebind later uses, in place.

    Handles ``inplace=True`` modules (``nn.ReLU(inplace=True)``...), ``inplace=True`` keyword
    arguments, ``operator.iadd``-style nodes, ``x.relu_()``-style methods, ``torch.relu_``
    and in-place aten overloads (``aten.relu_.default``).

    Returns
    -------
    list[str]
        Warnings for in-place ops that could not be functionalised.
    """
    warnings: list[str] = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        mutated: fx.Node | None = None
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if getattr(mod, "inplace", False) is True:
                mod.inplace = False
                mutated = first
        elif node.op == "call_function":
            if node.target in _INPLACE_OPERATORS:
                node.target = _INPLACE_OPERATORS[node.target]
                mutated = first
            elif node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
                mutated = first
            elif isinstance(node.target, torch._ops.OpOverload):
                func = _functional_aten(node.target)
                if func is not None:
                    node.target = func
                    mutated = first
                elif (
                    node.target._schema.arguments
                    and node.target._schema.arguments[0].alias_info is not None
                    and node.target._schema.arguments[0].alias_info.is_write
                    and not node.target._schema.name.endswith("_out")
                ):
                    warnings.append(f"in-place op {node.target} kept as is (node {node.name})")
            else:
                name = getattr(node.target, "__name__", "")
                if (
                    name.endswith("_")
                    and not name.startswith("_")
                    and getattr(node.target, "__module__", "") in ("torch", "torch._C._VariableFunctions")
                    and hasattr(torch, name[:-1])
                ):
                    node.target = getattr(torch, name[:-1])
                    mutated = first
        elif node.op == "call_method":
            name = str(node.target)
            if name.endswith("_") and not name.startswith("_") and name not in _NOT_MUTATING_METHODS:
                node.target = name[:-1]
                mutated = first
        if mutated is not None:
            for user in list(mutated.users):
                if user is not node and order[user] > order[node]:
                    user.replace_input_with(mutated, node)
    gm.recompile()
    return warnings


# ------------------------------------------------------------------ canonical I/O + tapping


@dataclass(frozen=True)
class TapNode:
    """A conv node found by :func:`tap_graph`, with its name and op type."""

    name: str
    op: str


def _reset_codegen(gm: fx.GraphModule) -> None:
    codegen = gm.graph._codegen
    if type(codegen) is not fx.graph.CodeGen:
        gm.graph._codegen = fx.graph.CodeGen()


def tap_graph(
    gm: fx.GraphModule,
    *,
    layout: str = "NCHW",
    input_range: int = 1,
    output_index: int = 0,
    n_outputs: int = 1,
) -> tuple[fx.GraphModule, list[TapNode], list[str]]:
    """Return a canonical, tapped deep copy of ``gm``.

    The copy takes one NCHW float input in [0, 1] and returns ``(y, (f_0, ..., f_{n-1}))``
    with ``y`` the selected output, NCHW, divided back to the [0, 1] scale.

    Parameters
    ----------
    gm:
        Untapped graph in native conventions (one tensor input).
    layout:
        Native input layout, ``"NCHW"`` or ``"NHWC"``.
    input_range:
        1 or 255: the native input is ``x * input_range``; the output is divided by it.
    output_index:
        Which output to analyse when the graph returns several.
    n_outputs:
        How many outputs the graph returns (1 for a bare tensor).

    Returns
    -------
    tuple
        ``(tapped_gm, tap_nodes, warnings)``.
    """
    gm = copy.deepcopy(gm)
    _reset_codegen(gm)
    warnings = functionalize_inplace(gm)
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        names = ", ".join(p.name for p in placeholders)
        raise ConventionError(
            f"the model has {len(placeholders)} inputs ({names}); glam analyses models with "
            "exactly one image input"
        )
    x = placeholders[0]
    # --- input conventions
    last = x
    new_nodes: list[fx.Node] = []
    with graph.inserting_after(last):
        if layout == "NHWC":
            last = graph.call_method("permute", (last, 0, 2, 3, 1))
            new_nodes.append(last)
    if input_range != 1:
        with graph.inserting_after(last):
            last = graph.call_function(operator.mul, (last, float(input_range)))
            new_nodes.append(last)
    if last is not x:
        for user in list(x.users):
            if user not in new_nodes:
                user.replace_input_with(x, last)
    # --- output selection
    out_node = next(n for n in graph.nodes if n.op == "output")
    out = out_node.args[0]
    with graph.inserting_before(out_node):
        if isinstance(out, (tuple, list)):
            if not 0 <= output_index < len(out):
                raise ConventionError(
                    f"output index {output_index} is out of range: the model has {len(out)} outputs"
                )
            y = out[output_index]
        elif n_outputs > 1:
            y = graph.call_function(operator.getitem, (out, output_index))
        else:
            if output_index != 0:
                raise ConventionError(
                    f"output index {output_index} is out of range: the model has 1 output"
                )
            y = out
        if not isinstance(y, fx.Node):
            raise ConventionError("the selected model output is not a tensor")
        if input_range != 1:
            y = graph.call_function(operator.truediv, (y, float(input_range)))
        if layout == "NHWC":
            y = graph.call_method("permute", (y, 0, 3, 1, 2))
    convs = find_conv_nodes(gm)
    taps: list[TapNode] = []
    tapped_nodes: list[fx.Node] = []
    seen: dict[str, int] = {}
    for c in convs:
        name = default_tap_name(c)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        op = conv_op_name(gm, c) or "conv"
        folded = folded_output(gm, c)
        if folded is not None:  # GLAM.md "Folded normalisation": tap after the BN
            node, norm = folded
            tapped_nodes.append(node)
            op = f"{op}+{norm}"
        else:
            tapped_nodes.append(c)
        taps.append(TapNode(name=name, op=op))
    out_node.args = ((y, tuple(tapped_nodes)),)
    graph.lint()
    gm.recompile()
    return gm, taps, warnings


# ------------------------------------------------------------------------------- ancestry


def _holds_float_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() or value.is_complex()
    if isinstance(value, (tuple, list)):
        return any(_holds_float_tensor(v) for v in value)
    return False


VALUE_KIND = "glam_value_kind"  # node.meta key: what the node's value is (see value_kind)


def value_kind(value: Any) -> str:
    """``"float"`` for a floating tensor, ``"container"`` for a tuple/list holding one,
    ``"other"`` for anything else (sizes, integer tensors, ``None``)."""
    if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
        return "float"
    if _holds_float_tensor(value):
        return "container"
    return "other"


class ProbeInterpreter(fx.Interpreter):
    """Runs the graph once and records what each node's value is.

    ``is_float[n]``: the value carries float tensors (a tensor or a container of them).
    Each node also gets ``node.meta[VALUE_KIND]`` (:func:`value_kind`); the engine's
    segmentation (:func:`glam.engine.segments.build_segmented`) cuts only at ``"float"``
    values. The kind of a node's value does not depend on the input's size.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.is_float: dict[fx.Node, bool] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        kind = value_kind(result)
        self.is_float[n] = kind != "other"
        n.meta[VALUE_KIND] = kind
        return result


def tap_ancestry(
    tapped: fx.GraphModule, example: torch.Tensor
) -> tuple[list[frozenset[int]], list[tuple[int, ...]], torch.Tensor]:
    """Which taps are differentiable graph ancestors of each tap, plus tap shapes.

    Ancestry follows data edges whose values are floating tensors: shape-only edges
    (``x.size()``, ONNX ``Shape``, integer index tensors) do not make a node an ancestor.

    Parameters
    ----------
    tapped:
        Output of :func:`tap_graph`.
    example:
        A canonical example input.

    Returns
    -------
    tuple
        ``(ancestors, shapes, y)``: ``ancestors[j]`` holds the indices of taps that are
        ancestors of tap ``j``; ``shapes[j]`` is tap ``j``'s output shape on ``example``;
        ``y`` the example output.
    """
    interp = ProbeInterpreter(tapped)
    with torch.no_grad():
        y, taps = interp.run(example)
    out_node = next(n for n in tapped.graph.nodes if n.op == "output")
    tap_nodes: list[fx.Node] = list(out_node.args[0][1])
    tap_index = {n: i for i, n in enumerate(tap_nodes)}
    anc: dict[fx.Node, frozenset[int]] = {}
    for node in tapped.graph.nodes:
        acc: set[int] = set()
        for inp in node.all_input_nodes:
            if not interp.is_float.get(inp, False):
                continue
            acc |= anc.get(inp, frozenset())
            if inp in tap_index:
                acc.add(tap_index[inp])
        anc[node] = frozenset(acc)
    ancestors = [anc[n] for n in tap_nodes]
    shapes = [tuple(t.shape) for t in taps]
    return ancestors, shapes, y


def participation(shape: tuple[int, ...]) -> str:
    """Why a tap with output ``shape`` does not participate (GLAM.md "Participating taps"),
    or ``""`` when it does.

    A tap participates when its output is 4-D with batch size 1 (the input's) and spatial
    extent ``H > 1``, ``W > 1``. A conv that runs on a batch-folded tensor (windows of the
    image stacked in the batch axis, e.g. ``25 x 16 x 8 x 8`` at a 40x40 input) has no
    single position in the image's frame: it is archived with this reason and enters no map.
    """
    dims = "x".join(str(int(d)) for d in shape)
    if len(shape) != 4:
        return f"not 4-D (output {dims})"
    if shape[0] != 1:
        return (
            f"batch-folded (output {dims}: {int(shape[0])} parts of the image stacked in the "
            "batch axis)"
        )
    if shape[2] <= 1 or shape[3] <= 1:
        return f"no spatial extent (output {dims})"
    return ""


def participating(shape: tuple[int, ...]) -> bool:
    """GLAM.md "participating taps": 4-D output of batch size 1 with ``H > 1`` and ``W > 1``
    (:func:`participation` says why not)."""
    return not participation(shape)
