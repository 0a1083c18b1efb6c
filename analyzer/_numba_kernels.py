"""The numba kernels behind :mod:`analyzer.kernels` (imported only when they are used).

Each function computes one of GLAM.md's per-layer quantities on C-contiguous float32
arrays, in place into a preallocated output; see :mod:`analyzer.kernels` for the torch-facing
wrappers and the formulas.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

EPS = np.float32(1e-12)  # analyzer.texture.EPS
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
CHUNK = 1024  # output positions per parallel task of the channel sums


def _njit(fn):  # type: ignore[no-untyped-def]
    return numba.njit(parallel=True, cache=True, boundscheck=False)(fn)


@_njit
def texture(t: np.ndarray, g: np.ndarray) -> None:
    """``g = dT_Global/dt`` for ``t`` of shape ``(n, h, w)`` with ``h, w >= 2``.

    ``u = dh * (1/mag)``, ``v = dw * (1/mag)`` over the ``(h-1) x (w-1)`` differences;
    ``g[p,q] = ((v[p,q] - v[p,q-1]) - u[p-1,q]) + u[p,q]``, absent terms left out (the
    operations and order of :func:`analyzer.texture.texture_global_grad`).
    """
    n, h, w = t.shape
    for c in prange(n):
        up = np.zeros(w - 1, dtype=np.float32)  # u of the row above
        u = np.empty(w - 1, dtype=np.float32)
        v = np.empty(w - 1, dtype=np.float32)
        for p in range(h - 1):
            row = t[c, p]
            below = t[c, p + 1]
            out = g[c, p]
            for q in range(w - 1):
                dh = row[q] - below[q]
                dw = row[q] - row[q + 1]
                r = ONE / np.sqrt(dh * dh + dw * dw + EPS)
                u[q] = dh * r
                v[q] = dw * r
            out[0] = (v[0] - up[0]) + u[0]
            for q in range(1, w - 1):
                out[q] = ((v[q] - v[q - 1]) - up[q]) + u[q]
            out[w - 1] = -v[w - 2]
            up[:] = u
        last = g[c, h - 1]
        for q in range(w - 1):
            last[q] = -up[q]
        last[w - 1] = 0.0


@numba.njit(parallel=True, cache=True, boundscheck=False, fastmath={"reassoc"})
def channel_sums(g: np.ndarray, sums: np.ndarray, abs_sums: np.ndarray) -> None:
    """``sums[c] = sum g[c]`` and ``abs_sums[c] = sum |g[c]|`` for ``g`` of shape ``(c, n)``.

    Accumulated in float64; ``reassoc`` lets the compiler vectorise the sums (their order
    is fixed by the compiled code, not by the thread count).
    """
    c, n = g.shape
    for k in prange(c):
        s = 0.0
        sa = 0.0
        for i in range(n):
            x = np.float64(g[k, i])
            s += x
            sa += abs(x)
        sums[k] = s
        abs_sums[k] = sa


@_njit
def gradcam(g: np.ndarray, key: np.ndarray) -> tuple[float, float]:
    """``key = |sum_c alpha_c g_c|`` with the Grad-CAM weights ``alpha_c = mean g_c``, for
    ``g`` of shape ``(c, n)``; returns ``(max_c |alpha_c|, max_c mean |g_c|)``.

    The channel sums come from :func:`channel_sums` (float64); the weighted sum over
    channels is taken in float32, channel by channel, for each position.
    """
    c, n = g.shape
    sums = np.empty(c, dtype=np.float64)
    abs_sums = np.empty(c, dtype=np.float64)
    channel_sums(g, sums, abs_sums)
    alpha = (sums / n).astype(np.float32)
    for j in prange((n + CHUNK - 1) // CHUNK):
        lo = j * CHUNK
        hi = min(n, lo + CHUNK)
        out = key[lo:hi]
        first = g[0, lo:hi]
        a0 = alpha[0]
        for i in range(hi - lo):
            out[i] = a0 * first[i]
        for k in range(1, c):
            a = alpha[k]
            src = g[k, lo:hi]
            for i in range(hi - lo):
                out[i] += a * src[i]
        for i in range(hi - lo):
            out[i] = abs(out[i])
    return float(np.abs(alpha).max()), float(abs_sums.max() / n)


@_njit
def abs_mean(f: np.ndarray, a: np.ndarray) -> None:
    """``a = mean_c |f_c|`` for ``f`` of shape ``(c, n)``, summed channel by channel in
    float32 (the order of ``f.abs().sum(dim=0) / c``)."""
    c, n = f.shape
    scale = np.float32(c)
    for j in prange((n + CHUNK - 1) // CHUNK):
        lo = j * CHUNK
        hi = min(n, lo + CHUNK)
        out = a[lo:hi]
        first = f[0, lo:hi]
        for i in range(hi - lo):
            out[i] = abs(first[i])
        for k in range(1, c):
            src = f[k, lo:hi]
            for i in range(hi - lo):
                out[i] += abs(src[i])
        for i in range(hi - lo):
            out[i] /= scale


@_njit
def accumulate_keys(
    z: np.ndarray,
    maxima: np.ndarray,
    total: np.ndarray,
    variation: np.ndarray,
    previous: np.ndarray,
    has_previous: bool,
) -> None:
    """For maps ``z`` of shape ``(b, n)`` with ``maxima[k] = max(max(z[k]), 0)``, in order
    ``k = 0..b-1``: ``key = max(z[k], 0) / maxima[k]`` (divided by 1 where the maximum is
    0), ``total += key``, ``variation += |key - previous|`` (unless it is the very first
    key), ``previous = key``."""
    b, n = z.shape
    for j in prange((n + CHUNK - 1) // CHUNK):
        lo = j * CHUNK
        hi = min(n, lo + CHUNK)
        tot = total[lo:hi]
        var = variation[lo:hi]
        prev = previous[lo:hi]
        for k in range(b):
            d = maxima[k] if maxima[k] > 0 else ONE
            src = z[k, lo:hi]
            if k == 0 and not has_previous:
                for i in range(hi - lo):
                    key = max(src[i], ZERO) / d
                    tot[i] += key
                    prev[i] = key
            else:
                for i in range(hi - lo):
                    key = max(src[i], ZERO) / d
                    tot[i] += key
                    var[i] += abs(key - prev[i])
                    prev[i] = key
