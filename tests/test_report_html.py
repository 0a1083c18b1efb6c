"""The HTML report (``glam report``, ``glam check --html``, ``glam demo``): parsed HTML, the
CLI's exit codes and files, and the demo's report rendered in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import glam.importers
import numpy as np
import pytest
import torch
from cli_output import message_lines
from click.testing import CliRunner
from glam.cli import cli
from glam.report.html import write_report
from glam.runs import AnalyzeOptions, analyze_images

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots kept for people (ignored by git)
CHROMIUM = os.environ.get("GLAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SECTIONS = ("images", "local", "global", "lam", "layer-explorer", "provenance", "metrics",
            "timings")

pytestmark = pytest.mark.usefixtures("cached_model_load")


# ------------------------------------------------------------------------------ parsing

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text = ""

    def iter(self):  # type: ignore[no-untyped-def]
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        out = []
        for n in self.iter():
            if n is self or (tag is not None and n.tag != tag):
                continue
            if all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                out.append(n)
        return out

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class Tree(HTMLParser):
    """A minimal DOM from the stdlib parser (raises on a close tag that does not match)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        n = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.cur.tag == tag, f"</{tag}> closes <{self.cur.tag}>"
        assert self.cur.parent is not None
        self.cur = self.cur.parent

    def handle_data(self, data: str) -> None:
        self.cur.text += data


def parse(path: Path) -> Node:
    t = Tree()
    t.feed(path.read_text(encoding="utf-8"))
    t.close()
    assert t.cur is t.root, f"unclosed <{t.cur.tag}>"
    return t.root


def assert_self_contained(doc: Node) -> None:
    imgs = doc.find_all("img")
    assert imgs
    for n in doc.iter():
        for k in ("src", "href"):
            v = n.attrs.get(k)
            if v is None:
                continue
            assert not v.startswith(("http://", "https://", "//")), (n.tag, v[:80])
            if k == "src":
                assert v.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), (
                    n.tag, v[:80])
            else:
                assert v.startswith("#"), v
    assert not doc.find_all("link")
    scripts = doc.find_all("script")
    assert len(scripts) == 1 and "src" not in scripts[0].attrs
    assert 0 < len(scripts[0].text.encode()) <= 4096, len(scripts[0].text.encode())


# ----------------------------------------------------------------------------- archives


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, hr_image: Path) -> Path:
    """Two runs of two models on a small HR image, with LAM (fold 4)."""
    fixtures = pytest.importorskip("glam.fixtures")
    d = tmp_path_factory.mktemp("report")
    ar = d / "runs.h5"
    models = [("tiny", tiny_model)]
    rcan = fixtures.fixture_path("rcan", "legacy.onnx")
    models.append(("rcan", rcan) if rcan.exists() else ("tiny2", tiny_model))
    for run, path in models:  # the first run also measures engine parity (--verify)
        analyze_images(glam.importers.load(path), [hr_image], ar,
                       AnalyzeOptions(run=run, hr=True, lam=True, lam_fold=4,
                                      verify=run == "tiny"))
    analyze_images(glam.importers.load(tiny_model), [hr_image], ar,  # no LAM, float16 layers
                   AnalyzeOptions(run="nolam", hr=True, store_dtype="float16"))
    return ar


def _runs(doc: Node) -> list[Node]:
    (runs,) = doc.find_all("section", id="runs")
    return runs.find_all("article")


