"""GL-AM's local pass through the graph's tail on the ROI's cone only.

``T_ROI`` reads a ``(window + 1)``-pixel square of the output, so towards the output its
gradient is zero almost everywhere: on paper CARN at 64x64 LR, x4, the upsampler and the
last convolution are 48 % of the local backward pass (measured per segment), yet the
gradient there is non-zero on a few hundred of 65,536 output pixels. As for LAM's tail
(:mod:`glam.engine.tail_crop`), the graph is cut at a *dominator* of the output ``y``: a
cut value ``d`` that every path from the input to ``y`` runs through, so that the rest of
the graph (the *tail*) computes ``y`` from ``d`` alone. The tail is then run again on the
crop of ``d`` that can reach the ROI and differentiated there; ``dT_ROI/dd`` and the
gradients at the tail's taps are zero outside that crop, and the local backward goes on
from ``d`` through the rest of the segments as before (:class:`glam.engine.backward.LocalBackward`).

Which value, and how far the tail reaches, is structural and measured, never assumed:

* candidates are the segmented graph's cut values that dominate ``y``
  (:func:`glam.engine.tail_crop.dominators`), whose output is an integer multiple of them
  and whose tail holds at most half of the graph's operations (or :data:`MAX_PROBED_OPS`);
* from the last candidate backwards, the tail alone runs on a :data:`PROBE_SIDE`-pixel
  value with a 2x2 NaN block at its centre (:func:`glam.engine.crop.nan_footprint`); the
  earliest candidate whose footprint stays inside the probe is kept (a global operation,
  or a reach wider than the probe, ends the search); the result is cached per graph,
  participation pattern and size;
* on each analysis the crop's own forward output at the ROI must equal ``y`` there
  (:data:`CHECK_ULPS`); a positional operation, which the NaN probe cannot see, fails this
  check, as do window partitions that do not line up with the image's, and the local pass
  then runs on the full graph; so it does where the tail raises on the crop's size.

The crop's convolutions run on smaller tensors, where torch may pick other kernels, so the
local maps equal the full pass's to float32 rounding, not bit for bit (tested);
``GLAM_LOCAL_TAIL=0`` turns this off.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from glam.engine.crop import nan_footprint, span
from glam.engine.segments import SegmentedGraph
from glam.engine.tail_crop import PROBE_ERRORS, dominators, input_dependent, nan_block
from glam.engine.texture import texture_roi
from torch import fx

#: The tail's NaN probe runs on a value of this many pixels a side.
PROBE_SIDE = 16

#: The crop is used only when it is at most this share of the dominator's pixels.
MAX_SHARE = 0.5

#: The crop's output at the ROI must equal the full output there within this many float32
#: epsilons of its largest magnitude (other kernels on smaller tensors round differently).
CHECK_ULPS = 64

#: A tail of more operations than this and than half of the graph's is not probed.
MAX_PROBED_OPS = 64

@dataclass(frozen=True)
class TailPlan:
    """Where the local pass leaves the full graph (structural; no ROI yet).

    Attributes
    ----------
    cut:
        Cut id of the dominator ``d`` in the segmented graph.
    node:
        Its name in the tapped graph.
    graph:
        ``graph(d) -> (y, (f_t, ...))``: the tail, with the outputs of the taps in it.
    taps:
        Tap indices of those outputs, in order.
    reach:
        ``(up, down, left, right)`` in output pixels of a 2x2 block of ``d``.
    scale:
        Output pixels per pixel of ``d``.
    """

    cut: int
    node: str
    graph: fx.GraphModule
    taps: tuple[int, ...]
    reach: tuple[int, int, int, int]
    scale: int


def enabled(device: torch.device) -> bool:
    """Whether the local pass may use a tail crop: on CPU, unless ``GLAM_LOCAL_TAIL=0``."""
    return device.type == "cpu" and os.environ.get("GLAM_LOCAL_TAIL", "1") != "0"


def tail_graph(gm: fx.GraphModule, node: str) -> tuple[fx.GraphModule, tuple[int, ...]] | None:
    """``(graph(d) -> (y, (f_t, ...)), tap indices)`` for the tail after ``node`` of the
    tapped graph ``gm`` (``gm(x) -> (y, (f_0, ...))``), or ``None`` when the tail reads an
    input-dependent value other than ``node`` (``node`` does not dominate ``y``)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    y, tap_nodes = out.args[0]
    dep = input_dependent(gm.graph)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    after = False
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        if n.name == node:
            env[n] = graph.placeholder("d")
            after = True
            continue
        if n in dep and not after:
            continue  # before the cut: only the cut value may be read after it
        if any(a not in env for a in n.all_input_nodes):
            return None
        env[n] = graph.node_copy(n, lambda a: env[a])
    if not after or y not in env:
        return None
    # the taps computed after the cut (the cut value's own tap, if any, is the local pass's)
    taps = tuple(i for i, t in enumerate(tap_nodes) if t in env and t in dep and t.name != node)
    graph.output((env[y], tuple(env[tap_nodes[i]] for i in taps)))
    return fx.GraphModule(gm, graph), taps


