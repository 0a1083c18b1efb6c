"""Untrusted model files: vetting before anything is loaded, run or extracted.

glam treats every model file as hostile input (users point it at downloads; ``glam check``
runs contributed models in CI). This module holds the checks that come before a backend
touches a file:

* :func:`vet_zip`: a TorchScript / ``.pt2`` zip is listed with :mod:`zipfile` first;
  member names that are absolute, contain ``..``, backslashes, drive letters or NUL bytes
  are refused, so are native payloads (AOTInductor folders, ``.so``/``.dll``/``.dylib``
  and friends), and every member's CRC-32 is verified;
* :func:`load_pt2`: a ``torch.export`` archive read without ``torch.export.load``: the
  JSON program is checked (operator targets, symbolic-shape expressions, which torch
  hands to ``sympy.sympify`` = ``eval``) before it is deserialised, and every pickled
  member (weights, constants, sample inputs) is read with ``torch.load(weights_only=True)``,
  torch's restricted unpickler that resolves no arbitrary globals. Pickled opaque
  constants and TorchBind custom objects are refused, AOTInductor code is never loaded;
* :func:`check_torchscript_ops` / :func:`check_graph_ops`: a graph may only contain
  operators of :data:`PURE_OPS` (pure tensor math, shape and control-flow primitives).
  Anything else (``aten::from_file``, ``aten::save``, custom ops, ...) is refused before the
  model runs, naming the operators, unless the caller passes ``trust_model=True``
  (``--trust-model``).
"""

from __future__ import annotations

import io
import json
import logging
import operator
import re
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from glam.errors import GlamError, ModelFileError, UnsafeModelError

__all__ = [
    "PURE_OPS",
    "check_graph_ops",
    "check_torchscript_ops",
    "load_pt2",
    "vet_zip",
]

TRUST_HINT = (
    "pass --trust-model (glam.importers.load(..., trust_model=True)) only if you trust the "
    "file's author"
)

#: Member-name suffixes of native code; never extracted nor loaded.
NATIVE_SUFFIXES = (
    ".so", ".dll", ".dylib", ".pyd", ".o", ".a", ".obj", ".lib", ".cubin", ".ptx",
    ".fatbin", ".hsaco", ".exe", ".bin.so",
)
NATIVE_FOLDERS = ("aotinductor", "executorch", "mtia")

#: Structural TorchScript primitives (no side effects outside the interpreter).
_PRIM_OPS = {
    "Constant", "GetAttr", "If", "Loop", "ListConstruct", "ListUnpack", "TupleConstruct",
    "TupleUnpack", "TupleIndex", "TupleSlice", "DictConstruct", "DictIndex", "NumToTensor",
    "RaiseException", "Uninitialized", "unchecked_cast", "device", "dtype", "layout",
    "is_cuda", "is_cpu", "is_mkldnn", "is_sparse", "is_quantized", "is_meta", "is_xpu",
    "requires_grad", "shape", "min", "max", "abs", "TensorToNum", "ImplicitTensorToNum",
    "data", "grad", "isinstance", "AutogradZero", "AutogradAdd", "BroadcastSizes",
    "ConstantChunk", "Enter", "Exit", "ignored_exception", "unchecked_unwrap_optional",
    "ListIndex", "StringIndex", "type", "id", "name",
    "Print", "SetGradMode", "EnumValue", "EnumName", "rangelist",
}

