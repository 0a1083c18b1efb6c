"""LAM's texture objective (GLAM.md "Texture objective").

``mag[c, p, q] = sqrt(dh^2 + dw^2 + 1e-12)`` over ``(H-1) x (W-1)``; ``T_ROI`` sums it
over an ``l x l`` window at ``(top, left)`` (output pixels), ``T_Global`` over all of it.
The ``1e-12`` keeps the gradient finite on flat regions (LAM itself yields NaN there).
"""

from __future__ import annotations

import torch

EPS = 1e-12


def gradient_magnitude(t: torch.Tensor) -> torch.Tensor:
    """``mag`` of GLAM.md for ``t`` of shape ``(N, C, H, W)``; returns ``(N, C, H-1, W-1)``."""
    dh = t[:, :, :-1, :-1] - t[:, :, 1:, :-1]
    dw = t[:, :, :-1, :-1] - t[:, :, :-1, 1:]
    return torch.sqrt(dh * dh + dw * dw + EPS)


def texture_roi(t: torch.Tensor, top: int, left: int, window: int) -> torch.Tensor:
    """``T_ROI`` per sample: shape ``(N,)``. Indices past the edge of ``mag`` are absent."""
    mag = gradient_magnitude(t)
    return mag[:, :, top : top + window, left : left + window].sum(dim=(1, 2, 3))


def texture_global(t: torch.Tensor) -> torch.Tensor:
    """``T_Global`` per sample: shape ``(N,)``."""
    return gradient_magnitude(t).sum(dim=(1, 2, 3))


def texture_global_grad(t: torch.Tensor) -> torch.Tensor:
    """``dT_Global/dt`` in closed form (no autograd graph), for ``t`` of shape ``(N, C, H, W)``.

    ``mag = sqrt(dh^2 + dw^2 + eps)`` gives ``dmag/dt[p,q] = (dh + dw)/mag``,
    ``dmag/dt[p+1,q] = -dh/mag`` and ``dmag/dt[p,q+1] = -dw/mag``. With ``u = dh/mag`` and
    ``v = dw/mag`` (computed as ``dh * (1/mag)``, as autograd's ``sqrt`` backward does),
    ``g[p,q] = ((v[p,q] - v[p,q-1]) - u[p-1,q]) + u[p,q]`` (absent terms left out): the
    gradient of :func:`texture_global` without autograd's slice buffers (equal to
    autograd's to float32 rounding, tested).
    """
    d = t[:, :, :-1, :-1]
    dh = d - t[:, :, 1:, :-1]
    dw = d - t[:, :, :-1, 1:]
    inv = dh * dh
    inv.add_(dw * dw).add_(EPS)
    inv = torch.sqrt(inv).reciprocal_()
    dh.mul_(inv)
    dw.mul_(inv)
    g = torch.zeros_like(t)
    g[:, :, :-1, :-1].add_(dw)
    g[:, :, :-1, 1:].sub_(dw)
    g[:, :, 1:, :-1].sub_(dh)
    g[:, :, :-1, :-1].add_(dh)
    return g
