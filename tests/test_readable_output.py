"""Issue 23, "should be right": one LAM number, a report that reads like a paper, logs that
are text, a wrong model file named fast, and small things (help, ticks, a Y-model note)."""

from __future__ import annotations

import html
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import glam.fixtures as fixtures
import numpy as np
import pytest
from click.testing import CliRunner
from glam.archive.hdf5 import open_archive
from glam.cli import cli
from glam.report.html import write_report
from PIL import Image
from test_report_html import CHROMIUM, CHROMIUM_ARGS, _browser

ROOT = Path(__file__).resolve().parent.parent
RCAN = fixtures.fixture_path("rcan", "legacy.onnx")  # 24 taps, three with vanishing weights

pytestmark = pytest.mark.usefixtures("cached_model_load")


@pytest.fixture(scope="module")
def five_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Set5-like archive: rcan_small on five 512x512 HR images (256x256 LR, as Set5's
    baby at x2), with LAM; Y-PSNR against the HR images."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) has the photos")
    d = tmp_path_factory.mktemp("five")
    photos = [data.astronaut(), data.immunohistochemistry(), data.rocket(), data.coffee(),
              data.chelsea()]
    for i, a in enumerate(photos):  # Set5-like photographs, 512 px a side at most
        Image.fromarray(a).crop((0, 0, min(512, a.shape[1]), min(512, a.shape[0]))).save(
            d / f"img_00{i}_HR.png")
    ar = d / "five.h5"
    res = CliRunner().invoke(cli, ["analyze", str(RCAN), str(d), "--hr", "-o", str(ar), "--lam",
                                   "--lam-fold", "4", "-q", "--threads", "1"])
    assert res.exit_code == 0, res.stderr
    return ar


