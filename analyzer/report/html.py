"""``glam report`` and ``glam check --html``: one self-contained HTML page per archive or check.

The page embeds every image as a PNG data URI and about 1 KB of plain JavaScript
(the layer slider and table sorting); it loads nothing from the network and needs no
server. Templates are Jinja2 files shipped as package data (``templates/``).

Heat maps use ``cividis`` (perceptually uniform and readable with every common colour-vision
deficiency) on the fixed [0, 1] scale of GLAM.md's normalised maps, each with a colour bar;
every figure has a title and pixel axes. Images are rendered with Pillow at native
resolution and scaled up in the browser without smoothing, so one image pixel stays one
square. Per run the layer explorer shows at most ``max_keys`` layers (evenly sampled, first
and last kept, and the page says so); its DI curve covers every participating layer.

>>> from glam.report.html import write_report
>>> write_report("runs.h5", "report.html")                       # doctest: +SKIP
PosixPath('report.html')
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from glam.archive.figure_data import to_rgb_uint8
from glam.archive.hdf5 import open_archive
from glam.archive.report_data import ReportRun, read_report_run
from glam.archive.sanity import SanityRecord
from glam.archive.taps import not_participating
from glam.errors import ArchiveError, MissingDependencyError, UserInputError

__all__ = ["CMAP", "check_output_path", "write_check_report", "write_report"]

CMAP = "cividis"
"""Colour map of every heat map (perceptually uniform, colour-blind safe)."""

_ROI = (255, 0, 255)  # magenta: absent from cividis (blue-grey-yellow), visible on grey images
_DISPLAY = 208  # CSS width (px) of an image panel
_TEMPLATES = Path(__file__).resolve().parent / "templates"


# ------------------------------------------------------------------------------ images


def _uri(rgb: np.ndarray) -> str:
    """An ``H x W x 3`` uint8 array as a PNG data URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG",
                                                                     compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _lut() -> np.ndarray:
    from matplotlib import colormaps

    return np.rint(colormaps[CMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def _heat(m: np.ndarray, hi: float = 1.0) -> np.ndarray:
    """A 2-D map on [0, hi] through the colour map (NaN -> 0, values clipped)."""
    a = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a / hi if hi > 0 else a * 0.0, 0.0, 1.0)
    return _lut()[np.rint(a * 255).astype(np.intp)]


def _overlay(rgb: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The map over a grey version of ``rgb``; opacity grows with the map value."""
    f = rgb.astype(np.float64) / 255.0
    grey = (f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114)[..., None]
    u = np.clip(np.nan_to_num(np.asarray(m, dtype=np.float64)), 0.0, 1.0)
    alpha = np.clip(0.15 + 0.85 * np.sqrt(u), 0.0, 0.9)[..., None]
    out = (1.0 - alpha) * grey + alpha * (_heat(u).astype(np.float64) / 255.0)
    return np.rint(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8)


def _mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Attributed pixels in colour, the others dimmed to a dark grey."""
    f = rgb.astype(np.float64)
    grey = (f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114)[..., None]
    out = np.where(mask[..., None], f, 0.25 * grey)
    return np.rint(out).astype(np.uint8)


def _box(rgb: np.ndarray, roi: tuple[int, int], window: int) -> np.ndarray:
    """A copy of ``rgb`` with the ROI outlined (one pixel, magenta)."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    top, left = roi
    H, W = out.shape[:2]
    t, b = max(0, top - 1), min(H - 1, top + window)
    lft, r = max(0, left - 1), min(W - 1, left + window)
    out[t, lft:r + 1] = _ROI
    out[b, lft:r + 1] = _ROI
    out[t:b + 1, lft] = _ROI
    out[t:b + 1, r] = _ROI
    return out


def _fig(title: str, rgb: np.ndarray, *, axes: str = "output", cbar: str | None = None,
         hi: float = 1.0, note: str = "") -> dict[str, Any]:
    """One figure of the page: title, image, pixel axes, optional colour bar."""
    h, w = rgb.shape[:2]
    return {"title": title, "src": _uri(rgb), "w": w, "h": h, "axes": axes, "cbar": cbar,
            "hi": hi, "note": note, "display": _DISPLAY if max(h, w) <= _DISPLAY else 320,
            "pixelated": max(h, w) < _DISPLAY}


def _colorbar_uri() -> str:
    """A vertical 12 x 128 colour bar (1 at the top)."""
    col = _lut()[np.linspace(255, 0, 128).astype(np.intp)]
    return _uri(np.repeat(col[:, None, :], 12, axis=1))


# ----------------------------------------------------------------------------- numbers


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except Exception:  # noqa: BLE001 - None, text, a template's undefined value
        return None
    return None if math.isnan(f) else f


def _fmt(v: Any, spec: str = ".2f", unit: str = "") -> str:
    f = _num(v)
    if f is None:
        return "n/a"
    if math.isinf(f):
        return ("inf" if f > 0 else "-inf") + unit
    return f"{f:{spec}}{unit}"


def _pct(v: Any) -> str:
    f = _num(v)
    return "n/a" if f is None else f"{100.0 * f:.1f} %"


def _curve(points: Sequence[float | None], n: int) -> str:
    """SVG polyline points of a 0..100 curve on a 600 x 200 plot (x = layer position)."""
    out = []
    for i, v in enumerate(points):
        if v is None:
            continue
        x = 40 + (520 * i / max(1, n - 1))
        y = 170 - 150 * max(0.0, min(100.0, v)) / 100.0
        out.append(f"{x:.1f},{y:.1f}")
    return " ".join(out)


# ------------------------------------------------------------------------------- pages


def _env() -> Any:
    try:
        import jinja2
    except ImportError as exc:  # pragma: no cover - jinja2 is in the report extra
        raise MissingDependencyError("jinja2", "report") from exc
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
                             autoescape=True, undefined=jinja2.ChainableUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env


def check_output_path(path: str | Path) -> Path:
    """Validate (and create the folder of) an HTML output path before any slow work.

    Raises
    ------
    UserInputError
        When the path is a directory or its folder cannot be created or written.
    """
    p = Path(path)
    if p.is_dir():
        raise UserInputError(f"{str(p)!r} is a directory; give the path of the HTML file to write, "
                             "e.g. report.html")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create the folder of {str(p)!r}: {exc.strerror}") from exc
    if not os.access(p.parent, os.W_OK):
        raise UserInputError(f"cannot write {str(p)!r}: its folder is not writable")
    return p


def _write(html: str, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _common() -> dict[str, Any]:
    from glam.archive.hdf5 import glam_version

    return {"colorbar": _colorbar_uri(), "cmap": CMAP, "glam_version": glam_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _run_view(rr: ReportRun, slug: str) -> dict[str, Any]:
    """Everything the template shows of one run."""
    rd, fd = rr.data, rr.figure
    out = fd.output_rgb
    ref = to_rgb_uint8(rd.reference) if rd.reference is not None else None
    base = ref if ref is not None and ref.shape == out.shape else out
    base_name = "HR reference" if base is ref else "output"
    roi, win = fd.roi, fd.window
    m = fd.metrics
    images = [_fig(f"LR input ({fd.input_rgb.shape[1]}\u00d7{fd.input_rgb.shape[0]})",
                   fd.input_rgb, axes="input"),
              _fig(f"SR output ({out.shape[1]}\u00d7{out.shape[0]}) + ROI",
                   _box(out, roi, win))]
    if ref is not None:
        images.append(_fig("HR reference + ROI", _box(ref, roi, win)))
    local = [_fig(f"Local {k.capitalize()}", _box(_heat(fd.local[k]), roi, win),
                  cbar="local attribution") for k in ("consensus", "variation", "sum")]
    local.append(_fig(f"Local Sum over the {base_name} + ROI",
                      _box(_overlay(base, fd.local["sum"]), roi, win), cbar="local attribution"))
    glob = [_fig(f"Global {k.capitalize()}", _heat(fd.global_[k]), cbar="global attribution")
            for k in ("consensus", "variation", "sum")]
    glob.append(_fig(f"Global Sum over the {base_name}", _overlay(base, fd.global_["sum"]),
                     cbar="global attribution"))
    lam: list[dict[str, Any]] = []
    if fd.lam_map_output is not None:
        lm = np.clip(fd.lam_map_output, 0.0, 1.0)
        lam = [
            _fig(f"LAM map (output size), DI {_fmt(m.get('di_lam_output'))}",
                 _box(_heat(lm), roi, win), cbar="LAM attribution"),
            _fig(f"GL-AM local Sum, DI {_fmt(m.get('di_local'))}",
                 _box(_heat(fd.local["sum"]), roi, win), cbar="local attribution"),
            _fig(f"LAM attributed pixels: {_pct(m.get('attributed_fraction_lam'))}",
                 _box(_mask(base, rr.masks["lam"]), roi, win),
                 note="coloured = above the map's mean"),
            _fig(f"GL-AM attributed pixels: {_pct(m.get('attributed_fraction_local'))}",
                 _box(_mask(base, rr.masks["local"]), roi, win),
                 note="coloured = above the map's mean"),
        ]
    layers = []
    for pos, v in enumerate(rr.layers):
        if not v.sampled:
            continue
        shape = "\u00d7".join(str(s) for s in v.shape)
        panels = []
        for fam, nat in (("local", v.local_native), ("global", v.global_native)):
            if nat is not None:
                panels.append(_fig(f"#{v.index} {fam} key N(map), native {nat.shape[1]}"
                                   f"\u00d7{nat.shape[0]}", _heat(nat), axes="layer",
                                   cbar=f"{fam} key"))
        layers.append({"index": v.index, "name": v.name, "op": v.op, "shape": shape,
                       "pos": pos, "panels": panels, "view": v,
                       "x": 40 + 520 * pos / max(1, len(rr.layers) - 1)})
    n = len(rr.layers)
    prov = dict(rd.provenance)
    meta: dict[str, Any] = {}
    try:
        import json

        meta = json.loads(str(prov.get("model_metadata", "{}")))
    except ValueError:
        meta = {}
    return {
        "name": rd.name, "slug": slug, "model": fd.model_name, "attrs": rd.attrs, "metrics": m,
        "images": images, "local": local, "global": glob, "lam": lam, "layers": layers,
        "n_layers": n, "n_sampled": rr.n_sampled, "n_taps": len(rd.taps),
        "not_participating": not_participating(rd.taps),
        "curve": {"di_local": _curve([v.di_local for v in rr.layers], n),
                  "di_global": _curve([v.di_global for v in rr.layers], n),
                  "af_local": _curve([None if v.af_local is None else 100 * v.af_local
                                      for v in rr.layers], n),
                  "af_global": _curve([None if v.af_global is None else 100 * v.af_global
                                       for v in rr.layers], n)},
        "provenance": prov, "meta": meta, "conventions": prov.get("conventions", {}),
        "parity": prov.get("parity", {}), "engine_parity": rd.engine_parity,
        "warnings": rd.warnings, "roi": roi, "window": win, "sanity": _sanity_view(rr.sanity),
        "compare": {"output": images[1], "local": local[3], "global": glob[3],
                    "lam": _fig("LAM over the " + base_name,
                                _box(_overlay(base, np.clip(fd.lam_map_output, 0, 1)), roi, win),
                                cbar="LAM attribution") if fd.lam_map_output is not None else None},
    }


def _sanity_view(rec: SanityRecord | None) -> dict[str, Any] | None:
    """The ``glam sanity`` section of a run: its figure and one table row per map."""
    if rec is None:
        return None
    from glam.report.sanity_figure import LABELS, sanity_figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = sanity_figure(rec)
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, dpi=80, facecolor="white", format="png")
    fig.clear()
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    summary = rec.summary()
    rows = []
    for m in [*rec.methods, "random"]:
        row: dict[str, Any] = {"method": LABELS.get(m, m)}
        for variant, r in summary["randomization"].items():
            got = r["methods"].get(m)
            if got is None:
                continue
            for metric in ("spearman", "ssim", "topk"):
                n = got[metric]["taps_randomized"]
                row[f"{variant}_{metric}"] = "never" if n is None else f"{n}/{rec.n_taps}"
            if "blocks_below" in got:
                row["blocks_below"] = f"{got['blocks_below']}/{r['steps']}"
        f = summary["faithfulness"].get(m)
        if f is not None:
            row["deletion_auc"], row["insertion_auc"] = f["deletion_auc"], f["insertion_auc"]
        rows.append(row)
    return {"figure": uri, "rows": rows, "indicators": summary["indicators"],
            "settings": summary["settings"]}


def write_report(archive_path: str | Path, out_path: str | Path,
                 runs: Sequence[str] | None = None, max_keys: int = 64) -> Path:
    """Write the HTML report of an archive's runs (see the module docstring).

    Parameters
    ----------
    archive_path:
        A glam archive (``glam analyze``, ``glam demo``; any archive of schema version 1).
    out_path:
        The HTML file to write (its folder is created; written atomically).
    runs:
        Run names to include, in this order; default every complete run.
    max_keys:
        Most layers per run shown in the layer explorer (evenly sampled).

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ArchiveError
        Missing or invalid archive, an unknown run, or an archive without runs.
    UserInputError
        A bad output path or ``max_keys < 1``.
    """
    if max_keys < 1:
        raise UserInputError(f"max_keys must be at least 1, not {max_keys}")
    out = check_output_path(out_path)
    env = _env()
    with open_archive(archive_path) as ar:
        names = list(runs) if runs else ar.runs()
        if not names:
            raise ArchiveError(f"archive {str(archive_path)!r} has no complete runs to report")
        views = [_run_view(read_report_run(ar, n, max_keys=max_keys), f"run{i}")
                 for i, n in enumerate(names)]
    html = env.get_template("report.html.j2").render(
        archive=str(archive_path), runs=views, max_keys=max_keys,
        with_lam=any(v["compare"]["lam"] is not None for v in views), **_common())
    return _write(html, out)


def write_check_report(report: Mapping[str, Any], out_path: str | Path, *,
                       candidate_maps: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """Write the HTML page of a ``glam check`` result.

    Parameters
    ----------
    report:
        ``CheckReport.to_dict()`` (the JSON report).
    out_path:
        The HTML file to write.
    candidate_maps:
        Per run, the checked model's ``{"local": sum, "global": sum}`` maps; the baseline's
        are read from ``report["baseline_path"]``.

    Returns
    -------
    Path
        ``out_path``.
    """
    out = check_output_path(out_path)
    env = _env()
    runs = []
    with open_archive(report["baseline_path"]) as ar:
        for info in report["runs"]:
            name = info["run"]
            rd = ar.run(name)
            checks = [c for c in report["checks"] if c["run"] == name]
            maps = []
            cand = candidate_maps.get(name, {})
            for fam, base in (("local", rd.local["sum"]), ("global", rd.global_["sum"])):
                new = cand.get(fam)
                row = [_fig(f"Baseline {fam} Sum", _heat(base), cbar=f"{fam} attribution")]
                if new is not None and np.shape(new) == base.shape:
                    diff = np.abs(np.asarray(new, dtype=np.float64) - base)
                    hi = float(diff.max()) or 1.0
                    row += [_fig(f"Candidate {fam} Sum", _heat(new), cbar=f"{fam} attribution"),
                            _fig(f"|candidate \u2212 baseline|, max {hi:.2e}", _heat(diff, hi),
                                 cbar="absolute difference", hi=hi)]
                maps.append({"family": fam, "figs": row})
            runs.append({"name": name, "info": info, "checks": checks, "maps": maps,
                         "failed": sum(c["status"] == "failed" for c in checks)})
    html = env.get_template("check.html.j2").render(report=report, runs=runs, **_common())
    return _write(html, out)
