"""Issue 19 on CPU: the batched per-layer path (what CUDA runs) gives the per-layer path's
maps, reads nothing back per layer, falls back cleanly from torch.compile; the CUDA
precision context; bench/gpu_check.sh and its summary (quick mode)."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import glam.fixtures as fixtures
import glam.importers
import numpy as np
import pytest
import torch
from glam.engine import batched as bk
from glam.engine import glam as glam_mod
from glam.engine import maps
from glam.engine.device import full_precision
from glam.engine.glam import compute_glam
from glam.errors import AnalysisError
from glam.fixtures.architectures import ARCHITECTURES
from numerics import assert_close, assert_same
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
ENGINE = str(ROOT / "analyzer" / "engine")


@functools.cache
def _model(arch: str) -> glam.importers.ImportedModel:
    return glam.importers.from_module(fixtures.load_eager(arch), input_range=1)


def _x(seed: int = 0, h: int = 14, w: int = 12) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _assert_same(a: glam_mod.GlamMaps, b: glam_mod.GlamMaps, ulps: float | None,
                 ulps_layers: float | None = None) -> None:
    """Every map and per-layer record of ``b`` equals ``a``: bit for bit (``ulps`` None),
    else within ``ulps`` float32 epsilons of each final map (normalised: scale 1) and
    ``ulps_layers`` (default ``ulps``) of each raw per-layer map's largest magnitude."""
    check = assert_same if ulps is None else functools.partial(assert_close, ulps=ulps)
    check_layer = check if ulps_layers is None else functools.partial(assert_close,
                                                                      ulps=ulps_layers)
    for k in a.local:
        check(b.local[k], a.local[k], err_msg=f"local {k}")
        check(b.global_[k], a.global_[k], err_msg=f"global {k}")
    assert len(a.layers) == len(b.layers)
    for p, q in zip(a.layers, b.layers, strict=True):
        assert (p.local_vanished, p.global_vanished) == (q.local_vanished, q.global_vanished), p.name
        for name in ("local_map", "global_map", "global_grad_map", "activation_energy"):
            u, v = getattr(p, name), getattr(q, name)
            assert (u is None) == (v is None), (p.name, name)
            if u is not None:
                check_layer(v, u, err_msg=f"{p.name} {name}")


@pytest.mark.parametrize("arch", [  # rerun under other instruction sets: the worst measured
    pytest.param(a, marks=[pytest.mark.numerics] if a in ("rcan", "rnan") else [])
    for a in ARCHITECTURES])
