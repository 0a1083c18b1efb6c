"""``glam check``: a CI gate that compares a deployed SR model against an archived baseline.

A *baseline* is a glam archive whose runs are marked ``baseline=True`` (``glam baseline``,
:func:`make_baseline`). :func:`check_model` re-runs GL-AM (and LAM when the baseline has it)
on the **inputs, ROIs and options stored in the baseline** — the ``input`` dataset,
``roi_top``/``roi_left``/``window``, the model's ``input_range`` and output index, the LAM
options, the stored HR reference — so no image file is needed, then compares per run:

* the output: max abs difference and PSNR against the baseline output;
* the local and global Sum maps: Pearson correlation and top-k % overlap;
* per layer (matched by name): Pearson correlation of the local and global keys;
* scalars: |ΔDI| (local, global), |Δ attributed fraction|, |ΔPSNR| against the reference;
* LAM (when the baseline has it): Pearson of the LAM maps and |ΔDI|.

Each comparison is a :class:`CheckResult` judged against :mod:`glam.gate.tolerances`.

>>> from glam.gate.check import check_model
>>> report = check_model("model_fp16.onnx", "baseline.h5")          # doctest: +SKIP
>>> report.status, report.summary()                                  # doctest: +SKIP
('PASSED', {'passed': 30, 'failed': 0, 'skipped': 0, 'total': 30})
>>> report.write_json("report.json"); report.write_junit("report.xml")  # doctest: +SKIP

One module for now (over 600 lines): run selection, layer matching, the comparisons and the
three report formats (table, JSON, JUnit) of one ``CheckReport``; the report formats are the
next split (``gate/reports.py``), left until the hostile-input work on this file has landed.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from glam.archive.hdf5 import Archive, RunData, _read, open_archive, software_versions
from glam.errors import ArchiveError, ConventionError, UserInputError
from glam.gate.tolerances import DEFAULTS_CHOICES, METRICS, Comparison, Tolerances

if TYPE_CHECKING:
    from glam.api import Result
    from glam.importers.model import ImportedModel
    from glam.progress import PhaseLog
    from glam.runs import AnalyzeOptions, RunSummary

#: Version of the JSON report layout.
CHECK_SCHEMA_VERSION = 1

Status = Literal["passed", "failed", "skipped"]


# --------------------------------------------------------------------------- comparisons


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays (float64).

    Two constant arrays correlate 1 when they are equal and 0 otherwise; one constant and
    one varying array correlate 0 (instead of NaN).

    Raises
    ------
    ValueError
        When the shapes differ.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"cannot correlate arrays of {x.size} and {y.size} elements")
    x = x - x.mean()
    y = y - y.mean()
    nx, ny = float(np.sqrt(np.dot(x, x))), float(np.sqrt(np.dot(y, y)))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if (nx == 0.0 and ny == 0.0 and np.allclose(a, b)) else 0.0
    return float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0))


def top_k_set(m: np.ndarray, percent: float) -> np.ndarray:
    """Flat indices of the ``percent`` % highest pixels of ``m`` that are above 0."""
    a = np.asarray(m, dtype=np.float64).ravel()
    n = max(1, math.ceil(a.size * percent / 100.0))
    idx = np.argsort(-a, kind="stable")[:n]
    return idx[a[idx] > 0]


def top_k_overlap(a: np.ndarray, b: np.ndarray, percent: float = 10.0) -> float:
    """Share of the top-``percent`` % attributed pixels that coincide in two maps.

    ``|A ∩ B| / max(|A|, |B|)`` where ``A``, ``B`` are the ``ceil(percent/100 · size)``
    highest pixels of each map, restricted to pixels above 0 (so ties among zero pixels do
    not count); 1 when both sets are empty.
    """
    sa, sb = top_k_set(a, percent), top_k_set(b, percent)
    if sa.size == 0 and sb.size == 0:
        return 1.0
    return float(np.intersect1d(sa, sb).size / max(sa.size, sb.size))


def output_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Max abs difference and PSNR (dB, ``inf`` when equal) of two outputs clipped to [0, 1]."""
    x = np.clip(np.asarray(a, dtype=np.float64), 0.0, 1.0)
    y = np.clip(np.asarray(b, dtype=np.float64), 0.0, 1.0)
    d = x - y
    mse = float(np.mean(d * d)) if d.size else 0.0
    psnr = math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)
    return float(np.max(np.abs(d))) if d.size else 0.0, psnr


