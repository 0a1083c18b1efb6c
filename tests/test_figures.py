"""Tests of glam.report.figures on synthetic FigureData (no model, no torch)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from glam.archive.figure_data import FigureData, LayerKey, to_rgb_uint8
from glam.errors import UserInputError
from glam.report.figures import (
    MAX_LAYER_PANELS,
    compare_figure,
    compare_table,
    lam_figure,
    layers_figure,
    local_figure,
    write_all,
)
from PIL import Image


def _blob(h: int, w: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2.0 * sigma**2))


def _unit(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def make_data(
    name: str = "run1",
    model: str = "CARN",
    size: int = 64,
    seed: int = 0,
    lam: bool = True,
    grey: bool = False,
    n_keys: int = 4,
    psnr_roi: bool = True,
) -> FigureData:
    """Seeded synthetic run: smooth random image, Gaussian-blob maps around an ROI."""
    rng = np.random.default_rng(seed)
    h = w = size
    c = 1 if grey else 3
    base = rng.random((c, h // 8 + 1, w // 8 + 1))
    img = np.kron(base, np.ones((1, 8, 8)))[:, :h, :w]
    img = np.clip(0.7 * img + 0.3 * rng.random((c, h, w)), 0.0, 1.0)
    output_rgb = to_rgb_uint8(img)
    lr = size // 4
    input_rgb = output_rgb[::4, ::4][:lr, :lr].copy()
    window = max(8, size // 8)
    top, left = size // 3, size // 2
    cy, cx = top + window / 2, left + window / 2
    noise = rng.random((h, w))
    cons = _unit(_blob(h, w, cy, cx, size / 10) + 0.05 * noise)
    var = _unit(_blob(h, w, cy + size / 8, cx - size / 8, size / 6) + 0.1 * noise)
    sm = _unit(cons + var)
    g_cons = _unit(_blob(h, w, h / 2, w / 2, size / 3) * (0.5 + noise))
    g_var = _unit(noise)
    g_sum = _unit(g_cons + g_var)
    metrics = {
        "di_local": 10.0 + seed + 0.12345,
        "di_global": 40.0 + seed + 0.5,
        "attributed_fraction_local": 0.123,
        "attributed_fraction_global": 0.456,
        "psnr": 24.5 + seed,
        "mse": 0.0035,
        "seconds_glam": 0.5,
    }
    if psnr_roi:
        metrics["psnr_roi"] = 27.25 + seed
    lam_map = None
    if lam:
        lam_map = _unit(_blob(h, w, cy, cx, size / 14) + 0.02 * noise)
        metrics.update(
            {
                "di_lam": 5.5,
                "di_lam_output": 6.25,
                "attributed_fraction_lam": 0.05,
                "seconds_lam": 12.0,
            }
        )
    names = ["head.conv", "body.0.rcab.conv1", "body.10.rg.body.3.ca.conv_du.0", "tail.upsample"]
    local_keys = [
        LayerKey(i * 3, names[i % len(names)], _unit(_blob(h, w, cy, cx, 2 + 3 * i) + 0.01 * noise))
        for i in range(n_keys)
    ]
    global_keys = [
        LayerKey(i * 3, names[i % len(names)], _unit(noise * _blob(h, w, h / 2, w / 2, 5 + 5 * i)))
        for i in range(n_keys)
    ]
    return FigureData(
        name=name,
        input_rgb=input_rgb,
        output_rgb=output_rgb,
        roi=(top, left),
        window=window,
        local={"consensus": cons, "variation": var, "sum": sm},
        global_={"consensus": g_cons, "variation": g_var, "sum": g_sum},
        metrics=metrics,
        lam_map_output=lam_map,
        local_keys=local_keys,
        global_keys=global_keys,
        model_name=model,
    )


def _check_png(path: Path, min_w: int = 200, min_h: int = 150) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        a = np.asarray(im.convert("RGB"))
    assert w > min_w and h > min_h
    assert a.std() > 20.0
    packed = (a[::2, ::2].astype(np.int32) * np.array([65536, 256, 1])).sum(axis=-1)
    assert len(np.unique(packed)) > 200  # distinct colours
    return w, h


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Every figure of one full run (LAM, per-layer keys), drawn once for several tests."""
    out = tmp_path_factory.mktemp("figures") / "out"
    return out, write_all(make_data(n_keys=5), out)


