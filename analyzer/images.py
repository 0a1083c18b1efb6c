"""Image I/O and the input conventions of GLAM.md ("Inputs").

Images are read with their real range: 8-bit modes as they are, 16-bit (``I;16``, ``I``) by
65535 and float (``F``) images as values that must already lie in [0, 1]; the EXIF
orientation is applied first, as image viewers do. A high-bit-depth image is kept as a
single-channel float PIL image (mode ``F``, values in [0, 1]) so that the bicubic downscale
keeps its precision. What the model will not see (an alpha channel, colour for a grayscale
image) is reported as a warning that the run records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from glam.errors import UserInputError
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: PIL modes read as single-channel high-bit-depth (or float) gray images.
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_GRAY_MODES = ("1", "L", "LA", "La", *_HIGH_BIT_MODES)


@dataclass
class ImageRead:
    """An image as read from a file.

    Attributes
    ----------
    image:
        RGB (``mode == "RGB"``) for 8-bit images, or a gray float image (``mode == "F"``,
        values in [0, 1]) for 16-bit and float files.
    gray:
        The file holds no colour (gray modes).
    alpha:
        The file had an alpha channel (dropped: the model sees the colour values as stored).
    source_mode:
        The PIL mode of the file (``"I;16"``, ``"RGBA"``, ...).
    transposed:
        An EXIF orientation other than "normal" was applied.
    path_name:
        The file name (for messages).
    reduced_to_8bit:
        A 16-bit-per-channel colour file (Pillow decodes it at 8 bits per channel: the
        range is right, the precision 1/255).
    """

    image: Image.Image
    gray: bool
    alpha: bool
    source_mode: str
    transposed: bool = False
    path_name: str = ""
    reduced_to_8bit: bool = False

    def warnings(self, in_channels: int, what: str = "image") -> list[str]:
        """The warnings a run on a model with ``in_channels`` inputs must record."""
        out = []
        name = f"{what} {self.path_name!r}" if self.path_name else what
        if self.alpha:
            out.append(
                f"{name} has an alpha channel ({self.source_mode}); glam drops it and feeds "
                "the stored colour values (not composited on a background); flatten the "
                "image first if transparency matters"
            )
        if self.reduced_to_8bit:
            out.append(
                f"{name} has 16 bits per colour channel ({self.source_mode}); Pillow decodes it "
                "at 8 bits per channel, so its values are quantised to 1/255 (the range is kept)"
            )
        if self.gray and in_channels == 3:
            out.append(
                f"{name} is grayscale ({self.source_mode}) but the model takes RGB; the gray "
                "value is fed on all three channels"
            )
        if not self.gray and in_channels == 1:
            out.append(
                f"{name} has colour ({self.source_mode}) but the model takes one channel: it "
                "analyses the Y channel (ITU-R BT.601) of the image, and its output is Y (the "
                "figures show it in colour with the input's chroma)"
            )
        return out


def _open_failed(p: Path, exc: BaseException) -> UserInputError:
    return UserInputError(f"{str(p)!r} is not a readable image ({exc})")


def _high_bit_to_float(im: Image.Image, p: Path) -> Image.Image:
    """A 16-bit / 32-bit integer or float gray image as mode ``F`` in [0, 1]."""
    arr = np.asarray(im)
    if arr.ndim != 2:
        raise UserInputError(
            f"image {str(p)!r} has mode {im.mode} with shape {arr.shape}; glam reads 16-bit "
            "and float images with one channel; save it as 8-bit RGB or 16-bit gray"
        )
    if arr.dtype.kind in "ui":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise UserInputError(
                f"image {str(p)!r} ({im.mode}) holds integers in [{lo}, {hi}], outside the "
                "16-bit range [0, 65535]; save it as a 16-bit or 8-bit image"
            )
        out = arr.astype(np.float64) / 65535.0
    else:
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise UserInputError(
                f"float image {str(p)!r} contains NaN or Inf; glam needs finite values in [0, 1]"
            )
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise UserInputError(
                f"float image {str(p)!r} holds values in [{lo:.4g}, {hi:.4g}], outside [0, 1]; "
                "glam reads float images as [0, 1] intensities: rescale it to [0, 1] (or save "
                "it as 8/16-bit)"
            )
        out = a
    return Image.fromarray(out.astype(np.float32), mode="F")


def read_image(path: str | Path) -> ImageRead:
    """Open an image file: EXIF orientation applied, 16-bit and float images in their range.

    Parameters
    ----------
    path:
        The image file.

    Returns
    -------
    ImageRead

    Raises
    ------
    UserInputError
        When the file is missing or not an image, or a float/integer image is outside its
        range.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"image {str(p)!r} does not exist; pass an existing image file")
    try:
        with Image.open(p) as im:
            mode = im.mode
            alpha = mode in ("RGBA", "LA", "La", "PA", "RGBa") or (
                mode in ("P", "L", "RGB") and "transparency" in im.info
            )
            # before anything loads the pixels (which empties im.tile)
            reduced = mode in ("RGB", "RGBA") and any(
                ";16" in str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in im.tile)
            transposed = im.getexif().get(0x0112, 1) not in (0, 1)
            oriented = ImageOps.exif_transpose(im) if transposed else im
            if mode in _HIGH_BIT_MODES:
                img = _high_bit_to_float(oriented, p)
            else:
                img = oriented.convert("RGB")
                img.load()
            gray = mode in _GRAY_MODES or (mode == "P" and _gray_palette(im))
            return ImageRead(img, gray=gray, alpha=alpha, source_mode=mode,
                             transposed=transposed, path_name=p.name,
                             reduced_to_8bit=reduced)
    except Image.DecompressionBombError as exc:
        raise UserInputError(
            f"image {str(p)!r} is too large to decode safely ({exc}); crop or downscale it"
        ) from None
    except MemoryError:
        raise UserInputError(
            f"image {str(p)!r} does not fit in memory; crop or downscale it"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _open_failed(p, exc) from None


def _gray_palette(im: Image.Image) -> bool:
    pal = im.getpalette() or []
    rgb = np.asarray(pal[: len(pal) - len(pal) % 3], dtype=np.int32).reshape(-1, 3)
    return bool(rgb.size) and bool((rgb == rgb[:, :1]).all())


def read_rgb(path: str | Path) -> Image.Image:
    """Open an image file (see :func:`read_image`): RGB, or gray float ``F`` for 16-bit/float.

    Raises
    ------
    UserInputError
        When the file is missing or not an image.
    """
    return read_image(path).image


def rgb_float(img: Image.Image) -> np.ndarray:
    """``H x W x 3`` float32 RGB in [0, 1] of an image from :func:`read_image`."""
    if img.mode == "F":
        g = np.asarray(img, dtype=np.float32)
        return np.repeat(np.clip(g, 0.0, 1.0)[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """Image to a canonical ``1 x C x h x w`` float32 tensor in [0, 1].

    ``channels == 1`` gives the Y channel of ITU-R BT.601 YCbCr (PIL ``convert("YCbCr")``;
    for a gray float image, its value).
    """
    import torch

    if img.mode == "F":
        g = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[..., None]
        arr = g if channels == 1 else np.repeat(g, 3, axis=2)
    elif channels == 1:
        arr = np.asarray(img.convert("YCbCr"), dtype=np.float32)[..., :1] / 255.0
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


def hr_to_lr(hr: Image.Image, scale: int) -> tuple[Image.Image, Image.Image]:
    """Crop the HR image to a multiple of ``scale`` and bicubic-downscale it (PIL BICUBIC).

    Returns
    -------
    tuple
        ``(lr, cropped_hr)``.
    """
    w, h = hr.size
    cw, ch = w - w % scale, h - h % scale
    if cw < scale or ch < scale:
        raise UserInputError(f"HR image of {w}x{h} is smaller than the scale factor {scale}")
    cropped = hr.crop((0, 0, cw, ch))
    return cropped.resize((cw // scale, ch // scale), Image.BICUBIC), cropped


def reference_size(out_hw: tuple[int, int], offset: tuple[int, int]) -> tuple[int, int]:
    """The HR reference size that matches an output of ``out_hw``: the output plus the
    border a cropping model (offset < 0) drops (GLAM.md "Inputs")."""
    return int(out_hw[0]) + max(0, -int(offset[0])), int(out_hw[1]) + max(0, -int(offset[1]))


def crop_reference(
    ref: torch.Tensor, out_hw: tuple[int, int], offset: tuple[int, int], scale: int = 1
) -> torch.Tensor:
    """Check a reference's size and crop it to the output.

    The reference must be the output size plus the border a cropping model drops
    (:func:`reference_size`); it may be up to ``scale - 1`` pixels larger (an HR image not a
    multiple of ``s``, whose LR is ``floor(HR / s)``: it is cropped at the bottom/right to a
    multiple of ``s`` first, as ``--hr`` and the SR benchmarks do). Models that crop a border
    (offset < 0) then drop ``-offset/2`` pixels on each side (GLAM.md "Inputs").

    Raises
    ------
    UserInputError
        When the reference's size does not match, naming both sizes.
    """
    H, W = out_hw
    eh, ew = reference_size(out_hw, offset)
    rh, rw = int(ref.shape[-2]), int(ref.shape[-1])
    slack = max(int(scale), 1) - 1
    if not (eh <= rh <= eh + slack and ew <= rw <= ew + slack):
        border = f" plus the {eh - H}x{ew - W} border the model crops" if (eh, ew) != (H, W) else ""
        raise UserInputError(
            f"reference of {rh}x{rw} (HxW) does not match the {H}x{W} model output: expected "
            f"{eh}x{ew} (the output{border}"
            + (f", or up to {slack} pixel(s) more, cropped to a multiple of x{scale}" if slack else "")
            + "); pass the HR image that belongs to this LR input"
        )
    top = max(0, -offset[0] // 2)
    left = max(0, -offset[1] // 2)
    return ref[..., top : top + H, left : left + W]


def downscale_psnr(ref_hr: torch.Tensor, lr: torch.Tensor, scale: int) -> float:
    """PSNR (dB) between the bicubic downscale by ``scale`` of an HR reference and the LR input.

    High (above 30 dB) when the reference is the HR image of this LR input; low when it is
    another image. Both are ``[1,] C x H x W`` in [0, 1] with the same channels.
    """
    import math

    import torch.nn.functional as F

    r = ref_hr if ref_hr.dim() == 4 else ref_hr[None]
    x = lr if lr.dim() == 4 else lr[None]
    h, w = int(x.shape[-2]), int(x.shape[-1])
    down = F.interpolate(r.float(), size=(h, w), mode="bicubic", align_corners=False,
                         antialias=True).clamp(0, 1)
    mse = float(((down - x.float()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def merge_y_with_cbcr(y: np.ndarray, lr_rgb: Image.Image) -> np.ndarray:
    """A 1-channel (Y) output shown in colour: Y merged with bicubic-upscaled Cb/Cr.

    Returns an ``H x W x 3`` uint8 RGB array.
    """
    H, W = y.shape[-2:]
    ycbcr = lr_rgb.convert("YCbCr").resize((W, H), Image.BICUBIC)
    arr = np.asarray(ycbcr).copy()
    arr[..., 0] = np.clip(np.rint(y.reshape(H, W) * 255.0), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(arr, mode="YCbCr").convert("RGB"))


def list_images(path: str | Path) -> list[Path]:
    """The image files in a directory (sorted), or ``[path]`` for a file."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserInputError(f"directory {str(p)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    return [p]