def test_every_run_and_section_present(archive: Path, tmp_path: Path) -> None:
    out = write_report(archive, tmp_path / "r.html")
    doc = parse(out)
    assert_self_contained(doc)
    runs = _runs(doc)
    assert [r.attrs["data-run"] for r in runs] == ["tiny", runs[1].attrs["data-run"], "nolam"]
    for r in runs:
        with_lam = r.attrs["data-run"] != "nolam"
        for s in SECTIONS:
            assert r.find_all(data_section=s), (r.attrs["data-run"], s)
        # Fig. 3 local (4 panels), Fig. 4 global (4), Fig. 5 LAM (4, with masks)
        for s, n in (("local", 4), ("global", 4), ("lam", 4 if with_lam else 0)):
            (sec,) = r.find_all("section", data_section=s)
            assert len(sec.find_all("figure")) == n, s
            for f in sec.find_all("figure"):  # title, colour bar or note, axes
                assert f.find_all("figcaption")[0].all_text().strip()
                assert f.find_all("div", **{"class": "xlab"})
        lam_text = r.find_all("section", data_section="lam")[0].all_text()
        assert ("attributed pixels" in lam_text) == with_lam
        assert ("without LAM" in lam_text) != with_lam
        prov = r.find_all("section", data_section="provenance")[0].all_text()
        for word in ("sha256", "opset", "Conventions", "Import parity", "Engine parity"):
            assert word in prov, word
        verified = r.attrs["data-run"] == "tiny"
        assert ("passed: max error" in prov) == verified and ("not verified" in prov) != verified
        ex = r.find_all("section", data_section="layer-explorer")[0]
        assert ex.find_all("input", type="range") and ex.find_all("svg")
        layers = ex.find_all("div", **{"class": "layer"})
        assert layers and int(ex.find_all("input")[0].attrs["max"]) == len(layers) - 1
        assert all(lay.find_all("img") for lay in layers)
        assert len(ex.find_all("path")) == 4  # DI and attributed area, local and global
    (comp,) = doc.find_all("section", data_section="comparison")
    (table,) = comp.find_all("table", id="table-1")
    assert [tr.attrs["data-run"] for tr in table.find_all("tr") if "data-run" in tr.attrs] == \
        [r.attrs["data-run"] for r in runs]
    assert len(comp.find_all("table", **{"class": "grid"})[0].find_all("tr")) == 1 + len(runs)


def test_layers_are_sampled_and_the_page_says_so(archive: Path, tmp_path: Path) -> None:
    out = write_report(archive, tmp_path / "r.html", runs=["tiny"], max_keys=2)
    doc = parse(out)
    (run,) = _runs(doc)
    ex = run.find_all("section", data_section="layer-explorer")[0]
    assert len(ex.find_all("div", **{"class": "layer"})) == 2
    assert "Sampled" in ex.all_text() and "2 of 3 layers" in ex.all_text()


def test_report_cli(archive: Path, tmp_path: Path) -> None:
    r = CliRunner()
    out = tmp_path / "sub" / "cmp.html"
    res = r.invoke(cli, ["report", str(archive), "--runs", "tiny", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"report: {out}" and out.is_file()
    assert [n.attrs["data-run"] for n in _runs(parse(out))] == ["tiny"]
    for args in (["report", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "x.html")],
                 ["report", str(archive), "--runs", "nope", "-o", str(tmp_path / "x.html")],
                 ["report", str(archive), "-o", str(tmp_path)],
                 ["report", str(archive), "--max-keys", "0"]):
        res = r.invoke(cli, args)
        assert res.exit_code == 2, (args, res.output)
        lines = message_lines(res.stderr)
        assert len(lines) >= 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "x.html").exists()


