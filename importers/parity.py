"""Parity: the imported graph computes what the original model computes.

Two checks, one comparison (:func:`max_abs_error`, on the canonical [0, 1] scale):

* :func:`check_parity`, at import, on the probe input: every output of the converted graph
  against the reference runtime (onnxruntime, the ScriptModule, the exported program, the
  spandrel module). A failure refuses the import, naming the first diverging node where the
  backend can find it.
* :func:`run_parity`, at analysis, on the input actually analysed: the analysed output
  against one forward of the reference runtime on the same input. A trace can be right at
  the probe sizes and wrong on the user's image: a data-dependent branch baked in (a
  mixture-of-experts gate that picks another expert here), a graph specialised to sizes.
  A failure refuses the analysis before anything is archived, naming the likely cause.
"""

from __future__ import annotations

import time
import warnings as pywarnings
from collections.abc import Sequence

import numpy as np
import torch
from glam.errors import GlamError, ModelError, ParityError, first_line
from glam.importers.conventions import to_native
from glam.importers.model import Conventions, ImportedModel, ParityReport, RawGraph
from glam.importers.quant_parity import step_parity
from torch import fx

__all__ = ["check_parity", "max_abs_error", "native_runner", "run_parity"]


def native_runner(gm: fx.GraphModule):  # type: ignore[no-untyped-def]
    """``run(x) -> list of outputs`` of an untapped graph in its native conventions."""

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        out = gm(x)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    return run


def max_abs_error(outs: Sequence[object], ref: Sequence[object], input_range: int) -> float:
    """Largest ``|out - ref|`` over paired outputs, on the canonical scale (divided by the
    input range); ``inf`` for a NaN or a missing value.

    Raises
    ------
    ParityError
        When the number of outputs or a shape differs.
    """
    if len(ref) != len(outs):
        raise ParityError(
            f"the converted graph returns {len(outs)} outputs, the original {len(ref)}",
            float("inf"),
        )
    err = 0.0
    for o, r in zip(outs, ref, strict=True):
        o_np = o.detach().float().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o, np.float32)
        r_np = np.asarray(r, dtype=np.float32)
        if o_np.shape != r_np.shape:
            raise ParityError(
                f"output shape {list(o_np.shape)} of the converted graph differs from the "
                f"original's {list(r_np.shape)}",
                float("inf"),
            )
        if o_np.size:
            diff = np.abs(o_np - r_np) / input_range
            e = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf")
            if np.isnan(diff).any():
                e = float("inf")
            err = max(err, e)
    return err


def _reference(raw_reference, name: str, native: torch.Tensor) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    try:
        return raw_reference([native.detach().cpu().numpy().copy()])
    except GlamError:
        raise
    except Exception as exc:  # noqa: BLE001 - any runtime failure of the original model
        raise ModelError(f"the original model failed to run ({name}): {first_line(exc)}") from None


def check_parity(
    raw: RawGraph,
    gm: fx.GraphModule,
    x: torch.Tensor,
    conv: Conventions,
    tolerance: float,
) -> ParityReport:
    """Compare every output of the converted graph with the original model on ``x``.

    The error is measured on the canonical [0, 1] scale (native outputs divided by the input
    range). A quantized graph passes on its parity in output quantization steps instead
    (:func:`glam.importers.quant_parity.step_parity`). Raises :class:`ParityError` above
    ``tolerance``, naming the first diverging node when the backend can find it.
    """
    native = to_native(x, conv.layout, conv.input_range).contiguous()
    with torch.no_grad(), pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        outs = native_runner(gm)(native)
    ref = _reference(raw.reference, raw.reference_name, native)
    err = max_abs_error(outs, ref, conv.input_range)
    steps = step_parity(raw, native, outs, ref)  # a quantized graph: parity in steps
    passed = err <= tolerance or (steps is not None and steps.passed)
    node = None
    if not passed:
        if raw.first_divergence is not None:
            try:
                node = raw.first_divergence([native.numpy().copy()])
            except Exception:  # noqa: BLE001 - diagnosis is best effort
                node = None
        where = f"; first diverging node: {node}" if node else ""
        by = (f"in output quantization steps: {steps.describe()}" if steps is not None
              else f"by max abs error {err:.3g} > tolerance {tolerance:g}")
        raise ParityError(
            f"imported graph differs from {raw.reference_name} {by}{where}; the conversion is "
            "not faithful (raise --tolerance only if you accept this error)",
            err,
            node,
        )
    return ParityReport(
        reference=raw.reference_name,
        max_abs_error=err,
        passed=passed,
        tolerance=tolerance,
        input_shape=tuple(native.shape),
        first_divergence=node,
        steps=steps.to_dict() if steps is not None else None,
    )


