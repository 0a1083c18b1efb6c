"""The README and the guides say what is true: every ``glam`` command and Python snippet they
show runs (on the bundled fixture model and image), and every link of the README and of
``docs/`` resolves inside the repository (or is an ``https://`` URL of a public site).

Runnable commands are the ``glam ...`` lines of ```` ```bash ```` blocks in README.md and
docs/guide/*.md (```` ```sh ```` blocks are shown, not run: the batch plans, the demo,
other pages' CI snippets, which their own tests run). They run in order, README first, in
one directory holding every file name they use.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import glam.fixtures as fixtures
import pytest
from click.testing import CliRunner
from glam.cli import cli
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
GUIDES = sorted((ROOT / "docs" / "guide").glob("*.md"))
#: every Markdown page whose links are checked
PAGES = [README_PATH, *sorted((ROOT / "docs").rglob("*.md"))]
MAX_README_LINES = 250
MAX_FIGURE_BYTES = 200 * 1024


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A directory holding every file name the README and the guides use."""
    models = {
        "model.onnx": fixtures.fixture_path("rcan", "legacy.onnx"),
        "model_fp16.onnx": fixtures.fixture_path("rcan", "dynamo.onnx"),
        "a.onnx": fixtures.fixture_path("rcan", "legacy.onnx"),
        "b.pt": fixtures.fixture_path("rcan", "trace.pt"),
        "model.safetensors": fixtures.MODELS_DIR / "spandrel_compact_x2.safetensors",
    }
    for name, src in models.items():
        shutil.copy(src, tmp_path / name)
    hr = Image.open(fixtures.DEFAULT_IMAGE).convert("RGB").crop((48, 48, 144, 144))
    for name in ("photo_hr.png", "img.png", "hr.png"):
        hr.save(tmp_path / name)
    hr.resize((48, 48), Image.BICUBIC).save(tmp_path / "lr.png")
    (tmp_path / "lr_images").mkdir()
    (tmp_path / "images").mkdir()
    hr.resize((48, 48), Image.BICUBIC).save(tmp_path / "lr_images" / "one.png")
    hr.crop((0, 0, 96, 80)).resize((48, 40), Image.BICUBIC).save(tmp_path / "lr_images" / "two.png")
    hr.save(tmp_path / "images" / "hr.png")
    (tmp_path / "hr_images").mkdir()  # --reference-dir: the HR images of lr_images/
    hr.save(tmp_path / "hr_images" / "one.png")
    hr.crop((0, 0, 96, 80)).save(tmp_path / "hr_images" / "two.png")
    bench = tmp_path / "Set5" / "image_SRF_2"  # a benchmark folder of *_LR / *_HR pairs
    bench.mkdir(parents=True)
    small = hr.crop((0, 0, 48, 48))
    small.save(bench / "img_001_SRF_2_HR.png")
    small.resize((24, 24), Image.BICUBIC).save(bench / "img_001_SRF_2_LR.png")
    return tmp_path


def _glam_lines(text: str) -> list[str]:
    lines = []
    for block in _blocks(text, "bash"):
        for raw in block.splitlines():
            line = raw.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("glam "):
                lines.append(line)
    return lines


def _run_lines(lines: list[str], where: str) -> None:
    runner = CliRunner()
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[0] == "analyze" and "--lam" in argv:
            argv += ["--lam-fold", "8"]  # LAM's default fold (50), shortened for the suite
        if argv[0] == "batch":
            # Ray starts (and stops) its own processes: run it as the command would run
            res = subprocess.run([sys.executable, "-m", "glam", *argv],
                                 capture_output=True, text=True)
            assert res.returncode == 0, f"{where}: {line}\n{res.stdout}\n{res.stderr}"
            continue
        res = runner.invoke(cli, argv)
        assert res.exit_code == 0, f"{where}: {line}\n{res.output}\n{res.stderr}"


def test_readme_shows_the_two_quick_start_commands() -> None:
    quick = _blocks(README, "bash")[0]
    assert "bash .ci/setup && .venv/bin/glam demo" in quick
    assert "bash .ci/setup && .venv/bin/python -m pytest -q" in quick
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/setup && .venv/bin/python -m pytest -q" in ci


def test_readme_is_a_front_door() -> None:
    assert len(README.splitlines()) <= MAX_README_LINES
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert figures, "the README shows one figure from the demo"
    for fig in figures:
        path = ROOT / fig
        assert path.suffix == ".png" and path.stat().st_size < MAX_FIGURE_BYTES, fig
    for page in ("docs/method.md", "docs/install.md", "docs/security.md",
                 "docs/performance.md", "docs/guide/python-api.md"):
        assert f"]({page}" in README, f"the README links {page}"
    assert "import glam" in README and "import analyzer" not in README.replace(
        "`import analyzer`", "")


