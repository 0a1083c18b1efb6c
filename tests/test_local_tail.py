"""GL-AM's local pass on the ROI's crop of the graph's tail (glam.engine.local_tail).

The crop is exact in real arithmetic; in float32 its convolutions run on smaller tensors,
where torch picks other kernels, so the maps equal the full pass's to rounding. Bounds:
the largest error measured on this file's models (2-core AVX2 EPYC), times a margin of 4-5.
For scale, a 1-ulp change of the *input* moves IMDN's local Variation by about 4,000 eps.
"""

from __future__ import annotations

import glam.fixtures as fixtures
import glam.importers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from glam.engine import local_tail
from glam.engine.glam import GlamMaps, compute_glam
from numerics import assert_close, assert_same
from torch import nn

#: Consensus / Variation / Sum (normalised to 1): measured at most 17 eps natively and 23.5
#: eps under ``ATEN_CPU_CAPABILITY=default`` (SAN, ROI at the corner).
ULPS_MAPS = 128
#: Per-layer local maps and raw gradients, relative to each one's maximum: measured at most
#: 89 eps (SAN's non-local ``g`` convolution: the gradient reaches it through a global
#: attention, whose sums cancel; RNAN's deep layers 63 eps; raw gradients 9 eps).
ULPS_LAYER = 512


def _x(h: int = 48, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _glam(model, x: torch.Tensor, roi: tuple[int, int, int], tail: bool,  # type: ignore[no-untyped-def]
          monkeypatch: pytest.MonkeyPatch, **kw) -> GlamMaps:
    monkeypatch.setenv("GLAM_LOCAL_TAIL", "1" if tail else "0")
    return compute_glam(model, x, *roi, **kw)


def _assert_local_close(crop: GlamMaps, full: GlamMaps, what: str) -> None:
    for k in full.local:
        assert_close(crop.local[k], full.local[k], ulps=ULPS_MAPS, err_msg=f"{what} local {k}")
    for k in full.global_:  # the global pass does not use the crop: bit for bit
        assert_same(crop.global_[k], full.global_[k], err_msg=f"{what} global {k}")
    for a, b in zip(crop.layers, full.layers, strict=True):
        assert a.local_map.shape == b.local_map.shape
        assert_close(a.local_map, b.local_map, ulps=ULPS_LAYER, err_msg=f"{what} layer {a.name}")
        assert a.local_vanished == b.local_vanished, (what, a.name)


@pytest.mark.numerics
@pytest.mark.parametrize("arch", ["carn", "rrdbnet", "rcan", "rnan", "san"])
def test_tail_crop_equals_the_full_local_pass(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On every bundled architecture (an upsampler after the body; RCAN's, RNAN's and SAN's
    global operations sit before it), at two ROIs, one of them at the image's corner."""
    model = glam.importers.from_module(fixtures.load_eager(arch), input_range=1)
    x = _x()
    out = int(model.graph(x)[0].shape[-1])
    for roi in ((out // 2 - 4, out // 2 - 6, 8), (0, out - 8, 8)):
        full = _glam(model, x, roi, False, monkeypatch)
        crop = _glam(model, x, roi, True, monkeypatch)
        assert full.local_tail == ""
        assert crop.local_tail.startswith("local pass: tail from "), (arch, crop.local_tail)
        _assert_local_close(crop, full, f"{arch} at {roi}")


def test_raw_gradients_of_the_tail_are_zero_outside_the_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``store="tensors"``: the tail taps' ``g_j`` at full size, equal to the full pass's
    (which are exactly zero outside the ROI's cone)."""
    model = glam.importers.from_module(fixtures.load_eager("carn"), input_range=1)
    x = _x(40, 44, seed=3)
    roi = (30, 40, 8)
    full = _glam(model, x, roi, False, monkeypatch, store="tensors")
    crop = _glam(model, x, roi, True, monkeypatch, store="tensors")
    assert crop.local_tail
    for a, b in zip(crop.layers, full.layers, strict=True):
        assert a.grad_local.shape == b.grad_local.shape
        assert_close(a.grad_local, b.grad_local, ulps=ULPS_LAYER, err_msg=a.name)
        np.testing.assert_array_equal(a.grad_local == 0, b.grad_local == 0, err_msg=a.name)


def test_the_same_analysis_twice_is_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    model = glam.importers.from_module(fixtures.load_eager("rrdbnet"), input_range=1)
    x = _x()
    first = _glam(model, x, (40, 40, 8), True, monkeypatch)
    second = _glam(model, x, (40, 40, 8), True, monkeypatch)
    assert first.local_tail
    for k in first.local:
        assert_same(second.local[k], first.local[k], err_msg=k)
    for a, b in zip(first.layers, second.layers, strict=True):
        assert_same(a.local_map, b.local_map, err_msg=a.name)


class _Tail(nn.Module):
    """A body at LR, a x2 pixel shuffle, two convolutions at HR. ``positional`` adds a
    row-index bias at HR (local, but not translation equivariant: the NaN probe cannot see
    it); ``pooled`` scales the HR features by their global mean (channel attention)."""

    def __init__(self, positional: bool = False, pooled: bool = False) -> None:
        super().__init__()
        self.body = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])
        self.up = nn.Conv2d(8, 12, 3, padding=1)
        self.hr = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)])
        self.positional, self.pooled = positional, pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.relu(self.body[0](x))
        t = F.relu(self.body[1](t))
        t = F.pixel_shuffle(self.up(t), 2)
        if self.positional:
            t = t + 0.01 * torch.arange(t.shape[-2], dtype=t.dtype, device=t.device)[:, None]
        t = F.relu(self.hr[0](t))
        if self.pooled:
            t = t * torch.sigmoid(t.mean(dim=(2, 3), keepdim=True))
        return self.hr[1](t)


