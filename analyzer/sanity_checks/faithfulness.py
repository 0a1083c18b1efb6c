"""Deletion / insertion faithfulness of LR attribution orderings (local view).

For an ordering of the LR pixels (most attributed first), the *deletion* curve replaces
the first ``k`` pixels of the input (all channels) by a baseline image and records the
ROI texture ``T_ROI`` of the output, for ``k`` = 0 %, 1 %, ..., 50 % of the pixels; the
*insertion* curve starts from the baseline and puts the original pixels back in the same
order. Both are divided by ``T_ROI`` of the unmodified input. The area under a curve is
its trapezoidal mean over the fractions (a curve at 1 throughout has AUC 1): a faithful
ordering has a low deletion AUC and a high insertion AUC. All steps of a curve are
evaluated in batches of ``batch`` images, without autograd.

The default baseline is the input blurred with LAM's kernel (its path start: 9x9
Gaussian, sigma 1.2, reflect-101 borders); ``"bicubic"`` is the input downscaled by 4 and
upscaled back with bicubic interpolation; a tensor of the input's shape is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from glam.engine.lam import gaussian_kernel, mixes_batch
from glam.engine.texture import texture_roi
from glam.errors import AnalysisError, ModelError
from glam.importers.model import ImportedModel


@dataclass
class Curve:
    """One deletion or insertion curve: ``T_ROI`` relative to the unmodified input."""

    fractions: np.ndarray
    values: np.ndarray

    @property
    def auc(self) -> float:
        return auc(self.fractions, self.values)


def auc(fractions: np.ndarray, values: np.ndarray) -> float:
    """Trapezoidal area under ``values`` over ``fractions``, divided by the fraction span."""
    f = np.asarray(fractions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    span = float(f[-1] - f[0])
    if span <= 0:
        return float(v.mean())
    return float(np.sum((v[1:] + v[:-1]) * np.diff(f)) / 2.0 / span)


def blur(x: torch.Tensor, sigma: float = 1.2, kernel: int = 9) -> torch.Tensor:
    """``x`` (``1 x C x h x w``) correlated with LAM's Gaussian, reflect-101 borders, in
    float64 as LAM's path start (returned in ``x``'s dtype)."""
    before, after = -((-kernel) // 2 + 1), kernel // 2
    h, w = x.shape[-2:]
    if max(before, after) >= min(h, w):
        raise AnalysisError(f"the blur kernel {kernel} needs an input larger than "
                            f"{max(before, after)} pixels per side, got {h}x{w}")
    k = torch.from_numpy(gaussian_kernel(kernel, sigma)).to(x.device)
    c = x.shape[1]
    x64 = F.pad(x.detach().double(), (before, after, before, after), mode="reflect")
    out = F.conv2d(x64, k.expand(c, 1, kernel, kernel).contiguous(), groups=c)
    return out.to(x.dtype)


def baseline_image(x: torch.Tensor, baseline: str | torch.Tensor = "blur", *,
                   sigma: float = 1.2, kernel: int = 9) -> torch.Tensor:
    """The baseline a deleted pixel takes (see the module docstring)."""
    if isinstance(baseline, torch.Tensor):
        b = baseline.reshape(x.shape) if baseline.numel() == x.numel() else None
        if b is None:
            raise AnalysisError(f"baseline of shape {list(baseline.shape)} does not match the "
                                f"input {list(x.shape)}")
        return b.to(x.device, x.dtype)
    if baseline == "blur":
        return blur(x, sigma, kernel)
    if baseline == "bicubic":
        h, w = x.shape[-2:]
        small = F.interpolate(x.detach(), size=(max(1, h // 4), max(1, w // 4)), mode="bicubic",
                              align_corners=False, antialias=True)
        return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    raise AnalysisError(f"baseline {baseline!r} is not known; use 'blur' or 'bicubic'")


def ordering(m: np.ndarray) -> np.ndarray:
    """Flat LR pixel indices, most attributed first (ties in pixel order)."""
    return np.argsort(-np.asarray(m, dtype=np.float64).ravel(), kind="stable")


def step_counts(n_pixels: int, max_fraction: float = 0.5, step: float = 0.01) -> np.ndarray:
    """Pixel counts of the steps ``0, step, ..., max_fraction`` (rounded)."""
    if not 0 < step <= max_fraction <= 1:
        raise AnalysisError(f"steps of {step} up to {max_fraction} are not valid; use "
                            "0 < step <= max_fraction <= 1")
    n = int(round(max_fraction / step))
    return np.array([int(round(k * step * n_pixels)) for k in range(n + 1)])


@torch.no_grad()
def roi_texture(model: ImportedModel, batch: torch.Tensor, roi: tuple[int, int], window: int,
                *, one_by_one: bool = False) -> torch.Tensor:
    """``T_ROI`` of every image of ``batch`` (``one_by_one``: a model call per image)."""
    try:
        if one_by_one and batch.shape[0] > 1:
            y = torch.cat([model.graph(b[None])[0] for b in batch])
        else:
            y = model.graph(batch)[0]
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ModelError(f"the model failed on a deletion/insertion batch: {exc}") from None
    return texture_roi(y, roi[0], roi[1], window).double().cpu()


@torch.no_grad()
def runs_batched(model: ImportedModel, batch: torch.Tensor) -> bool:
    """Whether ``model`` computes a batch as its images one by one: it runs on the batch and
    the batch's last image comes out as alone. A graph traced at batch 1 may refuse a batch
    (``x.size()[0] == 1`` guards, window reshapes) or, worse, run on it and mix its images;
    either way the curves then take a model call per image."""
    if batch.shape[0] < 2:
        return True
    try:
        return not mixes_batch(model, batch, model.graph(batch)[0])
    except (RuntimeError, ValueError, IndexError):
        return False


def curves(
    model: ImportedModel,
    x: torch.Tensor,
    order: np.ndarray,
    roi: tuple[int, int],
    window: int,
    base: torch.Tensor,
    *,
    max_fraction: float = 0.5,
    step: float = 0.01,
    batch: int = 8,
    t0: float | None = None,
) -> tuple[Curve, Curve]:
    """Deletion and insertion curves of one ordering, ``batch`` steps per model call.

    Parameters
    ----------
    model, x:
        Imported model and canonical input ``1 x C x h x w`` on the model's device.
    order:
        Flat LR pixel indices, most attributed first (``h * w`` of them).
    roi, window:
        The ROI whose texture is recorded.
    base:
        The baseline image (:func:`baseline_image`).
    max_fraction, step:
        Fractions of pixels removed: ``0, step, ..., max_fraction``.
    batch:
        Steps per model evaluation (any value gives the same curves; a model that does not
        compute a batch image by image, :func:`runs_batched`, takes one call per step).
    t0:
        ``T_ROI`` of ``x`` when already known.
    """
    if batch < 1:
        raise AnalysisError(f"batch {batch} must be at least 1")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if order.size != h * w:
        raise AnalysisError(f"an ordering of {order.size} pixels does not fit the {h}x{w} input")
    counts = step_counts(h * w, max_fraction, step)
    # rank[p] = position of pixel p in the ordering; step k removes pixels with rank < counts[k]
    rank = torch.empty(h * w, dtype=torch.long)
    rank[torch.from_numpy(np.ascontiguousarray(order))] = torch.arange(h * w)
    rank = rank.view(1, 1, h, w).to(x.device)
    if t0 is None:
        t0 = float(roi_texture(model, x, roi, window)[0])
    if not t0 > 0:
        raise AnalysisError("T_ROI of the input is 0 (a flat ROI); choose a textured ROI")
    ks = torch.as_tensor(counts, device=x.device).view(-1, 1, 1, 1)
    dele, ins = [], []
    one_by_one = False
    for start in range(0, len(counts), batch):
        removed = rank < ks[start : start + batch]  # (B, 1, h, w)
        deleted = torch.where(removed, base, x)
        if start == 0:
            one_by_one = not runs_batched(model, deleted)
        dele.append(roi_texture(model, deleted, roi, window, one_by_one=one_by_one))
        ins.append(roi_texture(model, torch.where(removed, x, base), roi, window,
                               one_by_one=one_by_one))
    fr = counts / float(h * w)
    return (Curve(fr, (torch.cat(dele) / t0).numpy()),
            Curve(fr, (torch.cat(ins) / t0).numpy()))
