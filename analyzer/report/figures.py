"""Figures of GL-AM runs: the paper's Fig. 3 (local), Fig. 4 (global), Fig. 5 (vs. LAM).

Every function takes :class:`~glam.archive.figure_data.FigureData` (plain numpy, never a model)
and writes one figure (PNG, PDF or SVG from the file's suffix). Figures are built with :class:`matplotlib.figure.Figure` and rendered
by :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg` directly, so nothing here
touches pyplot's global state: no backend switch, no windows, no figure registry, and it
is safe to call from several threads. Each figure's images and axes are dropped after saving, so calling these
in a loop does not grow memory.

Heat maps use :data:`glam.report.views.CMAP` (``cividis``, the HTML report's colour map too)
on a fixed [0, 1] scale (the maps of GLAM.md are normalised to [0, 1]); overlays draw the map over a grey version of the
output image with a per-pixel opacity that grows with the map, so unattributed pixels stay
visible as image. Small images (up to 256 pixels a side) are drawn with nearest
interpolation so that pixels stay crisp. A :class:`~glam.report.views.Display` (gamma or
log) changes only how values map to colour; the colour bar keeps reading the map's values.
Small ROIs get a zoomed inset (:func:`~glam.report.views.context_box`), and
:func:`attributed_figure` draws the paper's thresholded view (pixels above the mean).

>>> from glam.report.figures import write_all, compare_figure, compare_table   # doctest: +SKIP
>>> write_all(data, Path("out/run1"))                                       # doctest: +SKIP
>>> compare_figure([carn, rrdb, san, rnan, rcan], Path("out/compare.png"))  # doctest: +SKIP
>>> print(compare_table([carn, rrdb, san, rnan, rcan]))                     # doctest: +SKIP

One module on purpose (over 600 lines): one function per figure of the paper (Fig. 3/4/5
layouts, per-layer grids) over shared layout, colour-bar and ROI-box helpers.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from glam.archive.figure_data import FigureData, LayerKey, sample_indices
from glam.errors import UserInputError
from glam.report.views import (
    CMAP,
    FIGURE_FORMATS,
    Display,
    attributed_mask,
    context_box,
    layer_sample_text,
    speed_text,
    write_native_overlays,
    zoom,
    zoom_factor,
)
from matplotlib import colormaps
from matplotlib import patheffects as pe
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "DPI",
    "MAX_LAYER_PANELS",
    "attributed_figure",
    "compare_figure",
    "compare_table",
    "global_figure",
    "lam_figure",
    "layers_figure",
    "local_figure",
    "write_all",
]

DPI = 120
"""Resolution of every PNG written here (dots per inch)."""

MAX_LAYER_PANELS = 24
"""Most per-layer keys :func:`layers_figure` draws; longer lists are evenly sampled."""

_CMAP = CMAP
_ROI_COLOUR = "#00e5ff"  # cyan: absent from cividis, visible on grey images and on heat maps
_NEAREST_UP_TO = 256  # image side (pixels) up to which pixels are drawn as crisp squares
_NAME_CHARS = 22  # layer names longer than this are shortened in small-multiple titles
_VANISH_COLOUR = "#ff4fa3"  # frame of a layer whose key is 0 by the vanishing-weights rule
_LINEAR = Display()


# --------------------------------------------------------------------------- formatting


def _metric(data: FigureData, key: str) -> float | None:
    """``data.metrics[key]`` as float, or ``None`` when absent or not a number."""
    v = data.metrics.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _fmt(v: float | None, spec: str = ".2f", unit: str = "") -> str:
    """Format a metric; ``"n/a"`` when missing, ``"inf"`` for an infinite PSNR."""
    if v is None or math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return ("inf" if v > 0 else "-inf") + unit
    return f"{v:{spec}}{unit}"


def _pct(v: float | None) -> str:
    """A fraction in [0, 1] as a percentage (``"n/a"`` when missing)."""
    return "n/a" if v is None else _fmt(100.0 * v, ".1f", "%")


def _label(data: FigureData) -> str:
    """``model (run)`` when both are known and differ, else whichever is known."""
    model, name = data.model_name.strip(), data.name.strip()
    if model and name and model != name:
        return f"{model} ({name})"
    return model or name or "run"


def _row_label(data: FigureData) -> str:
    """Model name over run name (each shortened), or whichever is known."""
    model, name = data.model_name.strip(), data.name.strip()
    if model and name and model != name:
        return f"{_short(model, 18)}\n{_short(name, 18)}"
    return _short(model or name or "run", 18)


def _short(name: str, limit: int = _NAME_CHARS) -> str:
    """A layer name shortened from the left to at most ``limit`` characters."""
    return name if len(name) <= limit else "\u2026" + name[-(limit - 1) :]


def _wrap(text: str, fig_width_in: float, points: float) -> str:
    """Wrap each line of ``text`` so it fits a figure ``fig_width_in`` inches wide."""
    chars = max(30, int(fig_width_in * 72.0 / (0.55 * points)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


# ------------------------------------------------------------------------------ drawing


def _image(a: np.ndarray) -> np.ndarray:
    """An ``H x W x 3`` uint8 image (grey ``H x W`` or ``H x W x 1`` is repeated)."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise UserInputError(f"expected an H x W x 3 image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    a = a[..., :3]
    if a.dtype != np.uint8:
        f = a.astype(np.float64)
        if f.size and f.max() <= 1.0:
            f = f * 255.0
        a = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return a


