"""LAM baseline tests: official-code numerics, batching invariance, completeness."""

from __future__ import annotations

import glam
import glam.importers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from glam.engine.lam import blur_path, compute_lam, gaussian_kernel
from glam.engine.texture import texture_roi
from numerics import EPS64, assert_close, assert_same
from torch import nn

#: LAM computed two different ways (batched path steps against the official per-step loop,
#: float32 against float64 filtering), in float32 epsilons of the quantity's largest
#: magnitude: measured 4.02 (attribution against the per-step loop) on every instruction
#: set; x4, rounded up (tests/numerics.py).
ULPS_LAM = 32


class SmoothSR(nn.Module):
    """A smooth (softplus) SR net: path integrals converge quickly."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ps(self.c2(F.softplus(self.c1(x))))


@pytest.fixture(scope="module")
def smooth() -> glam.importers.ImportedModel:
    torch.manual_seed(0)
    return glam.importers.from_module(SmoothSR())


def _filter2d_reflect101(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Literal cv2.filter2D (correlation, anchor at the centre, BORDER_REFLECT_101)."""
    l = k.shape[0]
    a, b = -((-l) // 2 + 1), l // 2
    pad = np.pad(img, ((a, b), (a, b)), mode="reflect")  # numpy 'reflect' == reflect-101
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(l):
        for j in range(l):
            out += k[i, j] * pad[i : i + img.shape[0], j : j + img.shape[1]]
    return out


def test_gaussian_kernels() -> None:
    k = gaussian_kernel(9, 1.2)
    # a float64 sum of 81 weights normalised to 1: 81 roundings at most
    assert k.shape == (9, 9)
    assert_close([k.sum()], [1.0], ulps=81, eps=EPS64)
    assert k[4, 4] == k.max()
    delta = gaussian_kernel(9, 0.0)
    assert delta[4, 4] == 1.0 and delta.sum() == 1.0  # an exact delta


@pytest.mark.numerics
def test_blur_path_matches_official_numerics() -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 14, 17)
    fold, sigma, l = 6, 1.2, 9
    images, derivs = blur_path(x, sigma, fold, l)
    sig = np.linspace(sigma, 0, fold + 1)
    ks = [gaussian_kernel(l, s) for s in sig]
    xn = x[0].double().numpy()
    for i in range(fold):
        ref_img = np.stack([_filter2d_reflect101(xn[c], ks[i + 1]) for c in range(3)])
        ref_der = np.stack(
            [_filter2d_reflect101(xn[c], (ks[i + 1] - ks[i]) * fold) for c in range(3)]
        )
        # float32 convolution against a float64 loop
        assert_close(images[i], ref_img, ulps=ULPS_LAM, err_msg=f"image {i}")
        assert_close(derivs[i], ref_der, ulps=ULPS_LAM, err_msg=f"derivative {i}")
    # the last path image is the input itself (K_m is an exact delta)
    assert_same(images[-1], x[0])


@pytest.mark.numerics
def test_lam_matches_per_step_reference(smooth: glam.importers.ImportedModel) -> None:
    """The official loop: one model evaluation per step, grad * derivative, mean."""
    torch.manual_seed(2)
    x = torch.rand(1, 3, 12, 12)
    top, left, win, fold = 6, 6, 8, 8
    res = compute_lam(smooth, x, top, left, win, fold=fold, lam_batch=3)
    images, derivs = blur_path(x, 1.2, fold, 9)
    acc = []
    for i in range(fold):
        z = images[i : i + 1].clone().requires_grad_(True)
        obj = texture_roi(smooth.graph(z)[0], top, left, win).sum()
        (g,) = torch.autograd.grad(obj, [z])
        acc.append((g * derivs[i : i + 1])[0].numpy())
    attr = np.mean(np.stack(acc), axis=0)
    assert_close(res.attribution, attr, ulps=ULPS_LAM, err_msg="attribution")
    s = np.abs(attr.sum(0))
    assert_close(res.map, s / s.max(), ulps=ULPS_LAM, err_msg="map")
    assert res.map_output.shape == (24, 24)


@pytest.mark.numerics
def test_lam_batch_size_does_not_change_the_result(smooth: glam.importers.ImportedModel) -> None:
    torch.manual_seed(3)
    x = torch.rand(1, 3, 12, 14)
    results = [compute_lam(smooth, x, 4, 4, 8, fold=12, lam_batch=b) for b in (1, 5, 12)]
    for r in results[1:]:
        # another batch size runs other convolution kernels: float32 rounding differs
        assert_close(r.attribution, results[0].attribution, ulps=ULPS_LAM, err_msg="attribution")
        assert_close(r.map, results[0].map, ulps=ULPS_LAM, err_msg="map")


class BatchMixingSR(SmoothSR):
    """Right on one image, wrong on a batch (every image sees the batch mean), as a graph
    exported at batch size 1 whose reshapes then mix a larger batch's images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.mean(0, keepdim=True).expand_as(x))


def test_lam_does_not_batch_a_model_that_mixes_the_batch() -> None:
    torch.manual_seed(0)
    mixing = glam.importers.from_module(BatchMixingSR())
    torch.manual_seed(0)
    plain = glam.importers.from_module(SmoothSR())
    x = torch.rand(1, 3, 12, 14, generator=torch.Generator().manual_seed(3))
    ref = compute_lam(plain, x, 4, 4, 8, fold=6, lam_batch=1)
    res = compute_lam(mixing, x, 4, 4, 8, fold=6, lam_batch=3)
    assert res.batch == 1 and any("differ from one image at a time" in w for w in res.warnings)
    # one image at a time, the batch mean of one image is the image: the same computation
    assert_same(res.attribution, ref.attribution)
    assert compute_lam(plain, x, 4, 4, 8, fold=6, lam_batch=3).warnings == []


def test_lam_completeness(smooth: glam.importers.ImportedModel) -> None:
    """sum(attr) ~= T_ROI(F(x)) - T_ROI(F(gamma_0)) within 2 % at fold = 50."""
    torch.manual_seed(4)
    img = torch.rand(1, 3, 6, 6)
    x = F.interpolate(img, size=(16, 16), mode="bilinear", align_corners=False)  # smooth input
    res = compute_lam(smooth, x, 8, 8, 16, fold=50, lam_batch=25)
    k0 = torch.from_numpy(gaussian_kernel(9, 1.2))
    g0 = (
        F.conv2d(F.pad(x.double(), (4, 4, 4, 4), mode="reflect").transpose(0, 1), k0[None, None])
        .transpose(0, 1)
        .float()
    )
    with torch.no_grad():
        delta = float(
            texture_roi(smooth.graph(x)[0], 8, 8, 16) - texture_roi(smooth.graph(g0)[0], 8, 8, 16)
        )
    # not a float tolerance: the path integral's 50-step discretisation error
    assert float(res.attribution.sum()) == pytest.approx(delta, rel=0.02)


def test_lam_through_analyze_reports_metrics(smooth: glam.importers.ImportedModel) -> None:
    torch.manual_seed(5)
    x = torch.rand(1, 3, 12, 12)
    res = glam.analyze(smooth, x, lam=True, lam_fold=10, device="cpu")
    for key in ("di_lam", "di_lam_output", "attributed_fraction_lam", "seconds_lam"):
        assert key in res.metrics
    assert res.metrics["di_lam"] == glam.diffusion_index(res.lam.map)  # the same computation
    assert res.lam.attribution.shape == (3, 12, 12)
