"""Translate a TorchScript ``ScriptModule`` into a functional ``torch.fx.GraphModule``.

The translator walks ``sm.inlined_graph`` (traced or scripted) and emits one FX node per
TorchScript op, calling the exact aten ``OpOverload`` resolved from the node's schema. It
*shadow-executes* every op on an example input while it translates, so that

* ranks, list lengths, dtypes, devices and ``is None`` tests are static and are folded,
  together with every other non-tensor constant;
* sizes stay dynamic: ``x.size(2)`` becomes an ``aten.size.int`` node, so the graph is
  shape-generic;
* ``prim::If`` is inlined when its condition is static (or when one branch only raises,
  as input checks do) and ``prim::Loop`` is unrolled when its trip count is static; a
  branch on the input's *shape* is fixed to the example's branch behind a runtime
  :func:`shape_guard` (and a warning in ``gm.meta["ts2fx_warnings"]``);
* in-place ops are functionalised (``aten::relu_`` -> ``aten.relu``, ``add_`` -> ``add``...)
  and later uses rebound; a write into a slice / select view (slice assignment, as in
  SwinIR's attention mask) is written back into its base with ``slice_scatter`` /
  ``select_scatter``; an in-place op on a tensor that still has another live alias (a view,
  a slice, a module attribute) is refused rather than translated wrongly.

Module attributes are resolved against the live module: parameters become ``nn.Parameter``
attributes sharing storage with the ScriptModule's, buffers become buffers. Traced
``aten::_convolution`` is canonicalised to ``aten.convolution.default`` and every conv node
gets ``node.meta["glam_name"]``, the module path of its weight (``self.body[0].conv1.weight``
-> ``body.0.conv1``). Control flow that depends on the input's *values* (and loops whose
trip count depends on the input) raises :class:`TS2FXError`.

The translator relies on the ``torch._C`` graph bindings of TorchScript (see the import
study, section 3).

One module on purpose (over 600 lines): one translator class whose op handlers share its
shadow-execution state (symbolic values, folding, aliases); the handlers are grouped by op
family inside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from glam.errors import ConversionError, first_line
from torch import fx, nn

__all__ = ["TS2FXError", "shape_guard", "translate"]

_STATIC, _SHAPE, _DATA = 0, 1, 2
_DYN_WORDS = {_SHAPE: "the input's shape", _DATA: "the input's values"}
DEFAULT_MAX_UNROLL = 10_000

_CONV_KINDS = {
    "aten::_convolution",
    "aten::convolution",
    "aten::conv1d",
    "aten::conv2d",
    "aten::conv3d",
    "aten::conv_transpose1d",
    "aten::conv_transpose2d",
    "aten::conv_transpose3d",
}
# Ops on tensors whose results only depend on the tensor's rank / dtype / device: static.
_PROPERTY_KINDS = {
    "aten::dim",
    "aten::is_floating_point",
    "aten::is_complex",
    "aten::get_device",
    "prim::device",
    "prim::dtype",
    "prim::layout",
    "prim::is_cuda",
    "prim::is_cpu",
    "prim::is_mkldnn",
    "prim::is_sparse",
    "prim::is_quantized",
    "prim::is_meta",
    "prim::requires_grad",
}
# Ops on tensors whose results depend on the tensor's shape only.
_SHAPE_KINDS = {"aten::size", "aten::sym_size", "aten::numel", "aten::sym_numel", "aten::len"}
_IGNORED_KINDS = {"aten::warn", "prim::Print", "prim::SetGradMode"}


class TS2FXError(ConversionError):
    """A TorchScript graph that :func:`translate` cannot express as a faithful FX graph."""


# ------------------------------------------------------------------------- symbolic values


@dataclass(eq=False)
class _V:
    """A TorchScript value during translation.

    Attributes
    ----------
    value:
        Its concrete value on the example input (shadow execution).
    node:
        The FX node computing it, or ``None`` for a static (folded) value.
    dyn:
        0 when it does not depend on the input, 1 when it depends on the input's shape
        only, 2 when it depends on the input's values.
    module:
        For tensors derived from module attributes only: the owning module's path.
    attr:
        True for module attributes and tensor constants (never mutated in place).
    source:
        For ``prim::NumToTensor`` results: the number they were made from.
    view_of:
        For ``aten::slice`` / ``aten::select`` results: ``(base, scatter_op, fx_args,
        concrete_args)``, how to write a functional update of this view back into its base
        (slice assignment: ``mask[:, a:b] = v`` becomes ``slice_scatter``).
    """

    value: Any
    node: fx.Node | None = None
    dyn: int = _STATIC
    module: str | None = None
    attr: bool = False
    source: _V | None = None
    view_of: tuple[Any, ...] | None = None


@dataclass(eq=False)
class _Mod:
    """A module (or TorchScript object) reached through ``prim::GetAttr``."""

    obj: Any
    path: str


@dataclass(eq=False)
class _Opaque:
    """A value glam cannot use (a ``Function`` constant, ``prim::Uninitialized``)."""

    what: str


def _iter_vs(sym: Any) -> Iterator[_V]:
    if isinstance(sym, _V):
        yield sym
    elif isinstance(sym, (list, tuple)):
        for e in sym:
            yield from _iter_vs(e)
    elif isinstance(sym, dict):
        for e in sym.values():
            yield from _iter_vs(e)


def _dyn(sym: Any) -> int:
    return max((v.dyn for v in _iter_vs(sym)), default=_STATIC)


def _concrete(sym: Any) -> Any:
    if isinstance(sym, _V):
        return sym.value
    if isinstance(sym, list):
        return [_concrete(e) for e in sym]
    if isinstance(sym, tuple):
        return tuple(_concrete(e) for e in sym)
    if isinstance(sym, dict):
        return {k: _concrete(e) for k, e in sym.items()}
    if isinstance(sym, _Mod):
        return sym.obj
    raise TS2FXError(f"the TorchScript graph uses an unsupported value ({sym.what})")


def _substitute(sym: Any, old: _V, new: _V) -> Any:
    """Replace ``old`` by ``new`` inside ``sym`` (lists are updated in place: they alias)."""
    if sym is old:
        return new
    if isinstance(sym, list):
        for i, e in enumerate(sym):
            sym[i] = _substitute(e, old, new)
        return sym
    if isinstance(sym, tuple):
        return tuple(_substitute(e, old, new) for e in sym)
    if isinstance(sym, dict):
        for k in sym:
            sym[k] = _substitute(sym[k], old, new)
        return sym
    return sym


def _storage_ptr(t: Any) -> int | None:
    if not isinstance(t, torch.Tensor):
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return ptr or None


def _where(node: torch._C.Node) -> str:
    """A short source location of a TorchScript node for error messages."""
    try:
        text = node.sourceRange()
    except RuntimeError:
        return node.kind()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return f"{node.kind()} at {line[:160]}"
    return node.kind()


@lru_cache(maxsize=4096)
def _parse_schema(text: str) -> torch._C.FunctionSchema | None:
    if not text or text == "(no schema)":
        return None
    try:
        return torch._C.parse_schema(text)
    except RuntimeError:
        return None


def _node_schema(node: torch._C.Node) -> torch._C.FunctionSchema | None:
    try:
        text = node.schema()
    except RuntimeError:
        return None
    return _parse_schema(text)


@lru_cache(maxsize=4096)
def _overload(name: str, overload_name: str) -> torch._ops.OpOverload | None:
    ns, _, base = name.partition("::")
    try:
        packet = getattr(getattr(torch.ops, ns), base)
        return getattr(packet, overload_name or "default")
    except (AttributeError, RuntimeError):
        return None


def _functional_overload(schema: torch._C.FunctionSchema) -> torch._ops.OpOverload | None:
    """``aten::relu_`` -> ``aten.relu.default``, ``aten::add_.Tensor`` -> ``aten.add.Tensor``."""
    ns, _, base = schema.name.partition("::")
    if not base.endswith("_") or base.startswith("_"):
        return None
    return _overload(f"{ns}::{base[:-1]}", schema.overload_name)


def _is_tensor_type(type_str: str) -> bool:
    return "Tensor" in type_str


# ------------------------------------------------------------------------- liveness index


class _Liveness:
    """Execution index of every TorchScript value's definition and last use.

    Values used inside a loop body but defined outside it stay live until the loop ends
    (the next iteration uses them again).
    """

    def __init__(self, graph: torch._C.Graph) -> None:
        self.def_idx: dict[int, int] = {}
        self.last_use: dict[int, int] = {}
        self._idx = 0
        self._open_loops: list[tuple[int, set[int]]] = []
        loops: list[tuple[int, int, set[int]]] = []
        for v in graph.inputs():
            self.def_idx[v.unique()] = -1
        self._visit_nodes(graph.nodes(), loops)
        for v in graph.outputs():
            self.last_use[v.unique()] = 1 << 62
        for start, end, used in loops:
            for u in used:
                if self.def_idx.get(u, -1) < start:
                    self.last_use[u] = max(self.last_use.get(u, -1), end)

    def _use(self, value: torch._C.Value) -> None:
        u = value.unique()
        self.last_use[u] = max(self.last_use.get(u, -1), self._idx)
        for _, used in self._open_loops:
            used.add(u)

    def _visit_nodes(self, nodes: Any, loops: list[tuple[int, int, set[int]]]) -> None:
        for n in nodes:
            self._idx += 1
            here = self._idx
            for v in n.inputs():
                self._use(v)
            for o in n.outputs():
                self.def_idx[o.unique()] = here
            is_loop = n.kind() == "prim::Loop"
            used: set[int] = set()
            if is_loop:
                self._open_loops.append((here, used))
            for b in n.blocks():
                for p in b.inputs():
                    self.def_idx[p.unique()] = self._idx
                self._visit_nodes(b.nodes(), loops)
                self._idx += 1
                for v in b.outputs():
                    self._use(v)
            if is_loop:
                self._open_loops.pop()
                loops.append((here, self._idx, used))


# ------------------------------------------------------------------------------ translator


class _Translator:
    def __init__(
        self, sm: torch.jit.ScriptModule, example_inputs: Sequence[torch.Tensor], max_unroll: int
    ) -> None:
        self.sm = sm
        self.ts_graph = sm.inlined_graph
        self.example_inputs = list(example_inputs)
        self.max_unroll = max_unroll
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[int, Any] = {}
        self.live = _Liveness(self.ts_graph)
        self._attr_cache: dict[str, _V] = {}
        self._attr_ptrs: set[int] = set()
        self._param_names: dict[int, set[str]] = {}
        self._n_const = 0
        self._holders: dict[_V, set[int]] = {}
        self._seen: set[_V] = set()
        self._by_storage: dict[int, list[_V]] = {}
        self.input_names: list[str] = []
        self.warnings: list[str] = []

    # ----------------------------------------------------------------------- helpers
    def _get(self, value: torch._C.Value) -> Any:
        try:
            return self.env[value.unique()]
        except KeyError:
            raise TS2FXError(
                f"TorchScript value %{value.debugName()} is used before it is defined"
            ) from None

    def _set(self, value: torch._C.Value, sym: Any) -> None:
        self._bind(value.unique(), sym)

    def _bind(self, uid: int, sym: Any) -> None:
        """Bind TorchScript value ``uid``; index which values hold each tensor and storage."""
        self.env[uid] = sym
        for v in _iter_vs(sym):
            self._holders.setdefault(v, set()).add(uid)
            if isinstance(v.value, torch.Tensor) and v not in self._seen:
                self._seen.add(v)
                ptr = _storage_ptr(v.value)
                if ptr is not None:
                    self._by_storage.setdefault(ptr, []).append(v)

    def _held_by(self, uid: int, v: _V) -> bool:
        return any(w is v for w in _iter_vs(self.env.get(uid)))

    def _fx(self, sym: Any, node: torch._C.Node) -> Any:
        """The FX argument for ``sym``: a node for dynamic values, the constant otherwise."""
        if isinstance(sym, _V):
            if sym.node is not None:
                return sym.node
            if sym.dyn:
                raise TS2FXError(
                    f"{_where(node)} needs a value that depends on {_DYN_WORDS[sym.dyn]} "
                    "through a list operation glam cannot express in FX"
                )
            return sym.value
        if isinstance(sym, list):
            return [self._fx(e, node) for e in sym]
        if isinstance(sym, tuple):
            return tuple(self._fx(e, node) for e in sym)
        if isinstance(sym, dict):
            raise TS2FXError(f"{_where(node)} passes a dict to an operator; not supported")
        if isinstance(sym, _Mod):
            raise TS2FXError(f"{_where(node)} passes a module object to an operator")
        raise TS2FXError(f"{_where(node)} uses an unsupported value ({sym.what})")

    def _wrap(self, fx_node: fx.Node, value: Any, dyn: int, module: str | None = None) -> Any:
        """Wrap an op's result: tuples/lists become containers of ``getitem`` nodes."""
        if isinstance(value, (tuple, list)):
            items = [
                self._wrap(self.graph.call_function(_getitem, (fx_node, i)), e, dyn)
                for i, e in enumerate(value)
            ]
            return tuple(items) if isinstance(value, tuple) else items
        return _V(value, fx_node, dyn, module=module)

    def _static(self, value: Any) -> Any:
        """Wrap a static Python value (constants, attributes); tensors become buffers."""
        if isinstance(value, torch.Tensor):
            name = f"_tensor_constant{self._n_const}"
            self._n_const += 1
            self.root.register_buffer(name, value, persistent=False)
            ptr = _storage_ptr(value)
            if ptr:
                self._attr_ptrs.add(ptr)
            return _V(value, self.graph.get_attr(name), _STATIC, attr=True)
        if isinstance(value, list):
            return [self._static(e) for e in value]
        if isinstance(value, tuple):
            return tuple(self._static(e) for e in value)
        if isinstance(value, dict):
            return {k: self._static(e) for k, e in value.items()}
        return _V(value)

    # ------------------------------------------------------------------ attributes
    def _register_attr(self, owner: _Mod, name: str, tensor: torch.Tensor) -> str:
        """Register ``tensor`` under ``owner.path + name`` in the root module; its qualname."""
        parts = ([p for p in owner.path.split(".") if p] if owner.path else []) + [name]
        mod = self.root
        for i, part in enumerate(parts[:-1]):
            child = mod._modules.get(part)
            if child is None:
                child = nn.Module()
                try:
                    mod.add_module(part, child)
                except KeyError:
                    part = f"{part}_"
                    parts[i] = part
                    child = mod._modules.get(part) or nn.Module()
                    mod.add_module(part, child)
            mod = child
        leaf = parts[-1]
        if id(owner.obj) not in self._param_names:
            names: set[str] = set()
            if hasattr(owner.obj, "named_parameters"):
                try:
                    names = {n for n, _ in owner.obj.named_parameters(recurse=False)}
                except (RuntimeError, AttributeError):
                    names = set()
            self._param_names[id(owner.obj)] = names
        while leaf in mod._parameters or leaf in mod._buffers or hasattr(mod, leaf):
            leaf = f"{leaf}_"
        if name in self._param_names[id(owner.obj)] and tensor.is_floating_point():
            mod.register_parameter(leaf, nn.Parameter(tensor, requires_grad=tensor.requires_grad))
        else:
            mod.register_buffer(leaf, tensor)
        ptr = _storage_ptr(tensor)
        if ptr:
            self._attr_ptrs.add(ptr)
        return ".".join(parts[:-1] + [leaf])

    def _attribute(self, owner: _Mod, name: str, node: torch._C.Node) -> Any:
        path = f"{owner.path}.{name}" if owner.path else name
        if path in self._attr_cache:
            return self._attr_cache[path]
        try:
            obj = getattr(owner.obj, name)
        except AttributeError:
            raise TS2FXError(
                f"{_where(node)}: module {owner.path or 'self'!r} has no attribute {name!r}"
            ) from None
        if isinstance(obj, (torch.jit.ScriptModule, torch._C.ScriptObject, torch._C.ScriptModule)):
            return _Mod(obj, path)
        if isinstance(obj, torch.Tensor):
            qual = self._register_attr(owner, name, obj)
            sym = _V(obj, self.graph.get_attr(qual), _STATIC, module=owner.path, attr=True)
            self._attr_cache[path] = sym
            return sym
        if isinstance(obj, (list, tuple)) and any(isinstance(e, torch.Tensor) for e in obj):
            raise TS2FXError(
                f"{_where(node)}: attribute {path!r} is a list of tensors; not supported"
            )
        return self._static(obj)

    # --------------------------------------------------------------------- driver
    def run(self) -> fx.GraphModule:
        inputs = list(self.ts_graph.inputs())
        if not inputs:
            raise TS2FXError("the TorchScript graph has no inputs")
        self._set(inputs[0], _Mod(self.sm, ""))
        data_inputs = inputs[1:]
        defaults = _forward_defaults(self.sm, len(data_inputs))
        n_required = sum(1 for d in defaults if d is _NO_DEFAULT)
        if not n_required <= len(self.example_inputs) <= len(data_inputs):
            raise TS2FXError(
                f"the ScriptModule's forward takes {n_required} to {len(data_inputs)} inputs, "
                f"{len(self.example_inputs)} example inputs were given"
            )
        used_names: set[str] = set()
        for i, v in enumerate(data_inputs):
            if i >= len(self.example_inputs):
                self._set(v, self._static(defaults[i]))  # defaulted argument: a constant
                continue
            ex = self.example_inputs[i]
            name = v.debugName().split(".")[0] or f"input_{i}"
            pname = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
            if not pname or pname[0].isdigit() or pname in used_names:
                pname = f"input_{i}"
            used_names.add(pname)
            self.input_names.append(name)
            ph = self.graph.placeholder(pname)
            if not isinstance(ex, torch.Tensor):
                raise TS2FXError(f"example input {i} is a {type(ex).__name__}, not a tensor")
            self._set(v, _V(ex, ph, _DATA))
        with torch.no_grad():
            self._run_nodes(self.ts_graph.nodes())
            outs = [self._get(v) for v in self.ts_graph.outputs()]
        leaves = [v for v in _iter_vs(tuple(outs)) if isinstance(v.value, torch.Tensor)]
        if not leaves:
            raise TS2FXError("the ScriptModule returns no tensor")
        nodes = [v.node for v in leaves]
        self.graph.output(nodes[0] if len(nodes) == 1 else tuple(nodes))
        self.graph.eliminate_dead_code()
        self.graph.lint()
        gm = fx.GraphModule(self.root, self.graph, class_name="TorchScriptGraph")
        gm.meta["ts2fx_warnings"] = list(self.warnings)
        return gm

    def _run_nodes(self, nodes: Any) -> None:
        for n in nodes:
            self._run_node(n)

    def _run_block(self, block: torch._C.Block, args: Sequence[Any]) -> list[Any]:
        for p, a in zip(block.inputs(), args, strict=True):
            self._set(p, a)
        self._run_nodes(block.nodes())
        return [self._get(v) for v in block.outputs()]

    def _bind_outputs(self, node: torch._C.Node, syms: Sequence[Any]) -> None:
        outs = list(node.outputs())
        if len(outs) != len(syms):
            raise TS2FXError(f"{_where(node)}: expected {len(outs)} results, got {len(syms)}")
        for o, s in zip(outs, syms, strict=True):
            self._set(o, s)

    # ----------------------------------------------------------------------- nodes
    def _run_node(self, node: torch._C.Node) -> None:
        kind = node.kind()
        handler = _PRIM_HANDLERS.get(kind)
        if handler is not None:
            handler(self, node)
            return
        if kind in _IGNORED_KINDS:
            for o in node.outputs():
                self._set(o, _V(None))
            return
        self._generic(node)

    def _constant(self, node: torch._C.Node) -> None:
        out = node.output()
        if out.type().kind() in ("FunctionType", "ClassType", "InterfaceType"):
            self._set(out, _Opaque(f"{out.type()} constant"))
            return
        try:
            value = out.toIValue()
        except RuntimeError:
            self._set(out, _Opaque(f"{out.type()} constant"))
            return
        self._set(out, self._static(value))

    def _get_attr(self, node: torch._C.Node) -> None:
        owner = self._get(node.input())
        if not isinstance(owner, _Mod):
            raise TS2FXError(f"{_where(node)}: attribute access on a non-module value")
        self._set(node.output(), self._attribute(owner, node.s("name"), node))

    def _if(self, node: torch._C.Node) -> None:
        cond = self._get(node.input())
        if not isinstance(cond, _V):
            raise TS2FXError(f"{_where(node)}: the condition is not a boolean")
        blocks = list(node.blocks())
        if cond.dyn:
            raises = [_only_raises(b) for b in blocks]
            if raises == [True, False]:
                taken = blocks[1]
            elif raises == [False, True]:
                taken = blocks[0]
            elif cond.dyn == _SHAPE and cond.node is not None:
                taken = blocks[0] if bool(cond.value) else blocks[1]
                where = _where(node)
                self.graph.call_function(shape_guard, (cond.node, bool(cond.value), where))
                self.warnings.append(
                    f"a branch that depends on the input's shape ({where}) was fixed to the "
                    f"example input's branch; other sizes that take the other branch raise"
                )
            else:
                raise TS2FXError(
                    f"control flow that depends on {_DYN_WORDS[cond.dyn]} ({_where(node)}); "
                    "glam's direct translator needs branches fixed for every input"
                )
        else:
            taken = blocks[0] if bool(cond.value) else blocks[1]
        self._bind_outputs(node, self._run_block(taken, []))

    def _loop(self, node: torch._C.Node) -> None:
        ins = [self._get(v) for v in node.inputs()]
        trip, cond, carried = ins[0], ins[1], list(ins[2:])
        if not isinstance(trip, _V) or trip.dyn:
            dyn = trip.dyn if isinstance(trip, _V) else _DATA
            raise TS2FXError(
                f"a loop whose trip count depends on {_DYN_WORDS[dyn]} ({_where(node)}); "
                "glam can only unroll loops with a fixed trip count"
            )
        body = next(iter(node.blocks()))
        i = 0
        while True:
            if not isinstance(cond, _V) or cond.dyn:
                dyn = cond.dyn if isinstance(cond, _V) else _DATA
                raise TS2FXError(
                    f"a loop whose condition depends on {_DYN_WORDS[dyn]} ({_where(node)}); "
                    "glam can only unroll loops with a fixed trip count"
                )
            if not bool(cond.value) or i >= int(trip.value):
                break
            if i >= self.max_unroll:
                raise TS2FXError(f"{_where(node)} runs more than {self.max_unroll} iterations")
            outs = self._run_block(body, [_V(i)] + carried)
            cond, carried = outs[0], list(outs[1:])
            i += 1
        self._bind_outputs(node, carried)

    def _raise(self, node: torch._C.Node) -> None:
        ins = [self._get(v) for v in node.inputs()]
        msg = ins[0].value if ins and isinstance(ins[0], _V) else "an exception"
        raise TS2FXError(f"the ScriptModule raises on the example input: {msg} ({_where(node)})")

    def _num_to_tensor(self, node: torch._C.Node) -> None:
        num = self._get(node.input())
        op = torch.ops.prim.NumToTensor.Scalar
        value = op(num.value)
        fx_node = self.graph.call_function(op, (self._fx(num, node),))
        self._set(node.output(), _V(value, fx_node, num.dyn, source=num))

    def _property(self, node: torch._C.Node) -> None:
        """Rank / dtype / device of a tensor: static."""
        schema = _node_schema(node)
        ins = [self._get(v) for v in node.inputs()]
        op = _overload(schema.name, schema.overload_name) if schema is not None else None
        if op is None:
            raise TS2FXError(f"{_where(node)}: no operator found for {node.kind()}")
        value = op(*[_concrete(s) for s in ins])
        sym = self._static(value)
        t = ins[0] if ins else None
        if (
            node.kind() == "prim::device"
            and isinstance(t, _V)
            and t.node is not None
            and isinstance(sym, _V)
        ):
            # Static for branching, but computed in the graph so it follows ``.to(device)``.
            sym.node = self.graph.call_function(op, (t.node,))
        self._set(node.output(), sym)

    def _format(self, node: torch._C.Node) -> None:
        """``aten::format`` (error messages): a static string."""
        ins = [_concrete(self._get(v)) for v in node.inputs()]
        try:
            text = str(ins[0]).format(*ins[1:])
        except (IndexError, KeyError, ValueError):
            text = str(ins[0])
        self._set(node.output(), _V(text))

    def _generic(self, node: torch._C.Node) -> None:
        kind = node.kind()
        schema = _node_schema(node)
        if schema is None:
            raise TS2FXError(f"unsupported TorchScript op {kind} ({_where(node)})")
        ins = [self._get(v) for v in node.inputs()]
        base = kind.partition("::")[2]
        if kind.startswith("aten::") and any(isinstance(s, (list, tuple, dict)) for s in ins):
            py = _LIST_OPS.get(base)
            if py is not None and _is_generic_container_op(schema):
                self._bind_outputs(node, [py(*ins)])
                return
        if kind in ("aten::__is__", "aten::__isnot__"):
            a, b = _concrete(ins[0]), _concrete(ins[1])
            same = (a is None and b is None) if (a is None or b is None) else a is b
            self._set(node.output(), _V(same if kind == "aten::__is__" else not same))
            return
        if kind in ("aten::Int", "aten::ScalarImplicit") and isinstance(ins[0], _V):
            src = ins[0].source
            if src is not None and isinstance(src.value, int):
                self._set(node.output(), src)
                return
        if kind == "aten::size" and len(ins) == 1 and isinstance(ins[0], _V):
            self._set(node.output(), self._sizes(ins[0]))
            return
        op = _overload(schema.name, schema.overload_name)
        if op is None:
            raise TS2FXError(
                f"no PyTorch operator {schema.name}.{schema.overload_name or 'default'} ({_where(node)})"
            )
        args_schema = list(schema.arguments)
        if len(ins) != len(args_schema):
            raise TS2FXError(
                f"{_where(node)}: {len(ins)} inputs for a schema with {len(args_schema)} arguments"
            )
        writes = [
            i
            for i, a in enumerate(args_schema)
            if a.alias_info is not None and a.alias_info.is_write
        ]
        inplace_old: _V | None = None
        if writes:
            functional = _functional_overload(schema)
            if (
                writes != [0]
                or functional is None
                or not _is_tensor_type(str(args_schema[0].type))
                or not isinstance(ins[0], _V)
                or not isinstance(ins[0].value, torch.Tensor)
            ):
                raise TS2FXError(
                    f"in-place op {schema.name} writes to an argument glam cannot functionalise "
                    f"({_where(node)})"
                )
            inplace_old = ins[0]
            op = functional
        tensor_out = any(_is_tensor_type(str(r.type)) for r in schema.returns)
        if kind in _SHAPE_KINDS and not tensor_out:
            tensor_dyn = max(
                (s.dyn for s in ins if isinstance(s, _V) and isinstance(s.value, torch.Tensor)),
                default=_STATIC,
            )
            dyn = _SHAPE if tensor_dyn else _STATIC
        else:
            dyn = _dyn(ins)
        cargs: list[Any] = []
        ckwargs: dict[str, Any] = {}
        for a, s in zip(args_schema, ins, strict=True):
            if a.kwarg_only:
                ckwargs[a.name] = _concrete(s)
            else:
                cargs.append(_concrete(s))
        n_args = len(cargs)
        if kind == "aten::_convolution":
            op = torch.ops.aten.convolution.default
            cargs, ckwargs, n_args = cargs[:9], {}, 9
        if not tensor_out and dyn == _STATIC:
            try:
                value = op(*cargs, **ckwargs)
            except (RuntimeError, TypeError) as exc:
                py = _LIST_OPS.get(base)
                if py is None:
                    raise TS2FXError(f"{_where(node)} failed on static values: {exc}") from None
                value = _concrete(py(*ins))
            if len(list(node.outputs())) > 1:
                self._bind_outputs(node, [self._static(v) for v in value])
            else:
                self._set(node.output(), self._static(value))
            return
        try:
            value = op(*cargs, **ckwargs)
        except Exception as exc:  # noqa: BLE001 - any operator failure during shadow execution
            raise TS2FXError(
                f"{_where(node)} failed on the example input: {first_line(exc)}"
            ) from None
        fx_args: list[Any] = []
        fx_kwargs: dict[str, Any] = {}
        for a, s in zip(args_schema, ins, strict=True):
            if a.kwarg_only:
                fx_kwargs[a.name] = self._fx(s, node)
            else:
                fx_args.append(self._fx(s, node))
        fx_args = fx_args[:n_args]
        fx_node = self.graph.call_function(op, tuple(fx_args), fx_kwargs)
        if (
            inplace_old is not None
            and isinstance(value, torch.Tensor)
            and value.dtype != inplace_old.value.dtype
        ):
            # An in-place op keeps its target's dtype; the functional op may have promoted.
            to = torch.ops.aten.to.dtype
            value = to(value, inplace_old.value.dtype)
            fx_node = self.graph.call_function(to, (fx_node, inplace_old.value.dtype))
        module = None
        if tensor_out and dyn == _STATIC:
            owners = {s.module for s in _iter_vs(ins) if isinstance(s.value, torch.Tensor)}
            module = owners.pop() if len(owners) == 1 else None
        if kind in _CONV_KINDS:
            w = ins[1]
            if isinstance(w, _V) and w.module is not None:
                fx_node.meta["glam_name"] = w.module
                fx_node.meta["module_path"] = w.module
        outs = list(node.outputs())
        if len(outs) > 1:
            self._bind_outputs(node, list(self._wrap(fx_node, tuple(value), dyn)))
        else:
            self._set(outs[0], self._wrap(fx_node, value, dyn, module))
            scatter = _SCATTER_OPS.get((schema.name, schema.overload_name))
            res = self._get(outs[0])
            if scatter is not None and isinstance(ins[0], _V) and isinstance(res, _V):
                res.view_of = (ins[0], scatter, tuple(fx_args[1:]), tuple(cargs[1:n_args]))
        if inplace_old is not None:
            self._functionalised(node, inplace_old, self._get(outs[0]))

    def _sizes(self, t: _V) -> list[_V]:
        """``x.size()``: a static-length list of ``aten.size.int`` nodes (one per dim)."""
        if t.dyn == _STATIC:
            return [_V(int(d)) for d in t.value.shape]
        op = torch.ops.aten.size.int
        return [
            _V(int(d), self.graph.call_function(op, (t.node, i)), _SHAPE)
            for i, d in enumerate(t.value.shape)
        ]

    def _functionalised(self, node: torch._C.Node, old: _V, new: Any) -> None:
        """Rebind every live use of ``old`` to ``new`` after an in-place op; refuse aliases."""
        if not isinstance(new, _V):
            raise TS2FXError(f"in-place op {node.kind()} returned a non-tensor ({_where(node)})")
        ptr = _storage_ptr(old.value)
        if old.attr or (ptr is not None and ptr in self._attr_ptrs):
            raise TS2FXError(
                f"in-place op {node.kind()} modifies a model parameter, buffer or constant "
                f"({_where(node)}); glam cannot translate models that change their own state"
            )
        here = self.live.def_idx.get(node.outputsAt(0).unique(), 0)
        self._scatter_back(old, new)  # the views' bases are rebound: no longer live aliases
        if ptr is not None:
            for v in self._by_storage.get(ptr, ()):
                if v is old or v is new:
                    continue
                for uid in self._holders.get(v, ()):
                    if self.live.last_use.get(uid, -1) > here and self._held_by(uid, v):
                        raise TS2FXError(
                            f"in-place op {node.kind()} writes into a tensor that another live "
                            f"value views (a slice, view or alias) ({_where(node)}); glam cannot "
                            "functionalise it — rewrite it out of place (e.g. torch.cat instead "
                            "of slice assignment)"
                        )
        for uid in list(self._holders.get(old, ())):
            sym = self.env.get(uid)
            if self._held_by(uid, old):
                sym = _substitute(sym, old, new)
            if any(w is new for w in _iter_vs(sym)):
                self._bind(uid, sym)
        self._holders.pop(old, None)

    def _scatter_back(self, old: _V, new: _V) -> None:
        """Write an in-place update of a slice / select view back into its bases.

        ``mask[:, a:b, c:d] = v`` traces as a chain of ``aten::slice`` views and an in-place
        ``fill_`` / ``copy_`` on the last one. Each base of the chain is replaced by
        ``slice_scatter`` / ``select_scatter`` of the updated view, and every live use of the
        base is rebound to it; another live view of the same storage is still refused.
        """
        cur, cur_new = old, new
        while cur.view_of is not None:
            base, scatter, fx_args, cargs = cur.view_of
            if base.attr or not isinstance(base.value, torch.Tensor) or base.node is None:
                break
            value = scatter(base.value, cur_new.value, *cargs)
            fx_node = self.graph.call_function(scatter, (base.node, cur_new.node, *fx_args))
            base_new = _V(value, fx_node, max(base.dyn, cur_new.dyn))
            base_new.view_of = base.view_of
            for uid in list(self._holders.get(base, ())):
                sym = self.env.get(uid)
                if self._held_by(uid, base):
                    self._bind(uid, _substitute(sym, base, base_new))
            self._holders.pop(base, None)
            cur, cur_new = base, base_new

    # ------------------------------------------------------------------ containers
    def _list_construct(self, node: torch._C.Node) -> None:
        self._set(node.output(), [self._get(v) for v in node.inputs()])

    def _tuple_construct(self, node: torch._C.Node) -> None:
        self._set(node.output(), tuple(self._get(v) for v in node.inputs()))

    def _unpack(self, node: torch._C.Node) -> None:
        seq = self._get(node.input())
        if not isinstance(seq, (list, tuple)):
            raise TS2FXError(f"{_where(node)}: cannot unpack a non-sequence")
        self._bind_outputs(node, list(seq))

    def _tuple_index(self, node: torch._C.Node) -> None:
        tup, idx = (self._get(v) for v in node.inputs())
        if not isinstance(idx, _V) or idx.dyn:
            raise TS2FXError(f"{_where(node)}: tuple index depends on the input")
        self._set(node.output(), tup[int(idx.value)])

    def _dict_construct(self, node: torch._C.Node) -> None:
        ins = [self._get(v) for v in node.inputs()]
        out: dict[Any, Any] = {}
        for k, v in zip(ins[::2], ins[1::2], strict=True):
            if _dyn(k):
                raise TS2FXError(f"{_where(node)}: dict key depends on the input")
            out[_concrete(k)] = v
        self._set(node.output(), out)

    def _identity(self, node: torch._C.Node) -> None:
        self._set(node.output(), self._get(node.input()))

    def _uninitialized(self, node: torch._C.Node) -> None:
        self._set(node.output(), _V(None))

    def _unsupported(self, node: torch._C.Node) -> None:
        raise TS2FXError(f"unsupported TorchScript op {node.kind()} ({_where(node)})")


