"""LAM, Local Attribution Maps (Gu & Dong, CVPR 2021), as GLAM.md states it.

Path-integrated gradients along a progressive Gaussian blur path with the official code's
numerics: kernels and path images in float64 (``cv2.filter2D`` with reflect-101 borders
becomes a torch conv with ``pad(mode="reflect")``), cast to float32 before the model.
Path steps are independent, so they are evaluated in batches of ``lam_batch``.
LAM as glam computes it, beside GL-AM: ``docs/method.md`` ("LAM, the baseline").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from glam.engine.allocator import keep_freed_memory
from glam.engine.crop import InputCrop, roi_crop
from glam.engine.device import input_in_full_precision
from glam.engine.maps import resize
from glam.engine.tail_crop import TailCrop, cropped_graph, tail_crop
from glam.engine.texture import texture_roi
from glam.errors import AnalysisError, ModelError, NumericalError
from glam.importers.model import ImportedModel


@dataclass
class LamResult:
    """LAM attribution (signed, input size), its map at input and output size, timings."""

    attribution: np.ndarray
    map: np.ndarray
    map_output: np.ndarray
    seconds: float
    fold: int
    sigma: float
    kernel_size: int
    batch: int
    warnings: list[str] = field(default_factory=list)
    crop: tuple[int, int, int, int] | None = None
    crop_note: str = ""
    tail: str | None = None  # the tail crop in use (glam.engine.tail_crop), described


def gaussian_kernel(l: int, sigma: float, epsilon: float = 1e-5) -> np.ndarray:
    """``l x l`` isotropic Gaussian with std ``sigma + epsilon``, offsets ``(-l)//2+1 .. l//2``,
    normalised to sum 1 (float64)."""
    ax = np.arange((-l) // 2 + 1.0, l // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    k = np.exp(-(xx**2 + yy**2) / (2.0 * (sigma + epsilon) ** 2))
    return k / np.sum(k)


def _filter(x: torch.Tensor, kernels: torch.Tensor, l: int) -> torch.Tensor:
    """Correlate each channel of ``x`` (``1 x C x h x w``) with each of ``kernels``
    (``K x l x l``), reflect-101 borders; returns ``K x C x h x w``."""
    before, after = -((-l) // 2 + 1), l // 2
    h, w = x.shape[-2:]
    if max(before, after) >= min(h, w):
        raise AnalysisError(
            f"LAM kernel size {l} needs an input larger than {max(before, after)} pixels per "
            f"side, got {h}x{w}; use a smaller --lam-kernel"
        )
    padded = F.pad(x, (before, after, before, after), mode="reflect")
    out = F.conv2d(padded.transpose(0, 1), kernels[:, None].to(x.dtype))  # (C, K, h, w)
    return out.transpose(0, 1).contiguous()


def blur_path(
    x: torch.Tensor, sigma: float = 1.2, fold: int = 50, l: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Path images ``gamma_{i+1}`` and derivatives ``(gamma_{i+1} - gamma_i) * fold``.

    Both ``fold x C x h x w``, computed in float64 and returned as float32, as the official
    code does (``cv2.filter2D`` on float64 images, then ``astype(float32)``).
    """
    sigmas = np.linspace(sigma, 0.0, fold + 1)
    kernels = np.stack([gaussian_kernel(l, s) for s in sigmas])
    k_next = torch.from_numpy(kernels[1:])
    k_diff = torch.from_numpy((kernels[1:] - kernels[:-1]) * fold)
    x64 = x.detach().to("cpu", torch.float64)
    images = _filter(x64, k_next, l).float()
    derivs = _filter(x64, k_diff, l).float()
    return images.to(x.device), derivs.to(x.device)


