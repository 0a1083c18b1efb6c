"""How much memory one analysis needs, and a refusal before the work when it does not fit
(issue 23: a 1500x1500 LR image on a 23 GB machine grew to 12.7 GB in 48 s and kept
climbing; nothing compared the need with what the machine had).

The estimate is built from the model's own graph: every value the forward pass produces
(:func:`activation_bytes`) at the analysed input size, extrapolated from two cheap forward
passes at small sizes of the same aspect ratio (each value scales with the input's pixels,
or with their square for global attention). The analysis' peak resident-set growth was
measured against that sum (:data:`GLAM_PER_ACTIVATION` and the other constants below;
``tests/test_memory.py`` measures it again on two models at three sizes), so

``GL-AM ~ 1.45 x activations + output-size key stacks``,
``LAM ~ 1.8 x lam_batch x activations``,

and the run needs the larger of the two, plus, when asked, the raw per-layer tensors
(``--store tensors``), the literal reference (``--verify``) and one more forward pass
without gradients (the import's run-parity check on the analysed input).

:func:`check_memory` compares the estimate with :func:`glam.machine.memory_budget` (the
cgroup limit and ``MemAvailable``) or, on CUDA, the device's free memory, and raises
:class:`~glam.errors.InsufficientMemoryError` naming the estimate, the memory available
and what would fit: the largest centre crop, ``--store maps``, no ``--lam``, another
``--device``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from glam.errors import InsufficientMemoryError
from glam.machine import MemoryBudget, memory_budget

if TYPE_CHECKING:
    from glam.importers.model import ImportedModel

__all__ = [
    "MemoryEstimate",
    "activation_bytes",
    "check_memory",
    "estimate_memory",
]

#: GL-AM's peak resident-set growth per byte of forward activations (autograd keeps them
#: for the local pass; the global pass adds gradients and per-layer temporaries). With the
#: key stacks below, the estimate came out at 1.00-1.16 x the measured peak on carn, rcan
#: and rrdbnet (fixtures, 96-288 px LR), 0.95-0.96 on rnan (64-96 px; global attention),
#: 1.43 on san (its attention maps are not all kept for the backward pass).
GLAM_PER_ACTIVATION = 1.45
#: LAM: each batch of ``lam_batch`` path images costs a forward and backward pass of that
#: batch, plus the path images and their gradients: 0.93-1.12 x the measured peak (rcan,
#: carn; lam_batch 8; 96-288 px).
LAM_PER_ACTIVATION = 1.8
#: ``--store tensors`` hands out each tap's activation and both gradients: 0.93-1.06 x the
#: measured peak (rcan, carn; 96-288 px).
TENSORS_PER_ACTIVATION = 0.75
#: ``--verify`` runs the literal reference, one ``autograd.grad`` per layer, after GL-AM.
VERIFY_PER_ACTIVATION = 1.5
#: The key accumulator resizes up to 32 same-size keys to the output at once (a stack and
#: its resized copy, float32).
KEY_STACK_BYTES_PER_OUTPUT_PIXEL = 32 * 4 * 2
#: Loading numba and its kernels on first use (measured 142 MiB) and other one-time costs.
FIXED_BYTES = 200 * 2**20
#: One more forward pass without gradients (the reference runtime's run-parity check on the
#: analysed input keeps about the two largest values alive at a time, and onnxruntime its
#: arena): counted as a quarter of the activations.
PARITY_FORWARD_PER_ACTIVATION = 0.25
#: Refuse when the estimate exceeds this share of the memory available (the estimate is
#: within about 30 % of measured peaks; the rest of the machine keeps running).
SAFETY = 0.9

_PROFILE_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _tensor_sizes(meta: Any) -> list[tuple[int, int]]:
    """``(numel, itemsize)`` of every tensor in a ShapeProp ``tensor_meta`` value."""
    if meta is None:
        return []
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        n = 1
        for d in meta.shape:
            n *= int(d)
        try:
            item = int(meta.dtype.itemsize)
        except AttributeError:  # pragma: no cover - very old torch
            item = 4
        return [(n, item)]
    if isinstance(meta, (list, tuple)):
        return [s for v in meta for s in _tensor_sizes(v)]
    if isinstance(meta, dict):
        return [s for v in meta.values() for s in _tensor_sizes(v)]
    return []


def _node_bytes(model: ImportedModel, h: int, w: int) -> list[tuple[int, int]]:
    """``(bytes, numel)`` of every value of the graph's forward pass on an ``h x w`` input."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    graph = model.graph
    dev = next((p.device for p in graph.parameters()), torch.device("cpu"))
    x = torch.rand(1, model.conventions.in_channels, h, w, generator=torch.Generator()
                   .manual_seed(0)).to(dev)
    with torch.no_grad():
        ShapeProp(graph).propagate(x)
    out: list[tuple[int, int]] = []
    for node in graph.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        sizes = _tensor_sizes(node.meta.get("tensor_meta"))
        out.append((sum(n * b for n, b in sizes), sum(n for n, _ in sizes)))
    return out