_NO_DEFAULT = object()


def _forward_defaults(sm: torch.jit.ScriptModule, n: int) -> list[Any]:
    """Default values of ``forward``'s ``n`` arguments after ``self`` (``_NO_DEFAULT``)."""
    try:
        args = list(sm.forward.schema.arguments)[1:]
    except (AttributeError, RuntimeError):
        return [_NO_DEFAULT] * n
    out = [a.default_value if a.has_default_value() else _NO_DEFAULT for a in args[:n]]
    return out + [_NO_DEFAULT] * (n - len(out))


def _getitem(obj: Any, index: int) -> Any:
    return obj[index]


def shape_guard(condition: Any, expected: bool, where: str) -> None:
    """Runtime check of a shape-dependent branch that ts2fx fixed at conversion time.

    Raises
    ------
    RuntimeError
        When ``condition`` differs from its value on the conversion example.
    """
    if bool(condition) != expected:
        raise RuntimeError(
            f"input size not supported by the converted graph: the branch at {where} was "
            f"{expected} for the conversion example and is {not expected} now; re-import the "
            "model with an input of this size"
        )


try:  # keep guards through dead-code elimination (torch.fx API marked not BC-stable)
    from torch.fx.node import has_side_effect as _has_side_effect

    _has_side_effect(shape_guard)