def _abs_delta(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return math.nan
    if math.isinf(a) and math.isinf(b) and (a > 0) == (b > 0):
        return 0.0
    return abs(a - b)


# -------------------------------------------------------------------------------- report


def _finite(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(v)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.6g}"


@dataclass
class CheckResult:
    """One check of one run.

    Attributes
    ----------
    run:
        Baseline run name.
    name:
        Metric name (a key of :data:`glam.gate.tolerances.METRICS`).
    value:
        Measured value (``None`` when skipped or not computable).
    tolerance:
        Tolerance applied (``None`` when the check is disabled).
    comparison:
        ``">="`` or ``"<="``: the check passes when ``value <comparison> tolerance``.
    status:
        ``passed``, ``failed`` or ``skipped``.
    layer:
        Layer name for per-layer checks.
    message:
        Why a check failed or was skipped.
    """

    run: str
    name: str
    value: float | None
    tolerance: float | None
    comparison: Comparison
    status: Status
    layer: str | None = None
    message: str = ""

    @property
    def passed(self) -> bool | None:
        """``True``/``False``, ``None`` when skipped."""
        return None if self.status == "skipped" else self.status == "passed"

    @property
    def min_passing_tolerance(self) -> float | None:
        """The tightest tolerance this value would have passed (the value itself)."""
        if self.value is None or math.isnan(self.value):
            return None
        return float(self.value)

    @property
    def label(self) -> str:
        """``name`` or ``name[layer]``."""
        return f"{self.name}[{self.layer}]" if self.layer is not None else self.name

    def explanation(self) -> str:
        """``value 0.91 < tolerance 0.95 (needs >= 0.95)``-style text."""
        if self.status == "skipped":
            return self.message or "skipped"
        op = self.comparison
        bad = {">=": "<", "<=": ">"}[op]
        rel = op if self.status == "passed" else bad
        text = f"{self.label}: value {_fmt(self.value)} {rel} tolerance {_fmt(self.tolerance)}"
        if self.status == "failed":
            text += f" (needs {op} {_fmt(self.tolerance)}; would pass with {_fmt(self.min_passing_tolerance)})"
        if self.message:
            text += f"; {self.message}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become ``None``)."""
        d: dict[str, Any] = {
            "run": self.run,
            "name": self.name,
            "value": _finite(self.value),
            "tolerance": _finite(self.tolerance),
            "comparison": self.comparison,
            "passed": self.passed,
            "status": self.status,
            "min_passing_tolerance": _finite(self.min_passing_tolerance),
        }
        if self.value is not None and not math.isfinite(self.value):
            d["value_text"] = _fmt(self.value)
        if self.layer is not None:
            d["layer"] = self.layer
        if self.message:
            d["message"] = self.message
        return d


def evaluate(
    run: str,
    name: str,
    value: float | None,
    tolerance: float | None,
    *,
    layer: str | None = None,
    message: str = "",
) -> CheckResult:
    """Judge one value against its tolerance (``None`` tolerance: skipped, disabled).

    A NaN value fails; ``inf`` compares as usual (an exact output has PSNR ``inf``).
    """
    comp = METRICS[name].comparison
    if tolerance is None:
        return CheckResult(run, name, value, None, comp, "skipped", layer,
                           message or "disabled by the tolerances")
    if value is None or math.isnan(value):
        return CheckResult(run, name, value, tolerance, comp, "failed", layer,
                           message or "the value is not a number (NaN)")
    ok = value >= tolerance if comp == ">=" else value <= tolerance
    return CheckResult(run, name, value, tolerance, comp, "passed" if ok else "failed", layer,
                       message)


@dataclass
class RunInfo:
    """What happened to one baseline run (besides its checks)."""

    run: str
    baseline_model: str
    baseline_model_sha256: str
    layer_matching: str = "none"
    matched_layers: int = 0
    unmatched_baseline_layers: list[str] = field(default_factory=list)
    unmatched_model_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no timings, so reports are deterministic)."""
        return {
            "run": self.run,
            "baseline_model": self.baseline_model,
            "baseline_model_sha256": self.baseline_model_sha256,
            "layer_matching": self.layer_matching,
            "matched_layers": self.matched_layers,
            "unmatched_baseline_layers": list(self.unmatched_baseline_layers),
            "unmatched_model_layers": list(self.unmatched_model_layers),
            "notes": list(self.notes),
        }


@dataclass
class CheckReport:
    """Everything ``glam check`` found: per-run checks, provenance, pass/fail.

    Attributes
    ----------
    model_path, model_sha256, model_format:
        The checked model.
    baseline_path, baseline_sha256:
        The baseline archive.
    device:
        Where the analysis ran.
    tolerances:
        The tolerances used.
    runs:
        One :class:`RunInfo` per checked run.
    checks:
        Every :class:`CheckResult`, in run order.
    seconds:
        Wall time of the whole check.
    maps:
        Per run, the checked model's ``{"local": Sum, "global": Sum}`` maps (for the
        HTML report's baseline / candidate / difference panels; not in the JSON).
    """

    model_path: str
    model_sha256: str
    model_format: str
    baseline_path: str
    baseline_sha256: str
    device: str
    tolerances: Tolerances
    runs: list[RunInfo] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False,
                                                   compare=False)

    # -- verdict
    def summary(self) -> dict[str, int]:
        """``{"passed", "failed", "skipped", "total"}`` counts."""
        out = {"passed": 0, "failed": 0, "skipped": 0}
        for c in self.checks:
            out[c.status] += 1
        out["total"] = len(self.checks)
        return out

    @property
    def failed(self) -> list[CheckResult]:
        """The failed checks."""
        return [c for c in self.checks if c.status == "failed"]

    @property
    def ok(self) -> bool:
        """No check failed."""
        return not self.failed

    @property
    def status(self) -> str:
        """``"PASSED"`` or ``"FAILED"``."""
        return "PASSED" if self.ok else "FAILED"

    def moved_metrics(self) -> list[str]:
        """Names of the failed metrics (unique, report order)."""
        return list(dict.fromkeys(c.name for c in self.failed))

    # -- renderings
    def to_dict(self) -> dict[str, Any]:
        """The JSON report (deterministic: no timings, sorted keys when dumped)."""
        import torch

        v = software_versions()
        return {
            "schema_version": CHECK_SCHEMA_VERSION,
            "tool": "glam check",
            "glam_version": v["glam_version"],
            "torch_version": str(torch.__version__),
            "versions": v,
            "model": {"path": self.model_path, "sha256": self.model_sha256,
                      "format": self.model_format},
            "model_sha256": self.model_sha256,
            "baseline": {"path": self.baseline_path, "sha256": self.baseline_sha256},
            "baseline_path": self.baseline_path,
            "baseline_sha256": self.baseline_sha256,
            "device": self.device,
            "top_k_percent": self.tolerances.top_k_percent,
            "tolerances": _json_safe(self.tolerances.to_dict()),
            "runs": [r.to_dict() for r in self.runs],
            "checks": [c.to_dict() for c in self.checks],
            "summary": self.summary(),
            "status": self.status,
            "failed_metrics": self.moved_metrics(),
        }

    def write_json(self, path: str | Path) -> Path:
        """Write the JSON report; returns its path."""
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n",
                     encoding="utf-8")
        return p

    def junit(self) -> ET.ElementTree:
        """A JUnit XML tree: one ``testsuite`` per run, one ``testcase`` per check."""
        s = self.summary()
        root = ET.Element("testsuites", {
            "name": "glam check", "tests": str(s["total"]), "failures": str(s["failed"]),
            "skipped": str(s["skipped"]), "errors": "0", "time": f"{self.seconds:.3f}",
        })
        by_run: dict[str, list[CheckResult]] = {}
        for c in self.checks:
            by_run.setdefault(c.run, []).append(c)
        for info in self.runs:
            cs = by_run.get(info.run, [])
            suite = ET.SubElement(root, "testsuite", {
                "name": f"glam check {info.run}",
                "tests": str(len(cs)),
                "failures": str(sum(c.status == "failed" for c in cs)),
                "skipped": str(sum(c.status == "skipped" for c in cs)),
                "errors": "0",
                "time": f"{info.seconds:.3f}",
            })
            props = ET.SubElement(suite, "properties")
            for k, val in (("model", self.model_path), ("model_sha256", self.model_sha256),
                           ("baseline", self.baseline_path),
                           ("baseline_sha256", self.baseline_sha256), ("device", self.device),
                           ("layer_matching", info.layer_matching)):
                ET.SubElement(props, "property", {"name": k, "value": str(val)})
            classname = "glam_check." + info.run.replace(".", "_")
            for c in cs:
                case = ET.SubElement(suite, "testcase", {
                    "classname": classname, "name": c.label, "time": "0"})
                if c.status == "failed":
                    el = ET.SubElement(case, "failure", {"message": c.explanation(),
                                                         "type": "regression"})
                    el.text = c.explanation()
                elif c.status == "skipped":
                    ET.SubElement(case, "skipped", {"message": c.message or "skipped"})
        return ET.ElementTree(root)

    def write_junit(self, path: str | Path) -> Path:
        """Write the JUnit XML report; returns its path."""
        p = Path(path)
        tree = self.junit()
        ET.indent(tree)
        tree.write(p, encoding="utf-8", xml_declaration=True)
        return p

    def table(self, *, failures_only: bool = False) -> str:
        """The console table: run, check, value, tolerance, pass, smallest passing tolerance."""
        from glam.runs import format_table

        rows: list[tuple[str, ...]] = [
            ("run", "check", "value", "tolerance", "pass", "min passing")]
        for c in self.checks:
            if failures_only and c.status != "failed":
                continue
            verdict = {"passed": "PASS", "failed": "FAIL", "skipped": "skip"}[c.status]
            tol = "-" if c.tolerance is None else f"{c.comparison} {_fmt(c.tolerance)}"
            rows.append((c.run, c.label, _fmt(c.value), tol, verdict,
                         _fmt(c.min_passing_tolerance) if c.status != "skipped" else "-"))
        if failures_only and len(rows) == 1:
            n = sum(1 for c in self.checks if c.status == "passed")
            skipped = sum(1 for c in self.checks if c.status == "skipped")
            runs = len({c.run for c in self.checks})
            return (f"no failed checks: {n} of {len(self.checks)} check(s) passed over {runs} "
                    f"run(s)" + (f", {skipped} skipped" if skipped else ""))
        return format_table(rows)

    def notes(self) -> list[str]:
        """Human notes: unmatched layers, layer matching by order, other per-run notes."""
        out: list[str] = []
        for r in self.runs:
            if r.unmatched_baseline_layers:
                out.append(f"{r.run}: baseline layer(s) not in the model (skipped): "
                           f"{', '.join(r.unmatched_baseline_layers)}")
            if r.unmatched_model_layers:
                out.append(f"{r.run}: model layer(s) not in the baseline (skipped): "
                           f"{', '.join(r.unmatched_model_layers)}")
            out.extend(f"{r.run}: {n}" for n in r.notes)
        return out

    def final_line(self) -> str:
        """``PASSED | 30/30 checks | 4.2s`` (plus skipped and failed metrics when any)."""
        s = self.summary()
        judged = s["passed"] + s["failed"]
        parts = [self.status, f"{s['passed']}/{judged} checks"]
        if s["skipped"]:
            parts.append(f"{s['skipped']} skipped")
        if s["failed"]:
            parts.append("failed: " + ", ".join(self.moved_metrics()))
        parts.append(f"{self.seconds:.1f}s")
        return " | ".join(parts)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return _finite(obj)
    return obj


# ------------------------------------------------------------------------ baseline input


@dataclass
class BaselineLayer:
    """The per-layer maps of one participating baseline tap."""

    index: int
    name: str
    local_map: np.ndarray
    global_map: np.ndarray | None
    local_peak: float = 0.0
    global_peak: float = 0.0


def _peak(a: np.ndarray) -> float:
    finite = np.abs(np.asarray(a, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size else 0.0


def select_runs(ar: Archive, runs: Sequence[str] | None) -> list[str]:
    """The runs to check: names or ``fnmatch`` globs, default every ``baseline=True`` run.

    Raises
    ------
    ArchiveError
        For a name or glob that matches nothing, or an archive without baseline runs.
    """
    available = ar.runs()
    path = str(ar.path)
    if not runs:
        chosen = [r for r in available if bool(ar.group(r).attrs.get("baseline", False))]
        if not chosen:
            hint = (f"it holds {len(available)} ordinary run(s) ({', '.join(available[:5])}"
                    f"{' ...' if len(available) > 5 else ''}); name them with --runs"
                    if available else "it holds no runs")
            raise ArchiveError(
                f"{path!r} has no runs marked as baseline; write one with `glam baseline MODEL "
                f"IMAGE -o {Path(path).name}` ({hint})"
            )
        return chosen
    out: list[str] = []
    for item in runs:
        if any(ch in item for ch in "*?["):
            hits = [r for r in available if fnmatch.fnmatchcase(r, item)]
            if not hits:
                raise ArchiveError(
                    f"--runs pattern {item!r} matches no run of {path!r}; available runs: "
                    f"{', '.join(available[:20]) or 'none'}"
                )
            out.extend(hits)
        else:
            ar.group(item)  # raises with the list of available runs
            out.append(item)
    return list(dict.fromkeys(out))


def read_baseline_run(ar: Archive, name: str) -> RunData:
    """Read one baseline run, turning a damaged group into one :class:`ArchiveError` line."""
    try:
        rd = ar.run(name)
        for key in ("roi_top", "roi_left", "window", "in_channels", "scale"):
            if key not in rd.attrs:
                raise KeyError(f"attribute {key!r}")
    except ArchiveError:
        raise
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise ArchiveError(
            f"baseline run {name!r} of {str(ar.path)!r} is damaged or incomplete "
            f"({type(exc).__name__}: {str(exc).strip() or 'unreadable'}); write the baseline again"
        ) from None
    return rd


def read_baseline_layers(ar: Archive, name: str) -> list[BaselineLayer]:
    """The participating layers' ``local_map``/``global_map`` of a baseline run (float32)."""
    g = ar.group(name)
    if "layers" not in g:
        return []
    out: list[BaselineLayer] = []
    try:
        for key in sorted(g["layers"].keys(), key=int):
            lg = g["layers"][key]
            if not bool(lg.attrs.get("participating", False)) or "local_map" not in lg:
                continue
            nm = lg.attrs.get("name", key)
            local_map = _read(lg["local_map"])
            ggm = _read(lg["global_grad_map"]) if "global_grad_map" in lg else None
            out.append(BaselineLayer(
                index=int(key),
                name=nm.decode() if isinstance(nm, bytes) else str(nm),
                local_map=local_map,
                global_map=_read(lg["global_map"]) if "global_map" in lg else None,
                local_peak=_peak(local_map),
                global_peak=_peak(ggm) if ggm is not None else 0.0,
            ))
    except (KeyError, OSError, ValueError) as exc:
        raise ArchiveError(
            f"the layer records of baseline run {name!r} in {str(ar.path)!r} are damaged "
            f"({type(exc).__name__}: {exc}); write the baseline again"
        ) from None
    return out


