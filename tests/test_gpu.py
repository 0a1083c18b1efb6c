"""Issue 19 on a GPU (``pytest -m gpu``; every test skips without CUDA): CUDA maps equal CPU
maps on the fixtures and the shared models, LAM batched equals batch 1, onnxruntime's CUDA
provider agrees with the import, the peak GPU memory is reported, and the batched engine
makes no device-to-host copy per layer (torch.profiler). ``bench/gpu_check.sh`` runs these
first on the device machine."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import glam
import glam.fixtures as fixtures
import glam.importers
import pytest
import torch
from glam.engine import glam as glam_mod
from glam.engine.glam import compute_glam
from glam.engine.lam import compute_lam
from glam.fixtures.architectures import ARCHITECTURES, build
from numerics import GLAM_MD_ULPS, assert_close, assert_error_within
from test_batched import ULPS_BATCHED_LAYERS, ULPS_BATCHED_MAPS, _assert_same, _ScalarReads

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a GPU)"),
]
# ../shared/models, or where GLAM_SHARED_MODELS points (the device machine gets no ../shared:
# bench/gpu_check.sh says how the models travel there through a link, never a copy)
SHARED = Path(
    os.environ.get("GLAM_SHARED_MODELS")
    or Path(__file__).resolve().parent.parent.parent / "shared" / "models"
)
# small shared models of each format (ONNX, TorchScript), x2 to x4
SHARED_MODELS = ("carn_m_x4.onnx", "fsrcnn_x2.onnx", "imdn_x4.ts.pt", "waifu2x_upconv7_anime_x2.onnx")
#: CPU against CUDA: GLAM.md's tolerance (1e-4 on maps in [0, 1], relative to the largest
#: magnitude elsewhere), not measured here (no GPU has run these tests yet).
ULPS_CUDA = GLAM_MD_ULPS
#: LAM at two batch sizes on CUDA (cuDNN picks other algorithms per batch size).
ULPS_LAM_BATCH = 84


@functools.cache
def _eager(arch: str) -> glam.importers.ImportedModel:
    return glam.importers.from_module(fixtures.load_eager(arch), input_range=1)


def _x(seed: int, h: int = 20, w: int = 18, c: int = 3) -> torch.Tensor:
    return torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(seed))


def _cpu_and_cuda(model: glam.importers.ImportedModel, x: torch.Tensor, **kw) -> tuple:  # noqa: ANN003
    cpu = glam.analyze(model, x, device="cpu", **kw)
    gpu = glam.analyze(model, x, device="cuda", **kw)
    model.to("cpu")
    return cpu, gpu


def _assert_maps_close(cpu: glam.Result, gpu: glam.Result, ulps: float = ULPS_CUDA) -> None:
    for k in cpu.local:
        assert_close(gpu.local[k], cpu.local[k], ulps=ulps, err_msg=f"local {k}")
        assert_close(gpu.global_[k], cpu.global_[k], ulps=ulps, err_msg=f"global {k}")
    assert_close(gpu.output, cpu.output, ulps=ulps, err_msg="output")


@pytest.mark.parametrize("per_layer", ["auto", "per-layer"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cuda_maps_equal_cpu_maps_on_fixtures(arch: str, per_layer: str) -> None:
    """Each path on CUDA (auto = batched) against the CPU default, within 1e-4."""
    cpu, gpu = _cpu_and_cuda(_eager(arch), _x(1), per_layer=per_layer)
    assert gpu.device.startswith("cuda")
    _assert_maps_close(cpu, gpu)
    for p, q in zip(cpu.layers, gpu.layers, strict=True):
        assert p.local_vanished == q.local_vanished and p.global_vanished == q.global_vanished
        if p.global_map is not None:
            assert_close(q.global_map, p.global_map, ulps=ULPS_CUDA, err_msg=f"{p.name} global")


@pytest.mark.parametrize("kind", ["legacy.onnx", "script.pt", "pt2"])
def test_cuda_maps_equal_cpu_maps_on_fixture_files(kind: str) -> None:
    """The committed fixture files (ONNX, TorchScript, torch.export) of RCAN."""
    if kind.endswith("onnx"):
        pytest.importorskip("onnx2torch", reason="ONNX import needs onnx2torch (carry its wheel)")
    model = glam.importers.load(fixtures.fixture_path("rcan", kind), input_range=1)
    cpu, gpu = _cpu_and_cuda(model, _x(2), lam=True, lam_fold=8)
    _assert_maps_close(cpu, gpu)
    assert_close(gpu.lam.map, cpu.lam.map, ulps=ULPS_CUDA, err_msg="LAM")


@pytest.mark.shared
@pytest.mark.parametrize("name", SHARED_MODELS)
def test_cuda_maps_equal_cpu_maps_on_shared_models(name: str) -> None:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not on this machine)")
    if name.endswith(".onnx"):
        pytest.importorskip("onnx2torch", reason="ONNX import needs onnx2torch (carry its wheel)")
    model = glam.importers.load(path)
    c = model.conventions
    h, w = c.fixed_size or (40, 40)
    cpu, gpu = _cpu_and_cuda(model, _x(4, h, w, c.in_channels))
    _assert_maps_close(cpu, gpu)


def test_lam_batched_on_cuda_equals_batch_one() -> None:
    model = _eager("rcan").to("cuda")
    x = _x(5).cuda()
    try:
        one = compute_lam(model, x, 10, 8, 12, fold=12, lam_batch=1)
        many = compute_lam(model, x, 10, 8, 12, fold=12, lam_batch=12)
    finally:
        model.to("cpu")
    assert many.batch == 12 and not many.warnings
    assert_close(many.map, one.map, ulps=ULPS_LAM_BATCH, err_msg="map")
    assert_close(many.attribution, one.attribution, ulps=ULPS_LAM_BATCH, err_msg="attribution")


def test_ort_cuda_provider_parity() -> None:
    """An ONNX import on a CUDA machine is checked against onnxruntime's CUDA provider."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx2torch", reason="ONNX import needs onnx2torch (carry its wheel)")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider: "
                    f"{ort.get_available_providers()} (install onnxruntime-gpu)")  # fmt: skip
    for arch in ("rcan", "carn"):
        model = glam.importers.load(fixtures.fixture_path(arch, "legacy.onnx"), input_range=1)
        assert "CUDAExecutionProvider" in model.parity.reference
        assert model.parity.passed, model.parity
        assert_error_within(model.parity.max_abs_error, ulps=ULPS_CUDA, label="CUDA parity")


