"""The input crop that can reach an ROI: LAM's path steps on a window of the input.

``T_ROI`` reads a ``(window + 1)``-pixel square of the output. In a model whose receptive
field is finite (convolutions, pointwise activations, pixel shuffles, integer upsampling:
no global pooling, no attention over the whole image, no fixed-size resampling), those
output pixels depend only on the input pixels within the receptive field's reach of the
ROI. Every gradient LAM takes is then exactly zero outside that box, and inside it the
model computed on the box alone gives the same values as on the whole input, provided the
box's border is either the image's own border (the same padding there) or far enough from
the ROI that no padded value reaches it. LAM's 50 forward+backward passes can then run on
the box: on paper CARN at 64x64 LR with a 16-pixel ROI at x4, about half the input.

The reach is measured on the graph, not declared: one forward pass with a single NaN
pixel at the centre of the input. NaN propagates through every arithmetic operation
(``NaN * 0`` is NaN), so the output pixels that come out NaN are exactly those that
structurally depend on that pixel, whatever route imported the model. A global operation
(a global average pool in channel attention, attention over the image, a norm over the
spatial axes) makes the whole output NaN: the probe then reports no finite reach and the
path runs on the full input. The same happens when the footprint touches the output's
border (the reach cannot be measured on this input) or the model's output is not
``scale * input`` with no offset. Translation equivariance, which the box relies on, is
checked where it matters, by the caller: :func:`glam.engine.lam.compute_lam` evaluates
the first path step both on the full input and on the box and keeps the box only when
the two gradients agree (the full gradient exactly zero outside the box).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from glam.importers.model import ImportedModel

#: LR pixels added around the measured reach on every side (interior borders only). The
#: probe's 2x2 block already covers both phases of a stride-2 operation, and the first path
#: step checks the box against the full input, so no margin is needed.
MARGIN = 0

#: The box is used only when it saves at least this fraction of the input's pixels.
MIN_SAVING = 0.2


@dataclass(frozen=True)
class InputCrop:
    """A box of the input (LR pixels, end exclusive) and the ROI inside its output.

    Attributes
    ----------
    top, left, bottom, right:
        The box ``x[..., top:bottom, left:right]``.
    out_top, out_left:
        The ROI's corner in the box's output (output pixels).
    reach:
        The receptive field's measured reach (LR pixels) above, below, left, right of a pixel.
    """

    top: int
    left: int
    bottom: int
    right: int
    out_top: int
    out_left: int
    reach: tuple[int, int, int, int]

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` of the box in the input."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def fraction(self, h: int, w: int) -> float:
        """The box's share of an ``h x w`` input's pixels."""
        return (self.bottom - self.top) * (self.right - self.left) / (h * w)


@dataclass(frozen=True)
class Reach:
    """What the NaN probe measured: the output footprint of one input pixel.

    ``extent`` is ``(up, down, left, right)`` in output pixels, relative to the output
    block ``[s*q, s*q + s)`` of an input pixel ``q`` (rows and columns alike);
    ``None`` when the footprint is unbounded on this input (a global operation, or a reach
    larger than the input), with ``reason`` saying which.
    """

    extent: tuple[int, int, int, int] | None
    reason: str = ""


def probe_reach(model: ImportedModel, x: torch.Tensor) -> Reach:
    """Measure the output footprint of an input pixel by NaN propagation.

    The 2x2 block at the input's centre is set to NaN (all channels); the output pixels
    that come out NaN are its footprint, and the footprint of one pixel is that less one
    input pixel on the far side (a 2x2 block covers both phases of a stride-2 operation).

    Parameters
    ----------
    model:
        Imported model on ``x``'s device.
    x:
        Canonical input ``1 x C x h x w``; the probe uses its values, with one pixel (all
        channels) set to NaN.
    """
    c = model.conventions
    if c.fixed_size is not None or tuple(c.offset) != (0, 0) or c.scale < 1:
        return Reach(None, "the output is not scale x input with no offset")
    s = int(c.scale)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < 4 or w < 4:
        return Reach(None, "the input is too small to measure a receptive field")
    cy, cx = h // 2 - 1, w // 2 - 1  # a 2x2 block: both phases of a stride-2 operation
    probe = x.detach().clone()
    probe[..., cy : cy + 2, cx : cx + 2] = float("nan")
    try:
        with torch.no_grad():
            y = model.graph(probe)[0]
    except (RuntimeError, ValueError, IndexError, AssertionError) as exc:  # e.g. a NaN check
        return Reach(None, f"the model failed on the NaN probe: {exc}")
    if tuple(y.shape[-2:]) != (s * h, s * w):
        return Reach(None, "the output is not scale x input")
    extent = nan_footprint(y, s, cy, cx)
    if extent == "none":
        return Reach(None, "the NaN probe reached no output pixel (an operation swallows NaN)")
    if extent == "border":
        return Reach(None, "the receptive field reaches the image border (a global operation, "
                           "or a reach larger than the input)")
    return Reach(extent)  # type: ignore[arg-type]


def nan_footprint(
    y: torch.Tensor, s: int, cy: int, cx: int
) -> tuple[int, int, int, int] | str:
    """The reach ``(up, down, left, right)`` in output pixels of the 2x2 NaN block at
    ``(cy, cx)`` of a probe whose output is ``y`` (``s`` output pixels per probed pixel),
    or ``"none"`` when no output pixel is NaN, ``"border"`` when the NaN pixels touch the
    output's border (the reach cannot be measured on this probe)."""
    bad = torch.isnan(y).flatten(0, -3).any(dim=0)  # (H, W)
    rows = bad.any(dim=1).nonzero().flatten()
    cols = bad.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return "none"
    r0, r1 = int(rows[0]), int(rows[-1])
    c0, c1 = int(cols[0]), int(cols[-1])
    H, W = int(bad.shape[0]), int(bad.shape[1])
    if r0 == 0 or c0 == 0 or r1 == H - 1 or c1 == W - 1:
        return "border"
    # relative to the output block of one probed pixel: the block's far pixel reaches as far
    # beyond its own output as the near one does beyond its own
    return (s * cy - r0, r1 - (s * cy + 2 * s - 1), s * cx - c0, c1 - (s * cx + 2 * s - 1))