# ------------------------------------------------------------------------- layer matching


def _is_suffix(short: str, long: str) -> bool:
    """``short`` is ``long`` minus a leading module path (``head`` of ``model.head``)."""
    return len(long) > len(short) and long.endswith(short) and long[-len(short) - 1] in "./"


def match_layers(
    baseline: Sequence[str], model: Sequence[str]
) -> tuple[list[tuple[int, int]], list[int], list[int], str]:
    """Pair baseline and model layers (participating taps) by name.

    Layers pair by equal name (repeated names pair in order of appearance), then by a
    unique name suffix (a wrapper module that prefixes every name: ``model.head`` pairs
    with ``head``). When nothing pairs at all but both sides have the same number of layers,
    they pair by execution order (an exporter that renames every node).

    Returns
    -------
    tuple
        ``(pairs, unmatched_baseline, unmatched_model, how)`` with positions into the two
        sequences and ``how`` one of ``"name"``, ``"order"``, ``"none"``.
    """
    queues: dict[str, list[int]] = {}
    for j, n in enumerate(model):
        queues.setdefault(n, []).append(j)
    pairs: list[tuple[int, int]] = []
    for i, n in enumerate(baseline):
        q = queues.get(n)
        if q:
            pairs.append((i, q.pop(0)))
    # A wrapper module prefixes every name ("model.head" vs "head"): pair unique suffixes.
    used_m = {j for _, j in pairs}
    free_m = [j for j in range(len(model)) if j not in used_m]
    for i in sorted(set(range(len(baseline))) - {i for i, _ in pairs}):
        b = baseline[i]
        cands = [j for j in free_m if _is_suffix(b, model[j]) or _is_suffix(model[j], b)]
        if len(cands) == 1:
            pairs.append((i, cands[0]))
            free_m.remove(cands[0])
    pairs.sort()
    if not pairs and baseline and len(baseline) == len(model):
        return [(i, i) for i in range(len(baseline))], [], [], "order"
    used_b = {i for i, _ in pairs}
    used_m = {j for _, j in pairs}
    ub = [i for i in range(len(baseline)) if i not in used_b]
    um = [j for j in range(len(model)) if j not in used_m]
    return pairs, ub, um, "name" if pairs else "none"


