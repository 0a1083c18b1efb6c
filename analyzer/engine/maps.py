"""Map algebra of GLAM.md: ``N`` (normalise), ``R`` (bicubic resize), ``A`` (Grad-CAM key)
and the per-map helpers the engine builds on (the Consensus / Variation / Sum accumulation
lives in :mod:`glam.engine.accumulate`). Defined in ``docs/method.md`` ("Building blocks")."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def normalize(z: torch.Tensor) -> torch.Tensor:
    """``N(z) = max(z, 0) / max(max(z, 0))`` per map over the last two dims; 0 if the max is 0.

    Works on a single ``(H, W)`` map or a stack ``(..., H, W)`` (each map separately).
    """
    return normalize_(torch.clamp(z, min=0))


def normalize_(z: torch.Tensor) -> torch.Tensor:
    """:func:`normalize` in place (``z`` is overwritten and returned); same values."""
    z.clamp_(min=0)
    m = z.amax(dim=(-2, -1), keepdim=True)
    # where the max is 0 the clamped map is all zeros already: dividing by 1 keeps it 0
    return z.div_(torch.where(m > 0, m, torch.ones_like(m)))


def normalize_nonnegative(z: torch.Tensor) -> torch.Tensor:
    """:func:`normalize` of one map known to be ``>= 0`` (the clamp is the identity).

    Same values as :func:`normalize`, in two operations instead of five (it runs once
    per layer on small maps).
    """
    mx = float(z.max())
    if not mx > 0:  # all zeros, or NaN: the general path keeps NaN visible
        return normalize(z)
    return z / mx


@functools.lru_cache(maxsize=64)
def interpolation_matrix(n_in: int, n_out: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """``(n_out, n_in)`` matrix ``M`` with ``M @ v`` = 1-D bicubic resize of ``v``.

    Built by resizing the identity with ``F.interpolate`` itself, so it holds exactly the
    weights (and border clamping) torch uses; torch's bicubic kernel is separable.
    """
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :, None]
    cols = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=False)
    return cols[:, 0, :, 0].T.contiguous().to(device=device, dtype=dtype)


def resize(z: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``R(z, size)``: bicubic, ``align_corners=False``; identity when the size matches.

    ``z`` is ``(H, W)`` or a stack ``(B, H, W)`` of same-size maps. Computed as
    ``M_h @ z @ M_w^T`` with the separable interpolation matrices of
    ``F.interpolate(mode="bicubic")``: the same result to float rounding (tested), about
    10x faster on CPU for stacks of maps.
    """
    size = (int(size[0]), int(size[1]))
    h, w = int(z.shape[-2]), int(z.shape[-1])
    if (h, w) == size:
        return z
    mh = interpolation_matrix(h, size[0], str(z.device), z.dtype)
    mw = interpolation_matrix(w, size[1], str(z.device), z.dtype)
    return mh @ z @ mw.T


VANISHING_WEIGHTS = 1e-4
"""GLAM.md "Vanishing weights": ``A(g) = 0`` when ``max_c |mean g_c| <= 1e-4 * max_c mean |g_c|``."""


def weights_vanish(signed: float, magnitude: float) -> bool:
    """GLAM.md's vanishing-weights test from its two maxima.

    Parameters
    ----------
    signed:
        ``max_c |alpha_c|``, the largest Grad-CAM weight ``alpha_c = mean_{p,q} g_c``.
    magnitude:
        ``max_c mean_{p,q} |g_c|``.

    Returns
    -------
    bool
        True when the weights are float rounding, not signal (``signed <= 1e-4 *
        magnitude``), and when ``g`` is all zeros; ``A(g)`` is then exactly 0. False for a
        non-finite ``g`` (NaN/Inf maxima), so its key stays non-finite and the engine's
        finiteness check reports it instead of a silent zero key.
    """
    if not (math.isfinite(signed) and math.isfinite(magnitude)):
        return False
    return magnitude == 0 or signed <= VANISHING_WEIGHTS * magnitude


def _channel_weights(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``g`` as ``(C, H*W)`` and its Grad-CAM weights ``mean_{p,q} g_c``."""
    c, h, w = g.shape[-3:]
    flat = g.reshape(c, h * w)
    return flat, flat.mean(dim=1)


def gradcam_key_flagged(g: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(A(g), vanished)`` for ``g`` of shape ``(C, H, W)`` (GLAM.md).

    ``A(g) = |sum_c alpha_c g_c|`` with the Grad-CAM channel weights ``alpha_c = mean_{p,q}
    g_c`` (the paper's ``grad x W`` reduced over channels), and exactly 0 when the weights
    vanish (:func:`weights_vanish`; ``vanished`` is then True).
    """
    flat, alpha = _channel_weights(g)
    signed, magnitude = torch.stack([alpha.abs().max(), flat.abs().mean(dim=1).max()]).tolist()
    if weights_vanish(signed, magnitude):
        return g.new_zeros(g.shape[-2:]), True
    return (alpha @ flat).abs_().reshape(g.shape[-2:]), False


def gradcam_key(g: torch.Tensor) -> torch.Tensor:
    """``A(g)`` of GLAM.md for ``g`` of shape ``(C, H, W)`` (see :func:`gradcam_key_flagged`)."""
    return gradcam_key_flagged(g)[0]


def resized_stack(
    maps: Sequence[torch.Tensor],
    size: Sequence[int],
    resize_fn: Callable[[torch.Tensor, Sequence[int]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``R(m, size)`` of each map, as one fresh ``(B, H, W)`` stack in the given order.

    Same-size maps are resized together (one pair of matrix products per size, or one call
    of ``resize_fn``, a drop-in for :func:`resize` on a stack such as the tap kernel of
    :func:`glam.engine.kernels.resize_stack`).
    """
    do_resize = resize_fn or resize
    size = (int(size[0]), int(size[1]))

    def one(z: torch.Tensor) -> torch.Tensor:
        return z if tuple(z.shape[-2:]) == size else do_resize(z, size)

    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(tuple(m.shape[-2:]), []).append(i)
    if len(groups) == 1:
        return one(torch.stack(list(maps)))  # the stack is a fresh tensor
    out = maps[0].new_empty((len(maps), size[0], size[1]))
    for idx in groups.values():
        out[idx] = one(torch.stack([maps[i] for i in idx]))
    return out
