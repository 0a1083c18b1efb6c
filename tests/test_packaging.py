"""The installed distribution: one import namespace, ``glam``, and archives of older versions.

The wheel is built from a copy of the tracked files (never from the working tree, whose
``build/`` may hold stale modules), with the running interpreter's setuptools and no
network (``pip wheel --no-deps --no-build-isolation``). It is then installed into a fresh
virtual environment that sees the already installed dependencies through a ``.pth`` line
(a plain path line: the project's own editable ``glam`` finder is not activated there), so
the test installs no torch. Measured on the 2-core build machine (load average 3.7):
build 1.5 s, venv 3.5 s, install 1.0 s, the import checks 3 s.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from glam.cli import cli
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
#: what the distribution may put at the top of site-packages: the package and its metadata
OWN_TOP_LEVEL = {"glam"}


def _tracked_copy(dst: Path) -> Path:
    """The repository's tracked files (what a clone has), copied to ``dst``."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if not src.is_file():  # deleted in the working tree, not yet committed
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = _tracked_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", str(src), "-w", str(out)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = out.glob("glam_sr-*.whl")
    return whl


def test_wheel_installs_only_the_glam_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        top_level = z.read(f"{dist_info}/top_level.txt").decode().split()
        record = z.read(f"{dist_info}/RECORD").decode().splitlines()
        metadata = z.read(f"{dist_info}/METADATA").decode()
    assert dist_info.startswith("glam_sr-")
    assert "Name: glam-sr" in metadata
    assert set(top_level) == OWN_TOP_LEVEL
    recorded = {line.split(",")[0] for line in record if line}
    roots = {p.split("/")[0] for p in recorded}
    assert roots == OWN_TOP_LEVEL | {dist_info}, sorted(roots)
    assert recorded == set(names)
    # the three repository folders are inside the package, with the fixture data
    for module in ("glam/engine/glam.py", "glam/importers/loader.py",
                   "glam/importers/onnx/backend.py", "glam/fixtures/__init__.py",
                   "glam/fixtures/images/astronaut_hr.png", "glam/report/templates/report.html.j2"):
        assert module in recorded, module
    # the console script is `glam`
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert "glam = glam.cli:main" in entry_points


def test_wheel_in_a_fresh_venv_imports_glam(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    # the dependencies (torch, onnx, ...) from the environment running the tests
    (site / "_glam_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          str(wheel)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    probe = (
        "import glam, importlib.util as u\n"
        "glam.analyze; glam.load; glam.prepare_image; glam.UserInputError\n"
        "import glam.fixtures as f\n"
        "assert f.DEFAULT_IMAGE.is_file(), f.DEFAULT_IMAGE\n"
        "print(glam.__file__)\n"
        "print([n for n in ('analyzer', 'importers', 'glam_fixtures') if u.find_spec(n)])\n"
    )
    res = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    where, others = res.stdout.strip().splitlines()
    assert Path(where).is_relative_to(site), where  # the installed wheel, not the repository
    assert others == "[]", f"generic top-level modules importable: {others}"
    res = subprocess.run([str(env_dir / "bin" / "glam"), "--help"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode == 0 and "analyze" in res.stdout, res.stdout + res.stderr


def test_archive_written_as_analyzer_stays_readable(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs archived before the rename record ``analyzer.engine.reference.reference_glam``
    as their parity reference; ``glam ls`` / ``show`` / ``export`` / ``report`` still read them (the string is kept
    as provenance, never imported)."""
    import glam.fixtures as fixtures

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    model = fixtures.fixture_path("rcan", "legacy.onnx")
    Image.open(fixtures.DEFAULT_IMAGE).convert("RGB").crop((48, 48, 96, 96)).save("hr.png")
    res = runner.invoke(cli, ["analyze", str(model), "hr.png", "--hr", "--verify", "-o", "old.h5",
                              "--run", "old", "-q"])
    assert res.exit_code == 0, res.output
    with h5py.File("old.h5", "r+") as f:
        eg = f["runs/old/engine_parity"]
        assert eg.attrs["reference"] == "glam.engine.reference.reference_glam"
        eg.attrs["reference"] = "analyzer.engine.reference.reference_glam"
    res = runner.invoke(cli, ["ls", "old.h5"])
    assert res.exit_code == 0 and "old" in res.output, res.output
    res = runner.invoke(cli, ["show", "old.h5", "old"])
    assert res.exit_code == 0, res.output
    assert "engine parity  passed" in res.output
    res = runner.invoke(cli, ["export", "old.h5", "old", "--to", "out"])
    assert res.exit_code == 0 and any(Path("out").rglob("*.npy")), res.output
    res = runner.invoke(cli, ["report", "old.h5", "-o", "old.html"])
    assert res.exit_code == 0 and Path("old.html").stat().st_size > 0, res.output
