"""A *segmented* copy of a tapped graph: every participating tap is cut from its consumers.

Each participating tap ``f_j`` gets a fresh leaf ``u_j = f_j.detach().requires_grad_()``
that all of ``f_j``'s consumers read instead. One forward pass through this graph yields
the same values as the tapped graph, but autograd now sees a chain of small *segments*:
segment ``j`` computes ``f_j`` from the leaves (and the input ``x``) it reads.

* The local map's single backward pass is run segment by segment in reverse execution
  order (the chain rule applied piecewise: ``dT/du_j`` is the total gradient at ``f_j``).
* The global map's ``dT_Global(f_j)/df_parent(j)`` is one *local* autograd call on
  segment ``j``: no participating tap lies on a path from ``f_parent(j)`` to ``f_j``
  (``parent`` is the latest participating ancestor), so cutting at participating taps
  keeps every such path intact, while each call only walks its own segment instead of
  the whole graph back to the input (the naive loop measured 10x on RRDBNet).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx


def cut(t: torch.Tensor) -> torch.Tensor:
    """A new autograd leaf with ``t``'s value (the segment boundary)."""
    return t.detach().requires_grad_(True)


@dataclass
class SegmentedGraph:
    """The segmented graph and, per segment, which leaves and taps it reads.

    Attributes
    ----------
    module:
        ``module(x) -> (y, taps, leaves)``; ``leaves[k]`` is the cut leaf of participating
        tap ``cut_taps[k]``.
    cut_taps:
        Indices of the participating taps (execution order).
    segment_leaves:
        For each tap index ``j`` and for ``"y"``: the cut-tap indices whose leaves the
        segment computing it reads (``-1`` stands for the input ``x``).
    segment_taps:
        For each tap index ``j`` and ``"y"``: the non-participating taps computed inside it.
    """

    module: fx.GraphModule
    cut_taps: list[int]
    segment_leaves: dict[int | str, list[int]]
    segment_taps: dict[int | str, list[int]]


def build_segmented(tapped: fx.GraphModule, participating: Sequence[bool]) -> SegmentedGraph:
    """Cut a tapped graph (``forward(x) -> (y, taps)``) at its participating taps."""
    gm = copy.copy(tapped)  # shares submodules and parameters
    graph = copy.deepcopy(tapped.graph)
    gm.graph = graph
    out_node = next(n for n in graph.nodes if n.op == "output")
    y_node, tap_nodes = out_node.args[0]
    tap_nodes = list(tap_nodes)
    x_node = next(n for n in graph.nodes if n.op == "placeholder")
    tap_index = {n: i for i, n in enumerate(tap_nodes)}
    cut_taps = [i for i, p in enumerate(participating) if p]
    leaf_of: dict[fx.Node, fx.Node] = {}
    for i in cut_taps:
        node = tap_nodes[i]
        with graph.inserting_after(node):
            leaf = graph.call_function(cut, (node,))
        for user in list(node.users):
            if user is not leaf and user is not out_node:
                user.replace_input_with(node, leaf)
        leaf_of[node] = leaf
    leaves = [leaf_of[tap_nodes[i]] for i in cut_taps]
    out_node.args = ((y_node, tuple(tap_nodes), tuple(leaves)),)
    graph.lint()
    gm.recompile()

    leaf_index = {leaf: tap_index[tap] for tap, leaf in leaf_of.items()}

    def walk(start: fx.Node) -> tuple[list[int], list[int]]:
        reads: set[int] = set()
        inner: set[int] = set()
        stack = [start]
        seen: set[fx.Node] = set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in leaf_index:
                reads.add(leaf_index[n])
                continue
            if n is x_node:
                reads.add(-1)
                continue
            if n is not start and n in tap_index:
                inner.add(tap_index[n])
            stack.extend(n.all_input_nodes)
        return sorted(reads), sorted(inner)

    seg_leaves: dict[int | str, list[int]] = {}
    seg_taps: dict[int | str, list[int]] = {}
    for i in cut_taps:
        seg_leaves[i], seg_taps[i] = walk(tap_nodes[i])
    seg_leaves["y"], seg_taps["y"] = walk(y_node)
    return SegmentedGraph(gm, cut_taps, seg_leaves, seg_taps)
