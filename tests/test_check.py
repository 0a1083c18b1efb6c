"""``glam baseline`` / ``glam check``: the CI gate, through click's CliRunner and the API.

One small RGB x2 model (``TinySR`` of conftest) is exported as ONNX and TorchScript, plus
ONNX variants: float16 round-trip of the weights, noise on one conv, a zeroed channel and
an extra (identity) conv. One baseline archive (two runs: an HR image with its reference
and LAM, an LR image without) serves every test.
"""

from __future__ import annotations

import copy
import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_output import message_lines
from click.testing import CliRunner
from conftest import TinySR, export_onnx
from glam import importers
from glam.archive.hdf5 import open_archive
from glam.cli import cli
from glam.errors import UserInputError
from glam.gate.check import (
    CHECK_SCHEMA_VERSION,
    check_model,
    match_layers,
    pearson,
    top_k_overlap,
)
from glam.gate.tolerances import METRICS, build_tolerances, parse_tol_flag
from numerics import EPS64, assert_close, assert_error_within
from torch import nn

# every command still imports real model files; successful imports are memoised per module
pytestmark = pytest.mark.usefixtures("cached_model_load")


def glam(*args: object, code: int | None = 0):  # type: ignore[no-untyped-def]
    """Invoke ``glam ARGS`` and check the exit code (``None``: 0 or 1)."""
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    ok = res.exit_code in (0, 1) if code is None else res.exit_code == code
    assert ok, (res.exit_code, res.stdout, res.stderr)
    return res


def _error_line(res) -> str:  # type: ignore[no-untyped-def]
    # the phase log ("glam: ...") may precede the one error line
    lines = message_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


