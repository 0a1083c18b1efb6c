"""A slow, literal implementation of GLAM.md, written independently of the engine.

Loops per layer, one ``autograd.grad`` call per map on the full tapped graph, no
batching, no segmentation: the oracle the fast engine is tested against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def N(z: torch.Tensor) -> torch.Tensor:
    z = torch.clamp(z, min=0)
    m = z.max()
    return z / m if m > 0 else torch.zeros_like(z)


def R(z: torch.Tensor, size) -> torch.Tensor:
    if tuple(z.shape) == tuple(size):
        return z
    return F.interpolate(z[None, None], size=tuple(size), mode="bicubic", align_corners=False)[0, 0]


def A(g: torch.Tensor) -> torch.Tensor:
    acc = torch.zeros_like(g[0])
    for c in range(g.shape[0]):
        acc = acc + g[c].mean() * g[c]
    return acc.abs()


def mag(t: torch.Tensor) -> torch.Tensor:
    H, W = t.shape[-2:]
    dh = t[:, :, : H - 1, : W - 1] - t[:, :, 1:H, : W - 1]
    dw = t[:, :, : H - 1, : W - 1] - t[:, :, : H - 1, 1:W]
    return torch.sqrt(dh**2 + dw**2 + 1e-12)


def T_roi(t, top, left, l):
    return mag(t)[:, :, top : top + l, left : left + l].sum()


def T_global(t):
    return mag(t).sum()


def combine(keys):
    consensus = N(sum(keys))
    variation = torch.zeros_like(keys[0])
    for i in range(1, len(keys)):
        variation = variation + (keys[i] - keys[i - 1]).abs()
    variation = N(variation)
    return {"consensus": consensus, "variation": variation, "sum": N(consensus + variation)}


def reference_parents(graph, x):
    """parent(j) from a literal FX ancestor walk, participating = 4-D with H, W > 1."""
    out_node = next(n for n in graph.graph.nodes if n.op == "output")
    tap_nodes = list(out_node.args[0][1])
    with torch.no_grad():
        _, taps = graph(x)
    part = [t.dim() == 4 and t.shape[2] > 1 and t.shape[3] > 1 for t in taps]
    parents = []
    for node in tap_nodes:
        anc = set()
        stack = list(node.all_input_nodes)
        while stack:
            n = stack.pop()
            if n in anc:
                continue
            anc.add(n)
            stack.extend(n.all_input_nodes)
        cands = [i for i, t in enumerate(tap_nodes) if t in anc and part[i]]
        parents.append(max(cands) if cands else -1)
    return parents, part


def reference_glam(graph, x, top, left, l, parents=None):
    x = x.detach().clone().requires_grad_(True)
    y, taps = graph(x)
    H, W = y.shape[-2:]
    if parents is None:
        parents, part = reference_parents(graph, x)
    else:
        part = [t.dim() == 4 and t.shape[2] > 1 and t.shape[3] > 1 for t in taps]
    idx = [i for i in range(len(taps)) if part[i]]
    g = torch.autograd.grad(T_roi(y, top, left, l), [taps[i] for i in idx], retain_graph=True, allow_unused=True)
    g = [gi if gi is not None else torch.zeros_like(taps[i]) for gi, i in zip(g, idx, strict=True)]
    k = [N(R(N(A(gi[0])), (H, W))) for gi in g]
    local = combine(k)
    K = []
    for j in idx:
        src = x if parents[j] < 0 else taps[parents[j]]
        (G,) = torch.autograd.grad(T_global(taps[j]), [src], retain_graph=True, allow_unused=True)
        if G is None:
            G = torch.zeros_like(src)
        a = taps[j][0].abs().mean(0)
        m = N(R(N(A(G[0])), taps[j].shape[-2:])) * N(a)
        K.append(N(R(N(m), (H, W))))
    glob = combine(K)
    to_np = lambda d: {kk: v.detach().numpy() for kk, v in d.items()}  # noqa: E731
    return to_np(local), to_np(glob), parents, y.detach()[0].numpy()


def reference_gini(m):
    a = np.array(m, dtype=np.float64).flatten()
    if a.min() < 0:
        a -= a.min()
    a = np.sort(a + 1e-7)
    n = a.shape[0]
    idx = np.arange(1, n + 1)
    return (np.sum((2 * idx - n - 1) * a)) / (n * np.sum(a))
