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
from pathlib import Path

import pytest
from numerics import ISA_ENVIRONMENTS

ROOT = Path(__file__).resolve().parent.parent

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


@pytest.mark.parametrize("isa", sorted(ISA_ENVIRONMENTS))
def test_numerics_hold_under_another_instruction_set(isa: str) -> None:
    if os.environ.get("GLAM_ISA_RERUN"):
        pytest.skip("already inside an instruction-set rerun")
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("the instruction-set environments are for x86-64 Linux")
    if isa == "avx2" and not {"avx2", "fma"} <= _cpu_flags():
        pytest.skip("this CPU has no AVX2: the x86-64 baseline rerun still runs")
    env = _environment(isa)
    probe = subprocess.run([sys.executable, "-c", _PROBE], env={**env, "ONEDNN_VERBOSE": "all"},
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    for want in _EXPECTED[isa]:  # the environment really narrows every library
        assert want in probe.stdout, f"{want!r} not in the probe's output:\n{probe.stdout[-2000:]}"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "numerics",
         "-W", "ignore::pytest.PytestUnraisableExceptionWarning", str(ROOT / "tests")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    tail = (proc.stdout[-6000:] + proc.stderr[-2000:]).strip()
    assert proc.returncode == 0, f"numerics tests under {isa}:\n{tail}"
    assert " passed" in proc.stdout and " failed" not in proc.stdout, tail
