"""The public analysis API: :func:`analyze` one LR input, :func:`prepare_image` from files.

Example
-------
>>> import glam, glam.importers
>>> model = glam.importers.load("fixtures/models/rcan_small_x2.legacy.onnx")      # doctest: +SKIP
>>> inputs = glam.prepare_image(model, "fixtures/images/astronaut_hr.png", hr=True)  # doctest: +SKIP
>>> result = glam.analyze(model, inputs.lr, reference=inputs.reference)   # doctest: +SKIP
>>> result.metrics["di_local"]                                                # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from glam.engine.device import resolve_device
from glam.engine.glam import (
    LayerRecord,
    PerLayerMode,
    StoreMode,
    compute_glam,
    validate_roi,
)
from glam.engine.lam import LamResult, compute_lam
from glam.engine.metrics import (
    attributed_fraction,
    diffusion_index,
    map_metrics,
    mse_psnr,
    psnr_y,
)
from glam.engine.reference import EngineParity, ParityMeter, reference_glam
from glam.errors import AnalysisError, UserInputError
from glam.images import crop_reference, downscale_psnr, hr_to_lr, read_image, to_tensor
from glam.importers.loader import sha256_of
from glam.importers.model import ImportedModel, ParityReport, TapInfo
from glam.importers.parity import run_parity as check_run_parity
from glam.importers.size_rule import check_input_size
from glam.progress import PhaseLog


@dataclass
class PreparedImage:
    """A canonical LR input (and HR reference when known) read from image files."""

    lr: torch.Tensor
    reference: torch.Tensor | None
    image_path: str
    image_sha256: str
    is_hr: bool
    reference_path: str | None = None
    lr_rgb: Any = None
    warnings: list[str] = field(default_factory=list)


def prepare_image(
    model: ImportedModel,
    image: str | Path,
    *,
    hr: bool = False,
    reference: str | Path | None = None,
) -> PreparedImage:
    """Read an image as the model's LR input (GLAM.md "Inputs").

    Parameters
    ----------
    model:
        The imported model (its channels and scale decide the conversion).
    image:
        LR image, or the HR image when ``hr`` is true (then LR = bicubic downscale by ``s``
        after cropping to a multiple of ``s``, and the HR image becomes the reference).
    hr:
        Treat ``image`` as the HR reference.
    reference:
        An explicit HR reference for an LR ``image``.
    """
    if hr and reference is not None:
        raise UserInputError("pass either hr=True or a reference image, not both")
    c = model.conventions
    read = read_image(image)
    img = read.image
    warnings = read.warnings(c.in_channels)
    ref_t = None
    ref_path = None
    if hr:
        lr_img, hr_img = hr_to_lr(img, c.scale)
        ref_t = to_tensor(hr_img, c.out_channels)
        ref_path = str(image)
    else:
        lr_img = img
        if reference is not None:
            ref_read = read_image(reference)
            ref_t = to_tensor(ref_read.image, c.out_channels)
            ref_path = str(reference)
            if ref_read.gray and not read.gray and c.out_channels == 3:
                warnings.append(
                    f"reference {Path(reference).name!r} is grayscale but the LR image has "
                    "colour; PSNR compares the colour output with a gray reference"
                )
    return PreparedImage(
        lr=to_tensor(lr_img, c.in_channels),
        reference=ref_t,
        image_path=str(image),
        image_sha256=sha256_of(image),
        is_hr=hr,
        reference_path=ref_path,
        lr_rgb=lr_img,
        warnings=warnings,
    )


@dataclass
class Result:
    """Everything one GL-AM analysis produced (maps are float32 numpy arrays).

    Attributes
    ----------
    input, output, reference:
        ``C x h x w`` LR input as fed, ``C x H x W`` output, HR reference cropped to the
        output (or ``None``).
    roi, window:
        ``(top, left)`` in output pixels and the window size ``l``.
    local, global_:
        ``{"consensus", "variation", "sum"}`` maps, ``H x W``, each in [0, 1].
    layers:
        Per-tap records (empty when they were only streamed to a sink).
    lam:
        LAM result when asked for.
    metrics:
        Scalars: ``di_local``, ``di_global``, ``attributed_fraction_*``, ``seconds_glam``,
        and when known ``psnr``, ``mse``, ``psnr_roi``, ``mse_roi``, ``psnr_y`` (Y channel,
        border of ``psnr_y_shave = s`` pixels removed), ``di_lam``,
        ``di_lam_output``, ``attributed_fraction_lam``, ``seconds_lam``.
    map_metrics:
        DI and attributed fraction of every map, keyed ``"local/sum"`` etc.
    taps:
        The tap table with ``parent``/``participating`` at the analysed input size.
    peak_memory_bytes:
        On CUDA, ``torch.cuda.max_memory_allocated`` over the GL-AM analysis (model and
        input included); ``None`` on CPU.
    """

    input: np.ndarray
    output: np.ndarray
    reference: np.ndarray | None
    roi: tuple[int, int]
    window: int
    local: dict[str, np.ndarray]
    global_: dict[str, np.ndarray]
    layers: list[LayerRecord]
    lam: LamResult | None
    metrics: dict[str, float]
    map_metrics: dict[str, dict[str, float]]
    timings: dict[str, float]
    taps: list[TapInfo]
    device: str
    warnings: list[str] = field(default_factory=list)
    input_crop: tuple[int, int, int, int] | None = None
    engine_parity: EngineParity | None = None
    peak_memory_bytes: int | None = None  # GL-AM's peak device memory (CUDA only)
    run_parity: ParityReport | None = None
    """The analysed output against the reference runtime on this input
    (:func:`glam.importers.parity.run_parity`); ``None`` when the model has no reference."""


def default_roi(out_hw: tuple[int, int], window: int) -> tuple[int, int]:
    """The ROI centred in the output."""
    return max(0, (out_hw[0] - window) // 2), max(0, (out_hw[1] - window) // 2)


def _fit_fixed_size(
    model: ImportedModel,
    lr: torch.Tensor,
    roi: tuple[int, int] | None,
    window: int,
) -> tuple[torch.Tensor, tuple[int, int] | None, tuple[int, int, int, int] | None, list[str]]:
    """Crop an LR input to a fixed-size model's input around the ROI (or refuse)."""
    c = model.conventions
    if c.fixed_size is None:
        return lr, roi, None, []
    fh, fw = c.fixed_size
    h, w = lr.shape[-2:]
    if (h, w) == (fh, fw):
        return lr, roi, None, []
    if h < fh or w < fw:
        raise AnalysisError(
            f"the image ({h}x{w} LR) is smaller than the fixed input size {fh}x{fw} of this "
            "model; use a larger image"
        )
    s = c.scale
    if roi is None:
        top0, left0 = (h - fh) // 2, (w - fw) // 2
        new_roi = None
    else:
        cy = (roi[0] + window / 2 - c.offset[0] / 2) / s
        cx = (roi[1] + window / 2 - c.offset[1] / 2) / s
        top0 = int(min(max(0, round(cy - fh / 2)), h - fh))
        left0 = int(min(max(0, round(cx - fw / 2)), w - fw))
        new_roi = (roi[0] - s * top0, roi[1] - s * left0)
    msg = (
        f"the model takes a fixed {fh}x{fw} input; the {h}x{w} image was cropped at "
        f"(top={top0}, left={left0})"
    )
    return lr[..., top0 : top0 + fh, left0 : left0 + fw], new_roi, (top0, left0, fh, fw), [msg]


