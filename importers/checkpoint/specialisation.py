"""Does a trace hold a branch chosen by a tensor value?

A model that reads a value computed from its input as a Python number (a mixture-of-experts
gate choosing its experts with ``topk`` and a Python loop, ``if x.mean() > t``) runs a
different network on another input; any trace of it holds the choice made at the probe
input. :func:`graph_value_reads` finds such reads left in an exported graph
(``aten.item`` of an input-dependent tensor); :func:`eager_value_reads` finds them by running
the module once eagerly with every tensor computed from the input marked (a ``torch.jit.trace``
TracerWarning alone does not tell a size read from a value read: during tracing, sizes are
tensors too).
"""

from __future__ import annotations

import os
import sys
import traceback
import weakref
from pathlib import Path

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["eager_value_reads", "graph_value_reads"]


def graph_value_reads(gm: fx.GraphModule) -> str:
    """Where the graph reads a tensor value that depends on the input as a Python number
    (``aten.item`` / ``_local_scalar_dense``): the trace then holds the branch that value
    chose at the probe input. ``""`` when it reads none."""
    from glam.importers.differentiable import node_location

    reads = (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default)
    from_input: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in from_input for a in node.all_input_nodes):
            from_input.add(node)
        if node.op == "call_function" and node.target in reads and node in from_input:
            return f"{node.target} at node {node.name}{node_location(node)}"
    return ""


class _Taint(TorchDispatchMode):
    """Marks every tensor computed from the input and records where such a tensor's value is
    read as a Python number (``item``, ``bool``, ``int``, iteration as an index)."""

    _READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.tainted: dict[int, weakref.ref[torch.Tensor]] = {id(x): weakref.ref(x)}
        self.read: str = ""

    def _has(self, t: object) -> bool:
        ref = self.tainted.get(id(t))
        return ref is not None and ref() is t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if any(isinstance(a, torch.Tensor) and self._has(a)
               for a in tree_flatten((args, kwargs or {}))[0]):
            if func in self._READS and not self.read:
                self.read = f"{func} at {_model_frame()}"
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    self.tainted[id(o)] = weakref.ref(o)
        return out


def _own_dirs() -> tuple[str, ...]:
    """The directories of torch's and glam's own code (the ``glam`` package and its
    ``importers``), as absolute path prefixes: a frame there is not the model's. Prefixes
    of the installed packages, not substrings such as ``/glam/``, which a checkout named
    ``glam`` puts in the path of every package of its virtual environment (spandrel's
    architectures included)."""
    glam_init = getattr(sys.modules.get("glam"), "__file__", None)  # imported before us
    dirs = [Path(torch.__file__).parent, Path(__file__).parents[1]]
    if glam_init:
        dirs.append(Path(glam_init).parent)
    return tuple(str(d.resolve()) + os.sep for d in dirs)


def _model_frame() -> str:
    """``file.py:310 in forward``: the innermost frame of the model's own code."""
    own = _own_dirs()
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = str(Path(frame.filename).resolve()) if frame.filename[:1] != "<" else frame.filename
        if not path.startswith(own) and not frame.filename.startswith("<"):
            return f"{Path(path).name}:{frame.lineno} in {frame.name}"
    return "an unknown place"


def eager_value_reads(module: nn.Module, x: torch.Tensor) -> str:
    """Where ``module``, run eagerly on ``x``, first reads a value computed from ``x`` as a
    Python number (a gate choosing experts, ``if x.mean() > t``); ``""`` when it reads none.
    A trace of such a model holds the branch that value chose."""
    mode = _Taint(x)
    with torch.no_grad(), mode:
        module(x)
    return mode.read
