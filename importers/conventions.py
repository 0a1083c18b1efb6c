"""Detect a model's I/O conventions: layout, channels, fixed size, outputs, scale, range."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from glam.errors import ConventionError, ModelError, NotSuperResolutionError
from glam.importers.probe import probe_input

NativeRunner = Callable[[torch.Tensor], list[torch.Tensor]]

DEFAULT_PROBE_SIZE = (40, 36)  # non-square, to catch H/W swaps
SECOND_PROBE_DELTA = (8, 12)
RANGE_PREFERENCE = 4.0  # range 255 must beat range 1 by this factor in MSE to be chosen


@dataclass(frozen=True)
class InputLayout:
    """Layout, channels and fixed spatial size of the model input."""

    layout: str
    channels: int | None
    fixed_size: tuple[int, int] | None


def infer_input_layout(
    shape: Sequence[int | None] | None,
    *,
    layout: str | None = None,
    channels: int | None = None,
) -> InputLayout:
    """Infer layout/channels/fixed size from a (possibly partly dynamic) native input shape."""
    if shape is not None and len(shape) != 4:
        raise ConventionError(
            f"the model input has rank {len(shape)} (shape {list(shape)}); glam needs a 4-D image "
            "input (N, C, H, W) or (N, H, W, C)"
        )
    if layout is None:
        layout = "NCHW"
        if shape is not None and shape[1] not in (1, 3) and shape[3] in (1, 3):
            layout = "NHWC"
    layout = layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise ConventionError(f"layout {layout!r} is not supported; use NCHW or NHWC")
    fixed = None
    ch_dim = None
    if shape is not None:
        hw = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
        ch_dim = shape[3] if layout == "NHWC" else shape[1]
        if isinstance(hw[0], int) and isinstance(hw[1], int) and hw[0] > 0 and hw[1] > 0:
            fixed = (int(hw[0]), int(hw[1]))
    if channels is None and isinstance(ch_dim, int) and ch_dim > 0:
        channels = ch_dim
    elif channels is not None and isinstance(ch_dim, int) and ch_dim > 0 and ch_dim != channels:
        raise ConventionError(
            f"--in-channels {channels} contradicts the model's input shape {list(shape or [])} "
            f"({ch_dim} channels); drop the flag or pass {ch_dim}"
        )
    if channels is not None and channels not in (1, 3):
        raise ConventionError(
            f"the model takes {channels} input channels; glam supports 1 (Y of YCbCr) or 3 (RGB)"
        )
    return InputLayout(layout=layout, channels=channels, fixed_size=fixed)


def to_native(x: torch.Tensor, layout: str, input_range: int) -> torch.Tensor:
    """Canonical NCHW [0, 1] input to the model's native layout and range."""
    if layout == "NHWC":
        x = x.permute(0, 2, 3, 1)
    return x * input_range if input_range != 1 else x


def from_native(y: torch.Tensor, layout: str, input_range: int) -> torch.Tensor:
    """Native output to canonical NCHW [0, 1] scale."""
    if input_range != 1:
        y = y / input_range
    if layout == "NHWC":
        y = y.permute(0, 3, 1, 2)
    return y


def select_output(names: Sequence[str], output: str | int | None) -> int:
    """Index of the analysed output, chosen by name or index (default 0)."""
    if output is None:
        return 0
    if isinstance(output, int) or (isinstance(output, str) and output.lstrip("-").isdigit()):
        idx = int(output)
        if not 0 <= idx < len(names):
            raise ConventionError(
                f"output index {idx} is out of range; the model has {len(names)} outputs: "
                f"{', '.join(names)}"
            )
        return idx
    if output not in names:
        raise ConventionError(f"no output named {output!r}; the model's outputs are: {', '.join(names)}")
    return list(names).index(output)


