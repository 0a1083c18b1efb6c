"""``torch.export`` backend: a ``.pt2`` file to a :class:`~glam.importers.model.RawGraph`.

The program is loaded with ``torch.export.load``, functionalised with
``run_decompositions({})`` (in-place ops such as ``relu_`` and ``add_`` become functional,
so taps are pre-activation conv outputs) and turned into a ``GraphModule`` with
``.module()``. Each conv node's ``glam_name`` is set to its module path from the node's
``nn_module_stack`` (``body.0.conv1``). The undecomposed program's ``.module()`` is the
parity reference.
"""

from __future__ import annotations

import re
import warnings as pywarnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from glam.errors import ConversionError, GlamError, ModelFileError, first_line
from glam.importers.model import RawGraph
from torch import fx, nn

__all__ = ["load_exported", "module_path_of", "name_convs", "unlifted_module"]


def load_exported(path: Path, *, trust_model: bool = False) -> RawGraph:
    """Load a ``torch.export.save``-d program as an untapped, functional FX graph.

    Parameters
    ----------
    path:
        A ``.pt2`` file written by ``torch.export.save``.
    trust_model:
        Accept operators outside :data:`glam.importers.safety.PURE_OPS`. The file is read with
        :func:`glam.importers.safety.load_pt2` either way (no arbitrary unpickling, no native code).

    Returns
    -------
    RawGraph
        ``gm`` takes the program's flat user inputs; ``input_shape`` has ``None`` for every
        dynamic dimension.

    Raises
    ------
    ModelFileError
        When the file cannot be read.
    UnsafeModelError
        For unsafe members, pickled objects, native code or (without ``trust_model``)
        operators outside the allow-list.
    ConversionError
        When the program cannot be functionalised or turned into a module.
    """
    from glam.importers import safety

    p = Path(path)
    safety.vet_zip(p, "torch.export")
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            ep = safety.load_pt2(p)
    except GlamError:
        raise
    except Exception as exc:  # noqa: BLE001 - the deserialiser raises assorted errors
        raise ModelFileError(
            f"cannot load torch.export file {str(p)!r} ({first_line(exc)}); it may be truncated, "
            "corrupt or saved by an incompatible torch version — re-save it with torch.export.save"
        ) from None
    if not trust_model:
        safety.check_graph_ops(ep.graph_module, str(p))
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            reference_module = ep.module()
            gm = unlifted_module(ep.run_decompositions({}))
    except Exception as exc:  # noqa: BLE001 - decomposition / unlifting failures
        raise ConversionError(
            f"cannot functionalise torch.export program {str(p)!r}: {first_line(exc)}"
        ) from None
    name_convs(gm)
    signature = ep.graph_signature
    input_names = [str(n) for n in signature.user_inputs]
    output_names = [f"output_{i}" for i in range(len(signature.user_outputs))]

    def reference(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = reference_module(*[torch.from_numpy(np.array(a, copy=True)) for a in inputs])
        return [t.detach().cpu().numpy() for t in _tensor_leaves(out)]

    metadata: dict[str, Any] = {
        "route": "torch.export",
        "dynamic_dims": _dynamic_dims(ep, input_names),
    }
    return RawGraph(
        gm=gm,
        format="export",
        reference=reference,
        reference_name="torch.export program",
        input_names=input_names,
        output_names=output_names,
        input_shape=_input_shape(ep, input_names),
        metadata=metadata,
    )


def unlifted_module(ep: torch.export.ExportedProgram) -> fx.GraphModule:
    """``ep.module()`` made usable by the common pipeline.

    ``ExportedProgram.module()`` installs ``train``/``eval`` methods that raise
    (``glam.importers.load`` calls ``gm.eval()``); they are removed. The ``_guards_fn`` call,
    which checks the program's shape guards on the *native* input, is kept: the tap pass
    feeds it the native tensor it computes from the canonical input. The pytree codegen
    (flat inputs, unflattened outputs) is kept too; ``glam.importers.tap`` resets it on its
    tapped copy.
    """
    gm = ep.module()
    for name in ("train", "eval"):
        if name in gm.__dict__:
            delattr(gm, name)
    guards = getattr(gm, "_guards_fn", None)
    if isinstance(guards, nn.Module) and not isinstance(guards, _GuardsAsRuntimeError):
        gm._guards_fn = _GuardsAsRuntimeError(guards)
    return gm


class _GuardsAsRuntimeError(nn.Module):
    """Wraps ``_guards_fn`` so a violated shape guard raises ``RuntimeError``.

    The guards raise ``AssertionError``, which callers that probe input sizes (the
    conventions detection) do not treat as "this size is not supported".
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.inner(*args, **kwargs)
        except AssertionError as exc:
            raise RuntimeError(
                f"the input violates the exported program's shape constraints ({first_line(exc)})"
            ) from None


def module_path_of(node: fx.Node) -> str | None:
    """The module path of the innermost module in ``node.meta["nn_module_stack"]``."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    entry = list(stack.values())[-1]
    path = entry[0] if isinstance(entry, tuple) else entry
    return _clean_path(str(path)) if path else None


def name_convs(gm: fx.GraphModule) -> None:
    """Set ``glam_name`` of every conv node: module path, else the weight's owner path."""
    from glam.importers.tap import find_conv_nodes

    for node in find_conv_nodes(gm):
        name = module_path_of(node)
        if not name and node.op == "call_function" and len(node.args) > 1:
            w = node.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                name = str(w.target).rpartition(".")[0] or None
        if name:
            node.meta["glam_name"] = name


def _clean_path(path: str) -> str:
    """``L['self'].body[0].conv1`` / ``L__self___body_0`` styles to ``body.0.conv1``."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    path = path.replace("._modules.", ".")
    return path.strip(".")


def _user_placeholders(ep: torch.export.ExportedProgram, names: list[str]) -> list[fx.Node]:
    by_name = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    return [by_name[n] for n in names if n in by_name]


def _input_shape(
    ep: torch.export.ExportedProgram, names: list[str]
) -> tuple[int | None, ...] | None:
    """Shape of the first user input; ``None`` for symbolic (dynamic) dims."""
    nodes = _user_placeholders(ep, names)
    if not nodes:
        return None
    val = nodes[0].meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(d if isinstance(d, int) else None for d in val.shape)


def _dynamic_dims(ep: torch.export.ExportedProgram, names: list[str]) -> list[int]:
    shape = _input_shape(ep, names)
    return [i for i, d in enumerate(shape or ()) if d is None]


def _tensor_leaves(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensor_leaves(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensor_leaves(o)]
    return []

