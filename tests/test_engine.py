"""GL-AM engine tests: closed forms, finite differences, the literal reference, invariants."""

from __future__ import annotations

import warnings

import glam
import glam.importers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from glam.engine.glam import compute_glam
from glam.engine.maps import normalize, resize
from glam.engine.texture import gradient_magnitude, texture_global, texture_roi
from glam.errors import AnalysisError, NumericalError
from numerics import EPS64, GLAM_MD_ULPS, assert_close, assert_same
from reference_glam import reference_gini, reference_glam
from torch import nn


class OneConvShuffle(nn.Module):
    """A single linear 1x1 conv followed by pixel shuffle: y = PS(W x)."""

    def __init__(self, cin: int = 3, scale: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cin * scale * scale, 1, bias=False)
        self.ps = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ps(self.conv(x))


class SmallSR(nn.Module):
    """conv -> ReLU(inplace) -> conv + channel attention + residual -> conv -> shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.ca1 = nn.Conv2d(8, 4, 1)
        self.ca2 = nn.Conv2d(4, 8, 1)
        self.tail = nn.Conv2d(8, 12, 3, padding=1)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.head(x))
        g = self.body(f)
        g = g * torch.sigmoid(self.ca2(torch.relu(self.ca1(self.pool(g)))))
        return self.ps(self.tail(g + f))


def _mag_grad_numpy(t: np.ndarray, top: int, left: int, l: int, eps: float = 1e-12) -> np.ndarray:
    """Hand-derived d T_ROI / d t for t of shape (C, H, W) (no autograd)."""
    C, H, W = t.shape
    grad = np.zeros_like(t)
    for c in range(C):
        for p in range(top, min(top + l, H - 1)):
            for q in range(left, min(left + l, W - 1)):
                dh = t[c, p, q] - t[c, p + 1, q]
                dw = t[c, p, q] - t[c, p, q + 1]
                m = np.sqrt(dh * dh + dw * dw + eps)
                grad[c, p, q] += (dh + dw) / m
                grad[c, p + 1, q] -= dh / m
                grad[c, p, q + 1] -= dw / m
    return grad


def _np_N(z: np.ndarray) -> np.ndarray:
    z = np.maximum(z, 0)
    m = z.max()
    return z / m if m > 0 else np.zeros_like(z)


def _np_A(g: np.ndarray) -> np.ndarray:
    return np.abs(np.einsum("c,chw->hw", g.mean(axis=(1, 2)), g))


@pytest.fixture(scope="module")
def one_conv() -> glam.importers.ImportedModel:
    torch.manual_seed(0)
    return glam.importers.from_module(OneConvShuffle())


@pytest.fixture(scope="module")
def small_sr() -> glam.importers.ImportedModel:
    torch.manual_seed(1)
    return glam.importers.from_module(SmallSR())


@pytest.mark.numerics
def test_local_map_closed_form(one_conv: glam.importers.ImportedModel) -> None:
    """One tap: k_0 = N(R(N(A(PS^-1(dT/dy))), (H, W))); Consensus = N(k_0); Variation = 0."""
    torch.manual_seed(2)
    x = torch.rand(1, 3, 10, 12)
    top, left, l = 5, 7, 8
    res = compute_glam(one_conv, x, top, left, l)
    with torch.no_grad():
        y = one_conv.graph(x)[0][0].double().numpy()
    dy = _mag_grad_numpy(y, top, left, l)
    g0 = F.pixel_unshuffle(torch.from_numpy(dy)[None], 2)[0].numpy()
    key = _np_N(_np_A(g0))
    key_up = normalize(resize(torch.from_numpy(key).float(), y.shape[-2:])).numpy()
    # float32 engine against a float64 hand derivation (maps normalised: scale 1)
    assert_close(res.local["consensus"], key_up, ulps=ULPS_CLOSED_FORM, err_msg="consensus")
    assert_same(res.local["variation"], np.zeros_like(key_up))
    assert_close(res.local["sum"], key_up, ulps=ULPS_CLOSED_FORM, err_msg="sum")


#: The engine's maps against the float64 closed forms, in float32 epsilons (maps in [0, 1]):
#: measured 3.0 (x86-64 baseline), 2.0 (AVX-512); x4, rounded up (tests/numerics.py).
ULPS_CLOSED_FORM = 16


class Conv3Shuffle(nn.Module):
    """A single linear 3x3 conv (zero padding) followed by pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ps(self.conv(x))


