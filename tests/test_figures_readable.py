"""Figures people can read (issue 14, part B): ROI zoom, display scales, the attributed-pixel
view, the LAM headline, honest speed wording, per-layer sample captions with the
vanishing-weights mark, native-resolution overlays and the figure formats.

The figures' artists are captured just before they are saved (``figures._save``), so the
tests read titles, texts, image arrays and patches instead of comparing pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from glam.archive.figure_data import LayerKey
from glam.engine.metrics import attributed_fraction
from glam.errors import UserInputError
from glam.report import figures
from glam.report.views import (
    Display,
    context_box,
    layer_sample_text,
    native_overlay,
    speed_text,
)
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from numerics import assert_close
from PIL import Image
from test_figures import make_data


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure handed to ``figures._save`` (still drawn and saved as usual)."""
    seen: list[Figure] = []
    original = figures._save

    def keep(fig: Figure, path: Path) -> Path:
        seen.append(fig)
        texts = [t.get_text() for t in fig.findobj(Text)]
        fig._glam_texts = texts  # type: ignore[attr-defined]
        fig._glam_axes = [  # type: ignore[attr-defined]
            {
                "title": ax.get_title(),
                "images": [np.asarray(im.get_array()) for im in ax.images],
                "rects": [p for p in ax.patches if isinstance(p, Rectangle)],
                "spines": {k: (s.get_edgecolor(), s.get_linewidth()) for k, s in ax.spines.items()},
            }
            for ax in fig.axes
        ]
        return original(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return seen


def _texts(fig: Figure) -> str:
    return "\n".join(fig._glam_texts)  # type: ignore[attr-defined]


def _axes(fig: Figure) -> list[dict[str, Any]]:
    return fig._glam_axes  # type: ignore[attr-defined]


def _axis(fig: Figure, title_start: str) -> dict[str, Any]:
    found = [a for a in _axes(fig) if a["title"].startswith(title_start)]
    assert found, [a["title"] for a in _axes(fig)]
    return found[0]


# ------------------------------------------------------------------------- speed wording


@pytest.mark.parametrize(
    ("s_glam", "s_lam", "expected"),
    [
        (0.5, 12.0, "GL-AM is 24.0\u00d7 faster than LAM"),
        (12.0, 5.0, "LAM is 2.4\u00d7 faster than GL-AM"),
        (1.0, 1.02, "GL-AM and LAM took about as long"),
    ],
)
def test_speed_text_names_the_faster_method(s_glam: float, s_lam: float, expected: str) -> None:
    assert speed_text(s_glam, s_lam) == expected


@pytest.mark.parametrize(("s_glam", "s_lam"), [(0.5, 12.0), (12.0, 5.0)])
def test_lam_figure_never_says_a_speed_up_below_one(
    tmp_path: Path, captured: list[Figure], s_glam: float, s_lam: float
) -> None:
    d = make_data(size=48, n_keys=0)
    d.metrics.update(seconds_glam=s_glam, seconds_lam=s_lam)
    figures.lam_figure(d, tmp_path / "lam.png")
    text = _texts(captured[-1])
    assert speed_text(s_glam, s_lam) in text
    # the old wording "GL-AM is 0.4x faster" (LAM / GL-AM < 1) must not appear
    assert "GL-AM is 0.4" not in text
    for ratio in ("0.4\u00d7", "0.42\u00d7"):
        assert ratio not in text


def test_lam_headline_uses_di_lam_at_input_size(tmp_path: Path, captured: list[Figure]) -> None:
    d = make_data(size=48, n_keys=0)  # di_lam 5.5, di_lam_output 6.25
    figures.lam_figure(d, tmp_path / "lam.png")
    lam_panel = _axis(captured[-1], "LAM\nDI")
    assert lam_panel["title"].startswith("LAM\nDI 5.50")
    figures.compare_figure([d], tmp_path / "cmp.png")
    assert any(a["title"] == "LAM DI 5.50" for a in _axes(captured[-1]))


# ---------------------------------------------------------------------------- ROI zoom


def test_local_figure_has_a_zoomed_roi_inset_with_the_box_outside(
    tmp_path: Path, captured: list[Figure]
) -> None:
    d = make_data(size=256, n_keys=0, lam=False)  # window 32 at (85, 128)
    figures.local_figure(d, tmp_path / "local.png")
    ax = _axis(captured[-1], "ROI zoom")
    (img,) = ax["images"]
    t0, l0, h, w = context_box((256, 256), d.roi, d.window)
    assert (h, w) == (5 * d.window, 5 * d.window)  # two windows of context on each side
    k = img.shape[0] // h
    assert k >= 1 and img.shape[:2] == (h * k, w * k) and max(img.shape[:2]) >= 200
    (rect,) = [r for r in ax["rects"] if r.get_gid() == "roi-outside"]
    lw = max(1.0, k / 3.0)
    roi_x0, roi_y0 = (d.roi[1] - l0) * k - 0.5, (d.roi[0] - t0) * k - 0.5
    roi_x1, roi_y1 = roi_x0 + d.window * k, roi_y0 + d.window * k
    # the inner edge of the drawn line stays outside every ROI pixel
    assert rect.get_x() + lw / 2 <= roi_x0 and rect.get_y() + lw / 2 <= roi_y0
    assert rect.get_x() + rect.get_width() - lw / 2 >= roi_x1
    assert rect.get_y() + rect.get_height() - lw / 2 >= roi_y1


def test_zoom_makes_a_small_roi_on_a_large_output_readable(
    tmp_path: Path, captured: list[Figure]
) -> None:
    d = make_data(size=48, n_keys=0)
    big = np.zeros((768, 1024, 3), dtype=np.uint8) + 90
    d.output_rgb = big
    sm = np.zeros((768, 1024))
    sm[400:410, 500:510] = 1.0
    d.local = {"consensus": sm, "variation": sm, "sum": sm}
    d.global_ = dict(d.local)
    d.lam_map_output = sm
    d.roi, d.window = (398, 498), 16
    figures.lam_figure(d, tmp_path / "lam.png")
    zoomed = _axis(captured[-1], "ROI zoom: output")["images"][0]
    # a 16x16 ROI with 32 px of context each side becomes a >= 200 px inset
    assert zoomed.shape[0] >= 200 and zoomed.shape[1] >= 200
    pair = _axis(captured[-1], "ROI zoom: LAM | GL-AM")
    assert len([r for r in pair["rects"] if r.get_gid() == "roi-outside"]) == 2


# ---------------------------------------------------------------------- display scales


def test_gamma_and_log_display(tmp_path: Path, captured: list[Figure]) -> None:
    d = make_data(size=48, n_keys=0, lam=False)
    figures.local_figure(d, tmp_path / "lin.png")
    lin = _axis(captured[-1], "Sum")["images"][0]
    figures.local_figure(d, tmp_path / "gamma.png", Display("gamma", 0.5))
    gam = _axis(captured[-1], "Sum")["images"][0]
    assert_close(gam, np.sqrt(lin), ulps=2, scale=1.0, err_msg="gamma")  # float32 power vs sqrt
    assert "(gamma 0.5)" in _texts(captured[-1])
    figures.local_figure(d, tmp_path / "log.png", Display("log"))
    lg = _axis(captured[-1], "Sum")["images"][0]
    # log10 over [1e-3, 1]: each decade gets a third of the colour map
    assert_close(lg, (np.log10(np.maximum(lin, 1e-3)) + 3.0) / 3.0, ulps=8, scale=1.0,
                 err_msg="log")  # float32 log10 against float64
    small = (lin > 1e-3) & (lin < 0.1)
    assert small.any() and (lg[small] > lin[small]).all()  # faint values lifted
    assert "(log scale)" in _texts(captured[-1])
    with pytest.raises(UserInputError, match="gamma"):
        Display("gamma", 0.0)
    with pytest.raises(UserInputError, match="linear, gamma, log"):
        Display("sqrt")  # type: ignore[arg-type]


# ---------------------------------------------------------------- attributed-pixel view


def test_attributed_view_marks_pixels_above_the_mean(tmp_path: Path, captured: list[Figure]) -> None:
    d = make_data(size=48, n_keys=0)
    figures.attributed_figure(d, tmp_path / "attr.png")
    titles = [a["title"] for a in _axes(captured[-1])]
    assert [t.split("\n")[0] for t in titles] == ["local GL-AM (Sum)", "global GL-AM (Sum)", "LAM"]
    local = _axis(captured[-1], "local GL-AM")
    shown = local["images"][0]
    coloured = shown[..., 2] < shown[..., 0] - 0.2  # amber pixels: red well above blue
    np.testing.assert_array_equal(coloured, d.local["sum"] > d.local["sum"].mean())
    pct = f"{100 * attributed_fraction(d.local['sum']):.1f}%"
    assert pct in local["title"]


# ------------------------------------------------------------------- per-layer captions


def test_layer_grid_says_which_layers_it_samples_and_marks_vanishing(
    tmp_path: Path, captured: list[Figure]
) -> None:
    d = make_data(size=32, n_keys=1)
    k = d.local_keys[0].key
    shown = [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 44]
    d.local_keys = [LayerKey(i, f"body.{i}", k, vanished=(i == 44)) for i in shown]
    d.local_total = 45
    figures.layers_figure(d, tmp_path / "layers.png", "local")
    fig = captured[-1]
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "16 of 45: #0, #3, #6" in title and "#44" in title
    assert "vanishing-weights" in title
    marked = _axis(fig, "#44")
    assert "A = 0" in marked["title"]
    colour, width = marked["spines"]["left"]
    assert width == 2.5 and colour[0] == 1.0  # the values set, read back
    assert "A = 0" not in _axis(fig, "#3 ")["title"]
    assert layer_sample_text([1, 2], 2) == "all 2 participating layers: #1, #2"


def test_archive_figure_data_carries_vanishing_flags_and_totals(
    tmp_path: Path, imported_tiny: Any, lr_image: Path
) -> None:
    import h5py
    from glam.archive.hdf5 import open_archive
    from glam.runs import AnalyzeOptions, analyze_one

    ar = tmp_path / "a.h5"
    analyze_one(imported_tiny, lr_image, ar, "r", AnalyzeOptions())
    with open_archive(ar) as a:
        part = [int(rec["index"]) for rec in a.iter_layers("r") if rec["participating"]]
    # the tiny model has no vanishing layer; mark the last one as the engine would have
    with h5py.File(ar, "r+") as f:
        f[f"runs/r/layers/{part[-1]}"].attrs["local_weights_vanish"] = True
        f[f"runs/r/layers/{part[0]}"].attrs["global_weights_vanish"] = True
    with open_archive(ar) as a:
        data = a.figure_data("r", max_keys=2)
    assert [k.index for k in data.local_keys] == [part[0], part[-1]]
    assert data.local_total == len(part) > 2
    assert data.global_total == len(part)
    assert [k.vanished for k in data.local_keys] == [False, True]
    assert [k.vanished for k in data.global_keys] == [True, False]


# ------------------------------------------------------------ overlays and file formats


def test_native_overlays_have_the_output_resolution(tmp_path: Path) -> None:
    d = make_data(size=48, n_keys=0)
    d.output_rgb = np.zeros((40, 56, 3), dtype=np.uint8) + 128
    m = np.zeros((40, 56))
    m[10, 20] = 1.0
    d.local = {"consensus": m, "variation": m, "sum": m}
    d.global_ = dict(d.local)
    d.lam_map_output = m
    d.roi, d.window = (8, 16), 8
    paths = figures.write_all(d, tmp_path / "f")
    overlays = [p for p in paths if p.parent.name == "overlays"]
    assert [p.name for p in overlays] == ["local_sum.png", "global_sum.png", "lam.png"]
    for p in overlays:
        with Image.open(p) as im:
            assert im.size == (56, 40) and im.format == "PNG"
            a = np.asarray(im.convert("RGB"))
        hot, cold = a[10, 20].astype(int), a[0, 0].astype(int)
        assert np.abs(hot - cold).sum() > 100  # the attributed pixel is coloured, in place
    with pytest.raises(UserInputError, match="do not match|does not match"):
        native_overlay(d.output_rgb, np.zeros((4, 4)))


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_figure_formats(tmp_path: Path, fmt: str) -> None:
    d = make_data(size=32, n_keys=2)
    paths = figures.write_all(d, tmp_path / fmt, figure_format=fmt, overlays=False)
    assert paths and all(p.suffix == f".{fmt}" for p in paths)
    head = paths[0].read_bytes()[:200]
    assert (b"%PDF" in head) if fmt == "pdf" else (b"<svg" in paths[0].read_bytes()[:2000])
    with pytest.raises(UserInputError, match="png, pdf, svg"):
        figures.write_all(d, tmp_path / "x", figure_format="jpeg")