def _visible_text(path: Path) -> str:
    s = path.read_text(encoding="utf-8")
    s = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", s)
    s = re.sub(r"<(script|style)>.*?</\1>", "", s, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", s))


def _raw_floats(text: str) -> list[str]:
    """Numbers printed with more than 5 significant digits (``5.513429641723633e-07``)."""
    out = []
    for m in re.finditer(r"(?<![\w.])\d+\.\d+(?:e[-+]?\d+)?", text):
        digits = re.sub(r"e.*", "", m.group()).replace(".", "").lstrip("0")
        if len(digits) > 5:
            out.append(m.group())
    return out


def test_report_reads_like_a_paper(five_runs: Path, tmp_path: Path) -> None:
    """di_lam is the headline (Fig. 5, Table I), the output-size DI labelled as such;
    Y-PSNR in Table I; no None and no raw floats anywhere on the page."""
    page = write_report(five_runs, tmp_path / "r.html")
    text = _visible_text(page)
    assert not re.findall(r"\bNone\b", text)
    assert not _raw_floats(text), _raw_floats(text)[:5]
    with open_archive(five_runs) as ar:
        rd = ar.run(ar.runs()[0])
    m = rd.metrics
    assert f"LAM map, DI {m['di_lam']:.2f} (at input size; {m['di_lam_output']:.2f} at output size" \
        in text
    head = re.search(r"Table I.*?</thead>", page.read_text(), re.S).group()
    cols = re.findall(r'<th class="sort">([^<]+)</th>', head)
    assert {"Y-PSNR (dB)", "DI LAM", "DI LAM at output size"} <= set(cols)
    assert cols.index("DI LAM") < cols.index("DI LAM at output size")
    assert f"{m['psnr_y']:.2f}" in text


def test_vanishing_layers_are_left_out_of_the_di_curve(five_runs: Path, tmp_path: Path) -> None:
    """rcan's sub_mean (global), tail.1 (local) and add_mean keys are 0 by GLAM.md's
    vanishing-weights rule: no DI point (a gap, not DI 100), a mark on the axis instead."""
    page = write_report(five_runs, tmp_path / "r.html", runs=None)
    s = page.read_text(encoding="utf-8")
    run = s[s.index('id="run0"'):s.index('id="run1"')]
    marks = re.findall(r'<text class="vanished"[^>]*><title>([^<]*)</title>', run)
    assert any("sub_mean" in t for t in marks) and any("add_mean" in t for t in marks)
    with open_archive(five_runs) as ar:
        name = ar.runs()[0]
        part = [t["index"] for t in ar.run(name).taps if t["participating"]]
        vanished = {fam: sum(bool(ar.layer(name, i).get(f"{fam}_weights_vanish", False))
                             for i in part) for fam in ("local", "global")}
    assert vanished["local"] >= 1 and vanished["global"] >= 1
    for fam in ("local", "global"):
        d = re.search(rf'class="di-{fam}"[^>]*d="([^"]*)"', run).group(1)
        points = re.findall(r"[ML]([\d.]+),([\d.]+)", d)
        assert len(points) == len(part) - vanished[fam], fam  # one point per other layer
        assert min(float(y) for _, y in points) > 20.0  # no point at DI 100 (y = 20)


def test_report_is_at_most_1_mb_per_run(five_runs: Path, tmp_path: Path) -> None:
    """The 5-run report: 17 MB on the Set5 runs of the issue (32.7 MB measured here for
    CARN-M x2 on Set5, 64 layer keys per run at native size, RGB PNGs); now palette PNGs for
    maps, JPEG for photographs, images embedded at the size they are shown, 16 keys."""
    page = write_report(five_runs, tmp_path / "r.html")
    size = page.stat().st_size
    assert size <= 5 * 2**20, f"{size / 2**20:.2f} MiB for 5 runs"


@pytest.fixture(scope="module")
def sync_playwright():  # type: ignore[no-untyped-def]
    return _browser()  # skips, saying why, without playwright or Chromium


@pytest.mark.browser
def test_comparison_grid_fits_a_1280_px_window(sync_playwright, five_runs: Path,  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    page_path = write_report(five_runs, tmp_path / "r.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_path.as_uri(), wait_until="load")
            grid = page.evaluate("(() => { const g = document.querySelector('#comparison "
                                 ".grid').getBoundingClientRect(); return [g.left, g.right]; })()")
            wide = page.evaluate("document.documentElement.scrollWidth")
        finally:
            browser.close()
    assert grid[0] >= 0 and grid[1] <= 1280, grid
    assert wide <= 1280, wide


def test_di_has_the_same_decimals_in_every_command(five_runs: Path, tmp_path: Path) -> None:
    r = CliRunner()
    with open_archive(five_runs) as ar:
        names = ar.runs()[:2]
        di = ar.run(names[0]).metrics["di_local"]
    want = f"{di:.2f}"
    outputs = {
        "ls": r.invoke(cli, ["ls", str(five_runs)]).stdout,
        "show": r.invoke(cli, ["show", str(five_runs), names[0]]).stdout,
        "compare": r.invoke(cli, ["compare", str(five_runs), "--runs", ",".join(names),
                                  "--to", str(tmp_path / "cmp")]).stdout,
        "report": _visible_text(write_report(five_runs, tmp_path / "r.html", runs=names)),
    }
    # The DI must read with 2 decimals wherever it is shown and never with more. Other
    # numbers can begin like it (a timing of 0.2142 s in show, a 0.212 in the report once
    # matched a DI of 0.21), so the check is on whole numbers: the 2-decimal DI is among
    # them, a longer rendering of the same value is not. Timings ("0.89 s") are dropped.
    too_precise = {f"{di:.{k}f}" for k in range(3, 8)} | {repr(di)}
    for cmd, out in outputs.items():
        numbers = set(re.findall(r"(?<![\d.])\d+\.\d+(?![\d.])", re.sub(r"\d+\.\d+ s\b", "", out)))
        assert want in numbers, (cmd, want)
        assert not numbers & too_precise, (cmd, numbers & too_precise)


def test_compare_table_has_y_psnr_and_labels_lam_at_output_size(five_runs: Path,
                                                                  tmp_path: Path) -> None:
    with open_archive(five_runs) as ar:
        names = ar.runs()[:2]
        m = ar.run(names[0]).metrics
    out = CliRunner().invoke(cli, ["compare", str(five_runs), "--runs", ",".join(names), "--to",
                                   str(tmp_path / "cmp")]).stdout
    header = out.splitlines()[0]
    assert "Y-PSNR" in header and "DI LAM (output size)" in header
    assert f"{m['psnr_y']:.2f}" in out.splitlines()[2]


# -------------------------------------------------------------------------------- logs


def test_logs_hold_no_terminal_escapes(tiny_model: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Stderr not a terminal (CliRunner): the image bar and LAM's bar at once used to move
    the cursor up (ESC[A) between them."""
    monkeypatch.setenv("GLAM_PROGRESS_INTERVAL", "0.001")
    d = tmp_path / "imgs"
    d.mkdir()
    src = Image.open(ROOT / "fixtures" / "images" / "astronaut_hr.png").convert("RGB")
    for i in range(3):
        src.crop((i * 30, 0, i * 30 + 32, 32)).save(d / f"i{i}.png")
    res = CliRunner().invoke(cli, ["analyze", str(tiny_model), str(d), "-o", str(tmp_path / "a.h5"),
                                   "--lam", "--lam-fold", "16", "--lam-batch", "2",
                                   "--window", "8"])
    assert res.exit_code == 0, res.stderr
    assert "LAM path" in res.stderr and "images" in res.stderr
    assert "\x1b" not in res.stderr and "\r" not in res.stderr


def test_quiet_silences_notes(tiny_model: Path, tmp_path: Path) -> None:
    """-q: no phase log, no pairing note, no thread line (results and errors still print)."""
    d = tmp_path / "pairs"
    d.mkdir()
    src = Image.open(ROOT / "fixtures" / "images" / "astronaut_hr.png").convert("RGB")
    src.crop((0, 0, 48, 48)).save(d / "a_HR.png")
    src.crop((0, 0, 48, 48)).resize((24, 24), Image.BICUBIC).save(d / "a_LR.png")
    r = CliRunner()
    loud = r.invoke(cli, ["analyze", str(tiny_model), str(d), "-o", str(tmp_path / "a.h5"),
                          "--window", "8"])
    assert loud.exit_code == 0 and "glam: note: paired 1 *_LR image(s)" in loud.stderr
    quiet = r.invoke(cli, ["analyze", str(tiny_model), str(d), "-o", str(tmp_path / "b.h5"),
                           "--window", "8", "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


# ---------------------------------------------------------------------- wrong model files

_TIMED = """
import sys, time
t = time.perf_counter()
from glam.cli import main
try:
    main(["inspect", sys.argv[1]])
except SystemExit as e:
    code = e.code
print(code, round(time.perf_counter() - t, 3), "torch" in sys.modules)
"""


def _bad_files(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    Image.open(ROOT / "fixtures" / "images" / "astronaut_hr.png").convert("RGB").save(d / "p.jpg")
    (d / "notes.txt").write_text("not a model\n" * 20)
    onnx = RCAN.read_bytes()
    (d / "cut.onnx").write_bytes(onnx[: len(onnx) // 2])
    pth = fixtures.fixture_path("rcan", "pth").read_bytes()
    (d / "cut.pth").write_bytes(pth[: len(pth) // 2])
    st = (ROOT / "fixtures" / "models" / "spandrel_compact_x2.safetensors").read_bytes()
    (d / "cut.safetensors").write_bytes(st[: len(st) // 2])
    return {k: d / k for k in ("p.jpg", "notes.txt", "cut.onnx", "cut.pth", "cut.safetensors")}


@pytest.mark.parametrize(("name", "words"), [
    ("p.jpg", "is a JPEG image, not a model"),
    ("notes.txt", "is a text file, not a model"),
    ("cut.onnx", "is a truncated ONNX file"),
    ("cut.pth", "is a truncated zip archive"),
    ("cut.safetensors", "is a truncated .safetensors file"),
])
def test_a_wrong_model_file_is_named_fast(name: str, words: str, tmp_path: Path) -> None:
    """Refused in under a second, before torch is imported (it took 2.5-4.3 s, after
    importing torch, and called a truncated ONNX file "unrecognised content")."""
    path = _bad_files(tmp_path)[name]
    out = subprocess.run([sys.executable, "-c", _TIMED, str(path)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    code, seconds, torch_loaded = out.stdout.split()
    assert code == "2" and torch_loaded == "False", out.stdout + out.stderr
    assert words in out.stderr.strip().splitlines()[-1], out.stderr
    assert float(seconds) < 1.0, seconds


def test_real_models_pass_the_sniff() -> None:
    from glam.sniff import refusal

    models = [p for p in (ROOT / "fixtures" / "models").iterdir()
              if p.suffix in (".onnx", ".pt", ".pt2", ".pth", ".safetensors")]
    assert len(models) > 20
    assert [p.name for p in models if refusal(p) is not None] == []


# ---------------------------------------------------------------------------- small things


def test_help_lists_every_command() -> None:
    text = CliRunner().invoke(cli, ["--help"]).stdout
    intro = text.split("Options:")[0]
    for cmd in ("inspect", "analyze", "compare", "report", "baseline", "check", "batch",
                "sanity", "demo"):
        assert f"glam {cmd}" in intro, cmd


def test_sanity_figure_has_integer_ticks_on_the_block_axis() -> None:
    from glam.archive.sanity import RandomizationRecord, SanityRecord
    from glam.report.sanity_figure import sanity_figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    sims = {"local": {k: np.array([0.9, 0.6, 0.2]) for k in ("spearman", "ssim", "topk")}}
    steps = RandomizationRecord(np.array([2, 1, 0]), np.array([3, 2, 1]), np.array([1, 2, 3]),
                                sims)
    rec = SanityRecord(
        settings={}, n_taps=3, methods=["local"],
        randomization={"cascading": steps, "independent": steps},
        fractions=np.linspace(0, 0.5, 6),
        deletion={"local": np.linspace(1, 0.2, 6), "random": np.linspace(1, 0.8, 6)},
        insertion={"local": np.linspace(0, 0.9, 6), "random": np.linspace(0, 0.3, 6)},
        indicators={})
    fig = sanity_figure(rec)
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes[:2]:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_y_model_given_an_rgb_image_notes_it(tiny_y_model: Path, lr_image: Path,
                                              tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["analyze", str(tiny_y_model), str(lr_image), "-o",
                                   str(tmp_path / "y.h5"), "--window", "8", "--json"])
    assert res.exit_code == 0, res.stderr
    (run,) = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert any("the model takes one channel: it analyses the Y channel" in w
               for w in run["warnings"]), run["warnings"]
    with open_archive(tmp_path / "y.h5") as ar:
        assert any("Y channel" in w for w in ar.run(run["run"]).warnings)
    assert not math.isnan(run["metrics"]["di_local"])
    assert os.path.exists(tmp_path / "y.h5")
