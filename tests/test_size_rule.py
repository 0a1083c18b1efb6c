"""The size rule found at import: a graph that runs only at multiples of ``m`` says so
(``metadata["input_multiple"]``, ``glam inspect``) and analysis refuses other sizes by name."""

from __future__ import annotations

import warnings
from pathlib import Path

import glam
import glam.importers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from glam.cli import cli
from glam.errors import AnalysisError
from PIL import Image
from torch import nn


class UnshuffleSR(nn.Module):
    """x2 SR through ``pixel_unshuffle(2)``: runs only at even input sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(12, 48, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(F.pixel_unshuffle(x, 2)), 4)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("size_rule") / "unshuffle.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(UnshuffleSR().eval(), (torch.rand(1, 3, 20, 24),)).save(str(path))
    return path


def _png(path: Path, h: int, w: int) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_import_finds_the_multiple_and_analysis_refuses_other_sizes(model_path: Path) -> None:
    m = glam.importers.load(model_path, input_range=1)
    assert m.metadata["input_multiple"] == 2 and m.conventions.scale == 2
    assert any("multiple of 2" in w for w in m.warnings), m.warnings
    with pytest.raises(AnalysisError, match=r"multiple of 2.*15x13.*crop it to 14x12 or pad it to 16x14"):
        glam.analyze(m, torch.rand(1, 3, 15, 13), keep_layers=False)
    res = glam.analyze(m, torch.rand(1, 3, 16, 14), keep_layers=False)
    assert res.local["sum"].shape == (32, 28)


def test_cli_reports_the_size_rule(model_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", str(model_path), "--input-range", "1"])
    assert res.exit_code == 0, res.output
    assert "any size that is a multiple of 2" in res.stdout
    odd = _png(tmp_path / "odd.png", 15, 13)
    res = runner.invoke(cli, ["analyze", str(model_path), str(odd), "-o", str(tmp_path / "a.h5"),
                              "--input-range", "1"])
    assert res.exit_code == 2 and "multiple of 2" in res.stderr, res.output
    assert not (tmp_path / "a.h5").exists()
    even = _png(tmp_path / "even.png", 16, 14)
    res = runner.invoke(cli, ["analyze", str(model_path), str(even), "-o", str(tmp_path / "b.h5"),
                              "--input-range", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.h5").exists()


def test_a_size_generic_graph_has_no_rule() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)).eval()
    assert "input_multiple" not in glam.importers.from_module(net).metadata
