"""Metrics of GLAM.md: LAM's diffusion index, attributed fraction, MSE / PSNR.

Defined, with the rest of the method, in ``docs/method.md`` ("Metrics").
"""

from __future__ import annotations

import math

import numpy as np


def gini(m: np.ndarray) -> float:
    """LAM's Gini coefficient (float64): shift if negative, add 1e-7, sort, weighted sum."""
    a = np.asarray(m, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    if a.min() < 0:
        a = a - a.min()
    a = np.sort(a + 1e-7)
    n = a.size
    k = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum((2 * k - n - 1) * a) / (n * np.sum(a)))


def diffusion_index(m: np.ndarray) -> float:
    """``DI(m) = (1 - gini(m)) * 100`` (Gu & Dong, CVPR 2021)."""
    return (1.0 - gini(m)) * 100.0


def attributed_fraction(m: np.ndarray) -> float:
    """Share of pixels whose value exceeds the map's mean (paper §IV-D-2)."""
    a = np.asarray(m, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.mean(a > a.mean()))


def mse_psnr(output: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """MSE and ``PSNR = 10 log10(1 / MSE)`` with the output clipped to [0, 1]."""
    o = np.clip(np.asarray(output, dtype=np.float64), 0.0, 1.0)
    r = np.asarray(reference, dtype=np.float64)
    mse = float(np.mean((o - r) ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
    return mse, psnr


def map_metrics(m: np.ndarray) -> dict[str, float]:
    """DI and attributed fraction of one map."""
    return {"di": diffusion_index(m), "attributed_fraction": attributed_fraction(m)}


def y_studio(image: np.ndarray) -> np.ndarray:
    """The SR papers' Y channel, ITU-R BT.601 studio range (MATLAB ``rgb2ycbcr``), in [0, 1].

    ``image`` is ``C x H x W`` in [0, 1]: RGB (``C == 3``) gives
    ``(16 + 65.481 R + 128.553 G + 24.966 B) / 255``; a 1-channel image is glam's Y (PIL's
    full-range BT.601 Y) and is mapped to studio range, ``(16 + 219 Y) / 255``.
    """
    a = np.asarray(image, dtype=np.float64)
    if a.shape[0] == 3:
        return (16.0 + 65.481 * a[0] + 128.553 * a[1] + 24.966 * a[2]) / 255.0
    return (16.0 + 219.0 * a[0]) / 255.0


def psnr_y(output: np.ndarray, reference: np.ndarray, shave: int) -> float:
    """Y-channel PSNR with a border of ``shave`` pixels removed (the SR papers' protocol).

    The output is clipped to [0, 1]; both images are converted with :func:`y_studio`, then
    ``shave`` rows/columns are dropped on every side and ``10 log10(1 / MSE)`` is taken.
    Returns NaN when the shave leaves no pixel.
    """
    o = y_studio(np.clip(np.asarray(output, dtype=np.float64), 0.0, 1.0))
    r = y_studio(reference)
    s = max(int(shave), 0)
    if s:
        o, r = o[s:-s, s:-s], r[s:-s, s:-s]
    if o.size == 0:
        return math.nan
    mse = float(np.mean((o - r) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
