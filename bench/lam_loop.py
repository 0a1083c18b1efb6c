"""LAM as the official code computes it: a plain batch-1 loop (the benchmark's baseline).

The LAM repository's ``saliency/attributes.py`` evaluates the model once per path step on
one image, calls ``backward()`` on the ROI objective and multiplies the input's gradient
by the path derivative, then averages. This is that loop on an imported graph, with
glam's numerics (GLAM.md ``T_ROI``, NaN gradients set to 0, float64 accumulation), so its
maps are comparable with :func:`glam.engine.lam.compute_lam`'s to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import torch
from glam.engine.lam import blur_path
from glam.engine.texture import texture_roi
from glam.importers.model import ImportedModel


def plain_lam_loop(
    model: ImportedModel,
    x: torch.Tensor,
    top: int,
    left: int,
    window: int = 16,
    *,
    sigma: float = 1.2,
    fold: int = 50,
    l: int = 9,
) -> tuple[np.ndarray, np.ndarray]:
    """``(attribution, map)`` of LAM from ``fold`` batch-1 forward+backward passes.

    ``attribution`` is ``C x h x w`` (the mean of gradient times path derivative), ``map``
    is ``|sum_c attribution|`` normalised to a maximum of 1 (``h x w``), as
    :class:`glam.engine.lam.LamResult` holds them.
    """
    images, derivs = blur_path(x, sigma, fold, l)
    total = torch.zeros_like(x[0], dtype=torch.float64)
    for i in range(fold):
        z = images[i : i + 1].clone().requires_grad_(True)
        with torch.enable_grad():
            y = model.graph(z)[0]
            texture_roi(y, top, left, window).sum().backward()
        g = torch.nan_to_num(z.grad, nan=0.0)  # type: ignore[arg-type]
        total += (g * derivs[i : i + 1]).double().sum(dim=0)
    attr = (total / fold).float()
    summed = attr.sum(dim=0).abs()
    mx = summed.max()
    lam_map = summed / mx if mx > 0 else torch.zeros_like(summed)
    return attr.cpu().numpy(), lam_map.cpu().numpy()
