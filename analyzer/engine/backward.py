"""The two backward passes of GL-AM over a :class:`~glam.engine.segments.SegmentedGraph`.

* :class:`LocalBackward`: ``dT_ROI(y)/df_i`` for every tap, one segment at a time in reverse
  execution order (the chain rule applied piecewise).
* :class:`GlobalGradients`: ``G_j = dT_Global(f_j)/df_parent(j)``, walking only the
  segments between ``parent(j)`` and ``j``.

Both run on the graph of one forward pass (kept with ``retain_graph``), one after the
other (:func:`glam.engine.glam.compute_glam`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from glam.engine import kernels
from glam.engine.segments import SegmentedGraph, X

try:  # the engine entry point torch.autograd.grad ends in, minus its argument checks
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - older or newer torch: the public API
    _engine_run_backward = None


def _grad(
    out: torch.Tensor, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor | None
) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(out, inputs, grad_out, retain_graph=True, allow_unused=True)``.

    GL-AM makes one call per graph segment in each pass (1,200 on paper-size RCAN), with
    ``out`` and ``grad_out`` already matching; going straight to the engine skips
    ``torch.autograd.grad``'s per-call argument normalisation and shape checks (about 60
    microseconds a call here), with the same result.
    """
    if _engine_run_backward is None:
        return torch.autograd.grad(
            out, list(inputs), grad_outputs=grad_out, retain_graph=True, allow_unused=True
        )
    if grad_out is None:
        grad_out = torch.ones_like(out, memory_format=torch.preserve_format)
    return _engine_run_backward(
        (out,), (grad_out,), True, False, tuple(inputs), True, accumulate_grad=False
    )


def _accumulate(
    store: list[torch.Tensor | None], idx: Sequence[int], grads: Sequence[torch.Tensor | None]
) -> None:
    """``store[i] += g`` for each pair (a missing entry or gradient counts as 0)."""
    for i, g in zip(idx, grads, strict=True):
        if g is not None:
            old = store[i]
            store[i] = g if old is None else old + g


class LocalBackward:
    """One backward pass of ``T_ROI(y)``, run segment by segment.

    Parameters
    ----------
    seg:
        The segmented graph.
    taps, leaves:
        Tap outputs and cut-point leaves of the forward pass.
    """

    def __init__(
        self, seg: SegmentedGraph, taps: Sequence[torch.Tensor], leaves: Sequence[object]
    ) -> None:
        self.seg = seg
        self.taps = taps
        self.leaves = leaves
        self.usable = [isinstance(u, torch.Tensor) and u.requires_grad for u in leaves]
        self.cut_grads: list[torch.Tensor | None] = [None] * seg.n_cuts
        self.inner_grads: list[torch.Tensor | None] = [None] * len(taps)

    def _backprop(self, out: torch.Tensor, grad_out: torch.Tensor | None, key: int | str) -> None:
        if not out.requires_grad:
            return
        reads = [k for k in self.seg.reads[key] if k != X and self.usable[k]]
        inner = [t for t in self.seg.inner_taps[key] if self.taps[t].requires_grad]
        inputs = [self.leaves[k] for k in reads] + [self.taps[t] for t in inner]
        if not inputs:
            return
        got = _grad(out, inputs, grad_out)
        _accumulate(self.cut_grads, reads, got[: len(reads)])
        _accumulate(self.inner_grads, inner, got[len(reads) :])

    def seed(self, objective: torch.Tensor, y: torch.Tensor) -> None:
        """Start from the scalar ``T_ROI(y)``: back through the output's segment."""
        if self.seg.y_cut is not None:
            if y.requires_grad:
                (g_y,) = torch.autograd.grad(objective, [y], retain_graph=True)
                self.cut_grads[self.seg.y_cut] = g_y
        else:
            self._backprop(objective, None, "y")

    def step(self, k: int, values: Sequence[object]) -> torch.Tensor | None:
        """Back through cut ``k``'s segment; returns ``dT_ROI/dv_k`` (``None`` if 0).

        Call for ``k = n_cuts - 1, ..., 0`` in turn: by then every consumer of ``v_k`` has
        added its share. The gradient is released here (the caller keeps it if needed).
        """
        g = self.cut_grads[k]
        if g is None:
            return None
        self._backprop(values[k], g, k)  # type: ignore[arg-type]
        self.cut_grads[k] = None
        return g


class GlobalGradients:
    """``G_j = dT_Global(f_j)/df_parent(j)`` for participating taps.

    The cotangent of ``T_Global`` at ``f_j`` is taken in closed form
    (:func:`glam.engine.kernels.texture_grad_and_energy`) and walked back through the segments
    between ``parent(j)`` and ``j``; ``A(G_j)`` applies GLAM.md's vanishing-weights rule, so
    a layer whose Grad-CAM weights are float rounding has a key of exactly 0, whichever way
    the gradient was rounded.
    """

    def __init__(
        self,
        seg: SegmentedGraph,
        x: torch.Tensor,
        taps: Sequence[torch.Tensor],
        values: Sequence[object],
        leaves: Sequence[object],
        parents: Sequence[int],
    ) -> None:
        self.seg, self.x, self.taps, self.values, self.leaves = seg, x, taps, values, leaves
        self.parents = parents
        self.usable = [isinstance(u, torch.Tensor) and u.requires_grad for u in leaves]

    def _walk(
        self, j: int, out: torch.Tensor, grad_out: torch.Tensor | None
    ) -> torch.Tensor:
        i = self.parents[j]
        seg = self.seg
        target = X if i < 0 else seg.cut_of_tap[i]
        plan = seg.walk_plan(seg.cut_of_tap[j], i, target)
        acc: dict[int, torch.Tensor] = {}

        def step(o: torch.Tensor, go: torch.Tensor | None, reads: list[int]) -> None:
            if not o.requires_grad:
                return
            rs = [r for r in reads if r == X or self.usable[r]]
            if not rs:
                return
            got = _grad(o, [self.x if r == X else self.leaves[r] for r in rs], go)  # type: ignore[misc]
            for r, g in zip(rs, got, strict=True):
                if g is not None:
                    acc[r] = g if r not in acc else acc[r] + g

        step(out, grad_out, plan[0][1])
        for d, reads in plan[1:]:
            if d in acc:
                step(self.values[d], acc.pop(d), reads)  # type: ignore[arg-type]
        G = acc.get(target)
        if G is None:
            src = self.x if i < 0 else self.leaves[target]
            return torch.zeros_like(src)  # type: ignore[arg-type]
        return G

    def walk(self, j: int, cotangent: torch.Tensor) -> torch.Tensor:
        """``G_j`` alone (no Grad-CAM key): the batched path takes the keys of many layers
        together (:func:`glam.engine.batched.gradcam_keys`)."""
        return self._walk(j, self.taps[j], cotangent)

    def gradient(
        self, j: int, cotangent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(G_j, A(G_j), vanished)`` for participating tap ``j`` (``A`` detached,
        ``H_i x W_i``; ``vanished``: the vanishing-weights rule made it 0).

        ``cotangent`` is ``dT_Global/df_j`` in closed form
        (:func:`glam.engine.kernels.texture_grad_and_energy`).
        """
        G = self.walk(j, cotangent)
        raw, vanished = kernels.gradcam_key_flagged(G[0])
        return G, raw.detach(), vanished