def choose_image_output(
    run: NativeRunner, layout: InputLayout, channels: int, names: Sequence[str]
) -> tuple[int, str | None]:
    """The output to analyse when a model has several and none was asked for: the first
    that is an image (4-D, 1 or 3 channels, at least as large as the input), with a note
    naming the choice and the other outputs; ``(0, None)`` for a single output.

    Raises
    ------
    ConventionError
        When no output is an image.
    """
    if len(names) <= 1:
        return 0, None
    size = layout.fixed_size or DEFAULT_PROBE_SIZE
    with torch.no_grad():
        outs = run(to_native(probe_input(channels, *size), layout.layout, 1))
    shapes = [list(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in outs]
    for i, o in enumerate(outs):
        if not (isinstance(o, torch.Tensor) and o.dim() == 4 and o.is_floating_point()):
            continue
        c, h, w = _spatial(o, layout.layout)
        if c in (1, 3) and h >= size[0] and w >= size[1]:
            others = ", ".join(f"{n} {s}" for j, (n, s) in enumerate(zip(names, shapes, strict=False)) if j != i)
            return i, (
                f"the model returns {len(outs)} outputs; glam analyses {names[i]} "
                f"{shapes[i]}, the first image output (others: {others}; choose with --output)"
            )
    raise ConventionError(
        f"none of the model's {len(outs)} outputs is an image of 1 or 3 channels at least as "
        f"large as the input ({', '.join(f'{n} {s}' for n, s in zip(names, shapes, strict=False))}); "
        "glam analyses SR models"
    )


def _spatial(y: torch.Tensor, layout: str) -> tuple[int, int, int]:
    if y.dim() != 4:
        raise NotSuperResolutionError(
            f"the selected output has shape {list(y.shape)}, not a 4-D image; choose another output "
            "with --output or pass an SR model"
        )
    if layout == "NHWC":
        return y.shape[3], y.shape[1], y.shape[2]
    return y.shape[1], y.shape[2], y.shape[3]


@dataclass(frozen=True)
class ScaleMeasurement:
    """``out = scale * in + offset`` per axis, and how it was measured."""

    scale: int
    offset: tuple[int, int]
    source: str
    out_channels: int


def measure_scale(
    run: NativeRunner,
    layout: InputLayout,
    channels: int,
    output_index: int,
    probe_size: tuple[int, int] | None = None,
) -> ScaleMeasurement:
    """Measure the scale factor from two input sizes (GLAM.md "Inputs").

    Raises
    ------
    NotSuperResolutionError
        When there is no integer slope ``s >= 1`` equal on both axes.
    """
    size1 = layout.fixed_size or probe_size or DEFAULT_PROBE_SIZE
    size2 = (size1[0] + SECOND_PROBE_DELTA[0], size1[1] + SECOND_PROBE_DELTA[1])

    def out_size(size: tuple[int, int]) -> tuple[int, int, int]:
        x = to_native(probe_input(channels, *size), layout.layout, 1)
        with torch.no_grad():
            outs = run(x)
        return _spatial(outs[output_index], layout.layout)

    c1, h1, w1 = out_size(size1)
    try:
        c2, h2, w2 = out_size(size2)
        two = True
    except (ModelError, RuntimeError, ValueError, IndexError, AssertionError):
        if layout.fixed_size is None:
            raise
        two = False
    if two:
        sh_num, sw_num = h2 - h1, w2 - w1
        dh, dw = size2[0] - size1[0], size2[1] - size1[1]
        consistent = not (
            sh_num % dh or sw_num % dw or sh_num // dh != sw_num // dw or sh_num // dh < 1
        )
        # a fixed-size graph may still run at another size with baked-in shapes: then the
        # second size proves nothing, and the one-size measurement below decides
        two = consistent or layout.fixed_size is None
    if two:
        if not consistent:
            raise NotSuperResolutionError(
                f"output size does not grow as s*input with one integer s >= 1: input "
                f"{size1}->{size2} gave output {(h1, w1)}->{(h2, w2)}; this is not an SR model"
            )
        s = sh_num // dh
        return ScaleMeasurement(s, (h1 - s * size1[0], w1 - s * size1[1]), "two sizes", c1)
    if h1 % size1[0] or w1 % size1[1] or h1 // size1[0] != w1 // size1[1] or h1 // size1[0] < 1:
        raise NotSuperResolutionError(
            f"fixed-size model: input {size1} gives output {(h1, w1)}, not an integer multiple; "
            "this is not an SR model glam can analyse"
        )
    return ScaleMeasurement(h1 // size1[0], (0, 0), "one size (fixed-size model, offset 0)", c1)


def detect_input_range(
    run: NativeRunner,
    layout: str,
    channels: int,
    output_index: int,
    size: tuple[int, int],
    scale: int,
    offset: tuple[int, int],
) -> tuple[int, str]:
    """Pick 1 or 255: the range whose output best matches a bicubic upscale of the input.

    Returns
    -------
    tuple[int, str]
        The range and a description with the mean squared errors of both candidates.
    """
    errs = range_errors(run, layout, channels, output_index, size, scale, offset)
    # Prefer [0, 1] unless [0, 255] is clearly better: nearly bias-free networks behave
    # almost the same at either scale (measured: IMDN-RTC 1.2e-3 vs 6.9e-4).
    best = 255 if errs[255] * RANGE_PREFERENCE < errs[1] else 1
    rule = (
        f"255 only when its MSE is over {RANGE_PREFERENCE:g}x lower than 1's"
        + (": it is" if best == 255 else (
            ": it is lower, but not that much" if errs[255] < errs[1] else ": it is not"))
    )
    desc = (f"auto (MSE vs bicubic: range 1 -> {errs[1]:.3g}, range 255 -> {errs[255]:.3g}; "
            f"rule: {rule})")
    return best, desc


def range_errors(
    run: NativeRunner,
    layout: str,
    channels: int,
    output_index: int,
    size: tuple[int, int],
    scale: int,
    offset: tuple[int, int],
) -> dict[int, float]:
    """MSE against a bicubic upscale of the output for input range 1 and 255."""
    x = probe_input(channels, *size)
    up = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    errs: dict[int, float] = {}
    for rng in (1, 255):
        with torch.no_grad():
            y = from_native(run(to_native(x, layout, rng))[output_index], layout, rng)
        ref = _crop_like(up, y.shape[-2:], offset)
        if y.shape[1] != ref.shape[1]:
            y, ref = y.mean(1, keepdim=True), ref.mean(1, keepdim=True)
        err = float(((y.float() - ref) ** 2).mean())
        errs[rng] = err if err == err else float("inf")
    return errs


def forced_range_warning(errs: dict[int, float], forced: int) -> str | None:
    """A warning when a forced ``--input-range`` is clearly worse than the other one (its
    MSE against a bicubic upscale over :data:`RANGE_PREFERENCE` times the other's)."""
    other = 255 if forced == 1 else 1
    if errs[forced] > RANGE_PREFERENCE * errs[other]:
        return (
            f"--input-range {forced} was forced, but the model's output is much further from a "
            f"bicubic upscale with it (MSE {errs[forced]:.3g}) than with range {other} (MSE "
            f"{errs[other]:.3g}); the model probably takes [0, {other}]: check the range or use "
            "--input-range auto"
        )
    return None


def _crop_like(up: torch.Tensor, hw: Sequence[int], offset: tuple[int, int]) -> torch.Tensor:
    """Crop a bicubic upscale to an output that dropped ``-offset`` border pixels."""
    H, W = int(hw[0]), int(hw[1])
    top = max(0, -offset[0] // 2)
    left = max(0, -offset[1] // 2)
    return up[..., top : top + H, left : left + W]
