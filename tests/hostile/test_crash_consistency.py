"""Crash consistency: SIGKILL at random moments, a kill around the publish of a new archive, two writers.

After each event: every run reported complete earlier is still in the archive and reads
back (every dataset, Fletcher32 checksums), and no half-written run is visible.
``-m slow`` runs the full campaign (30 kills); the default run does a short one.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from glam.archive import open_archive
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _images(tmp_path: Path, hr_image: Path, n: int) -> Path:
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    src = Image.open(hr_image).convert("RGB")
    for i in range(n):
        src.crop((i * 7, i * 5, i * 7 + 40, i * 5 + 40)).save(d / f"im{i}.png")
    return d


def _analyze_cmd(model: Path, images: Path, ar: Path, run: str) -> list[str]:
    return [sys.executable, "-m", "glam", "analyze", str(model), str(images), "-o", str(ar),
            "--run", run, "--json", "--store", "tensors", "--window", "8", "--device", "cpu"]


def _check_invariants(ar: Path, reported: dict[str, dict]) -> list[str]:
    if not ar.exists():
        assert not reported, "runs were reported complete but the archive does not exist"
        return []
    with open_archive(ar) as a:
        runs = a.runs()
        for name, metrics in reported.items():
            assert name in runs, f"run {name} was reported complete and is lost"
            rd = a.run(name)
            got, want = rd.metrics["di_local"], metrics["di_local"]  # stored and read back
            assert got == want or (math.isnan(got) and math.isnan(want)), (got, want)
        for name in runs:
            a.verify_run(name)
            assert a.group(name).attrs["complete"]
            assert a.n_layers(name) == 5
    return runs


def _kill_campaign(kills: int, tiny_model: Path, hr_image: Path, tmp_path: Path,
                   seed: int) -> None:
    rng = random.Random(seed)
    images = _images(tmp_path, hr_image, 3)
    ar = tmp_path / "crash.h5"
    reported: dict[str, dict] = {}
    for i in range(kills):
        proc = subprocess.Popen(_analyze_cmd(tiny_model, images, ar, f"k{i}"),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=_env(), cwd=tmp_path, text=True)
        try:
            wait_lines = rng.randrange(0, 3)
            for _ in range(wait_lines):
                line = proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    break
                obj = json.loads(line)
                reported[obj["run"]] = obj["metrics"]
            time.sleep(rng.uniform(0.0, 0.6 if wait_lines else 4.0))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=120)
        rest = proc.stdout.read()  # type: ignore[union-attr]
        for line in rest.splitlines():
            if line.strip():
                obj = json.loads(line)
                reported[obj["run"]] = obj["metrics"]
        _check_invariants(ar, reported)
    # a clean run afterwards appends and removes every leftover
    res = subprocess.run(_analyze_cmd(tiny_model, images, ar, "final"), capture_output=True,
                         text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    runs = _check_invariants(ar, reported)
    assert {"final__im0", "final__im1", "final__im2"} <= set(runs)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_random_kills_short(tiny_model: Path, hr_image: Path, tmp_path: Path) -> None:
    _kill_campaign(2, tiny_model, hr_image, tmp_path, seed=13)


@pytest.mark.slow
def test_random_kills_campaign(tiny_model: Path, hr_image: Path, tmp_path: Path) -> None:
    _kill_campaign(30, tiny_model, hr_image, tmp_path, seed=2026)


# A new archive is published with a hard link (atomic, and it never replaces an archive
# another process created meanwhile): kill just before it, or just after it, before the
# temporary file is unlinked.
_KILL_AT_PUBLISH = """
import os, signal, sys
real = os.link
def link(src, dst, *args, **kwargs):
    if {before}:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
os.link = link
from glam.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("before", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_kill_at_publish(before: bool, tiny_model: Path, lr_image: Path,
                            tmp_path: Path) -> None:
    ar = tmp_path / "new.h5"
    args = ["analyze", str(tiny_model), str(lr_image), "-o", str(ar), "--run", "first",
            "--window", "8"]
    res = subprocess.run([sys.executable, "-c", _KILL_AT_PUBLISH.format(before=before), *args],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert res.returncode == -signal.SIGKILL
    if before:
        assert not ar.exists()  # the new archive appears only complete, or not at all
    else:
        with open_archive(ar) as a:
            assert a.runs() == ["first"]
            a.verify_run("first")
    res = subprocess.run([sys.executable, "-m", "glam", *args[:-4], "--run", "second",
                          "--window", "8"], capture_output=True, text=True, env=_env(),
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    with open_archive(ar) as a:
        assert a.runs() == (["second"] if before else ["first", "second"])
        for r in a.runs():
            a.verify_run(r)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_two_writers_on_one_archive(tiny_model: Path, hr_image: Path, tmp_path: Path) -> None:
    images = _images(tmp_path, hr_image, 2)
    ar = tmp_path / "shared.h5"
    procs = [subprocess.Popen(_analyze_cmd(tiny_model, images, ar, f"w{i}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                              cwd=tmp_path, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    reported = {json.loads(ln)["run"]: json.loads(ln)["metrics"]
                for out, _ in outs for ln in out.splitlines() if ln.strip()}
    assert len(reported) == 4
    runs = _check_invariants(ar, reported)
    assert sorted(runs) == sorted(reported)