@pytest.mark.numerics
def test_global_map_closed_form() -> None:
    """parent(0) = input: G_0 = W^T * dT_Global/df_0 (transposed conv of the hand-derived
    texture gradient); m_0 = N(A(G_0)) * N(mean_c |f_0|); Consensus_G = N(R(N(m_0))).

    (A 1x1 conv would not do: sum_{p,q} dT_Global/dt = 0 per channel, so the Grad-CAM
    weights of G vanish up to rounding; zero padding of a 3x3 conv makes them non-zero.)
    """
    torch.manual_seed(3)
    model = glam.importers.from_module(Conv3Shuffle())
    x = torch.rand(1, 3, 10, 12)
    res = compute_glam(model, x, 2, 2, 8)
    assert res.parents == [-1]
    w = model.graph.conv.weight.detach().double()
    with torch.no_grad():
        f = model.graph(x)[1][0][0].double().numpy()
    H, W = f.shape[-2:]
    dT_df = torch.from_numpy(_mag_grad_numpy(f, 0, 0, max(H, W)))[None]
    G = F.conv_transpose2d(dT_df, w, padding=1)[0].numpy()
    m = _np_N(_np_A(G)) * _np_N(np.abs(f).mean(axis=0))
    key = normalize(resize(torch.from_numpy(_np_N(m)).float(), res.output.shape[-2:])).numpy()
    assert_close(res.layers[0].global_map, m, ulps=ULPS_CLOSED_FORM, err_msg="m_0")
    assert_close(res.global_["consensus"], key, ulps=ULPS_CLOSED_FORM, err_msg="consensus")
    assert_close(res.global_["sum"], key, ulps=ULPS_CLOSED_FORM, err_msg="sum")


