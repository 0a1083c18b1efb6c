"""Issue 23: a float bound that holds on one CPU only must fail here.

The suite's tests that compare two different float computations carry the ``numerics``
marker (tests/numerics.py explains the bounds). This module reruns them in a subprocess with
torch's vector kernels, oneDNN's convolutions, MKL's matrix products and numba's kernels
limited to AVX2 and to the x86-64 baseline (SSE): AVX-512 and AVX2 round differently (fused
multiply-adds, reduction orders), and CI runners differ in what they have.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from glam.threads import affinity_cpus
from numerics import ISA_ENVIRONMENTS

ROOT = Path(__file__).resolve().parent.parent
TEST = "test_numerics_hold_under_another_instruction_set"

#: Printed by the probe: what each library will use under the environment.
_PROBE = """
import torch, numba
x = torch.rand(1, 64, 32, 32)
torch.nn.functional.conv2d(x, torch.rand(64, 64, 3, 3), padding=1)  # oneDNN prints its ISA
print("aten", torch.backends.cpu.get_cpu_capability())
print("numba", numba.config.CPU_NAME)
"""

#: What the probe must report under each environment (torch's capability name, oneDNN's
#: verbose ISA line, numba's CPU name).
_EXPECTED = {
    "avx2": ("aten AVX2", "isa:Intel AVX2", "numba haswell"),
    "default": ("aten DEFAULT", "isa:Intel SSE4.1", "numba generic"),
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _environment(isa: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAM_NUMERICS_")}
    env.update(ISA_ENVIRONMENTS[isa])
    env["GLAM_ISA_RERUN"] = isa
    return env


def _skip_reason(isa: str) -> str | None:
    if os.environ.get("GLAM_ISA_RERUN"):
        return "already inside an instruction-set rerun"
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "the instruction-set environments are for x86-64 Linux"
    if isa == "avx2" and not {"avx2", "fma"} <= _cpu_flags():
        return "this CPU has no AVX2: the x86-64 baseline rerun still runs"
    return None


class _Rerun:
    """The numerics-marked tests in a subprocess under one instruction set; its output goes
    to a file (two reruns at once must not block on a full pipe)."""

    def __init__(self, isa: str, threads: int) -> None:
        env = _environment(isa)
        # the reruns run side by side on the CPUs the suite has: each gets its share, so
        # that they do not spin against each other (tests that pin a thread count still do)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env.setdefault("NUMBA_NUM_THREADS", str(threads))
        self.env = env
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "numerics",
             "-W", "ignore::pytest.PytestUnraisableExceptionWarning", str(ROOT / "tests")],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )

    def result(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.log.seek(0)
        return code, self.log.read()


@pytest.fixture(scope="module")
def reruns(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Every selected instruction-set rerun, started together on first use (they take a
    minute each on a 2-core machine; one after the other they were the suite's longest
    tests)."""
    selected = sorted({
        item.callspec.params["isa"] for item in request.session.items
        if item.originalname == TEST and hasattr(item, "callspec")
    })
    isas = [isa for isa in selected if _skip_reason(isa) is None]
    threads = max(1, affinity_cpus() // max(1, len(isas)))
    started = {isa: _Rerun(isa, threads) for isa in isas}
    yield started
    for run in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        run.log.close()


@pytest.mark.parametrize("isa", sorted(ISA_ENVIRONMENTS))
def test_numerics_hold_under_another_instruction_set(isa: str, reruns) -> None:  # type: ignore[no-untyped-def]
    reason = _skip_reason(isa)
    if reason is not None:
        pytest.skip(reason)
    run = reruns[isa]
    probe = subprocess.run([sys.executable, "-c", _PROBE], env={**run.env, "ONEDNN_VERBOSE": "all"},
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    for want in _EXPECTED[isa]:  # the environment really narrows every library
        assert want in probe.stdout, f"{want!r} not in the probe's output:\n{probe.stdout[-2000:]}"
    code, out = run.result(timeout=1800)
    tail = out[-8000:].strip()
    assert code == 0, f"numerics tests under {isa}:\n{tail}"
    assert " passed" in out and " failed" not in out, tail
