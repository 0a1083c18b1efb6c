"""Which input sizes a dynamic-size graph accepts: any, or only multiples of some ``m``.

A windowed-attention SR model (SwinIR, HAT, OmniSR) pads its input to a multiple of its
window itself. Exporters often freeze that padding at the export size: the legacy ONNX
exporter traces SwinIR's ``pad_to_multiple`` as "no padding" when the export size is a
multiple of the window, and ``torch.jit.trace`` does the same. The file then runs only at
multiples of the window; elsewhere a window-partition reshape fails deep in the graph.

:func:`probe_size_rule` finds that out at import: it runs the graph at an odd size and, when
that fails, at odd sizes rounded up to each divisor ``m`` of the sizes that worked. The
result is recorded as ``metadata["input_multiple"]`` and analysis refuses an image whose
size is not a multiple (:func:`check_input_size`), naming the multiple and the nearest
sizes that fit, instead of a reshape error.
"""

from __future__ import annotations

import math
import warnings as pywarnings
from collections.abc import Callable

import torch
from glam.errors import AnalysisError
from glam.importers.conventions import to_native
from glam.importers.probe import probe_input

__all__ = ["ODD_OFFSET", "check_input_size", "probe_size_rule"]

#: added to the probe size to get a size that is a multiple of nothing the probe size is
ODD_OFFSET = (3, 1)


def _runs_at(
    run: Callable[[torch.Tensor], list[torch.Tensor]],
    layout: str,
    channels: int,
    output_index: int,
    size: tuple[int, int],
    expected: tuple[int, int],
) -> bool:
    x = to_native(probe_input(channels, *size), layout, 1)
    try:
        with torch.no_grad(), pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            out = run(x)[output_index]
    except Exception:  # noqa: BLE001 - any failure at this size means "not accepted"
        return False
    hw = tuple(int(d) for d in (out.shape[1:3] if layout == "NHWC" else out.shape[-2:]))
    return hw == expected


def probe_size_rule(
    run: Callable[[torch.Tensor], list[torch.Tensor]],
    layout: str,
    channels: int,
    output_index: int,
    sizes: tuple[tuple[int, int], ...],
    output_size: Callable[[int, int], tuple[int, int]],
) -> int | None:
    """The multiple input sizes must be, or ``None`` when the graph takes any size.

    Parameters
    ----------
    run:
        Runs the untapped native graph, returns its outputs.
    layout, channels, output_index:
        The detected conventions.
    sizes:
        Input sizes the graph is known to run at (the probe sizes of the scale measurement).
    output_size:
        ``(h, w) -> (H, W)`` of the measured scale and offset.

    Returns
    -------
    int | None
        ``None``: the graph runs at an odd size. ``m >= 2``: it runs at multiples of ``m``
        (checked at two sizes) but not at the odd size. ``0``: it fails at the odd size and
        no divisor of the working sizes explains it (the valid sizes are unknown).
    """
    h0, w0 = sizes[0]
    odd = (h0 + ODD_OFFSET[0], w0 + ODD_OFFSET[1])
    if _runs_at(run, layout, channels, output_index, odd, output_size(*odd)):
        return None
    g = 0
    for h, w in sizes:
        g = math.gcd(math.gcd(g, h), w)
    for m in range(2, g + 1):
        if g % m:
            continue
        a = (-(-odd[0] // m) * m, -(-odd[1] // m) * m)
        b = (a[0] + m, a[1] + 2 * m)
        if all(_runs_at(run, layout, channels, output_index, s, output_size(*s)) for s in (a, b)):
            return m
    return 0


def check_input_size(multiple: int | None, h: int, w: int, what: str = "the model") -> None:
    """Refuse an ``h x w`` input that a graph accepting only multiples of ``multiple`` cannot run.

    Raises
    ------
    AnalysisError
        Naming the multiple and the nearest sizes that fit (crop or pad to one of them).
    """
    if not multiple or (h % multiple == 0 and w % multiple == 0):
        return
    down = (h // multiple * multiple, w // multiple * multiple)
    up = (-(-h // multiple) * multiple, -(-w // multiple) * multiple)
    raise AnalysisError(
        f"{what} accepts only input sizes that are a multiple of {multiple} (its graph does not "
        f"pad the input itself, e.g. to an attention window); the {h}x{w} input is not: crop "
        f"it to {down[0]}x{down[1]} or pad it to {up[0]}x{up[1]}, or import the model from its "
        "checkpoint (.pth / .safetensors), whose graph pads itself"
    )