def analyze(
    model: ImportedModel,
    lr: torch.Tensor,
    roi: tuple[int, int] | None = None,
    window: int = 16,
    *,
    reference: torch.Tensor | None = None,
    lam: bool = False,
    device: str | torch.device = "auto",
    store: StoreMode = "maps",
    on_layer: Callable[[LayerRecord], None] | None = None,
    keep_layers: bool = True,
    lam_fold: int = 50,
    lam_sigma: float = 1.2,
    lam_kernel: int = 9,
    lam_batch: int = 8,
    progress: bool = False,
    verify: bool = False,
    log: PhaseLog | None = None,
    per_layer: PerLayerMode = "auto",
) -> Result:
    """Compute GL-AM (and optionally LAM) for one LR input.

    Implements "Interpreting Image Super-Resolution in Artificial Neural Networks from Global
    and Local Views" as specified in GLAM.md: the local map from one backward pass of
    ``T_ROI(y)`` to every tap, the global map from each layer's texture gradient with respect
    to its parent layer.

    Parameters
    ----------
    model:
        From :func:`glam.importers.load`.
    lr:
        Canonical LR input, ``1 x C_in x h x w`` (or ``C_in x h x w``) in [0, 1].
    roi:
        ``(top, left)`` in output pixels; default: the output centre.
    window:
        ROI window ``l`` (default 16).
    reference:
        HR reference (``C x H' x W'``) for PSNR/MSE; cropped to the output.
    lam:
        Also compute LAM (``lam_fold`` path steps in batches of ``lam_batch``).
    device:
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    store:
        ``"tensors"`` also hands raw per-layer activations and gradients to ``on_layer``.
    on_layer:
        Streaming sink for per-layer records.
    keep_layers:
        Keep per-layer records in the result.
    verify:
        Also run the literal implementation of GLAM.md (:mod:`glam.engine.reference`) on the
        same model and input and record the engine's largest error per map and per-layer
        map in ``Result.engine_parity`` (GLAM.md allows 1e-4; check
        ``result.engine_parity.passed``). Costs one reference run, several times GL-AM.
    log:
        A :class:`~glam.progress.PhaseLog`: writes the GL-AM, verify and LAM phases
        with their times as they finish, and LAM's progress bar (instead of ``progress``).
    per_layer:
        How GL-AM's per-layer work runs (:func:`glam.engine.glam.compute_glam`):
        ``"auto"`` batches it across same-shape layers on CUDA and uses the fused kernels
        on CPU; ``"per-layer"``, ``"batched"``, ``"compiled"`` choose one.

    Returns
    -------
    Result

    Raises
    ------
    AnalysisError
        ROI outside the output, window < 2, image smaller than a fixed-size input, or a size
        the graph cannot run (not a multiple of ``metadata["input_multiple"]``).
    NumericalError
        NaN/Inf in the output or gradients.
    ParityError
        The output differs from the reference runtime's on this input (a branch the trace
        baked in, a size-specialised graph): nothing of this input may be archived.
    """
    dev = resolve_device(device)
    if not isinstance(lr, torch.Tensor):
        raise UserInputError(f"lr must be a torch.Tensor, got {type(lr).__name__}")
    if lr.dim() == 3:
        lr = lr[None]
    c = model.conventions
    if lr.dim() != 4 or lr.shape[0] != 1 or lr.shape[1] != c.in_channels:
        raise UserInputError(
            f"lr has shape {list(lr.shape)}; the model takes 1 x {c.in_channels} x h x w"
        )
    lr = lr.float()
    lr_full = lr
    lr, roi, crop, warnings = _fit_fixed_size(model, lr, roi, window)
    check_input_size(model.metadata.get("input_multiple"), int(lr.shape[-2]), int(lr.shape[-1]))
    H, W = c.output_size(int(lr.shape[-2]), int(lr.shape[-1]))
    if roi is None:
        roi = default_roi((H, W), window)
    validate_roi((H, W), roi[0], roi[1], window)
    model.to(dev)
    x = lr.to(dev)
    meter = None
    if verify:
        t0 = time.perf_counter()
        ref = reference_glam(model.graph, x, roi[0], roi[1], window)
        meter = ParityMeter(ref, time.perf_counter() - t0)
        on_layer = _metered(meter, on_layer)
        if log is not None:
            log.done("verify", time.perf_counter() - t0, "the literal GLAM.md reference")
    maps = compute_glam(
        model, x, roi[0], roi[1], window, store=store, on_layer=on_layer, keep_layers=keep_layers,
        per_layer=per_layer,
    )
    parity = meter.finish(maps.local, maps.global_) if meter is not None else None
    seconds_glam = maps.timings["total"]  # the analysis, without one-time kernel loading
    if log is not None:
        n_part = sum(bool(v) for v in maps.participating)
        log.done("GL-AM", seconds_glam, f"{n_part} participating layers")
    # the graph against the original model on this very input (raises before anything is
    # archived when a trace was right at the probe sizes but is not here)
    run_parity = check_run_parity(model, x, maps.output)
    if log is not None and run_parity is not None:
        log.done("run parity", run_parity.seconds,
                 f"max |error| {run_parity.max_abs_error:.2g} on the analysed "
                 f"{int(x.shape[-2])}x{int(x.shape[-1])} input against {run_parity.reference}")
    warnings += maps.warnings
    metrics: dict[str, float] = {
        "di_local": diffusion_index(maps.local["sum"]),
        "di_global": diffusion_index(maps.global_["sum"]),
        "attributed_fraction_local": attributed_fraction(maps.local["sum"]),
        "attributed_fraction_global": attributed_fraction(maps.global_["sum"]),
        "seconds_glam": seconds_glam,
    }
    mm = {f"local/{k}": map_metrics(v) for k, v in maps.local.items()}
    mm.update({f"global/{k}": map_metrics(v) for k, v in maps.global_.items()})
    ref_np = None
    if reference is not None:
        ref, ref_warnings = _checked_reference(model, reference, lr_full, crop, (H, W))
        warnings += ref_warnings
        if ref.shape[0] != maps.output.shape[0]:
            raise UserInputError(
                f"reference has {ref.shape[0]} channels, the output {maps.output.shape[0]}"
            )
        ref_np = ref.float().numpy()
        mse, psnr = mse_psnr(maps.output, ref_np)
        t, l_ = roi
        mse_r, psnr_r = mse_psnr(
            maps.output[:, t : t + window, l_ : l_ + window], ref_np[:, t : t + window, l_ : l_ + window]
        )
        metrics.update({"mse": mse, "psnr": psnr, "mse_roi": mse_r, "psnr_roi": psnr_r,
                        "psnr_y": psnr_y(maps.output, ref_np, c.scale),
                        "psnr_y_shave": float(c.scale)})
    lam_res = None
    if lam:
        lam_res = compute_lam(
            model,
            x,
            roi[0],
            roi[1],
            window,
            sigma=lam_sigma,
            fold=lam_fold,
            l=lam_kernel,
            lam_batch=lam_batch,
            progress=log.bar if log is not None else progress,
        )
        if log is not None:
            log.done("LAM", lam_res.seconds, f"fold {lam_fold}")
        warnings += lam_res.warnings
        metrics.update(
            {
                "di_lam": diffusion_index(lam_res.map),
                "di_lam_output": diffusion_index(lam_res.map_output),
                "attributed_fraction_lam": attributed_fraction(lam_res.map_output),
                "seconds_lam": lam_res.seconds,
            }
        )
        mm["lam/map"] = map_metrics(lam_res.map)
        mm["lam/map_output"] = map_metrics(lam_res.map_output)
    taps = [
        TapInfo(
            index=t.index,
            name=t.name,
            op=t.op,
            shape=maps.shapes[t.index],
            parent=maps.parents[t.index],
            participating=maps.participating[t.index],
            reason=maps.reasons[t.index],
        )
        for t in model.taps
    ]
    return Result(
        input=lr[0].numpy(),
        output=maps.output,
        reference=ref_np,
        roi=(int(roi[0]), int(roi[1])),
        window=window,
        local=maps.local,
        global_=maps.global_,
        layers=maps.layers,
        lam=lam_res,
        metrics=metrics,
        map_metrics=mm,
        timings={
            **maps.timings,
            **({"lam": lam_res.seconds} if lam_res else {}),
            **({"verify": parity.seconds} if parity else {}),
            **({"run_parity": run_parity.seconds} if run_parity else {}),
        },
        taps=taps,
        device=str(dev),
        warnings=warnings,
        input_crop=crop,
        engine_parity=parity,
        peak_memory_bytes=maps.peak_memory_bytes,
        run_parity=run_parity,
    )


