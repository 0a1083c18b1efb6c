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
from glam.report.views import CMAP  # one colour map for the figures and the report

__all__ = ["CMAP", "check_output_path", "write_check_report", "write_report"]

_ROI = (255, 0, 255)  # magenta: absent from cividis (blue-grey-yellow), visible on grey images
_DISPLAY = 208  # CSS width (px) of an image panel
_LARGE = 256  # CSS width (px) of a panel whose image is larger than _DISPLAY
_THUMB = 144  # CSS width (px) of an image in the comparison grid (5 columns fit 1280 px)
#: Largest side (px) of an embedded layer key: the explorer shows one layer at a time, its
#: noise-like global keys cost 30 KB each at 208 px, 11 KB at this size (JPEG 80).
_KEY_PX = 160
#: Default most layers per run in the layer explorer (``--max-keys``): 16 keeps a run of a
#: paper-size model under 1 MB of page (measured: the 5-run Set5 report of CARN-M x2).
MAX_KEYS = 16
_TEMPLATES = Path(__file__).resolve().parent / "templates"


# ------------------------------------------------------------------------------ images


def _uri(rgb: np.ndarray, *, max_px: int | None = None, quality: int = 90) -> str:
    """An ``H x W x 3`` uint8 array as a data URI: a palette PNG when it has at most 256
    colours (heat maps: the colour map's 255 levels and the ROI box; lossless, about a
    third of an RGB PNG) unless that PNG is large and a JPEG less than half its size (a
    finely textured map: the global keys), else a JPEG at quality 90 without chroma
    subsampling (photographs and maps over them: a tenth of a PNG; ``quality``). ``max_px``:
    shrink (area average) so that the longer side is at most that many pixels first."""
    from PIL import Image

    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if max_px is not None and max(a.shape[:2]) > max_px:
        f = max_px / max(a.shape[:2])
        size = (max(1, round(a.shape[1] * f)), max(1, round(a.shape[0] * f)))
        a = np.asarray(Image.fromarray(a).resize(size, Image.BOX))
    packed = (a[..., 0].astype(np.uint32) << 16) | (a[..., 1].astype(np.uint32) << 8) | a[..., 2]
    colours, idx = np.unique(packed.ravel(), return_inverse=True)
    jpeg = io.BytesIO()
    Image.fromarray(a).save(jpeg, format="JPEG", quality=quality, subsampling=0)
    best, kind = jpeg, "jpeg"
    if len(colours) <= 256:
        png = io.BytesIO()
        im = Image.fromarray(idx.reshape(a.shape[:2]).astype(np.uint8), mode="P")
        pal = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1)
        im.putpalette(pal.astype(np.uint8).ravel().tolist())
        im.save(png, format="PNG", optimize=True)
        if png.tell() <= _LOSSLESS_BYTES or png.tell() <= 2 * jpeg.tell():
            best, kind = png, "png"
    return f"data:image/{kind};base64," + base64.b64encode(best.getvalue()).decode("ascii")


#: A heat map whose palette PNG is at most this large stays lossless whatever a JPEG saves.
_LOSSLESS_BYTES = 16 * 1024


#: Colour-map levels of a heat map: 255, so that a map and its ROI box fit one PNG palette.
_LEVELS = 255


def _lut() -> np.ndarray:
    from matplotlib import colormaps

    return np.rint(colormaps[CMAP](np.linspace(0.0, 1.0, _LEVELS))[:, :3] * 255).astype(np.uint8)


def _heat(m: np.ndarray, hi: float = 1.0) -> np.ndarray:
    """A 2-D map on [0, hi] through the colour map (NaN -> 0, values clipped)."""
    a = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a / hi if hi > 0 else a * 0.0, 0.0, 1.0)
    return _lut()[np.rint(a * (_LEVELS - 1)).astype(np.intp)]


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
         hi: float = 1.0, note: str = "", display: int | None = None,
         embed: int | None = None, quality: int = 90) -> dict[str, Any]:
    """One figure of the page: title, image, pixel axes, optional colour bar. ``display``
    (CSS px of the longer side; default 208, or 256 for larger images): an image larger
    than ``embed`` (default ``display``) is embedded at that size (area average; the axes
    keep its own pixel coordinates, and the caption says so); ``quality`` of a JPEG."""
    h, w = rgb.shape[:2]
    disp = display if display is not None else (_DISPLAY if max(h, w) <= _DISPLAY else _LARGE)
    px = min(disp, embed) if embed is not None else disp
    if max(h, w) > px and disp != _THUMB:  # thumbnails say nothing: the grid stays narrow
        f = px / max(h, w)
        note = (note + "; " if note else "") + (
            f"embedded at {max(1, round(w * f))}\u00d7{max(1, round(h * f))} of {w}\u00d7{h} px")
    return {"title": title, "src": _uri(rgb, max_px=px, quality=quality), "w": w, "h": h,
            "axes": axes,
            "cbar": cbar, "hi": hi, "note": note, "display": disp,
            "pixelated": max(h, w) < disp}


