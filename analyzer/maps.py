"""Map algebra of GLAM.md: ``N`` (normalise), ``R`` (bicubic resize), ``A`` (Grad-CAM key)
and the Consensus / Variation / Sum combination of per-layer keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def normalize(z: torch.Tensor) -> torch.Tensor:
    """``N(z) = max(z, 0) / max(max(z, 0))`` per map over the last two dims; 0 if the max is 0.

    Works on a single ``(H, W)`` map or a stack ``(..., H, W)`` (each map separately).
    """
    z = torch.clamp(z, min=0)
    m = z.amax(dim=(-2, -1), keepdim=True)
    safe = torch.where(m > 0, m, torch.ones_like(m))
    return torch.where(m > 0, z / safe, torch.zeros_like(z))


def resize(z: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``R(z, size)``: bicubic, ``align_corners=False``; identity when the size matches.

    ``z`` is ``(H, W)`` or a stack ``(B, H, W)`` of same-size maps (resized in one call).
    """
    size = (int(size[0]), int(size[1]))
    if tuple(z.shape[-2:]) == size:
        return z
    if z.dim() == 2:
        return F.interpolate(z[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]
    return F.interpolate(z[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]


def gradcam_key(g: torch.Tensor) -> torch.Tensor:
    """``A(g) = |sum_c mean_{p,q}(g_c) * g_c|`` for ``g`` of shape ``(C, H, W)``.

    Grad-CAM channel weights (the paper's ``grad x W`` reduced over channels, GLAM.md).
    """
    alpha = g.mean(dim=(-2, -1), keepdim=True)
    return (alpha * g).sum(dim=-3).abs()


class KeyAccumulator:
    """Streams per-layer keys (in execution order) into Consensus, Variation and Sum.

    Memory does not grow with depth: only the running sums and the previous key are kept.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.variation: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None
        self.count = 0

    def add(self, key: torch.Tensor) -> None:
        """Add the next participating layer's key (``(H, W)`` at output size)."""
        if self.total is None:
            self.total = key.clone()
            self.variation = torch.zeros_like(key)
        else:
            self.total = self.total + key
            self.variation = self.variation + (key - self.previous).abs()
        self.previous = key
        self.count += 1

    def finish(self, size: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        """Return ``{"consensus", "variation", "sum"}`` as in GLAM.md (zeros if no layer)."""
        if self.total is None:
            zero = torch.zeros(tuple(size), device=device)
            return {"consensus": zero, "variation": zero.clone(), "sum": zero.clone()}
        consensus = normalize(self.total)
        variation = normalize(self.variation)
        return {
            "consensus": consensus,
            "variation": variation,
            "sum": normalize(consensus + variation),
        }