#: Pure tensor / scalar operators (aten and prims namespaces), by base name. An in-place
#: variant (``relu_``) and every overload of a listed name are allowed.
PURE_OPS = frozenset(
    """
    _convolution convolution conv1d conv2d conv3d conv_transpose1d conv_transpose2d
    conv_transpose3d conv_tbc _convolution_mode mkldnn_convolution linear addmm mm bmm
    matmul baddbmm addbmm addmv mv dot einsum bilinear linalg_vector_norm norm frobenius_norm
    add sub rsub mul div true_divide floor_divide remainder fmod neg pow float_power sqrt rsqrt
    exp exp2 expm1 log log2 log10 log1p abs sign sgn reciprocal square floor ceil round trunc
    frac clamp clamp_min clamp_max clip minimum maximum fmin fmax min max amin amax argmin
    argmax sum mean prod std var std_mean var_mean cumsum cumprod logsumexp all any
    sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh erf erfc erfinv lerp
    where masked_fill addcmul addcdiv hypot copysign nan_to_num isnan isinf isfinite
    eq ne lt le gt ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or
    bitwise_not bitwise_xor __and__ __or__ __xor__ __lshift__ __rshift__ __not__ __is__
    __isnot__ __contains__ __getitem__ __derive_index __range_length __round_to_zero_floordiv
    relu relu6 leaky_relu prelu _prelu_kernel rrelu elu selu celu gelu silu mish hardtanh
    hardswish hardsigmoid sigmoid log_sigmoid softplus softshrink hardshrink tanhshrink
    threshold glu softmax log_softmax _softmax _log_softmax
    batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training
    _native_batch_norm_legit_functional native_batch_norm instance_norm layer_norm
    native_layer_norm group_norm native_group_norm local_response_norm
    dropout feature_dropout alpha_dropout native_dropout
    max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
    adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d
    adaptive_max_pool2d adaptive_max_pool3d lp_pool2d
    upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d
    upsample_bilinear2d upsample_bicubic2d upsample_trilinear3d _upsample_nearest_exact1d
    _upsample_nearest_exact2d _upsample_nearest_exact3d _upsample_bilinear2d_aa
    _upsample_bicubic2d_aa _upsample_lanczos2d_aa grid_sampler grid_sampler_2d grid_sample
    affine_grid_generator pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle
    pad constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d
    replication_pad2d replication_pad3d _pad_circular _pad_enum
    view view_as reshape reshape_as _reshape_alias _unsafe_view flatten unflatten squeeze
    unsqueeze permute transpose t numpy_T mT contiguous clone expand expand_as expand_copy
    repeat repeat_interleave tile broadcast_to broadcast_tensors cat concat concatenate stack
    hstack vstack split split_with_sizes tensor_split chunk unbind narrow slice select
    index index_select gather scatter scatter_add masked_select take flip roll rot90 diag
    diagonal tril triu movedim moveaxis swapaxes swapdims alias detach lift_fresh
    lift_fresh_copy _to_copy to type_as copy_ fill fill_ zero_ zeros zeros_like ones ones_like
    full full_like empty empty_like empty_strided new_zeros new_ones new_full new_empty
    scalar_tensor arange linspace eye tensor as_tensor _cast_Float float double half
    bfloat16 int long bool sort topk cummax cummin unfold fold im2col col2im
    as_strided _unsafe_index _unsafe_index_put index_put index_put_ slice_scatter
    select_scatter diagonal_scatter masked_scatter embedding one_hot
    size sym_size sym_numel sym_stride sym_storage_offset numel dim len stride is_contiguous
    is_floating_point is_complex get_device Int Float Bool ScalarImplicit IntImplicit
    FloatImplicit format str list append extend insert pop keys values items copy
    _set_item _get_item __interpolate floordiv mod sqrt_ floor_ ceil_ item _assert_scalar
    sym_constrain_range_for_size sym_constrain_range _assert_tensor_metadata dim_order
    convert_element_type broadcast_in_dim squeeze_dims collapse_view split_dim
    warn _shape_as_tensor _local_scalar_dense device dtype neg_ col_index
    """.split()
)


# --------------------------------------------------------------------------------- zips


def _unsafe_member(name: str) -> str | None:
    """Why a zip member name is unsafe, or ``None``."""
    if not name or "\x00" in name:
        return "empty or NUL in name"
    if "\\" in name:
        return "backslash in name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if any(part == ".." for part in PurePosixPath(name).parts):
        return "'..' in path"
    return None


def _native_member(name: str) -> bool:
    low = name.lower()
    parts = PurePosixPath(low).parts
    return any(p in NATIVE_FOLDERS for p in parts[:-1]) or low.endswith(NATIVE_SUFFIXES)


