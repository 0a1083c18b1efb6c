"""GLAM.md taken literally: the reference the fast engine is checked against.

One forward pass of the tapped graph, one ``torch.autograd.grad`` of ``T_ROI(y)`` for every
local gradient, one plain ``torch.autograd.grad`` per participating layer for the global
gradients, eager torch for every formula: no segments, no fused kernels, no batching, no
closed-form gradients. It is slow (each global gradient walks the autograd graph back from
``f_j``) and exists so that ``glam analyze --verify`` can prove, on the user's own model and
input, that :func:`glam.engine.glam.compute_glam` gives the maps of GLAM.md
(:func:`engine_parity`). It reads nothing from the engine: ancestry, participation, the
texture objective and the map algebra are all restated here.
The method it restates, in the project's words and with a worked example: ``docs/method.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from glam.engine.device import input_in_full_precision
from glam.errors import AnalysisError
from torch import fx

VANISHING = 1e-4  # GLAM.md "Vanishing weights"
ENGINE_PARITY_TOLERANCE = 1e-4  # GLAM.md: max abs difference on every normalised map
# float32 resolution of a Grad-CAM key: the weights alpha_c = mean g_c of a layer whose
# weight ratio r = max_c |alpha_c| / max_c mean |g_c| is small are sums that cancel, so any
# float32 gradient (summed in another order) moves them by ~eps32 / r relative; the key
# inherits that. Measured: on generated graphs r = 4.3e-4 gave 1.1e-4 between two correct
# float32 implementations (4.6e-5 / 1.1e-4 of each against float64), i.e. 0.4 eps32 / r;
# on a tiny HVI-CIDNet (community matrix, 2026-12-06) a global key with r = 7.8e-3 differed
# by 2.6e-4 between the engine's per-layer and batched paths and between engine and this
# reference (17 eps32 / r), and a one-ulp change of the input moved this reference's own
# key by 5.6e-4. The bound takes 32 eps32 / r: twice the largest measured between two
# implementations. (It changes only keys with r < 0.038; the final maps keep 1e-4.)
KEY_RESOLUTION = 32 * float(np.finfo(np.float32).eps)


def weight_ratio(g: torch.Tensor) -> float:
    """``max_c |mean g_c| / max_c mean |g_c|`` in float64 (``inf`` for an all-zero ``g``)."""
    g64 = g.detach().double().reshape(g.shape[0], -1)
    magnitude = float(g64.abs().mean(dim=1).max())
    return float(g64.mean(dim=1).abs().max()) / magnitude if magnitude > 0 else float("inf")


def layer_tolerance(ratio: float) -> float:
    """The engine-parity bound of one per-layer map: GLAM.md's 1e-4, or the float32
    resolution ``KEY_RESOLUTION / ratio`` of a key whose weights nearly cancel (a layer
    whose weights vanish has key 0 everywhere and gets 1e-4)."""
    if not ratio > VANISHING:  # vanished (or inf for zero g: exact)
        return ENGINE_PARITY_TOLERANCE
    return max(ENGINE_PARITY_TOLERANCE, KEY_RESOLUTION / ratio)


def N(z: torch.Tensor) -> torch.Tensor:
    """``N(z) = max(z, 0) / max(max(z, 0))``, 0 when that maximum is 0."""
    z = torch.clamp(z, min=0)
    m = z.max()
    return z / m if m > 0 else torch.zeros_like(z)


def R(z: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic resize (``align_corners=False``); the identity when the size matches."""
    if tuple(z.shape) == tuple(size):
        return z
    return F.interpolate(z[None, None], size=tuple(size), mode="bicubic", align_corners=False)[0, 0]


def A(g: torch.Tensor) -> torch.Tensor:
    """``|sum_c mean(g_c) g_c|``, exactly 0 when the weights vanish (GLAM.md)."""
    alpha = torch.stack([g[c].mean() for c in range(g.shape[0])])
    magnitude = float(torch.stack([g[c].abs().mean() for c in range(g.shape[0])]).max())
    signed = float(alpha.abs().max())
    finite = np.isfinite(magnitude) and np.isfinite(signed)  # NaN/Inf stays visible
    if finite and (magnitude == 0 or signed <= VANISHING * magnitude):
        return torch.zeros_like(g[0])
    acc = torch.zeros_like(g[0])
    for c in range(g.shape[0]):
        acc = acc + alpha[c] * g[c]
    return acc.abs()


def mag(t: torch.Tensor) -> torch.Tensor:
    """``sqrt(dh^2 + dw^2 + 1e-12)`` over the ``(H-1) x (W-1)`` differences."""
    H, W = t.shape[-2:]
    dh = t[:, :, : H - 1, : W - 1] - t[:, :, 1:H, : W - 1]
    dw = t[:, :, : H - 1, : W - 1] - t[:, :, : H - 1, 1:W]
    return torch.sqrt(dh**2 + dw**2 + 1e-12)


