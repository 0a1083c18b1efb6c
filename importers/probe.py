"""Real probe inputs: crops of the bundled natural image, used for parity and conventions."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: The probe image in a source checkout (``fixtures/images/``).
PROBE_IMAGE = Path(__file__).resolve().parent.parent / "fixtures" / "images" / "astronaut_hr.png"
_PROBE_NAME = "astronaut_hr.png"


def probe_image_path(checkout: Path = PROBE_IMAGE) -> Path:
    """The bundled probe image: the checkout's file, else the installed ``glam.fixtures``
    package data (a wheel install has no ``fixtures/`` folder beside ``importers/``).

    Raises
    ------
    ModelError
        When neither exists (a broken install).
    """
    if checkout.is_file():
        return checkout
    from importlib.resources import files

    try:
        installed = Path(str(files("glam.fixtures") / "images" / _PROBE_NAME))
    except ModuleNotFoundError:
        installed = None
    if installed is not None and installed.is_file():
        return installed
    from glam.errors import ModelError

    raise ModelError(
        f"the bundled probe image {_PROBE_NAME} is missing (looked in {checkout.parent} and the "
        "glam.fixtures package); reinstall glam"
    )


@lru_cache(maxsize=1)
def _probe_rgb() -> Image.Image:
    with Image.open(probe_image_path()) as im:
        return im.convert("RGB")


def probe_input(channels: int, height: int, width: int) -> torch.Tensor:
    """A canonical ``1 x channels x height x width`` float32 input in [0, 1].

    The bundled CC0 image is bicubic-resized to the size (natural statistics make parity and
    range detection meaningful); ``channels == 1`` gives its BT.601 Y channel.
    """
    img = _probe_rgb().resize((width, height), Image.BICUBIC)
    if channels == 1:
        arr = np.asarray(img.convert("YCbCr"), dtype=np.float32)[..., :1] / 255.0
    elif channels == 3:
        arr = np.asarray(img, dtype=np.float32) / 255.0
    else:
        base = np.asarray(img, dtype=np.float32) / 255.0
        arr = np.concatenate([base] * (channels // 3 + 1), axis=2)[..., :channels]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