def test_batched_path_matches_per_layer_path(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched path (CUDA's default) equals the per-layer eager path (CUDA's path before
    it) and the CPU default (the numba kernels, float64 channel sums) to float32 rounding of
    each quantity; the CPU default itself is unchanged (``auto``)."""
    model, x = _model(arch), _x(3)
    default = compute_glam(model, x, 8, 6, 8)
    assert default.per_layer == "per-layer" and default.peak_memory_bytes is None
    batched = compute_glam(model, x, 8, 6, 8, per_layer="batched")
    assert batched.per_layer == "batched"
    # different kernels (numba vs batched torch; float64 vs float32 channel sums)
    _assert_same(default, batched, ULPS_BATCHED_MAPS, ULPS_BATCHED_LAYERS)
    monkeypatch.setenv("GLAM_FUSED_KERNELS", "0")
    eager = compute_glam(model, x, 8, 6, 8, per_layer="per-layer")
    _assert_same(eager, compute_glam(model, x, 8, 6, 8, per_layer="batched"),
                 ULPS_BATCHED_MAPS, ULPS_BATCHED_LAYERS)


# Bounds in float32 epsilons of each quantity's scale: the worst measured on AVX-512, AVX2
# and the x86-64 baseline (tests/numerics.py), times 4, rounded up to a power of 2.
#: Batched path against the per-layer paths (numba kernels or eager torch), final maps:
#: measured 11.0 (rnan, local Variation, AVX2).
ULPS_BATCHED_MAPS = 64
#: The same, raw per-layer maps: measured 77.3 (an rnan layer whose Grad-CAM weights nearly
#: cancel: float32 resolves its key only to about eps / r, see GLAM.md's vanishing weights).
ULPS_BATCHED_LAYERS = 512


@pytest.mark.numerics
def test_batched_path_store_tensors_and_streaming() -> None:
    """``store="tensors"`` hands out the same raw tensors, and records stream in order.

    The activations come from the same forward pass (bit for bit); the gradients from two
    different backward schedules, so they agree to float32 rounding of their own scale
    (``grad_global`` reaches 19 on this input: an absolute 1e-6 is 0.4 eps there and failed
    on AVX-512 with a difference of 3.8e-6, relative 2.3e-7)."""
    model, x = _model("rcan"), _x(5)
    seen: list[int] = []
    a = compute_glam(model, x, 6, 4, 8, store="tensors")
    b = compute_glam(model, x, 6, 4, 8, store="tensors", per_layer="batched",
                     on_layer=lambda r: seen.append(r.index))  # fmt: skip
    assert seen == list(range(len(a.layers)))
    for p, q in zip(a.layers, b.layers, strict=True):
        assert_same(q.activation, p.activation, err_msg=f"{p.name} activation")
        assert_close(q.grad_local, p.grad_local, ulps=ULPS_GRADS, err_msg=f"{p.name} grad_local")
        if p.grad_global is not None:
            assert_close(q.grad_global, p.grad_global, ulps=ULPS_GRADS,
                         err_msg=f"{p.name} grad_global")


#: Raw gradients, batched against per-layer path, in float32 epsilons of the tensor's
#: largest magnitude: measured 1.31 on every instruction set (rcan tail grad_global).
ULPS_GRADS = 8


#: Stacked Grad-CAM keys against one key at a time (a batched reduction's order could
#: differ): measured 0 (bit-identical) on every instruction set; the floor of 8.
ULPS_KEYS = 8


@pytest.mark.numerics
def test_gradcam_keys_follow_the_vanishing_rule() -> None:
    """Stacked keys equal the per-layer keys: ordinary, all-zero, vanishing (a texture
    gradient's channel sums are 0) and NaN gradients (not vanished: the NaN stays visible)."""
    from glam.engine.texture import texture_global_grad

    torch.manual_seed(13)
    grads = [
        torch.randn(3, 12, 12),
        torch.zeros(3, 12, 12),
        texture_global_grad(torch.rand(1, 3, 12, 12))[0],
        torch.full((3, 12, 12), float("nan")),
    ]
    keys, vanished = bk.gradcam_keys(grads)
    for b, g in enumerate(grads):
        key, van = maps.gradcam_key_flagged(g)
        assert bool(vanished[b]) == van, b
        assert_close(keys[b], key, ulps=ULPS_KEYS, err_msg=f"key {b}")
    assert vanished.tolist() == [False, True, True, False]


def test_batches_split_by_count_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bk, "BATCH_BYTES", 100)
    assert bk.batches(range(7), lambda i: 10, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert bk.batches([0, 1, 2], lambda i: 60, 32) == [[0], [1], [2]]
    assert bk.batches([0, 1], lambda i: 500, 32) == [[0], [1]]  # one large item: alone
    host = bk.to_host([torch.arange(6.0).reshape(2, 3), torch.tensor([True, False])])
    np.testing.assert_array_equal(host[0], np.arange(6.0).reshape(2, 3))
    assert host[1].dtype == np.bool_ and host[1].tolist() == [True, False]


class _ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor value back to Python (``_local_scalar_dense``: ``item``,
    ``bool``, ``float``; on CUDA each is a device-to-host copy and a sync) made by the
    engine's own code (model code is left out: it runs once, in the forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.ops.aten._local_scalar_dense.default:
            frame = sys._getframe(1)
            while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
                frame = frame.f_back  # torch's own frames: the caller is the first other one
            if frame is not None and frame.f_code.co_filename.startswith(ENGINE):
                self.count += 1
        return func(*args, **(kwargs or {}))


def test_batched_path_reads_nothing_back_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CUDA profiler test checks on a GPU, checked on CPU: with the eager
    operations CUDA runs (no numba), the batched path reads values back once per chunk
    of layers, not per layer; the per-layer path reads several per layer."""
    monkeypatch.setenv("GLAM_FUSED_KERNELS", "0")
    # one thread for both passes: the spy's dispatch mode is thread-local, and side by side
    # (2+ torch threads, as when this test runs alone) the global pass's reads go unseen
    monkeypatch.setenv("GLAM_SIDE_BY_SIDE", "0")
    monkeypatch.setattr(glam_mod, "KEY_CHUNK", 4)
    model, x = _model("rnan"), _x(1)
    n_part = sum(t.participating for t in model.taps)
    chunks = math.ceil(n_part / 4)
    counts = {}
    for mode in ("per-layer", "batched"):
        compute_glam(model, x, 8, 6, 8, per_layer=mode)  # warm (segment cache)
        with _ScalarReads() as spy:
            compute_glam(model, x, 8, 6, 8, per_layer=mode)
        counts[mode] = spy.count
    # batched: the output's finiteness, one check of the local keys, one per global chunk
    assert counts["batched"] <= 2 + chunks, counts
    assert counts["per-layer"] >= 2 * n_part > counts["batched"], counts


def test_compiled_mode_falls_back_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model("carn"), _x(2)
    batched = compute_glam(model, x, 8, 6, 8, per_layer="batched")
    bk.reset_compile_state()
    monkeypatch.setattr(bk, "compiler_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="torch.compile is not usable.*no C/C.. compiler"):
        got = compute_glam(model, x, 8, 6, 8, per_layer="compiled")
    _assert_same(batched, got, None)
    bk.reset_compile_state()


def test_compiled_mode_falls_back_when_compilation_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model("carn"), _x(2)
    batched = compute_glam(model, x, 8, 6, 8, per_layer="batched")

    def broken(fn, **_kw):  # noqa: ANN001, ANN202 - what inductor does without a toolchain
        def run(*_a):  # noqa: ANN002, ANN202
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return run

    bk.reset_compile_state()
    monkeypatch.setattr(bk, "compiler_available", lambda: True)
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="InvalidCxxCompiler"):
        got = compute_glam(model, x, 8, 6, 8, per_layer="compiled")
    _assert_same(batched, got, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not per call
        compute_glam(model, x, 8, 6, 8, per_layer="compiled")
    bk.reset_compile_state()


def test_unknown_per_layer_mode_is_a_user_error() -> None:
    with pytest.raises(AnalysisError, match="per-layer mode 'fast'.*auto, per-layer, batched"):
        compute_glam(_model("carn"), _x(), 8, 6, 8, per_layer="fast")  # type: ignore[arg-type]


def test_full_precision_turns_tf32_off_on_cuda_and_restores() -> None:
    """cuDNN's float32 convolutions default to TF32 (about 1e-3 from CPU): the engine runs
    with IEEE float32 on CUDA and restores the user's setting (flags exist without a GPU)."""
    conv = torch.backends.cudnn.conv
    mm = torch.backends.cuda.matmul
    before = (conv.fp32_precision, mm.fp32_precision)
    with full_precision(torch.device("cuda")):
        assert (conv.fp32_precision, mm.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, mm.fp32_precision) == before
    with full_precision(torch.device("cpu")):
        assert (conv.fp32_precision, mm.fp32_precision) == before


def test_gpu_summary_targets_and_pytest_counts(tmp_path: Path) -> None:
    from bench import gpu_summary

    rows = [{"arch": "rcan", "size": 64, "glam_seconds": 0.8, "glam_over_fb": 2.4,
             "lam_over_glam": 30.0}]  # fmt: skip
    got = {t["key"]: t["met"] for t in gpu_summary.targets(rows, on_gpu=True)}
    assert got == {"glam_seconds": True, "glam_over_fb": False, "lam_over_glam": True}
    assert all(t["met"] is None for t in gpu_summary.targets(rows, on_gpu=False))
    assert all(t["met"] is None for t in gpu_summary.targets([], on_gpu=True))
    xml = tmp_path / "p.xml"
    xml.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="t" name="a"/><testcase classname="t" name="b">'
        '<failure message="boom"/></testcase><testcase classname="t" name="c">'
        '<skipped message="needs CUDA"/></testcase></testsuite></testsuites>'
    )
    counts = gpu_summary.pytest_counts(xml)
    assert (counts["passed"], counts["failures"], counts["skipped"]) == (1, 1, 1)
    assert counts["skip_reasons"] == {"t::c": "needs CUDA"}
    assert counts["failed_tests"][0]["test"] == "t::b"


def test_bench_sizes_option() -> None:
    import argparse

    from bench.__main__ import _inline, _sizes

    assert _sizes("64,256") == [64, 256]
    for bad in ("64,x", "4", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _sizes(bad)
    # a failing worker becomes a row's error, not the end of the benchmark
    got = _inline("nosuch", ["--sizes", "12", "--preset", "small", "--device", "cpu"])
    assert set(got) == {"error"} and "nosuch" in got["error"]


def test_gpu_check_script_quick_on_cpu(tmp_path: Path) -> None:
    """``bash bench/gpu_check.sh --device cpu --quick``: every step runs (the GPU tests are
    collected and skip with their reason, the benchmark times a tiny model), the log, the
    step outputs and the summary land in $OUT, and no target is called met off a GPU."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, GPU_CHECK_PYTEST_S="120",
               GPU_CHECK_BENCH_S="120")  # fmt: skip
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("gpu_check.log", "env.json", "pytest.xml", "bench.json", "gpu_check.json"):
        assert (tmp_path / name).is_file(), name
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["ok"] and not doc["gpu_run"] and doc["device"] == "cpu"
    assert doc["exit_codes"] == {"pytest": 0, "bench": 0}
    tests = doc["pytest"]
    if not torch.cuda.is_available():
        assert tests["tests"] >= 6 and tests["skipped"] == tests["tests"]
        assert all("CUDA" in r for r in tests["skip_reasons"].values())
    (row,) = doc["bench_rows"]
    assert (row["arch"], row["size"], row["device"]) == ("rcan", 12, "cpu")
    assert row["glam_seconds"] > 0 and row["fb_seconds"] > 0 and row["lam_seconds"] > 0
    # the same pairs in process CPU time (the ratio issue 25's table prints beside the wall one)
    bench_row = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert bench_row["glam_over_fb_cpu"] > 0
    assert [t["met"] for t in doc["targets"]] == [None, None, None]
    assert "| rcan | 12 |" in doc["markdown"]
    log = (tmp_path / "gpu_check.log").read_text()
    assert "pytest -m gpu" in log and "not measured on a GPU" in log


def test_gpu_check_script_refuses_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "tpu"],
                          env=dict(os.environ, OUT=str(tmp_path)), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "tpu" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_engine_entry_points_run_in_full_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """GL-AM, LAM and the literal reference (``--verify``) enter :func:`full_precision` for
    their input's device (on CUDA that turns TF32 off; without it CUDA maps are ~1e-3 from
    CPU)."""
    import contextlib

    from glam.engine import device
    from glam.engine.lam import compute_lam
    from glam.engine.reference import reference_glam

    entered: list[str] = []

    @contextlib.contextmanager
    def spy(dev: torch.device):  # noqa: ANN202
        entered.append(dev.type)
        yield

    monkeypatch.setattr(device, "full_precision", spy)
    model, x = _model("carn"), _x()
    compute_glam(model, x, 8, 6, 8)
    compute_lam(model, x, 8, 6, 8, fold=2)
    reference_glam(model.graph, x, 8, 6, 8)
    assert entered == ["cpu", "cpu", "cpu"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GLAM_SLOW_TESTS") != "1",
                    reason="torch.compile takes 30-130 s here; run with GLAM_SLOW_TESTS=1")  # fmt: skip
def test_compiled_mode_on_cpu_matches_batched() -> None:
    """Where inductor works (a C compiler: this machine has gcc), ``compiled`` compiles the
    batched functions (no fallback warning) and gives the batched maps (measured: 1.2e-6)."""
    bk.reset_compile_state()
    model, x = _model("rcan"), _x(0)
    batched = compute_glam(model, x, 8, 6, 8, per_layer="batched")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = compute_glam(model, x, 8, 6, 8, per_layer="compiled")
    assert bk._COMPILE_STATE["failed"] is None and bk._COMPILE_STATE["cache"]
    _assert_same(batched, got, ULPS_BATCHED_MAPS, ULPS_BATCHED_LAYERS)
