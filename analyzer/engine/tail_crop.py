"""The ROI's cone inside the graph: LAM's path steps on a crop of an intermediate value.

:mod:`glam.engine.crop` cuts the *input* to the box that can reach the ROI. Towards the
output the ROI's dependence shrinks further: on paper CARN at 64x64 LR the body's output
is needed only a few pixels around the ROI, yet the upsampler (about half of a forward
pass's multiply-adds) runs over the whole image. Here the graph is cut once more, at a
*dominator* of the output: a value every path from the input to the output runs through,
so that the rest of the graph (the *tail*) computes the output from that value alone.
The tail then runs on the crop of that value which can reach the ROI.

The choice is structural and the reach is measured, as for the input box:

* dominators are found on the FX graph of ``y`` (no edge from an input-dependent value
  before the candidate to a node after it, other than through the candidate; a size read
  from the input later on disqualifies every value before it);
* the candidate is the last dominator at the input's own resolution (typically the body's
  output, just before the upsampler);
* the tail's reach is measured by NaN propagation from a 2x2 block at the centre of that
  value (:func:`glam.engine.crop.probe_reach` does the same for the whole model); a
  global operation in the tail, or a tail whose output is not ``scale x`` that value,
  keeps the value whole.

Exactness is argued as for the input box (a value of the tail at a pixel of the ROI's
cone depends only on values in the cone) and checked by the caller on the first path step
against the full input (:func:`glam.engine.lam.compute_lam`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from glam.engine.crop import MIN_SAVING, nan_footprint, span
from torch import fx

#: The tail crop is used only when its cone is at most this share of the value's pixels.
MAX_SHARE = 1.0 - MIN_SAVING

#: The tail's probes run on at most this many input pixels a side.
PROBE_SIZE = 32

#: What a model may raise on the probe's smaller input (a reshape to a fixed size, an
#: exported graph's own shape check); the tail is then not used.
PROBE_ERRORS = (RuntimeError, ValueError, IndexError, AssertionError, TypeError,
                 NotImplementedError)


@dataclass(frozen=True)
class TailCrop:
    """A crop of one intermediate value and the graph that uses it.

    Attributes
    ----------
    node:
        Name of the cut value (a dominator of the output in ``model.graph``).
    top, left, bottom, right:
        The crop in that value's pixels, full-image coordinates (end exclusive).
    scale:
        Output pixels per pixel of that value.
    shape:
        ``(h, w)`` of the value on the full input.
    """

    node: str
    top: int
    left: int
    bottom: int
    right: int
    scale: int
    shape: tuple[int, int]

    def share(self) -> float:
        """The crop's share of the value's pixels."""
        return (self.bottom - self.top) * (self.right - self.left) / (self.shape[0] * self.shape[1])

    def describe(self) -> str:
        """One line for notes and logs."""
        return (f"tail from {self.node} on {self.bottom - self.top}x{self.right - self.left} of "
                f"{self.shape[0]}x{self.shape[1]}")


def _output_node(graph: fx.Graph) -> fx.Node:
    """The node of the model output ``y`` (the first element of a tapped graph's output)."""
    out = next(n for n in graph.nodes if n.op == "output")
    y = out.args[0]
    while isinstance(y, (tuple, list)):
        y = y[0]
    if not isinstance(y, fx.Node):
        raise ValueError("the graph's output is not a node")
    return y


def dominators(graph: fx.Graph) -> list[fx.Node]:
    """Input-dependent values every path from the input to ``y`` runs through, in execution
    order (``y`` itself excluded).

    In execution order a value ``d`` is such a dominator when no input-dependent ancestor
    of ``y`` before ``d`` is read by a node after ``d``: every route from before ``d`` to
    after it then goes through ``d``.
    """
    y = _output_node(graph)
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    ancestors: set[fx.Node] = set()
    stack = [y]
    while stack:
        n = stack.pop()
        if n in ancestors:
            continue
        ancestors.add(n)
        stack.extend(n.all_input_nodes)
    dependent = input_dependent(graph)
    reach = -1  # latest position read from the input-dependent values seen so far
    found: list[fx.Node] = []
    for n in nodes:
        if n is y:
            break
        p = pos[n]
        if n in dependent and n in ancestors and n.op != "placeholder" and reach <= p:
            found.append(n)
        if n in dependent and n in ancestors:
            uses = [pos[u] for u in n.users if u in ancestors]
            if uses:
                reach = max(reach, *uses)
    return found


def input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """The nodes of ``graph`` whose value depends on an input (placeholders included)."""
    dependent: set[fx.Node] = set()
    for n in graph.nodes:
        if n.op == "placeholder" or any(a in dependent for a in n.all_input_nodes):
            dependent.add(n)
    return dependent


def nan_block(t: torch.Tensor, cy: int, cx: int) -> torch.Tensor:
    """``t`` with a 2x2 NaN block at ``(cy, cx)`` (all channels): the tail's probe."""
    t = t.clone()
    t[..., cy : cy + 2, cx : cx + 2] = float("nan")
    return t


def _shape_of(t: object) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) and t.is_floating_point() else ()


