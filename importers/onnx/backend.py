"""ONNX backend: an ``.onnx`` file to a :class:`~glam.importers.model.RawGraph`.

Steps (see ``shared/notes/import-findings.md`` §2 for why each is needed):

1. :func:`glam.importers.onnx.passes.read_model` loads the file with its external data;
2. the graph is validated and sorted, ``Constant`` / ``Identity(initializer)`` nodes are
   folded into initializers;
3. every node is checked against onnx2torch and glam's registry; when something is
   missing the model is down-converted to opset 17 with ``onnx.version_converter`` and
   checked again; what is still missing is reported at once in one
   :class:`UnsupportedOpsError`;
4. onnx2torch converts the graph with glam's converters patched in
   (:func:`glam.importers.onnx.converters.patched_onnx2torch`);
5. convolutions wrapped as ``Sequential(conv, crop)`` are split so every convolution is a
   plain ``nn.Conv*d`` call, and each gets ``node.meta["glam_name"]`` (its weight name);
6. the reference is an onnxruntime session on the *original* file, and
   ``first_divergence`` compares every intermediate value with onnxruntime's.
"""

from __future__ import annotations

import operator
import re
import warnings as pywarnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from glam.errors import (
    ConversionError,
    GlamError,
    MissingDependencyError,
    ModelError,
    UnsupportedOpsError,
    first_line,
)
from glam.importers.model import RawGraph
from glam.importers.onnx import quantized  # noqa: F401  (registers the quantized-op converters)
from glam.importers.onnx.converters import o2t_has_converter, patched_onnx2torch
from glam.importers.onnx.node_parity import make_node_parity
from glam.importers.onnx.passes import (
    convert_opset,
    fold_constants,
    infer_shapes,
    model_opset,
    read_model,
    sort_and_validate,
)
from glam.importers.onnx.quant_describe import describe_quantization
from glam.importers.onnx.quant_passes import (
    float_name,
    fold_quantized,
    fuse_quantized_convs,
    infer_quantized_shapes,
)
from glam.importers.onnx.registry import find, qualified_op, schema_version
from torch import fx, nn

#: Opset the model is down-converted to when onnx2torch + glam cannot take the original.
FALLBACK_OPSET = 17

__all__ = ["FALLBACK_OPSET", "load_onnx", "unsupported_ops"]



# ------------------------------------------------------------------------ support check
def unsupported_ops(model: onnx.ModelProto) -> tuple[list[tuple[str, int]], list[str]]:
    """Every ``(op, schema version)`` of ``model`` that neither onnx2torch nor glam converts.

    Parameters
    ----------
    model:
        A (normalised) model.

    Returns
    -------
    tuple
        ``(pairs, reasons)``: the unsupported pairs (sorted, unique) and, for nodes that
        glam refuses because of an attribute value, one reason per distinct case.
    """
    opsets = {
        ("" if op.domain == "ai.onnx" else op.domain): int(op.version) for op in model.opset_import
    }
    pairs: set[tuple[str, int]] = set()
    reasons: list[str] = []
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        label = qualified_op(domain, node.op_type)
        opset = opsets.get(domain)
        if opset is None:
            pairs.add((label, 0))
            reason = f"{label}: the model imports no opset for domain {domain!r}"
            if reason not in reasons:
                reasons.append(reason)
            continue
        version = schema_version(node.op_type, opset, domain) or opset
        entry = find(node.op_type, opset, domain)
        if entry is not None:
            reason = entry.check(node) if entry.check is not None else None
            if reason:
                pairs.add((label, version))
                if reason not in reasons:
                    reasons.append(reason)
        elif not o2t_has_converter(node.op_type, version, domain):
            pairs.add((label, version))
    return sorted(pairs), reasons


