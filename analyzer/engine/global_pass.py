"""GL-AM's global pass: ``G_j = dT_Global(f_j)/df_parent(j)`` and the global map.

:func:`global_pass` takes one participating layer at a time (the fused kernels on CPU),
:func:`global_pass_batched` batches the per-layer work across same-shape layers (the CUDA
path). Side by side with the local pass (:mod:`glam.engine.side_by_side`) the layers are
handed out by a :class:`LayerQueue`, so that the local pass's thread takes the remaining
ones once its own pass is done; each layer's values do not depend on the thread that
computes it, and the maps are accumulated afterwards in execution order
(:func:`finish_shared`), so the result equals the serial pass's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from glam.engine import batched as bk
from glam.engine import kernels
from glam.engine.accumulate import KeyAccumulator
from glam.engine.backward import GlobalGradients
from glam.engine.finite import check_all_finite
from glam.engine.maps import normalize_, normalize_nonnegative, resize
from glam.engine.segments import SegmentedGraph


@dataclass
class GlobalPass:
    """What :func:`global_pass` fills in (per-layer dicts keyed by tap index; entries are
    popped as their records are handed out)."""

    m: dict[int, torch.Tensor] = field(default_factory=dict)  # m_j, native size
    raw: dict[int, torch.Tensor] = field(default_factory=dict)  # A(G_j), parent's size
    energy: dict[int, torch.Tensor] = field(default_factory=dict)  # a_j
    grads: dict[int, torch.Tensor] = field(default_factory=dict)  # G_j (store="tensors")
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    vanished: set[int] = field(default_factory=set)  # A(G_j) = 0 by the vanishing rule
    vanished_t: dict[int, torch.Tensor] = field(default_factory=dict)  # the same, on device
    seconds: float = 0.0
    walker: GlobalGradients | None = None  # shared by the threads of a shared pass


@dataclass(frozen=True)
class GlobalInputs:
    """What a global pass reads: the segmented graph's forward pass and each tap's facts
    (one object for :func:`global_pass`, :func:`global_pass_batched`, :func:`finish_shared`
    and :func:`help_global_pass`)."""

    seg: SegmentedGraph
    x: torch.Tensor
    size: tuple[int, int]  # the output's H x W: the keys' size
    taps: Sequence[torch.Tensor]
    values: Sequence[object]
    leaves: Sequence[object]
    parents: Sequence[int]
    flags: Sequence[bool]  # participating
    names: Sequence[str]
    keep_grads: bool  # keep G_j (store="tensors")
    chunk_size: int  # layers whose keys are accumulated together

    def layers(self) -> list[int]:
        """The participating taps, in execution order."""
        return [j for j in range(len(self.taps)) if self.flags[j]]

    def chunks(self) -> list[list[int]]:
        """The participating taps in execution order, ``chunk_size`` at a time: the groups
        whose keys are accumulated together."""
        layers = self.layers()
        return [layers[i : i + self.chunk_size] for i in range(0, len(layers), self.chunk_size)]

    def walker(self) -> GlobalGradients:
        """A new walker of ``G_j`` over this forward pass."""
        return GlobalGradients(self.seg, self.x, self.taps, self.values, self.leaves, self.parents)


def global_layer(
    out: GlobalPass, walker: GlobalGradients, taps: Sequence[torch.Tensor], j: int,
    keep_grads: bool,
) -> None:
    """``G_j``, ``A(G_j)``, ``a_j`` and ``m_j = N(R(N(A(G_j)), (H_j, W_j))) * N(a_j)`` of
    participating tap ``j`` into ``out`` (the same values whichever thread runs it, at the
    same thread count)."""
    f = taps[j].detach()
    cotangent, a = kernels.texture_grad_and_energy(f)  # dT_Global/df_j, mean_c |f_j|
    G, raw, vanished = walker.gradient(j, cotangent)
    del cotangent
    if vanished:
        out.vanished.add(j)
    # N(N(z)) = N(z) exactly (z >= 0)
    m = normalize_nonnegative(raw)
    if tuple(m.shape) != tuple(f.shape[-2:]):
        m = normalize_(resize(m, f.shape[-2:]))
    out.m[j] = m.mul_(normalize_nonnegative(a))
    out.raw[j], out.energy[j] = raw, a
    if keep_grads:
        out.grads[j] = G.detach()


def _accumulate_chunk(
    out: GlobalPass, acc: KeyAccumulator, chunk: Sequence[int], inp: GlobalInputs
) -> None:
    check_all_finite(
        [out.raw[j] for j in chunk],
        [f"the global gradient of tap {j} ({inp.names[j]})" for j in chunk],
    )
    acc.add_maps([out.m[j] for j in chunk], inp.size)


def global_pass(
    out: GlobalPass,
    inp: GlobalInputs,
    on_chunk: Callable[[int], None],
    shared: Callable[[], int | None] | None = None,
) -> None:
    """The global map into ``out``: ``G_j`` and ``m_j`` per participating layer, keys
    accumulated in chunks of ``inp.chunk_size`` layers; ``on_chunk(j)`` after each chunk
    (``j`` its last tap).

    With ``shared`` (the passes side by side), the layers are claimed one at a time from
    ``shared()`` (``None``: none left), so that another thread may take some of them too
    (:func:`help_global_pass`); the maps are then accumulated by :func:`finish_shared`,
    once both are done, in the same order."""
    t0 = time.perf_counter()
    walker = out.walker or inp.walker()
    if shared is not None:
        while (j := shared()) is not None:
            global_layer(out, walker, inp.taps, j, inp.keep_grads)
        out.seconds = time.perf_counter() - t0
        return
    acc = KeyAccumulator()
    for chunk in inp.chunks():
        for j in chunk:
            global_layer(out, walker, inp.taps, j, inp.keep_grads)
        _accumulate_chunk(out, acc, chunk, inp)
        on_chunk(chunk[-1])
    out.maps = acc.finish(inp.size, inp.x.device)
    out.seconds = time.perf_counter() - t0


def finish_shared(out: GlobalPass, inp: GlobalInputs) -> None:
    """Accumulate the maps of a shared global pass, in execution order, in chunks as
    :func:`global_pass` does."""
    t0 = time.perf_counter()
    acc = KeyAccumulator()
    for chunk in inp.chunks():
        _accumulate_chunk(out, acc, chunk, inp)
    out.maps = acc.finish(inp.size, inp.x.device)
    out.seconds += time.perf_counter() - t0


class LayerQueue:
    """Participating layers handed out one at a time to the threads of a shared global
    pass (thread-safe)."""

    def __init__(self, layers: Sequence[int]) -> None:
        self._layers = list(layers)
        self._next = 0
        self._lock = threading.Lock()

    def __call__(self) -> int | None:
        with self._lock:
            if self._next >= len(self._layers):
                return None
            self._next += 1
            return self._layers[self._next - 1]


def help_global_pass(out: GlobalPass, queue: LayerQueue, inp: GlobalInputs) -> None:
    """Take layers of a shared global pass from ``queue`` until none is left (the local
    pass's thread, once its own pass is done)."""
    walker = out.walker
    if walker is None:  # not set up for sharing: the global pass takes every layer itself
        return
    while (j := queue()) is not None:
        global_layer(out, walker, inp.taps, j, inp.keep_grads)


def global_pass_batched(
    out: GlobalPass, inp: GlobalInputs, on_chunk: Callable[[int], None], compile: bool
) -> None:
    """:func:`global_pass` with the per-layer work batched across same-shape layers
    (:mod:`glam.engine.batched`): per chunk of layers, the texture cotangents and
    energies of each same-shape group at once, one walk per layer, the Grad-CAM keys of
    each same-shape group of ``G_j`` at once, then ``m_j`` and the accumulation per group.
    The host reads one finiteness flag per chunk; the vanishing flags stay on the device
    (``out.vanished_t``) until the chunk's records are copied out."""
    t0 = time.perf_counter()
    walker = inp.walker()
    acc = KeyAccumulator()
    taps = inp.taps

    def nbytes(j: int) -> int:  # cotangent + gradient held per layer of a chunk
        return 2 * taps[j].numel() * taps[j].element_size()

    for chunk in bk.batches(inp.layers(), nbytes, inp.chunk_size):
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j in chunk:
            by_shape.setdefault(tuple(taps[j].shape), []).append(j)
        cot: dict[int, torch.Tensor] = {}
        for group in by_shape.values():
            c, a = bk.texture_and_energy([taps[j] for j in group], compile=compile)
            for k, j in enumerate(group):
                cot[j] = c[k : k + 1]
                out.energy[j] = a[k]
        grads: dict[int, torch.Tensor] = {}
        for j in chunk:  # dT_Global(f_j)/df_parent(j): the autograd walk, one per layer
            grads[j] = walker.walk(j, cot.pop(j))
        by_grad: dict[tuple[int, ...], list[int]] = {}
        for j in chunk:
            by_grad.setdefault(tuple(grads[j].shape), []).append(j)
        for group in by_grad.values():
            keys, vanished = bk.gradcam_keys([grads[j][0] for j in group], compile=compile)
            for k, j in enumerate(group):
                out.raw[j] = keys[k]
                out.vanished_t[j] = vanished[k]
        if inp.keep_grads:
            out.grads.update({j: g.detach() for j, g in grads.items()})
        del grads
        for j, m in zip(
            chunk, bk.global_layer_maps([out.raw[j] for j in chunk], [out.energy[j] for j in chunk]),
            strict=True,
        ):
            out.m[j] = m
        _accumulate_chunk(out, acc, chunk, inp)
        on_chunk(chunk[-1])
    out.maps = acc.finish(inp.size, inp.x.device)
    out.seconds = time.perf_counter() - t0