def span(lo_out: int, hi_out: int, before: int, after: int, s: int, n: int) -> tuple[int, int]:
    """LR pixels ``[a, b)`` whose output footprint can meet output pixels ``lo_out..hi_out``.

    LR pixel ``q`` reaches output pixels ``s*q - before .. s*q + s - 1 + after``.
    """
    a = -(-(lo_out - (s - 1) - after) // s)  # smallest q with s*q + s - 1 + after >= lo_out
    b = (hi_out + before) // s  # largest q with s*q - before <= hi_out
    a = max(0, a - MARGIN)
    b = min(n - 1, b + MARGIN)
    return a, b + 1


def roi_crop(
    model: ImportedModel, x: torch.Tensor, top: int, left: int, window: int
) -> tuple[InputCrop | None, str]:
    """The input box that can reach the ROI, or ``(None, why not)``.

    Parameters
    ----------
    model, x:
        Imported model and canonical input ``1 x C x h x w``.
    top, left, window:
        The ROI in output pixels (``T_ROI`` reads output pixels ``top .. top + window``).
    """
    reach = probe_reach(model, x)
    if reach.extent is None:
        return None, reach.reason
    s = int(model.conventions.scale)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    H, W = s * h, s * w
    up, down, lft, rgt = reach.extent
    # T_ROI reads output rows top .. top + window (its vertical differences), clipped
    r_lo, r_hi = top, min(H - 1, top + window)
    c_lo, c_hi = left, min(W - 1, left + window)
    t, b = span(r_lo, r_hi, up, down, s, h)
    lf, rt = span(c_lo, c_hi, lft, rgt, s, w)
    crop = InputCrop(t, lf, b, rt, top - s * t, left - s * lf,
                     (-(-up // s), -(-down // s), -(-lft // s), -(-rgt // s)))
    if crop.fraction(h, w) > 1.0 - MIN_SAVING:
        return None, f"the ROI's receptive field covers {crop.fraction(h, w):.0%} of the input"
    return crop, ""