# --------------------------------------------------------------------------- comparison


class _SumAccumulator:
    """GLAM.md's ``Sum = N(N(Σ k_i) + N(Σ |k_i − k_{i−1}|))`` built one key at a time
    (memory: three ``H x W`` maps, whatever the depth)."""

    def __init__(self) -> None:
        self.consensus: Any = None
        self.variation: Any = None
        self.previous: Any = None
        self.n = 0

    def add(self, key: Any) -> None:
        """Add the next layer's key (a ``H x W`` tensor), in execution order."""
        k = key.double()
        if self.consensus is None:
            self.consensus = k.clone()
            self.variation = k.new_zeros(k.shape)
        else:
            self.consensus += k
            self.variation += (k - self.previous).abs()
        self.previous = k
        self.n += 1

    def sum_map(self) -> np.ndarray:
        """The Sum map of the keys added so far."""
        from glam.engine.maps import normalize

        return normalize(normalize(self.consensus) + normalize(self.variation)).numpy()


def _degenerate(
    run: str,
    name: str,
    tolerances: dict[str, float | None],
    layer: str,
    peak: float,
    top: float,
    floor: float,
) -> CheckResult:
    rel = peak / top if top > 0 else 0.0
    return CheckResult(
        run, name, None, tolerances.get(name), METRICS[name].comparison, "skipped", layer,
        f"numerically degenerate in the baseline: map peak {rel:.1e} of the largest layer's "
        f"(<= layer_floor {floor:g}); its key is rounding noise",
    )