def test_check_html(tiny_model: Path, hr_image: Path, tmp_path: Path) -> None:
    r = CliRunner()
    base = tmp_path / "base.h5"
    assert r.invoke(cli, ["baseline", str(tiny_model), str(hr_image), "-o", str(base)]
                    ).exit_code == 0
    res = r.invoke(cli, ["check", str(tiny_model), "--baseline", str(base), "--html",
                         str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.stderr  # refused before the check
    page = tmp_path / "check.html"
    # a candidate whose weights moved a little: its local Sum is close to, not equal to, the
    # baseline's, so the strictest valid floor (Pearson 1) fails and the rest pass. The moved
    # weight is in the last convolution, which every ROI gradient runs through (a body
    # weight of a channel the ReLU silences around the ROI moved nothing: Pearson exactly 1
    # with this environment's test image)
    from conftest import TinySR, export_onnx

    torch.manual_seed(0)
    moved = TinySR(3)
    with torch.no_grad():
        moved.tail.weight[0, 0, 1, 1] += 1e-3
    candidate = export_onnx(moved, tmp_path / "candidate.onnx", 3)
    res = r.invoke(cli, ["check", str(candidate), "--baseline", str(base), "--html", str(page),
                         "--tol", "local_sum_pearson=1"])
    assert res.exit_code == 1, res.output
    assert f"report: {page}" in res.stdout
    doc = parse(page)
    assert_self_contained(doc)
    assert doc.find_all(id="status")[0].all_text() == "FAILED"
    (run,) = _runs(doc)
    rows = run.find_all("tbody")[0].find_all("tr")
    failed = [tr for tr in rows if tr.attrs["data-status"] == "failed"]
    names = [tr.find_all("td")[1].all_text() for tr in failed]
    assert "local_sum_pearson" in names, names
    cells = [td.all_text() for td in failed[names.index("local_sum_pearson")].find_all("td")]
    assert cells[4] == ">=" and cells[5] == "1" and float(cells[3]) <= 1.0  # shown rounded
    assert any(tr.attrs["data-status"] == "passed" for tr in rows)
    maps = run.find_all("section", data_section="maps")[0]
    captions = [f.find_all("figcaption")[0].all_text() for f in maps.find_all("figure")]
    assert len(captions) == 6 and sum("Baseline" in c for c in captions) == 2
    assert sum("Candidate" in c for c in captions) == 2 and sum("|" in c for c in captions) == 2


# ------------------------------------------------------------------- demo, in a browser


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, str]:
    from glam.runs import default_demo_inputs

    d = tmp_path_factory.mktemp("demo") / "demo"
    args = ["demo", "--out", str(d), "--lam-fold", "4"]
    model, _ = default_demo_inputs()
    if model is None or not model.exists():
        args += ["--model", str(tiny_model)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return d, res.stdout


def test_demo_writes_the_report(demo_dir: tuple[Path, str]) -> None:
    d, stdout = demo_dir
    page = d / "report.html"
    assert f"report  : {page}" in stdout
    doc = parse(page)
    assert_self_contained(doc)
    assert len(_runs(doc)) == 1


@pytest.fixture(scope="module")
def sync_playwright():  # type: ignore[no-untyped-def]
    """playwright's ``sync_playwright`` when it and Chromium are there (else skip, saying why);
    listed first by the browser tests so that they skip before building archives."""
    return _browser()


def _browser():  # type: ignore[no-untyped-def]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; it is in glam-sr[dev])")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/setup does "
                    "it where apt is available; GLAM_CHROMIUM points elsewhere)")
    return sync_playwright


@pytest.mark.browser
def test_demo_report_renders_in_chromium(sync_playwright, demo_dir: tuple[Path, str],  # type: ignore[no-untyped-def]
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    from PIL import Image

    page_path = demo_dir[0] / "report.html"
    shots = tmp_path_factory.mktemp("screenshots")
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            # every image decoded (data URIs), the slider drives the explorer
            assert page.evaluate("Array.from(document.images).every(i => i.complete && "
                                 "i.naturalWidth > 0)")
            slider = page.locator("input[type=range]").first
            n = int(slider.get_attribute("max") or 0)
            slider.fill(str(n))
            visible = page.evaluate("Array.from(document.querySelectorAll('.explorer .layer'))"
                                    ".filter(e => !e.hidden).length")
            assert visible == 1
            page.locator("#table-1 th").nth(7).click()  # sort Table I by DI local
            page.evaluate("window.scrollTo(0, 0)")
            shot = shots / "demo_report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "demo_report.png")
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert a.shape[0] > 2000 and a.shape[1] == 1400  # the whole page, not a blank viewport
    assert a.std() > 20.0, a.std()  # not blank: images, text, tables
    assert len(np.unique(a.reshape(-1, 3)[::7], axis=0)) > 500  # many colours: the images


@pytest.mark.browser
def test_table_sorts_and_slider_moves_in_chromium(sync_playwright, archive: Path,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    out = write_report(archive, tmp_path / "r.html")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(out.as_uri(), wait_until="load")
            rows = "Array.from(document.querySelectorAll('#table-1 tbody tr'))"
            di = f"{rows}.map(r => parseFloat(r.cells[7].getAttribute('data-v')))"
            header = page.locator("#table-1 th").nth(7)  # DI local
            header.click()
            up = page.evaluate(di)
            header.click()
            down = page.evaluate(di)
            assert up == sorted(up) and down == sorted(up, reverse=True) and len(up) == 3
            ex = page.locator(".explorer").first
            slider = ex.locator("input[type=range]")
            label = ex.locator("output")
            first = label.inner_text()
            slider.fill(slider.get_attribute("max") or "0")
            assert label.inner_text() != first
            cursor = ex.locator("line.cursor").get_attribute("x1")
            assert cursor is not None and float(cursor) == 560.0  # an SVG coordinate we wrote
        finally:
            browser.close()
    assert not errors, errors