def vet_zip(path: Path, kind: str) -> list[str]:
    """Refuse a zip with unsafe member names, native payloads or failing CRCs.

    Returns the member names. Raises :class:`UnsafeModelError` or :class:`ModelFileError`.
    """
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
            for info in infos:
                why = _unsafe_member(info.filename)
                if why:
                    raise UnsafeModelError(
                        f"{kind} file {str(p)!r} has an unsafe member name "
                        f"{info.filename!r} ({why}); glam refuses it (never extracted); "
                        "re-save the model"
                    )
                if _native_member(info.filename):
                    raise UnsafeModelError(
                        f"{kind} file {str(p)!r} carries native code ({info.filename!r}); glam "
                        "never loads AOTInductor or other compiled payloads; save the program "
                        "with torch.export.save (no AOTInductor package)"
                    )
            for info in infos:
                try:
                    with zf.open(info) as fh:
                        while fh.read(1 << 20):
                            pass
                except zipfile.BadZipFile as exc:
                    raise ModelFileError(
                        f"{kind} file {str(p)!r} is damaged: member {info.filename!r} fails its "
                        f"check ({exc}); re-download or re-save the model"
                    ) from None
            return [i.filename for i in infos]
    except GlamError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelFileError(
            f"{kind} file {str(p)!r} is a damaged zip archive ({exc}); it may be truncated — "
            "re-save it"
        ) from None


# -------------------------------------------------------------------------- operators


def _op_base(name: str) -> tuple[str, str]:
    """``aten::relu_`` / ``aten.relu_.default`` -> (``aten``, ``relu``)."""
    if "::" in name:
        ns, _, rest = name.partition("::")
    else:
        ns, _, rest = name.partition(".")
    base = rest.split(".")[0]
    if base.endswith("_") and not base.endswith("__") and base[:-1]:
        base = base[:-1]
    return ns, base


def is_pure(kind: str) -> bool:
    """Whether a TorchScript node kind / op name is on the allow-list."""
    ns, base = _op_base(kind)
    if ns == "prim":
        return base in _PRIM_OPS or base in PURE_OPS
    if ns in ("aten", "prims"):
        return base in PURE_OPS or base + "_" in PURE_OPS
    return False


def _refuse(path: str, kind: str, bad: Iterable[str]) -> None:
    ops = sorted(set(bad))
    if ops:
        shown = ", ".join(ops[:12]) + (f" (+{len(ops) - 12} more)" if len(ops) > 12 else "")
        raise UnsafeModelError(
            f"{kind} model {path!r} contains operators outside glam's allow-list of pure tensor "
            f"ops: {shown}; they could read or write files or run other code, so the model is "
            f"not run; {TRUST_HINT}"
        )


def _ts_kinds(block: Any) -> Iterator[str]:
    for node in block.nodes():
        yield node.kind()
        for sub in node.blocks():
            yield from _ts_kinds(sub)


def check_torchscript_source(path: Path) -> None:
    """Refuse a TorchScript zip whose code defines ``__setstate__``.

    ``torch.jit.load`` runs a module's TorchScript ``__setstate__`` while it loads the
    file, before any graph can be inspected, so its operators would escape the allow-list.
    (The standard ``nn`` modules define none.)
    """
    p = Path(path)
    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            if "/code/" not in info.filename or not info.filename.endswith(".py"):
                continue
            if b"__setstate__" in zf.read(info):
                raise UnsafeModelError(
                    f"TorchScript model {str(p)!r} defines __setstate__ "
                    f"({info.filename.split('/code/', 1)[1]}), code that torch.jit.load runs "
                    f"while loading, before glam can check its operators; {TRUST_HINT}"
                )


def check_torchscript_ops(sm: Any, path: str) -> None:
    """Refuse a ScriptModule whose (inlined) graph has operators outside the allow-list."""
    graphs = [sm.inlined_graph]
    _refuse(path, "TorchScript", (k for g in graphs for k in _ts_kinds(g) if not is_pure(k)))


_SAFE_PY_TARGETS = {
    operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv,
    operator.floordiv, operator.mod, operator.pow, operator.neg, operator.pos, operator.eq,
    operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_,
    operator.or_, operator.not_,
}