except ImportError:  # pragma: no cover - older torch: guards may be eliminated
    pass


def _only_raises(block: torch._C.Block) -> bool:
    return any(n.kind() == "prim::RaiseException" for n in block.nodes())



def _is_generic_container_op(schema: torch._C.FunctionSchema) -> bool:
    """True for list/dict ops (``t[]``, ``Dict(...)``) that run in Python on symbols.

    Tensor ops taking lists (``aten::cat``, ``aten::index``) are excluded.
    """
    types = [str(a.type) for a in schema.arguments]
    if any("Tensor" in t for t in types):
        return False
    return any(t.endswith("[]") or t.startswith("Dict(") or t.startswith("List[") for t in types)


# ------------------------------------------------------------------ generic list/dict ops


def _static_index(idx: Any) -> int:
    if not isinstance(idx, _V) or idx.dyn:
        raise TS2FXError("a list index depends on the input; not supported")
    return int(idx.value)


def _cmp_result(value: Any, *syms: Any) -> _V:
    """A boolean/number computed from list contents: static unless the contents are."""
    return _V(value, None, max(_dyn(s) for s in syms))


def _slice(lst: list[Any], start: Any = None, end: Any = None, step: Any = None) -> list[Any]:
    def opt(s: Any) -> int | None:
        if s is None or (isinstance(s, _V) and s.value is None):
            return None
        return _static_index(s)

    return lst[opt(start) : opt(end) : opt(step) or 1]