def T_roi(t: torch.Tensor, top: int, left: int, l: int) -> torch.Tensor:
    """``T_ROI``: ``mag`` summed over the window (indices past the edge are absent)."""
    return mag(t)[:, :, top : top + l, left : left + l].sum()


def T_global(t: torch.Tensor) -> torch.Tensor:
    """``T_Global``: ``mag`` summed over the whole map."""
    return mag(t).sum()


def combine(keys: Sequence[torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
    """Consensus, Variation (with ``|.|``) and Sum of per-layer keys."""
    if not keys:
        zero = torch.zeros(tuple(size))
        return {"consensus": zero, "variation": zero, "sum": zero}
    total = torch.zeros_like(keys[0])
    for k in keys:
        total = total + k
    consensus = N(total)
    variation = torch.zeros_like(keys[0])
    for i in range(1, len(keys)):
        variation = variation + (keys[i] - keys[i - 1]).abs()
    variation = N(variation)
    return {"consensus": consensus, "variation": variation, "sum": N(consensus + variation)}


class _Kinds(fx.Interpreter):
    """Records which nodes carry floating tensors, real or complex (the edges gradients can
    cross: FFTformer's ``rfft2`` / ``irfft2``)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.floating: set[fx.Node] = set()

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        stack = [out]
        while stack:
            v = stack.pop()
            if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
                self.floating.add(n)
                break
            if isinstance(v, (tuple, list)):
                stack.extend(v)
        return out


def reference_parents(graph: fx.GraphModule, x: torch.Tensor) -> tuple[list[int], list[bool]]:
    """``parent(j)`` by a literal ancestor walk over floating-tensor edges, and participation.

    Graph ancestry follows the edges that carry floating tensors (the data flow):
    shape-only edges (``size``, ONNX ``Shape``, integer split sizes) make no layer an
    ancestor of another.
    """
    kinds = _Kinds(graph)
    with torch.no_grad():
        _, taps = kinds.run(x.detach())
    out_node = next(n for n in graph.graph.nodes if n.op == "output")
    tap_nodes = list(out_node.args[0][1])
    # GLAM.md: 4-D, batch size 1 (a batch-folded tap has no place in the image), H, W > 1
    part = [t.dim() == 4 and t.shape[0] == 1 and t.shape[2] > 1 and t.shape[3] > 1 for t in taps]
    parents = []
    for node in tap_nodes:
        seen: set[fx.Node] = set()
        stack = [n for n in node.all_input_nodes if n in kinds.floating]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(m for m in n.all_input_nodes if m in kinds.floating)
        cands = [i for i, t in enumerate(tap_nodes) if t in seen and part[i]]
        parents.append(max(cands) if cands else -1)
    return parents, part


@dataclass
class ReferenceMaps:
    """What :func:`reference_glam` computes (numpy, detached).

    Attributes
    ----------
    local, global_:
        ``{"consensus", "variation", "sum"}`` at output size.
    local_layers, global_layers:
        Per participating tap ``i``: ``N(A(g_i))`` (native size) and ``N(m_i)`` (native
        size), the per-layer maps the keys are resized from.
    parents, participating:
        ``parent(j)`` and participation per tap.
    output:
        ``y`` (``C x H x W``).
    local_ratios, global_ratios:
        Per participating tap, the weight ratio of ``g_i`` / ``G_j`` (:func:`weight_ratio`).
    raw_maxima:
        ``max(sum k)`` and ``max(sum |k_i - k_{i-1}|)`` before ``N``, per family
        (``"local/consensus"`` ...), to carry per-layer resolution into the final maps.
    """

    local: dict[str, np.ndarray]
    global_: dict[str, np.ndarray]
    local_layers: dict[int, np.ndarray] = field(default_factory=dict)
    global_layers: dict[int, np.ndarray] = field(default_factory=dict)
    parents: list[int] = field(default_factory=list)
    participating: list[bool] = field(default_factory=list)
    output: np.ndarray | None = None
    local_ratios: dict[int, float] = field(default_factory=dict)
    global_ratios: dict[int, float] = field(default_factory=dict)
    raw_maxima: dict[str, float] = field(default_factory=dict)


@input_in_full_precision
def reference_glam(
    graph: fx.GraphModule, x: torch.Tensor, top: int, left: int, l: int = 16
) -> ReferenceMaps:
    """GL-AM exactly as GLAM.md states it.

    Parameters
    ----------
    graph:
        A tapped graph (``graph(x) -> (y, taps)``), e.g. ``glam.importers.load(...).graph``.
    x:
        Canonical input ``1 x C x h x w``.
    top, left, l:
        ROI in output pixels.

    Returns
    -------
    ReferenceMaps
    """
    x = x.detach().clone().requires_grad_(True)
    parents, part = reference_parents(graph, x)
    with torch.enable_grad():
        y, taps = graph(x)
        H, W = int(y.shape[-2]), int(y.shape[-1])
        idx = [i for i in range(len(taps)) if part[i]]
        if not idx:
            raise AnalysisError("no participating layer at this input size (use a larger input)")
        wanted = [taps[i] for i in idx]
        usable = [t.requires_grad for t in wanted]
        objective = T_roi(y, top, left, l)
        grads: list[torch.Tensor | None] = [None] * len(idx)
        if objective.requires_grad and any(usable):
            got = torch.autograd.grad(
                objective,
                [t for t, u in zip(wanted, usable, strict=True) if u],
                retain_graph=True,
                allow_unused=True,
            )
            it = iter(got)
            grads = [next(it) if u else None for u in usable]
        out = ReferenceMaps(local={}, global_={}, parents=parents, participating=part)
        local_keys = []
        for i, g in zip(idx, grads, strict=True):
            g = torch.zeros_like(taps[i]) if g is None else g
            out.local_ratios[i] = weight_ratio(g[0])
            native = N(A(g[0].detach()))
            out.local_layers[i] = native.numpy().copy()
            local_keys.append(N(R(native, (H, W))))
        global_keys = []
        for j in idx:
            src = x if parents[j] < 0 else taps[parents[j]]
            f = taps[j]
            G = None
            if f.requires_grad and src.requires_grad:
                (G,) = torch.autograd.grad(T_global(f), [src], retain_graph=True, allow_unused=True)
            if G is None:
                G = torch.zeros_like(src)
            out.global_ratios[j] = weight_ratio(G[0])
            a = f[0].detach().abs().mean(0)
            m = N(R(N(A(G[0].detach())), f.shape[-2:])) * N(a)
            out.global_layers[j] = N(m).numpy().copy()
            global_keys.append(N(R(N(m), (H, W))))
    out.local = {k: v.numpy() for k, v in combine(local_keys, (H, W)).items()}
    out.global_ = {k: v.numpy() for k, v in combine(global_keys, (H, W)).items()}
    for family, keys in (("local", local_keys), ("global", global_keys)):
        out.raw_maxima[f"{family}/consensus"] = float(sum(keys).max())
        out.raw_maxima[f"{family}/variation"] = float(
            sum(((keys[i] - keys[i - 1]).abs() for i in range(1, len(keys))),
                torch.zeros_like(keys[0])).max()
        )
    out.output = y.detach()[0].numpy()
    return out


@dataclass
class EngineParity:
    """Max abs difference between the engine and :func:`reference_glam`.

    Attributes
    ----------
    errors:
        Per map: ``"local/consensus"`` ... ``"global/sum"``, and ``"layers/local"``,
        ``"layers/global"`` (the per-layer map ``N(A(g_i))`` / ``N(m_j)`` worst relative to
        its bound).
    worst_layer:
        For the two ``layers/...`` entries: the tap index of that layer (-1: none).
    bounds:
        The bound each entry of ``errors`` is held to: GLAM.md's 1e-4, raised only where
        float32 cannot resolve a key whose Grad-CAM weights nearly vanish: on that layer's
        map (:func:`layer_tolerance`) and, to first order, on the final maps it enters.
    tolerance:
        GLAM.md's tolerance (1e-4).
    seconds:
        Time of the reference computation.
    """

    errors: dict[str, float]
    worst_layer: dict[str, int]
    tolerance: float = ENGINE_PARITY_TOLERANCE
    seconds: float = 0.0
    bounds: dict[str, float] = field(default_factory=dict)

    def bound(self, key: str) -> float:
        return self.bounds.get(key, self.tolerance)

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    @property
    def worst_map(self) -> str:
        """The entry worst relative to its bound."""
        if not self.errors:
            return ""
        return max(self.errors, key=lambda k: self.errors[k] / self.bound(k))

    @property
    def passed(self) -> bool:
        return all(
            bool(np.isfinite(v)) and v <= self.bound(k) for k, v in self.errors.items()
        )

    def describe(self, names: Sequence[str] = ()) -> str:
        """One line naming the worst map (and layer) and its error."""
        worst = self.worst_map
        text = f"{worst} differs by {self.errors.get(worst, 0.0):.3g}"
        if self.bound(worst) > self.tolerance:
            text += f" (bound {self.bound(worst):.2g}: float32 resolution of near-vanishing weights)"
        layer = self.worst_layer.get(worst, -1)
        if layer >= 0:
            label = f" ({names[layer]})" if layer < len(names) else ""
            text += f" at layer #{layer}{label}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "errors": dict(self.errors),
            "worst_layer": dict(self.worst_layer),
            "bounds": {k: self.bound(k) for k in self.errors},
            "tolerance": self.tolerance,
            "max_error": self.max_error,
            "worst_map": self.worst_map,
            "passed": self.passed,
            "seconds": self.seconds,
        }


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(d.max()) if d.size else 0.0


class ParityMeter:
    """Compares engine output with a :class:`ReferenceMaps`, layer records as they stream."""

    def __init__(self, ref: ReferenceMaps, seconds: float) -> None:
        self.ref = ref
        self.seconds = seconds
        self.errors: dict[str, float] = {"layers/local": 0.0, "layers/global": 0.0}
        self.bounds: dict[str, float] = {"layers/local": ENGINE_PARITY_TOLERANCE,
                                         "layers/global": ENGINE_PARITY_TOLERANCE}
        self.worst: dict[str, int] = {"layers/local": -1, "layers/global": -1}
        self.seen: dict[str, set[int]] = {"layers/local": set(), "layers/global": set()}

    def _layer(self, key: str, index: int, engine: np.ndarray | None,
               ref: np.ndarray | None, ratio: float) -> None:
        if ref is None:
            return
        self.seen[key].add(index)
        e = float("inf") if engine is None else _maxdiff(_normalised(engine), ref)
        bound = layer_tolerance(ratio)
        worst = self.worst[key]
        if worst < 0 or e / bound > self.errors[key] / self.bounds[key]:
            self.errors[key], self.bounds[key], self.worst[key] = e, bound, index

    def add_layer(self, index: int, local_map: np.ndarray, global_map: np.ndarray | None) -> None:
        """One engine layer record: ``A(g_i)`` and ``m_i``, native size, un-normalised."""
        r = self.ref
        self._layer("layers/local", index, local_map, r.local_layers.get(index),
                    r.local_ratios.get(index, float("inf")))
        self._layer("layers/global", index, global_map, r.global_layers.get(index),
                    r.global_ratios.get(index, float("inf")))

    def _final_bounds(self, family: str, ratios: dict[int, float]) -> dict[str, float]:
        """What unresolvable keys may carry into the final maps, to first order: a key off
        by ``d_i`` moves ``sum k`` by ``d_i`` and ``sum |k_i - k_{i-1}|`` by ``2 d_i``; ``N``
        divides by the raw maximum (its own shift at most doubles the error), and Sum
        adds both (its maximum is at least 1). Exactly 1e-4 when every key is resolved."""
        excess = sum(layer_tolerance(r) - ENGINE_PARITY_TOLERANCE for r in ratios.values())
        tol = ENGINE_PARITY_TOLERANCE
        if excess == 0:
            return {f"{family}/{k}": tol for k in ("consensus", "variation", "sum")}
        mx = self.ref.raw_maxima
        dc = 2 * excess / max(mx.get(f"{family}/consensus", 1.0), 1e-12)
        dv = 2 * 2 * excess / max(mx.get(f"{family}/variation", 1.0), 1e-12)
        return {
            f"{family}/consensus": tol + dc,
            f"{family}/variation": tol + dv,
            f"{family}/sum": tol + 2 * (dc + dv),
        }

    def finish(
        self, local: dict[str, np.ndarray], global_: dict[str, np.ndarray]
    ) -> EngineParity:
        for key, refs in (("layers/local", self.ref.local_layers),
                          ("layers/global", self.ref.global_layers)):
            missing = sorted(set(refs) - self.seen[key])
            if missing:  # the engine handed out no record for a participating layer
                self.errors[key], self.bounds[key] = float("inf"), ENGINE_PARITY_TOLERANCE
                self.worst[key] = missing[0]
        for name, maps, refs in (("local", local, self.ref.local), ("global", global_, self.ref.global_)):
            for k, v in refs.items():
                self.errors[f"{name}/{k}"] = _maxdiff(maps[k], v)
        self.bounds.update(self._final_bounds("local", self.ref.local_ratios))
        self.bounds.update(self._final_bounds("global", self.ref.global_ratios))
        return EngineParity(dict(self.errors), dict(self.worst), seconds=self.seconds,
                            bounds=dict(self.bounds))


def _normalised(m: np.ndarray) -> np.ndarray:
    z = np.maximum(np.asarray(m, dtype=np.float32), 0)
    mx = z.max() if z.size else 0.0
    return z / mx if mx > 0 else np.zeros_like(z)
