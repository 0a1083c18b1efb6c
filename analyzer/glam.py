"""The GL-AM engine: local and global attribution maps over a tapped graph (GLAM.md).

Cost: one forward pass through the segmented graph, one backward for the local map (run
segment by segment), and one *local* autograd call per participating tap for the global
map — about one more backward in total, not ``n`` (see :mod:`analyzer.segments`).
"""

from __future__ import annotations

import time
import warnings as pywarnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from analyzer.errors import AnalysisError, NumericalError
from analyzer.maps import KeyAccumulator, gradcam_key, normalize, resize
from analyzer.segments import SegmentedGraph, X, build_segmented
from analyzer.texture import texture_global, texture_global_grad, texture_roi
from importers.model import ImportedModel
from importers.tap import participating

StoreMode = Literal["maps", "tensors"]
KEY_CHUNK = 32  # same-size maps resized together (bounds memory while batching)


@dataclass
class LayerRecord:
    """Everything GL-AM computed for one tap (streamed as it is produced).

    Attributes
    ----------
    index, name, op, parent, participating:
        The tap (``parent`` at the analysed input size; ``-1`` is the model input).
    shape:
        Tap output shape ``(1, C, H_j, W_j)``.
    local_map:
        ``A(g_j)`` (un-normalised, native ``H_j x W_j``); the local key is
        ``N(R(N(local_map), (H, W)))``.
    global_map:
        ``m_j = N(R(N(A(G_j)), (H_j, W_j))) * N(a_j)`` (native ``H_j x W_j``), participating
        taps only; the global key is ``N(R(N(global_map), (H, W)))``.
    global_grad_map:
        ``A(G_j)`` un-normalised, at the parent's resolution (participating taps only).
    activation_energy:
        ``a_j = mean_c |f_j|`` (participating taps only).
    activation, grad_local, grad_global:
        Raw signed ``f_j``, ``g_j``, ``G_j`` (``C x H x W``), only with ``store="tensors"``.
    """

    index: int
    name: str
    op: str
    parent: int
    participating: bool
    shape: tuple[int, ...]
    local_map: np.ndarray
    global_map: np.ndarray | None = None
    global_grad_map: np.ndarray | None = None
    activation_energy: np.ndarray | None = None
    activation: np.ndarray | None = None
    grad_local: np.ndarray | None = None
    grad_global: np.ndarray | None = None


