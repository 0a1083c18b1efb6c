"""docs/examples/github-actions.yml: a valid GitHub Actions workflow whose glam commands run.

The workflow is validated against GitHub's workflow schema by check-jsonschema (its
vendored schema, so offline). Its steps are parsed from the YAML, and the glam commands
(the baseline command of its header, the check step) run on the bundled fixture model in
a project laid out as the header describes; the reports the upload step keeps must exist.
The install step must install this repository by path with the versions ``.ci/setup`` pins.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import glam.fixtures as fixtures
import pytest
from click.testing import CliRunner
from glam.cli import cli
from PIL import Image
from ruamel.yaml import YAML  # check-jsonschema's own YAML reader (the dev extra)

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "docs" / "examples" / "github-actions.yml"


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", str(path)],
        capture_output=True, text=True,
    )


def _steps() -> list[dict]:
    doc = YAML(typ="safe").load(RECIPE.read_text())
    (job,) = doc["jobs"].values()
    return job["steps"]


def _glam_commands(script: str) -> list[list[str]]:
    """The glam command lines of a step's ``run`` script (a folded or literal block)."""
    return [shlex.split(line)[1:] for line in script.splitlines()
            if line.strip().startswith("glam ")]


def test_recipe_is_a_valid_workflow(tmp_path: Path) -> None:
    res = _lint(RECIPE)
    assert res.returncode == 0, res.stdout + res.stderr
    # the linter does reject a broken workflow (a job without runs-on)
    broken = tmp_path / "broken.yml"
    broken.write_text(RECIPE.read_text().replace("    runs-on: ubuntu-latest\n", ""))
    assert _lint(broken).returncode != 0


def test_recipe_installs_this_repository_as_ci_setup_pins() -> None:
    (install,) = [s for s in _steps() if "pip install" in s.get("run", "")]
    script = install["run"]
    setup = (ROOT / ".ci" / "setup").read_text()
    for pin in re.findall(r'"((?:torch|torchvision|onnx2torch)==[^"]+)"', setup):
        assert f'"{pin}"' in script, f"{pin} (.ci/setup) is not what the recipe installs"
    assert '"./glam[cpu,report]"' in script  # this repository, by path
    assert "--no-deps \"onnx2torch" in script
    assert "YOUR_ORG" not in RECIPE.read_text()


def test_recipe_glam_steps_run_on_the_fixture_model(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # the project the header describes: glam/, models/sr_x2.onnx, images/, baselines/
    (tmp_path / "models").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "baselines").mkdir()
    shutil.copy(fixtures.fixture_path("rcan", "legacy.onnx"), tmp_path / "models" / "sr_x2.onnx")
    with Image.open(fixtures.DEFAULT_IMAGE) as im:
        im.convert("RGB").crop((48, 48, 112, 112)).save(tmp_path / "images" / "face.png")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    header = [line.lstrip("# ").strip() for line in RECIPE.read_text().splitlines()
              if line.startswith("#")]
    (baseline,) = [shlex.split(line)[1:] for line in header if line.startswith("glam baseline")]
    res = runner.invoke(cli, [*baseline, "--quiet"])
    assert res.exit_code == 0, res.output
    assert Path("baselines/sr_x2.h5").is_file()

    steps = _steps()
    checks = [cmd for s in steps for cmd in _glam_commands(s.get("run", ""))]
    assert [c[0] for c in checks] == ["check"]
    res = runner.invoke(cli, [*checks[0], "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads(Path("glam-report.json").read_text())
    assert report["status"] == "PASSED" and report["summary"]["failed"] == 0
    suites = ET.parse("glam-report.xml").getroot().iter("testsuite")
    cases = [c for s in suites for c in s.iter("testcase")]
    assert cases and not any(c.find("failure") is not None for c in cases)
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    kept = upload["with"]["path"].split()
    assert kept and all(Path(p).is_file() for p in kept), kept
    assert upload.get("if") == "always()"  # the reports survive a failed gate

    # the same step fails the job (exit 1) on a model that reconstructs differently
    shutil.copy(fixtures.fixture_path("carn", "legacy.onnx"), tmp_path / "models" / "sr_x2.onnx")
    res = runner.invoke(cli, [*checks[0], "--quiet"])
    assert res.exit_code == 1, res.output
    assert json.loads(Path("glam-report.json").read_text())["status"] == "FAILED"