#: Below this PSNR (dB) between the reference's bicubic downscale and the LR input, the
#: reference is reported as probably not the HR image of that input. Measured at x4: the
#: true pairs of Set5/Set14/Urban100 (MATLAB-bicubic LR) give 49.8-58.1 dB, 39 unrelated
#: LR/HR combinations of the same data 4.9-11.4 dB.
REFERENCE_MISMATCH_DB = 20.0


def _checked_reference(
    model: ImportedModel,
    reference: torch.Tensor,
    lr_full: torch.Tensor,
    crop: tuple[int, int, int, int] | None,
    out_hw: tuple[int, int],
) -> tuple[torch.Tensor, list[str]]:
    """The reference checked against the whole LR input's output size and cropped to the
    analysed output; a warning when its downscale does not resemble the LR input."""
    c = model.conventions
    s = c.scale
    ref = reference[0] if reference.dim() == 4 else reference
    h0, w0 = int(lr_full.shape[-2]), int(lr_full.shape[-1])
    full_hw = c.output_size(h0, w0)
    # refuses a wrong size naming both; allows the HR modcrop slack of s - 1 pixels
    ref_out = crop_reference(ref, full_hw, c.offset, scale=s)
    warnings: list[str] = []
    if ref.shape[0] == lr_full.shape[1] and ref.shape[-2] >= s * h0 and ref.shape[-1] >= s * w0:
        p = downscale_psnr(ref[..., : s * h0, : s * w0], lr_full, s)
        if p < REFERENCE_MISMATCH_DB:
            warnings.append(
                f"the reference does not look like the HR image of this LR input: its bicubic "
                f"x{s} downscale differs from the LR input by PSNR {p:.1f} dB (benchmark "
                f"pairs give about 50 dB; glam warns below {REFERENCE_MISMATCH_DB:g} dB); check "
                "that the reference belongs to the image"
            )
    if crop is not None:
        top0, left0, fh, fw = crop
        ref_out = ref_out[..., s * top0 : s * (top0 + fh), s * left0 : s * (left0 + fw)]
    if tuple(ref_out.shape[-2:]) != tuple(out_hw):  # pragma: no cover - sizes checked above
        raise UserInputError(
            f"reference crop {tuple(ref_out.shape[-2:])} does not match the output {out_hw}"
        )
    return ref_out, warnings


def _metered(
    meter: ParityMeter, sink: Callable[[LayerRecord], None] | None
) -> Callable[[LayerRecord], None]:
    """``sink`` that also hands each participating layer's maps to ``meter``."""

    def on_layer(rec: LayerRecord) -> None:
        if rec.participating:
            meter.add_layer(rec.index, rec.local_map, rec.global_map)
        if sink is not None:
            sink(rec)

    return on_layer