def likely_cause(metadata: dict[str, object]) -> str:
    """What most likely makes a graph differ from its model on one input but not at the
    probe sizes, from the import's record of its route."""
    spec = metadata.get("specialised")
    if spec == "values":
        return (
            "the trace baked in a data-dependent branch taken at the probe input "
            f"({metadata.get('specialised_detail', 'a value read during tracing')}); this "
            "input takes another"
        )
    if spec == "size":
        return "the graph is specialised to the probe's input size"
    return (
        "a branch the trace baked in (data-dependent control flow) or a graph specialised "
        "to the probe sizes"
    )


def run_parity(model: ImportedModel, x: torch.Tensor, y: np.ndarray | torch.Tensor) -> ParityReport | None:
    """The analysed output ``y`` against one forward of the reference runtime on ``x``.

    Parameters
    ----------
    model:
        The imported model; ``model.reference`` runs the original (``None`` for a graph
        that has none, e.g. a weight-randomised copy: then nothing is checked).
    x:
        The canonical input actually analysed, ``1 x C_in x h x w``.
    y:
        The canonical output the analysis computed for it, ``C_out x H x W`` or with a
        leading batch axis.

    Returns
    -------
    ParityReport | None
        ``input_shape`` is the native analysed input's shape, ``seconds`` the check's time
        (one reference forward and the comparison).

    Raises
    ------
    ParityError
        Above the import's tolerance, naming the likely cause; nothing may be archived.
    """
    if model.reference is None:
        return None
    c = model.conventions
    t0 = time.perf_counter()
    native = to_native(x.detach().cpu().float(), c.layout, c.input_range).contiguous()
    with torch.no_grad():
        ref = _reference(model.reference, model.parity.reference, native)
    if not 0 <= c.output_index < len(ref):
        raise ParityError(
            f"the reference returned {len(ref)} output(s), the analysed one is index "
            f"{c.output_index}", float("inf"))
    r = np.asarray(ref[c.output_index], dtype=np.float32)
    if c.layout == "NHWC" and r.ndim == 4:
        r = r.transpose(0, 3, 1, 2)
    out = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    out = out.reshape(r.shape) if out.size == r.size else out[None]
    err = max_abs_error([torch.from_numpy(np.ascontiguousarray(out)) * c.input_range], [r],
                        c.input_range)
    tol = model.parity.tolerance
    h, w = int(x.shape[-2]), int(x.shape[-1])
    # a quantized graph: in output quantization steps, as at import
    steps = step_parity(model, native, [torch.from_numpy(np.ascontiguousarray(out)) * c.input_range],
                        [r], output_names=[model.conventions.output_name])
    if not (err <= tol or (steps is not None and steps.passed)):
        by = (f"in output quantization steps: {steps.describe()}" if steps is not None
              else f"by max abs error {err:.3g} > tolerance {tol:g}")
        raise ParityError(
            f"on the analysed {h}x{w} input the imported graph differs from "
            f"{model.parity.reference} {by} (it "
            f"matched at import, on the probe input); likely cause: "
            f"{likely_cause(model.metadata)}; no maps are archived for this input",
            err,
        )
    return ParityReport(
        reference=model.parity.reference,
        max_abs_error=err,
        passed=True,
        tolerance=tol,
        input_shape=tuple(native.shape),
        seconds=time.perf_counter() - t0,
        steps=steps.to_dict() if steps is not None else None,
    )
