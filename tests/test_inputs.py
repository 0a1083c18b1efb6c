"""Inputs a new user hands glam (issue 14, "Silent wrong results" and "Data sets"): high-bit-
depth and float images, EXIF orientation, alpha and grayscale, references of the wrong size or
of another image, non-image outputs, forced input ranges, tiny images, benchmark folders with
``*_LR`` / ``*_HR`` pairs, the Y-channel PSNR, and a CLI that checks paths before torch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import glam.importers
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from glam.api import analyze, prepare_image
from glam.cli import cli
from glam.engine.glam import validate_roi
from glam.engine.metrics import psnr_y, y_studio
from glam.errors import AnalysisError, ConventionError, UserInputError
from glam.gate.check import CheckReport, CheckResult
from glam.gate.tolerances import Tolerances
from glam.images import read_image, to_tensor
from glam.runs import AnalyzeOptions, pair_images
from numerics import EPS64, assert_close
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
SET5 = ROOT.parent / "shared" / "data" / "Set5" / "image_SRF_4"


# ------------------------------------------------------------------------- image reading


def test_16bit_png_keeps_its_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(20000, 58000, size=(12, 10)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    r = read_image(tmp_path / "g16.png")
    t = to_tensor(r.image, 3)
    assert t.shape == (1, 3, 12, 10)
    # one float32 rounding of each value (half an epsilon); the float32 mean of 360 values
    # against float64's: a few roundings of the sum
    assert_close(t[0, 0], a / 65535.0, ulps=0.5, err_msg="16-bit values")
    assert_close([t.mean()], [a.mean() / 65535.0], ulps=16, err_msg="mean")  # was 1.0 (white)
    assert r.gray
    assert_close(to_tensor(r.image, 1)[0, 0], a / 65535.0, ulps=0.5, err_msg="as Y")


def test_float_tiff_keeps_its_values_and_out_of_range_is_refused(tmp_path: Path) -> None:
    f = np.linspace(0.0, 0.925, 12 * 10, dtype=np.float32).reshape(12, 10)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    t = to_tensor(read_image(tmp_path / "f.tif").image, 3)
    assert_close(t[0, 1], f, ulps=0.5, err_msg="float TIFF")  # was all zeros
    Image.fromarray(f * 255, mode="F").save(tmp_path / "f255.tif")
    with pytest.raises(UserInputError, match=r"outside \[0, 1\]"):
        read_image(tmp_path / "f255.tif")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 32), (200, 10, 10))
    img.paste((10, 10, 200), (0, 0, 8, 32))  # a blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    r = read_image(tmp_path / "rot.jpg")
    assert r.image.size == (32, 64)  # as viewers show it (was 64x32)
    assert r.transposed
    arr = np.asarray(r.image)
    assert arr[:4, :, 2].mean() > 150  # the left band is now on top


def _rgb48_png(path: Path, a: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_rgb48_png_keeps_its_range_and_says_it_is_8_bit(tmp_path: Path) -> None:
    a = (np.arange(4 * 6 * 3).reshape(4, 6, 3) * 900).astype(np.uint16)
    _rgb48_png(tmp_path / "c48.png", a)
    r = read_image(tmp_path / "c48.png")
    # not a float tolerance: Pillow decodes 16-bit colour at 8 bits (one 8-bit level)
    np.testing.assert_allclose(to_tensor(r.image, 3)[0].numpy().transpose(1, 2, 0), a / 65535.0,
                               atol=1.0 / 255)
    assert any("16 bits per colour channel" in w for w in r.warnings(3))


def test_alpha_and_gray_warnings(tmp_path: Path) -> None:
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(tmp_path / "a.png")
    Image.new("L", (8, 8), 77).save(tmp_path / "g.png")
    ra, rg = read_image(tmp_path / "a.png"), read_image(tmp_path / "g.png")
    assert any("alpha" in w for w in ra.warnings(3)) and not rg.warnings(1)
    assert any("grayscale" in w and "RGB" in w for w in rg.warnings(3))


# ------------------------------------------------------------------------- references


def test_reference_of_wrong_size_is_refused_naming_both(
    imported_tiny, lr_image: Path, hr_image: Path, tmp_path: Path
) -> None:
    # lr_image is 24x20 (w x h): the x2 output is 40x48 (HxW); a 48x40 HR image is another size
    lr = prepare_image(imported_tiny, lr_image).lr
    big = torch.rand(3, 60, 56)
    with pytest.raises(UserInputError, match=r"60x56.*40x48.*expected 40x48"):
        analyze(imported_tiny, lr, reference=big)
    # up to s - 1 pixels more is the modcrop of an odd-size HR image: accepted
    r = analyze(imported_tiny, lr, reference=torch.rand(3, 41, 49), keep_layers=False)
    assert math.isfinite(r.metrics["psnr"])


def test_reference_of_another_image_warns(imported_tiny, tmp_path: Path) -> None:
    src = Image.open(ROOT / "fixtures" / "images" / "astronaut_hr.png").convert("RGB")
    hr = src.crop((60, 40, 100, 88))
    hr.save(tmp_path / "hr.png")
    hr.resize((20, 24), Image.BICUBIC).save(tmp_path / "lr.png")
    Image.fromarray((np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "noise.png")
    good = prepare_image(imported_tiny, tmp_path / "lr.png", reference=tmp_path / "hr.png")
    r = analyze(imported_tiny, good.lr, reference=good.reference, keep_layers=False)
    assert not any("does not look like" in w for w in r.warnings)
    bad = prepare_image(imported_tiny, tmp_path / "lr.png", reference=tmp_path / "noise.png")
    r = analyze(imported_tiny, bad.lr, reference=bad.reference, keep_layers=False)
    assert any("does not look like the HR image" in w for w in r.warnings)
    assert "psnr_y" in r.metrics and r.metrics["psnr_y_shave"] == 2.0


def test_psnr_y_shaves_the_border() -> None:
    rng = np.random.default_rng(1)
    ref = rng.random((3, 12, 12))
    out = ref.copy()
    out[:, :2, :] = 0.0  # wrong only in a 2-pixel border
    assert psnr_y(out, ref, 2) == math.inf
    assert math.isfinite(psnr_y(out, ref, 0))
    out2 = np.clip(ref + 0.01, 0, 1)
    y = y_studio(np.clip(out2, 0, 1))[3:-3, 3:-3] - y_studio(ref)[3:-3, 3:-3]
    # float64 both ways (PSNR ~40 dB): measured 0, the floor of 8 (tests/numerics.py)
    want = 10 * math.log10(1 / np.mean(y**2))
    assert_close([psnr_y(out2, ref, 3)], [want], ulps=8, eps=EPS64, err_msg="Y-PSNR")
    assert math.isnan(psnr_y(out, ref, 6))


# ------------------------------------------------------------------------- conventions


class _SegHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 21, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _ClampUp(nn.Module):
    """A [0, 1] model: identity conv, clamp to [0, 1], bicubic x2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            for c in range(3):
                self.conv.weight[c, c, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).clamp(0, 1)
        return nn.functional.interpolate(y, scale_factor=2, mode="bicubic", align_corners=False)


