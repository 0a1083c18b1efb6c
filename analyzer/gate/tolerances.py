"""Tolerances of ``glam check``: the metric table, defaults, flags and tolerance files.

Every check compares one metric of a re-run against the archived baseline with one
tolerance, in one direction: ``value >= tolerance`` for similarities (Pearson, top-k
overlap, PSNR between the two outputs) and ``value <= tolerance`` for differences (max abs
difference, |ΔDI|, |ΔPSNR|, |Δ attributed fraction|). The defaults and the measurements
behind them are documented in ``docs/ci.md``.

Tolerances come from, in increasing precedence:

1. :data:`METRICS` defaults;
2. top-level keys of a tolerance file (``--tolerances FILE``, TOML or JSON);
3. ``--tol METRIC=VALUE`` flags;
4. ``[runs."GLOB"]`` tables of the file (``GLOB`` is an ``fnmatch`` pattern over run names);
5. ``--tol GLOB:METRIC=VALUE`` flags.

A value of ``off`` (or ``false`` in a file) disables a check: it is reported as skipped.

>>> from glam.gate.tolerances import build_tolerances
>>> tol = build_tolerances(flags=["output_max_abs=2e-3", "fp16*:local_sum_pearson=0.9"])
>>> tol.for_run("fp16_model__img")["local_sum_pearson"]
0.9
>>> tol.for_run("other")["output_max_abs"]
0.002
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from glam.errors import UserInputError

Comparison = Literal[">=", "<="]

#: Share of the most attributed pixels compared by the ``*_topk_overlap`` checks (percent).
DEFAULT_TOP_K_PERCENT = 10.0
#: Baseline layers whose raw map peak is at most this share of the largest layer's are
#: numerically degenerate (rounding noise) and their per-layer checks are skipped.
DEFAULT_LAYER_FLOOR = 1e-5

_OFF = ("off", "none", "skip", "disable", "disabled")


@dataclass(frozen=True)
class MetricSpec:
    """One checked metric.

    Attributes
    ----------
    name:
        The metric's name (``--tol NAME=VALUE``).
    comparison:
        ``">="`` (the value must reach the tolerance) or ``"<="`` (must not exceed it).
    default:
        Default tolerance.
    group:
        ``output``, ``maps``, ``layers``, ``scalars`` or ``lam``.
    description:
        One line for the docs and ``--help``.
    """

    name: str
    comparison: Comparison
    default: float
    group: str
    description: str


def _m(name: str, comparison: Comparison, default: float, group: str, description: str) -> MetricSpec:
    return MetricSpec(name, comparison, default, group, description)


#: Every metric ``glam check`` knows, in report order.
METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        _m("output_max_abs", "<=", 1e-3, "output",
           "max |y - y_baseline| over the output, both clipped to [0, 1]"),
        _m("output_psnr", ">=", 60.0, "output",
           "PSNR (dB) of the output against the baseline output, both clipped to [0, 1]"),
        _m("local_sum_pearson", ">=", 0.95, "maps", "Pearson correlation of the local Sum maps"),
        _m("global_sum_pearson", ">=", 0.85, "maps", "Pearson correlation of the global Sum maps"),
        _m("local_sum_topk_overlap", ">=", 0.8, "maps",
           "share of the top-k % local Sum pixels that coincide"),
        _m("global_sum_topk_overlap", ">=", 0.6, "maps",
           "share of the top-k % global Sum pixels that coincide"),
        _m("local_stable_sum_pearson", ">=", 0.95, "maps",
           "Pearson of local Sum maps rebuilt from the matched non-degenerate layers only"),
        _m("global_stable_sum_pearson", ">=", 0.98, "maps",
           "Pearson of global Sum maps rebuilt from the matched non-degenerate layers only"),
        _m("local_stable_sum_topk_overlap", ">=", 0.85, "maps",
           "top-k % overlap of the rebuilt local Sum maps"),
        _m("global_stable_sum_topk_overlap", ">=", 0.9, "maps",
           "top-k % overlap of the rebuilt global Sum maps"),
        _m("layer_local_pearson", ">=", 0.7, "layers",
           "Pearson correlation of one layer's local key (layers matched by name)"),
        _m("layer_global_pearson", ">=", 0.9, "layers",
           "Pearson correlation of one layer's global key (layers matched by name)"),
        _m("di_local_delta", "<=", 3.0, "scalars", "|ΔDI| of the local Sum map (DI in 0..100)"),
        _m("di_global_delta", "<=", 2.0, "scalars", "|ΔDI| of the global Sum map"),
        _m("attributed_fraction_local_delta", "<=", 0.02, "scalars",
           "|Δ attributed fraction| of the local Sum map (a share in 0..1)"),
        _m("attributed_fraction_global_delta", "<=", 0.05, "scalars",
           "|Δ attributed fraction| of the global Sum map"),
        _m("psnr_delta", "<=", 0.1, "scalars",
           "|ΔPSNR| (dB) against the stored HR reference (runs with a reference only)"),
        _m("lam_pearson", ">=", 0.95, "lam",
           "Pearson correlation of the LAM maps (runs analysed with --lam only)"),
        _m("di_lam_delta", "<=", 2.0, "lam", "|ΔDI| of the LAM map (runs with --lam only)"),
        _m("engine_parity_max_error", "<=", 1e-4, "engine",
           "max |engine - literal GLAM.md reference| over every map (glam check --verify only)"),
    )
}


def default_tolerances() -> dict[str, float]:
    """The default tolerance of every metric."""
    return {name: spec.default for name, spec in METRICS.items()}


#: Defaults for a **quantized candidate** (int8 QDQ / QOperator / dynamic ONNX) checked
#: against a float baseline, where they differ from :data:`METRICS`; ``None`` turns a check
#: off. Measured by ``bench/quantized_gate.py`` (``docs/ci.md``, "Quantized candidates"): the
#: int8 versions of 16 trained models (shared models and fixtures, QDQ / QOperator static,
#: per-channel / per-tensor, uint8 / int8 activations, dynamic) within 3.2 dB of their
#: float model's PSNR pass them; those losing more (5.7 to 30 dB: real quantization
#: failures) fail, and so does a doubled weight scale on the head convolution wherever it
#: moves the output beyond int8's own noise. int8 moves the maps far more than float16:
#: the output checks discriminate, the map checks are sanity bounds.
QUANTIZED_DEFAULTS: dict[str, float | None] = {
    "output_max_abs": 0.3,
    "output_psnr": 33.0,
    "psnr_delta": 3.5,
    "local_sum_pearson": 0.8,
    "local_sum_topk_overlap": 0.55,
    "global_sum_pearson": 0.6,
    "global_sum_topk_overlap": 0.3,
    "local_stable_sum_pearson": 0.8,
    "local_stable_sum_topk_overlap": 0.7,
    "global_stable_sum_pearson": 0.6,
    "global_stable_sum_topk_overlap": 0.3,
    # int8 noise moves single layers' keys (measured min: local 0.25, global -0.02)
    "layer_local_pearson": None,
    "layer_global_pearson": None,
    # noise-level layers of the float model (peak ~1e-10) vanish exactly in int8 and drop
    # out of the archived Sum: DI local moved by up to 92 points at local Pearson > 0.9
    "di_local_delta": None,
    "di_global_delta": 10.0,
    "attributed_fraction_local_delta": 0.25,
    "attributed_fraction_global_delta": 0.15,
    "lam_pearson": 0.5,
    "di_lam_delta": 5.0,
}

#: ``--defaults`` choices: the float defaults, the quantized ones, or the quantized ones
#: exactly when the candidate is a quantized graph (``auto``).
DEFAULTS_CHOICES = ("auto", "float", "quantized")


def _unknown(name: str, where: str) -> UserInputError:
    return UserInputError(
        f"unknown check metric {name!r} in {where}; known metrics: {', '.join(METRICS)}"
    )


def _value(raw: Any, name: str, where: str) -> float | None:
    """A tolerance value: a finite float, or ``None`` (check disabled)."""
    if raw is False or raw is None:
        return None
    if isinstance(raw, str) and raw.strip().lower() in _OFF:
        return None
    if isinstance(raw, bool):
        raise UserInputError(f"tolerance of {name!r} in {where} is {raw!r}; give a number or off")
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise UserInputError(
            f"tolerance of {name!r} in {where} is {raw!r}, not a number; e.g. {name}="
            f"{METRICS[name].default:g} (or {name}=off to skip the check)"
        ) from None
    if math.isnan(v):
        raise UserInputError(f"tolerance of {name!r} in {where} is NaN; give a number or off")
    spec = METRICS.get(name)
    if spec is not None and spec.comparison == "<=" and not 0 <= v < math.inf:
        raise UserInputError(
            f"tolerance of {name!r} in {where} is {v:g}; an upper bound must be finite and >= 0 "
            f"(a negative one fails every run), e.g. {name}={spec.default:g}, or {name}=off"
        )
    if spec is not None and ("pearson" in name or "overlap" in name) and not -1 <= v <= 1:
        raise UserInputError(
            f"tolerance of {name!r} in {where} is {v:g}; a correlation/overlap floor lies in "
            f"[-1, 1], e.g. {name}={spec.default:g}, or {name}=off"
        )
    return v


@dataclass
class Tolerances:
    """Tolerances for every run: global values plus per-run overrides.

    Attributes
    ----------
    values:
        Tolerance per metric (``None`` disables the check).
    runs:
        ``(glob, {metric: value})`` overrides in increasing precedence.
    top_k_percent:
        ``k`` of the top-k overlap checks, in percent of the output pixels.
    layer_floor:
        Relative map peak at or below which a baseline layer counts as numerically
        degenerate (its per-layer checks are skipped, see ``docs/ci.md``).
    sources:
        Where the non-default values came from (for the report).
    explicit:
        Metrics whose top-level value a file or a flag set (a defaults profile such as
        :data:`QUANTIZED_DEFAULTS` does not replace them).
    defaults:
        Which defaults apply: ``"float"`` (:data:`METRICS`) or ``"quantized"``.
    """

    values: dict[str, float | None] = field(default_factory=default_tolerances)  # type: ignore[arg-type]
    runs: list[tuple[str, dict[str, float | None]]] = field(default_factory=list)
    top_k_percent: float = DEFAULT_TOP_K_PERCENT
    layer_floor: float = DEFAULT_LAYER_FLOOR
    sources: list[str] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)
    defaults: str = "float"

    def with_quantized_defaults(self, reason: str) -> Tolerances:
        """A copy whose defaults are :data:`QUANTIZED_DEFAULTS` (values set by a file or a
        flag are kept); ``reason`` is recorded in ``sources``."""
        values = dict(self.values)
        for name, value in QUANTIZED_DEFAULTS.items():
            if name not in self.explicit:
                values[name] = value
        return replace(self, values=values, defaults="quantized",
                       sources=[*self.sources, f"quantized defaults ({reason})"])

    def for_run(self, run: str) -> dict[str, float | None]:
        """The tolerances that apply to ``run`` (per-run overrides matched by glob)."""
        out = dict(self.values)
        for pattern, over in self.runs:
            if fnmatch.fnmatchcase(run, pattern):
                out.update(over)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "values": dict(self.values),
            "runs": [{"glob": g, "values": dict(v)} for g, v in self.runs],
            "top_k_percent": self.top_k_percent,
            "layer_floor": self.layer_floor,
            "sources": list(self.sources),
            "defaults": self.defaults,
        }


def parse_tol_flag(text: str) -> tuple[str | None, str, float | None]:
    """Parse one ``--tol [RUN_GLOB:]METRIC=VALUE`` flag.

    Parameters
    ----------
    text:
        E.g. ``"output_max_abs=1e-3"``, ``"model__img*:local_sum_pearson=0.9"``,
        ``"psnr_delta=off"``.

    Returns
    -------
    tuple
        ``(run_glob or None, metric, value or None)``.

    Raises
    ------
    UserInputError
        For a missing ``=``, an unknown metric or a value that is not a number.
    """
    where = f"--tol {text!r}"
    if "=" not in text:
        raise UserInputError(
            f"{where} is not METRIC=VALUE; e.g. --tol output_max_abs=1e-3 or "
            "--tol 'RUN_GLOB:local_sum_pearson=0.9'"
        )
    key, raw = text.rsplit("=", 1)
    glob: str | None = None
    if ":" in key:
        glob, key = key.rsplit(":", 1)
        glob = glob.strip() or None
    key = key.strip()
    if key not in METRICS:
        raise _unknown(key, where)
    return glob, key, _value(raw.strip(), key, where)


def _table(obj: Mapping[str, Any], where: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in obj.items():
        if k not in METRICS:
            raise _unknown(str(k), where)
        out[k] = _value(v, k, where)
    return out


def load_tolerance_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON tolerance file into a plain dict.

    The layout (TOML shown; JSON has the same keys)::

        top_k_percent = 10            # optional
        layer_floor = 1e-5            # optional, see docs/ci.md
        output_max_abs = 1e-3         # any metric of METRICS
        psnr_delta = "off"            # disable a check
        [runs."rcan_fp16*"]           # per-run overrides, fnmatch glob over run names
        local_sum_pearson = 0.9

    A ``[tolerances]`` table is accepted as an alternative home of the top-level metrics.

    Raises
    ------
    UserInputError
        Missing or unreadable file, syntax errors, unknown keys.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"tolerance file {str(p)!r} does not exist; pass a .toml or .json file")
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = _toml_loads(text, p)
    except RecursionError:
        raise UserInputError(
            f"tolerance file {str(p)!r} is nested too deeply to read; a tolerance file is two "
            "tables deep at most (see docs/ci.md)"
        ) from None
    except (ValueError, json.JSONDecodeError) as exc:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise UserInputError(
            f"tolerance file {str(p)!r} is not valid {kind}: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(data, dict):
        raise UserInputError(f"tolerance file {str(p)!r} must hold a table/object at the top level")
    return data


def _toml_loads(text: str, path: Path) -> Any:
    """``tomllib.loads`` (Python 3.11+), or ``tomli`` on 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UserInputError(
                f"reading the TOML file {str(path)!r} needs Python 3.11+ or `pip install tomli`; "
                "or write the tolerances as JSON"
            ) from None
    return tomllib.loads(text)