def _probe_sizes(model: ImportedModel, h: int, w: int) -> list[tuple[int, int]]:
    """Two small sizes of the aspect ratio of ``h x w`` (multiples of the graph's required
    multiple), or the size itself when it is small or fixed."""
    c = model.conventions
    if c.fixed_size is not None:
        return [tuple(c.fixed_size)]  # type: ignore[list-item]
    m = int(model.metadata.get("input_multiple") or 1)
    if max(h, w) <= 48:
        return [(h, w)]
    sizes = []
    for side in (24, 48):
        f = side / max(h, w)
        hh = max(m, round(h * f / m) * m, 8 if m == 1 else m)
        ww = max(m, round(w * f / m) * m, 8 if m == 1 else m)
        sizes.append((hh, ww))
    return sizes


def activation_bytes(model: ImportedModel, h: int, w: int) -> int:
    """Bytes of every value the model's forward pass produces on an ``h x w`` LR input.

    Measured by shape propagation at two small sizes of the same aspect ratio
    (:func:`_probe_sizes`) and extrapolated per value: with the input's pixel count (a
    convolution's output), its square (a global attention map) or not at all (pooled
    statistics, shapes), whichever the two probes show.
    """
    sizes = _probe_sizes(model, h, w)
    key = (sizes[0], sizes[-1])
    cache = _PROFILE_CACHE.setdefault(model.graph, {})
    if key not in cache:
        cache[key] = [_node_bytes(model, *s) for s in sizes]
    profiles = cache[key]
    if len(profiles) == 1:  # the size itself (small, or the model's fixed size)
        return int(sum(b for b, _ in profiles[0]))
    (h1, w1), (h2, w2) = sizes
    p1, p2, p = h1 * w1, h2 * w2, h * w
    total = 0.0
    for (_, n1), (b2, n2) in zip(profiles[0], profiles[1], strict=True):
        if b2 <= 0:
            continue
        if n1 <= 0 or n2 <= n1:
            e = 0.0
        else:
            e = min(2.0, max(0.0, round(math.log(n2 / n1) / math.log(p2 / p1))))
        total += b2 * (p / p2) ** e
    return int(total)


@dataclass
class MemoryEstimate:
    """Estimated peak memory of one analysis, in bytes, with its parts."""

    total: int
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """``5.2 GiB of memory (GL-AM 3.1 GiB, LAM 5.0 GiB, ...)``."""
        shown = ", ".join(f"{k} {_gib(v)}" for k, v in self.parts.items() if v > 0)
        text = f"{_gib(self.total)} of memory"
        return f"{text} ({shown})" if shown else text


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 * 0.1 else f"{n / 2**20:.0f} MiB"


def estimate_memory(
    model: ImportedModel,
    h: int,
    w: int,
    *,
    lam: bool = False,
    lam_batch: int = 8,
    store: str = "maps",
    verify: bool = False,
    parity_forward: bool = True,
) -> MemoryEstimate:
    """Peak memory of analysing an ``h x w`` LR input (see the module docstring).

    Parameters
    ----------
    model:
        The imported model.
    h, w:
        LR input size (after any crop).
    lam, lam_batch:
        LAM and its batch of path images.
    store:
        ``maps`` or ``tensors`` (raw per-layer tensors handed to the archive writer).
    verify:
        The literal reference runs too.
    parity_forward:
        Leave room for one forward pass without gradients (the run-parity check).
    """
    c = model.conventions
    if c.fixed_size is not None:
        h, w = c.fixed_size
    act = activation_bytes(model, h, w)
    out_h, out_w = c.output_size(h, w)
    out_px = max(1, out_h) * max(1, out_w)
    glam = int(GLAM_PER_ACTIVATION * act + KEY_STACK_BYTES_PER_OUTPUT_PIXEL * out_px)
    parts = {"GL-AM": glam}
    peak = glam
    if store == "tensors":
        parts["tensors"] = int(TENSORS_PER_ACTIVATION * act)
        peak += parts["tensors"]
    if verify:
        parts["verify"] = int(VERIFY_PER_ACTIVATION * act)
        peak = max(peak, parts["verify"])
    if lam:
        parts["LAM"] = int(LAM_PER_ACTIVATION * max(1, lam_batch) * act)
        peak = max(peak, parts["LAM"])
    if parity_forward:
        parts["run parity"] = int(PARITY_FORWARD_PER_ACTIVATION * act)
        peak += parts["run parity"]
    parts["fixed"] = FIXED_BYTES
    return MemoryEstimate(peak + FIXED_BYTES, parts)