def compare_run(
    base: RunData,
    base_layers: Sequence[BaselineLayer],
    new: Result,
    tolerances: dict[str, float | None],
    *,
    top_k_percent: float = 10.0,
    layer_floor: float = 1e-5,
    info: RunInfo | None = None,
) -> list[CheckResult]:
    """All checks of one run: output, Sum maps, per-layer keys, scalars, LAM.

    Parameters
    ----------
    base:
        The baseline run.
    base_layers:
        Its participating layers (:func:`read_baseline_layers`).
    new:
        The re-run (:func:`glam.api.analyze` with ``keep_layers=True``).
    tolerances:
        ``{metric: tolerance or None}`` for this run.
    top_k_percent:
        ``k`` of the top-k overlap checks.
    layer_floor:
        A baseline layer whose raw map peak is at most ``layer_floor`` times the largest
        layer's is numerically degenerate (its Grad-CAM channel sum cancels to rounding
        noise); its per-layer check is skipped.
    info:
        Filled with the layer matching (optional).

    Returns
    -------
    list[CheckResult]
    """
    import torch
    from glam.engine.glam import layer_keys
    from glam.engine.metrics import mse_psnr

    run = base.name
    checks: list[CheckResult] = []

    def add(name: str, value: float | None, *, layer: str | None = None, message: str = "") -> None:
        checks.append(evaluate(run, name, value, tolerances.get(name), layer=layer,
                               message=message))

    # output
    max_abs, psnr_out = output_difference(new.output, base.output)
    add("output_max_abs", max_abs)
    add("output_psnr", psnr_out)

    # Sum maps
    for fam, bmaps, nmaps in (("local", base.local, new.local),
                              ("global", base.global_, new.global_)):
        add(f"{fam}_sum_pearson", pearson(nmaps["sum"], bmaps["sum"]))
        add(f"{fam}_sum_topk_overlap", top_k_overlap(nmaps["sum"], bmaps["sum"], top_k_percent),
            message=f"top {top_k_percent:g} %")

    # per layer
    H, W = base.output.shape[-2:]
    new_layers = [r for r in new.layers if r.participating]
    if base_layers:
        pairs, ub, um, how = match_layers([b.name for b in base_layers],
                                          [r.name for r in new_layers])
        if info is not None:
            info.layer_matching = how
            info.matched_layers = len(pairs)
            info.unmatched_baseline_layers = [base_layers[i].name for i in ub]
            info.unmatched_model_layers = [new_layers[j].name for j in um]
            if how == "order":
                info.notes.append("no layer name matches the baseline; layers were paired by "
                                  "execution order (same count)")
        top_local = max((b.local_peak for b in base_layers), default=0.0)
        top_global = max((b.global_peak for b in base_layers), default=0.0)
        stable = {"local": (_SumAccumulator(), _SumAccumulator()),
                  "global": (_SumAccumulator(), _SumAccumulator())}
        for i, j in sorted(pairs):
            b, r = base_layers[i], new_layers[j]
            label = b.name if b.name == r.name else f"{b.name}~{r.name}"
            for fam, bmap, nmap, peak, top in (
                ("local", b.local_map, r.local_map, b.local_peak, top_local),
                ("global", b.global_map, r.global_map, b.global_peak, top_global),
            ):
                if bmap is None or nmap is None:
                    continue
                name = f"layer_{fam}_pearson"
                if peak <= layer_floor * top:
                    checks.append(_degenerate(run, name, tolerances, label, peak, top,
                                              layer_floor))
                    continue
                kb, kn = layer_keys([torch.from_numpy(np.ascontiguousarray(bmap)),
                                     torch.from_numpy(np.ascontiguousarray(nmap))], (H, W))
                add(name, pearson(kn.numpy(), kb.numpy()), layer=label)
                stable[fam][0].add(kb)
                stable[fam][1].add(kn)
        for fam, (acc_b, acc_n) in stable.items():
            if acc_b.n == 0:
                continue
            sb, sn = acc_b.sum_map(), acc_n.sum_map()
            msg = f"Sum of {acc_b.n} matched non-degenerate layers"
            add(f"{fam}_stable_sum_pearson", pearson(sn, sb), message=msg)
            add(f"{fam}_stable_sum_topk_overlap", top_k_overlap(sn, sb, top_k_percent),
                message=f"{msg}, top {top_k_percent:g} %")
        for i in ub:
            for name in ("layer_local_pearson", "layer_global_pearson"):
                checks.append(CheckResult(run, name, None, tolerances.get(name),
                                          METRICS[name].comparison, "skipped", base_layers[i].name,
                                          "baseline layer has no match in the model (pruned or "
                                          "renamed?)"))
        for j in um:
            for name in ("layer_local_pearson", "layer_global_pearson"):
                checks.append(CheckResult(run, name, None, tolerances.get(name),
                                          METRICS[name].comparison, "skipped", new_layers[j].name,
                                          "model layer is not in the baseline (new or renamed?)"))
    elif info is not None:
        info.notes.append("the baseline run has no per-layer records; per-layer checks skipped")

    # scalars
    bm, nm = base.metrics, new.metrics
    add("di_local_delta", _abs_delta(nm.get("di_local"), bm.get("di_local")))
    add("di_global_delta", _abs_delta(nm.get("di_global"), bm.get("di_global")))
    add("attributed_fraction_local_delta",
        _abs_delta(nm.get("attributed_fraction_local"), bm.get("attributed_fraction_local")))
    add("attributed_fraction_global_delta",
        _abs_delta(nm.get("attributed_fraction_global"), bm.get("attributed_fraction_global")))
    if base.reference is not None and base.reference.shape == new.output.shape:
        _, p_new = mse_psnr(new.output, base.reference)
        _, p_base = mse_psnr(base.output, base.reference)
        add("psnr_delta", _abs_delta(p_new, p_base),
            message=f"PSNR {_fmt(p_new)} dB vs baseline {_fmt(p_base)} dB")

    # LAM
    if base.lam is not None and "map" in base.lam and new.lam is not None:
        add("lam_pearson", pearson(new.lam.map, base.lam["map"]))
        add("di_lam_delta", _abs_delta(nm.get("di_lam"), bm.get("di_lam")))
    return checks