def _unit(m: np.ndarray) -> np.ndarray:
    """A 2-D map in [0, 1] for display: kept when already there, clipped when it only
    undershoots 0 slightly (bicubic ringing), else min-max scaled; NaN -> 0."""
    a = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.squeeze(a)
    if a.ndim == 3:  # C x H x W or H x W x C: combine channels
        a = np.abs(a).sum(axis=0 if a.shape[0] < a.shape[-1] else -1)
    if a.ndim != 2:
        raise UserInputError(f"expected a 2-D attribution map, got shape {np.shape(m)}")
    if a.size and a.min() < 0.0 and a.max() <= 1.0 and a.min() > -0.5:
        # a [0, 1] map with a small bicubic undershoot (LAM's map at output size): clip, so
        # the background stays black instead of being lifted by a min-max rescale
        return np.clip(a, 0.0, 1.0)
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601) of an ``H x W x 3`` uint8 image, in [0, 1]."""
    f = rgb.astype(np.float64) / 255.0
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def _interp(shape: tuple[int, ...]) -> str:
    """``nearest`` for small images (crisp pixels), ``antialiased`` for large ones."""
    return "nearest" if max(shape[:2]) <= _NEAREST_UP_TO else "antialiased"


def _overlay_rgba(rgb: np.ndarray, m: np.ndarray, display: Display = _LINEAR) -> np.ndarray:
    """Heat map ``m`` (inferno) over the grey image, opacity growing with the map value."""
    g = _grey(rgb)
    m = display.apply(m)
    if g.shape != m.shape:  # should not happen with FigureData; fall back to the map alone
        return colormaps[_CMAP](m)
    heat = colormaps[_CMAP](m)[..., :3]
    alpha = np.clip(0.15 + 0.85 * np.sqrt(m), 0.0, 0.9)[..., None]
    out = (1.0 - alpha) * g[..., None] + alpha * heat
    return np.clip(out, 0.0, 1.0)


def _plain(ax: Axes) -> None:
    """No ticks or tick labels; keep the axes frame (spines).

    Hiding the axis objects (rather than only emptying their ticks) also spares the layout
    engine measuring them, which is most of the drawing time of these figures.
    """
    ax.xaxis.set_visible(False)
    ax.yaxis.set_visible(False)


def _roi_box(ax: Axes, data: FigureData) -> None:
    """The ROI ``window x window`` at ``(top, left)``, cyan with a thin dark outline."""
    top, left = data.roi
    rect = Rectangle(
        (left - 0.5, top - 0.5),
        data.window,
        data.window,
        fill=False,
        edgecolor=_ROI_COLOUR,
        linewidth=1.6,
    )
    rect.set_path_effects([pe.Stroke(linewidth=3.0, foreground="black"), pe.Normal()])
    ax.add_patch(rect)


def _show_image(ax: Axes, rgb: np.ndarray, title: str, data: FigureData | None = None) -> None:
    ax.imshow(rgb, interpolation=_interp(rgb.shape))
    if data is not None:
        _roi_box(ax, data)
    ax.set_title(title)
    _plain(ax)


def _show_heat(
    ax: Axes,
    m: np.ndarray,
    title: str,
    data: FigureData | None = None,
    display: Display = _LINEAR,
) -> ScalarMappable:
    u = _unit(m)
    im = ax.imshow(
        display.apply(u), cmap=_CMAP, vmin=0.0, vmax=1.0, interpolation=_interp(u.shape)
    )
    if data is not None:
        _roi_box(ax, data)
    ax.set_title(title)
    _plain(ax)
    return im


def _show_overlay(
    ax: Axes,
    rgb: np.ndarray,
    m: np.ndarray,
    title: str,
    data: FigureData | None = None,
    display: Display = _LINEAR,
) -> None:
    u = _unit(m)
    ax.imshow(_overlay_rgba(rgb, u, display), interpolation=_interp(u.shape))
    if data is not None:
        _roi_box(ax, data)
    ax.set_title(title)
    _plain(ax)


def _show_zoom(
    ax: Axes,
    rgb: np.ndarray,
    m: np.ndarray | None,
    title: str,
    data: FigureData,
    display: Display = _LINEAR,
) -> tuple[int, int, int, int]:
    """The ROI inset: a context crop around the ROI, upsampled by an integer factor
    (nearest), with the ROI box drawn on the pixels just outside the ROI so that no ROI
    pixel is covered. ``m`` is overlaid on the image when given. Returns the crop box."""
    box = context_box(rgb.shape, data.roi, data.window)
    k = zoom_factor(box)
    if m is None:
        shown = rgb
    else:
        shown = np.rint(_overlay_rgba(rgb, _unit(m), display) * 255.0).astype(np.uint8)
    ax.imshow(zoom(shown, box, k), interpolation="nearest")
    t0, l0 = box[0], box[1]
    top, left = data.roi
    # pixel (r, c) of the crop covers [c*k - 0.5, (c+1)*k - 0.5) once upsampled; the box
    # line (width lw data pixels) is centred lw/2 + 0.5 px outside the ROI's edge
    lw = max(1.0, k / 3.0)
    margin = lw / 2.0 + 0.5
    x0 = (left - l0) * k - 0.5 - margin
    y0 = (top - t0) * k - 0.5 - margin
    side = data.window * k + 2.0 * margin
    rect = Rectangle((x0, y0), side, side, fill=False, edgecolor=_ROI_COLOUR, linewidth=1.4)
    rect.set_gid("roi-outside")
    ax.add_patch(rect)
    ax.set_title(title)
    _plain(ax)
    return box


def _colorbar(
    fig: Figure,
    axes: Sequence[Axes],
    label: str = "attribution",
    display: Display = _LINEAR,
) -> None:
    """One shared inferno colorbar for ``axes`` (all heat maps share the [0, 1] scale;
    with a gamma or log display the ticks still read the map's own values)."""
    sm = ScalarMappable(norm=display.norm() if display.scale != "linear" else Normalize(0.0, 1.0),
                        cmap=_CMAP)
    cb = fig.colorbar(sm, ax=list(axes), shrink=0.8, aspect=25, pad=0.02)
    cb.set_label(display.label(label))
    cb.ax.tick_params(labelsize=8)


# ------------------------------------------------------------------------------- layout


def _panel_size(shape: tuple[int, ...], base: float = 2.4, cap: float = 3.5) -> tuple[float, float]:
    """Width and height (inches) of one image panel: ``base`` for small images, up to ``cap``."""
    h, w = int(shape[0]), int(shape[1])
    side = min(cap, max(base, max(h, w) / DPI))
    return side * w / max(h, w), side * h / max(h, w)


def _new_figure(width_in: float, height_in: float) -> Figure:
    """A compressed constrained-layout figure (image grids), not registered with pyplot."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="compressed")
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, wspace=0.02, hspace=0.04)
    return fig


def _suptitle(fig: Figure, text: str, points: float = 11.0) -> None:
    fig.suptitle(_wrap(text, fig.get_figwidth(), points), fontsize=points)


def _save(fig: Figure, path: Path) -> Path:
    """Render with Agg, write the file (PNG, PDF or SVG from its suffix), free the figure's
    artists; return the path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in FIGURE_FORMATS:
        raise UserInputError(
            f"figure file {str(path)!r} has format {fmt!r}; use one of {', '.join(FIGURE_FORMATS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    try:
        fig.savefig(
            path,
            dpi=DPI,
            facecolor="white",
            format=fmt,
            bbox_inches="tight",
            pad_inches=0.08,
            **({"pil_kwargs": {"compress_level": 3}} if fmt == "png" else {}),
        )
    finally:
        _release(fig)
    return path


def _release(fig: Figure) -> None:
    """Drop the figure's image data and axes now (cheaper than ``Figure.clear``).

    The figure is never registered with pyplot, so once the caller's reference goes it is
    garbage; removing the images first frees their (possibly large) arrays right away
    instead of at the next cyclic garbage collection.
    """
    for ax in tuple(fig.axes):
        for im in tuple(ax.images):
            im.remove()
        fig.delaxes(ax)


def _header(data: FigureData) -> str:
    top, left = data.roi
    return f"{_label(data)} \u2014 ROI ({top}, {left}), {data.window}\u00d7{data.window}"


# ------------------------------------------------------------------------------ figures


def local_figure(data: FigureData, path: Path, display: Display = _LINEAR) -> Path:
    """Local GL-AM of one run, as one row of the paper's Fig. 3.

    Panels, left to right: the SR output with the ROI box; the local Consensus, Variation
    and Sum as ``inferno`` heat maps (ROI box drawn on each); the Sum overlaid on the
    output ("the local attribution map is displayed by overlaying the Sum on the
    high-resolution image", Fig. 3); the ROI zoom (the Sum over the output in a crop of
    two windows around the ROI, upsampled, the box drawn outside the ROI's pixels). The
    title gives the diffusion index of the Sum (``metrics["di_local"]``), its attributed
    fraction and the ROI PSNR (``metrics["psnr_roi"]``, ``n/a`` without a reference).

    Parameters
    ----------
    data:
        The run to draw.
    path:
        Where to write the figure (``.png``, ``.pdf`` or ``.svg``; parent folders are
        created).
    display:
        Display scale of the maps (linear, gamma or log).

    Returns
    -------
    Path
        ``path``.
    """
    caption = (
        f"Local GL-AM: {_header(data)}\n"
        f"DI {_fmt(_metric(data, 'di_local'))}  \u00b7  "
        f"attributed {_pct(_metric(data, 'attributed_fraction_local'))}  \u00b7  "
        f"ROI PSNR {_fmt(_metric(data, 'psnr_roi'), '.2f', ' dB')}"
    )
    return _maps_figure(data, path, data.local, "local", caption, roi=True, display=display)


def global_figure(data: FigureData, path: Path, display: Display = _LINEAR) -> Path:
    """Global GL-AM of one run, as one panel of the paper's Fig. 4 plus its parts.

    Panels, left to right: the SR output; the global Consensus, Variation and Sum as
    ``inferno`` heat maps; the global Sum overlaid on the output (the form of Fig. 4). The
    title gives the diffusion index of the global Sum (``metrics["di_global"]``), its
    attributed fraction and the whole-image PSNR / MSE when a reference was given (the
    statistics of Table I).

    Parameters
    ----------
    data:
        The run to draw.
    path:
        Where to write the figure (``.png``, ``.pdf`` or ``.svg``).
    display:
        Display scale of the maps.

    Returns
    -------
    Path
        ``path``.
    """
    caption = (
        f"Global GL-AM: {_label(data)}\n"
        f"DI {_fmt(_metric(data, 'di_global'))}  \u00b7  "
        f"attributed {_pct(_metric(data, 'attributed_fraction_global'))}  \u00b7  "
        f"PSNR {_fmt(_metric(data, 'psnr'), '.2f', ' dB')}  \u00b7  "
        f"MSE {_fmt(_metric(data, 'mse'), '.4f')}"
    )
    return _maps_figure(data, path, data.global_, "global", caption, roi=False, display=display)


def _maps_figure(
    data: FigureData,
    path: Path,
    maps: dict[str, np.ndarray],
    kind: str,
    caption: str,
    *,
    roi: bool,
    display: Display = _LINEAR,
) -> Path:
    """Output, Consensus, Variation, Sum and the Sum overlaid (Fig. 3/4 layout); with
    ``roi`` also the zoomed ROI inset."""
    rgb = _image(data.output_rgb)
    pw, ph = _panel_size(rgb.shape)
    n = 6 if roi else 5
    fig = _new_figure(n * pw + 0.9, ph + 1.0)
    axes = fig.subplots(1, n)
    boxed = data if roi else None
    _show_image(axes[0], rgb, "Output + ROI" if roi else "Output", boxed)
    _show_heat(axes[1], maps["consensus"], "Consensus", boxed, display)
    _show_heat(axes[2], maps["variation"], "Variation", boxed, display)
    _show_heat(axes[3], maps["sum"], "Sum", boxed, display)
    _show_overlay(axes[4], rgb, maps["sum"], "Sum over output", boxed, display)
    if roi:
        _show_zoom(axes[5], rgb, maps["sum"], "ROI zoom: Sum", data, display)
    _colorbar(fig, axes[1:], f"{kind} attribution", display)
    _suptitle(fig, caption)
    return _save(fig, path)


def lam_figure(data: FigureData, path: Path, display: Display = _LINEAR) -> Path:
    """LAM beside the local GL-AM Sum for the same ROI (the paper's Fig. 5).

    Top row: the output with the ROI box, LAM's map (resized to output size,
    ``data.lam_map_output``) and the local GL-AM Sum as heat maps, and the ROI zoom of the
    output. Bottom row: the costs and metrics as text, both maps overlaid on the output,
    and the ROI zoom of both maps side by side (LAM left, GL-AM right), so that a map that
    sits under a small ROI box stays readable. The LAM headline gives ``di_lam`` (LAM's
    diffusion index at input size, the number LAM papers report) and
    ``attributed_fraction_lam``; GL-AM's gives ``di_local`` / ``attributed_fraction_local``.
    The timing line says which method was faster and by how much
    (:func:`~glam.report.views.speed_text`).

    Parameters
    ----------
    data:
        The run to draw; must carry a LAM map.
    path:
        Where to write the figure (``.png``, ``.pdf`` or ``.svg``).
    display:
        Display scale of the maps.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    UserInputError
        When ``data.lam_map_output`` is ``None`` (the run was analysed without LAM).
    """
    if data.lam_map_output is None:
        raise UserInputError(
            f"run {data.name!r} has no LAM map; analyse it with LAM enabled to draw lam.png"
        )
    rgb = _image(data.output_rgb)
    pw, ph = _panel_size(rgb.shape)
    fig = _new_figure(4 * pw + 0.9, 2 * ph + 1.5)
    axes = fig.subplots(2, 4)
    di_lam, af_lam = _metric(data, "di_lam"), _metric(data, "attributed_fraction_lam")
    di_lam_out = _metric(data, "di_lam_output")
    di_gl, af_gl = _metric(data, "di_local"), _metric(data, "attributed_fraction_local")
    lam_t = f"LAM\nDI {_fmt(di_lam)} \u00b7 attr. {_pct(af_lam)}"
    gl_t = f"GL-AM local Sum\nDI {_fmt(di_gl)} \u00b7 attr. {_pct(af_gl)}"
    _show_image(axes[0, 0], rgb, "Output + ROI", data)
    _show_heat(axes[0, 1], data.lam_map_output, lam_t, data, display)
    _show_heat(axes[0, 2], data.local["sum"], gl_t, data, display)
    _show_zoom(axes[0, 3], rgb, None, "ROI zoom: output", data)
    _show_overlay(axes[1, 1], rgb, data.lam_map_output, "LAM over output", data, display)
    _show_overlay(axes[1, 2], rgb, data.local["sum"], "GL-AM over output", data, display)
    _show_zoom_pair(axes[1, 3], rgb, data.lam_map_output, data.local["sum"], data, display)
    _colorbar(fig, [*axes[:, 1:3].ravel(), axes[1, 3]], "attribution", display)

    info = axes[1, 0]
    info.axis("off")
    lines = [
        f"LAM DI (input size): {_fmt(di_lam)}",
        f"LAM DI (output size): {_fmt(di_lam_out)}",
        f"GL-AM DI (local): {_fmt(di_gl)}",
        f"LAM attributed: {_pct(af_lam)}",
        f"GL-AM attributed: {_pct(af_gl)}",
    ]
    s_lam, s_gl = _metric(data, "seconds_lam"), _metric(data, "seconds_glam")
    if s_lam is not None and s_gl is not None:
        lines.append(f"time LAM {_fmt(s_lam, '.2f', ' s')}, GL-AM {_fmt(s_gl, '.2f', ' s')}")
        lines.append(speed_text(s_gl, s_lam))
    info.text(
        0.02,
        0.95,
        "\n".join(lines),
        va="top",
        ha="left",
        fontsize=8.5,
        family="monospace",
        transform=info.transAxes,
    )
    _suptitle(fig, f"LAM vs GL-AM: {_header(data)}")
    return _save(fig, path)


def _show_zoom_pair(
    ax: Axes,
    rgb: np.ndarray,
    left_map: np.ndarray,
    right_map: np.ndarray,
    data: FigureData,
    display: Display,
) -> None:
    """Two ROI zooms in one panel (LAM | GL-AM), split by a white gap."""
    box = context_box(rgb.shape, data.roi, data.window)
    k = max(1, zoom_factor(box) // 2)
    a = zoom(np.rint(_overlay_rgba(rgb, _unit(left_map), display) * 255).astype(np.uint8), box, k)
    b = zoom(np.rint(_overlay_rgba(rgb, _unit(right_map), display) * 255).astype(np.uint8), box, k)
    gap = np.full((a.shape[0], max(2, k), 3), 255, dtype=np.uint8)
    ax.imshow(np.concatenate([a, gap, b], axis=1), interpolation="nearest")
    top, left = data.roi
    lw = max(1.0, k / 3.0)
    margin = lw / 2.0 + 0.5
    side = data.window * k + 2.0 * margin
    for x_off in (0, a.shape[1] + gap.shape[1]):
        x0 = x_off + (left - box[1]) * k - 0.5 - margin
        y0 = (top - box[0]) * k - 0.5 - margin
        rect = Rectangle((x0, y0), side, side, fill=False, edgecolor=_ROI_COLOUR, linewidth=1.2)
        rect.set_gid("roi-outside")
        ax.add_patch(rect)
    ax.set_title("ROI zoom: LAM | GL-AM")
    _plain(ax)


def attributed_figure(data: FigureData, path: Path) -> Path:
    """The paper's thresholded view (Fig. 5): the pixels whose attribution is above the
    map's mean, for the local GL-AM Sum, the global Sum and LAM when present.

    Each panel shows the grey output with the attributed pixels in colour and the rest
    dimmed; titles give the attributed fraction (the share of coloured pixels, the
    ``attributed_fraction_*`` metrics). The threshold does not depend on the display scale.

    Parameters
    ----------
    data:
        The run to draw.
    path:
        Where to write the figure (``.png``, ``.pdf`` or ``.svg``).

    Returns
    -------
    Path
        ``path``.
    """
    rgb = _image(data.output_rgb)
    panels: list[tuple[str, np.ndarray, bool]] = [
        ("local GL-AM (Sum)", data.local["sum"], True),
        ("global GL-AM (Sum)", data.global_["sum"], False),
    ]
    if data.lam_map_output is not None:
        panels.append(("LAM", data.lam_map_output, True))
    pw, ph = _panel_size(rgb.shape)
    fig = _new_figure(len(panels) * pw + 0.4, ph + 1.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    g = _grey(rgb)
    colour = np.array([1.0, 0.78, 0.0])  # amber: distinct from the cyan ROI box
    for ax, (title, m, boxed) in zip(axes, panels, strict=True):
        mask = attributed_mask(_unit(m))
        shown = np.repeat((0.35 * g)[..., None], 3, axis=2)
        shown[mask] = 0.35 * g[mask][:, None] + 0.65 * colour
        ax.imshow(np.clip(shown, 0.0, 1.0), interpolation=_interp(rgb.shape))
        if boxed:
            _roi_box(ax, data)
        ax.set_title(f"{title}\n{_pct(float(mask.mean()) if mask.size else None)} attributed")
        _plain(ax)
    _suptitle(fig, f"Attributed pixels (above the map's mean): {_header(data)}", points=10.5)
    return _save(fig, path)


def layers_figure(
    data: FigureData,
    path: Path,
    which: Literal["local", "global"] = "local",
    display: Display = _LINEAR,
) -> Path:
    """Small multiples of the per-layer keys that GL-AM accumulates (Fig. 3/4 inputs).

    One ``inferno`` panel per key of ``data.local_keys`` or ``data.global_keys`` in
    execution order, titled with the tap index and the (shortened) layer name; local keys
    carry the ROI box. Lists longer than :data:`MAX_LAYER_PANELS` are evenly sampled with
    :func:`~glam.archive.figure_data.sample_indices` (first and last layer kept). The
    title says which layers are shown out of how many participating ones ("16 of 45: #0,
    #3, ..."; the total is ``data.local_total`` / ``data.global_total``). A layer whose key
    is zero by GLAM.md's vanishing-weights rule (``LayerKey.vanished``) gets a pink frame
    and "A = 0 (weights vanish)" under its name.

    Parameters
    ----------
    data:
        The run to draw.
    path:
        Where to write the figure (``.png``, ``.pdf`` or ``.svg``).
    which:
        ``"local"`` or ``"global"`` keys.
    display:
        Display scale of the keys.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    UserInputError
        When ``which`` is neither ``"local"`` nor ``"global"``, or the run has no such keys.
    """
    if which not in ("local", "global"):
        raise UserInputError(f"which must be 'local' or 'global', not {which!r}")
    keys: list[LayerKey] = list(data.local_keys if which == "local" else data.global_keys)
    if not keys:
        raise UserInputError(f"run {data.name!r} has no per-layer {which} keys to draw")
    total = max(len(keys), data.local_total if which == "local" else data.global_total)
    keys = [keys[i] for i in sample_indices(len(keys), MAX_LAYER_PANELS)]
    n = len(keys)
    ncols = n if n <= 6 else min(6, math.ceil(math.sqrt(n * 1.5)))
    nrows = math.ceil(n / ncols)
    pw, ph = _panel_size(np.shape(keys[0].key), base=1.7, cap=2.2)
    fig = _new_figure(max(4.5, ncols * pw + 0.9), nrows * (ph + 0.35) + 0.8)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    roi_data = data if which == "local" else None
    for ax, k in zip(axes, keys, strict=False):
        title = f"#{k.index} {_short(k.name)}"
        if k.vanished:
            title += "\nA = 0 (weights vanish)"
        _show_heat(ax, k.key, title, roi_data, display)
        ax.title.set_fontsize(7.5)
        if k.vanished:
            for sp in ax.spines.values():
                sp.set_edgecolor(_VANISH_COLOUR)
                sp.set_linewidth(2.5)
    for ax in axes[n:]:
        ax.axis("off")
    _colorbar(fig, axes[:n], f"{which} key", display)
    shown = layer_sample_text([k.index for k in keys], total)
    if n < total:
        shown = "evenly sampled, " + shown
    n_vanish = sum(k.vanished for k in keys)
    if n_vanish:
        shown += f"; {n_vanish} shown with A = 0 by GLAM.md's vanishing-weights rule (pink frame)"
    _suptitle(fig, f"Per-layer {which} keys: {_label(data)} ({shown})", points=10.5)
    return _save(fig, path)


def compare_figure(runs: Sequence[FigureData], path: Path, display: Display = _LINEAR) -> Path:
    """Runs side by side, one row per run, like the paper's Fig. 3 and Fig. 4.

    Columns: the output with the ROI box (titled with PSNR / ROI PSNR), the local Sum over
    the output (DI local), the global Sum over the output (DI global) and, when every run
    has one, LAM's map over the output (DI LAM, ``di_lam``: at input size, as LAM papers
    report it). Rows are labelled with the model name and run name, e.g. five models on
    the same image.

    Parameters
    ----------
    runs:
        The runs to compare (at least one).
    path:
        Where to write the figure (``.png``, ``.pdf`` or ``.svg``).
    display:
        Display scale of the maps.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    UserInputError
        When ``runs`` is empty.
    """
    runs = list(runs)
    if not runs:
        raise UserInputError("compare_figure needs at least one run")
    with_lam = all(r.lam_map_output is not None for r in runs)
    ncols = 4 if with_lam else 3
    sizes = [_panel_size(_image(r.output_rgb).shape, base=2.2, cap=3.0) for r in runs]
    pw = max(s[0] for s in sizes)
    ph = max(s[1] for s in sizes)
    fig = _new_figure(ncols * pw + 1.4, len(runs) * (ph + 0.5) + 0.7)
    axes = fig.subplots(len(runs), ncols, squeeze=False)
    for row, r in zip(axes, runs, strict=True):
        rgb = _image(r.output_rgb)
        _show_image(
            row[0],
            rgb,
            f"PSNR {_fmt(_metric(r, 'psnr'))} \u00b7 ROI {_fmt(_metric(r, 'psnr_roi'))}",
            r,
        )
        _show_overlay(row[1], rgb, r.local["sum"], f"local DI {_fmt(_metric(r, 'di_local'))}", r,
                      display)
        _show_overlay(row[2], rgb, r.global_["sum"], f"global DI {_fmt(_metric(r, 'di_global'))}",
                      None, display)
        if with_lam and r.lam_map_output is not None:
            _show_overlay(
                row[3], rgb, r.lam_map_output, f"LAM DI {_fmt(_metric(r, 'di_lam'))}", r, display
            )
        row[0].yaxis.set_visible(True)
        row[0].set_yticks([])
        row[0].set_ylabel(_row_label(r), fontsize=10, fontweight="bold")
        for ax in row:
            ax.title.set_fontsize(9)
    _colorbar(fig, axes.ravel(), "attribution", display)
    cols = "output + ROI | local Sum | global Sum" + (" | LAM" if with_lam else "")
    _suptitle(fig, f"GL-AM comparison of {len(runs)} run(s): {cols}", points=10.5)
    return _save(fig, path)


def write_all(
    data: FigureData,
    directory: Path,
    *,
    figure_format: str = "png",
    display: Display = _LINEAR,
    overlays: bool = True,
) -> list[Path]:
    """Write every figure of one run into ``directory`` (created when missing).

    Files (``EXT`` = ``figure_format``): ``local.EXT`` (Fig. 3 row with the ROI zoom),
    ``global.EXT`` (Fig. 4), ``attributed.EXT`` (the pixels above the mean, Fig. 5),
    ``layers_local.EXT`` and ``layers_global.EXT`` when the run has per-layer keys,
    ``lam.EXT`` (Fig. 5) when it has a LAM map, and with ``overlays`` the standalone
    overlays at the output's native resolution (one image pixel per output pixel, always
    PNG): ``overlays/local_sum.png``, ``overlays/global_sum.png`` and
    ``overlays/lam.png``.

    Parameters
    ----------
    data:
        The run to draw.
    directory:
        Output folder.
    figure_format:
        ``"png"``, ``"pdf"`` or ``"svg"``.
    display:
        Display scale of every map (linear, gamma, log).
    overlays:
        Also write the native-resolution overlays.

    Returns
    -------
    list of Path
        The files written, in the order above.

    Raises
    ------
    UserInputError
        For a format other than png, pdf or svg.
    """
    fmt = str(figure_format).lower()
    if fmt not in FIGURE_FORMATS:
        raise UserInputError(
            f"figure format {figure_format!r} is not supported; use one of {', '.join(FIGURE_FORMATS)}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [
        local_figure(data, directory / f"local.{fmt}", display),
        global_figure(data, directory / f"global.{fmt}", display),
        attributed_figure(data, directory / f"attributed.{fmt}"),
    ]
    if data.local_keys:
        paths.append(layers_figure(data, directory / f"layers_local.{fmt}", "local", display))
    if data.global_keys:
        paths.append(layers_figure(data, directory / f"layers_global.{fmt}", "global", display))
    if data.lam_map_output is not None:
        paths.append(lam_figure(data, directory / f"lam.{fmt}", display))
    if overlays:
        maps = {"local_sum": _unit(data.local["sum"]), "global_sum": _unit(data.global_["sum"])}
        if data.lam_map_output is not None:
            maps["lam"] = _unit(data.lam_map_output)
        paths.extend(write_native_overlays(_image(data.output_rgb), maps, directory / "overlays",
                                           display))
    return paths


def compare_table(runs: Sequence[FigureData]) -> str:
    """A plain-text table of the runs' statistics, like the paper's Table I.

    One row per run: run name, model, PSNR, Y-PSNR (the SR papers' number) and MSE of the
    whole output, ROI PSNR, DI of the local and global Sum, their attributed fractions and,
    when any run has LAM, the DI of LAM's map at input size (``di_lam``, as LAM papers
    report it) and at output size (``di_lam_output``, on the same pixel grid as GL-AM's
    DI). DI has two decimals, as in every glam command.
    Missing values read ``n/a``.

    Parameters
    ----------
    runs:
        The runs to tabulate.

    Returns
    -------
    str
        The table: a header line, a rule, one line per run (no trailing newline).
    """
    runs = list(runs)
    with_lam = any(
        r.lam_map_output is not None or _metric(r, "di_lam_output") is not None for r in runs
    )
    header = [
        "run",
        "model",
        "PSNR",
        "Y-PSNR",
        "MSE",
        "PSNR ROI",
        "DI local",
        "DI global",
        "attr local",
        "attr global",
    ]
    if with_lam:
        header.extend(["DI LAM", "DI LAM (output size)"])
    rows: list[list[str]] = []
    for r in runs:
        row = [
            r.name or "-",
            r.model_name or "-",
            _fmt(_metric(r, "psnr")),
            _fmt(_metric(r, "psnr_y")),
            _fmt(_metric(r, "mse"), ".4f"),
            _fmt(_metric(r, "psnr_roi")),
            _fmt(_metric(r, "di_local"), ".2f"),
            _fmt(_metric(r, "di_global"), ".2f"),
            _pct(_metric(r, "attributed_fraction_local")),
            _pct(_metric(r, "attributed_fraction_global")),
        ]
        if with_lam:
            row.append(_fmt(_metric(r, "di_lam"), ".2f"))
            row.append(_fmt(_metric(r, "di_lam_output"), ".2f"))
        rows.append(row)
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        out = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
