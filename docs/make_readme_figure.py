"""Regenerate ``docs/demo-local.png``, the README's figure, from ``glam demo``.

Runs the demo on the bundled model and image (LAM shortened to 8 path steps: the figure
shows GL-AM's local maps, which LAM does not change), takes its ``local`` figure (the
paper's Fig. 3 row, maps on a gamma 0.5 display scale) and stores it at 1200 pixels wide
with a 256-colour palette, which keeps the committed file under 200 KB
(``tests/test_readme.py`` checks the size).

Usage: ``.venv/bin/python docs/make_readme_figure.py``
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent / "demo-local.png"
WIDTH = 1200
COLOURS = 256


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "glam", "demo", "--out", tmp, "--lam-fold", "8",
             "--threads", "1", "--quiet", "--figure-scale", "gamma", "--figure-gamma", "0.5"],
            check=True, stdout=subprocess.DEVNULL,
        )
        (src,) = Path(tmp).glob("figures/*/local.png")
        with Image.open(src) as im:
            rgb = im.convert("RGB")
            small = rgb.resize((WIDTH, round(rgb.height * WIDTH / rgb.width)), Image.LANCZOS)
    small.quantize(COLOURS, method=Image.Quantize.MEDIANCUT).save(OUT, optimize=True)
    print(f"{OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
