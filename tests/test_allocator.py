"""The CPU allocator setting (glam.engine.allocator) and the engine's autograd entry point."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from glam.engine.backward import _grad

_PROBE = "from glam.engine.allocator import keep_freed_memory as k; print(k(), k())"


def _probe(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("GLAM_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["GLAM_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_applies_once_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system")
    assert _probe(None) == "True True"  # applied, and the second call reports the same


def test_keep_freed_memory_can_be_disabled() -> None:
    assert _probe("0") == "False False"


def test_engine_entry_point_equals_autograd_grad() -> None:
    torch.manual_seed(5)
    a = torch.rand(2, 3, requires_grad=True)
    b = torch.rand(3, 4, requires_grad=True)
    unused = torch.rand(2, requires_grad=True)
    out = torch.tanh(a @ b)
    go = torch.rand_like(out)
    expect = torch.autograd.grad(out, [a, b], grad_outputs=go, retain_graph=True)
    got = _grad(out, [a, b, unused], go)
    assert torch.equal(got[0], expect[0]) and torch.equal(got[1], expect[1])
    assert got[2] is None  # allow_unused
    scalar = out.sum()
    (ga,) = _grad(scalar, [a], None)  # None = a unit cotangent, as for a scalar loss
    assert torch.equal(ga, torch.autograd.grad(scalar, [a], retain_graph=True)[0])