def test_peak_gpu_memory_is_reported() -> None:
    model = _eager("rnan")
    cpu, gpu = _cpu_and_cuda(model, _x(6))
    assert cpu.peak_memory_bytes is None
    weights = sum(p.numel() * p.element_size() for p in model.graph.parameters())
    assert gpu.peak_memory_bytes is not None and gpu.peak_memory_bytes > weights
    assert gpu.peak_memory_bytes >= torch.cuda.memory_allocated()


def test_no_device_to_host_copy_inside_the_layer_loop() -> None:
    """Paper-size RCAN (hundreds of layers) on CUDA under torch.profiler: the batched path
    makes a bounded number of device-to-host copies (a few per chunk of 32 layers, for the
    finiteness check and the chunk's records), the per-layer path several per layer."""
    from torch.profiler import ProfilerActivity, profile

    model = glam.importers.from_module(build("rcan", "paper").eval(), input_range=1).to("cuda")
    x = torch.rand(1, 3, 16, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    n_part = sum(t.participating for t in model.taps)
    chunks = math.ceil(n_part / glam_mod.KEY_CHUNK)
    copies, reads = {}, {}
    try:
        for mode in ("batched", "per-layer"):
            compute_glam(model, x, 24, 24, 16, per_layer=mode, keep_layers=False)  # warm
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                compute_glam(model, x, 24, 24, 16, per_layer=mode, keep_layers=False)
            copies[mode] = sum(1 for e in prof.events() if "DtoH" in e.name or "Memcpy DtoH" in e.name)
            with _ScalarReads() as spy:
                compute_glam(model, x, 24, 24, 16, per_layer=mode, keep_layers=False)
            reads[mode] = spy.count
    finally:
        model.to("cpu")
    print(f"participating {n_part}, chunks {chunks}, DtoH copies {copies}, scalar reads {reads}")
    assert reads["batched"] <= 2 + chunks, reads
    assert copies["batched"] <= 8 + 4 * chunks, copies
    assert copies["per-layer"] > n_part > copies["batched"], copies


def test_compiled_path_on_cuda_matches_batched() -> None:
    """``per_layer="compiled"`` (torch.compile where it works, else eager with a warning)
    gives the batched path's maps."""
    model = _eager("san").to("cuda")
    x = _x(7).cuda()
    try:
        a = compute_glam(model, x, 10, 8, 12, per_layer="batched")
        b = compute_glam(model, x, 10, 8, 12, per_layer="compiled")
    finally:
        model.to("cpu")
    _assert_same(a, b, ULPS_BATCHED_MAPS, ULPS_BATCHED_LAYERS)


def test_verify_on_cuda_passes() -> None:
    """``--verify`` on CUDA: the literal reference runs in IEEE float32 as the engine does
    (with TF32 convolutions it would sit ~1e-3 away)."""
    model = _eager("rrdbnet")
    try:
        res = glam.analyze(model, _x(8), device="cuda", verify=True)
    finally:
        model.to("cpu")
    assert res.engine_parity is not None and res.engine_parity.passed, res.engine_parity