def _probe(tail: fx.GraphModule, channels: int, dtype: torch.dtype) -> tuple[tuple[int, int, int, int], int] | None:
    """The tail's reach and scale from a NaN block at the centre of a probe value."""
    gen = torch.Generator().manual_seed(0)
    c = PROBE_SIDE // 2 - 1
    d = nan_block(torch.rand(1, channels, PROBE_SIDE, PROBE_SIDE, generator=gen, dtype=dtype), c, c)
    try:
        with torch.no_grad():
            yp = tail(d)[0]
    except PROBE_ERRORS:
        return None
    if not isinstance(yp, torch.Tensor) or yp.dim() != 4:
        return None
    hp, wp = int(yp.shape[-2]), int(yp.shape[-1])
    if hp % PROBE_SIDE or wp % PROBE_SIDE or hp != wp:
        return None
    s = hp // PROBE_SIDE
    extent = nan_footprint(yp, s, c, c)
    if isinstance(extent, str):  # "none" or "border": no local reach to measure
        return None
    return extent, s


class TailPlans:
    """:class:`TailPlan` per graph, participation pattern and dominator size (weakly keyed
    by the graph, as :class:`glam.engine.segments.SegmentCache`)."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, TailPlan | None]] = (
            weakref.WeakKeyDictionary()
        )

    def get(
        self, gm: fx.GraphModule, seg: SegmentedGraph, flags: Sequence[bool],
        values: Sequence[object], y: torch.Tensor,
    ) -> TailPlan | None:
        """The plan for this forward pass (found and cached on first use)."""
        shapes = tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else () for v in values)
        key = (tuple(flags), tuple(y.shape), shapes)
        per_graph = self._cache.setdefault(gm, {})
        if key not in per_graph:
            per_graph[key] = find_plan(gm, seg, values, y)
        return per_graph[key]


PLANS = TailPlans()


def plan_for(
    gm: fx.GraphModule, seg: SegmentedGraph, flags: Sequence[bool],
    values: Sequence[object], y: torch.Tensor,
) -> TailPlan | None:
    """The cached plan for this forward pass, or ``None`` where the tail crop is off
    (:func:`enabled`)."""
    return PLANS.get(gm, seg, flags, values, y) if enabled(y.device) else None


def find_plan(
    gm: fx.GraphModule, seg: SegmentedGraph, values: Sequence[object], y: torch.Tensor
) -> TailPlan | None:
    """The earliest cut value that dominates ``y`` and whose tail has a local reach (see the
    module's docstring), or ``None``."""
    if not seg.cut_names:
        return None
    H, W = int(y.shape[-2]), int(y.shape[-1])
    doms = {n.name for n in dominators(gm.graph)}
    ops = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    ops_after = {name: len(ops) - 1 - i for i, name in enumerate(ops)}
    best: TailPlan | None = None
    for k in reversed(range(seg.n_cuts)):
        name = seg.cut_names[k]
        v = values[k]
        if name not in doms or not isinstance(v, torch.Tensor) or v.dim() != 4:
            continue
        h, w = int(v.shape[-2]), int(v.shape[-1])
        if h < 2 or w < 2 or H % h or W % w or H // h != W // w:
            continue
        if ops_after.get(name, 0) > max(MAX_PROBED_OPS, len(ops) // 2):
            break  # the tail holds most of the graph: its probe would cost a forward pass
        built = tail_graph(gm, name)
        if built is None:
            continue
        tail, taps = built
        probed = _probe(tail, int(v.shape[1]), v.dtype)
        if probed is None or probed[1] != H // h:
            break  # a global operation or a reach wider than the probe: earlier ones too
        best = TailPlan(k, name, tail, taps, probed[0], probed[1])
    return best


@dataclass
class TailGradients:
    """What the crop gives the local pass: ``dT_ROI/dd`` and the tail taps' gradients, all
    at full size (zero outside the crop)."""

    cut: int
    grad_d: torch.Tensor
    tap_grads: dict[int, torch.Tensor]
    crop: tuple[int, int, int, int]  # top, bottom, left, right in d's pixels


def _scatter(full_like: torch.Tensor, part: torch.Tensor | None, s: int, t: int, lf: int) -> torch.Tensor:
    g = torch.zeros_like(full_like)
    if part is not None:
        g[..., s * t : s * t + part.shape[-2], s * lf : s * lf + part.shape[-1]] = part
    return g


def tail_gradients(
    plan: TailPlan,
    values: Sequence[object],
    taps: Sequence[torch.Tensor],
    y: torch.Tensor,
    roi: tuple[int, int, int],
) -> TailGradients | None:
    """The local gradients of the tail from the crop of ``d`` that can reach the ROI, or
    ``None`` (the crop is too large a share, the tail fails on it, a tap does not scale
    with ``d``, or the crop's output at the ROI differs from ``y``'s: run the full local
    pass)."""
    top, left, window = roi
    d = values[plan.cut]
    if not isinstance(d, torch.Tensor):
        return None
    h, w = int(d.shape[-2]), int(d.shape[-1])
    H, W = int(y.shape[-2]), int(y.shape[-1])
    s = plan.scale
    up, down, lft, rgt = plan.reach
    t, b = span(top, min(H - 1, top + window), up, down, s, h)
    lf, rt = span(left, min(W - 1, left + window), lft, rgt, s, w)
    if (b - t) * (rt - lf) > MAX_SHARE * h * w:
        return None
    dc = d.detach()[..., t:b, lf:rt].clone().requires_grad_(True)
    try:  # a tail may run only at some sizes (a window partition of fixed shape)
        with torch.enable_grad():
            yc, tail_taps = plan.graph(dc)
    except PROBE_ERRORS:
        return None
    r0, c0 = top - s * t, left - s * lf
    n = window + 1  # T_ROI reads window + 1 rows and columns of y (its differences)
    got = yc.detach()[..., r0 : r0 + n, c0 : c0 + n]
    want = y.detach()[..., top : top + n, left : left + n]
    if got.shape != want.shape:
        return None
    scale = float(want.abs().max()) if want.numel() else 0.0
    tol = CHECK_ULPS * float(torch.finfo(want.dtype).eps) * scale
    if not float((got - want).abs().max()) <= tol:
        return None
    scales: dict[int, int] = {}
    for i, ft in zip(plan.taps, tail_taps, strict=True):
        full = taps[i]
        fh, fw = int(full.shape[-2]), int(full.shape[-1])
        if fh % h or fw % w or fh // h != fw // w:
            return None
        si = fh // h
        if tuple(ft.shape[-2:]) != (si * (b - t), si * (rt - lf)) or ft.shape[:-2] != full.shape[:-2]:
            return None
        scales[i] = si
    inputs = [dc] + [ft for ft in tail_taps if ft.requires_grad]
    objective = texture_roi(yc, r0, c0, window).sum()
    grads = torch.autograd.grad(objective, inputs, allow_unused=True)
    by_tap: dict[int, torch.Tensor | None] = {}
    k = 1
    for i, ft in zip(plan.taps, tail_taps, strict=True):
        if ft.requires_grad:
            by_tap[i] = grads[k]
            k += 1
        else:
            by_tap[i] = None
    tap_grads = {i: _scatter(taps[i], g, scales[i], t, lf) for i, g in by_tap.items()}
    return TailGradients(plan.cut, _scatter(d, grads[0], 1, t, lf), tap_grads, (t, b, lf, rt))


def describe(plan: TailPlan, grads: TailGradients) -> str:
    """One line for notes and logs."""
    t, b, lf, rt = grads.crop
    h, w = (int(d) for d in grads.grad_d.shape[-2:])
    return f"local pass: tail from {plan.node} on {b - t}x{rt - lf} of {h}x{w}"