def _colorbar_uri() -> str:
    """A vertical 12 x 128 colour bar (1 at the top)."""
    col = _lut()[np.linspace(_LEVELS - 1, 0, 128).astype(np.intp)]
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
    """SVG path of a 0..100 curve on a 600 x 200 plot (x = layer position); a layer without
    a value (no such map, or a key that is 0 by GLAM.md's vanishing-weights rule) is a gap,
    not a point."""
    out = []
    pen = "M"
    for i, v in enumerate(points):
        if v is None:
            pen = "M"
            continue
        x = 40 + (520 * i / max(1, n - 1))
        y = 170 - 150 * max(0.0, min(100.0, v)) / 100.0
        out.append(f"{pen}{x:.1f},{y:.1f}")
        pen = "L"
    return " ".join(out)


def _val(v: Any) -> str:
    """A value of a provenance table as a reader wants it: numbers to 3 significant
    digits, ``n/a`` for a missing one, yes/no, lists joined."""
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "n/a"
        if f == int(f) and abs(f) < 1e6:
            return str(int(f))
        return f"{f:.3g}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(_val(x) for x in v) or "none"
    text = str(v)
    return "n/a" if text in ("None", "") else text


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
    env.filters["val"] = _val
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
    out_box = _box(out, roi, win)
    local_over = _box(_overlay(base, fd.local["sum"]), roi, win)
    global_over = _overlay(base, fd.global_["sum"])
    lam_over = (_box(_overlay(base, np.clip(fd.lam_map_output, 0, 1)), roi, win)
                if fd.lam_map_output is not None else None)
    images = [_fig(f"LR input ({fd.input_rgb.shape[1]}\u00d7{fd.input_rgb.shape[0]})",
                   fd.input_rgb, axes="input"),
              _fig(f"SR output ({out.shape[1]}\u00d7{out.shape[0]}) + ROI", out_box)]
    if ref is not None:
        images.append(_fig("HR reference + ROI", _box(ref, roi, win)))
    local = [_fig(f"Local {k.capitalize()}", _box(_heat(fd.local[k]), roi, win),
                  cbar="local attribution") for k in ("consensus", "variation", "sum")]
    local.append(_fig(f"Local Sum over the {base_name} + ROI", local_over,
                      cbar="local attribution"))
    glob = [_fig(f"Global {k.capitalize()}", _heat(fd.global_[k]), cbar="global attribution")
            for k in ("consensus", "variation", "sum")]
    glob.append(_fig(f"Global Sum over the {base_name}", global_over,
                     cbar="global attribution"))
    lam: list[dict[str, Any]] = []
    if fd.lam_map_output is not None:
        lm = np.clip(fd.lam_map_output, 0.0, 1.0)
        lam = [
            _fig(f"LAM map, DI {_fmt(m.get('di_lam'))} (at input size; "
                 f"{_fmt(m.get('di_lam_output'))} at output size, as drawn)",
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
                                   cbar=f"{fam} key", display=_DISPLAY, embed=_KEY_PX,
                                   quality=80))
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
        "vanished": [{"x": 40 + 520 * pos / max(1, n - 1), "name": v.name, "index": v.index,
                      "which": " and ".join(v.vanish)}
                     for pos, v in enumerate(rr.layers) if v.vanish],
        "curve": {"di_local": _curve([v.di_local for v in rr.layers], n),
                  "di_global": _curve([v.di_global for v in rr.layers], n),
                  "af_local": _curve([None if v.af_local is None else 100 * v.af_local
                                      for v in rr.layers], n),
                  "af_global": _curve([None if v.af_global is None else 100 * v.af_global
                                       for v in rr.layers], n)},
        "provenance": prov, "meta": meta, "conventions": prov.get("conventions", {}),
        "parity": prov.get("parity", {}), "engine_parity": rd.engine_parity,
        "warnings": rd.warnings, "roi": roi, "window": win, "sanity": _sanity_view(rr.sanity),
        # the comparison grid: thumbnails, so that a row of them fits a 1280-px-wide window
        "compare": {"output": _fig("SR output + ROI", out_box, display=_THUMB),
                    "local": _fig(f"Local Sum over the {base_name}", local_over,
                                  cbar="local attribution", display=_THUMB),
                    "global": _fig(f"Global Sum over the {base_name}", global_over,
                                   cbar="global attribution", display=_THUMB),
                    "lam": _fig(f"LAM over the {base_name}", lam_over, cbar="LAM attribution",
                                display=_THUMB) if lam_over is not None else None},
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
                 runs: Sequence[str] | None = None, max_keys: int = MAX_KEYS) -> Path:
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
