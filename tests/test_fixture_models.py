"""Tests of the committed fixture models (``fixtures/``): architectures, weights, exports.

The five architectures of the GL-AM paper (Gu & Dong): CARN (Ahn et al., 2018), RRDBNet
(Wang et al., 2018), RCAN (Zhang et al., 2018), RNAN (Zhang et al., 2019) and SAN (Dai et al.,
2019); small x2 configs trained and exported by ``python -m glam.fixtures.make_fixtures``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import glam.fixtures as fixtures
import pytest
import torch
from glam.fixtures import (
    ARCHITECTURES,
    DEFAULT_IMAGE,
    DEFAULT_MODEL,
    FIXTURE_KINDS,
    MODELS_DIR,
    fixture_path,
    load_eager,
)
from glam.fixtures import architectures as A
from numerics import assert_close
from torch import nn

ort = pytest.importorskip("onnxruntime")

# torch.jit.* is deprecated in favour of torch.export; the fixtures still cover it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

#: onnxruntime (or a torch.jit / torch.export load) against the eager module: other kernels
#: for the same operators, float32 epsilons of the output's largest magnitude: measured
#: 4.19 (rrdbnet legacy.onnx), 0 for the TorchScript and torch.export loads; x4, rounded up.
ULPS_EXPORT = 32
#: Plausible parameter ranges of the paper-size (x4) configs.  CARN: 1.11M for one x4
#: upsampler; the paper's 1.59M counts its multi-scale model with x2, x3 and x4 upsamplers.
PAPER_PARAMS = {
    "carn": (1.0e6, 1.7e6),
    "rrdbnet": (16.5e6, 16.9e6),  # ESRGAN generator: 16.7M
    "rcan": (15.4e6, 15.8e6),  # 10 groups x 20 RCABs x 64 ch: 15.6M
    "rnan": (7.0e6, 10.0e6),  # 10 groups x 64 ch: 9.26M here
    "san": (15.5e6, 16.2e6),  # 20 LSRAGs x 10 blocks x 64 ch: 15.9M here
}


def _seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((MODELS_DIR / "MANIFEST.json").read_text())


@pytest.fixture(scope="module", params=ARCHITECTURES)
def eager(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    return request.param, load_eager(request.param)


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------


def test_architecture_lists_agree() -> None:
    assert A.ARCHITECTURES == ARCHITECTURES


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_small_builds_and_upscales_x2(arch: str) -> None:
    torch.manual_seed(0)
    model = A.build(arch, "small").eval()
    assert 2_000 <= A.count_params(model) <= 35_000
    with torch.no_grad():
        assert model(_seeded(1, 3, 24, 20)).shape == (1, 3, 48, 40)
        assert model(_seeded(1, 3, 7, 9)).shape == (1, 3, 14, 18)  # odd sizes too


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_small_scale_override(arch: str) -> None:
    model = A.build(arch, "small", scale=4).eval()
    with torch.no_grad():
        assert model(_seeded(1, 3, 6, 5)).shape == (1, 3, 24, 20)


def test_build_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        A.build("edsr", "small")
    with pytest.raises(ValueError):
        A.build("rcan", "tiny")  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_paper_config_param_counts(arch: str) -> None:
    lo, hi = PAPER_PARAMS[arch]
    n = A.count_params(A.build(arch, "paper"))
    assert lo <= n <= hi, f"{arch}: {n} parameters"


def test_paper_carn_forward() -> None:
    model = A.build("carn", "paper").eval()
    with torch.no_grad():
        assert model(_seeded(1, 3, 16, 16)).shape == (1, 3, 64, 64)


def test_uses_inplace_relu_and_conv2d_only() -> None:
    model = A.build("rcan", "small")
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert convs and all(type(m) in (nn.Conv2d, A.MeanShift) for m in convs)
    rnan_types = {type(m) for m in A.build("rnan", "small").modules()}
    assert nn.ConvTranspose2d in rnan_types


def test_count_convs_counts_calls_not_modules() -> None:
    conv = nn.Conv2d(3, 3, 3, padding=1)
    reused = nn.Sequential(conv, nn.ReLU(), conv, nn.ConvTranspose2d(3, 3, 2, stride=2))
    assert A.count_convs(reused) == 3
    # SAN's region non-local block calls its shared 4-conv non-local block on 4 regions.
    region = A.RegionNonLocal(8, 2)
    assert A.count_convs(region, _seeded(1, 8, 6, 6)) == 16


def test_sqrtm_newton_schulz() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    a = (q @ torch.diag(torch.linspace(0.5, 1.0, 6, dtype=torch.float64)) @ q.T)[None]
    root = A.sqrtm_newton_schulz(a, iterations=10)
    # not float rounding: Newton-Schulz converges quadratically, 10 iterations leave an
    # iteration error far below 1e-6 on this spectrum (0.5-1.0); float64 rounding is ~1e-15
    torch.testing.assert_close(root @ root, a, rtol=1e-6, atol=1e-6)
    zero = A.sqrtm_newton_schulz(torch.zeros(1, 4, 4))
    assert torch.isfinite(zero).all()


def test_san_region_non_local_scripts_and_runs_on_odd_sizes() -> None:
    model = A.SAN(scale=2, channels=8, n_groups=1, n_blocks=1, reduction=4).eval()
    assert isinstance(model.non_local_in, A.RegionNonLocal)
    x = _seeded(1, 3, 9, 7)
    with torch.no_grad():
        ref = model(x)
        assert ref.shape == (1, 3, 18, 14)
        assert_close(torch.jit.script(model)(x), ref, ulps=ULPS_EXPORT, err_msg="scripted SAN")


# --------------------------------------------------------------------------------------------
# Committed fixtures
# --------------------------------------------------------------------------------------------


def test_helpers_and_defaults() -> None:
    assert DEFAULT_MODEL == fixture_path("rcan", "legacy.onnx")
    assert DEFAULT_MODEL.is_file()
    assert DEFAULT_IMAGE.is_file() and DEFAULT_IMAGE.name == "astronaut_hr.png"
    with pytest.raises(ValueError):
        fixture_path("rcan", "onnx")
    with pytest.raises(ValueError):
        fixture_path("edsr", "pth")


def test_package_import_is_light() -> None:
    code = (
        "import sys, fixtures; "
        "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'skimage') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    root = Path(fixtures.__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("kind", FIXTURE_KINDS)
def test_fixture_file_exists(arch: str, kind: str, manifest: dict) -> None:
    path = fixture_path(arch, kind)
    assert path.is_file() and path.stat().st_size > 0
    assert manifest["models"][arch]["files"][kind] == path.name


def test_manifest_model_beats_bicubic(manifest: dict) -> None:
    assert set(manifest["models"]) == set(ARCHITECTURES)
    for arch, entry in manifest["models"].items():
        assert entry["psnr_model"] > entry["psnr_bicubic"], arch
        assert entry["conv_calls"] > 0 and entry["params"] > 0


def test_committed_size_is_small() -> None:
    """The repository stays small: the trained fixtures under 4 MB, the spandrel
    architecture fixtures (fixtures/make_spandrel_fixtures.py: eight architectures as
    .pth, .safetensors and ONNX) under 6 MB with no file over 1 MB."""
    files = [p for p in MODELS_DIR.iterdir() if p.is_file()]
    core = [p for p in files if not p.name.startswith("spandrel_")]
    community = [p for p in files if p.name.startswith("spandrel_")]
    assert sum(p.stat().st_size for p in core) < 4_000_000
    assert sum(p.stat().st_size for p in community) < 6_000_000
    big = [p.name for p in community if p.stat().st_size > 1_000_000]
    assert not big, big


def test_trained_weights_load(eager: tuple[str, nn.Module], manifest: dict) -> None:
    arch, model = eager
    assert not model.training
    entry = manifest["models"][arch]
    assert A.count_params(model) == entry["params"]
    assert A.count_convs(model) == entry["conv_calls"]
    with torch.no_grad():
        out = model(_seeded(1, 3, 24, 20))
    assert out.shape == (1, 3, 48, 40) and torch.isfinite(out).all()


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["legacy.onnx", "dynamo.onnx"])
def test_onnx_matches_eager(eager: tuple[str, nn.Module], kind: str) -> None:
    arch, model = eager
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        str(fixture_path(arch, kind)), so, providers=["CPUExecutionProvider"]
    )
    name = sess.get_inputs()[0].name
    for shape in ((1, 3, 24, 20), (1, 3, 19, 23)):  # export size and another (dynamic H/W)
        x = _seeded(*shape, seed=7)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(None, {name: x.numpy()})[0]
        assert out.shape == ref.shape
        assert_close(out, ref, ulps=ULPS_EXPORT, err_msg=f"{arch} {kind}")


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["trace.pt", "script.pt"])
def test_torchscript_matches_eager(eager: tuple[str, nn.Module], kind: str) -> None:
    arch, model = eager
    loaded = torch.jit.load(str(fixture_path(arch, kind)))
    x = _seeded(1, 3, 19, 23, seed=7)
    with torch.no_grad():
        assert_close(loaded(x), model(x), ulps=ULPS_EXPORT, err_msg=f"{arch} {kind}")


@pytest.mark.numerics
def test_pt2_matches_eager(eager: tuple[str, nn.Module]) -> None:
    arch, model = eager
    program = torch.export.load(fixture_path(arch, "pt2"))
    x = _seeded(1, 3, 19, 23, seed=7)
    with torch.no_grad():
        assert_close(program.module()(x), model(x), ulps=ULPS_EXPORT, err_msg=f"{arch} pt2")
