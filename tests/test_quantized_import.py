"""Quantized versions of the committed fixtures, built here with onnxruntime's quantizer
(QDQ and QOperator, static and dynamic, per-tensor and per-channel, uint8 and int8
activations; ``tests/quantized_models.py``), import with parity in quantization steps, tap
every quantized convolution under the float model's layer name, analyse, and show it in
``glam inspect``; ``glam check`` gates them against a float baseline (docs/quantized.md,
docs/ci.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import glam
import glam.importers
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from glam.cli import cli
from glam.errors import ModelError
from quantized_models import VARIANTS, break_scale, fixture_images, quantize

FIXTURES = ("carn", "rcan", "rrdbnet", "rnan", "san")
#: run by default: every variant of CARN, QOperator of every fixture, RCAN dynamic and RNAN
#: QDQ (its branches reordered by the quantizer); the rest with ``-m slow`` or
#: ``GLAM_SLOW_TESTS=1`` (each case quantizes and imports a model)
DEFAULT_CASES = {("carn", v) for v in VARIANTS} | {(n, "qop_pc") for n in FIXTURES} | {
    ("rcan", "dyn"), ("rnan", "qdq_pc")}
SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MODELS = sorted(p for p in (SHARED / "models").glob("*.onnx")
                       if not p.name.startswith("waifu2x")) if (SHARED / "models").is_dir() else []


def _require_sweep(request: pytest.FixtureRequest) -> None:
    if not ("slow" in (request.config.getoption("-m") or "")
            or os.environ.get("GLAM_SLOW_TESTS") == "1"):
        pytest.skip("broad quantized sweep; run with -m slow or GLAM_SLOW_TESTS=1")
#: the format glam must report for each variant
FORMAT = {"qdq_pc": "QDQ", "qop_pc": "QOperator", "qop_pt": "QOperator", "qdq_s8": "QDQ",
          "dyn": "dynamic"}


def _fixture(name: str) -> Path:
    fixtures = pytest.importorskip("glam.fixtures")
    path = fixtures.fixture_path(name, "legacy.onnx")
    if not Path(path).is_file():
        pytest.skip("fixtures/models/ is not built")
    return Path(path)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``get(name, variant) -> Path``: quantized fixtures, built once per module."""
    folder = tmp_path_factory.mktemp("quantized")
    images = fixture_images()
    built: dict[tuple[str, str], Path] = {}

    def get(name: str, variant: str) -> Path:
        if (name, variant) not in built:
            built[(name, variant)] = quantize(_fixture(name), folder / f"{name}.{variant}.onnx",
                                              variant, images)
        return built[(name, variant)]

    return get


@pytest.fixture(scope="module")
def float_models():  # type: ignore[no-untyped-def]
    cache: dict[str, glam.importers.ImportedModel] = {}

    def get(name: str) -> glam.importers.ImportedModel:
        if name not in cache:
            cache[name] = glam.importers.load(_fixture(name))
        return cache[name]

    return get


@pytest.mark.parametrize(("name", "variant"), [
    pytest.param(n, v, marks=() if (n, v) in DEFAULT_CASES else pytest.mark.slow)
    for n in FIXTURES for v in VARIANTS])
def test_quantized_fixture_imports_with_parity_in_steps(
    name: str, variant: str, quantized, float_models, request  # type: ignore[no-untyped-def]
) -> None:
    if (name, variant) not in DEFAULT_CASES:
        _require_sweep(request)
    ref = float_models(name)
    m = glam.importers.load(quantized(name, variant))
    quant = m.metadata["quantization"]
    assert FORMAT[variant] in quant["formats"]
    assert quant["per_channel"] is (variant in ("qdq_pc", "qop_pc", "qdq_s8"))
    assert quant["activation_types"] == (["int8"] if variant == "qdq_s8" else ["uint8"])
    steps = m.parity.steps
    assert m.parity.passed and steps is not None and steps["passed"]
    if steps["rule"] == "output":
        assert steps["within_one"] >= 0.999
    else:  # one tie spread over the output (measured: RRDBNet per-tensor, 99.8 % within 1)
        assert steps["rule"] == "nodes" and steps["nodes"]["max_codes"] <= 1
        assert steps["within_one"] >= 0.99
    # the same layers under the float model's names, with the same shapes; onnxruntime's
    # quantizer may reorder independent branches (RNAN's trunk and mask branches)
    assert sorted(t.name for t in m.taps) == sorted(t.name for t in ref.taps)
    ref_shape = {t.name: t.shape for t in ref.taps}
    assert all(t.shape == ref_shape[t.name] for t in m.taps)
    if name not in ("rnan",):
        assert [t.name for t in m.taps] == [t.name for t in ref.taps]
    quantized_convs = [t for t in m.taps if t.op == "GlamQuantizedConv2d"]
    float_convs = [t for t in m.taps if t.op != "GlamQuantizedConv2d"]
    # onnxruntime's quantizer leaves only ConvTranspose (RNAN's upsampler) in float
    assert all(t.op == "ConvTranspose2d" for t in float_convs)
    assert len(quantized_convs) >= len(m.taps) - 1
    assert m.conventions.scale == ref.conventions.scale
    assert m.conventions.in_channels == ref.conventions.in_channels


