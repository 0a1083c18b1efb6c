"""Views that make small-ROI figures readable: display scaling, the ROI zoom, the paper's
attributed-pixel masks, honest speed wording and per-layer sample captions.

Plain numpy and matplotlib's colour normalisations (imported only when drawing, so that
checking options stays cheap); used by :mod:`glam.report.figures` and the standalone
overlays. Nothing here changes a map's values, only how they are drawn.

>>> speed_text(0.5, 12.0)
'GL-AM is 24.0\u00d7 faster than LAM'
>>> speed_text(2.0, 0.8)
'LAM is 2.5\u00d7 faster than GL-AM'
>>> layer_sample_text([0, 3, 44], 45)
'3 of 45: #0, #3, #44'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from glam.errors import UserInputError

if TYPE_CHECKING:
    from matplotlib.colors import Normalize

CMAP = "cividis"
"""The one colour map of every heat map glam draws, in the PNG/PDF/SVG figures and the HTML
report alike: perceptually uniform and designed to read the same with the common
colour-vision deficiencies (Nuñez et al. 2018), on GLAM.md's normalised [0, 1] scale."""

__all__ = [
    "CMAP",
    "FIGURE_FORMATS",
    "SCALES",
    "Display",
    "attributed_mask",
    "context_box",
    "layer_sample_text",
    "native_overlay",
    "speed_text",
    "write_native_overlays",
    "zoom",
]

Scale = Literal["linear", "gamma", "log"]
SCALES: tuple[str, ...] = ("linear", "gamma", "log")
"""Display scales of heat maps and overlays (``--figure-scale``)."""
FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
"""File formats of the matplotlib figures (``--figure-format``)."""

LOG_FLOOR = 1e-3
"""Smallest value the ``log`` scale resolves (three decades below a map's maximum of 1)."""
ZOOM_CONTEXT = 2
"""ROI windows of context on each side of the ROI in the zoomed inset."""
ZOOM_SIDE = 240
"""Target side (pixels) of the upsampled ROI inset."""
SAME_SPEED = 1.05
"""Ratios below this are reported as "about as fast" rather than "1.0x faster"."""


@dataclass(frozen=True)
class Display:
    """How attribution maps in [0, 1] are mapped to colour.

    Attributes
    ----------
    scale:
        ``"linear"`` (the values as they are), ``"gamma"`` (``v ** gamma``, ``gamma < 1``
        lifts faint attribution) or ``"log"`` (``log10`` over ``[LOG_FLOOR, 1]``: every
        decade gets the same share of the colour map).
    gamma:
        Exponent of the ``gamma`` scale (a finite number > 0; default 0.5).
    """

    scale: Scale = "linear"
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise UserInputError(
                f"figure scale {self.scale!r} is not supported; use one of {', '.join(SCALES)}"
            )
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma > 0):
            raise UserInputError(
                f"figure gamma {self.gamma!r} must be a finite number > 0 (0.5 lifts faint "
                "attribution; 1 is linear)"
            )

    def norm(self) -> Normalize:
        """The matplotlib normalisation of this scale over [0, 1] (values outside clip)."""
        from matplotlib.colors import LogNorm, Normalize, PowerNorm

        if self.scale == "gamma":
            return PowerNorm(self.gamma, vmin=0.0, vmax=1.0, clip=True)
        if self.scale == "log":
            return LogNorm(vmin=LOG_FLOOR, vmax=1.0, clip=True)
        return Normalize(vmin=0.0, vmax=1.0, clip=True)

    def apply(self, m: np.ndarray) -> np.ndarray:
        """``m`` (values in [0, 1]) as the colour-map positions of this scale, in [0, 1]."""
        a = np.clip(np.asarray(m, dtype=np.float64), 0.0, 1.0)
        if self.scale == "log":
            a = np.maximum(a, LOG_FLOOR)
        return np.asarray(np.ma.filled(self.norm()(a), 0.0), dtype=np.float64)

    def label(self, what: str) -> str:
        """Colour-bar label naming the scale, e.g. ``"local attribution (gamma 0.5)"``."""
        if self.scale == "gamma":
            return f"{what} (gamma {self.gamma:g})"
        if self.scale == "log":
            return f"{what} (log scale)"
        return what