@pytest.mark.numerics
def test_texture_gradient_matches_finite_differences() -> None:
    torch.manual_seed(4)
    t = torch.rand(1, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(texture_roi(t, 2, 3, 5).sum(), [t])
    num = torch.zeros_like(t)
    h = 1e-6
    flat = t.detach().clone().view(-1)
    for i in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += h
        minus[i] -= h
        fp = texture_roi(plus.view_as(t), 2, 3, 5).sum()
        fm = texture_roi(minus.view_as(t), 2, 3, 5).sum()
        num.view(-1)[i] = (fp - fm) / (2 * h)
    # float64 central differences, h = 1e-6: truncation ~h^2 = 1e-12, rounding
    # ~eps64 * T / h = 2.2e-16 * 40 / 1e-6 = 9e-9 (T_ROI of this input is about 40); the
    # gradient's entries are at most 4, so 1e-6 is ~100x that worst case
    fd_error = EPS64 * float(texture_roi(t.detach(), 2, 3, 5).sum()) / h
    assert_close(g, num, ulps=100 * fd_error / EPS64, scale=1.0, eps=EPS64, err_msg="FD")
    ref = _mag_grad_numpy(t.detach()[0].numpy(), 2, 3, 5)
    # two float64 evaluations of the same formula (autograd, a loop): rounding only
    assert_close(g[0], ref, ulps=ULPS_F64, eps=EPS64, err_msg="hand derivative")


#: Two float64 evaluations of one formula, in float64 epsilons of the quantity's scale:
#: measured 0.63 (texture gradient), 0 (closed form vs autograd), Gini 0 - 2.
ULPS_F64 = 16


@pytest.mark.numerics
def test_texture_definitions() -> None:
    t = torch.arange(20.0).view(1, 1, 4, 5)
    mag = gradient_magnitude(t)
    assert mag.shape == (1, 1, 3, 4)
    # dh = -5, dw = -1 everywhere
    assert_close(mag, torch.full_like(mag, float(np.sqrt(26.0 + 1e-12))), ulps=1, err_msg="|grad|")
    # a float32 sum of 12 equal terms against the exact value: 12 roundings at most
    assert_close(texture_global(t), [12 * np.sqrt(26.0)], ulps=16, err_msg="T_Global")
    # window past the edge of mag: indices are simply absent (the same sum, bit for bit)
    assert_same(texture_roi(t, 2, 3, 16), [float(mag[..., 2:, 3:].sum())])


@pytest.mark.numerics
def test_engine_matches_literal_reference(small_sr: glam.importers.ImportedModel) -> None:
    torch.manual_seed(5)
    x = torch.rand(1, 3, 18, 22)
    res = compute_glam(small_sr, x, 9, 13, 16)
    loc, glob, parents, y = reference_glam(small_sr.graph, x, 9, 13, 16)
    assert res.parents == parents
    assert_same(res.output, y, err_msg="output")  # the same forward pass
    for k in ("consensus", "variation", "sum"):
        assert_close(res.local[k], loc[k], ulps=ULPS_REFERENCE, err_msg=f"local {k}")
        assert_close(res.global_[k], glob[k], ulps=ULPS_REFERENCE, err_msg=f"global {k}")


#: The engine (segments, fused kernels) against the literal loop-per-layer reference of
#: tests/reference_glam.py, in float32 epsilons (maps in [0, 1]): measured 6.75 here, 24.5
#: on the fixture models (tests/test_fixture_models_glam.py).
ULPS_REFERENCE = 128


def test_participation_and_parents(small_sr: glam.importers.ImportedModel) -> None:
    names = [t.name for t in small_sr.taps]
    assert names == ["head", "body", "ca1", "ca2", "tail"]
    part = [t.participating for t in small_sr.taps]
    assert part == [True, True, False, False, True]
    # tail's latest participating ancestor is body (through the CA branch and the residual)
    assert [t.parent for t in small_sr.taps] == [-1, 0, 1, 1, 1]


def test_maps_invariants_and_determinism(small_sr: glam.importers.ImportedModel) -> None:
    torch.manual_seed(6)
    x = torch.rand(1, 3, 16, 16)
    a = compute_glam(small_sr, x, 4, 4, 16)
    b = compute_glam(small_sr, x, 4, 4, 16)
    for maps in (a.local, a.global_):
        for m in maps.values():
            assert m.dtype == np.float32
            assert m.shape == (32, 32)
            assert np.isfinite(m).all() and m.min() >= 0 and m.max() == 1.0  # m / max(m)
    for k in a.local:
        np.testing.assert_array_equal(a.local[k], b.local[k])
        np.testing.assert_array_equal(a.global_[k], b.global_[k])


#: The passes side by side (one intra-op thread each) against one after the other (two
#: threads each): the same operations at other thread counts. Measured bit-identical here
#: (oneDNN and the fused kernels compute each element the same way whatever the count);
#: 8 eps of the maps' scale covers a CPU library that splits a reduction by thread.
ULPS_SIDE_BY_SIDE = 8


def _records(res: object) -> list[tuple]:
    return [(r.index, r.local_map, r.global_map, r.global_grad_map, r.activation_energy,
             r.local_vanished, r.global_vanished) for r in res.layers]  # type: ignore[attr-defined]


def test_passes_side_by_side_equal_the_passes_one_after_the_other(
    small_sr: glam.importers.ImportedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two or more threads the local and the global pass run at once
    (glam.engine.side_by_side.both_passes): the maps and every record equal the serial run's, the
    records still stream in execution order, two runs are bit-identical, and the caller's
    thread count is restored."""
    from glam.engine import glam as engine

    torch.manual_seed(8)
    x = torch.rand(1, 3, 20, 18)
    threads = torch.get_num_threads()
    calls: list[bool] = []
    real = engine.both_passes
    monkeypatch.setattr(engine, "both_passes", lambda *a: calls.append(True) or real(*a))
    try:
        torch.set_num_threads(2)
        seen: list[int] = []
        side = compute_glam(small_sr, x, 6, 8, 16, on_layer=lambda r: seen.append(r.index))
        again = compute_glam(small_sr, x, 6, 8, 16)
        assert calls == [True, True] and torch.get_num_threads() == 2
        monkeypatch.setenv("GLAM_SIDE_BY_SIDE", "0")
        serial = compute_glam(small_sr, x, 6, 8, 16)
        assert calls == [True, True]
    finally:
        torch.set_num_threads(threads)
    assert seen == list(range(len(small_sr.taps)))
    for k in side.local:
        np.testing.assert_array_equal(side.local[k], again.local[k])
        np.testing.assert_array_equal(side.global_[k], again.global_[k])
        assert_close(side.local[k], serial.local[k], ulps=ULPS_SIDE_BY_SIDE, err_msg=f"local {k}")
        assert_close(side.global_[k], serial.global_[k], ulps=ULPS_SIDE_BY_SIDE,
                     err_msg=f"global {k}")
    for a, b in zip(_records(side), _records(serial), strict=True):
        assert a[0] == b[0] and a[5:] == b[5:]
        for u, v in zip(a[1:5], b[1:5], strict=True):
            assert (u is None) == (v is None)
            if u is not None:
                assert_close(u, v, ulps=ULPS_SIDE_BY_SIDE, err_msg=f"tap {a[0]}")


def test_the_local_pass_thread_takes_global_layers_once_done(
    small_sr: glam.importers.ImportedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Side by side, the global pass's layers come from one queue: once the local pass is
    done its thread takes those the global thread has not started (here the global thread is
    slowed down, so both take some). Maps and records equal the serial run's, and the
    queue hands out every layer exactly once."""
    import threading
    import time

    from glam.engine import global_pass as gp

    real = gp.global_layer
    who: dict[int, list[str]] = {}

    def slow(out, walker, taps, j, keep):  # type: ignore[no-untyped-def]
        name = threading.current_thread().name
        if name.startswith("glam-global"):
            time.sleep(0.05)
        who.setdefault(j, []).append(name)
        real(out, walker, taps, j, keep)

    monkeypatch.setattr(gp, "global_layer", slow)
    torch.manual_seed(9)
    x = torch.rand(1, 3, 20, 18)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        shared = compute_glam(small_sr, x, 6, 8, 16)
        taken = {j: list(v) for j, v in who.items()}
        monkeypatch.setenv("GLAM_SIDE_BY_SIDE", "0")
        serial = compute_glam(small_sr, x, 6, 8, 16)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    part = [i for i, p in enumerate(shared.participating) if p]
    assert sorted(taken) == part and all(len(v) == 1 for v in taken.values()), taken
    names = {v[0].startswith("glam-global") for v in taken.values()}
    assert names == {True, False}, taken  # both threads took layers
    for k in shared.global_:
        assert_close(shared.global_[k], serial.global_[k], ulps=ULPS_SIDE_BY_SIDE, err_msg=k)
    for a, b in zip(_records(shared), _records(serial), strict=True):
        assert a[0] == b[0] and a[5:] == b[5:]
        for u, v in zip(a[1:5], b[1:5], strict=True):
            if u is not None:
                assert_close(u, v, ulps=ULPS_SIDE_BY_SIDE, err_msg=f"tap {a[0]}")


def test_layer_queue_hands_out_each_layer_once_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from glam.engine.global_pass import LayerQueue

    queue = LayerQueue(range(2000))

    def drain() -> list[int]:
        got = []
        while (j := queue()) is not None:
            got.append(j)
        return got

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda _: drain(), range(4)))
    assert sorted(j for p in parts for j in p) == list(range(2000))
    assert queue() is None