@pytest.mark.parametrize("name", ["carn", "rcan"])
def test_qdq_and_qoperator_compute_the_same_graph(name: str, quantized) -> None:  # type: ignore[no-untyped-def]
    """Both formats of one calibration hold the same scales and zero points; glam computes
    them the same way, so output and every tap agree bit for bit."""
    a = glam.importers.load(quantized(name, "qdq_pc"))
    b = glam.importers.load(quantized(name, "qop_pc"))
    x = torch.rand(1, 3, 20, 18, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, ta = a(x)
        yb, tb = b(x)
    assert torch.equal(ya, yb)
    assert len(ta) == len(tb) and all(torch.equal(u, v) for u, v in zip(ta, tb, strict=True))


def test_quantized_model_analyses_like_the_engine_reference(quantized) -> None:  # type: ignore[no-untyped-def]
    """GL-AM through the straight-through gradient: the engine matches the literal GLAM.md
    reference (engine parity) and every participating layer gets a map."""
    m = glam.load(quantized("rcan", "qop_pc"))
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    res = glam.analyze(m, x, verify=True)
    ep = res.engine_parity
    assert ep is not None and ep.passed
    assert np.isfinite(np.asarray(res.local["sum"])).all()
    assert float(np.max(np.asarray(res.local["sum"]))) == pytest.approx(1.0)


def test_inspect_states_the_quantization_and_the_steps(quantized) -> None:  # type: ignore[no-untyped-def]
    path = quantized("carn", "qop_pc")
    res = CliRunner().invoke(cli, ["inspect", str(path)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    quant = next(line for line in lines if line.startswith("quantized"))
    assert "QOperator (activations uint8, weights int8, per-channel)" in quant
    assert "QLinearConv x19" in quant and "com.microsoft.QLinearConcat x6" in quant
    sim = next(line for line in lines if line.startswith("simulated"))
    assert "round half to even" in sim and "straight-through" in sim and "saturates" in sim
    parity = next(line for line in lines if line.startswith("parity"))
    assert "passed in output quantization steps" in parity and "within 1 step" in parity
    assert "GlamQuantizedConv2d" in res.stdout
    res = CliRunner().invoke(cli, ["inspect", str(path), "--json"], catch_exceptions=False)
    s = json.loads(res.stdout)
    assert s["metadata"]["quantization"]["formats"] == ["QOperator"]
    assert s["metadata"]["quantization"]["ops"]["QLinearConv"] == 19
    steps = s["parity"]["steps"]
    assert steps["passed"] and steps["unit"] == "output DequantizeLinear"
    assert steps["min_share"] == 0.999 and steps["elements"] > 0


def test_a_broken_scale_is_faithfully_imported(quantized, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A deployment with one weight scale doubled is what onnxruntime runs: the import is
    faithful (parity passes); the gate is what catches it (test_quantized_check)."""
    broken = tmp_path / "broken.onnx"
    layer = break_scale(quantized("rcan", "qop_pc"), broken)
    m = glam.importers.load(broken)
    assert m.parity.passed and layer
    honest = glam.importers.load(quantized("rcan", "qop_pc"))
    x = torch.rand(1, 3, 20, 18, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.equal(m(x)[0], honest(x)[0])


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("variant", ["qdq_pc", "qop_pc", "dyn"])
@pytest.mark.parametrize("path", SHARED_MODELS, ids=[p.stem for p in SHARED_MODELS])
def test_shared_models_quantized_import_with_parity_in_steps(
    path: Path, variant: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The third-party models of ../shared, quantized as a user would, import with parity
    in steps (docs/quantized.md has the measured table)."""
    _require_sweep(request)
    import onnx
    from quantized_models import input_spec

    model = onnx.load(str(path))
    _, shape = input_spec(model, (48, 48))
    size = (shape[2], shape[3]) if shape[1] in (1, 3) else (shape[1], shape[2])
    try:
        q = quantize(path, tmp_path / f"{path.stem}.{variant}.onnx", variant,
                     fixture_images(size=max(64, *size)), size)
    except Exception as exc:  # noqa: BLE001 - the quantizer itself refuses some files
        pytest.skip(f"onnxruntime's quantizer fails on {path.name}: {exc}")
    try:
        m = glam.importers.load(q)
    except ModelError as exc:
        if "onnxruntime cannot load" not in str(exc):
            raise
        pytest.skip(f"onnxruntime refuses its own quantizer's output: {exc}")
    assert m.parity.passed and m.parity.steps is not None and m.parity.steps["passed"]


# ------------------------------------------------------------------------------ the gate
@pytest.fixture(scope="module")
def float_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float baseline of RCAN-small on one HR crop of the committed image (LR 24x24)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("gate")
    crop = fixture_images(1, size=48)[0]
    image = folder / "crop.png"
    Image.fromarray((crop * 255).round().astype(np.uint8)).save(image)
    archive = folder / "float.h5"
    res = CliRunner().invoke(cli, ["baseline", str(_fixture("rcan")), str(image), "--hr",
                                   "-o", str(archive)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return archive


def _check(model: Path, baseline: Path, *extra: str, report: Path | None = None):  # type: ignore[no-untyped-def]
    args = ["check", str(model), "--baseline", str(baseline), *extra]
    if report is not None:
        args += ["--json", str(report)]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize("variant", ["qop_pc", "qdq_s8", "dyn"])
def test_honest_int8_passes_with_the_quantized_defaults(
    variant: str, quantized, float_baseline: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    report = tmp_path / "report.json"
    res = _check(quantized("rcan", variant), float_baseline, report=report)
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "note: quantized defaults (the candidate is a quantized" in res.stdout
    data = json.loads(report.read_text())
    assert data["tolerances"]["defaults"] == "quantized"
    assert data["status"] == "PASSED"


def test_float_defaults_would_fail_an_honest_int8_model(quantized, float_baseline: Path) -> None:  # type: ignore[no-untyped-def]
    """Why the quantized defaults exist: int8 moves the output and maps beyond the float
    defaults (a float16 round-trip's)."""
    res = _check(quantized("rcan", "qop_pc"), float_baseline, "--defaults", "float")
    assert res.exit_code == 1
    assert "note: quantized defaults" not in res.stdout


@pytest.mark.parametrize("variant", ["qop_pc", "qdq_pc"])
def test_a_wrong_scale_on_one_layer_fails_the_check(
    variant: str, quantized, float_baseline: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    broken = tmp_path / "broken.onnx"
    break_scale(quantized("rcan", variant), broken)
    report = tmp_path / "report.json"
    res = _check(broken, float_baseline, report=report)
    assert res.exit_code == 1, res.stdout
    data = json.loads(report.read_text())
    assert data["status"] == "FAILED" and data["tolerances"]["defaults"] == "quantized"


def test_explicit_tolerances_survive_the_quantized_defaults() -> None:
    from glam.gate.tolerances import METRICS, QUANTIZED_DEFAULTS, build_tolerances

    tol = build_tolerances(flags=["output_psnr=50", "rc*:psnr_delta=0.5"])
    q = tol.with_quantized_defaults("test")
    assert q.values["output_psnr"] == 50  # set by a flag: kept
    assert q.values["local_sum_pearson"] == QUANTIZED_DEFAULTS["local_sum_pearson"]
    assert q.for_run("rcan")["psnr_delta"] == 0.5  # per-run overrides still win
    assert q.defaults == "quantized" and q.sources[-1] == "quantized defaults (test)"
    assert tol.values["local_sum_pearson"] == METRICS["local_sum_pearson"].default
    assert set(QUANTIZED_DEFAULTS) <= set(METRICS)
    for name, value in QUANTIZED_DEFAULTS.items():  # looser than the float default, or off
        spec = METRICS[name]
        if value is None:
            assert q.values[name] is None and q.for_run("x")[name] is None
            continue
        assert value <= spec.default if spec.comparison == ">=" else value >= spec.default


def test_parity_in_steps_is_archived_with_the_run(quantized, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from glam.archive.hdf5 import open_archive
    from PIL import Image

    image = tmp_path / "lr.png"
    Image.fromarray((fixture_images(1, size=24)[0] * 255).round().astype(np.uint8)).save(image)
    archive = tmp_path / "run.h5"
    res = CliRunner().invoke(cli, ["analyze", str(quantized("carn", "dyn")), str(image),
                                   "-o", str(archive), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    with open_archive(archive) as ar:
        run = ar.run(ar.runs()[0])
    steps = run.provenance["parity"]["steps"]
    assert steps["passed"] is True and steps["rule"] == "output"
    assert steps["unit"] == "8-bit range of the reference output" and steps["within_one"] == 1.0
    meta = json.loads(run.provenance["model_metadata"])
    assert meta["quantization"]["formats"] == ["dynamic"]
    # the same rule on the analysed input (run parity), archived beside it
    run_steps = run.provenance["run_parity"]["steps"]
    assert run_steps["passed"] is True and run_steps["elements"] == 3 * 48 * 48
    assert run.provenance["run_parity"]["input_shape"] == [1, 3, 24, 24]
