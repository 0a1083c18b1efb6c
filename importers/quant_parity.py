"""Import parity of a quantized graph, counted in output quantization steps.

A quantized model's reference (onnxruntime) runs integer kernels; glam's graph simulates
them in float32 (``docs/quantized.md``). Convolutions and matrix products accumulate the
integer codes exactly, as onnxruntime does, but a final scaling, an ``Add`` or a float
operator rounds differently: now and then a value lands within float32 rounding of a half
step, one side rounds up, the other down, and that one-code difference travels on. So the
parity of a quantized graph is not a float tolerance but a count of *output steps*:

* the **step** is the scale of the ``DequantizeLinear`` that produces the output (seen
  through operators that only move values, e.g. ``DepthToSpace``), found by the ONNX route
  (``metadata["quantization"]["outputs"]``); an output that is not dequantized that way
  (dynamic quantization, a float operator after the last dequantization) is measured in
  the step an 8-bit quantization of the reference output would have,
  ``(max(0, max r) - min(0, min r)) / 255`` (``DynamicQuantizeLinear``'s);
* **rule 1, the output**: at least :data:`MIN_SHARE_WITHIN_ONE` of the output values lie
  within one step of the reference; the rest are reported (their share and the largest
  distance);
* **rule 2, node by node**, when rule 1 fails: channel attention and long residual chains
  can spread one tie over many pixels (IMDN ×4: 63 % of the output within one step of
  onnxruntime's, every node right), so every node is run on the reference's own inputs
  (``RawGraph.node_parity``) and every quantized value must be within one code.

A wrong scale or zero point fails both: the output moves by many steps, and the node that
holds it is many codes off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from glam.importers.model import ImportedModel, RawGraph

#: Share of output values that must lie within one quantization step of the reference.
MIN_SHARE_WITHIN_ONE = 0.999
#: Slack for float32 rounding of the step itself (in steps).
_SLACK = 1e-3


@dataclass(frozen=True)
class StepParity:
    """Parity of a quantized graph in output quantization steps (worst over the outputs).

    Attributes
    ----------
    step:
        The quantization step (native output units; the largest of per-channel steps).
    unit:
        Where the step comes from (``"output DequantizeLinear"`` or ``"8-bit range of the
        reference output"``).
    within_one:
        Share of output values within one step of the reference.
    beyond_one:
        How many values are farther than one step.
    max_steps:
        The largest distance, in steps.
    elements:
        How many output values were compared.
    min_share:
        The output rule's floor for ``within_one``.
    passed:
        ``within_one >= min_share``, or every node within one code (``nodes``).
    rule:
        ``"output"`` or ``"nodes"``: which rule decided.
    nodes:
        The node-by-node report (``RawGraph.node_parity``) when the output rule failed:
        ``nodes`` compared, ``elements``, ``off_by_one``, ``max_codes``, ``worst_node``.
    """

    step: float
    unit: str
    within_one: float
    beyond_one: int
    max_steps: float
    elements: int
    min_share: float
    passed: bool
    rule: str = "output"
    nodes: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line, e.g. ``99.87 % of 4320 output values within 1 step (step 0.00799, output
        DequantizeLinear), 6 beyond (max 3 steps); ...``."""
        text = (
            f"{self.within_one * 100:.2f} % of {self.elements} output values within 1 step "
            f"(step {self.step:.3g}, {self.unit}), {self.beyond_one} beyond (max "
            f"{self.max_steps:.3g} steps); the output rule needs >= {self.min_share * 100:g} %"
        )
        if self.nodes is not None:
            n = self.nodes
            text += (
                f"; node by node on the reference's inputs: {n['nodes']} quantized nodes, "
                f"{n['off_by_one']} of {n['elements']} values one code off, max "
                f"{n['max_codes']:.3g} codes" + (f" at {n['worst_node']}" if n["worst_node"] else "")
                + " (needs <= 1)"
            )
        return text


def _steps_for(entry: dict[str, Any] | None, ref: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Per-element step array (broadcastable to ``ref``), its largest value, and the unit."""
    if entry is not None and entry.get("step") is not None:
        step = entry["step"]
        if isinstance(step, list):
            arr = np.asarray(step, dtype=np.float64)
            axis = int(entry.get("axis", 1))
            ax = axis if axis >= 0 else axis + ref.ndim
            if 0 <= ax < ref.ndim and ref.shape[ax] == arr.size and not entry.get("through"):
                shape = [1] * ref.ndim
                shape[ax] = arr.size
                return arr.reshape(shape), float(arr.max()), "output DequantizeLinear (per channel)"
            return np.asarray(arr.max()), float(arr.max()), "output DequantizeLinear (largest)"
        return np.asarray(float(step)), float(step), "output DequantizeLinear"
    r = ref.astype(np.float64)
    finite = r[np.isfinite(r)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(0.0, float(finite.max())) if finite.size else 0.0
    step = (hi - lo) / 255.0 or 1.0
    return np.asarray(step), step, "8-bit range of the reference output"


def step_parity(
    raw: RawGraph | ImportedModel, native: Any, outs: Sequence[Any], refs: Sequence[np.ndarray],
    *, output_names: Sequence[str] | None = None,
) -> StepParity | None:
    """Parity in output quantization steps, or ``None`` for a graph that is not quantized.

    Parameters
    ----------
    raw:
        The backend's graph at import, or the imported model at analysis (run parity);
        quantized when ``raw.metadata["quantization"]`` is set.
    native:
        The native input the outputs were computed on (for the node-by-node rule).
    outs:
        The converted graph's outputs (tensors), in the model's native units.
    refs:
        The reference's outputs.
    output_names:
        The names of ``outs`` (default: all of ``raw.output_names``, in order).

    Returns
    -------
    StepParity or None
    """
    quant = raw.metadata.get("quantization")
    if not quant:
        return None
    entries = quant.get("outputs") or {}
    worst: StepParity | None = None
    for i, (o, r) in enumerate(zip(outs, refs, strict=True)):
        ours = np.asarray(o.detach().float().cpu().numpy() if hasattr(o, "detach") else o,
                          dtype=np.float64)
        ref = np.asarray(r, dtype=np.float64)
        if ours.shape != ref.shape or ref.size == 0:
            continue
        names = raw.output_names if output_names is None else output_names
        name = names[i] if i < len(names) else None
        steps, step, unit = _steps_for(entries.get(name) if name else None, ref)
        dist = np.abs(ours - ref) / steps
        dist = np.where(np.isnan(dist), math.inf, dist)
        within = float(np.mean(dist <= 1.0 + _SLACK))
        res = StepParity(
            step=step,
            unit=unit,
            within_one=within,
            beyond_one=int(np.sum(dist > 1.0 + _SLACK)),
            max_steps=float(dist.max()),
            elements=int(ref.size),
            min_share=MIN_SHARE_WITHIN_ONE,
            passed=within >= MIN_SHARE_WITHIN_ONE,
        )
        if worst is None or res.within_one < worst.within_one:
            worst = res
    if worst is not None and not worst.passed and raw.node_parity is not None:
        arr = native.detach().cpu().numpy() if hasattr(native, "detach") else np.asarray(native)
        try:
            nodes = raw.node_parity([np.ascontiguousarray(arr)])
        except Exception as exc:  # noqa: BLE001 - diagnosis; the output rule already failed
            nodes = {"nodes": 0, "elements": 0, "off_by_one": 0, "max_codes": math.inf,
                     "worst_node": f"(node check failed: {type(exc).__name__})", "passed": False}
        worst = replace(worst, rule="nodes", nodes=nodes, passed=bool(nodes.get("passed")))
    return worst
