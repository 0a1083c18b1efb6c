"""Quantitative indicators beyond LAM's diffusion index (the paper's conclusion asks for them).

* :func:`layer_dis`: DI of every participating layer's local and global key, in execution
  order: how attribution spreads with depth (the receptive-field growth curve);
* :func:`erf_radii`: the effective receptive field, the radius around the ROI centre that
  holds 50 % / 90 % of the local Sum's mass;
* :func:`texture_gini`: the Gini of the global Sum inside and outside the textured region
  of the SR output (gradient magnitude above its mean), and the share of the global mass
  that falls inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from glam.engine.glam import LayerRecord, layer_keys
from glam.engine.metrics import diffusion_index, gini
from glam.engine.texture import gradient_magnitude
from glam.errors import AnalysisError


def layer_dis(layers: Sequence[LayerRecord], out_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """``{"index", "di_local", "di_global"}`` over the participating layers (``di_global``
    is NaN for a layer without a global map)."""
    part = [r for r in layers if r.participating]
    idx = np.array([r.index for r in part], dtype=np.int64)
    if not part:
        return {"index": idx, "di_local": np.zeros(0), "di_global": np.zeros(0)}
    loc = layer_keys([torch.from_numpy(np.asarray(r.local_map, dtype=np.float32)) for r in part],
                     out_hw)
    di_l = np.array([diffusion_index(k.numpy()) for k in loc])
    di_g = np.full(len(part), np.nan)
    with_g = [k for k, r in enumerate(part) if r.global_map is not None]
    if with_g:
        glob = layer_keys(
            [torch.from_numpy(np.asarray(part[k].global_map, dtype=np.float32)) for k in with_g],
            out_hw,
        )
        for k, key in zip(with_g, glob, strict=True):
            di_g[k] = diffusion_index(key.numpy())
    return {"index": idx, "di_local": di_l, "di_global": di_g}


def erf_radii(
    local_sum: np.ndarray, roi: tuple[int, int], window: int, levels: Sequence[float] = (0.5, 0.9)
) -> dict[str, float]:
    """Radius (output pixels, Euclidean from the ROI centre) of the smallest disc holding
    each ``level`` of the map's mass; ``{"erf_r50": ..., "erf_r90": ...}``. NaN for an
    all-zero map."""
    m = np.clip(np.asarray(local_sum, dtype=np.float64), 0.0, None)
    cy, cx = roi[0] + (window - 1) / 2.0, roi[1] + (window - 1) / 2.0
    yy, xx = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
    d = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(m.ravel()[order])
    total = cum[-1] if cum.size else 0.0
    out = {}
    for lv in levels:
        key = f"erf_r{int(round(lv * 100))}"
        if not total > 0:
            out[key] = float("nan")
            continue
        k = int(np.searchsorted(cum, lv * total, side="left"))
        out[key] = float(d[order[min(k, d.size - 1)]])
    return out


def texture_mask(output: np.ndarray) -> np.ndarray:
    """Textured pixels of an output ``C x H x W``: channel-mean gradient magnitude (LAM's
    ``mag``, edge-padded to ``H x W``) above its mean."""
    t = torch.from_numpy(np.asarray(output, dtype=np.float32))[None]
    mag = gradient_magnitude(t)[0].mean(dim=0).numpy()
    mag = np.pad(mag, ((0, 1), (0, 1)), mode="edge")
    return mag > mag.mean()


def texture_gini(global_sum: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Gini of the global Sum inside / outside the textured mask, the mask's pixel share
    and the share of the global mass inside it."""
    g = np.asarray(global_sum, dtype=np.float64)
    mask = texture_mask(output)
    if mask.shape != g.shape:
        raise AnalysisError(f"global map {g.shape} and output {mask.shape} differ in size; "
                            "pass the global Sum of this output")
    total = float(np.clip(g, 0, None).sum())
    return {
        "gini_global_textured": gini(g[mask]) if mask.any() else float("nan"),
        "gini_global_flat": gini(g[~mask]) if (~mask).any() else float("nan"),
        "textured_fraction": float(mask.mean()),
        "global_mass_textured": float(np.clip(g[mask], 0, None).sum() / total) if total > 0
        else float("nan"),
    }