def check_graph_ops(gm: Any, path: str, kind: str = "torch.export") -> None:
    """Refuse an FX graph (of an exported program) calling anything outside the allow-list."""
    import math

    import torch

    safe = set(_SAFE_PY_TARGETS) | {math.trunc, math.ceil, math.floor, math.sqrt}
    for name in ("sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt",
                 "sym_not", "sym_sum"):
        fn = getattr(torch, name, None)
        if fn is not None:
            safe.add(fn)
    bad: list[str] = []
    for mod in gm.modules():
        graph = getattr(mod, "graph", None)
        if graph is None or not hasattr(graph, "nodes"):
            continue
        for node in graph.nodes:
            if node.op == "call_module" or node.op == "call_method":
                continue
            if node.op != "call_function":
                continue
            t = node.target
            if isinstance(t, torch._ops.OpOverload):
                if not is_pure(t.name()):
                    bad.append(t.name())
            elif isinstance(t, torch._ops.OpOverloadPacket):
                if not is_pure(f"{t._qualified_op_name}"):
                    bad.append(t._qualified_op_name)
            elif t in safe:
                continue
            elif getattr(t, "__name__", "") == "_guards_fn" or callable(t) and getattr(
                t, "__module__", ""
            ).startswith("torch.fx"):
                continue
            else:
                bad.append(getattr(t, "__qualname__", None) or str(t))
    _refuse(path, kind, bad)


# ---------------------------------------------------------------------------- .pt2 load

_TARGET_OK = re.compile(r"^(torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?"
                        r"|_operator\.[a-z_]+|math\.[a-z_]+|torch\.sym_[a-z_]+)$")
_SYM_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)(\s*=(?!=))?|(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)"
                        r"|('[A-Za-z0-9_.+-]*')|(\*\*|//|==|!=|<=|>=|[-+*/%(),<>&|~]))")
_SYM_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo", "zoo", "nan",
    "Integer", "Rational", "Float", "floor", "ceiling", "sqrt", "Piecewise", "int_oo",
    "Symbol", "Dummy", "Add", "Mul", "Pow", "BooleanTrue", "BooleanFalse", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality", "One", "Zero",
    "NegativeOne", "Half", "Infinity", "NegativeInfinity", "IntInfinity",
    "NegativeIntInfinity", "ITE",
}
_SYMBOL = re.compile(r"^[a-z]{1,4}\d+$")


def _safe_sym_expr(expr: str) -> bool:
    """Whether a symbolic-shape expression is harmless for ``sympy.sympify`` (an eval)."""
    pos = 0
    while pos < len(expr):
        m = _SYM_TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            return expr[pos:].strip() == ""
        name, keyword = m.group(1), m.group(2)
        if (name is not None and keyword is None and name not in _SYM_NAMES
                and not _SYMBOL.match(name)):
            return False
        pos = m.end()
    return True


def _vet_program_json(obj: Any, path: str, bad_targets: set[str], bad_exprs: set[str]) -> None:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            t = o.get("target")
            if isinstance(t, str) and "inputs" in o and not _TARGET_OK.match(t):
                bad_targets.add(t)
            e = o.get("expr_str")
            if isinstance(e, str) and not _safe_sym_expr(e):
                bad_exprs.add(e[:60])
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


@contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch's export loggers print multi-line tracebacks on failures; glam reports one line."""
    names = ("torch.export", "torch._export", "torch._export.serde.serialize",
             "torch.export.pt2_archive._package", "torch.fx.experimental.symbolic_shapes")
    saved = [(logging.getLogger(n), logging.getLogger(n).disabled) for n in names]
    for lg, _ in saved:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in saved:
            lg.disabled = was


def _restricted_load(data: bytes, what: str, path: str) -> Any:
    """``torch.load(weights_only=True)``: torch's unpickler that only resolves tensor types."""
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "global" in ln),
                      first[0][:200] if first else "")
        raise UnsafeModelError(
            f"torch.export file {path!r}: its {what} is a pickle that needs arbitrary Python "
            f"objects ({detail[:200]}); glam only unpickles tensors (weights_only) and refuses "
            "it; re-save the program with torch.export.save"
        ) from None


