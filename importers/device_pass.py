"""Graph pass: hard-coded ``device=`` arguments follow the input's device.

A graph traced on the CPU can carry the tracing device as a constant: ``torch.export`` of
SwinIR creates its attention mask with ``aten.zeros(..., device=cpu)``, TorchScript graphs
carry ``aten::zeros(..., device)`` constants the same way. Such a node keeps making CPU
tensors after the graph's parameters moved to CUDA, and the first op that mixes the two
fails with a device mismatch. :func:`follow_input_device` rewrites every constant device
argument into the device of the graph's first input, so ``ImportedModel.to(dev)`` and an
input on ``dev`` are all a graph needs to run there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

__all__ = ["constant_devices", "follow_input_device"]


def _is_device(value: Any) -> bool:
    return isinstance(value, torch.device)


def _is_device_kwarg(value: Any) -> bool:
    if isinstance(value, torch.device):
        return True
    if isinstance(value, str):
        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            return False
        return True
    return False


def constant_devices(gm: fx.GraphModule) -> list[str]:
    """The nodes of ``gm`` with a constant device argument, as ``"node: device"`` strings."""
    found: list[str] = []
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        for value in node.args:
            if _is_device(value):
                found.append(f"{node.name}: {value}")
        d = node.kwargs.get("device")
        if _is_device_kwarg(d):
            found.append(f"{node.name}: {d}")
    return found


def follow_input_device(gm: fx.GraphModule) -> int:
    """Rewrite constant ``device`` arguments of ``gm`` to the device of its first input.

    Parameters
    ----------
    gm:
        An untapped graph (changed in place and recompiled when anything is rewritten).

    Returns
    -------
    int
        How many arguments were rewritten (0: the graph is unchanged).
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return 0
    src = placeholders[0]
    device_node: fx.Node | None = None

    def device_of_input() -> fx.Node:
        nonlocal device_node
        if device_node is None:
            with gm.graph.inserting_after(placeholders[-1]):
                device_node = gm.graph.call_function(getattr, (src, "device"))
        return device_node

    count = 0
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method") or node is device_node:
            continue
        if any(_is_device(a) for a in node.args):
            node.args = tuple(device_of_input() if _is_device(a) else a for a in node.args)
            count += 1
        if _is_device_kwarg(node.kwargs.get("device")):
            node.kwargs = {**node.kwargs, "device": device_of_input()}
            count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count
