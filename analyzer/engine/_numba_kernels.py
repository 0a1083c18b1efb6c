"""The numba kernels behind :mod:`glam.engine.kernels` (imported only when they are used).

Each function computes one of GLAM.md's per-layer quantities on C-contiguous float32
arrays, in place into a preallocated output; see :mod:`glam.engine.kernels` for the torch-facing
wrappers and the formulas.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

EPS = np.float32(1e-12)  # glam.engine.texture.EPS
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
CHUNK = 1024  # output positions per parallel task of the channel sums


def jit(fastmath: set[str] | None = None):  # type: ignore[no-untyped-def]
    """``numba.njit(parallel=True)``, cached on disk where numba finds a writable place
    (next to this file, else the user's cache directory), else compiled in memory."""

    def wrap(fn):  # type: ignore[no-untyped-def]
        options = {"parallel": True, "boundscheck": False, "fastmath": fastmath or False}
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(fn)

    return wrap


_njit = jit()


@_njit
def texture_energy(t: np.ndarray, g: np.ndarray, a: np.ndarray, rows: int) -> None:
    """``g = dT_Global/dt`` and ``a = mean_c |t_c|`` for ``t`` of shape ``(c, h, w)`` with
    ``h, w >= 2``, in blocks of ``rows`` rows (one pass over ``t``).

    ``u = dh * (1/mag)``, ``v = dw * (1/mag)`` over the ``(h-1) x (w-1)`` differences;
    ``g[p,q] = ((v[p,q] - v[p,q-1]) - u[p-1,q]) + u[p,q]``, absent terms left out (the
    formula and summation order of :func:`glam.engine.texture.texture_global_grad`, with an
    IEEE square root, where torch's vectorised one can differ in the last bit); a block
    recomputes ``u`` of the row above it. ``a`` is summed channel by channel in float32
    (the order of ``t.abs().sum(dim=0) / c``). Neither depends on ``rows``.
    """
    c, h, w = t.shape
    scale = np.float32(c)
    for b in prange((h + rows - 1) // rows):
        p0 = b * rows
        p1 = min(h, p0 + rows)
        up = np.empty(w - 1, dtype=np.float32)  # u of the row above
        u = np.empty(w - 1, dtype=np.float32)
        v = np.empty(w - 1, dtype=np.float32)
        acc = np.empty((p1 - p0, w), dtype=np.float32)
        for k in range(c):
            plane = t[k]
            out = g[k]
            if p0 > 0:
                row = plane[p0 - 1]
                below = plane[p0]
                for q in range(w - 1):
                    dh = row[q] - below[q]
                    dw = row[q] - row[q + 1]
                    up[q] = dh * (ONE / np.sqrt(dh * dh + dw * dw + EPS))
            else:
                up[:] = ZERO
            for p in range(p0, min(p1, h - 1)):
                row = plane[p]
                below = plane[p + 1]
                dst = out[p]
                for q in range(w - 1):
                    dh = row[q] - below[q]
                    dw = row[q] - row[q + 1]
                    r = ONE / np.sqrt(dh * dh + dw * dw + EPS)
                    u[q] = dh * r
                    v[q] = dw * r
                dst[0] = (v[0] - up[0]) + u[0]
                for q in range(1, w - 1):
                    dst[q] = ((v[q] - v[q - 1]) - up[q]) + u[q]
                dst[w - 1] = -v[w - 2]
                up[:] = u
            if p1 == h:
                for q in range(w - 1):
                    out[h - 1, q] = -up[q]
                out[h - 1, w - 1] = ZERO
            if k == 0:
                for p in range(p0, p1):
                    src = plane[p]
                    dst = acc[p - p0]
                    for q in range(w):
                        dst[q] = abs(src[q])
            else:
                for p in range(p0, p1):
                    src = plane[p]
                    dst = acc[p - p0]
                    for q in range(w):
                        dst[q] += abs(src[q])
        for p in range(p0, p1):
            src = acc[p - p0]
            dst = a[p]
            for q in range(w):
                dst[q] = src[q] / scale


@jit(fastmath={"reassoc"})
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


@_njit
def resize_taps(
    z: np.ndarray,
    row_idx: np.ndarray,
    row_w: np.ndarray,
    col_idx: np.ndarray,
    col_w: np.ndarray,
    out: np.ndarray,
) -> None:
    """``out[k] = M_h @ z[k] @ M_w^T`` for maps ``z`` of shape ``(b, h, w)``, with the
    separable resize matrices given by their few non-zero taps per output row
    (``M_h[p, row_idx[p, t]] = row_w[p, t]``, likewise for columns).

    Bicubic resizing has at most four taps per output row and column, so this takes
    ``4 (h W + H W)`` multiply-adds per map where the dense products take ``H h w + H w W``
    (about 16x fewer at 64 -> 256). Columns first (``h x W``), then each output row as a
    weighted sum of those rows, a float32 sum over the taps in tap order; every output
    element is computed the same way whatever the thread count.
    """
    b, h, w = z.shape
    H, taps_h = row_idx.shape
    W, taps_w = col_idx.shape
    for k in prange(b):
        src = z[k]
        tmp = np.empty((h, W), dtype=np.float32)
        for p in range(h):
            row = src[p]
            dst = tmp[p]
            for q in range(W):
                s = ZERO
                for t in range(taps_w):
                    s += col_w[q, t] * row[col_idx[q, t]]
                dst[q] = s
        res = out[k]
        for p in range(H):
            dst = res[p]
            first = tmp[row_idx[p, 0]]
            w0 = row_w[p, 0]
            for q in range(W):
                dst[q] = w0 * first[q]
            for t in range(1, taps_h):
                wt = row_w[p, t]
                line = tmp[row_idx[p, t]]
                for q in range(W):
                    dst[q] += wt * line[q]
