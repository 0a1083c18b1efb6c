"""Image I/O and the input conventions of GLAM.md ("Inputs")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from analyzer.errors import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB.

    Raises
    ------
    UserInputError
        When the file is missing or not an image.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"image {str(p)!r} does not exist; pass an existing image file")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise UserInputError(
            f"image {str(p)!r} is too large to decode safely ({exc}); crop or downscale it"
        ) from None
    except MemoryError:
        raise UserInputError(
            f"image {str(p)!r} does not fit in memory; crop or downscale it"
        ) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserInputError(f"{str(p)!r} is not a readable image ({exc})") from None


def to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """RGB image to a canonical ``1 x C x h x w`` float32 tensor in [0, 1].

    ``channels == 1`` gives the Y channel of ITU-R BT.601 YCbCr (PIL ``convert("YCbCr")``).
    """
    if channels == 1:
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


def crop_reference(ref: torch.Tensor, out_hw: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
    """Crop a reference to the output size; models that crop a border (offset < 0) drop
    ``-offset/2`` pixels on each side (GLAM.md "Inputs")."""
    H, W = out_hw
    top = max(0, -offset[0] // 2)
    left = max(0, -offset[1] // 2)
    if ref.shape[-2] < top + H or ref.shape[-1] < left + W:
        raise UserInputError(
            f"reference of {ref.shape[-2]}x{ref.shape[-1]} is smaller than the model output "
            f"{H}x{W}; pass the HR image that matches the LR input"
        )
    return ref[..., top : top + H, left : left + W]


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
