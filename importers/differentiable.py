"""Differentiable by construction: rewrite traced ops autograd cannot differentiate, then
prove at import that a backward pass reaches the input and every tap.

GL-AM needs gradients from the output to every tap and from each tap to its parent. A
graph can run forward exactly (parity passes) and still have no backward: tracing a
partial in-place write such as PLKSR's ``x[:, :k] = conv(x[:, :k])`` gives, after
functionalisation, ``slice_scatter(x, aten.copy(slice(x), conv(...)))``, and autograd has
no derivative for the functional ``aten.copy``. Such a model used to import and then fail
in ``analyze`` with "derivative for aten::copy is not implemented".

:func:`make_differentiable` rewrites the known patterns into differentiable equivalents of
the same value (parity is checked after it, on the rewritten graph), and
:func:`probe_backward` runs one backward pass on the tapped graph at import. Anything that
still has no derivative is refused there with :class:`~glam.errors.ConversionError`
(exit 3), naming the operator, the graph node and the model location, instead of an
unexpected error during the analysis.
"""

from __future__ import annotations

import re

import torch
from glam.errors import ConversionError, ModelError
from torch import fx

__all__ = ["make_differentiable", "node_location", "probe_backward"]

_aten = torch.ops.aten


def _copy_like(node: fx.Node, graph: fx.Graph) -> fx.Node:
    """``aten.copy(dst, src)``'s value, differentiably: ``src`` broadcast to ``dst``'s shape
    and converted to its dtype, as a new tensor (``copy`` never aliases ``src``)."""
    dst, src = node.args[0], node.args[1]
    with graph.inserting_before(node):
        out = graph.call_method("expand_as", (src, dst))
        out = graph.call_method("type_as", (out, dst))
        out = graph.call_method("clone", (out,))
    return out


#: functional ops without a derivative -> a differentiable rewrite of the same value
_REWRITES = {
    _aten.copy.default: _copy_like,
}


def make_differentiable(gm: fx.GraphModule) -> list[str]:
    """Rewrite, in place, the ops of ``gm`` that autograd cannot differentiate.

    Run after in-place ops are functionalised (``copy_`` becomes ``aten.copy``) and before
    the parity check, which then proves the rewritten graph.

    Parameters
    ----------
    gm:
        The untapped graph.

    Returns
    -------
    list[str]
        One line per rewritten node (``"copy (aten.copy.default) in feats.1.lk -> expand_as +
        type_as + clone"``), for ``metadata["rewritten_ops"]``.
    """
    done: list[str] = []
    for node in list(gm.graph.nodes):
        rewrite = _REWRITES.get(node.target) if node.op == "call_function" else None
        if rewrite is None:
            continue
        new = rewrite(node, gm.graph)
        node.replace_all_uses_with(new)
        where = node_location(node)
        gm.graph.erase_node(node)
        done.append(f"{node.name} ({node.target}){where} -> expand_as + type_as + clone")
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def node_location(node: fx.Node) -> str:
    """``" in module feats.1.lk (PLKConv2d)"`` or ``" at file.py:78"``: where a graph node
    comes from in the model, from the tracer's metadata ("" when unknown)."""
    meta = node.meta
    stack = meta.get("nn_module_stack")
    if stack:
        path, kind = list(stack.values())[-1] if isinstance(stack, dict) else (stack[-1], "")
        kind = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
        if path:
            return f" in module {path}" + (f" ({kind})" if kind else "")
    if meta.get("module_path"):
        return f" in module {meta['module_path']}"
    if node.op == "call_module":
        return f" in module {node.target}"
    trace = meta.get("stack_trace")
    if trace:
        lines = [ln.strip() for ln in str(trace).splitlines() if ln.strip().startswith("File ")]
        if lines:
            return " at " + lines[-1].replace("File ", "", 1)
    return ""


def _target_name(node: fx.Node) -> str:
    """``aten.copy.default``, ``torch.igamma``, ``call_module body.0``: what a node runs."""
    t = node.target
    if node.op == "call_function" and not isinstance(t, torch._ops.OpOverload):
        module = getattr(t, "__module__", None) or "torch"
        name = getattr(t, "__name__", str(t))
        return f"{'torch' if module.startswith('torch') else module}.{name}"
    return str(t) if node.op == "call_function" else f"{node.op} {t}"


class _GradFnInterpreter(fx.Interpreter):
    """Runs the graph with autograd on and finds the first node whose output has no
    derivative (autograd marks such an output with a ``NotImplemented`` backward node)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.culprit: fx.Node | None = None

    def run_node(self, n: fx.Node) -> object:
        out = super().run_node(n)
        if self.culprit is None:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                fn = getattr(t, "grad_fn", None) if isinstance(t, torch.Tensor) else None
                if fn is not None and "NotImplemented" in fn.name():
                    self.culprit = n
                    break
        return out


def probe_backward(tapped: fx.GraphModule, x: torch.Tensor) -> None:
    """One backward pass from the output to the input and to every tap, at import.

    Parameters
    ----------
    tapped:
        The tapped graph (``tapped(x) -> (y, taps)``).
    x:
        A canonical probe input.

    Raises
    ------
    ConversionError
        When an op of the graph has no derivative (naming the op, the node and the model
        location), or when the output does not depend differentiably on the input.
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y, taps = tapped(x)
        if not y.requires_grad:
            raise ConversionError(
                "the model's output does not depend differentiably on its input (no gradient "
                "reaches the output: a detach, an integer or a rounding step on the way); "
                "GL-AM needs gradients from the output to the input"
            )
        weights = torch.rand(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
        wanted = [x] + [t for t in taps if isinstance(t, torch.Tensor) and t.requires_grad]
        try:
            torch.autograd.grad((y * weights.to(y.device)).sum(), wanted, allow_unused=True)
        except RuntimeError as exc:
            raise _no_derivative(tapped, x, exc) from None


#: autograd's messages name the op: "derivative for aten::copy is not implemented",
#: "the derivative for 'igamma: input' is not implemented."
_OP_IN_MESSAGE = re.compile(r"derivative for (?:aten::)?'?([A-Za-z_][\w.]*)")


def _node_of_op(gm: fx.GraphModule, op: str) -> fx.Node | None:
    """The first node calling the op named ``op`` (``"igamma"``, ``"copy"``)."""
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        base = str(name).split(".")[0].lstrip("_")
        if base == op or base == f"{op}_" or str(node.target).endswith(f".{op}.default"):
            return node
    return None


def _no_derivative(tapped: fx.GraphModule, x: torch.Tensor, exc: RuntimeError) -> ModelError:
    """The refusal for a graph whose backward pass fails, naming the culprit node: the one
    autograd marked ``NotImplemented``, else the one calling the op autograd names."""
    from glam.errors import first_line

    interp = _GradFnInterpreter(tapped)
    try:
        with torch.enable_grad():
            interp.run(x)
    except Exception:  # noqa: BLE001 - the diagnosis is best effort; the message stays
        pass
    node = interp.culprit
    if node is None:
        named = _OP_IN_MESSAGE.search(str(exc))
        node = _node_of_op(tapped, named.group(1)) if named else None
    where = ""
    if node is not None:
        where = f" at node {node.name} ({_target_name(node)}){node_location(node)}"
    return ConversionError(
        f"the imported graph has no backward pass{where}: {first_line(exc).rstrip('.')}; GL-AM needs "
        "gradients through every op from the output to the input (glam rewrites the "
        "patterns it knows, e.g. partial in-place writes; re-export the model without this "
        "op or report it)"
    )