def test_readme_and_guide_commands_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's commands, then the guides' (some pages read what others wrote)."""
    monkeypatch.chdir(workdir)
    lines = _glam_lines(README)
    commands = {shlex.split(line)[1] for line in lines}
    assert {"inspect", "analyze", "report", "compare", "check", "batch", "sanity"} <= commands
    _run_lines(lines, "README.md")
    assert (workdir / "runs.h5").exists() and (workdir / "zoo.h5").exists()
    assert (workdir / "report.html").stat().st_size > 0
    assert any((workdir / "cmp").iterdir())
    assert (workdir / "report.xml").exists() and (workdir / "sanity.h5").exists()
    ran = 0
    for page in GUIDES:
        lines = _glam_lines(page.read_text())
        _run_lines(lines, str(page.relative_to(ROOT)))
        ran += len(lines)
    assert ran >= 15
    assert any((workdir / "figs").rglob("*.png"))
    import h5py

    runner = CliRunner()
    with h5py.File("runs.h5", "r") as f:
        run = next(iter(f["runs"]))
    assert runner.invoke(cli, ["show", "runs.h5", run]).exit_code == 0
    assert runner.invoke(cli, ["export", "runs.h5", run, "--to", "out"]).exit_code == 0
    assert any(Path("out").rglob("*.npy"))


def test_readme_and_guide_python_snippets_run(workdir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    assert runner.invoke(cli, ["analyze", "model.onnx", "lr.png", "-o", "runs.h5"]).exit_code == 0
    snippets = [(README_PATH, b) for b in _blocks(README, "python")]
    snippets += [(p, b) for p in GUIDES for b in _blocks(p.read_text(), "python")]
    assert len(snippets) >= 3
    for page, block in snippets:
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), {"__name__": "docs"})  # noqa: S102


def test_performance_table_is_filled() -> None:
    perf = (ROOT / "docs" / "performance.md").read_text()
    assert "BENCH_TABLE" not in perf and "BENCH_TABLE" not in README
    assert os.path.exists(ROOT / "bench" / "__main__.py")


# ------------------------------------------------------------------------------ link check


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: its text (no inline markup) in lower
    case, punctuation other than ``-`` and ``_`` removed, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (duplicates numbered as GitHub does)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links and images, code spans and blocks excluded."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def _repository_files() -> set[Path]:
    """Files a commit of the working tree would hold: tracked, or new and not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout.decode()
    return {(ROOT / p).resolve() for p in out.split("\0") if p}


def _public_https(url: str) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or ""
    private = (host in ("localhost", "") or host.endswith((".local", ".internal", ".example"))
               or re.fullmatch(r"[\d.]+|\[.*\]", host) is not None)
    return parts.scheme == "https" and "." in host and not private


def test_links_stay_in_the_repository() -> None:
    files = _repository_files()
    bad = []
    for page in PAGES:
        where = page.relative_to(ROOT)
        for target in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                if not _public_https(target):
                    bad.append(f"{where}: {target} (only https:// links to public sites)")
                continue
            path_part, _, fragment = target.partition("#")
            dest = (page.parent / unquote(path_part)).resolve() if path_part else page
            if "shared/" in path_part:
                bad.append(f"{where}: {target} (../shared is not part of a clone)")
            elif dest not in files and not (dest.is_dir() and dest.is_relative_to(ROOT)):
                bad.append(f"{where}: {target} (no such file in the repository)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                bad.append(f"{where}: {target} (no heading #{fragment} in {dest.name})")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_link_check_catches_what_it_should(tmp_path: Path) -> None:
    """The checker's own rules, on a made-up page."""
    page = tmp_path / "p.md"
    page.write_text("# A `glam batch`: many × many\n\n## Upgrading from `import analyzer` / x\n"
                    "[a](#a-glam-batch-many--many) [b](x.md) `[c](ignored.md)`\n"
                    "```\n[d](also-ignored.md)\n```\n[e](https://pypi.org/project/glam-sr/)\n")
    assert links(page) == ["#a-glam-batch-many--many", "x.md", "https://pypi.org/project/glam-sr/"]
    assert anchors(page) == {"a-glam-batch-many--many", "upgrading-from-import-analyzer--x"}
    assert _public_https("https://pypi.org/project/spandrel/")
    assert not _public_https("http://pypi.org/") and not _public_https("https://localhost/x")
    assert not _public_https("https://10.0.0.1/x")
