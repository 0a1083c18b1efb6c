"""Hostile and broken input beyond model files: full disks, unwritable outputs, image
bombs, damaged archives, bad arguments. Each case: documented exit code, one ``error:``
line without a traceback, and no lost or half-written run."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import make_corpus as mc
import numpy as np
import pytest
from cli_output import message_lines
from click.testing import CliRunner
from glam.archive import open_archive
from glam.cli import cli

pytestmark = pytest.mark.usefixtures("cached_model_load")
ROOT = Path(__file__).resolve().parents[2]


def glam(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error_line(res, code: int) -> str:  # type: ignore[no-untyped-def]
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    lines = message_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


def md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def two_runs(tiny_model: Path, lr_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("two-runs")
    ar = d / "two.h5"
    for run in ("r1", "r2"):
        res = glam("analyze", tiny_model, lr_image, "-o", ar, "--run", run, "--window", 8)
        assert res.exit_code == 0, res.stderr
    return ar


def copy_of(ar: Path, tmp_path: Path) -> Path:
    dst = tmp_path / ar.name
    dst.write_bytes(ar.read_bytes())
    return dst


# ------------------------------------------------------------------- disk full / limits


def _glam_subprocess(args: list[object], cwd: Path, fsize: int | None = None,
                     **kw) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "glam", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, preexec_fn=limit, env=env,
                          timeout=300, **kw)


def test_file_size_limit_keeps_archive_and_cleans_temp(two_runs: Path, tiny_model: Path,
                                                       lr_image: Path, tmp_path: Path) -> None:
    ar = copy_of(two_runs, tmp_path)
    before = md5(ar)
    res = _glam_subprocess(["analyze", tiny_model, lr_image, "-o", ar, "--run", "r3",
                            "--store", "tensors", "--window", 8],
                           tmp_path, fsize=ar.stat().st_size + 64 * 1024)
    assert res.returncode == 3, res.stderr
    lines = message_lines(res.stderr)
    assert len(lines) == 1 and "file too large" in lines[0] and "Traceback" not in res.stderr
    assert md5(ar) == before
    assert leftovers(tmp_path) == []
    with open_archive(ar) as a:
        assert a.runs() == ["r1", "r2"]


def test_no_space_left_keeps_archive(two_runs: Path, tiny_model: Path, lr_image: Path,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ar = copy_of(two_runs, tmp_path)
    before = md5(ar)
    real = os.statvfs

    class Full:
        def __init__(self, st: os.statvfs_result) -> None:
            self.f_frsize, self.f_bavail = st.f_frsize, 2

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    line = one_error_line(glam("analyze", tiny_model, lr_image, "-o", ar, "--run", "r3",
                               "--window", 8), 3)
    assert "no space left on device" in line
    assert md5(ar) == before and leftovers(tmp_path) == []


@pytest.fixture
def full_filesystem(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real, small tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_filesystem_keeps_archive(two_runs: Path, tiny_model: Path, lr_image: Path,
                                            full_filesystem: Path) -> None:
    """The disk really fills up (no faked free space): one line, the archive untouched, no
    temporary file left, in a separate process (as a user runs it)."""
    ar = full_filesystem / "runs.h5"
    ar.write_bytes(two_runs.read_bytes())
    before = md5(ar)
    free = os.statvfs(full_filesystem)
    filler = full_filesystem / "filler"
    with open(filler, "wb") as fh:  # leave ~64 KiB: less than a run with --store tensors
        fh.write(b"\0" * max(0, free.f_bavail * free.f_frsize - 64 * 1024))
    cmd = [sys.executable, "-m", "glam", "analyze", str(tiny_model), str(lr_image), "-o",
           str(ar), "--run", "r3", "--window", "8", "--store", "tensors"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = message_lines(done.stderr)
    assert done.returncode in (2, 3), (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
    assert "no space left" in lines[0], lines[0]
    assert md5(ar) == before
    assert sorted(p.name for p in full_filesystem.iterdir()) == ["filler", "runs.h5"]
    with open_archive(ar) as a:
        assert a.runs() == ["r1", "r2"]


# ------------------------------------------------------------------ unwritable outputs


def test_unwritable_outputs_are_user_errors_before_the_work(
    two_runs: Path, tiny_model: Path, lr_image: Path, tmp_path: Path
) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    ar = tmp_path / "new.h5"
    for args, needle in (
        (["analyze", tiny_model, lr_image, "-o", ar, "--figures", afile / "figs"], "a-file"),
        (["analyze", tiny_model, lr_image, "-o", ar, "--figures", "/proc/glam-figs"],
         "not writable"),
        (["analyze", tiny_model, lr_image, "-o", "/proc/glam.h5"], "/proc"),
        (["demo", "--out", afile], "is a file"),
        (["export", two_runs, "r1", "--to", "/proc/glam-export"], "not writable"),
    ):
        line = one_error_line(glam(*args), 2)
        assert needle in line, line
    assert not ar.exists() and leftovers(tmp_path) == []


def test_check_reports_validated_before_the_run(two_runs: Path, tiny_model: Path,
                                                tmp_path: Path, lr_image: Path) -> None:
    bl = tmp_path / "bl.h5"
    assert glam("baseline", tiny_model, lr_image, "-o", bl, "--window", 8).exit_code == 0
    before = md5(bl)
    for opt in ("--junit", "--json"):
        line = one_error_line(glam("check", tiny_model, "--baseline", bl, opt,
                                   tmp_path / "missing" / "r.xml"), 2)
        assert "does not exist" in line and opt in line
        line = one_error_line(glam("check", tiny_model, "--baseline", bl, opt,
                                   "/proc/report.xml"), 2)
        assert "not writable" in line
    assert md5(bl) == before


# ------------------------------------------------------------------------------ images


def test_check_refuses_a_huge_stored_baseline_input(tiny_model: Path, lr_image: Path,
                                                     tmp_path: Path) -> None:
    """A baseline archive is untrusted too: a 30000x30000 stored input (an empty chunked
    dataset, a few KB on disk) is refused from its shape, before it is read."""
    bl = tmp_path / "bl.h5"
    assert glam("baseline", tiny_model, lr_image, "-o", bl, "--window", 8).exit_code == 0
    with h5py.File(bl, "r+") as f:
        (run,) = list(f["runs"])
        del f["runs"][run]["input"]
        f["runs"][run].create_dataset("input", shape=(3, 30000, 30000), dtype="f4",
                                      chunks=(3, 256, 256))
    assert bl.stat().st_size < 5_000_000
    t0 = time.perf_counter()
    line = one_error_line(glam("check", tiny_model, "--baseline", bl), 2)
    assert "30000x30000" in line and "--max-pixels" in line
    assert time.perf_counter() - t0 < 30
    line = one_error_line(glam("check", tiny_model, "--baseline", bl, "--max-pixels", "0"), 2)
    assert "--max-pixels 0" in line



@pytest.mark.parametrize("side", [30000, 12000, 4000])
def test_huge_images_refused_up_front(side: int, tiny_model: Path, tmp_path: Path) -> None:
    img = mc.make_png_header(tmp_path / f"bomb{side}.png", side, side)
    t0 = time.monotonic()
    line = one_error_line(glam("analyze", tiny_model, img, "-o", tmp_path / "a.h5"), 2)
    assert "GiB of memory" in line and "--max-pixels" in line
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "a.h5").exists()


def test_max_pixels_override(tiny_model: Path, lr_image: Path, tmp_path: Path) -> None:
    line = one_error_line(glam("analyze", tiny_model, lr_image, "-o", tmp_path / "a.h5",
                               "--max-pixels", 100), 2)
    assert "above the limit of 100" in line
    res = glam("analyze", tiny_model, lr_image, "-o", tmp_path / "a.h5", "--window", 8,
               "--max-pixels", 10**6)
    assert res.exit_code == 0, res.stderr


# ---------------------------------------------------------------------------- archives


def test_flipped_bytes_detected_by_verify(two_runs: Path, tmp_path: Path) -> None:
    ar = copy_of(two_runs, tmp_path)
    with h5py.File(ar, "r") as f:
        assert f["runs/r1/local/sum"].fletcher32
    mc.flip_dataset_bytes(ar, "runs/r1/local/sum")
    res = glam("ls", ar, "--verify")
    line = one_error_line(res, 2)
    assert "'r1'" in line and "damaged" in line
    assert "r2" in res.stdout
    line = one_error_line(glam("show", ar, "r1"), 2)
    assert "'r1'" in line and "damaged" in line
    assert glam("show", ar, "r2").exit_code == 0


def test_every_dataset_carries_a_checksum(two_runs: Path) -> None:
    """Fletcher32 on every non-empty array, the numeric tap table included (HDF5 filters no
    variable-length strings)."""
    unchecked: list[str] = []
    with h5py.File(two_runs, "r") as f:
        def visit(name: str, obj: object) -> None:
            if (isinstance(obj, h5py.Dataset) and obj.shape and obj.size
                    and obj.dtype.kind != "O" and not obj.fletcher32):
                unchecked.append(name)
        f.visititems(visit)
    assert not unchecked, unchecked


def test_run_missing_metrics_or_maps(two_runs: Path, tmp_path: Path) -> None:
    ar = copy_of(two_runs, tmp_path)
    with h5py.File(ar, "r+") as f:
        del f["runs/r1/metrics"]
        del f["runs/r2/local/sum"]
    res = glam("ls", ar)
    line = one_error_line(res, 2)
    assert "'r1'" in line and "r2" in res.stdout
    res = glam("ls", ar, "--verify")
    assert res.exit_code == 2 and "'r2'" in res.stderr and "'r1'" in res.stderr
    assert "Traceback" not in res.stderr
    for run in ("r1", "r2"):
        assert "damaged" in one_error_line(glam("show", ar, run), 2)


def test_clean_archive_verifies(two_runs: Path) -> None:
    res = glam("ls", two_runs, "--verify")
    assert res.exit_code == 0 and "r1" in res.stdout and "r2" in res.stdout


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_damaged_file_fails_fast(how: str, two_runs: Path, tmp_path: Path) -> None:
    ar = copy_of(two_runs, tmp_path)
    data = bytearray(ar.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        data[8:64] = os.urandom(56)
    ar.write_bytes(bytes(data))
    t0 = time.monotonic()
    res = glam("ls", ar)
    assert time.monotonic() - t0 < 5
    one_error_line(res, 2)


def test_runs_stored_as_dataset(tiny_model: Path, lr_image: Path, tmp_path: Path) -> None:
    ar = tmp_path / "odd.h5"
    with h5py.File(ar, "w") as f:
        f.attrs["format"] = "glam"
        f.attrs["schema_version"] = np.int64(1)
        f.create_dataset("runs", data=np.zeros(3))
    assert "/runs is not a group" in one_error_line(glam("ls", ar), 2)
    assert "/runs is not a group" in one_error_line(
        glam("analyze", tiny_model, lr_image, "-o", ar, "--window", 8), 2)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("args, needle", [
    (["--lam", "--lam-sigma", "0"], "--lam-sigma"),
    (["--lam", "--lam-sigma", "nan"], "--lam-sigma"),
    (["--lam", "--lam-sigma", "inf"], "--lam-sigma"),
    (["--lam", "--lam-sigma", "-1"], "--lam-sigma"),
    (["--lam", "--lam-kernel", "100001"], "--lam-kernel"),
    (["--tolerance", "nan"], "--tolerance"),
    (["--tolerance", "-1"], "--tolerance"),
])
def test_bad_analysis_arguments(args: list[str], needle: str, tiny_model: Path,
                                lr_image: Path, tmp_path: Path) -> None:
    line = one_error_line(glam("analyze", tiny_model, lr_image, "-o", tmp_path / "a.h5",
                               *args), 2)
    assert needle in line
    assert not (tmp_path / "a.h5").exists()


def test_bad_tolerances(tiny_model: Path, two_runs: Path, tmp_path: Path) -> None:
    for tol in ("output_max_abs=-1", "di_local_delta=inf", "local_sum_pearson=2"):
        line = one_error_line(glam("check", tiny_model, "--baseline", two_runs, "--tol", tol), 2)
        assert tol.split("=")[0] in line
    deep = mc.make_nested_json(tmp_path / "deep.json")
    line = one_error_line(glam("check", tiny_model, "--baseline", two_runs,
                               "--tolerances", deep), 2)
    assert "nested too deeply" in line


def test_two_channel_output_refused(tmp_path: Path, lr_image: Path) -> None:
    import torch
    from torch import nn

    class TwoChannels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.shuffle = nn.PixelShuffle(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shuffle(self.conv(x))

    path = tmp_path / "two.pt"
    torch.jit.save(torch.jit.trace(TwoChannels().eval(), torch.rand(1, 3, 16, 16)), str(path))
    res = glam("analyze", path, lr_image, "-o", tmp_path / "a.h5", "--window", 8)
    one_error_line(res, 2)
    assert not (tmp_path / "a.h5").exists()


# ------------------------------------------------------------------- pipes and signals


def test_broken_pipe_is_quiet(two_runs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "glam", "ls", str(two_runs)],
                            stdout=w, stderr=subprocess.PIPE, env=env, text=True)
    os.close(w)
    os.close(r)  # the reader is gone before glam writes (like `| head -0`)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_sigint_is_one_line(tiny_model: Path, lr_image: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, glam.cli as c; print('ready', flush=True); c.main(sys.argv[1:])",
         "analyze", str(tiny_model), str(lr_image), "-o", str(tmp_path / "a.h5"), "--lam",
         "--lam-fold", "400", "--window", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 0), err
    assert "Traceback" not in err and "Exception ignored" not in err
    if proc.returncode == 130:
        assert "interrupted" in err


def test_library_rejects_bad_parity_tolerance(tiny_model: Path) -> None:
    from glam import importers
    from glam.errors import UserInputError

    real = getattr(importers.load, "__wrapped_real__", importers.load)
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(UserInputError, match="parity tolerance"):
            real(tiny_model, tolerance=bad)
