"""Node-by-node parity of a quantized graph against onnxruntime, on onnxruntime's own inputs.

A quantized graph's output can move by several steps from onnxruntime's even when every
converted operator is right: one value rounds the other way at a near tie (integer kernel
against float simulation), and channel attention or deep residual chains spread that
one-code difference over many pixels (measured: IMDN ×4, ``docs/quantized.md``). So when
the output check in steps fails, :mod:`glam.importers.quant_parity` asks this check.

Every node of the converted graph runs on **onnxruntime's** values of its inputs (teacher
forcing: after each node, glam's value is replaced by onnxruntime's), so differences cannot
accumulate. At every quantization point (a node whose onnxruntime output is an integer
tensor: ``QuantizeLinear``, ``QLinearConv``, ``QLinear*``, ``DynamicQuantizeLinear``...)
glam's codes must be within one code of onnxruntime's. A wrong scale, zero point or
operator shows as a node many codes off; a rounding tie as one code.
"""

from __future__ import annotations

import warnings as pywarnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from torch import fx

#: Integer types a quantized value is stored in (onnxruntime's outputs compared as codes).
_CODE_KINDS = (np.uint8, np.int8, np.uint16, np.int16, np.int32)


def _probe_model(original: onnx.ModelProto) -> onnx.ModelProto:
    """``original`` with every node output also a graph output."""
    probe = onnx.ModelProto()
    probe.CopyFrom(original)
    outputs = {o.name for o in original.graph.output}
    for node in original.graph.node:
        for name in node.output:
            if name and name not in outputs:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                outputs.add(name)
    return probe


def make_node_parity(
    original: onnx.ModelProto,
    gm: fx.GraphModule,
    fx_of: dict[str, fx.Node],
    onnx_nodes: dict[str, Any],
    session: Callable[..., Any],
) -> Callable[[list[np.ndarray]], dict[str, Any]]:
    """Build ``node_parity(native_inputs) -> report`` for a converted quantized model.

    Parameters
    ----------
    original:
        The model as read from the file (onnxruntime runs it on CPU, every node kept).
    gm:
        The converted, untapped graph.
    fx_of:
        The FX node holding each ONNX node's result, by onnx2torch unique name.
    onnx_nodes:
        The converted model's ONNX nodes by unique name.
    session:
        ``session(model_bytes, optimize="extended", cpu_only=True)`` making an onnxruntime
        session (``"extended"``: onnxruntime's exact integer kernels also on CPUs without
        VNNI, where its unoptimized graph saturates u8 x s8 products; measured 37 codes off
        at the first QLinearConv of a small quantized CARN on an AVX2 EPYC).

    Returns
    -------
    Callable
        Returns ``{"nodes", "elements", "off_by_one", "max_codes", "worst_node", "passed"}``:
        quantization points compared, their values, how many differ by one code, the
        largest difference in codes and where; ``passed`` when no value is more than one
        code away.
    """
    owner = {fx_node: uname for uname, fx_node in fx_of.items()}

    def node_parity(inputs: list[np.ndarray]) -> dict[str, Any]:
        sess = session(_probe_model(original).SerializeToString(), optimize="extended",
                       cpu_only=True)
        feeds = {i.name: np.ascontiguousarray(a)
                 for i, a in zip(sess.get_inputs(), inputs, strict=False)}
        names = [o.name for o in sess.get_outputs()]
        ref = dict(zip(names, sess.run(None, feeds), strict=True))
        stats = {"nodes": 0, "elements": 0, "off_by_one": 0, "max_codes": 0.0,
                 "worst_node": None}

        class Forced(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                result = super().run_node(n)
                uname = owner.get(n)
                if uname is None:
                    return result
                onode = onnx_nodes[uname]
                outs = list(result) if isinstance(result, (tuple, list)) else [result]
                if len(onode.output_values) == 1:
                    outs = [result]
                for k, oname in enumerate(onode.output_values):
                    if k >= len(outs) or oname not in ref or not isinstance(outs[k], torch.Tensor):
                        continue
                    r = np.asarray(ref[oname])
                    ours = outs[k]
                    if tuple(ours.shape) != r.shape or not ours.is_floating_point():
                        continue
                    if r.dtype.type in _CODE_KINDS and r.size:
                        diff = np.abs(ours.detach().double().cpu().numpy() - r.astype(np.float64))
                        worst = float(diff.max())
                        stats["nodes"] += 1
                        stats["elements"] += int(r.size)
                        stats["off_by_one"] += int(np.sum((diff > 0.5) & (diff <= 1.5)))
                        if worst > stats["max_codes"]:
                            stats["max_codes"] = worst
                            stats["worst_node"] = f"{onode.operation_type} '{onode.name or uname}'"
                    elif r.dtype.kind != "f":
                        continue
                    outs[k] = torch.from_numpy(r.astype(np.float32)).to(ours.device)
                if isinstance(result, (tuple, list)) and len(onode.output_values) > 1:
                    return type(result)(outs)
                return outs[0]

        with torch.no_grad(), pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            Forced(gm).run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
        stats["passed"] = bool(stats["nodes"]) and stats["max_codes"] <= 1.0
        return stats

    return node_parity
