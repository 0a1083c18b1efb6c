"""Bad model files give one-line typed errors and exit code 2 from the CLI, no traceback."""

from __future__ import annotations

import zipfile
from pathlib import Path

import glam.importers
import pytest
import torch
from cli_output import message_lines
from click.testing import CliRunner
from conftest import export_onnx
from glam.cli import cli
from glam.errors import ModelFileError, NotSuperResolutionError
from torch import nn


class Downscaler(nn.Module):
    """out = in / 2: no integer slope s >= 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Classifier(nn.Module):
    """A 2-D output (logits): not an image at all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


class Cropper(nn.Module):
    """out = 2 * in - 4 (a border-cropping SR model, like waifu2x): supported, offset -4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3)  # no padding: in - 2
        self.ps = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ps(self.conv(x))


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    export_onnx(Downscaler(), d / "down.onnx", 3)
    export_onnx(Classifier(), d / "classifier.onnx", 3)
    export_onnx(Cropper(), d / "crop.onnx", 3)
    (d / "empty.onnx").write_bytes(b"")
    full = (d / "crop.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(full[: len(full) // 2])
    (d / "notes.txt").write_text("not a model\n" * 20)
    scripted = torch.jit.trace(Cropper().eval(), torch.rand(1, 3, 8, 8))
    torch.jit.save(scripted, str(d / "model.pt"))
    raw = (d / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 3])
    torch.save({"w": torch.zeros(3)}, d / "weights.pth")
    with zipfile.ZipFile(d / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    return d


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("down.onnx", NotSuperResolutionError, "not an SR model"),
        ("classifier.onnx", NotSuperResolutionError, "not a 4-D image"),
        ("empty.onnx", ModelFileError, "empty"),
        ("truncated.onnx", ModelFileError, "not an ONNX"),
        ("notes.txt", ModelFileError, "not an ONNX"),
        ("truncated.pt", ModelFileError, "damaged zip"),
        ("weights.pth", ModelFileError, "checkpoint"),
        ("other.zip", ModelFileError, "neither TorchScript"),
        ("missing.onnx", ModelFileError, "does not exist"),
    ],
)
def test_bad_model_files(bad_models: Path, name: str, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        glam.importers.load(bad_models / name)
    res = CliRunner().invoke(cli, ["inspect", str(bad_models / name)])
    assert res.exit_code == 2, res.output
    # a phase-log note ("glam: note: the machine is busy ...") may precede the error
    lines = message_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.output + res.stderr


def test_border_cropping_model_records_offset(bad_models: Path) -> None:
    model = glam.importers.load(bad_models / "crop.onnx", input_range=1)
    assert model.conventions.scale == 2 and model.conventions.offset == (-4, -4)
    assert model.conventions.scale_source == "two sizes"
