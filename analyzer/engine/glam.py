"""The GL-AM engine: local and global attribution maps over a tapped graph (GLAM.md).

Cost: one forward pass through the segmented graph (:mod:`glam.engine.segments`), one
backward pass for the local map, run segment by segment, and one short walk per
participating layer for the global map, about one more backward in all, not ``n``
(:mod:`glam.engine.backward`, :mod:`glam.engine.global_pass`); on CPU the local pass runs
the graph's tail on the ROI's crop only (:mod:`glam.engine.local_tail`). Per-layer keys are resized in batches and streamed into
the Consensus / Variation / Sum accumulators (:mod:`glam.engine.maps`). See ``docs/method.md``."""

from __future__ import annotations

import time
import warnings as pywarnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, cast

import numpy as np
import torch
from glam.engine import batched as bk
from glam.engine import global_pass as gp
from glam.engine import kernels, local_tail
from glam.engine.accumulate import KeyAccumulator
from glam.engine.allocator import keep_freed_memory
from glam.engine.backward import LocalBackward
from glam.engine.device import input_in_full_precision
from glam.engine.finite import check_all_finite as _check_all_finite
from glam.engine.finite import check_finite as _check_finite
from glam.engine.maps import (
    normalize_,
    resized_stack,
)
from glam.engine.segments import SegmentCache, SegmentedGraph
from glam.engine.side_by_side import both_passes, passes_side_by_side
from glam.engine.texture import texture_roi
from glam.errors import AnalysisError
from glam.importers.model import ImportedModel
from glam.importers.tap import participation

StoreMode = Literal["maps", "tensors"]
PerLayerMode = Literal["auto", "per-layer", "batched", "compiled"]
PER_LAYER_MODES = ("auto", "per-layer", "batched", "compiled")
KEY_CHUNK = 32  # same-size maps resized together (bounds memory while batching)


@dataclass
class LayerRecord:
    """Everything GL-AM computed for one tap (streamed as it is produced).

    Attributes
    ----------
    index, name, op, parent, participating, reason:
        The tap (``parent`` at the analysed input size; ``-1`` is the model input); why it
        does not participate (``""`` when it does; its ``local_map``, of the gradient's
        first batch element, then enters no map).
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
    local_vanished, global_vanished:
        GLAM.md's vanishing-weights rule set ``A(g_j)`` (``A(G_j)``) to exactly 0.
    """

    index: int
    name: str
    op: str
    parent: int
    participating: bool
    shape: tuple[int, ...]
    local_map: np.ndarray
    reason: str = ""
    global_map: np.ndarray | None = None
    global_grad_map: np.ndarray | None = None
    activation_energy: np.ndarray | None = None
    activation: np.ndarray | None = None
    grad_local: np.ndarray | None = None
    grad_global: np.ndarray | None = None
    local_vanished: bool = False
    global_vanished: bool = False