def _copy_to_y(
    gm: fx.GraphModule, visit: Callable[[fx.Graph, fx.Node, fx.Node], fx.Node | None]
) -> tuple[fx.Graph, dict[fx.Node, fx.Node], fx.Node]:
    """A copy of ``gm``'s graph up to its output ``y`` (no output node yet), the map from old
    to new nodes and ``y``. ``visit(graph, old, new)`` sees each copied node and may return
    the node its consumers read instead."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    y = _output_node(gm.graph)
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        env[n] = graph.node_copy(n, lambda a: env[a])
        env[n] = visit(graph, n, env[n]) or env[n]
        if n is y:
            break
    return graph, env, y


def _rewired(gm: fx.GraphModule, node: str, fn, args: tuple) -> fx.GraphModule:  # type: ignore[no-untyped-def]
    """A copy of ``gm`` that outputs ``y`` only, with ``fn(value_of_node, *args)`` read by
    every consumer of ``node`` in place of its value."""

    def visit(graph: fx.Graph, old: fx.Node, new: fx.Node) -> fx.Node | None:
        return graph.call_function(fn, (new, *args)) if old.name == node else None

    graph, env, y = _copy_to_y(gm, visit)
    graph.output(env[y])
    return fx.GraphModule(gm, graph)


def _slice(t: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """``t[..., top:bottom, left:right]`` (a view; its gradient is zero outside)."""
    return t[..., top:bottom, left:right]


def tail_crop(
    gm: fx.GraphModule, x: torch.Tensor, top: int, left: int, window: int, multiple: int = 0
) -> tuple[TailCrop | None, str]:
    """The crop of the last dominator at the input's resolution that can reach the ROI,
    or ``(None, why not)``.

    Parameters
    ----------
    gm:
        The (tapped) graph of the model; ``gm(x)[0]`` is the output.
    x:
        Canonical input ``1 x C x h x w`` (the full input).
    top, left, window:
        The ROI in output pixels (``T_ROI`` reads ``top .. top + window``).
    multiple:
        The graph runs only at multiples of this size (``0``: any size); the probe's corner
        is a multiple of it, or the whole input.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    side = PROBE_SIZE if multiple < 2 else max(multiple, PROBE_SIZE // multiple * multiple)
    if h < 4 or w < 4:
        return None, "the input is too small to measure the tail's reach"
    doms = dominators(gm.graph)
    if not doms:
        return None, "no value of the graph dominates its output"
    # Both probes run on the input's top-left corner of at most PROBE_SIZE pixels a side
    # (a quarter of a forward pass at 64x64): which value sits at the input's resolution
    # and how far the tail reaches do not depend on the image's size, and the first path
    # step checks the crop on the full input anyway.
    xp = x[..., : min(h, side), : min(w, side)]
    hp, wp = int(xp.shape[-2]), int(xp.shape[-1])
    names = [d.name for d in doms]
    try:
        with torch.no_grad():
            y, *shapes = _shapes_graph(gm, names)(xp)
    except PROBE_ERRORS as exc:
        return None, f"the model failed on the {hp}x{wp} probe: {exc}"
    HP, WP = int(y.shape[-2]), int(y.shape[-1])
    at_input = [n for n, s in zip(names, shapes, strict=True) if len(s) == 4 and s[-2:] == (hp, wp)]
    if not at_input:
        return None, "no dominator of the output at the input's resolution"
    node = at_input[-1]
    if HP % hp or WP % wp or HP // hp != WP // wp:
        return None, "the output is not an integer multiple of the input"
    s = HP // hp
    H, W = s * h, s * w
    cy, cx = hp // 2 - 1, wp // 2 - 1
    try:
        with torch.no_grad():
            yp = _rewired(gm, node, nan_block, (cy, cx))(xp)
    except PROBE_ERRORS as exc:
        return None, f"the tail failed on the NaN probe: {exc}"
    if tuple(yp.shape[-2:]) != (HP, WP):
        return None, "the tail's output is not scale x its input"
    extent = nan_footprint(yp, s, cy, cx)
    if extent == "none":
        return None, "the NaN probe of the tail reached no output pixel"
    if extent == "border":
        return None, "the tail's receptive field reaches the probe's border"
    up, down, lft, rgt = extent  # type: ignore[misc]
    t, b = span(top, min(H - 1, top + window), up, down, s, h)
    lf, rt = span(left, min(W - 1, left + window), lft, rgt, s, w)
    crop = TailCrop(node, t, lf, b, rt, s, (h, w))
    if crop.share() > MAX_SHARE:
        return None, f"the ROI's cone covers {crop.share():.0%} of {node}"
    return crop, ""


def _shapes_graph(gm: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """A copy of ``gm`` returning ``(y, shape of each named value)`` (shapes, not values,
    so nothing is kept alive)."""
    wanted = set(names)
    shapes: dict[str, fx.Node] = {}

    def visit(graph: fx.Graph, old: fx.Node, new: fx.Node) -> None:
        if old.name in wanted:
            shapes[old.name] = graph.call_function(_shape_of, (new,))

    graph, env, y = _copy_to_y(gm, visit)
    graph.output((env[y], *[shapes[k] for k in names]))
    return fx.GraphModule(gm, graph)


def cropped_graph(gm: fx.GraphModule, crop: TailCrop, offset: tuple[int, int] = (0, 0)) -> fx.GraphModule:
    """``gm`` returning ``y`` only, with the tail computed on ``crop`` of its cut value.

    ``offset`` is where the graph's input sits in the full input (the input box's corner,
    in the cut value's pixels: the value then covers the box only).
    """
    oy, ox = offset
    return _rewired(gm, crop.node, _slice,
                    (crop.top - oy, crop.bottom - oy, crop.left - ox, crop.right - ox))