def load_pt2(path: Path) -> Any:
    """Load the ``"model"`` program of a ``.pt2`` archive without running code from it.

    The archive must have been vetted with :func:`vet_zip`. Returns an ``ExportedProgram``.
    """
    import torch
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        ExportedProgramDeserializer,
        _bytes_to_dataclass,
        _dict_to_dataclass,
    )
    from torch.export.pt2_archive import _package as pk
    from torch.export.pt2_archive import constants as C  # noqa: N812

    p = str(path)
    with _quiet_torch_logs():
        reader = pk.PT2ArchiveReader(p)
        version = reader.read_string(C.ARCHIVE_VERSION_PATH)
        if version != C.ARCHIVE_VERSION_VALUE:
            raise ModelFileError(
                f"torch.export file {p!r} has archive version {version!r}, this torch reads "
                f"{C.ARCHIVE_VERSION_VALUE!r}; re-save it with this torch's torch.export.save"
            )
        names = set(reader.get_file_names())
        model_file = C.MODELS_FILENAME_FORMAT.format("model")
        if model_file not in names:
            raise ModelFileError(
                f"torch.export file {p!r} holds no program named 'model' ({model_file} is "
                "missing); save one with torch.export.save"
            )
        raw_json = reader.read_bytes(model_file)
        try:
            program_obj = json.loads(raw_json)
        except ValueError as exc:
            raise ModelFileError(f"torch.export file {p!r}: {model_file} is not JSON ({exc})") from None
        bad_targets: set[str] = set()
        bad_exprs: set[str] = set()
        _vet_program_json(program_obj, p, bad_targets, bad_exprs)
        if bad_exprs:
            raise UnsafeModelError(
                f"torch.export file {p!r} has symbolic-shape expressions glam does not accept "
                f"({', '.join(sorted(bad_exprs)[:3])!s}); torch would evaluate them as Python "
                "code; the file is refused"
            )
        if bad_targets:
            _refuse(p, "torch.export", bad_targets)
        serialized = _bytes_to_dataclass(schema.ExportedProgram, raw_json)

        sample = C.SAMPLE_INPUTS_FILENAME_FORMAT.format("model")
        example_inputs = None
        if sample in names:
            data = reader.read_bytes(sample)
            example_inputs = _restricted_load(data, "sample inputs", p) if data else None
            if example_inputs is not None and not isinstance(example_inputs, tuple):
                raise ModelFileError(f"torch.export file {p!r}: sample inputs are not a tuple")

        def payloads(kind_dir: str, config_fmt: str, legacy: str, what: str) -> dict[str, Any]:
            if legacy in names:
                loaded = _restricted_load(reader.read_bytes(legacy), what, p)
                if not isinstance(loaded, dict):
                    raise ModelFileError(f"torch.export file {p!r}: {what} are not a dict")
                return loaded
            cfg_name = config_fmt.format("model")
            if cfg_name not in names:
                return {}
            cfg = _dict_to_dataclass(schema.PayloadConfig, json.loads(reader.read_string(cfg_name)))
            for meta in cfg.config.values():
                pn = meta.path_name
                if _unsafe_member(pn) or "/" in pn:
                    raise UnsafeModelError(f"torch.export file {p!r}: unsafe payload name {pn!r}")
                if pn.startswith(C.CUSTOM_OBJ_FILENAME_PREFIX) or pn.startswith(
                    C.OPAQUE_OBJ_FILENAME_PREFIX
                ):
                    raise UnsafeModelError(
                        f"torch.export file {p!r} holds a pickled Python object ({pn!r}) among "
                        f"its {what}; glam refuses custom/opaque objects (they run code when "
                        "unpickled)"
                    )
            file_map = pk._build_file_map(reader, cfg, kind_dir)
            out: dict[str, Any] = {}
            for fqn, meta in cfg.config.items():
                if meta.use_pickle:
                    out[fqn] = _restricted_load(
                        reader.read_bytes(kind_dir + meta.path_name), what, p
                    )
                    continue
                tm = meta.tensor_meta
                if tm is None:
                    raise ModelFileError(f"torch.export file {p!r}: {what} {fqn!r} has no metadata")
                t = torch.as_strided(
                    file_map[meta.path_name],
                    size=pk.deserialize_size(tm.sizes),
                    stride=pk.deserialize_stride(tm.strides),
                    storage_offset=pk.deserialize_storage_offset(tm.storage_offset),
                )
                if getattr(meta, "is_param", False):
                    t = torch.nn.Parameter(t, requires_grad=tm.requires_grad)
                out[fqn] = t
            return out

        state_dict = payloads(C.WEIGHTS_DIR, C.WEIGHTS_CONFIG_FILENAME_FORMAT,
                              f"{C.WEIGHTS_DIR}model.pt", "weights")
        constants = payloads(C.CONSTANTS_DIR, C.CONSTANTS_CONFIG_FILENAME_FORMAT,
                             f"{C.CONSTANTS_DIR}model.pt", "constants")
        return ExportedProgramDeserializer(None).deserialize(
            serialized, state_dict, constants, example_inputs
        )