def test_write_all(written: tuple[Path, list[Path]]) -> None:
    out, paths = written
    assert [p.relative_to(out).as_posix() for p in paths] == [
        "local.png",
        "global.png",
        "attributed.png",
        "layers_local.png",
        "layers_global.png",
        "lam.png",
        "overlays/local_sum.png",
        "overlays/global_sum.png",
        "overlays/lam.png",
    ]
    assert sorted(f.relative_to(out).as_posix() for f in out.rglob("*.png")) == sorted(
        p.relative_to(out).as_posix() for p in paths
    )
    for p in paths:
        if p.parent == out:
            _check_png(p)


def test_grey_small_without_lam_keys_or_reference(tmp_path: Path) -> None:
    d = make_data(grey=True, psnr_roi=False, lam=False, n_keys=0, size=48)
    d.metrics.pop("psnr")
    d.metrics.pop("mse")
    out = tmp_path / "a" / "b"
    paths = write_all(d, out, overlays=False)
    assert paths == [out / "local.png", out / "global.png", out / "attributed.png"]
    assert sorted(f.name for f in out.iterdir()) == ["attributed.png", "global.png", "local.png"]
    for p in paths:
        _check_png(p)


def test_local_large_image(tmp_path: Path) -> None:
    d = make_data(size=256, n_keys=0, lam=False)
    assert local_figure(d, tmp_path / "l.png") == tmp_path / "l.png"
    w, _ = _check_png(tmp_path / "l.png")
    assert w < 2600


def test_lam_needs_lam(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="LAM"):
        lam_figure(make_data(lam=False, n_keys=0), tmp_path / "nolam.png")
    assert not (tmp_path / "nolam.png").exists()


def test_layers_bad_arguments(tmp_path: Path) -> None:
    d = make_data(n_keys=2)
    with pytest.raises(UserInputError):
        layers_figure(d, tmp_path / "x.png", "middle")  # type: ignore[arg-type]
    d.global_keys = []
    with pytest.raises(UserInputError):
        layers_figure(d, tmp_path / "y.png", "global")
    assert not any(tmp_path.iterdir())


def test_layers_long_list_is_sampled(tmp_path: Path) -> None:
    d = make_data(size=48, n_keys=1)
    k = d.local_keys[0].key
    d.local_keys = [LayerKey(i, f"module.body.{i}.conv", k) for i in range(200)]
    w, h = _check_png(layers_figure(d, tmp_path / "many.png", "local"))
    # 24 panels in 6 columns; all 200 would be a figure thousands of pixels tall
    assert MAX_LAYER_PANELS == 24
    assert h < 1500 and w < 1600


def test_compare_grows_with_runs(tmp_path: Path) -> None:
    runs = [make_data(f"run{i}", m, seed=i) for i, m in enumerate(["CARN", "RRDBNet", "SAN"])]
    w1, h1 = _check_png(compare_figure(runs[:1], tmp_path / "c1.png"))
    w3, h3 = _check_png(compare_figure(runs, tmp_path / "c3.png"))
    assert h3 > h1 * 2
    # without LAM in every run there is one column fewer
    runs[0] = make_data("run0", "CARN", seed=0, lam=False)
    w1b, _ = _check_png(compare_figure(runs[:1], tmp_path / "c1b.png"))
    assert w1b < w1
    with pytest.raises(UserInputError):
        compare_figure([], tmp_path / "none.png")


def test_compare_table() -> None:
    runs = [make_data("alpha", "CARN", seed=0), make_data("beta", "SAN", seed=1, lam=False)]
    runs[1].metrics.pop("psnr_roi")
    t = compare_table(runs)
    lines = t.splitlines()
    assert len(lines) == 4
    assert "DI LAM" in lines[0] and "PSNR ROI" in lines[0]
    assert re.fullmatch(r"[- ]+", lines[1])
    assert "alpha" in lines[2] and "CARN" in lines[2]
    assert "beta" in lines[3] and "SAN" in lines[3]
    # DI with two decimals, as every glam command prints it
    assert "10.12" in lines[2] and "40.50" in lines[2] and "24.50" in lines[2]
    assert "27.25" in lines[2] and "12.3%" in lines[2] and "45.6%" in lines[2]
    assert "6.25" in lines[2]
    # LAM's DI at input size (as LAM papers report it) beside the output-size one
    assert "DI LAM (output size)" in lines[0] and "5.50" in lines[2]
    assert "Y-PSNR" in lines[0] and lines[2].count("n/a") == 1  # no Y-PSNR in these runs
    assert lines[3].count("n/a") == 4  # no Y-PSNR, ROI PSNR, LAM (input and output size)
    no_lam = compare_table([make_data("x", lam=False)])
    assert "DI LAM" not in no_lam