# ----------------------------------------------------------------------------- the check


def _conventions_match(model: ImportedModel, base: RunData, model_path: str) -> None:
    """Refuse a model whose I/O conventions cannot reproduce the baseline's shapes."""
    c = model.conventions
    a = base.attrs
    name = Path(model_path).name

    def chan(n: int) -> str:
        return f"{n} channel(s) ({'Y of YCbCr' if n == 1 else 'RGB'})"

    if int(a["in_channels"]) != c.in_channels:
        raise ConventionError(
            f"{name} takes {chan(c.in_channels)} but baseline run {base.name!r} was recorded "
            f"with {chan(int(a['in_channels']))} inputs; check against a baseline of a model "
            "with the same input convention"
        )
    out_ch = int(a.get("out_channels", base.output.shape[0]))
    if out_ch != c.out_channels:
        raise ConventionError(
            f"{name} outputs {chan(c.out_channels)} but baseline run {base.name!r} has "
            f"{chan(out_ch)}; check against a baseline with the same output convention"
        )
    if int(a["scale"]) != c.scale:
        raise ConventionError(
            f"{name} upscales x{c.scale} but baseline run {base.name!r} is x{a['scale']}; "
            "check against a baseline of the same scale"
        )
    h, w = base.input.shape[-2:]
    if c.fixed_size is not None and tuple(c.fixed_size) != (h, w):
        raise ConventionError(
            f"{name} takes a fixed {c.fixed_size[0]}x{c.fixed_size[1]} input but baseline run "
            f"{base.name!r} stores a {h}x{w} input; re-record the baseline with this model's size"
        )
    H, W = c.output_size(h, w)
    if (H, W) != tuple(base.output.shape[-2:]):
        raise ConventionError(
            f"{name} makes a {H}x{W} output from the {h}x{w} input of baseline run "
            f"{base.name!r}, the baseline output is {base.output.shape[-2]}x"
            f"{base.output.shape[-1]}; the models crop or pad differently"
        )


def _check_input_sizes(ar: Archive, names: Sequence[str], max_pixels: int | None) -> None:
    """Refuse baseline runs whose stored input is above the pixel limit, from the dataset's
    shape alone (before anything is read or analysed)."""
    from glam.runs import DEFAULT_MAX_PIXELS

    if max_pixels is not None and max_pixels < 1:
        raise UserInputError(f"--max-pixels {max_pixels} must be at least 1")
    limit = max_pixels or DEFAULT_MAX_PIXELS
    for name in names:
        g = ar.group(name)
        ds = g.get("input") if hasattr(g, "get") else None
        shape = tuple(getattr(ds, "shape", ()) or ())
        if len(shape) >= 2:
            pixels = int(shape[-1]) * int(shape[-2])
            if pixels > limit:
                raise ArchiveError(
                    f"baseline run {name!r} stores a {shape[-2]}x{shape[-1]} input ({pixels:,} "
                    f"pixels), above the limit of {limit:,}; check it with --max-pixels "
                    f"{pixels} if the archive is trusted"
                )