class WithExtraConv(nn.Module):
    """TinySR with an extra identity 1x1 conv after ``head``: same output, one more tap."""

    def __init__(self, base: TinySR) -> None:
        super().__init__()
        self.base = base
        self.extra = nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.extra.weight.copy_(torch.eye(8)[:, :, None, None])
            self.extra.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        f = torch.relu(self.extra(b.head(x)))
        g = torch.relu(b.body(f))
        w = torch.sigmoid(b.excite(torch.relu(b.squeeze(g.mean(dim=(2, 3), keepdim=True)))))
        return b.shuffle(b.tail(g * w + f))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model variants (ONNX unless said otherwise)."""
    d = tmp_path_factory.mktemp("check_models")
    torch.manual_seed(0)
    base = TinySR(3).eval()
    out = {"base": export_onnx(base, d / "base.onnx", 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(base, torch.rand(1, 3, 16, 12))
    ts.save(str(d / "base.pt"))
    out["torchscript"] = d / "base.pt"

    fp16 = copy.deepcopy(base)
    noisy = copy.deepcopy(base)
    zeroed = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in fp16.parameters():
            p.copy_(p.half().float())
        w = noisy.body.weight
        w.add_(0.2 * w.std() * torch.randn(w.shape, generator=gen))
        # zero the body channel that matters most for the output (random weights)
        x = torch.rand(1, 3, 20, 24, generator=gen)
        y = base(x)
        effect = []
        for c in range(base.body.out_channels):
            m = copy.deepcopy(base)
            m.body.weight[c].zero_()
            m.body.bias[c].zero_()
            effect.append(float((m(x) - y).abs().max()))
        c = int(np.argmax(effect))
        zeroed.body.weight[c].zero_()
        zeroed.body.bias[c].zero_()
    out["fp16"] = export_onnx(fp16, d / "fp16.onnx", 3)
    out["noisy"] = export_onnx(noisy, d / "noisy.onnx", 3)
    out["zeroed"] = export_onnx(zeroed, d / "zeroed.onnx", 3)
    out["extra"] = export_onnx(WithExtraConv(copy.deepcopy(base)).eval(), d / "extra.onnx", 3)
    return out


@pytest.fixture(scope="module")
def baseline(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
             images_dir: Path) -> Path:
    """``glam baseline`` of the base model: run ``hr`` (HR image, reference, LAM) and run
    ``lr`` (LR image, no reference)."""
    d = tmp_path_factory.mktemp("check_baseline")
    bl = d / "baseline.h5"
    glam("baseline", models["base"], images_dir / "a_hr.png", "--hr", "-o", bl, "--run", "hr",
         "--lam", "--lam-fold", "4", "--lam-batch", "4", "--roi", "8,6", "--window", "12")
    res = glam("baseline", models["base"], images_dir / "b.png", "-o", bl, "--run", "lr",
               "--json")
    assert json.loads(res.stdout.strip().splitlines()[0])["baseline"] is True
    return bl


def _check(model: Path, bl: Path, tmp: Path, *extra: object, code: int | None = 0):  # type: ignore[no-untyped-def]
    js, xml = tmp / "report.json", tmp / "report.xml"
    res = glam("check", model, "--baseline", bl, "--json", js, "--junit", xml, *extra, code=code)
    return res, json.loads(js.read_text()), ET.parse(xml).getroot()


# -------------------------------------------------------------------------- baseline


def test_baseline_archive(baseline: Path) -> None:
    with open_archive(baseline) as ar:
        assert ar.runs() == ["hr", "lr"]
        for name in ar.runs():
            rd = ar.run(name)
            assert rd.baseline and rd.attrs["store"] == "maps"
            assert ar.n_layers(name) == 5
        hr = ar.run("hr")
        assert hr.reference is not None and hr.lam is not None and hr.roi == (8, 6)
        assert ar.run("lr").reference is None


def test_baseline_refuses_existing_run(models: dict[str, Path], baseline: Path,
                                       images_dir: Path) -> None:
    # the same command again resumes (issue 23): the complete run is skipped
    res = glam("baseline", models["base"], images_dir / "b.png", "-o", baseline, "--run", "lr")
    assert "(already complete: skipped)" in res.stdout
    # another model, image or options under that name is refused, naming the difference
    line = _error_line(glam("baseline", models["base"], images_dir / "c.png", "-o", baseline,
                            "--run", "lr", code=2))
    assert "already exists" in line and "another image" in line
    line = _error_line(glam("baseline", models["base"], images_dir / "b.png", "-o", baseline,
                            "--run", "lr", "--window", "8", code=2))
    assert "already exists" in line and "window 16, not 8" in line


# ----------------------------------------------------------------------------- pass


def test_same_model_passes_with_reports(models: dict[str, Path], baseline: Path,
                                        tmp_path: Path) -> None:
    res, rep, junit = _check(models["base"], baseline, tmp_path)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("PASSED | ") and last.endswith("s")
    n = rep["summary"]["passed"]
    assert f"{n}/{n} checks" in last and rep["summary"]["failed"] == 0
    # the console table
    head = res.stdout.splitlines()[0].split()
    assert head == ["run", "check", "value", "tolerance", "pass", "min", "passing"]
    assert "output_max_abs" in res.stdout and "layer_local_pearson[body]" in res.stdout
    # the JSON report
    assert rep["schema_version"] == CHECK_SCHEMA_VERSION and rep["status"] == "PASSED"
    assert rep["model_sha256"] == importers.sha256_of(models["base"])
    assert rep["baseline_sha256"] == importers.sha256_of(baseline)
    assert rep["baseline_path"] == str(baseline) and rep["device"] == "cpu"
    assert rep["torch_version"] == torch.__version__ and rep["glam_version"]
    assert set(rep["summary"]) == {"passed", "failed", "skipped", "total"}
    names = {c["name"] for c in rep["checks"]}
    assert {"output_max_abs", "output_psnr", "local_sum_pearson", "global_sum_topk_overlap",
            "layer_local_pearson", "layer_global_pearson", "di_local_delta",
            "attributed_fraction_global_delta", "local_stable_sum_pearson"} <= names
    hr = {c["name"] for c in rep["checks"] if c["run"] == "hr"}
    lr = {c["name"] for c in rep["checks"] if c["run"] == "lr"}
    assert {"psnr_delta", "lam_pearson", "di_lam_delta"} <= hr - lr
    for c in rep["checks"]:
        assert set(c) >= {"run", "name", "value", "tolerance", "comparison", "passed",
                          "min_passing_tolerance"}
        assert c["comparison"] in (">=", "<=") and c["passed"] is True
    out = next(c for c in rep["checks"] if c["name"] == "output_max_abs")
    assert out["value"] == 0.0 and out["min_passing_tolerance"] == 0.0
    psnr = next(c for c in rep["checks"] if c["name"] == "output_psnr")
    assert psnr["value"] is None and psnr["value_text"] == "inf"  # identical outputs
    assert [r["layer_matching"] for r in rep["runs"]] == ["name", "name"]
    # the JUnit report: one testcase per run x check
    cases = junit.findall(".//testcase")
    assert len(cases) == len(rep["checks"]) == rep["summary"]["total"]
    assert [s.get("name") for s in junit.findall("testsuite")] == ["glam check hr",
                                                                   "glam check lr"]
    per_run = {r: sum(c["run"] == r for c in rep["checks"]) for r in ("hr", "lr")}
    for suite, run in zip(junit.findall("testsuite"), ("hr", "lr"), strict=True):
        assert int(suite.get("tests")) == len(suite.findall("testcase")) == per_run[run]
    assert junit.get("failures") == "0" and not junit.findall(".//failure")


def test_report_is_deterministic(models: dict[str, Path], baseline: Path) -> None:
    a = check_model(models["base"], baseline, device="cpu").to_dict()
    b = check_model(models["base"], baseline, device="cpu").to_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_torchscript_export_of_same_weights_passes(models: dict[str, Path], baseline: Path,
                                                   tmp_path: Path) -> None:
    res, rep, _ = _check(models["torchscript"], baseline, tmp_path)
    assert rep["status"] == "PASSED" and rep["model"]["format"] == "torchscript"
    assert all(r["matched_layers"] == 3 for r in rep["runs"])
    out = next(c for c in rep["checks"] if c["name"] == "output_max_abs")
    # the same weights through TorchScript: float32 rounding of outputs in [0, 1]; measured
    # 0 (the same operators), the floor of 8 (tests/numerics.py)
    assert_error_within(out["value"], ulps=8, label="output_max_abs")


# ----------------------------------------------------------------------------- fail


@pytest.mark.parametrize("variant", ["noisy", "zeroed"])
def test_perturbed_layer_fails(models: dict[str, Path], baseline: Path, tmp_path: Path,
                               variant: str) -> None:
    res, rep, junit = _check(models[variant], baseline, tmp_path, code=1)
    assert rep["status"] == "FAILED" and rep["summary"]["failed"] > 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("FAILED | ")
    assert "output_max_abs" in rep["failed_metrics"]  # the report names what moved
    assert all(m in last for m in rep["failed_metrics"])
    failed = [c for c in rep["checks"] if c["passed"] is False]
    for c in failed:
        assert c["min_passing_tolerance"] is not None
        worse = c["value"] > c["tolerance"] if c["comparison"] == "<=" else c["value"] < c["tolerance"]
        assert worse
    assert "FAIL" in res.stdout
    msgs = [f.get("message") for f in junit.findall(".//failure")]
    assert len(msgs) == len(failed) and all("value" in m and "tolerance" in m for m in msgs)
    # --exit-zero collects the reports without failing the job
    glam("check", models[variant], "--baseline", baseline, "--exit-zero", "--failures-only")


def test_fp16_round_trip_passes_then_fails_when_tightened(
    models: dict[str, Path], baseline: Path, tmp_path: Path
) -> None:
    _, rep, _ = _check(models["fp16"], baseline, tmp_path)
    assert rep["status"] == "PASSED"
    out = next(c for c in rep["checks"] if c["name"] == "output_max_abs" and c["run"] == "hr")
    v = out["value"]
    assert 0 < v < METRICS["output_max_abs"].default / 5
    assert out["min_passing_tolerance"] == v
    # tightened below the measured value on the command line ...
    res, rep2, _ = _check(models["fp16"], baseline, tmp_path, "--tol",
                          f"output_max_abs={v / 2:.3e}", code=1)
    assert rep2["failed_metrics"] == ["output_max_abs"]
    assert "output_max_abs" in res.stderr.splitlines()[-1]
    # ... or for one run only, in a TOML file, which wins over the flag for that run
    toml = tmp_path / "tol.toml"
    toml.write_text(f'top_k_percent = 5\n[runs."lr"]\noutput_max_abs = {v / 100:.3e}\n')
    _, rep3, _ = _check(models["fp16"], baseline, tmp_path, "--tolerances", toml, code=1)
    assert {c["run"] for c in rep3["checks"] if c["passed"] is False} == {"lr"}
    assert rep3["top_k_percent"] == 5
    # a JSON file loosening it again, and a disabled check
    js = tmp_path / "tol.json"
    js.write_text(json.dumps({"output_max_abs": 1.0, "output_psnr": "off"}))
    _, rep4, _ = _check(models["fp16"], baseline, tmp_path, "--tolerances", js)
    skipped = [c for c in rep4["checks"] if c["name"] == "output_psnr"]
    assert skipped and all(c["passed"] is None for c in skipped)


def test_extra_layer_is_reported_not_failed(models: dict[str, Path], baseline: Path,
                                            tmp_path: Path) -> None:
    # A wrapper prefixes every name ("base.head") and adds a tap ("extra"). The output is the
    # same; the stored Sum maps may move (one more key enters them), the per-layer checks
    # and the Sums rebuilt from the matched layers do not.
    res, rep, junit = _check(models["extra"], baseline, tmp_path, "--runs", "h*", code=None)
    assert [r["run"] for r in rep["runs"]] == ["hr"]
    assert rep["runs"][0]["unmatched_model_layers"] == ["extra"]
    assert rep["runs"][0]["matched_layers"] == 3
    extra = [c for c in rep["checks"] if c.get("layer") == "extra"]
    assert extra and all(c["passed"] is None and "not in the baseline" in c["message"]
                         for c in extra)
    by_name = {c["name"]: c for c in rep["checks"] if "layer" not in c}
    for name in ("output_max_abs", "output_psnr", "local_stable_sum_pearson",
                 "global_stable_sum_pearson", "global_stable_sum_topk_overlap", "psnr_delta"):
        assert by_name[name]["passed"] is True, name
    matched = [c for c in rep["checks"] if c.get("layer") not in (None, "extra")]
    assert {c["layer"] for c in matched} == {"head~base.head", "body~base.body",
                                              "tail~base.tail"}
    assert all(c["passed"] for c in matched)
    assert set(rep["failed_metrics"]) <= {"global_sum_pearson", "global_sum_topk_overlap",
                                          "di_global_delta", "attributed_fraction_global_delta"}
    assert "note: hr: model layer(s) not in the baseline (skipped): extra" in res.stdout
    assert len(junit.findall(".//skipped")) == rep["summary"]["skipped"] >= 2


# ---------------------------------------------------------------------- usage errors


def test_missing_or_corrupt_baseline_exit_2(models: dict[str, Path], tmp_path: Path,
                                            tiny_model: Path, lr_image: Path) -> None:
    line = _error_line(glam("check", models["base"], "--baseline", tmp_path / "nope.h5",
                            code=2))
    assert "does not exist" in line
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"\x89HDF garbage, not an archive" * 10)
    assert "not an HDF5 file" in _error_line(glam("check", models["base"], "--baseline", bad,
                                                  code=2))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    assert "not a glam archive" in _error_line(glam("check", models["base"], "--baseline",
                                                    other, code=2))
    plain = tmp_path / "plain.h5"
    glam("analyze", tiny_model, lr_image, "-o", plain)
    line = _error_line(glam("check", models["base"], "--baseline", plain, code=2))
    assert "no runs marked as baseline" in line
    # a damaged baseline run (its input dataset deleted)
    with h5py.File(plain, "r+") as f:
        del f["runs/tiny_x2__b/input"]
    line = _error_line(glam("check", models["base"], "--baseline", plain, "--runs",
                            "tiny_x2__b", code=2))
    assert "damaged" in line


def test_bad_arguments_exit_2(models: dict[str, Path], baseline: Path, tmp_path: Path) -> None:
    m, b = models["base"], baseline
    assert "unknown check metric 'nope'" in _error_line(
        glam("check", m, "--baseline", b, "--tol", "nope=1", code=2))
    assert "not a number" in _error_line(
        glam("check", m, "--baseline", b, "--tol", "output_max_abs=abc", code=2))
    assert "METRIC=VALUE" in _error_line(glam("check", m, "--baseline", b, "--tol", "x", code=2))
    assert "available runs" in _error_line(
        glam("check", m, "--baseline", b, "--runs", "zzz", code=2))
    assert "matches no run" in _error_line(
        glam("check", m, "--baseline", b, "--runs", "zz*", code=2))
    bad = tmp_path / "bad.toml"
    bad.write_text("output_max_abs = [\n")
    assert "not valid TOML" in _error_line(
        glam("check", m, "--baseline", b, "--tolerances", bad, code=2))
    assert "does not exist" in _error_line(
        glam("check", tmp_path / "nope.onnx", "--baseline", b, code=2))
    glam("check", m, code=2)  # click usage error: --baseline missing


def test_other_input_convention_or_broken_model(baseline: Path, tiny_y_model: Path,
                                                models_dir: Path) -> None:
    line = _error_line(glam("check", tiny_y_model, "--baseline", baseline, code=2))
    assert "1 channel(s)" in line and "3 channel(s)" in line
    line = _error_line(glam("check", models_dir / "unsupported.onnx", "--baseline", baseline,
                            code=3))
    assert "FancyActivation" in line
    glam("check", models_dir / "broken.onnx", "--baseline", baseline, code=2)


# ------------------------------------------------------------------------ the pieces


def test_comparisons() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((20, 30))
    for b, want in ((a, 1.0), (2 * a + 1, 1.0), (-a, -1.0)):  # float64: measured 0
        assert_close([pearson(a, b)], [want], ulps=8, eps=EPS64, err_msg="pearson")
    assert pearson(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert pearson(np.zeros((4, 4)), a[:4, :4]) == 0.0
    assert top_k_overlap(a, a, 10) == 1.0
    b = a.copy()
    top = np.argsort(-a.ravel())[:60]
    b.ravel()[top[:30]] = 0  # half of the top 10 % (60 pixels) removed
    assert top_k_overlap(a, b, 10) == 30 / 60
    assert top_k_overlap(np.zeros((5, 5)), np.zeros((5, 5))) == 1.0
    pairs, ub, um, how = match_layers(["a", "b", "c"], ["a", "c", "d"])
    assert pairs == [(0, 0), (2, 1)] and ub == [1] and um == [2] and how == "name"
    assert match_layers(["a", "b"], ["x", "y"])[3] == "order"
    pairs, ub, um, how = match_layers(["head", "body"], ["model.head", "model/body", "x"])
    assert pairs == [(0, 0), (1, 1)] and um == [2] and how == "name"


def test_tolerances() -> None:
    assert parse_tol_flag("fp16*:local_sum_pearson=0.9") == ("fp16*", "local_sum_pearson", 0.9)
    assert parse_tol_flag("psnr_delta=off") == (None, "psnr_delta", None)
    tol = build_tolerances(flags=["output_max_abs=2e-3", "r*:output_max_abs=5e-3"],
                           top_k_percent=20)
    assert tol.for_run("x")["output_max_abs"] == 2e-3
    assert tol.for_run("run1")["output_max_abs"] == 5e-3
    assert tol.for_run("x")["local_sum_pearson"] == METRICS["local_sum_pearson"].default
    assert tol.top_k_percent == 20
    with pytest.raises(UserInputError, match="top-k"):
        build_tolerances(top_k_percent=0)
    for name, spec in METRICS.items():
        assert spec.comparison in (">=", "<=") and spec.description, name


# ------------------------------------------------------------ committed fixture models


def test_fixture_exports_of_same_weights_pass(tmp_path: Path, lr_image: Path) -> None:
    """The committed small RCAN: its TorchScript trace passes the legacy-ONNX baseline."""
    fixtures = pytest.importorskip("glam.fixtures")
    onnx_path = fixtures.fixture_path("rcan", "legacy.onnx")
    trace = fixtures.fixture_path("rcan", "trace.pt")
    if not (onnx_path.is_file() and trace.is_file()):
        pytest.skip("fixtures/models/ is not built")
    bl = tmp_path / "rcan.h5"
    glam("baseline", onnx_path, lr_image, "-o", bl, "--run", "rcan")
    res, rep, junit = _check(trace, bl, tmp_path)
    assert rep["status"] == "PASSED" and rep["runs"][0]["layer_matching"] == "name"
    assert rep["runs"][0]["unmatched_model_layers"] == []
    assert len(junit.findall(".//testcase")) == rep["summary"]["total"]