def mixes_batch(model: ImportedModel, z: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the batched output's last image differs from that image run alone.

    A graph exported at batch size 1 can run on a larger batch and silently mix its images
    (SwinIR's window reshapes in a legacy ONNX export); LAM must not batch such a model,
    nor may the sanity checks' deletion / insertion curves.
    """
    with torch.no_grad():
        alone = model.graph(z[-1:].detach())[0]
        batched = y[-1:].detach()
    if alone.shape != batched.shape:
        return True
    tol = 1e-5 * max(1.0, float(alone.abs().max()))
    return not float((alone - batched).abs().max()) <= tol


def _roi_grad(y: torch.Tensor, z: torch.Tensor, top: int, left: int, window: int) -> torch.Tensor:
    """``dT_ROI/dz`` with NaN set to 0 (LAM's own NaN on flat regions); Inf is an error."""
    obj = texture_roi(y, top, left, window).sum()
    (g,) = torch.autograd.grad(obj, [z])
    g = torch.nan_to_num(g, nan=0.0)
    if not torch.isfinite(g).all():
        raise NumericalError("LAM path gradient contains Inf; the model is numerically broken")
    return g


#: The box's first path-step gradient against the full input's, in float32 epsilons of the
#: gradient's largest magnitude. Measured: bit-identical on paper CARN and the test models
#: (oneDNN computes each output element the same way whatever the image size); a box that
#: is not exact (a positional operation, a border the probe missed) differs by orders of
#: magnitude more.
BOX_ULPS = 64


@dataclass
class _Reduced:
    """Where LAM's path steps run: the input box (or the whole input) and the graph that
    takes it (the tail on its crop, or the whole graph), with the ROI in its output."""

    box: InputCrop | None
    tail: TailCrop | None
    graph: Callable[[torch.Tensor], torch.Tensor]
    out_top: int
    out_left: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return self.box.slices if self.box is not None else (slice(None), slice(None))

    def note(self) -> str:
        parts = []
        if self.box is not None:
            parts.append(f"box {self.box.bottom - self.box.top}x{self.box.right - self.box.left}")
        if self.tail is not None:
            parts.append(self.tail.describe())
        return "; ".join(parts)


def _reduced(
    model: ImportedModel, box: InputCrop | None, tail: TailCrop | None, top: int, left: int
) -> _Reduced | None:
    """The path steps' input and graph for ``box`` and ``tail`` (``None`` if neither)."""
    if tail is not None:
        offset = (box.top, box.left) if box is not None else (0, 0)
        graph = cropped_graph(model.graph, tail, offset)
        return _Reduced(box, tail, graph, top - tail.scale * tail.top, left - tail.scale * tail.left)
    if box is not None:
        return _Reduced(box, None, lambda z: model.graph(z)[0], box.out_top, box.out_left)
    return None


def _reduced_agrees(
    red: _Reduced, imgs: torch.Tensor, g_full: torch.Tensor, window: int
) -> tuple[bool, str]:
    """Whether the path images' ROI gradient through ``red`` equals ``g_full`` (the full
    input's): zero outside the box, the same inside (:data:`BOX_ULPS`)."""
    rows, cols = red.slices
    outside = g_full.clone()
    outside[:, :, rows, cols] = 0
    if bool(outside.ne(0).any()):
        return False, "the ROI's gradient reaches outside the input box"
    z = imgs[:, :, rows, cols].clone().requires_grad_(True)
    what = red.note()
    try:
        with torch.enable_grad():
            y = red.graph(z)
        g = _roi_grad(y, z, red.out_top, red.out_left, window)
    except (RuntimeError, ValueError, IndexError, AssertionError, NumericalError) as exc:
        return False, f"the model failed on the reduced path ({what}): {exc}"
    inside = g_full[:, :, rows, cols]
    tol = BOX_ULPS * float(torch.finfo(torch.float32).eps) * float(inside.abs().max())
    err = float((g - inside).abs().max()) if g.shape == inside.shape else float("inf")
    if not err <= tol:
        return False, f"the gradient on the reduced path ({what}) differs from the full input's by {err:.3g}"
    return True, ""


@input_in_full_precision
def compute_lam(
    model: ImportedModel,
    x: torch.Tensor,
    top: int,
    left: int,
    window: int = 16,
    *,
    sigma: float = 1.2,
    fold: int = 50,
    l: int = 9,
    lam_batch: int = 8,
    progress: bool | Callable[..., Any] = False,
    crop: bool = True,
) -> LamResult:
    """LAM attribution for the ROI, ``fold`` model evaluations batched by ``lam_batch``.

    Parameters
    ----------
    model, x:
        Imported model and canonical input ``1 x C x h x w`` (same device).
    top, left, window:
        ROI in output pixels (``T_ROI`` of GLAM.md is the objective).
    sigma, fold, l:
        Blur path parameters (LAM defaults 1.2, 50, 9).
    lam_batch:
        Path steps per model evaluation; any value gives the same result.
    crop:
        Run the path steps on the input box that can reach the ROI where that is exact
        (:func:`glam.engine.crop.roi_crop`: a model with a finite receptive field smaller
        than the input; any global operation keeps the full input), and the graph's tail
        after its last dominator at the input's resolution on the crop of that value that
        can reach the ROI (:func:`glam.engine.tail_crop.tail_crop`: the upsampler, say).
        The first path step runs on the full input and on the reduced path, and the
        reduction is kept only if both give the same gradient (``crop_note`` of the result
        says what ran, or why not).
    progress:
        Show a tqdm progress bar; or a factory ``progress(total, desc, unit)`` returning a
        bar with ``update(n)`` and ``close()`` (e.g. :meth:`glam.progress.PhaseLog.bar`,
        which suits terminals and logs alike).

    Returns
    -------
    LamResult
    """
    if fold < 1:
        raise AnalysisError(f"LAM fold {fold} must be at least 1")
    if lam_batch < 1:
        raise AnalysisError(f"lam_batch {lam_batch} must be at least 1")
    if x.device.type == "cpu":
        keep_freed_memory()
    t0 = time.perf_counter()
    images, derivs = blur_path(x, sigma, fold, l)
    warnings: list[str] = []
    total = torch.zeros_like(x[0], dtype=torch.float64)
    batch = lam_batch
    if callable(progress):
        bar = progress(fold, "LAM path", "step")
    else:
        from tqdm.auto import tqdm

        bar = tqdm(total=fold, desc="LAM path", unit="step", disable=not progress, leave=False)
    start = 0
    out_hw: tuple[int, int] | None = None
    batch_checked = False
    red: _Reduced | None = None
    box_note = "off"
    if crop:
        box, box_note = roi_crop(model, x, top, left, window)
        tail, tail_note = (None, "the graph is fixed to one input size") \
            if model.conventions.fixed_size is not None else tail_crop(
                model.graph, x, top, left, window, int(model.metadata.get("input_multiple") or 0))
        red = _reduced(model, box, tail, top, left)
        box_why = "" if box is not None else f"full input: {box_note}"
        box_note = "; ".join(n for n in (box_note, tail_note) if n)
    verified = False
    while start < fold:
        stop = min(fold, start + batch)
        use_box = red is not None and verified
        imgs = images[start:stop]
        if use_box:
            imgs = imgs[(..., *red.slices)]  # type: ignore[union-attr]
        z = imgs.clone().requires_grad_(True)
        try:
            with torch.enable_grad():
                y = red.graph(z) if use_box else model.graph(z)[0]  # type: ignore[union-attr]
        except (RuntimeError, ValueError, IndexError) as exc:  # IndexError: a mask of batch 1
            if use_box:  # the model does not run on the reduced path: the full input from here on
                red, box_note = None, f"the model failed on the reduced path: {exc}"
                continue
            if batch == 1:
                raise ModelError(f"the model failed on a LAM path image: {exc}") from None
            warnings.append(
                f"the model does not run on a batch of {stop - start} (fixed batch size?); "
                "LAM fell back to lam_batch=1"
            )
            batch = 1
            continue
        if stop - start > 1 and not batch_checked:
            batch_checked = True
            if mixes_batch(model, z, y):
                warnings.append(
                    f"the model runs on a batch of {stop - start} but its outputs differ from "
                    "one image at a time (a batch size of 1 baked into its reshapes?); LAM fell "
                    "back to lam_batch=1"
                )
                batch = 1
                continue
        if use_box:
            g = _roi_grad(y, z, red.out_top, red.out_left, window)  # type: ignore[union-attr]
            rows, cols = red.slices  # type: ignore[union-attr]
            total[:, rows, cols] += (g * derivs[start:stop, :, rows, cols]).double().sum(dim=0)
        else:
            out_hw = (int(y.shape[-2]), int(y.shape[-1]))
            g = _roi_grad(y, z, top, left, window)
            if red is not None and not verified:
                verified, why = _reduced_agrees(red, images[start:stop], g, window)
                if not verified and red.tail is not None and red.box is not None:
                    # the tail's crop did not hold: the input box alone may
                    red = _reduced(model, red.box, None, top, left)
                    verified, why2 = _reduced_agrees(red, images[start:stop], g, window)  # type: ignore[arg-type]
                    why = why if verified else f"{why}; {why2}"
                if not verified:
                    red, box_note = None, why
                else:
                    box_note = "; ".join(n for n in (red.note(), box_why) if n)
            total += (g * derivs[start:stop]).double().sum(dim=0)
        bar.update(stop - start)
        start = stop
    bar.close()
    attr = (total / fold).float()
    summed = attr.sum(dim=0).abs()
    mx = summed.max()
    lam_map = summed / mx if mx > 0 else torch.zeros_like(summed)
    map_out = resize(lam_map, out_hw or tuple(lam_map.shape))
    return LamResult(
        attribution=attr.cpu().numpy(),
        map=lam_map.cpu().numpy(),
        map_output=map_out.cpu().numpy(),
        seconds=time.perf_counter() - t0,
        fold=fold,
        sigma=sigma,
        kernel_size=l,
        batch=batch,
        warnings=warnings,
        crop=None if red is None or red.box is None else (
            red.box.top, red.box.left, red.box.bottom, red.box.right),
        tail=None if red is None or red.tail is None else red.tail.describe(),
        crop_note=box_note,
    )