def test_non_image_output_is_refused() -> None:
    torch.manual_seed(0)
    with pytest.raises(ConventionError, match=r"21 channels.*1 channel \(Y\) or 3 \(RGB\)"):
        glam.importers.from_module(_SegHead())


def test_forced_input_range_warns_and_auto_states_its_rule() -> None:
    forced = glam.importers.from_module(_ClampUp(), input_range=255)
    assert any("--input-range 255 was forced" in w for w in forced.warnings)
    auto = glam.importers.from_module(_ClampUp(), input_range="auto")
    assert auto.conventions.input_range == 1
    assert "rule: 255 only when its MSE is over 4x lower" in auto.conventions.range_source
    assert not any("was forced" in w for w in auto.warnings)


def test_tiny_image_says_too_small() -> None:
    with pytest.raises(AnalysisError, match="too small.*8x8 output.*16x16") as e:
        validate_roi((8, 8), 0, 0, 16)
    assert "-8" not in str(e.value)


# ------------------------------------------------------------------------- pairing


def _pair_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bench"
    d.mkdir()
    src = Image.open(ROOT / "fixtures" / "images" / "astronaut_hr.png").convert("RGB")
    for i, (x, y) in enumerate([(60, 40), (100, 100)]):
        hr = src.crop((x, y, x + 40, y + 48))
        hr.save(d / f"img_00{i + 1}_SRF_2_HR.png")
        hr.resize((20, 24), Image.BICUBIC).save(d / f"img_00{i + 1}_SRF_2_LR.png")
    return d


def test_pair_images_lr_hr_and_reference_dir(tmp_path: Path) -> None:
    d = _pair_dir(tmp_path)
    p = pair_images([d], AnalyzeOptions())
    assert [f.name for f in p.files] == ["img_001_SRF_2_LR.png", "img_002_SRF_2_LR.png"]
    assert [r.name for r in p.references] == ["img_001_SRF_2_HR.png", "img_002_SRF_2_HR.png"]
    assert [f.name for f in pair_images([d], AnalyzeOptions(hr=True)).files] == [
        "img_001_SRF_2_HR.png", "img_002_SRF_2_HR.png"]
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    (lr_dir / "img_001_SRF_2_LR.png").write_bytes((d / "img_001_SRF_2_LR.png").read_bytes())
    p = pair_images([lr_dir], AnalyzeOptions(reference_dir=d))
    assert p.references == [d / "img_001_SRF_2_HR.png"]
    (lr_dir / "zebra.png").write_bytes((d / "img_001_SRF_2_LR.png").read_bytes())
    with pytest.raises(UserInputError, match="no HR reference for 'zebra.png'"):
        pair_images([lr_dir], AnalyzeOptions(reference_dir=d))


