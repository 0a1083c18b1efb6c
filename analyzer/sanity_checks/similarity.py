"""Similarity of two attribution maps: Spearman rank correlation, SSIM, top-k overlap.

The measures of the model-randomization sanity check (Adebayo et al., "Sanity Checks for
Saliency Maps", NeurIPS 2018), written here in numpy:

* :func:`spearman`: Pearson correlation of the average ranks (ties share the mean of the
  ranks they span), the textbook definition that ``scipy.stats.spearmanr`` implements;
* :func:`ssim`: the mean structural similarity of Wang, Bovik, Sheikh & Simoncelli (IEEE TIP
  2004) with their 11x11 Gaussian window (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03`` and
  ``L = 1`` on maps scaled by their maximum, windows wholly inside the image (the paper's
  ``filter2(..., 'valid')``);
* :func:`topk_overlap`: the share of the ``k`` most attributed pixels of one map that are
  also among the ``k`` most attributed of the other.
"""

from __future__ import annotations

import numpy as np
from glam.errors import AnalysisError


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened ``a`` (float64), ties given the mean of their ranks."""
    v = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AnalysisError(f"maps of shapes {a.shape} and {b.shape} cannot be compared; "
                            "pass maps of the same size")
    if a.size < 2:
        raise AnalysisError(f"maps of {a.size} pixel(s) have no rank correlation; pass larger maps")
    return a, b


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (ties: average ranks).

    A constant map has no ranking: two equal constant maps give 1, a constant map against
    any other map gives 0 (it carries none of the other's ordering).
    """
    a, b = _check_pair(a, b)
    ra, rb = average_ranks(a), average_ranks(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    na, nb = float(np.sqrt(np.dot(da, da))), float(np.sqrt(np.dot(db, db)))
    if na == 0.0 or nb == 0.0:
        return 1.0 if (na == 0.0 and nb == 0.0 and np.array_equal(a, b)) else 0.0
    return float(np.clip(np.dot(da, db) / (na * nb), -1.0, 1.0))


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(ax**2) / (2.0 * sigma**2))
    return k / k.sum()


def _filter_valid(z: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable correlation with ``k`` (1-D) on both axes, 'valid' region only."""
    n = k.size
    rows = sum(k[i] * z[i : z.shape[0] - n + 1 + i, :] for i in range(n))
    return sum(k[j] * rows[:, j : rows.shape[1] - n + 1 + j] for j in range(n))


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    *,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
    scale: bool = True,
) -> float:
    """Mean SSIM (Wang et al. 2004) of two 2-D maps.

    Parameters
    ----------
    a, b:
        Maps of the same shape, at least ``window`` pixels per side.
    window, sigma:
        Gaussian window size and standard deviation (the paper's 11 and 1.5).
    data_range:
        ``L`` in ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``.
    k1, k2:
        The paper's stabilising constants.
    scale:
        Divide each map by its maximum absolute value first (attribution maps have no
        common scale), so ``data_range = 1`` fits.

    Returns
    -------
    float
        The mean of the local SSIM index over all windows inside the image.
    """
    a, b = _check_pair(a, b)
    if a.ndim != 2:
        raise AnalysisError(f"SSIM takes 2-D maps, got shape {a.shape}")
    if min(a.shape) < window:
        raise AnalysisError(
            f"maps of {a.shape[0]}x{a.shape[1]} are smaller than the {window}x{window} SSIM "
            "window; use a smaller window or larger maps"
        )
    if scale:
        ma, mb = np.abs(a).max(), np.abs(b).max()
        a = a / ma if ma > 0 else a
        b = b / mb if mb > 0 else b
    k = _gaussian_1d(window, sigma)
    mu_a, mu_b = _filter_valid(a, k), _filter_valid(b, k)
    saa = _filter_valid(a * a, k) - mu_a * mu_a
    sbb = _filter_valid(b * b, k) - mu_b * mu_b
    sab = _filter_valid(a * b, k) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return float(s.mean())


def topk_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.05) -> float:
    """``|top_k(a) ∩ top_k(b)| / k`` with ``k = ceil(fraction * pixels)``.

    Ties at the k-th value are broken by pixel order (stable sort), the same for both maps.
    """
    a, b = _check_pair(a, b)
    if not 0.0 < fraction <= 1.0:
        raise AnalysisError(f"top-k fraction {fraction} must be in (0, 1]")
    k = max(1, int(np.ceil(fraction * a.size)))
    ta = np.argsort(-a.ravel(), kind="stable")[:k]
    tb = np.argsort(-b.ravel(), kind="stable")[:k]
    return float(np.intersect1d(ta, tb).size / k)


def similarities(a: np.ndarray, b: np.ndarray, *, topk: float = 0.05) -> dict[str, float]:
    """``{"spearman", "ssim", "topk"}`` of ``a`` against ``b`` (SSIM's window shrinks to the
    map's smaller side, odd, for maps under 11 pixels)."""
    window = min(11, min(np.shape(a)) - (1 - min(np.shape(a)) % 2))
    return {
        "spearman": spearman(a, b),
        "ssim": ssim(a, b, window=max(3, window)),
        "topk": topk_overlap(a, b, topk),
    }
