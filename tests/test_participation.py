"""GLAM.md "Participating taps" (rule of 2026-12-06): a conv that runs on a batch-folded
tensor (windows or rows of the image stacked in the batch axis) is tapped and archived with
its reason, and enters no map; the literal reference follows the same rule.

The nets below fold their features in the ways window transformers do (non-overlapping
windows, as SwinIR / DITN partition them; rows, as some strip-attention blocks do), run a
conv on the folded tensor, unfold and continue. Before the rule the engine took ``g[0]`` of
such a tap, one window's gradient stretched over the whole output.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from glam import analyze, from_module
from glam.archive.hdf5 import RunWriter, open_archive
from glam.archive.taps import not_participating, tap_row, taps_summary
from glam.engine.reference import reference_parents
from glam.importers.tap import participation
from torch import nn


class Folding(nn.Module):
    """head conv -> fold -> conv on the folded tensor -> unfold -> residual -> tail x2."""

    def __init__(self, fold: str, p: int = 4, feats: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fold, self.p = fold, p
        self.head = nn.Conv2d(3, feats, 3, padding=1)
        self.inner = nn.Conv2d(feats, feats, 3, padding=1)
        self.mix = nn.Conv2d(feats, feats, 1)
        self.tail = nn.Conv2d(feats, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def _fold(self, f: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f.size(0), f.size(1), f.size(2), f.size(3)
        p = self.p
        if self.fold == "windows":  # (B, C, H, W) -> (B * H/p * W/p, C, p, p)
            t = f.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
            return t.reshape(-1, c, p, p)
        return f.permute(0, 2, 1, 3).reshape(-1, c, 1, w).expand(-1, c, 2, w)  # rows

    def _unfold(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        b, c, h, w = like.size(0), like.size(1), like.size(2), like.size(3)
        p = self.p
        if self.fold == "windows":
            t = t.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
            return t.reshape(b, c, h, w)
        return t[:, :, :1, :].reshape(b, h, c, w).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.head(x))
        g = self._unfold(self.inner(self._fold(f)), f)
        return self.shuffle(self.tail(self.mix(torch.relu(g)) + f))


FOLDS = ("windows", "rows")


@pytest.mark.parametrize("shape, reason", [
    ((1, 8, 10, 12), ""),
    ((25, 16, 8, 8), "batch-folded"),
    ((1, 8, 1, 1), "no spatial extent"),
    ((1, 8, 12), "not 4-D"),
])
def test_participation_reasons(shape: tuple[int, ...], reason: str) -> None:
    got = participation(shape)
    assert got.startswith(reason) if reason else got == ""


@pytest.mark.parametrize("fold", FOLDS)
def test_batch_folded_tap_is_archived_with_its_reason_and_in_no_map(fold: str, tmp_path) -> None:
    net = Folding(fold).eval()
    model = from_module(net, input_range=1)
    names = [t.name for t in model.taps]
    inner = model.taps[names.index("inner")]
    assert not inner.participating and inner.reason.startswith("batch-folded")
    assert all(t.participating for t in model.taps if t.name != "inner")

    x = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    res = analyze(model, x, roi=(8, 4), window=8, verify=True)
    # the engine equals the literal reference, which applies the rule on its own
    assert res.engine_parity is not None and res.engine_parity.passed, res.engine_parity
    _, part = reference_parents(model.graph, x)
    assert part == [t.participating for t in res.taps]
    # the folded tap's parent role: the tap after it takes the head as its parent
    by_name = {t.name: t for t in res.taps}
    assert by_name["mix"].parent == names.index("head")
    rec = next(r for r in res.layers if r.name == "inner")
    assert not rec.participating and rec.reason.startswith("batch-folded")
    assert rec.global_map is None  # no global key for a tap outside the maps

    # archived with the reason, and shown as such
    path = tmp_path / "runs.h5"
    with RunWriter(path, "r") as rw:
        for r in res.layers:
            rw.add_layer(r)
        rw.finish(model, res, image_path="synthetic", image_sha256="")
    with h5py.File(path, "r") as f:
        layer = f[f"runs/r/layers/{names.index('inner')}"]
        assert layer.attrs["participation"].startswith("batch-folded")
    with open_archive(path) as ar:
        taps = ar.run("r").taps
    folded = [t for t in taps if not t["participating"]]
    assert [t["name"] for t in folded] == ["inner"]
    assert "1 batch-folded" in taps_summary(taps)
    assert tap_row(folded[0])[-1] == "no: batch-folded"
    assert not_participating(taps)[0].startswith("1 batch-folded (e.g. #1 inner: batch-folded")


def test_folded_tap_does_not_change_the_maps_of_the_other_layers() -> None:
    """The maps are those of the participating taps alone: equal (bit for bit: the same
    computation) to the maps of the same graph with the folded tap's conv untapped, which
    we get by making the same net's inner conv a non-conv op of the same value."""

    class Untapped(nn.Module):
        def __init__(self, conv: nn.Conv2d) -> None:
            super().__init__()
            self.weight, self.bias, self.padding = conv.weight, conv.bias, conv.padding

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            # the same convolution written as unfold + matmul: no conv node, so no tap
            k = self.weight.shape[-1]
            cols = nn.functional.unfold(t, k, padding=self.padding)
            out = self.weight.flatten(1) @ cols + self.bias[:, None]
            return out.reshape(t.shape[0], -1, t.shape[2], t.shape[3])

    net = Folding("windows").eval()
    model = from_module(net, input_range=1)
    plain = Folding("windows").eval()
    plain.inner = Untapped(plain.inner)
    other = from_module(plain, input_range=1, tolerance=1e-5)
    assert len(other.taps) == len(model.taps) - 1
    x = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(2))
    a = analyze(model, x, roi=(8, 4), window=8)
    b = analyze(other, x, roi=(8, 4), window=8)
    # different computations of the inner conv (oneDNN vs unfold+matmul): the participating
    # taps' values differ by float32 rounding, which GLAM.md's normalisations amplify; the
    # maps agree to 1e-4 (GLAM.md's tolerance), and no map saw the folded tap
    for fam in ("local", "global_"):
        for key, m in getattr(a, fam).items():
            np.testing.assert_allclose(m, getattr(b, fam)[key], atol=1e-4, err_msg=f"{fam}/{key}")


def test_cli_inspect_names_batch_folded_taps(tmp_path) -> None:
    """``glam inspect`` on an ONNX export of a folding net: the folded conv is listed as
    ``no: batch-folded`` and counted in the headline."""
    from glam.cli import cli

    net = Folding("windows").eval()
    path = tmp_path / "fold.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 16, 12),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {2: "h", 3: "w"}, "output": {2: "H", 3: "W"}})
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "1 batch-folded" in res.output
    assert "no: batch-folded" in res.output
