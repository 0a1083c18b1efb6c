"""TorchScript backend: a ``torch.jit`` file to a :class:`~glam.importers.model.RawGraph`.

Primary route: :func:`glam.importers.torchscript.ts2fx.translate`, our direct TorchScript -> FX translator
(exact, shape-generic, functional, keeps module paths as tap names). When it refuses the
model (:class:`~glam.importers.torchscript.ts2fx.TS2FXError`, e.g. data-dependent control flow), the
fallback is PyTorch's private ``torch._export.converter.TS2EPConverter`` followed by
``run_decompositions({})`` (which functionalises) and ``.module()``. That route re-traces
the module on the example input, so parts of its graph may be specialised to the
example's shape; a warning says so. See the import study, section 3.
"""

from __future__ import annotations

import re
import time
import warnings as pywarnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from glam.errors import ConventionError, ConversionError, ModelFileError, first_line
from glam.importers.export.backend import unlifted_module
from glam.importers.model import RawGraph
from glam.importers.probe import probe_input
from glam.importers.torchscript.ts2fx import TS2FXError, translate
from torch import fx

__all__ = ["load_torchscript", "name_convs_from_weights", "script_kind"]

PROBE_SIZE = (40, 36)
ROUTE_TS2FX = "ts2fx"
ROUTE_TS2EP = "TS2EPConverter"
_SELF_CHECK_RTOL = 1e-5