def test_a_failing_global_pass_side_by_side_raises_and_restores_threads(
    small_sr: glam.importers.ImportedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glam.engine import backward

    def broken(self: object, j: int, cotangent: torch.Tensor) -> None:
        raise NumericalError(f"broken walk at tap {j}")

    monkeypatch.setattr(backward.GlobalGradients, "gradient", broken)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(NumericalError, match="broken walk"):
            compute_glam(small_sr, torch.rand(1, 3, 16, 16), 4, 4, 16)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_store_tensors_and_streaming(small_sr: glam.importers.ImportedModel) -> None:
    torch.manual_seed(7)
    x = torch.rand(1, 3, 12, 12)
    seen: list[int] = []
    res = compute_glam(
        small_sr,
        x,
        2,
        2,
        8,
        store="tensors",
        on_layer=lambda r: seen.append(r.index),
        keep_layers=False,
    )
    assert seen == list(range(5)) and res.layers == []
    rec = compute_glam(small_sr, x, 2, 2, 8, store="tensors").layers[1]
    assert rec.activation.shape == (8, 12, 12) and rec.grad_local.shape == (8, 12, 12)
    assert rec.grad_global.shape == (8, 12, 12)  # d T(f_1) / d f_0, parent resolution
    assert rec.global_map.shape == (12, 12)
    # non-participating taps carry a local map but no global map
    ca = compute_glam(small_sr, x, 2, 2, 8).layers[2]
    assert ca.local_map.shape == (1, 1) and ca.global_map is None


def test_metrics_gini_matches_lam_reference() -> None:
    rng = np.random.default_rng(0)
    for m in (rng.random((20, 30)), rng.normal(size=(7, 9)), np.zeros((4, 4))):
        # two float64 implementations of LAM's Gini (values in [0, 1])
        assert_close([glam.gini(m)], [reference_gini(m)], ulps=ULPS_F64, scale=1.0, eps=EPS64)
    assert_close([glam.diffusion_index(np.ones((5, 5)))], [100.0], ulps=ULPS_F64, eps=EPS64)
    spike = np.zeros((10, 10))
    spike[3, 3] = 1
    assert glam.diffusion_index(spike) < 2.0
    assert glam.attributed_fraction(spike) == 1 / 100  # one pixel of 100


def test_bad_roi_and_window(small_sr: glam.importers.ImportedModel) -> None:
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(AnalysisError, match="not inside"):
        glam.analyze(small_sr, x, roi=(10, 0), window=8, device="cpu")
    with pytest.raises(AnalysisError, match="not inside"):
        glam.analyze(small_sr, x, roi=(-1, 0), window=4, device="cpu")
    with pytest.raises(AnalysisError, match="window 1"):
        glam.analyze(small_sr, x, roi=(0, 0), window=1, device="cpu")


class NanNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ps(self.conv(x)) / (x.mean() - x.mean())


class ConstNet(nn.Module):
    """Output does not depend on the input: every T_ROI gradient is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ps(self.conv(x)) * 0.0 + F.interpolate(x, scale_factor=2.0)


def test_nan_output_is_a_typed_error() -> None:
    torch.manual_seed(8)
    model = glam.importers.from_module(ConstNet())
    from glam.importers.tap import tap_graph

    # swap in a graph whose output is NaN (from_module itself refuses it at the parity check)
    model.graph, _, _ = tap_graph(torch.fx.symbolic_trace(NanNet()))
    with pytest.raises(NumericalError, match="NaN"):
        compute_glam(model, torch.rand(1, 3, 8, 8), 0, 0, 4)


def test_roi_independent_output_warns_and_gives_zero_maps() -> None:
    torch.manual_seed(9)
    model = glam.importers.from_module(ConstNet())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = compute_glam(model, torch.rand(1, 3, 8, 8), 2, 2, 8)
    assert any("does not depend on the ROI" in str(w.message) for w in caught)
    assert res.warnings
    for m in res.local.values():
        assert np.isfinite(m).all() and not m.any()


def test_device_selection() -> None:
    assert glam.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert glam.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(glam.UserInputError, match="CUDA is not available"):
            glam.resolve_device("cuda")
    with pytest.raises(glam.UserInputError, match="not understood"):
        glam.resolve_device("tpu:banana")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(small_sr: glam.importers.ImportedModel) -> None:
    torch.manual_seed(10)
    x = torch.rand(1, 3, 20, 20)
    cpu = glam.analyze(small_sr, x, device="cpu", lam=True, lam_fold=10)
    gpu = glam.analyze(small_sr, x, device="cuda", lam=True, lam_fold=10)
    small_sr.to("cpu")
    assert gpu.device.startswith("cuda")
    for k in cpu.local:
        # CPU against CUDA: GLAM.md's bound for two implementations (maps in [0, 1])
        assert_close(gpu.local[k], cpu.local[k], ulps=GLAM_MD_ULPS, err_msg=f"local {k}")
        assert_close(gpu.global_[k], cpu.global_[k], ulps=GLAM_MD_ULPS, err_msg=f"global {k}")
    assert_close(gpu.lam.map, cpu.lam.map, ulps=GLAM_MD_ULPS, err_msg="LAM")


@pytest.mark.numerics
@pytest.mark.parametrize(("src", "dst"), [((7, 9), (28, 36)), ((16, 12), (40, 30)), ((20, 24), (9, 13))])
def test_resize_equals_torch_bicubic(src: tuple[int, int], dst: tuple[int, int]) -> None:
    """R (separable matrices) equals F.interpolate(bicubic, align_corners=False)."""
    torch.manual_seed(12)
    z = torch.rand(5, *src)
    ref = F.interpolate(z[:, None], size=dst, mode="bicubic", align_corners=False)[:, 0]
    # separable matrix products against torch's bicubic kernel: float32 rounding of the map
    assert_close(resize(z, dst), ref, ulps=ULPS_RESIZE, err_msg="stack")
    assert_close(resize(z[0], dst), ref[0], ulps=ULPS_RESIZE, err_msg="one map")


#: R (matrix products) against F.interpolate(bicubic), float32 epsilons of the map's max:
#: measured 10.5 on every instruction set.
ULPS_RESIZE = 64


@pytest.mark.numerics
def test_closed_form_texture_gradient_matches_autograd() -> None:
    from glam.engine.texture import texture_global_grad

    torch.manual_seed(11)
    t = torch.rand(1, 4, 9, 11, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(texture_global(t).sum(), [t])
    assert_close(texture_global_grad(t.detach()), g, ulps=ULPS_F64, eps=EPS64)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "kernel"])
def test_texture_gradient_weights_vanish(fused: bool) -> None:
    """T_Global is a sum of differences: its gradient's per-channel sums are 0, so a layer
    reached through a spatially uniform linear path has vanishing weights (GLAM.md)."""
    from glam.engine import kernels, maps
    from glam.engine.texture import texture_global_grad

    if fused and not kernels.enabled():
        pytest.skip("numba is not installed")
    key_of = (kernels if fused else maps).gradcam_key_flagged
    torch.manual_seed(13)
    g = texture_global_grad(torch.rand(1, 3, 12, 12))[0]
    key, vanished = key_of(g)
    assert vanished and not key.any()
    assert not key_of(torch.rand(3, 12, 12))[1]


def test_segment_cache_is_keyed_by_the_graph_not_its_id() -> None:
    """A freed graph's ``id`` can be reused by the next graph; the segment cache must then not
    hand the new graph the old graph's segments (test_nan_output_is_a_typed_error failed in
    the full suite that way). Entries are keyed weakly by the graph object itself."""
    import gc

    from glam.engine.glam import _SEGMENTS
    from glam.importers.tap import tap_graph

    torch.manual_seed(8)
    model = glam.importers.from_module(ConstNet())
    compute_glam(model, torch.rand(1, 3, 8, 8), 0, 0, 4)
    assert model.graph in _SEGMENTS._cache  # the object, not a number that can be reused
    n = len(_SEGMENTS._cache)
    model.graph, _, _ = tap_graph(torch.fx.symbolic_trace(NanNet()))
    with pytest.raises(NumericalError, match="NaN"):
        compute_glam(model, torch.rand(1, 3, 8, 8), 0, 0, 4)
    del model
    gc.collect()
    assert len(_SEGMENTS._cache) < n + 1  # entries of freed graphs go with them


class _SpectralBlock(nn.Module):
    """An analytic FFTformer-style block: a conv, a spectral filter (``rfft2`` -> a complex
    value with two consumers -> ``irfft2``), a conv after it, a residual, a sub-pixel tail."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.tail = nn.Conv2d(4, 12, 3, padding=1)
        self.up = nn.PixelShuffle(2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x)
        spec = torch.fft.rfft2(f)
        spec = spec * spec.abs().sigmoid() + 0.5 * spec  # the complex value, read twice
        g = torch.fft.irfft2(spec, s=(f.shape[-2], f.shape[-1]))
        return self.up(self.tail(self.mid(g) + f))


def test_complex_values_carry_gradients_and_ancestry() -> None:
    """A complex intermediate is data: it is an ancestry edge (mid's parent is head through
    the FFT) and a segment cut like any floating value; the engine equals the literal
    reference (FFTformer failed --verify: global maps 0.45 apart, cut points left uncut)."""
    model = glam.from_module(_SpectralBlock().eval(), in_channels=3)
    assert [t.parent for t in model.taps] == [-1, 0, 1]
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    res = compute_glam(model, x, 4, 4, 8)
    loc, glob, parents, y = reference_glam(model.graph, x, 4, 4, 8)
    assert res.parents == parents == [-1, 0, 1]
    for k in ("consensus", "variation", "sum"):
        assert_close(res.local[k], loc[k], ulps=ULPS_REFERENCE, err_msg=f"local {k}")
        assert_close(res.global_[k], glob[k], ulps=ULPS_REFERENCE, err_msg=f"global {k}")