@dataclass
class GlamMaps:
    """Output of :func:`compute_glam`."""

    output: np.ndarray
    local: dict[str, np.ndarray]
    global_: dict[str, np.ndarray]
    parents: list[int]
    participating: list[bool]
    shapes: list[tuple[int, ...]]
    layers: list[LayerRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def validate_roi(out_hw: Sequence[int], top: int, left: int, window: int) -> None:
    """Raise :class:`AnalysisError` for a window < 2 or an ROI not wholly inside the output."""
    H, W = int(out_hw[0]), int(out_hw[1])
    if window < 2:
        raise AnalysisError(f"window {window} is too small; use a window of at least 2 pixels")
    if top < 0 or left < 0 or top + window > H or left + window > W:
        raise AnalysisError(
            f"ROI (top={top}, left={left}, window={window}) is not inside the {H}x{W} output; "
            f"choose top in [0, {H - window}] and left in [0, {W - window}]"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise NumericalError(
            f"{what} contains NaN or Inf; the model or input is numerically broken "
            "(check the input range with --input-range)"
        )


# Below this ratio of |mean G_c| to mean |G_c| (max over channels), A(G) is recomputed with
# autograd. Measured on paper-size RCAN/SAN: degenerate layers sit near 1e-9 (closed form vs
# autograd keys differ by 0.1-0.9), all others at >= 1.6e-2 (keys differ by < 1e-6).
GRADCAM_CONDITION = 5e-3


def _gradcam_ill_conditioned(g: torch.Tensor) -> bool:
    """True when the Grad-CAM weights of ``g`` (``C x H x W``) nearly cancel.

    ``sum_{p,q} dT_Global/dt = 0`` per channel, so ``mean_{p,q} G_c`` can be orders of
    magnitude below ``mean |G_c|``; then ``A(G)`` amplifies float rounding (1e-7 relative
    errors in ``G`` become large errors in the normalised key) and only the exact float
    operations of an autograd implementation reproduce it.
    """
    c = g.shape[0]
    flat = g.reshape(c, -1)
    signed = flat.mean(dim=1).abs().max()
    magnitude = flat.abs().mean(dim=1).max()
    return bool(signed <= GRADCAM_CONDITION * magnitude)


def _check_all_finite(maps: Sequence[torch.Tensor], what: Sequence[str]) -> None:
    """One finiteness check for many maps (a NaN/Inf gradient makes its Grad-CAM map
    non-finite); names the first offending map."""
    if not maps:
        return
    sums = torch.stack([m.sum() for m in maps])
    if not bool(torch.isfinite(sums).all()):
        first = int((~torch.isfinite(sums)).nonzero()[0, 0])
        _check_finite(maps[first] * float("nan"), what[first])


def layer_key_stack(maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """``N(R(N(m), size))`` for each non-negative map, as one ``(B, H, W)`` stack.

    Same-size maps are resized together. The maps are >= 0 (``|.|`` or products of ``N``),
    so the inner ``N`` is a positive per-map scale that ``R`` (linear) carries through and
    the outer ``N`` removes: ``N(R(N(m))) = N(R(m))``.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(tuple(m.shape[-2:]), []).append(i)
    if len(groups) == 1:
        return normalize(resize(torch.stack(list(maps)), size))
    out = maps[0].new_empty((len(maps), int(size[0]), int(size[1])))
    for idx in groups.values():
        out[idx] = normalize(resize(torch.stack([maps[i] for i in idx]), size))
    return out


def layer_keys(maps: Sequence[torch.Tensor], size: Sequence[int]) -> list[torch.Tensor]:
    """Per-layer keys ``N(R(N(m), size))`` (see :func:`layer_key_stack`) as a list."""
    return list(layer_key_stack(maps, size)) if maps else []


class _SegmentCache:
    """Segmented graphs per participation pattern (participation depends on input size)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, tuple[bool, ...]], SegmentedGraph] = {}

    def get(self, model: ImportedModel, flags: Sequence[bool]) -> SegmentedGraph:
        key = (id(model.graph), tuple(flags))
        if key not in self._cache:
            self._cache[key] = build_segmented(model.graph, flags)
        return self._cache[key]


_SEGMENTS = _SegmentCache()


def compute_glam(
    model: ImportedModel,
    x: torch.Tensor,
    top: int,
    left: int,
    window: int = 16,
    *,
    store: StoreMode = "maps",
    on_layer: Callable[[LayerRecord], None] | None = None,
    keep_layers: bool = True,
) -> GlamMaps:
    """Compute GL-AM's local and global maps (GLAM.md) for one canonical input.

    Parameters
    ----------
    model:
        Imported model, already on ``x``'s device.
    x:
        Canonical input ``1 x C_in x h x w`` in [0, 1].
    top, left, window:
        ROI in output pixels.
    store:
        ``"tensors"`` also hands out the raw signed ``f_j``, ``g_j`` and ``G_j``.
    on_layer:
        Called with each :class:`LayerRecord` as soon as it is complete (streaming).
    keep_layers:
        Keep the records in the result as well (turn off when streaming large models).

    Returns
    -------
    GlamMaps
    """
    device = x.device
    timings: dict[str, float] = {}
    warn: list[str] = []
    x = x.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    # Participation is predicted from the probe-size tap table (spatial taps stay spatial
    # as the input grows) and verified on the real forward; a mismatch re-runs once.
    flags = [t.participating for t in model.taps]
    for _attempt in range(2):
        seg = _SEGMENTS.get(model, flags)
        with torch.enable_grad():
            y, taps, values, leaves = seg.module(x)
        actual = [participating(tuple(t.shape)) for t in taps]
        if actual == flags:
            break
        flags = actual
    if not any(flags):
        raise AnalysisError(
            "no convolution has a spatial output larger than 1x1 at this input size; "
            "GL-AM needs at least one participating layer (use a larger input)"
        )
    parents = model.parents(flags)
    _check_finite(y, "the model output")
    H, W = int(y.shape[-2]), int(y.shape[-1])
    validate_roi((H, W), top, left, window)
    _sync(device)
    timings["forward"] = time.perf_counter() - t0

    # ------------------------------------------- local: one backward, segment by segment
    t1 = time.perf_counter()
    n = len(taps)
    usable = [isinstance(u, torch.Tensor) and u.requires_grad for u in leaves]
    acc_cut: list[torch.Tensor | None] = [None] * seg.n_cuts
    inner_grads: list[torch.Tensor | None] = [None] * n

    def add(store_: list, idx: int, g: torch.Tensor | None) -> None:
        if g is not None:
            store_[idx] = g if store_[idx] is None else store_[idx] + g

    def backprop_local(out: torch.Tensor, grad_out: torch.Tensor | None, key: int | str) -> None:
        if not out.requires_grad:
            return
        reads = [k for k in seg.reads[key] if k != X and usable[k]]
        inner = [t for t in seg.inner_taps[key] if taps[t].requires_grad]
        inputs = [leaves[k] for k in reads] + [taps[t] for t in inner]
        if not inputs:
            return
        got = torch.autograd.grad(
            out, inputs, grad_outputs=grad_out, retain_graph=True, allow_unused=True
        )
        for k, g in zip(reads, got[: len(reads)], strict=True):
            add(acc_cut, k, g)
        for t, g in zip(inner, got[len(reads) :], strict=True):
            add(inner_grads, t, g)

    objective = texture_roi(y, top, left, window).sum()
    if seg.y_cut is not None:
        if y.requires_grad:
            (g_y,) = torch.autograd.grad(objective, [y], retain_graph=True)
            acc_cut[seg.y_cut] = g_y
    else:
        backprop_local(objective, None, "y")
    tap_of_cut = {k: j for j, k in seg.cut_of_tap.items()}
    grads: list[torch.Tensor | None] = [None] * n
    for k in reversed(range(seg.n_cuts)):
        g = acc_cut[k]
        if g is None:
            continue
        backprop_local(values[k], g, k)
        if k in tap_of_cut:
            grads[tap_of_cut[k]] = g
        acc_cut[k] = None  # free as we go
    for i in range(n):
        if grads[i] is None:
            grads[i] = inner_grads[i]
        if grads[i] is None:
            grads[i] = torch.zeros_like(taps[i])
    part_idx = [j for j in range(n) if flags[j]]
    if all(not bool(grads[i].any()) for i in part_idx):
        warn.append(
            f"the output does not depend on the ROI (top={top}, left={left}, window={window}): "
            "every T_ROI gradient is zero, so the local maps are all zero"
        )
    local_raw = [gradcam_key(g[0]).detach() for g in grads]
    _check_all_finite(
        local_raw,
        [f"the gradient of T_ROI at tap {i} ({t.name})" for i, t in enumerate(model.taps)],
    )
    acc_local = KeyAccumulator()
    for start in range(0, len(part_idx), KEY_CHUNK):
        chunk = part_idx[start : start + KEY_CHUNK]
        acc_local.add_stack(layer_key_stack([local_raw[i] for i in chunk], (H, W)))
    local_maps = acc_local.finish((H, W), device)
    _sync(device)
    timings["local"] = time.perf_counter() - t1

    # ------------------------------------------------ global: one local call per segment
    t2 = time.perf_counter()
    acc_global = KeyAccumulator()
    layers: list[LayerRecord] = []
    global_m: dict[int, torch.Tensor] = {}
    global_raw: dict[int, torch.Tensor] = {}
    global_grads: dict[int, torch.Tensor] = {}
    energy: dict[int, torch.Tensor] = {}

    def emit(i: int) -> None:
        rec = LayerRecord(
            index=i,
            name=model.taps[i].name,
            op=model.taps[i].op,
            parent=parents[i],
            participating=flags[i],
            shape=tuple(int(d) for d in taps[i].shape),
            local_map=local_raw[i].cpu().numpy(),
        )
        if i in global_m:
            rec.global_map = global_m.pop(i).cpu().numpy()
            rec.global_grad_map = global_raw.pop(i).cpu().numpy()
            rec.activation_energy = energy.pop(i).cpu().numpy()
        if store == "tensors":
            rec.activation = taps[i][0].detach().cpu().numpy()
            rec.grad_local = grads[i][0].detach().cpu().numpy()
            if i in global_grads:
                rec.grad_global = global_grads.pop(i)[0].detach().cpu().numpy()
        global_grads.pop(i, None)
        if on_layer is not None:
            on_layer(rec)
        if keep_layers:
            layers.append(rec)

    fallbacks: list[int] = []

    def global_gradient(j: int) -> torch.Tensor:
        """``dT_Global(f_j) / df_parent(j)``, walking only the segments in between."""
        i = parents[j]
        target = X if i < 0 else seg.cut_of_tap[i]
        src = x if i < 0 else leaves[target]
        k_j = seg.cut_of_tap[j]
        between: set[int] = set()
        stack = list(seg.reads[k_j])
        while stack:
            r = stack.pop()
            if r == X or r == target or r in between or not usable[r]:
                continue
            if i >= 0 and i not in seg.tap_ancestors[r]:
                continue
            between.add(r)
            stack.extend(seg.reads[r])
        acc: dict[int, torch.Tensor] = {}

        def step(out: torch.Tensor, grad_out: torch.Tensor | None, key: int) -> None:
            if not out.requires_grad:
                return
            rs = [r for r in seg.reads[key] if r in between or r == target]
            if not rs:
                return
            inputs = [x if r == X else leaves[r] for r in rs]
            got = torch.autograd.grad(
                out, inputs, grad_outputs=grad_out, retain_graph=True, allow_unused=True
            )
            for r, g in zip(rs, got, strict=True):
                if g is not None:
                    acc[r] = g if r not in acc else acc[r] + g

        def walk(seed: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
            acc.clear()
            step(seed[0], seed[1], k_j)
            for d in sorted(between, reverse=True):
                if d in acc:
                    step(values[d], acc.pop(d), d)
            G = acc.get(target)
            return G if G is not None else torch.zeros_like(src)

        # Fast path: the closed-form texture gradient as the segment's cotangent.
        G = walk((taps[j], texture_global_grad(taps[j].detach())))
        if _gradcam_ill_conditioned(G[0]):
            # The Grad-CAM weights of G_j (nearly) vanish, so A(G_j) is rounding noise that
            # only the same float operations reproduce: redo it with autograd of T_Global,
            # as an autograd-based implementation of GLAM.md computes it (see the README).
            with torch.enable_grad():
                G = walk((texture_global(taps[j]).sum(), None))
            fallbacks.append(j)
        return G

    next_emit = 0
    for start in range(0, len(part_idx), KEY_CHUNK):
        chunk = part_idx[start : start + KEY_CHUNK]
        ms: list[torch.Tensor] = []
        for j in chunk:
            G = global_gradient(j)
            raw = gradcam_key(G[0]).detach()
            hj, wj = taps[j].shape[-2:]
            a = taps[j][0].detach().abs().mean(dim=0)
            m = normalize(resize(normalize(raw), (hj, wj))) * normalize(a)
            global_m[j], global_raw[j], energy[j] = m, raw, a
            if store == "tensors":
                global_grads[j] = G.detach()
            ms.append(m)
        _check_all_finite(
            [global_raw[j] for j in chunk],
            [f"the global gradient of tap {j} ({model.taps[j].name})" for j in chunk],
        )
        acc_global.add_stack(layer_key_stack(ms, (H, W)))
        last = chunk[-1]
        while next_emit <= last:
            emit(next_emit)
            next_emit += 1
    while next_emit < n:
        emit(next_emit)
        next_emit += 1
    global_maps = acc_global.finish((H, W), device)
    _sync(device)
    timings["global"] = time.perf_counter() - t2
    timings["global_autograd_layers"] = float(len(fallbacks))
    timings["total"] = time.perf_counter() - t0
    for msg in warn:
        pywarnings.warn(msg, stacklevel=2)
    return GlamMaps(
        output=y[0].detach().cpu().numpy(),
        local={k: v.detach().cpu().numpy() for k, v in local_maps.items()},
        global_={k: v.detach().cpu().numpy() for k, v in global_maps.items()},
        parents=parents,
        participating=flags,
        shapes=[tuple(int(d) for d in t.shape) for t in taps],
        layers=layers,
        timings=timings,
        warnings=warn,
    )
