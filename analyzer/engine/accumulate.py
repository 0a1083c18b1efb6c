"""Consensus / Variation / Sum of GLAM.md, accumulated from per-layer keys as they stream.

Sits on :mod:`glam.engine.maps` (normalise, resize) and :mod:`glam.engine.kernels`
(the fused accumulation on CPU); neither imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from glam.engine import kernels
from glam.engine.maps import normalize, normalize_, resized_stack


class KeyAccumulator:
    """Streams per-layer keys (in execution order) into Consensus, Variation and Sum.

    Memory does not grow with depth: only the running sums and the previous key are kept.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.variation: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None

    def add_maps(self, maps: Sequence[torch.Tensor], size: Sequence[int]) -> None:
        """Add the keys ``N(R(m, size))`` of the next non-negative maps, in execution order.

        On CPU the resize runs through the bicubic taps (:func:`glam.engine.kernels.resize_stack`)
        and the normalisation and the running sums are one fused pass
        (:func:`glam.engine.kernels.accumulate_keys`); the keys are never stored.
        """

        resized = resized_stack(maps, size, kernels.resize_stack)
        if not kernels.accumulate_keys(self, resized):
            self.add_stack(normalize_(resized))

    def add_stack(self, keys: torch.Tensor) -> None:
        """Add the next participating layers' keys ``(B, H, W)``, in execution order."""
        if keys.shape[0] == 0:
            return
        if self.total is None:
            self.total = keys.sum(dim=0)
            self.variation = torch.zeros_like(keys[0])
        else:
            self.total += keys.sum(dim=0)
            self.variation += (keys[0] - self.previous).abs_()
        if keys.shape[0] > 1:
            self.variation += (keys[1:] - keys[:-1]).abs_().sum(dim=0)
        self.previous = keys[-1]

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
