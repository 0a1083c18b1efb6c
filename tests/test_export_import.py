"""torch.export import: ``.pt2`` programs through the full pipeline, taps vs eager hooks.

The test nets and the hook-based reference are shared with ``test_torchscript_import``.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import glam.importers
import pytest
import torch
from glam.errors import ModelFileError
from glam.importers.export.backend import load_exported
from numerics import assert_close, assert_error_within
from test_torchscript_import import (
    NETS,
    SECOND_SIZE,
    ULPS_ROUTE,
    assert_tap_is_pre_activation,
    assert_taps_match_eager_hooks,
    example,
    first,
    make_net,
)
from torch import nn
from torch.export import Dim


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small graphs run faster on one thread on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_exported(model: nn.Module, path: Path, dynamic: bool = True) -> Path:
    """``torch.export.export`` (dynamic H and W unless ``dynamic`` is false) and save."""
    shapes = {"x": {2: Dim.AUTO, 3: Dim.AUTO}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (example(),), dynamic_shapes=shapes)
        torch.export.save(ep, str(path))
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module", params=list(NETS))
def imported(
    request: pytest.FixtureRequest, export_dir: Path
) -> tuple[str, nn.Module, Path, glam.importers.ImportedModel]:
    """``(net name, eager model, .pt2 path, glam.importers.load result)``, imported once."""
    net = request.param
    model = make_net(net)
    path = save_exported(model, export_dir / f"{net}.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return net, model, path, glam.importers.load(path, input_range=1)


@pytest.mark.numerics
def test_parity(imported: tuple[str, nn.Module, Path, glam.importers.ImportedModel]) -> None:
    _, _, _, m = imported
    assert m.format == "export"
    assert m.parity.passed
    assert_error_within(m.parity.max_abs_error, ulps=ULPS_ROUTE, label="parity")
    assert m.parity.reference == "torch.export program"
    assert m.conventions.scale == 2
    assert m.conventions.fixed_size is None
    assert m.input_names == ["x"]


@pytest.mark.numerics
def test_shape_generic(imported: tuple[str, nn.Module, Path, glam.importers.ImportedModel]) -> None:
    _, _, path, m = imported
    x = example(*SECOND_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.load(str(path)).module()
    with torch.no_grad():
        y, _ = m.graph(x)
        ref = first(program(x.clone()))
    assert y.shape == ref.shape == (1, 3, 2 * SECOND_SIZE[0], 2 * SECOND_SIZE[1])
    assert_close(y, ref, ulps=ULPS_ROUTE, err_msg="second size")


@pytest.mark.numerics
def test_taps_match_eager_hooks(
    imported: tuple[str, nn.Module, Path, glam.importers.ImportedModel],
) -> None:
    """Tap count, names (module paths), values and gradients equal the hook reference."""
    _, model, _, m = imported
    assert_taps_match_eager_hooks(model, m)


@pytest.mark.parametrize("imported", ["edsr"], indirect=True)
def test_inplace_relu_tap_is_pre_activation(
    imported: tuple[str, nn.Module, Path, glam.importers.ImportedModel],
) -> None:
    """EDSR's ``ReLU(inplace=True)`` after conv1: the tap keeps the negative values."""
    _, model, _, m = imported
    x = example()
    assert_tap_is_pre_activation(model, m, x)


@pytest.mark.numerics
def test_raw_graph_contract(export_dir: Path) -> None:
    raw = load_exported(save_exported(make_net("ctrl"), export_dir / "ctrl_raw.pt2"))
    assert raw.format == "export"
    assert raw.input_names == ["x"]
    assert raw.output_names == ["output_0", "output_1"]
    assert raw.input_shape == (1, 3, None, None)
    assert raw.reference_name == "torch.export program"
    x = example(40, 36)
    before = x.clone()
    ref = raw.reference([x.numpy()])
    assert len(ref) == 2 and torch.equal(x, before)
    with torch.no_grad():
        outs = raw.gm(x.clone())
    assert_close(first(outs), ref[0], ulps=ULPS_ROUTE, err_msg="graph vs program")
    functional = [
        n.target
        for n in raw.gm.graph.nodes
        if n.op == "call_function" and getattr(n.target, "_schema", None) is not None
    ]
    assert not any(t._schema.is_mutable for t in functional)
    raw.gm.eval()  # ExportedProgram.module() forbids eval(); the backend lifts that


@pytest.mark.numerics
def test_static_shape_program(export_dir: Path) -> None:
    """A program exported without dynamic shapes is a fixed-size model; its shape guards
    raise ``RuntimeError`` (not ``AssertionError``) at other sizes."""
    path = save_exported(make_net("edsr"), export_dir / "static.pt2", dynamic=False)
    raw = load_exported(path)
    assert raw.input_shape == (1, 3, 20, 24)
    with pytest.raises(RuntimeError, match="shape constraints"):
        raw.gm(example(*SECOND_SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = glam.importers.load(path, input_range=1)
    assert m.conventions.fixed_size == (20, 24)
    assert m.conventions.scale == 2
    assert_error_within(m.parity.max_abs_error, ulps=ULPS_ROUTE, label="parity")


def test_corrupt_program_is_model_file_error(export_dir: Path, tmp_path: Path) -> None:
    path = save_exported(make_net("edsr"), export_dir / "src.pt2")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        glam.importers.load(truncated)
    garbage = tmp_path / "garbage.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(garbage, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename.endswith(".json") and "model" in info.filename:
                payload = b"{not json"
            dst.writestr(info, payload)
    with pytest.raises(ModelFileError):
        load_exported(garbage)
