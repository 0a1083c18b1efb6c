"""Hostile model files: nothing from a model file runs, nothing is extracted or read outside.

Each payload is generated in ``tmp_path`` by ``make_corpus.py``; whatever code it carries
would create its marker file. Every test asserts: the documented exit code, one
``error: ...`` line on stderr without a traceback, and no marker.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import make_corpus as mc
import pytest
from cli_output import message_lines
from click.testing import CliRunner
from glam import importers
from glam.cli import cli
from glam.errors import ModelFileError, UnsafeModelError

pytestmark = pytest.mark.skipif(not mc.PT2.exists(), reason="fixtures/models/ is not built")


def glam(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error_line(res) -> str:  # type: ignore[no-untyped-def]
    lines = message_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    return lines[0]


@pytest.mark.parametrize("name", sorted(mc.PAYLOADS))
def test_payload_never_runs_on_load(name: str, tmp_path: Path) -> None:
    make, fname = mc.PAYLOADS[name]
    marker = tmp_path / "MARKER"
    path = make(tmp_path / fname, marker)
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    with pytest.raises(UnsafeModelError) as err:
        importers.load(path)
    assert not marker.exists()
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)
    leaked = [n for n in set(os.listdir(tempfile.gettempdir())) - tmp_before
              if n.startswith("aotinductor")]
    assert not leaked


@pytest.fixture(scope="module")
def tiny_baseline(tiny_model: Path, lr_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bl = tmp_path_factory.mktemp("hostile-baseline") / "baseline.h5"
    res = glam("baseline", tiny_model, lr_image, "-o", bl, "--window", 8)
    assert res.exit_code == 0, res.stderr
    return bl


@pytest.mark.parametrize("command", ["inspect", "analyze", "baseline", "check", "demo"])
@pytest.mark.parametrize("name", ["pt2_legacy_weights", "pt2_sample_inputs",
                                  "pt2_opaque_constant", "pt2_sympy_eval", "ts_side_effect"])
def test_payload_never_runs_from_cli(command: str, name: str, tmp_path: Path, lr_image: Path,
                                     request: pytest.FixtureRequest) -> None:
    make, fname = mc.PAYLOADS[name]
    marker = tmp_path / "MARKER"
    model = make(tmp_path / fname, marker)
    args: list[object] = {
        "inspect": ["inspect", model],
        "analyze": ["analyze", model, lr_image, "-o", tmp_path / "a.h5"],
        "baseline": ["baseline", model, lr_image, "-o", tmp_path / "b.h5"],
        "check": ["check", model, "--baseline", "BASELINE"],
        "demo": ["demo", "--model", model, "--out", tmp_path / "demo"],
    }[command]
    if command == "check":
        args[-1] = request.getfixturevalue("tiny_baseline")
    res = glam(*args)
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    line = one_error_line(res)
    assert "--trust-model" in line or "pickle" in line or "symbolic" in line, line
    assert not marker.exists()


def test_setstate_never_runs_from_cli(tmp_path: Path, tiny_baseline: Path) -> None:
    """torch.jit.load runs TorchScript __setstate__ while loading: refused before that."""
    marker = tmp_path / "MARKER"
    model = mc.make_ts_setstate(tmp_path / "setstate.pt", marker)
    for args in (["inspect", model], ["check", model, "--baseline", tiny_baseline]):
        res = glam(*args)
        assert res.exit_code == 2, res.stderr
        assert "__setstate__" in one_error_line(res)
        assert not marker.exists()


def test_trust_model_is_an_explicit_opt_in(tmp_path: Path) -> None:
    """With --trust-model the side-effecting graph is accepted (and runs: the user said so)."""
    marker = tmp_path / "MARKER"
    model = mc.make_ts_side_effect(tmp_path / "side.pt", marker)
    res = glam("inspect", model)
    assert res.exit_code == 2 and "aten::from_file" in one_error_line(res)
    assert not marker.exists()
    res = glam("inspect", model, "--trust-model")
    assert res.exit_code == 0, res.stderr
    assert marker.exists()
    m = importers.load(model, trust_model=True)
    assert m.taps


def test_pickles_stay_refused_with_trust_model(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    model = mc.make_pt2_legacy_weights(tmp_path / "w.pt2", marker)
    with pytest.raises(UnsafeModelError, match="weights_only"):
        importers.load(model, trust_model=True)
    assert not marker.exists()


def test_onnx_external_data_outside_folder_is_not_read(tmp_path: Path) -> None:
    for i, target in enumerate(("/etc/hostname", "../../../../../../etc/hostname",
                                str(tmp_path / "secret.bin"))):
        if target.endswith("secret.bin"):
            Path(target).write_bytes(b"0123456789")
        model = mc.make_onnx_outside_data(tmp_path / f"m{i}", tmp_path / "MARKER", target)
        with pytest.raises(ModelFileError, match="outside the model folder") as err:
            importers.load(model)
        assert "bytes" not in str(err.value)
        res = glam("inspect", model)
        assert res.exit_code == 2
        assert "outside the model folder" in one_error_line(res)


def test_onnx_external_data_symlink_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    d = tmp_path / "model"
    model = mc.make_onnx_outside_data(d, tmp_path / "MARKER", "data.bin")
    (d / "data.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(ModelFileError, match="outside the model folder"):
        importers.load(model)


def test_torchscript_bad_crc_is_refused(tmp_path: Path) -> None:
    model = mc.make_ts_bad_crc(tmp_path / "crc.pt", tmp_path / "MARKER")
    with pytest.raises(ModelFileError, match="CRC"):
        importers.load(model)
    res = glam("inspect", model)
    assert res.exit_code == 2 and "fails its check" in one_error_line(res)


def test_pt2_load_failures_are_one_quiet_line(tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    """A broken .pt2 prints one line, not torch's logging traceback (capfd sees fd 2,
    where torch's log handlers write)."""
    prog = mc._pt2_json()
    prog["schema_version"] = {"major": 99, "minor": 0}
    nodes = mc._pt2_json()
    nodes["graph_module"]["graph"]["nodes"][3]["inputs"] = []
    broken = {
        "not_a_program": {"models/model.json": b'{"graph_module": 1}'},
        "schema_version": {"models/model.json": json.dumps(prog).encode()},
        "bad_node": {"models/model.json": json.dumps(nodes).encode()},
        "missing_weight": {"data/weights/weight_3": None},
        "garbled_json": {"models/model.json": b"{not json"},
    }
    for name, replace in broken.items():
        bad = mc.rewrite_zip(mc.PT2, tmp_path / f"{name}.pt2", replace=replace)
        capfd.readouterr()
        res = glam("inspect", bad)
        assert res.exit_code == 2, (name, res.stderr)
        one_error_line(res)
        err = capfd.readouterr().err
        assert "Traceback" not in err and "Ran into the following error" not in err, err


def test_clean_fixture_pt2_still_loads() -> None:
    m = importers.load(mc.PT2)
    assert m.format == "export" and m.parity.passed