@dataclass
class GlamMaps:
    """Output of :func:`compute_glam`."""

    output: np.ndarray
    local: dict[str, np.ndarray]
    global_: dict[str, np.ndarray]
    parents: list[int]
    participating: list[bool]
    shapes: list[tuple[int, ...]]
    reasons: list[str] = field(default_factory=list)  # why a tap does not participate
    layers: list[LayerRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    per_layer: str = "per-layer"
    peak_memory_bytes: int | None = None
    local_tail: str = ""  # the local pass's tail crop (glam.engine.local_tail), described


def resolve_per_layer(mode: str, device: torch.device) -> str:
    """The per-layer path for ``mode`` on ``device``: ``auto`` is ``batched`` on CUDA and
    ``per-layer`` (the fused numba kernels) on CPU.

    Raises
    ------
    AnalysisError
        For a mode not in :data:`PER_LAYER_MODES`.
    """
    if mode not in PER_LAYER_MODES:
        raise AnalysisError(
            f"per-layer mode {mode!r} is not known; use one of {', '.join(PER_LAYER_MODES)}"
        )
    if mode == "auto":
        return "batched" if device.type == "cuda" else "per-layer"
    return mode


def validate_roi(out_hw: Sequence[int], top: int, left: int, window: int) -> None:
    """Raise :class:`AnalysisError` for a window < 2 or an ROI not wholly inside the output."""
    H, W = int(out_hw[0]), int(out_hw[1])
    if window < 2:
        raise AnalysisError(f"window {window} is too small; use a window of at least 2 pixels")
    if H < window or W < window:
        raise AnalysisError(
            f"the image is too small: its {H}x{W} output is smaller than the {window}x{window} "
            f"ROI window; use a larger image, or --window {max(2, min(H, W))} or less"
            + ("" if min(H, W) >= 2 else " (the output must be at least 2x2)")
        )
    if top < 0 or left < 0 or top + window > H or left + window > W:
        raise AnalysisError(
            f"ROI (top={top}, left={left}, window={window}) is not inside the {H}x{W} output; "
            f"choose top in [0, {H - window}] and left in [0, {W - window}]"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_key_stack(maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """``N(R(N(m), size))`` for each non-negative map, as one ``(B, H, W)`` stack.

    Same-size maps are resized together. The maps are >= 0 (``|.|`` or products of ``N``),
    so the inner ``N`` is a positive per-map scale that ``R`` (linear) carries through and
    the outer ``N`` removes: ``N(R(N(m))) = N(R(m))``.
    """
    return normalize_(resized_stack(maps, size))


def layer_keys(maps: Sequence[torch.Tensor], size: Sequence[int]) -> list[torch.Tensor]:
    """Per-layer keys ``N(R(N(m), size))`` (see :func:`layer_key_stack`) as a list."""
    return list(layer_key_stack(maps, size)) if maps else []


_SEGMENTS = SegmentCache()


@dataclass
class _LocalPass:
    """What :func:`_local_pass` hands back."""

    raw: list[torch.Tensor]  # A(g_i) for every tap, native size
    vanished: list[bool]  # A(g_i) set to 0 by the vanishing-weights rule
    grads: dict[int, torch.Tensor]  # g_i (store="tensors" only)
    depends: bool  # some participating g_i is non-zero
    maps: dict[str, torch.Tensor]  # Consensus / Variation / Sum at output size
    seconds: float
    tail: str = ""  # the tail crop in use (glam.engine.local_tail), described


def _local_pass(
    seg: SegmentedGraph,
    y: torch.Tensor,
    taps: Sequence[torch.Tensor],
    values: Sequence[object],
    leaves: Sequence[object],
    flags: Sequence[bool],
    names: Sequence[str],
    roi: tuple[int, int, int],
    keep_grads: bool,
    mode: str = "per-layer",
    tail_of: Callable[[], local_tail.TailPlan | None] | None = None,
) -> _LocalPass:
    """The local map: one backward of ``T_ROI(y)``, segment by segment, then the keys.

    ``mode`` ``"batched"``/``"compiled"`` queues the gradients and takes their keys in
    same-shape batches (:class:`glam.engine.batched.KeyBatcher`), with no read back to
    the host until the pass is done. ``tail_of()`` gives the graph's tail plan
    (:mod:`glam.engine.local_tail`): the tail's gradients then come from the ROI's crop,
    and the segments' backward starts at the tail's dominator."""
    t0 = time.perf_counter()
    top, left, window = roi
    n = len(taps)
    local = LocalBackward(seg, taps, leaves)
    plan = tail_of() if tail_of is not None else None
    tail = local_tail.tail_gradients(plan, values, taps, y, roi) if plan is not None else None
    if tail is None:
        local.seed(texture_roi(y, top, left, window).sum(), y)
        first = seg.n_cuts
    else:
        local.cut_grads[tail.cut] = tail.grad_d
        first = tail.cut + 1
    tap_of_cut = {k: j for j, k in seg.cut_of_tap.items()}
    raw: list[torch.Tensor | None] = [None] * n
    vanished = [False] * n
    grads: dict[int, torch.Tensor] = {}
    depends = False
    batcher = bk.KeyBatcher(KEY_CHUNK, compile=mode == "compiled") if mode != "per-layer" else None
    taken = [False] * n

    def take(i: int, g: torch.Tensor) -> None:
        # the raw map is taken as soon as the gradient is final; the activation-sized
        # gradient itself is only kept for store="tensors"
        nonlocal depends
        if keep_grads:
            grads[i] = g
        taken[i] = True
        if batcher is not None:
            batcher.add(i, g[0], flags[i])
            return
        key, vanished[i] = kernels.gradcam_key_flagged(g[0])
        raw[i] = key.detach()
        depends = depends or (flags[i] and bool(g.any()))

    if tail is not None:  # the tail's taps, from the crop (zero outside it)
        for i, g in tail.tap_grads.items():
            take(i, g)
    for k in reversed(range(first)):
        g = local.step(k, values)
        j = tap_of_cut.get(k)
        if g is not None and j is not None:
            take(j, g)
    for i in range(n):  # taps inside segments, and taps the ROI does not reach
        if not taken[i]:
            g = local.inner_grads[i]
            take(i, torch.zeros_like(taps[i]) if g is None else g)
    local.inner_grads.clear()
    if batcher is not None:
        batcher.flush()
        raw = [batcher.keys[i] for i in range(n)]
        flags_host = bk.to_host([torch.stack([batcher.vanished[i] for i in range(n)]), batcher.depends(y.device)])
        vanished, depends = [bool(v) for v in flags_host[0]], bool(flags_host[1])
    raws = cast(list[torch.Tensor], raw)  # every tap has its map by now
    _check_all_finite(raws, [f"the gradient of T_ROI at tap {i} ({nm})" for i, nm in enumerate(names)])
    size = (int(y.shape[-2]), int(y.shape[-1]))
    acc = KeyAccumulator()
    part_idx = [j for j in range(n) if flags[j]]
    for start in range(0, len(part_idx), KEY_CHUNK):
        chunk = part_idx[start : start + KEY_CHUNK]
        acc.add_maps([raws[i] for i in chunk], size)
    maps = acc.finish(size, y.device)
    note = "" if tail is None or plan is None else local_tail.describe(plan, tail)
    return _LocalPass(raws, vanished, grads, depends, maps, time.perf_counter() - t0, note)


@input_in_full_precision
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
    per_layer: PerLayerMode = "auto",
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
    per_layer:
        How the per-layer map work runs: ``"per-layer"`` one layer at a time (the fused
        numba kernels on CPU), ``"batched"`` across same-shape layers with no host reads
        inside the layer loop (:mod:`glam.engine.batched`), ``"compiled"`` the same
        through ``torch.compile`` where it works (else eagerly, with a warning);
        ``"auto"``: ``batched`` on CUDA, ``per-layer`` on CPU. All give the same maps to
        float32 rounding.

    Returns
    -------
    GlamMaps

    Raises
    ------
    AnalysisError
        ROI outside the output, no participating layer, an unknown ``per_layer``.
    NumericalError
        NaN/Inf in the output or a gradient.
    """
    device = x.device
    mode = resolve_per_layer(per_layer, device)
    batched = mode != "per-layer"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if device.type == "cpu":
        keep_freed_memory()  # activation-sized buffers come and go: reuse, don't re-fault
        kernels.warm_up()  # the one-time load of the fused kernels stays out of the timings
    timings: dict[str, float] = {}
    warn: list[str] = []
    x = x.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    # Participation is predicted from the probe-size tap table (spatial taps stay spatial
    # as the input grows) and verified on the real forward; a mismatch re-runs once.
    flags = [t.participating for t in model.taps]
    for _attempt in range(2):
        seg = _SEGMENTS.get(model, flags, x)
        with torch.enable_grad():
            y, taps, values, leaves = seg.module(x)
        reasons = [participation(tuple(t.shape)) for t in taps]
        actual = [not r for r in reasons]
        if actual == flags:
            break
        flags = actual
    if not any(flags):
        raise AnalysisError(
            "no convolution has a spatial output larger than 1x1 at this input size; "
            "GL-AM needs at least one participating layer (use a larger input)"
        )
    parents = _SEGMENTS.parents(model, flags)
    _check_finite(y, "the model output")
    H, W = int(y.shape[-2]), int(y.shape[-1])
    validate_roi((H, W), top, left, window)
    _sync(device)
    timings["forward"] = time.perf_counter() - t0

    # ------------------------------------------- backward: the local pass, the global pass
    names = [t.name for t in model.taps]
    store_grads = store == "tensors"
    n = len(taps)
    glob = gp.GlobalPass()
    inputs = gp.GlobalInputs(seg, x, (H, W), taps, values, leaves, parents, flags, names,
                             store_grads, KEY_CHUNK)
    side_by_side = passes_side_by_side(device, mode, store_grads)
    # the tail's crop on CPU's per-layer path (the batched path is CUDA's, read-back free)
    tail_of = partial(local_tail.plan_for, model.graph, seg, flags, values, y) if not batched else None
    if side_by_side:  # the local pass's thread takes global layers once it is done
        queue = gp.LayerQueue(inputs.layers())
        glob.walker = inputs.walker()
        local = both_passes(
            lambda: _local_pass(seg, y, taps, values, leaves, flags, names,
                                (top, left, window), store_grads, mode, tail_of),
            lambda: gp.global_pass(glob, inputs, lambda _j: None, queue),
            lambda: gp.help_global_pass(glob, queue, inputs),
        )
        gp.finish_shared(glob, inputs)
    else:
        local = _local_pass(
            seg, y, taps, values, leaves, flags, names, (top, left, window), store_grads, mode,
            tail_of,
        )
    local_host = bk.to_host(local.raw) if batched else None  # one copy for all taps
    if not local.depends:
        warn.append(
            f"the output does not depend on the ROI (top={top}, left={left}, window={window}): "
            "every T_ROI gradient is zero, so the local maps are all zero"
        )
    layers: list[LayerRecord] = []
    emitted = 0

    def emit_through(last: int) -> None:
        """Hand out the records of taps ``emitted..last`` (execution order) and drop them."""
        nonlocal emitted
        ready: dict[int, list[np.ndarray]] = {}
        done = [i for i in range(emitted, last + 1) if i in glob.m]
        if batched and done:  # the chunk's global maps and flags in one copy to the host
            arrays = bk.to_host([
                t for i in done
                for t in (glob.m.pop(i), glob.raw.pop(i), glob.energy.pop(i), glob.vanished_t.pop(i))
            ])  # fmt: skip
            for k, i in enumerate(done):
                ready[i] = arrays[4 * k : 4 * k + 3]
                if bool(arrays[4 * k + 3]):
                    glob.vanished.add(i)
        for i in range(emitted, last + 1):
            rec = LayerRecord(
                index=i,
                name=names[i],
                op=model.taps[i].op,
                parent=parents[i],
                participating=flags[i],
                reason=reasons[i],
                shape=tuple(int(d) for d in taps[i].shape),
                local_map=local.raw[i].cpu().numpy() if local_host is None else local_host[i],
                local_vanished=flags[i] and local.vanished[i],
                global_vanished=i in glob.vanished,
            )
            if i in ready:
                rec.global_map, rec.global_grad_map, rec.activation_energy = ready[i]
            elif i in glob.m:
                rec.global_map = glob.m.pop(i).cpu().numpy()
                rec.global_grad_map = glob.raw.pop(i).cpu().numpy()
                rec.activation_energy = glob.energy.pop(i).cpu().numpy()
            if store_grads:
                rec.activation = taps[i][0].detach().cpu().numpy()
                rec.grad_local = local.grads.pop(i)[0].detach().cpu().numpy()
                if i in glob.grads:
                    rec.grad_global = glob.grads.pop(i)[0].detach().cpu().numpy()
            if on_layer is not None:
                on_layer(rec)
            if keep_layers:
                layers.append(rec)
        emitted = max(emitted, last + 1)

    if not side_by_side:  # side by side, both passes are done: the records go out below
        if batched:
            gp.global_pass_batched(glob, inputs, emit_through, compile=mode == "compiled")
        else:
            gp.global_pass(glob, inputs, emit_through)
    emit_through(n - 1)
    _sync(device)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    timings["local"] = local.seconds
    timings["global"] = glob.seconds
    timings["total"] = time.perf_counter() - t0
    for msg in warn:
        pywarnings.warn(msg, stacklevel=2)
    return GlamMaps(
        output=y[0].detach().cpu().numpy(),
        local={k: v.detach().cpu().numpy() for k, v in local.maps.items()},
        global_={k: v.detach().cpu().numpy() for k, v in glob.maps.items()},
        parents=parents,
        participating=flags,
        shapes=[tuple(int(d) for d in t.shape) for t in taps],
        reasons=reasons,
        layers=layers,
        timings=timings,
        warnings=warn,
        per_layer=mode,
        peak_memory_bytes=peak,
        local_tail=local.tail,
    )