def check_model(
    model_path: str | Path,
    baseline_path: str | Path,
    tolerances: Tolerances | None = None,
    runs: Sequence[str] | None = None,
    device: str = "auto",
    *,
    input_range: str | int | None = None,
    parity_tolerance: float | None = None,
    model: ImportedModel | None = None,
    on_run: Callable[[RunInfo, list[CheckResult]], None] | None = None,
    verify: bool = False,
    trust_model: bool = False,
    max_pixels: int | None = None,
    log: PhaseLog | None = None,
    defaults: str = "auto",
) -> CheckReport:
    """Re-run the baseline's analyses on ``model_path`` and compare (see module docstring).

    Parameters
    ----------
    model_path:
        The model to check (ONNX, TorchScript, ``.pt2``).
    baseline_path:
        A glam archive with baseline runs (``glam baseline``).
    tolerances:
        :class:`~glam.gate.tolerances.Tolerances`; default: the documented defaults.
    runs:
        Run names or globs to check; default every run marked ``baseline``.
    device:
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    input_range:
        The model's native input range; ``None`` (default) reuses each baseline run's,
        ``"auto"`` detects it, 1 or 255 forces it.
    parity_tolerance:
        Import parity tolerance (default that of :func:`glam.importers.load`).
    model:
        An already imported model (then ``model_path`` is only reported).
    on_run:
        Called after each run with its info and checks (progress output).
    verify:
        Also run the literal GLAM.md reference beside the engine on each run and add an
        ``engine_parity_max_error`` check (GLAM.md: at most 1e-4).
    trust_model:
        Passed to :func:`glam.importers.load` (allow operators outside the pure-op allow-list).
    max_pixels:
        Largest baseline input (LR pixels) to re-analyse (default
        :data:`glam.runs.DEFAULT_MAX_PIXELS`); a baseline archive is untrusted input,
        so a larger stored input is refused before it is read.
    log:
        Phase log: the model's import and parity, each run's GL-AM / LAM phases, and a
        progress bar over the baseline runs (lines, not a redrawn bar, in a CI log).
    defaults:
        ``"auto"`` (default): the quantized defaults
        (:data:`glam.gate.tolerances.QUANTIZED_DEFAULTS`) when the model is a quantized
        graph, the float defaults otherwise; ``"float"`` or ``"quantized"`` forces them.
        Values from a tolerance file or ``--tol`` are kept either way.

    Returns
    -------
    CheckReport

    Raises
    ------
    ArchiveError
        Missing, corrupt or non-baseline archive, unknown runs (exit code 2).
    ConventionError
        The model's input/output convention does not fit the baseline (exit code 2).
    ModelError
        The model cannot be imported or run (exit code 3).
    """
    import glam.importers
    import torch
    from glam.api import analyze
    from glam.engine.device import resolve_device
    from glam.importers.loader import sha256_of
    from glam.memory import check_memory

    t0 = time.perf_counter()
    tol = tolerances if tolerances is not None else Tolerances()
    if defaults not in DEFAULTS_CHOICES:
        raise UserInputError(
            f"tolerance defaults {defaults!r} are unknown; use one of {', '.join(DEFAULTS_CHOICES)}"
        )
    dev = resolve_device(device)
    bpath = Path(baseline_path)
    if model is None and not Path(model_path).exists():
        raise UserInputError(f"model {str(model_path)!r} does not exist; pass the model file to check")
    with open_archive(bpath, what="baseline", writer="glam baseline MODEL IMAGES") as ar:
        names = select_runs(ar, runs)
        _check_input_sizes(ar, names, max_pixels)
        bases = [read_baseline_run(ar, n) for n in names]
        models: dict[tuple[Any, int], ImportedModel] = {}

        def get_model(rd: RunData) -> ImportedModel:
            if model is not None:
                return model
            conv = rd.provenance.get("conventions", {})
            out_idx = int(conv.get("output_index", 0) or 0)
            rng: Any = input_range if input_range is not None else int(rd.attrs.get("input_range", 1))
            key = (str(rng), out_idx)
            if key not in models:
                kwargs: dict[str, Any] = {"input_range": rng, "output": out_idx,
                                          "trust_model": trust_model}
                if parity_tolerance is not None:
                    kwargs["tolerance"] = parity_tolerance
                t = time.perf_counter()
                models[key] = glam.importers.load(model_path, **kwargs)
                if log is not None:
                    from glam.runs import log_import

                    log_import(log, models[key], time.perf_counter() - t)
            return models[key]

        report: CheckReport | None = None
        bar = log.bar(len(bases), "baseline runs", "run") if log is not None and len(bases) > 1 else None
        for i, rd in enumerate(bases, start=1):
            m = get_model(rd)
            if log is not None and len(bases) > 1:
                log.prefix = f"[{i}/{len(bases)} {rd.name}] "
            if report is None:
                tol = _apply_defaults(tol, m, defaults)
                report = CheckReport(
                    model_path=str(model_path),
                    model_sha256=m.sha256 or (sha256_of(model_path) if Path(model_path).is_file()
                                              else ""),
                    model_format=str(m.format),
                    baseline_path=str(bpath),
                    baseline_sha256=sha256_of(bpath),
                    device=str(dev),
                    tolerances=tol,
                )
            _conventions_match(m, rd, str(model_path))
            t_run = time.perf_counter()
            layers = read_baseline_layers(ar, rd.name)
            lam_kw: dict[str, Any] = {}
            if rd.lam is not None:
                la = rd.lam.get("attrs", {})
                lam_kw = {"lam": True, "lam_fold": int(la.get("fold", 50)),
                          "lam_sigma": float(la.get("sigma", 1.2)),
                          "lam_kernel": int(la.get("kernel", 9)),
                          "lam_batch": int(la.get("batch", 8))}
            check_memory(m, int(rd.input.shape[-2]), int(rd.input.shape[-1]), device=dev,
                         store="maps", verify=verify, lam=bool(lam_kw),
                         lam_batch=int(lam_kw.get("lam_batch", 8)),
                         what=f"checking baseline run {rd.name!r}")
            new = analyze(m, torch.from_numpy(np.ascontiguousarray(rd.input))[None],
                          rd.roi, rd.window, device=dev, store="maps", keep_layers=True,
                          verify=verify, log=log, **lam_kw)
            info = RunInfo(run=rd.name, baseline_model=str(rd.attrs.get("model_path", "")),
                           baseline_model_sha256=str(rd.attrs.get("model_sha256", "")))
            checks = compare_run(rd, layers, new, tol.for_run(rd.name),
                                 top_k_percent=tol.top_k_percent, layer_floor=tol.layer_floor,
                                 info=info)
            if new.engine_parity is not None:
                ep = new.engine_parity
                # judged relative to each map's bound (1e-4 unless float32 cannot resolve
                # a key; glam.engine.reference.layer_tolerance), scaled to the tolerance
                worst = ep.worst_map
                value = ep.errors[worst] * ep.tolerance / ep.bound(worst) if worst else 0.0
                checks.append(evaluate(
                    rd.name, "engine_parity_max_error", value,
                    tol.for_run(rd.name).get("engine_parity_max_error"),
                    message=f"worst: {ep.describe([t.name for t in m.taps])}",
                ))
            info.seconds = time.perf_counter() - t_run
            report.maps[rd.name] = {"local": np.asarray(new.local["sum"]),
                                    "global": np.asarray(new.global_["sum"])}
            report.runs.append(info)
            report.checks.extend(checks)
            if on_run is not None:
                on_run(info, checks)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if log is not None:
            log.prefix = ""
    if report is None:  # pragma: no cover - select_runs never returns an empty list
        raise ArchiveError(f"no runs to check in {str(bpath)!r}")
    report.seconds = time.perf_counter() - t0
    return report