def speed_text(seconds_glam: float, seconds_lam: float) -> str:
    """Which of GL-AM and LAM was faster, and by how much (never "0.4x faster").

    Parameters
    ----------
    seconds_glam, seconds_lam:
        Measured times (seconds, > 0).

    Returns
    -------
    str
        ``"GL-AM is 24.0x faster than LAM"``, ``"LAM is 2.5x faster than GL-AM"``, or
        ``"GL-AM and LAM took about as long"`` when they are within 5 %.
    """
    g, lam = float(seconds_glam), float(seconds_lam)
    if not (math.isfinite(g) and math.isfinite(lam)) or g <= 0 or lam <= 0:
        return "speed comparison n/a"
    fast, slow, ratio = ("GL-AM", "LAM", lam / g) if g <= lam else ("LAM", "GL-AM", g / lam)
    if ratio < SAME_SPEED:
        return "GL-AM and LAM took about as long"
    return f"{fast} is {ratio:.1f}\u00d7 faster than {slow}"


def layer_sample_text(indices: Sequence[int], total: int) -> str:
    """Which layers a per-layer grid shows: ``"16 of 45: #0, #3, ..."`` (all when few).

    Parameters
    ----------
    indices:
        Tap indices shown, in order.
    total:
        Participating layers of the run (at least ``len(indices)``).
    """
    shown = ", ".join(f"#{i}" for i in indices)
    total = max(int(total), len(indices))
    if len(indices) == total:
        return f"all {total} participating layers: {shown}"
    return f"{len(indices)} of {total}: {shown}"


def attributed_mask(m: np.ndarray) -> np.ndarray:
    """Pixels whose value is above the map's mean: the "attributed pixels" of the paper's
    Fig. 5 (the same test as :func:`glam.engine.metrics.attributed_fraction`)."""
    a = np.nan_to_num(np.asarray(m, dtype=np.float64))
    return a > a.mean() if a.size else np.zeros(a.shape, dtype=bool)


def context_box(
    shape: tuple[int, ...], roi: tuple[int, int], window: int, context: int = ZOOM_CONTEXT
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the crop around the ROI: ``context`` windows on
    each side, clipped to the image."""
    H, W = int(shape[0]), int(shape[1])
    top, left = int(roi[0]), int(roi[1])
    pad = context * int(window)
    t0, l0 = max(0, top - pad), max(0, left - pad)
    t1, l1 = min(H, top + window + pad), min(W, left + window + pad)
    return t0, l0, max(1, t1 - t0), max(1, l1 - l0)


def zoom_factor(box: tuple[int, int, int, int], side: int = ZOOM_SIDE) -> int:
    """Integer upsampling that brings the crop's longer side to about ``side`` pixels."""
    return max(1, int(round(side / max(box[2], box[3]))))


def zoom(a: np.ndarray, box: tuple[int, int, int, int], factor: int) -> np.ndarray:
    """The crop ``box`` of ``a`` (``H x W`` or ``H x W x C``), each pixel repeated
    ``factor`` times per axis (nearest: no pixel is invented)."""
    t, l_, h, w = box
    c = np.asarray(a)[t : t + h, l_ : l_ + w]
    return np.repeat(np.repeat(c, factor, axis=0), factor, axis=1)


def native_overlay(
    rgb: np.ndarray, m: np.ndarray, display: Display | None = None, cmap: str = CMAP
) -> np.ndarray:
    """The map over the grey image at the image's own resolution, ``H x W x 3`` uint8.

    Opacity grows with the (display-scaled) value, so unattributed pixels stay visible as
    image, as in the figures' overlay panels.
    """
    f = np.asarray(rgb, dtype=np.float64) / 255.0
    if f.ndim == 2:
        f = f[..., None]
    if f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    grey = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114
    if grey.shape != np.shape(m):
        raise UserInputError(
            f"map of shape {np.shape(m)} does not match the image {grey.shape}; overlay a map "
            "at output size"
        )
    from matplotlib import colormaps

    u = (display or Display()).apply(m)
    heat = colormaps[cmap](u)[..., :3]
    alpha = np.clip(0.15 + 0.85 * np.sqrt(u), 0.0, 0.9)[..., None]
    out = (1.0 - alpha) * grey[..., None] + alpha * heat
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def write_native_overlays(
    rgb: np.ndarray,
    maps: dict[str, np.ndarray],
    directory: Path,
    display: Display | None = None,
) -> list[Path]:
    """One PNG per map, each pixel one output pixel (no axes, no resampling).

    Parameters
    ----------
    rgb:
        The SR output, ``H x W x 3`` uint8.
    maps:
        ``{file stem: H x W map in [0, 1]}``, e.g. ``{"local_sum": ..., "lam": ...}``.
    directory:
        Where the PNGs go (created when missing).
    display:
        Display scale (default linear).

    Returns
    -------
    list of Path
        The files written, in the order of ``maps``.
    """
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for stem, m in maps.items():
        p = directory / f"{stem}.png"
        Image.fromarray(native_overlay(rgb, m, display)).save(p, format="PNG", compress_level=3)
        out.append(p)
    return out
