"""Model randomization for the sanity check (Adebayo et al., NeurIPS 2018).

Each tap of an :class:`~glam.importers.model.ImportedModel` is a convolution; its weight (and
bias) are the tensors :func:`conv_parameters` finds in the tapped graph. :func:`randomized`
re-initialises the convolutions of chosen taps *in place*, seeded per tap, and restores
the original values when the block ends (the engine's segmented graphs share these
tensors, so no copy of the model is needed and no cache goes stale).

A re-initialised weight is drawn from ``N(0, std(w))`` (the trained weight's own spread,
so activations keep their scale; ``sqrt(2 / fan_in)`` when the trained weight is
constant), a bias from ``N(0, std(b))``. The generator of tap ``i`` is seeded with
``seed * 100003 + i``: a tap gets the same random weights in the cascading and in the
independent variant.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from glam.errors import AnalysisError
from glam.importers.model import ImportedModel
from glam.importers.tap import find_conv_nodes
from torch import fx


def _attr_tensor(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj: object = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part, None)
        return obj if isinstance(obj, torch.Tensor) else None
    return None


def _module_conv(gm: fx.GraphModule, node: fx.Node) -> torch.nn.Module | None:
    if node.op != "call_module":
        return None
    mod = gm.get_submodule(str(node.target))
    if isinstance(mod, torch.nn.Sequential) and len(mod) > 0:
        mod = mod[-1]
    return mod if isinstance(mod, torch.nn.modules.conv._ConvNd) else None


def conv_parameters(model: ImportedModel) -> list[list[torch.Tensor]]:
    """Per tap, the weight (and bias) tensors of its convolution (empty when the weight is
    computed in the graph rather than stored, e.g. a weight produced by another node)."""
    gm = model.graph
    nodes = find_conv_nodes(gm)
    if len(nodes) != model.n_taps:
        raise AnalysisError(
            f"the graph has {len(nodes)} convolutions but the model {model.n_taps} taps; "
            "re-import the model with glam.importers.load"
        )
    out: list[list[torch.Tensor]] = []
    for node in nodes:
        mod = _module_conv(gm, node)
        if mod is not None:
            ts = [t for t in (mod.weight, mod.bias) if isinstance(t, torch.Tensor)]
        else:
            args = list(node.args) + [node.kwargs.get("weight"), node.kwargs.get("bias")]
            ts = [t for t in (_attr_tensor(gm, a) for a in args[1:3]) if t is not None]
        out.append(ts)
    return out


def _random_like(t: torch.Tensor, gen: torch.Generator, is_weight: bool) -> torch.Tensor:
    std = float(t.detach().float().std()) if t.numel() > 1 else 0.0
    if not std > 0.0 and is_weight:
        fan_in = max(1, t[0].numel())
        std = (2.0 / fan_in) ** 0.5
    z = torch.randn(t.shape, generator=gen, dtype=torch.float64)
    return (z * std).to(dtype=t.dtype, device=t.device)


@contextmanager
def randomized(
    model: ImportedModel,
    taps: Sequence[int],
    seed: int = 0,
    params: list[list[torch.Tensor]] | None = None,
) -> Iterator[int]:
    """Re-initialise the convolutions of ``taps`` inside the block; yields how many tensors
    were changed. The trained values are restored on exit, also after an error."""
    params = conv_parameters(model) if params is None else params
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for i in taps:
                gen = torch.Generator().manual_seed(int(seed) * 100003 + int(i))
                for k, t in enumerate(params[i]):
                    saved.append((t, t.detach().clone()))
                    t.copy_(_random_like(t, gen, k == 0))
        yield len(saved)
    finally:
        with torch.no_grad():
            for t, orig in reversed(saved):
                t.copy_(orig)


def tap_blocks(n_taps: int, blocks: int | None) -> list[list[int]]:
    """Taps ``0..n_taps-1`` in ``blocks`` contiguous groups of near-equal size (in
    execution order); ``None`` (or more blocks than taps) gives one tap per block."""
    if blocks is not None and blocks < 1:
        raise AnalysisError(f"--blocks {blocks} must be at least 1")
    if blocks is None or blocks >= n_taps:
        return [[i] for i in range(n_taps)]
    edges = [round(k * n_taps / blocks) for k in range(blocks + 1)]
    return [list(range(edges[k], edges[k + 1])) for k in range(blocks)]