def _apply_defaults(tol: Tolerances, model: ImportedModel, defaults: str) -> Tolerances:
    """``tol`` with the quantized defaults when ``defaults`` asks for them (``auto``: when
    ``model`` is a quantized graph)."""
    quant = model.metadata.get("quantization") if isinstance(model.metadata, dict) else None
    if defaults == "quantized":
        return tol.with_quantized_defaults("--defaults quantized")
    if defaults == "auto" and quant:
        formats = "/".join(quant.get("formats", [])) or "quantized"
        return tol.with_quantized_defaults(f"the candidate is a quantized {formats} graph")
    return tol


# ---------------------------------------------------------------------------- baselines


def make_baseline(
    model: ImportedModel,
    images: Sequence[str | Path],
    archive: str | Path,
    options: AnalyzeOptions,
    *,
    progress: bool = False,
    on_run: Callable[[RunSummary], None] | None = None,
    log: PhaseLog | None = None,
) -> list[RunSummary]:
    """``glam baseline``: :func:`glam.runs.analyze_images` with runs marked baseline.

    The per-layer maps are always kept (``store`` is ``maps`` unless ``tensors`` is asked
    for), since ``glam check`` compares them layer by layer.

    Parameters
    ----------
    model:
        The imported reference model.
    images:
        Image files or directories.
    archive:
        The baseline archive to write (or append to).
    options:
        Analysis options (``baseline`` is forced on).
    progress:
        Progress bar over images.
    on_run:
        Called with each run's summary.
    log:
        Phase log and progress over the images (see :func:`glam.runs.analyze_images`).

    Returns
    -------
    list[RunSummary]
    """
    from glam.runs import analyze_images

    opts = replace(options, baseline=True)
    return analyze_images(model, images, archive, opts, progress=progress, on_run=on_run, log=log)


def prepare_baseline(
    model_path: str | Path,
    images: Sequence[str | Path],
    archive: str | Path,
    options: AnalyzeOptions,
) -> list[Path]:
    """Validate a ``glam baseline`` invocation before the (slow) model import.

    Returns
    -------
    list[Path]
        The image files (directories expanded).

    Raises
    ------
    UserInputError
        Bad options, a missing image or reference, run names that already exist.
    """
    from glam.resume import complete_runs_to_skip
    from glam.runs import check_image_files, expand_images, pair_images, run_names

    options.validate()
    if options.reference is not None and not Path(options.reference).is_file():
        raise UserInputError(
            f"reference {str(options.reference)!r} does not exist; pass the HR image file")
    paired = pair_images(images, options)
    check_image_files(paired)
    complete_runs_to_skip(archive, model_path, paired.files, paired.references,
                          run_names(model_path, paired.files, options.run), options)
    return expand_images(images)  # analyze_images pairs them again