def load_torchscript(
    path: Path, channels: int | None = None, *, trust_model: bool = False
) -> RawGraph:
    """Load a TorchScript file as an untapped FX graph in the model's native conventions.

    Parameters
    ----------
    path:
        A ``torch.jit.save``-d file (traced or scripted).
    channels:
        Input channels to use (1 or 3); by default the first of 3 and 1 the module runs on.
    trust_model:
        Run the module even if its graph has operators outside
        :data:`glam.importers.safety.PURE_OPS` (file I/O, custom ops); refused by default.

    Returns
    -------
    RawGraph
        ``metadata["route"]`` is ``"ts2fx"`` or ``"TS2EPConverter"``;
        ``metadata["torchscript"]`` is ``"traced"``, ``"scripted"`` or ``"unknown"``.

    Raises
    ------
    ModelFileError
        When the file cannot be loaded by ``torch.jit.load``.
    ConventionError
        When the module runs on neither a 3- nor a 1-channel image (or not on ``channels``).
    ConversionError
        When both routes fail; the message names both reasons.
    """
    from glam.importers import safety

    p = Path(path)
    safety.vet_zip(p, "TorchScript")
    if not trust_model:
        safety.check_torchscript_source(p)
    sm = _jit_load(p)
    if not trust_model:
        safety.check_torchscript_ops(sm, str(p))
    example, c, outputs = _example_input(sm, channels)
    input_names = [_input_name(v, i) for i, v in enumerate(list(sm.graph.inputs())[1:2])]
    metadata: dict[str, Any] = {"torchscript": script_kind(sm)}
    warnings: list[str] = []
    t0 = time.perf_counter()
    try:
        gm, _ = translate(sm, (example,))
        _self_check(gm, sm, example, outputs)
        metadata["route"] = ROUTE_TS2FX
        warnings.extend(gm.meta.get("ts2fx_warnings", []))
    except TS2FXError as exc:
        reason = str(exc)
        try:
            gm = _ts2ep(sm, example)
            _self_check(gm, sm, example, outputs)
        except Exception as exc2:  # noqa: BLE001 - private API; any failure means "no route"
            raise ConversionError(
                f"cannot convert TorchScript {str(p)!r}: ts2fx: {reason}; TS2EPConverter: "
                f"{first_line(exc2)}"
            ) from None
        metadata["route"] = ROUTE_TS2EP
        metadata["ts2fx_error"] = reason
        shape = "x".join(str(d) for d in example.shape)
        warnings.append(
            f"converted with PyTorch's private TS2EPConverter because ts2fx failed ({reason}); "
            f"the graph may be specialised to the example input shape {shape}"
        )
        if any(_is_cond(n) for n in gm.graph.nodes):
            warnings.append(
                "the graph contains data-dependent branches (torch.cond); convolutions inside "
                "them are not tapped"
            )
    metadata["conversion_s"] = round(time.perf_counter() - t0, 3)
    n_out = len(outputs)

    def reference(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = sm(*[torch.from_numpy(np.array(a, copy=True)) for a in inputs])
        return [t.detach().cpu().numpy() for t in _tensor_leaves(out)]

    return RawGraph(
        gm=gm,
        format="torchscript",
        reference=reference,
        reference_name="TorchScript ScriptModule",
        input_names=input_names,
        output_names=[f"output_{i}" for i in range(n_out)],
        input_shape=(1, c, None, None),
        metadata=metadata,
        warnings=warnings,
    )


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            sm = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch.jit.load raises assorted errors on bad files
        raise ModelFileError(
            f"cannot load TorchScript file {str(path)!r} ({first_line(exc)}); it may be truncated "
            "or corrupt — re-save it with torch.jit.save"
        ) from None
    sm.eval()
    return sm


def _example_input(
    sm: torch.jit.ScriptModule, channels: int | None
) -> tuple[torch.Tensor, int, list[torch.Tensor]]:
    """The natural-image probe for the first channel count the module runs on."""
    errors: list[str] = []
    for c in [channels] if channels is not None else [3, 1]:
        x = probe_input(c, *PROBE_SIZE)
        try:
            with torch.no_grad(), pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore")
                out = sm(x.clone())
        except Exception as exc:  # noqa: BLE001 - the module's own failure on this input
            errors.append(f"{c} channels: {first_line(exc)}")
            continue
        leaves = list(_tensor_leaves(out))
        if not leaves:
            raise ConversionError("the ScriptModule returns no tensor; glam needs an image output")
        return x, c, leaves
    tried = " and ".join(str(c) for c in ([channels] if channels is not None else [3, 1]))
    raise ConventionError(
        f"the ScriptModule fails on a {tried}-channel {PROBE_SIZE[0]}x{PROBE_SIZE[1]} image: "
        + "; ".join(errors)
        + ("" if channels is not None else "; pass --in-channels if it needs another input")
    )


def _tensor_leaves(out: Any) -> Iterator[torch.Tensor]:
    """Tensor leaves of a (nested) output, depth first, as ts2fx flattens them."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            yield from _tensor_leaves(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensor_leaves(o)


def _self_check(
    gm: fx.GraphModule, sm: torch.jit.ScriptModule, x: torch.Tensor, ref: list[torch.Tensor]
) -> None:
    """Raise :class:`TS2FXError` when ``gm`` does not reproduce the module on ``x``."""
    with torch.no_grad(), pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        out = gm(x.clone())
    outs = list(_tensor_leaves(out))
    if len(outs) != len(ref):
        raise TS2FXError(f"the converted graph returns {len(outs)} tensors, the module {len(ref)}")
    for o, r in zip(outs, ref, strict=True):
        if o.shape != r.shape:
            raise TS2FXError(
                f"the converted graph's output shape {list(o.shape)} differs from the module's "
                f"{list(r.shape)}"
            )
        if o.numel() and r.is_floating_point():
            scale = max(1.0, float(r.abs().max()))
            err = float((o.float() - r.float()).abs().max())
            if not err <= _SELF_CHECK_RTOL * scale:
                raise TS2FXError(f"the converted graph differs from the module by {err:.3g}")


def _ts2ep(sm: torch.jit.ScriptModule, example: torch.Tensor) -> fx.GraphModule:
    """Fallback route through the private ``TS2EPConverter``; conv nodes get their names."""
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError as exc:
        raise ConversionError(
            f"torch._export.converter.TS2EPConverter is unavailable ({exc})"
        ) from None
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        ep = TS2EPConverter(sm, (example.clone(),)).convert()
        gm = unlifted_module(ep.run_decompositions({}))
    name_convs_from_weights(gm)
    return gm


def name_convs_from_weights(gm: fx.GraphModule) -> None:
    """Set ``glam_name`` of each conv node to its weight attribute's owner path."""
    from glam.importers.tap import find_conv_nodes

    for node in find_conv_nodes(gm):
        if node.op != "call_function" or len(node.args) < 2:
            continue
        w = node.args[1]
        if isinstance(w, fx.Node) and w.op == "get_attr":
            owner = str(w.target).rpartition(".")[0]
            if owner and not node.meta.get("glam_name"):
                node.meta["glam_name"] = owner


def script_kind(sm: torch.jit.ScriptModule) -> str:
    """``"traced"``, ``"scripted"`` or ``"unknown"``, from the graph's ops and source ranges."""
    graph = sm.inlined_graph
    kinds = set()
    ranges: list[str] = []
    for node in graph.findAllNodes("prim::If") + graph.findAllNodes("prim::Loop"):
        kinds.add(node.kind())
    if kinds:
        return "scripted"
    for node in graph.nodes():
        if node.kind().startswith("aten::"):
            try:
                ranges.append(node.sourceRange().strip())
            except RuntimeError:
                continue
            if len(ranges) >= 8:
                break
    if any(r.startswith("File ") for r in ranges):
        return "scripted"
    if any(re.search(r"\(\d+\): \w", r) for r in ranges):
        return "traced"
    if graph.findAllNodes("aten::_convolution"):
        return "traced"
    return "unknown"


def _input_name(value: torch._C.Value, index: int) -> str:
    name = value.debugName().split(".")[0]
    return name or f"input_{index}"


def _is_cond(node: fx.Node) -> bool:
    return node.op == "call_function" and "cond" in getattr(node.target, "__name__", "")