def _raise_unsupported(
    pairs: list[tuple[str, int]], reasons: list[str], opset: int, converted: bool
) -> None:
    detail = "; ".join(reasons)
    note = f"model opset {opset}"
    if converted:
        note += f", also after down-conversion to opset {FALLBACK_OPSET}"
    raise UnsupportedOpsError(pairs, f"{detail}; {note}" if detail else note)


def _fold(model: onnx.ModelProto) -> None:
    """Constants into initializers, then the quantized-graph passes (``quant_passes``)."""
    fold_constants(model)
    fold_quantized(model, ("QuantizeLinear",))  # weights quantized at run time: codes
    fuse_quantized_convs(model)
    fold_quantized(model)


def _prepare(model: onnx.ModelProto, path: str) -> tuple[onnx.ModelProto, int | None]:
    """Normalise ``model`` (a copy) and pick the original or its opset-17 version.

    The original is kept whenever onnx2torch plus glam's converters take all of it, so the
    version converter (which rewrites nodes) only runs when it is needed.
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    sort_and_validate(work, path)
    _fold(work)
    pairs, reasons = unsupported_ops(work)
    if not pairs:
        return work, None
    opset = model_opset(work)
    alt = convert_opset(work, FALLBACK_OPSET)
    if alt is not None:
        try:
            sort_and_validate(alt, path)
        except GlamError:
            alt = None
    if alt is not None:
        _fold(alt)
        alt_pairs, alt_reasons = unsupported_ops(alt)
        if not alt_pairs:
            return alt, FALLBACK_OPSET
        still = {op for op, _ in alt_pairs}
        kept = [p for p in pairs if p[0] in still] or pairs
        _raise_unsupported(kept, alt_reasons or reasons, opset, True)
    _raise_unsupported(pairs, reasons, opset, False)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- conversion
def _convert(model: onnx.ModelProto) -> tuple[fx.GraphModule, list[str]]:
    """onnx2torch with glam's converters patched in; returns the graph and its warnings."""
    import onnx2torch

    with patched_onnx2torch(), pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        try:
            gm = onnx2torch.convert(model)
        except GlamError:
            raise
        except NotImplementedError as exc:
            raise ConversionError(
                f"onnx2torch cannot convert the model: {first_line(exc)}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - onnx2torch raises assorted errors
            raise ConversionError(
                f"onnx2torch failed to convert the model: {type(exc).__name__}: {first_line(exc)}"
            ) from None
    messages: list[str] = []
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            continue
        text = str(w.message).strip().splitlines()
        msg = f"onnx2torch: {text[0][:300] if text else w.category.__name__}"
        if msg not in messages:
            messages.append(msg)
    return gm, messages


def _conv_in(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.conv._ConvNd):
        return True
    return isinstance(module, nn.Sequential) and any(
        isinstance(m, nn.modules.conv._ConvNd) for m in module
    )


def _scope_name(node_name: str) -> str | None:
    """``block2.conv1`` from a legacy-exporter node name such as ``/block2/conv1/Conv``.

    Scopes that repeat the full path (``/block1/block1.0/Conv``) keep the longest form.
    """
    m = re.fullmatch(r"/(.+)/(?:Conv|ConvTranspose)(?:_\d+)?", node_name)
    if not m:
        return None
    parts: list[str] = []
    for seg in m.group(1).split("/"):
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


#: The weight's input index of convolutions whose weight is not input 1.
_WEIGHT_INPUT = {"QLinearConv": 3, "QuantizedConv": 3}


def _tap_name(onode: Any) -> str:
    """Stable conv name: the weight initializer name without ``.weight``.

    Weights the legacy exporter renamed (``onnx::Conv_156``: BatchNorm folded into the
    conv) or a missing weight name fall back to the ONNX node name, turned into a module
    path when it has the legacy exporter's ``/scope/.../Conv`` form.
    """
    index = _WEIGHT_INPUT.get(onode.operation_type, 1)
    weight = onode.input_values[index] if len(onode.input_values) > index else ""
    weight = float_name(weight)  # a quantizer's w_quantized is the float model's w
    if weight and not weight.startswith("onnx::"):
        return weight[: -len(".weight")] if weight.endswith(".weight") else weight
    name = onode.name or onode.unique_name
    return _scope_name(name) or name


def _postprocess(
    gm: fx.GraphModule, model: onnx.ModelProto
) -> tuple[dict[str, fx.Node], dict[str, Any]]:
    """Split ``Sequential(conv, crop)``, name conv nodes, rebuild the outputs.

    Returns
    -------
    tuple
        ``(fx_of, onnx_nodes)``: the FX node holding each ONNX node's result, by onnx2torch
        unique name, and the ONNX nodes by unique name (in graph order).
    """
    from onnx2torch.onnx_graph import OnnxGraph

    ograph = OnnxGraph(model.graph)
    onnx_nodes = dict(ograph.nodes)
    graph = gm.graph
    fx_of: dict[str, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_module" or str(node.target) not in onnx_nodes:
            continue
        name = str(node.target)
        onode = onnx_nodes[name]
        node.meta["onnx_node"] = onode.name or name
        module = gm.get_submodule(name)
        fx_of[name] = node
        if not _conv_in(module):
            continue
        if isinstance(module, nn.Sequential) and not isinstance(
            module[-1], nn.modules.conv._ConvNd
        ):
            prev: fx.Node | None = None
            with graph.inserting_before(node):
                for i, child in enumerate(module):
                    new = graph.call_module(
                        f"{name}.{i}",
                        args=node.args if prev is None else (prev,),
                        kwargs=node.kwargs if prev is None else {},
                    )
                    new.meta["onnx_node"] = onode.name or name
                    if isinstance(child, nn.modules.conv._ConvNd):
                        new.meta["glam_name"] = _tap_name(onode)
                    prev = new
            assert prev is not None  # a Sequential holding a conv is not empty
            node.replace_all_uses_with(prev)
            graph.erase_node(node)
            fx_of[name] = prev
        else:
            node.meta["glam_name"] = _tap_name(onode)
    out_node = next(n for n in graph.nodes if n.op == "output")
    values: list[fx.Node] = []
    for out_name in ograph.output_values:
        try:
            onode, index = ograph.value_as_node_output(out_name)
        except KeyError:
            raise ConversionError(
                f"graph output {out_name!r} is not computed by any node (it is an input or a "
                "constant); glam needs outputs computed from the input"
            ) from None
        value = fx_of[onode.unique_name]
        if len(onode.output_values) > 1:
            with graph.inserting_before(out_node):
                value = graph.call_function(operator.getitem, (value, index))
        values.append(value)
    out_node.args = (values[0] if len(values) == 1 else tuple(values),)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return fx_of, onnx_nodes


# --------------------------------------------------------------------------- onnxruntime
def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "cpu") from None
    return onnxruntime


def _providers(ort: Any) -> list[Any]:
    providers: list[Any] = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        # TF32 would put the reference ~1e-3 away from the float32 FX graph.
        providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
    return providers


def _session(
    source: str | bytes, *, optimize: bool | Literal["extended"] = True, cpu_only: bool = False
) -> Any:
    """An onnxruntime session on ``source``: all graph optimizations (``optimize=True``),
    none (``False``: every node of the file runs as written), or ``"extended"`` (the level
    at which onnxruntime applies ``session.x64quantprecision``, its exact integer kernels
    on CPUs without VNNI; for the node-by-node check of quantized graphs, whose probed
    nodes are all graph outputs and so are never fused away)."""
    ort = _ort()
    ort.set_default_logger_severity(3)  # kernels log deprecation notices to stderr otherwise
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # as many threads as torch (glam --threads sets torch's count; numba follows it too)
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    if optimize == "extended":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    elif not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # x86-64 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) run onnxruntime's u8 x s8
    # integer products through a 16-bit saturating instruction: on such a CPU the reference
    # itself left ONNX's integer arithmetic (ConvInteger 1 of 40 sums 2033 off; quantized
    # CARN 38.9 % of outputs within one step). This documented session option takes the
    # exact u8 x u8 kernels there and changes nothing on other CPUs.
    options.add_session_config_entry("session.x64quantprecision", "1")
    providers = ["CPUExecutionProvider"] if cpu_only else _providers(ort)
    return ort.InferenceSession(source, sess_options=options, providers=providers)


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


class OnnxRuntimeReference:
    """Runs the original ONNX file in onnxruntime (the parity reference).

    Parameters
    ----------
    path:
        The original model file (external data is found beside it).

    Raises
    ------
    MissingDependencyError
        When onnxruntime is not installed.
    ModelError
        When onnxruntime cannot load the model.
    """

    def __init__(self, path: Path) -> None:
        ort = _ort()
        try:
            self.session = _session(str(path))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ModelError(
                f"onnxruntime cannot load {str(path)!r}, so parity cannot be checked: "
                f"{first_line(exc)}"
            ) from None
        self.provider = self.session.get_providers()[0]
        self.name = f"onnxruntime {ort.__version__} [{self.provider}]"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_dtypes = [_ORT_DTYPES.get(i.type) for i in self.session.get_inputs()]

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {}
        for name, dtype, arr in zip(self.input_names, self.input_dtypes, inputs, strict=False):
            a = np.ascontiguousarray(arr)
            feeds[name] = a.astype(dtype) if dtype is not None and a.dtype != dtype else a
        return [np.asarray(o) for o in self.session.run(None, feeds)]


# ---------------------------------------------------------------------- first divergence
class _Capture(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, watch: set[fx.Node]) -> None:
        super().__init__(gm)
        self.watch = watch
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n in self.watch:
            self.values[n] = result
        return result


def _compare(ours: Any, ref: np.ndarray, tol: float) -> str | None:
    if not isinstance(ours, torch.Tensor):
        return None
    a = ours.detach().cpu().numpy()
    r = np.asarray(ref)
    if a.shape != r.shape:
        return f"shape {list(a.shape)} here, {list(r.shape)} in onnxruntime"
    if a.size == 0:
        return None
    if a.dtype.kind in "fc" or r.dtype.kind in "fc":
        a64, r64 = a.astype(np.float64), r.astype(np.float64)
        nan_a, nan_r = np.isnan(a64), np.isnan(r64)
        if (nan_a != nan_r).any():
            return "NaN where onnxruntime has none" if nan_a.any() else "onnxruntime has NaN"
        finite = ~(nan_a | nan_r)
        if not finite.any():
            return None
        err = float(np.max(np.abs(a64[finite] - r64[finite])))
        scale = max(1.0, float(np.max(np.abs(r64[finite]))))
        return f"max abs error {err:.3g}" if err > tol * scale else None
    return None if np.array_equal(a, r) else "values differ"


def _make_first_divergence(
    original: onnx.ModelProto,
    gm: fx.GraphModule,
    fx_of: dict[str, fx.Node],
    onnx_nodes: dict[str, Any],
    tolerance: float = 1e-4,
) -> Callable[[list[np.ndarray]], str | None]:
    """Build ``first_divergence(native_inputs)`` for a converted model."""

    def first_divergence(inputs: list[np.ndarray]) -> str | None:
        produced = {o for n in original.graph.node for o in n.output if o}
        outputs = {o.name for o in original.graph.output}
        extra: list[str] = []
        for onode in onnx_nodes.values():
            for o in onode.output_values:
                if o and o in produced and o not in outputs and o not in extra:
                    extra.append(o)
        probe = onnx.ModelProto()
        probe.CopyFrom(original)
        for name in extra:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
        session = _session(probe.SerializeToString(), optimize=False, cpu_only=True)
        feeds = {
            i.name: np.ascontiguousarray(a)
            for i, a in zip(session.get_inputs(), inputs, strict=False)
        }
        names = [o.name for o in session.get_outputs()]
        ref = dict(zip(names, session.run(None, feeds), strict=True))
        watch = set(fx_of.values())
        cap = _Capture(gm, watch)
        with torch.no_grad(), pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            cap.run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
        for uname, onode in onnx_nodes.items():
            fx_node = fx_of.get(uname)
            if fx_node is None or fx_node not in cap.values:
                continue
            value = cap.values[fx_node]
            outs = list(value) if isinstance(value, (tuple, list)) else [value]
            if len(onode.output_values) == 1:
                outs = [value]
            for k, oname in enumerate(onode.output_values):
                if not oname or oname not in ref or k >= len(outs):
                    continue
                problem = _compare(outs[k], ref[oname], tolerance)
                if problem:
                    return f"{onode.operation_type} node '{onode.name or uname}' ({problem})"
        return None

    return first_divergence


# ------------------------------------------------------------------------------- loading
def _input_shape(model: onnx.ModelProto) -> tuple[list[str], tuple[int | None, ...] | None]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    if not inputs or not inputs[0].type.HasField("tensor_type"):
        return names, None
    ttype = inputs[0].type.tensor_type
    if not ttype.HasField("shape"):
        return names, None
    dims: list[int | None] = []
    for d in ttype.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    return names, tuple(dims)


def load_onnx(path: Path) -> RawGraph:
    """Convert an ONNX file to an untapped FX graph with an onnxruntime reference.

    Parameters
    ----------
    path:
        The ``.onnx`` file (external data, e.g. ``model.onnx.data``, beside it).

    Returns
    -------
    RawGraph
        With ``reference`` running the original file in onnxruntime, ``first_divergence``
        naming the first node whose value differs from onnxruntime's, and ONNX metadata.

    Raises
    ------
    ModelFileError
        Missing / corrupt / truncated file or missing external data.
    UnsupportedOpsError
        Listing every operator (op-opset) neither onnx2torch nor glam converts, or whose
        attributes cannot be reproduced exactly.
    ConversionError
        When the conversion fails for another reason.
    MissingDependencyError
        When onnxruntime is not installed.
    """
    path = Path(path)
    original = read_model(path)
    opset = model_opset(original)
    model, converted_opset = _prepare(original, str(path))
    model = infer_quantized_shapes(infer_shapes(model))
    gm, messages = _convert(model)
    fx_of, onnx_nodes = _postprocess(gm, model)
    gm.eval()
    reference = OnnxRuntimeReference(path)
    input_names, input_shape = _input_shape(original)
    metadata: dict[str, Any] = {
        "opset": opset,
        "opset_imports": {
            (op.domain or "ai.onnx"): int(op.version) for op in original.opset_import
        },
        "producer_name": original.producer_name,
        "producer_version": original.producer_version,
        "ir_version": int(original.ir_version),
        "nodes": len(original.graph.node),
    }
    if converted_opset is not None:
        metadata["converted_opset"] = converted_opset
    quantization = describe_quantization(original)
    if quantization is not None:
        metadata["quantization"] = quantization
    warnings = list(messages)
    if converted_opset is not None:
        warnings.append(
            f"converted from opset {opset} to opset {converted_opset} with onnx.version_converter "
            "for onnx2torch"
        )
    return RawGraph(
        gm=gm,
        format="onnx",
        reference=reference,
        reference_name=reference.name,
        input_names=input_names,
        output_names=[o.name for o in original.graph.output],
        input_shape=input_shape,
        metadata=metadata,
        warnings=warnings,
        first_divergence=_make_first_divergence(original, gm, fx_of, onnx_nodes),
        node_parity=(make_node_parity(original, gm, fx_of, onnx_nodes, _session)
                     if quantization is not None else None),
    )
