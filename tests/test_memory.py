"""Issue 23, "an input that exhausts the machine": glam's memory estimate against measured
peaks, and the refusal before any work when the estimate does not fit what is available
(cgroup limit, MemAvailable, ``ulimit -v``, the GPU's free memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import glam.fixtures as fixtures
import glam.importers
import pytest
import torch
from click.testing import CliRunner
from glam.archive.hdf5 import existing_runs
from glam.cli import cli
from glam.errors import InsufficientMemoryError
from glam.machine import MemoryBudget, memory_budget
from glam.memory import SAFETY, activation_bytes, check_memory, estimate_memory
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "memory_probe.py"
linux_only = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists() or sys.platform != "linux",
    reason="peak resident set is read from Linux's /proc",
)


def _fixture(arch: str) -> Path:
    return fixtures.fixture_path(arch, "legacy.onnx")


@linux_only
@pytest.mark.parametrize("arch", ["carn", "rcan"])
def test_estimate_is_within_30_percent_of_the_measured_peak(arch: str) -> None:
    """Three LR sizes of two models: the estimate made before the analysis against the
    resident-set peak the analysis reached (a fresh process; see tests/memory_probe.py)."""
    env = dict(os.environ, GLAM_KEEP_FREED_MEMORY="0", PYTHONPATH=str(ROOT / "tests"))
    out = subprocess.run([sys.executable, str(PROBE), str(_fixture(arch)), "96,192,288"],
                         capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert [r["size"] for r in rows] == [96, 192, 288]
    for r in rows:
        assert r["measured"] > 10 * 2**20, r  # the analysis itself, not noise
        assert 0.7 <= r["ratio"] <= 1.3, (arch, r)


def test_activations_scale_with_pixels_or_their_square() -> None:
    """Shape propagation at two small sizes extrapolates per value: linear for convolution
    outputs (carn), quadratic for a global attention map (rnan's non-local blocks)."""
    carn = glam.importers.load(_fixture("carn"), input_range=1)
    a, b = activation_bytes(carn, 100, 100), activation_bytes(carn, 200, 200)
    assert 3.9 < b / a < 4.1
    rnan = glam.importers.load(_fixture("rnan"), input_range=1)
    a, b = activation_bytes(rnan, 100, 100), activation_bytes(rnan, 200, 200)
    assert b / a > 8  # dominated by (h w)^2


def test_refusal_names_estimate_available_and_what_fits(tiny_model: Path) -> None:
    model = glam.importers.load(tiny_model)
    est = estimate_memory(model, 400, 400, lam=True)
    small = MemoryBudget(mem_available=int(est.total * 0.6))
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(model, 400, 400, lam=True, budget=small)
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert "the analysis (400x400 LR pixels) needs about" in msg and est.describe() in msg
    assert f"{small.describe()} available" in msg and "(MemAvailable)" in msg
    assert "a centre crop of at most" in msg
    # each lighter option is offered when it alone fits
    one = estimate_memory(model, 400, 400, lam=True, lam_batch=1).total
    with pytest.raises(InsufficientMemoryError, match=r"--lam-batch [124]\b"):
        check_memory(model, 400, 400, lam=True,
                     budget=MemoryBudget(mem_available=int(one / SAFETY) + 1))
    maps = estimate_memory(model, 400, 400).total
    tensors = estimate_memory(model, 400, 400, store="tensors").total
    assert tensors > maps
    between = MemoryBudget(mem_available=int((maps + tensors) / 2 / SAFETY))
    with pytest.raises(InsufficientMemoryError, match="--store maps"):
        check_memory(model, 400, 400, store="tensors", budget=between)
    # what fits passes, and an unknown budget never refuses
    assert check_memory(model, 400, 400, budget=MemoryBudget(mem_available=10 * est.total))
    assert check_memory(model, 400, 400, lam=True, budget=MemoryBudget()).total == est.total
    tight = MemoryBudget(mem_available=2**40, cgroup_free=int(est.total * 0.5),
                         cgroup_limit=2**31)
    with pytest.raises(InsufficientMemoryError, match=r"cgroup limit 2\.0 GiB"):
        check_memory(model, 400, 400, lam=True, budget=tight)


def test_memory_budget_reads_cgroup_limits(tmp_path: Path) -> None:
    """cgroup v2 (``memory.max`` on an ancestor) and v1 (``memory.limit_in_bytes``)."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:   8000000 kB\n")
    (proc / "self" / "cgroup").write_text("0::/a/b\n")
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "memory.max").write_text(f"{3 * 2**30}\n")
    (root / "a" / "memory.current").write_text(f"{2**30}\n")
    (root / "a" / "b" / "memory.max").write_text("max\n")
    (root / "a" / "cpu.max").write_text("150000 100000\n")
    b = memory_budget(proc, root)
    assert b.mem_available == 8000000 * 1024 and b.cgroup_free == 2 * 2**30
    assert b.available == 2 * 2**30 and "cgroup limit 3.0 GiB" in b.describe()
    from glam.machine import cpu_budget

    assert cpu_budget(sample_seconds=0, proc=proc, root=root).quota == 1.5
    (proc / "self" / "cgroup").write_text("4:memory:/job\n1:cpu,cpuacct:/job\n")
    (root / "memory" / "job").mkdir(parents=True)
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    (root / "memory" / "job" / "memory.usage_in_bytes").write_text(f"{2**29}\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory_budget(proc, root).cgroup_free == 2**29


@pytest.mark.usefixtures("cached_model_load")
@pytest.mark.parametrize("command", ["analyze", "baseline", "check", "sanity", "demo"])
def test_every_analysing_command_refuses_before_the_work(
    command: str, tiny_model: Path, hr_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """analyze, baseline, check, sanity and demo compare the estimate with the memory
    available before they analyse anything (batch workers go through analyze's check)."""
    r = CliRunner()
    base = tmp_path / "base.h5"
    if command == "check":  # a baseline made while memory is plentiful
        res = r.invoke(cli, ["baseline", str(tiny_model), str(hr_image), "--hr", "-o",
                             str(base), "-q"])
        assert res.exit_code == 0, res.stderr
    import glam.memory

    monkeypatch.setattr(glam.memory, "memory_budget",
                        lambda *a, **k: MemoryBudget(mem_available=50 * 2**20))
    ar = tmp_path / "out.h5"
    args = {
        "analyze": ["analyze", str(tiny_model), str(hr_image), "--hr", "-o", str(ar)],
        "baseline": ["baseline", str(tiny_model), str(hr_image), "--hr", "-o", str(ar)],
        "check": ["check", str(tiny_model), "--baseline", str(base)],
        "sanity": ["sanity", str(tiny_model), str(hr_image), "--hr", "-o", str(ar)],
        "demo": ["demo", "--model", str(tiny_model), "--image", str(hr_image), "--out",
                 str(tmp_path / "demo")],
    }[command]
    res = r.invoke(cli, [*args, "-q"] if command != "sanity" else args)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert "needs about" in res.stderr and "50 MiB (MemAvailable) available" in res.stderr
    assert not ar.exists() or existing_runs(ar) == []
    assert not (tmp_path / "demo" / "demo.h5").exists()


def _big_hr(tmp_path: Path) -> Path:
    path = tmp_path / "big_hr.png"
    Image.open(ROOT / "fixtures" / "images" / "astronaut_hr.png").convert("RGB").resize(
        (1800, 1800), Image.BICUBIC).save(path)
    return path


_VMPEAK = """
import torch; torch.set_num_threads(1)
import glam.cli, glam.importers
from glam.api import analyze
m = glam.importers.load({model!r})
analyze(m, torch.rand(1, 3, 12, 12), device="cpu", keep_layers=False)
for line in open("/proc/self/status"):
    if line.startswith("VmPeak:"):
        print(int(line.split()[1]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ulimit -v is Linux's RLIMIT_AS here")
def test_refusal_under_ulimit_v(tmp_path: Path) -> None:
    """``glam analyze`` of a 900x900 LR input (about 3.6 GiB) in a process whose address
    space is limited (``ulimit -v``) to what it needs to start plus 1 GiB: refused up front
    with exit 2, naming the limit, nothing archived (it used to start and die, or thrash)."""
    model = _fixture("carn")
    probe = subprocess.run([sys.executable, "-c", _VMPEAK.format(model=str(model))],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert probe.returncode == 0, probe.stderr[-2000:]
    limit_kib = int(probe.stdout.split()[-1]) + 2**20  # + 1 GiB
    image, ar = _big_hr(tmp_path), tmp_path / "a.h5"
    cmd = (f"ulimit -v {limit_kib} && exec {sys.executable} -m glam analyze {model} {image} "
           f"--hr -o {ar} --threads 1 --input-range 1")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=900,
                         cwd=ROOT)
    assert out.returncode == 2, out.stderr[-3000:]
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("error: the analysis of big_hr.png (900x900 LR pixels) needs about")
    assert "(ulimit -v) available" in err and "a centre crop of at most" in err
    assert not ar.exists() or existing_runs(ar) == []


def test_cuda_budget_is_the_devices_free_memory(monkeypatch: pytest.MonkeyPatch,
                                                 tiny_model: Path) -> None:
    """On CUDA the estimate is compared with ``torch.cuda.mem_get_info``'s free memory."""
    model = glam.importers.load(tiny_model)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *_a: (10 * 2**20, 16 * 2**30))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(InsufficientMemoryError, match=r"10 MiB free of 16\.0 GiB on cuda"):
        check_memory(model, 300, 300, device="cuda")