def build_tolerances(
    file: str | Path | None = None,
    flags: Iterable[str] = (),
    top_k_percent: float | None = None,
) -> Tolerances:
    """Defaults, then a tolerance file, then ``--tol`` flags (see the module docstring).

    Parameters
    ----------
    file:
        A TOML or JSON tolerance file, or ``None``.
    flags:
        ``--tol [RUN_GLOB:]METRIC=VALUE`` strings.
    top_k_percent:
        ``k`` of the top-k overlap checks (overrides the file's ``top_k_percent``).

    Returns
    -------
    Tolerances

    Raises
    ------
    UserInputError
        For unknown metrics, bad values, a bad file or ``k`` outside (0, 100].
    """
    tol = Tolerances()
    file_runs: list[tuple[str, dict[str, float | None]]] = []
    if file is not None:
        where = f"tolerance file {str(file)!r}"
        data = load_tolerance_file(file)
        top = dict(data)
        runs = top.pop("runs", {})
        k = top.pop("top_k_percent", None)
        floor = top.pop("layer_floor", None)
        nested = top.pop("tolerances", {})
        if not isinstance(nested, dict) or not isinstance(runs, dict):
            raise UserInputError(f"'tolerances' and 'runs' in {where} must be tables")
        tol.values.update(_table(nested, where))
        tol.values.update(_table(top, where))
        tol.explicit.update(nested)
        tol.explicit.update(top)
        for glob, over in runs.items():
            if not isinstance(over, dict):
                raise UserInputError(f"runs.{glob!r} in {where} must be a table of metrics")
            file_runs.append((str(glob), _table(over, f"{where} [runs.{glob!r}]")))
        if k is not None:
            tol.top_k_percent = _top_k(k, where)
        if floor is not None:
            tol.layer_floor = _floor(floor, where)
        tol.sources.append(str(file))
    flag_runs: list[tuple[str, dict[str, float | None]]] = []
    for text in flags:
        glob, name, value = parse_tol_flag(text)
        if glob is None:
            tol.values[name] = value
            tol.explicit.add(name)
        else:
            flag_runs.append((glob, {name: value}))
        tol.sources.append(f"--tol {text}")
    tol.runs = file_runs + flag_runs
    if top_k_percent is not None:
        tol.top_k_percent = _top_k(top_k_percent, "--top-k")
    return tol


def _top_k(value: Any, where: str) -> float:
    try:
        k = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"top-k percent {value!r} in {where} is not a number") from None
    if not 0 < k <= 100:
        raise UserInputError(f"top-k percent {k:g} in {where} must be in (0, 100], e.g. 10")
    return k


def _floor(value: Any, where: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"layer_floor {value!r} in {where} is not a number") from None
    if not 0 <= f < 1:
        raise UserInputError(f"layer_floor {f:g} in {where} must be in [0, 1), e.g. 1e-5")
    return f
