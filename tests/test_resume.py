"""Issue 23, "an interrupted folder cannot be resumed": rerunning ``glam analyze DIR -o
runs.h5`` (and ``glam baseline``) after Ctrl-C skips the runs already complete from the same
model, image, ROI and options, says how many, computes the rest; a run that differs is
refused naming the difference; ``--overwrite`` recomputes everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from glam.archive.hdf5 import existing_runs
from glam.cli import cli
from glam.resume import ATTR
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    src = Image.open(ROOT / "fixtures" / "images" / "astronaut_hr.png").convert("RGB")
    for i in range(4):
        src.crop((i * 20, i * 10, i * 20 + 40, i * 10 + 40)).save(imgs / f"im{i}.png")
    return imgs


def _created(ar: Path) -> dict[str, str]:
    with h5py.File(ar, "r") as f:
        return {n: str(g.attrs["created"]) for n, g in f["runs"].items()}


def test_sigint_mid_folder_then_rerun_resumes(tiny_model: Path, folder: Path,
                                             tmp_path: Path) -> None:
    ar = tmp_path / "runs.h5"
    # the child gets SIGINT's default action back: a shell that starts this suite in the
    # background (``cmd &``) hands its children SIGINT ignored, and Python keeps it ignored,
    # so the interrupt never arrived and the child finished every run (LAM at fold 300, about
    # 0.3 s a run, leaves the other runs time enough after the first is committed)
    cmd = [sys.executable, "-m", "glam", "analyze", str(tiny_model), str(folder), "-o", str(ar),
           "--json", "--lam", "--lam-fold", "300", "--window", "8", "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=tmp_path, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.readline()  # type: ignore[union-attr]  # one run is committed
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert json.loads(first)["run"] == "tiny_x2__im0", err
    assert proc.returncode == 130, err
    assert err.rstrip().splitlines()[-1].startswith("error: interrupted"), err  # nothing after
    done = existing_runs(ar)
    assert 1 <= len(done) < 4, done
    before = _created(ar)
    # the same command again: exit 0, the finished runs skipped (not recomputed), the rest done
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert sorted(r["run"] for r in lines) == [f"tiny_x2__im{i}" for i in range(4)]
    assert sorted(r["run"] for r in lines if r.get("skipped")) == sorted(done)
    assert f"resume: {len(done)} of 4 run(s) already complete" in res.stderr
    assert f"4 run(s) -> {ar} ({len(done)} already complete: skipped, {4 - len(done)} computed)" \
        in res.stderr
    after = _created(ar)
    assert {n: after[n] for n in done} == before and len(after) == 4


@pytest.mark.usefixtures("cached_model_load")
def test_other_options_are_refused_and_overwrite_recomputes(tiny_model: Path, folder: Path,
                                                           tmp_path: Path) -> None:
    r = CliRunner()
    ar = tmp_path / "runs.h5"
    base = ["analyze", str(tiny_model), str(folder), "-o", str(ar), "--window", "8", "-q"]
    res = r.invoke(cli, base)
    assert res.exit_code == 0, res.stderr
    with h5py.File(ar, "r") as f:
        key = json.loads(f["runs/tiny_x2__im0"].attrs[ATTR])
    assert key["window"] == 8 and key["roi"] == "centre" and key["lam"] is False
    first = _created(ar)
    res = r.invoke(cli, base)  # nothing to do: every run skipped
    assert res.exit_code == 0, res.stderr
    assert "4 run(s) -> " in res.stdout and "(4 already complete: skipped, 0 computed)" in \
        res.stdout
    assert _created(ar) == first
    res = r.invoke(cli, [*base[:-2], "12", "-q"])  # another window: a different analysis
    assert res.exit_code == 2
    assert "run 'tiny_x2__im0' already exists" in res.stderr and "window 8, not 12" in res.stderr
    assert "--overwrite" in res.stderr
    res = r.invoke(cli, [*base, "--roi", "4,4"])
    assert res.exit_code == 2 and "roi 'centre', not [4, 4]" in res.stderr
    time.sleep(1.1)  # "created" has whole seconds
    res = r.invoke(cli, [*base, "--overwrite"])  # recomputes every run
    assert res.exit_code == 0, res.stderr
    assert all(_created(ar)[n] != first[n] for n in first)


@pytest.mark.usefixtures("cached_model_load")
def test_another_image_or_model_under_the_same_name_is_refused(
    tiny_model: Path, tiny_y_model: Path, folder: Path, tmp_path: Path
) -> None:
    r = CliRunner()
    ar = tmp_path / "runs.h5"
    img = folder / "im0.png"
    assert r.invoke(cli, ["analyze", str(tiny_model), str(img), "-o", str(ar), "--run", "x",
                          "--window", "8", "-q"]).exit_code == 0
    res = r.invoke(cli, ["analyze", str(tiny_model), str(folder / "im1.png"), "-o", str(ar),
                         "--run", "x", "--window", "8", "-q"])
    assert res.exit_code == 2 and "from another image" in res.stderr
    res = r.invoke(cli, ["analyze", str(tiny_y_model), str(img), "-o", str(ar), "--run", "x",
                         "--window", "8", "-q"])
    assert res.exit_code == 2 and "from another model file" in res.stderr


@pytest.mark.usefixtures("cached_model_load")
def test_baseline_resumes_too(tiny_model: Path, folder: Path, tmp_path: Path) -> None:
    r = CliRunner()
    ar = tmp_path / "base.h5"
    args = ["baseline", str(tiny_model), str(folder), "-o", str(ar), "--window", "8", "-q"]
    assert r.invoke(cli, [*args, "--run", "b"]).exit_code == 0  # other names: not resumed
    res = r.invoke(cli, args)
    assert res.exit_code == 0, res.stderr
    first = _created(ar)
    res = r.invoke(cli, args)
    assert res.exit_code == 0, res.stderr
    assert "8 baseline run(s)" not in res.stdout
    assert "4 baseline run(s) in" in res.stdout and "(4 already complete: skipped)" in res.stdout
    assert _created(ar) == first