@pytest.mark.shared
@pytest.mark.skipif(not SET5.is_dir(), reason="no ../shared/data/Set5")
def test_set5_folder_pairs() -> None:
    p = pair_images([SET5], AnalyzeOptions())
    assert len(p.files) == 5 and all(f.stem.endswith("_LR") for f in p.files)
    assert all(r is not None and r.stem == f.stem[:-2] + "HR" for f, r in
               zip(p.files, p.references, strict=True))


# ------------------------------------------------------------------------- CLI


def test_cli_paired_folder_gray_image_and_show(
    tiny_model: Path, tmp_path: Path, cached_model_load: None
) -> None:
    d = _pair_dir(tmp_path)
    Image.open(d / "img_001_SRF_2_LR.png").convert("L").save(d / "gray.png")
    out = tmp_path / "runs.h5"
    runner = CliRunner()
    res = runner.invoke(cli, ["analyze", str(tiny_model), str(d), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "paired 2 *_LR image(s)" in res.output
    assert "warning: tiny_x2__gray: " in res.output and "grayscale" in res.output
    with h5py.File(out, "r") as f:
        runs = list(f["runs"])
        assert runs == ["tiny_x2__gray", "tiny_x2__img_001_SRF_2_LR", "tiny_x2__img_002_SRF_2_LR"]
        g = f["runs/tiny_x2__img_001_SRF_2_LR"]
        assert str(g.attrs["reference_path"]).endswith("img_001_SRF_2_HR.png")
        assert "psnr_y" in g["metrics"].attrs and "psnr" in g["metrics"].attrs
        assert any("grayscale" in str(w) for w in f["runs/tiny_x2__gray"].attrs["warnings"])
    res = runner.invoke(cli, ["show", str(out), "tiny_x2__img_001_SRF_2_LR"])
    assert res.exit_code == 0 and "psnr_y " in res.output and "psnr_y_shave" in res.output


def test_top_level_help_and_failures_only() -> None:
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for cmd in ("glam baseline", "glam check", "glam report"):
        assert cmd in res.output
    rep = CheckReport("m.onnx", "", "onnx", "b.h5", "", "cpu", Tolerances(), checks=[
        CheckResult("r", "di_local_delta", 0.1, 2.0, "<=", "passed"),
        CheckResult("r", "psnr_delta", None, 0.1, "<=", "skipped")])
    text = rep.table(failures_only=True)
    assert "no failed checks: 1 of 2 check(s) passed over 1 run(s), 1 skipped" in text


_NO_TORCH = r"""
import json, sys
from glam.cli import cli
out = {}
for name, args in json.loads(sys.argv[1]).items():
    try:
        code = cli.main(args=args, prog_name="glam", standalone_mode=False) or 0
    except SystemExit as e:
        code = e.code
    out[name] = [code, "torch" in sys.modules]
print("RESULT " + json.dumps(out))
"""


def test_cli_checks_paths_and_reads_archives_without_torch(
    tiny_model: Path, lr_image: Path, tmp_path: Path, cached_model_load: None
) -> None:
    archive = tmp_path / "a.h5"
    res = CliRunner().invoke(cli, ["analyze", str(tiny_model), str(lr_image), "-o", str(archive),
                                   "--run", "r"])
    assert res.exit_code == 0, res.output
    (tmp_path / "bad.png").write_bytes(b"not an image")
    cmds = {
        "ls": ["ls", str(archive)],
        "show": ["show", str(archive), "r"],
        "missing_model": ["analyze", str(tmp_path / "missing.onnx"), str(lr_image)],
        "bad_image": ["analyze", str(tiny_model), str(lr_image), str(tmp_path / "bad.png"),
                      "-o", str(tmp_path / "x.h5")],
        "missing_baseline": ["check", str(tiny_model), "--baseline", str(tmp_path / "b.h5")],
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", _NO_TORCH, json.dumps(cmds)], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    # every command ran in order in one process: torch was never imported
    assert got == {"ls": [0, False], "show": [0, False], "missing_model": [2, False],
                   "bad_image": [2, False], "missing_baseline": [2, False]}, p.stderr
    assert "model" in p.stderr and "missing.onnx' does not exist" in p.stderr
    assert "bad.png' is not a readable image" in p.stderr
    assert "write one with `glam baseline MODEL IMAGES" in p.stderr


def test_probe_image_falls_back_to_the_installed_fixtures(tmp_path: Path) -> None:
    """A wheel install has no fixtures/ folder beside importers/: the probe image (parity,
    range detection) comes from the glam.fixtures package data."""
    from glam.importers.probe import probe_image_path

    p = probe_image_path(tmp_path / "fixtures" / "images" / "astronaut_hr.png")
    assert p.is_file() and p.name == "astronaut_hr.png" and tmp_path not in p.parents
