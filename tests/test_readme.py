"""Every command and snippet the README shows runs (on the bundled fixture model and image)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import glam.fixtures as fixtures
import pytest
from click.testing import CliRunner
from glam.cli import cli
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A directory holding every file name the README uses."""
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


def _glam_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for raw in block.splitlines():
            line = raw.split("#")[0].strip()
            if line.startswith("glam "):
                lines.append(line)
    return lines


def test_readme_shows_the_two_quick_start_commands() -> None:
    quick = _blocks("bash")[0]
    assert "bash .ci/setup && .venv/bin/glam demo" in quick
    assert "bash .ci/setup && .venv/bin/python -m pytest -q" in quick
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/setup && .venv/bin/python -m pytest -q" in ci


def test_readme_commands_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    lines = _glam_lines()
    assert len(lines) >= 10
    runner = CliRunner()
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[0] == "analyze" and "--lam" in argv:
            argv += ["--lam-fold", "8"]  # the README's default fold, shortened for the suite
        res = runner.invoke(cli, argv)
        assert res.exit_code == 0, f"{line}\n{res.output}\n{res.stderr}"
    assert (workdir / "runs.h5").exists() and (workdir / "cmp.h5").exists()
    assert any((workdir / "figs").rglob("*.png"))
    assert any((workdir / "cmp").iterdir())
    # the prose commands: ls / show / export of a run in runs.h5
    res = runner.invoke(cli, ["ls", "runs.h5"])
    assert res.exit_code == 0, res.output
    import h5py

    with h5py.File("runs.h5", "r") as f:
        run = next(iter(f["runs"]))
    assert runner.invoke(cli, ["show", "runs.h5", run]).exit_code == 0
    assert runner.invoke(cli, ["export", "runs.h5", run, "--to", "out"]).exit_code == 0
    assert any(Path("out").rglob("*.npy"))


def test_readme_python_snippets_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    assert runner.invoke(cli, ["analyze", "model.onnx", "lr.png", "-o", "runs.h5"]).exit_code == 0
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102


def test_readme_performance_table_is_filled() -> None:
    assert "BENCH_TABLE" not in README
    assert os.path.exists(ROOT / "bench" / "__main__.py")
