"""What a figure needs, independent of where it comes from (a live Result or an archive run)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerKey:
    """A per-layer key at output size (``N(R(N(raw), (H, W)))``) for small multiples."""

    index: int
    name: str
    key: np.ndarray
    vanished: bool = False
    """The key is zero by GLAM.md's vanishing-weights rule (``local_weights_vanish`` /
    ``global_weights_vanish`` of the layer record)."""


@dataclass
class FigureData:
    """Inputs of :mod:`glam.report.figures`, all plain numpy.

    Attributes
    ----------
    name:
        Run name (figure titles, file names).
    input_rgb:
        The LR input as shown, ``h x w x 3`` uint8 (Y-only models: Y merged with Cb/Cr).
    output_rgb:
        The SR output as shown, ``H x W x 3`` uint8.
    roi, window:
        ROI ``(top, left)`` and window in output pixels.
    local, global_:
        ``{"consensus", "variation", "sum"}`` maps at output size, values in [0, 1].
    metrics:
        Scalar metrics (``di_local``, ``psnr_roi``, ``di_lam`` ...; missing keys are absent).
    lam_map_output:
        LAM's map resized to output size, or ``None``.
    local_keys, global_keys:
        Per-layer keys (sampled when there are many), in execution order.
    model_name:
        Short model label (e.g. the file name).
    local_total, global_total:
        How many participating layers have a local / global key in the run (the keys above
        may be a sample); 0 when unknown (then the keys are all of them).
    """

    name: str
    input_rgb: np.ndarray
    output_rgb: np.ndarray
    roi: tuple[int, int]
    window: int
    local: dict[str, np.ndarray]
    global_: dict[str, np.ndarray]
    metrics: dict[str, float]
    lam_map_output: np.ndarray | None = None
    local_keys: list[LayerKey] = field(default_factory=list)
    global_keys: list[LayerKey] = field(default_factory=list)
    model_name: str = ""
    local_total: int = 0
    global_total: int = 0


def to_rgb_uint8(chw: np.ndarray) -> np.ndarray:
    """``C x H x W`` float in [0, 1] (C = 1 or 3) to ``H x W x 3`` uint8 (grey for C = 1)."""
    a = np.clip(np.asarray(chw, dtype=np.float64), 0.0, 1.0)
    if a.shape[0] == 1:
        a = np.repeat(a, 3, axis=0)
    return np.rint(a[:3].transpose(1, 2, 0) * 255.0).astype(np.uint8)


def sample_indices(n: int, most: int = 16) -> list[int]:
    """At most ``most`` evenly spaced indices out of ``n`` (first and last included)."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})