def _tail_model(**kw: bool) -> glam.importers.ImportedModel:
    torch.manual_seed(0)
    return glam.importers.from_module(_Tail(**kw).eval(), input_range=1)


def test_a_local_translation_equivariant_tail_is_cropped(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tail_model()
    x = _x(32, 32, seed=1)
    full = _glam(model, x, (20, 28, 8), False, monkeypatch)
    crop = _glam(model, x, (20, 28, 8), True, monkeypatch)
    assert crop.local_tail.startswith("local pass: tail from body")
    _assert_local_close(crop, full, "tail")


def test_a_positional_tail_fails_the_check_and_runs_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NaN probe finds a local reach, the crop's output at the ROI then differs from
    the model's (the row bias of the crop's rows), and the full local pass runs."""
    model = _tail_model(positional=True)
    x = _x(32, 32, seed=1)
    seg_plans = local_tail.PLANS
    full = _glam(model, x, (20, 28, 8), False, monkeypatch)
    crop = _glam(model, x, (20, 28, 8), True, monkeypatch)
    assert any(p is not None for per in seg_plans._cache.values() for p in per.values())
    assert crop.local_tail == ""
    for k in full.local:
        assert_same(crop.local[k], full.local[k], err_msg=k)


class _Windows(nn.Module):
    """A tail that partitions its HR features into 4x4 windows stacked in the batch axis (as
    SwinIR does) and centres each window: it runs only at multiples of 4 (an odd crop
    raises), and a crop whose windows do not line up with the image's computes other values
    (the check at the ROI sees it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 12, 3, padding=1)
        self.hr = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.pixel_shuffle(self.body(x), 2)
        b, c, h, w = t.size(0), t.size(1), t.size(2), t.size(3)
        win = t.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, 4, 4)
        win = win - win.mean(dim=(2, 3), keepdim=True)
        t = win.reshape(b, h // 4, w // 4, c, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return self.hr(t)


def test_a_window_partitioned_tail_is_cropped_only_where_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At ROIs all over the image: where the crop's windows do not line up with the image's
    (or the crop raises), the full local pass runs, bit for bit; where it is used, the maps
    are close. Both happen here. (A crop that raises: tests/test_participation.py's window
    model, whose crops are not multiples of its window.)"""
    torch.manual_seed(0)
    model = glam.importers.from_module(_Windows().eval(), input_range=1)
    x = _x(24, 24, seed=2)
    outcomes = []
    for top, left in [(0, 0), (6, 10), (13, 17), (20, 4), (30, 30), (17, 22)]:
        full = _glam(model, x, (top, left, 8), False, monkeypatch)
        crop = _glam(model, x, (top, left, 8), True, monkeypatch)
        outcomes.append(bool(crop.local_tail))
        if crop.local_tail:
            _assert_local_close(crop, full, f"windows at {(top, left)}")
        else:
            for k in full.local:
                assert_same(crop.local[k], full.local[k], err_msg=f"{k} at {(top, left)}")
    assert any(outcomes) and not all(outcomes), outcomes


def test_a_global_operation_in_the_tail_keeps_it_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tail_model(pooled=True)
    x = _x(32, 32, seed=1)
    full = _glam(model, x, (20, 28, 8), False, monkeypatch)
    crop = _glam(model, x, (20, 28, 8), True, monkeypatch)
    # the candidates after the pool (HR convolutions) are too late to matter; before it, none
    assert "body" not in crop.local_tail
    if not crop.local_tail:
        for k in full.local:
            assert_same(crop.local[k], full.local[k], err_msg=k)
    else:
        _assert_local_close(crop, full, "pooled")


def test_a_large_roi_share_runs_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a 6x6 input the ROI's cone covers most of every candidate value: no crop."""
    model = _tail_model()
    crop = _glam(model, _x(6, 6), (2, 2, 8), True, monkeypatch)
    assert crop.local_tail == ""


def test_tail_graph_refuses_a_value_that_does_not_dominate() -> None:
    """With a skip from the input to the output, no body value dominates: the tail after it
    would read the input."""

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 12, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.pixel_shuffle(self.a(x), 2) + F.interpolate(x, scale_factor=2)

    model = glam.importers.from_module(Skip().eval(), input_range=1)
    conv = next(n.name for n in model.graph.graph.nodes if n.op == "call_module")
    assert local_tail.tail_graph(model.graph, conv) is None