def _available(device: Any, budget: MemoryBudget | None) -> tuple[int | None, str]:
    """Bytes available to the analysis on ``device`` and how that was found."""
    dev = str(device)
    if dev.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(dev))
        return int(free), f"{_gib(free)} free of {_gib(total)} on {dev}"
    b = budget if budget is not None else memory_budget()
    return b.available, b.describe()


def _cuda_fits(need: int) -> bool:
    """Whether a CUDA device has ``need`` bytes free."""
    import torch

    if not torch.cuda.is_available():
        return False
    free, _ = torch.cuda.mem_get_info()
    return need <= SAFETY * free


def _largest_fitting_side(model: ImportedModel, h: int, w: int, limit: float,
                          estimate: Any) -> int | None:
    """The largest square centre crop (LR side) whose estimate fits ``limit`` bytes."""
    lo, hi = 8, min(h, w)
    m = int(model.metadata.get("input_multiple") or 1)
    if estimate(lo, lo).total > limit:
        return None
    while hi - lo > max(1, m):
        mid = (lo + hi) // 2
        if estimate(mid, mid).total <= limit:
            lo = mid
        else:
            hi = mid
    return lo // m * m if m > 1 else lo


def check_memory(
    model: ImportedModel,
    h: int,
    w: int,
    *,
    device: Any = "cpu",
    lam: bool = False,
    lam_batch: int = 8,
    store: str = "maps",
    verify: bool = False,
    what: str = "the analysis",
    budget: MemoryBudget | None = None,
) -> MemoryEstimate | None:
    """Refuse an analysis whose estimated peak does not fit the memory available.

    Returns the estimate when it fits (or when the memory available is unknown), ``None``
    when the graph cannot be measured at small sizes (the analysis then reports its own
    error, if any).

    Raises
    ------
    InsufficientMemoryError
        Naming the estimate, the memory available and the options that would fit.
    """
    try:
        est = estimate_memory(model, h, w, lam=lam, lam_batch=lam_batch, store=store,
                              verify=verify)
    except Exception:  # noqa: BLE001 - a graph that does not run at the probe sizes
        return None
    avail, where = _available(device, budget)
    if avail is None or est.total <= SAFETY * avail:
        return est
    limit = SAFETY * avail
    options: list[str] = []
    side = _largest_fitting_side(
        model, h, w, limit,
        lambda a, b: estimate_memory(model, a, b, lam=lam, lam_batch=lam_batch, store=store,
                                     verify=verify))
    if side is not None and model.conventions.fixed_size is None:
        options.append(f"a centre crop of at most {side}x{side} LR pixels")
    if store == "tensors":
        lighter = estimate_memory(model, h, w, lam=lam, lam_batch=lam_batch, store="maps",
                                  verify=verify)
        if lighter.total <= limit:
            options.append("--store maps")
    if lam:
        for b in (4, 2, 1):
            if b < lam_batch and estimate_memory(model, h, w, lam=True, lam_batch=b,
                                                 store=store, verify=verify).total <= limit:
                options.append(f"--lam-batch {b}")
                break
        else:
            if estimate_memory(model, h, w, store=store, verify=verify).total <= limit:
                options.append("no --lam")
    if verify and estimate_memory(model, h, w, lam=lam, lam_batch=lam_batch,
                                  store=store).total <= limit:
        options.append("no --verify")
    if str(device).startswith("cuda"):
        options.append("--device cpu")
    elif _cuda_fits(est.total):
        options.append("--device cuda")
    raise InsufficientMemoryError(
        f"{what} ({h}x{w} LR pixels) needs about {est.describe()}, more than the {where} "
        f"available; use {', or '.join(options)}"
    )