def _set_item(container: Any, key: Any, value: Any) -> Any:
    if isinstance(container, dict):
        container[_concrete(key)] = value
    else:
        container[_static_index(key)] = value
    return container


def _pop(lst: Any, idx: Any = None) -> Any:
    if isinstance(lst, dict):
        return lst.pop(_concrete(idx))
    return lst.pop(-1 if idx is None else _static_index(idx))


def _getitem_sym(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        return container[_concrete(key)]
    return container[_static_index(key)]


def _list_mul(a: Any, b: Any) -> list[Any]:
    if isinstance(a, list):
        return a * _static_index(b)
    return b * _static_index(a)


def _append(lst: list[Any], el: Any) -> list[Any]:
    lst.append(el)
    return lst


def _insert(lst: list[Any], idx: Any, el: Any) -> list[Any]:
    lst.insert(_static_index(idx), el)
    return lst


def _extend(lst: list[Any], other: list[Any]) -> list[Any]:
    lst.extend(other)
    return lst


def _reverse(lst: list[Any]) -> list[Any]:
    lst.reverse()
    return lst


def _clear(lst: Any) -> Any:
    lst.clear()
    return lst


_LIST_OPS: dict[str, Any] = {
    "__getitem__": _getitem_sym,
    "len": lambda c: _V(len(c)),
    "append": _append,
    "add": lambda a, b: list(a) + list(b),
    "list": lambda c: list(c),
    "copy": lambda c: c.copy(),
    "slice": _slice,
    "_set_item": _set_item,
    "insert": _insert,
    "pop": _pop,
    "reverse": _reverse,
    "extend": _extend,
    "add_": _extend,
    "clear": _clear,
    "mul": _list_mul,
    "keys": lambda d: [_V(k) for k in d],
    "values": lambda d: list(d.values()),
    "__contains__": lambda c, x: _cmp_result(_concrete(x) in _concrete(c), c, x),
    "eq": lambda a, b: _cmp_result(_concrete(a) == _concrete(b), a, b),
    "ne": lambda a, b: _cmp_result(_concrete(a) != _concrete(b), a, b),
    "index": lambda c, x: _cmp_result(_concrete(c).index(_concrete(x)), c, x),
    "count": lambda c, x: _cmp_result(_concrete(c).count(_concrete(x)), c, x),
    "sum": lambda c: _cmp_result(sum(_concrete(c)), c),
}


#: view op (schema name, overload) -> the op writing an updated view back into its base
_SCATTER_OPS: dict[tuple[str, str], Any] = {
    ("aten::slice", "Tensor"): torch.ops.aten.slice_scatter.default,
    ("aten::select", "int"): torch.ops.aten.select_scatter.default,
}

_PRIM_HANDLERS: dict[str, Any] = {
    "prim::Constant": _Translator._constant,
    "prim::GetAttr": _Translator._get_attr,
    "prim::If": _Translator._if,
    "prim::Loop": _Translator._loop,
    "prim::RaiseException": _Translator._raise,
    "prim::NumToTensor": _Translator._num_to_tensor,
    "prim::ListConstruct": _Translator._list_construct,
    "prim::TupleConstruct": _Translator._tuple_construct,
    "prim::ListUnpack": _Translator._unpack,
    "prim::TupleUnpack": _Translator._unpack,
    "prim::TupleIndex": _Translator._tuple_index,
    "prim::DictConstruct": _Translator._dict_construct,
    "prim::unchecked_cast": _Translator._identity,
    "prim::Uninitialized": _Translator._uninitialized,
    "aten::format": _Translator._format,
    "prim::SetAttr": _Translator._unsupported,
    "prim::CallMethod": _Translator._unsupported,
    "prim::CallFunction": _Translator._unsupported,
    "prim::PythonOp": _Translator._unsupported,
    **{k: _Translator._property for k in _PROPERTY_KINDS},
}


def translate(
    sm: torch.jit.ScriptModule,
    example_inputs: Sequence[torch.Tensor],
    *,
    max_unroll: int = DEFAULT_MAX_UNROLL,
) -> tuple[fx.GraphModule, list[str]]:
    """Translate a loaded ScriptModule's ``forward`` into a functional FX graph.

    Parameters
    ----------
    sm:
        A ``torch.jit.load``-ed (traced or scripted) module, in the mode it should run in
        (call ``.eval()`` first).
    example_inputs:
        One tensor per ``forward`` argument; the module is shadow-executed on them once to
        fix ranks, list lengths and static branches. Sizes stay symbolic.
    max_unroll:
        Most iterations unrolled for one loop.

    Returns
    -------
    tuple[fx.GraphModule, list[str]]
        The graph (returns one tensor, or a flat tuple when the module returns several) and
        the names of ``forward``'s inputs. ``gm.meta["ts2fx_warnings"]`` lists fidelity
        warnings (shape-dependent branches fixed to the example's).

    Raises
    ------
    TS2FXError
        For control flow that depends on the input's values, loops with input-dependent
        trip counts, in-place writes into views or module state, and TorchScript ops
        without an operator schema.
    """
    tr = _Translator(sm, example_inputs, max_unroll)
    try:
        gm = tr.run()
    except TS2FXError:
        raise
    except RecursionError:
        raise TS2FXError("the TorchScript graph is nested too deeply to translate") from None
    return gm, tr.input_names
