"""The fused CPU kernels (glam.engine.kernels) against the eager torch code they replace,
float64 autograd, and themselves at other thread counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from glam.engine import kernels
from glam.engine.accumulate import KeyAccumulator
from glam.engine.maps import gradcam_key_flagged, normalize_, resized_stack
from glam.engine.texture import texture_global, texture_global_grad
from numerics import assert_close

# numba's kernels against eager torch and float64: different computations throughout
pytestmark = [pytest.mark.skipif(not kernels.enabled(), reason="numba is not installed"),
              pytest.mark.numerics]

#: numba kernel against the eager torch code it replaces (or float64 autograd), in float32
#: epsilons of the quantity's largest magnitude: measured 2.99 (x86-64 baseline, texture
#: and energy in one pass), 2.5 (AVX-512); x4, rounded up (tests/numerics.py).
ULPS_KERNEL = 16

SHAPES = [(1, 64, 32, 32), (1, 3, 2, 2), (2, 3, 5, 4), (1, 5, 2, 9), (1, 5, 9, 2), (1, 4, 17, 33)]


def _rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture
def kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLAM_FUSED_KERNELS", "0")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_texture_kernel_matches_closed_form_and_float64_autograd(
    shape: tuple[int, ...], scale: float
) -> None:
    t = _rand(shape, 1, scale)
    fused = kernels.texture_global_grad(t)
    eager = texture_global_grad(t)
    t64 = t.double().requires_grad_(True)
    (exact,) = torch.autograd.grad(texture_global(t64).sum(), [t64])
    # each entry is a sum of up to 4 terms of magnitude <= 1 (whatever the input's scale)
    assert_close(fused, eager, ulps=ULPS_KERNEL, err_msg="eager")
    assert_close(fused, exact, ulps=ULPS_KERNEL, err_msg="float64 autograd")
    assert fused.dtype == torch.float32 and fused.shape == t.shape


def test_texture_kernel_without_differences_is_zero() -> None:
    for shape in [(1, 3, 1, 7), (1, 3, 7, 1), (1, 2, 1, 1)]:
        g = kernels.texture_global_grad(_rand(shape, 2))
        assert g.shape == shape and not g.any()


def test_texture_kernel_reads_strided_input() -> None:
    t = _rand((1, 6, 9, 11), 3).to(memory_format=torch.channels_last)
    assert_close(kernels.texture_global_grad(t), texture_global_grad(t.contiguous()),
                 ulps=ULPS_KERNEL)


def test_closed_form_matches_autograd() -> None:
    """The closed-form texture gradient equals autograd's to float32 rounding."""
    t = _rand((1, 16, 33, 29), 4).requires_grad_(True)
    (ref,) = torch.autograd.grad(texture_global(t).sum(), [t])
    assert_close(texture_global_grad(t.detach()), ref, ulps=ULPS_KERNEL)


@pytest.mark.parametrize("shape", [(64, 32, 32), (64, 1, 1), (3, 2, 2), (7, 13, 5)])
def test_gradcam_kernel_matches_eager(shape: tuple[int, ...]) -> None:
    g = _rand(shape, 5) + 0.3  # channel means well away from 0
    key, vanished = kernels.gradcam_key_flagged(g)
    ref_key, ref_vanished = gradcam_key_flagged(g)
    assert_close(key, ref_key, ulps=ULPS_KERNEL)  # float64 vs float32 channel sums
    assert vanished == ref_vanished is False


@pytest.mark.parametrize("fused", [True, False])
def test_vanishing_weights_give_an_exact_zero_key(fused: bool) -> None:
    """GLAM.md "Vanishing weights": max_c |mean g_c| <= 1e-4 max_c mean |g_c| -> A(g) = 0."""
    key_of = kernels.gradcam_key_flagged if fused else gradcam_key_flagged
    g = _rand((6, 10, 12), 13)
    g = g - g.mean(dim=(1, 2), keepdim=True)  # channel means are rounding only
    key, vanished = key_of(g)
    assert vanished and key.shape == (10, 12) and not key.any()
    zero, vanished0 = key_of(torch.zeros(3, 5, 5))
    assert vanished0 and not zero.any()
    # just above the threshold the key is the plain Grad-CAM key
    h = g.clone()
    h[0] += 2e-4 * float(g.abs().mean(dim=(1, 2)).max())
    key, vanished = key_of(h)
    assert not vanished and key.any()
    alpha = h.mean(dim=(1, 2))
    # the weights nearly cancel (r = max|alpha| / max mean|h|, about 2e-4): float32 resolves
    # such a key only to about 8 eps / r of its largest value (the engine's own bound,
    # glam.engine.reference.layer_tolerance); measured 926 eps, about 0.19 / r
    r = float(alpha.abs().max() / h.abs().mean(dim=(1, 2)).max())
    assert_close(key, (alpha[:, None, None] * h).sum(0).abs(), ulps=8 / r)


@pytest.mark.parametrize("shape", [(1, 64, 20, 24), (1, 3, 2, 2), (1, 5, 1, 9), (1, 4, 67, 3)])
def test_texture_and_energy_in_one_pass(shape: tuple[int, ...]) -> None:
    f = _rand(shape, 7)
    g, a = kernels.texture_grad_and_energy(f)
    assert torch.equal(g, kernels.texture_global_grad(f))
    assert_close(a, f[0].abs().sum(dim=0) / shape[1], ulps=ULPS_KERNEL)


def test_texture_kernel_does_not_depend_on_the_row_blocking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    f = _rand((1, 8, 37, 21), 13)
    ref = kernels.texture_grad_and_energy(f)
    for rows in (1, 2, 5, 36, 37, 100):
        monkeypatch.setattr(kernels, "_rows_per_task", lambda h, r=rows: r)
        got = kernels.texture_grad_and_energy(f)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), rows


def _chunks(seed: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.rand(8, 8, generator=g) for _ in range(5)],
        [torch.rand(16, 16, generator=g), torch.zeros(8, 8), torch.rand(32, 32, generator=g)],
        [torch.rand(8, 8, generator=g)],
    ]


def test_key_accumulation_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    size = (32, 32)
    fused = KeyAccumulator()
    for chunk in _chunks(8):
        fused.add_maps(chunk, size)
    eager = KeyAccumulator()
    for chunk in _chunks(8):
        eager.add_stack(normalize_(resized_stack(chunk, size)))
    got = fused.finish(size, torch.device("cpu"))
    ref = eager.finish(size, torch.device("cpu"))
    for k in ("consensus", "variation", "sum"):
        assert_close(got[k], ref[k], ulps=ULPS_KERNEL, err_msg=k)
    monkeypatch.setenv("GLAM_FUSED_KERNELS", "0")  # and add_maps takes the eager path when off
    off = KeyAccumulator()
    for chunk in _chunks(8):
        off.add_maps(chunk, size)
    for k, v in off.finish(size, torch.device("cpu")).items():
        assert torch.equal(v, ref[k]), k


@pytest.mark.parametrize(
    ("src", "dst"),
    [((64, 64), (256, 256)), ((17, 23), (51, 69)), ((40, 40), (20, 20)), ((5, 7), (5, 21)),
     ((1, 8), (3, 16)), ((2, 2), (9, 9)), ((64, 64), (64, 256))],
)
def test_resize_through_the_bicubic_taps_matches_the_dense_products(
    src: tuple[int, int], dst: tuple[int, int]
) -> None:
    """The tap kernel against ``M_h @ z @ M_w^T`` and float64 ``F.interpolate`` (up, down,
    one axis only, one-pixel rows): measured at most 3 eps of the largest value."""
    from glam.engine.maps import resize

    z = torch.rand(3, *src, generator=torch.Generator().manual_seed(sum(src) + sum(dst)))
    got = kernels.resize_stack(z, dst)
    assert got.shape == (3, *dst)
    assert_close(got, resize(z, dst), ulps=ULPS_KERNEL, err_msg="dense products")
    exact = torch.nn.functional.interpolate(
        z[:, None].double(), size=dst, mode="bicubic", align_corners=False)[:, 0]
    assert_close(got, exact.float(), ulps=ULPS_KERNEL, err_msg="float64 F.interpolate")
    assert kernels.resize_stack(z, src) is z  # the identity at the same size


def test_non_finite_keys_stay_visible() -> None:
    acc = KeyAccumulator()
    acc.add_maps([torch.full((4, 4), float("nan"))], (8, 8))
    assert torch.isnan(acc.finish((8, 8), torch.device("cpu"))["consensus"]).all()


def test_kernels_are_bitwise_independent_of_the_thread_count() -> None:
    t = _rand((1, 32, 40, 36), 9)
    g = t[0] + 0.2

    def run() -> list[np.ndarray]:
        acc = KeyAccumulator()
        for chunk in _chunks(10):
            acc.add_maps(chunk, (32, 32))
        return [
            kernels.texture_global_grad(t).numpy(),
            kernels.gradcam_key_flagged(g)[0].numpy(),
            kernels.texture_grad_and_energy(t)[1].numpy(),
            *(v.numpy() for v in acc.finish((32, 32), torch.device("cpu")).values()),
        ]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


def test_warm_up_loads_once() -> None:
    assert kernels.warm_up() and kernels.warm_up()


@pytest.mark.usefixtures("kernels_off")
def test_switched_off_gives_the_eager_results() -> None:
    assert not kernels.enabled() and not kernels.warm_up()
    t = _rand((1, 4, 9, 8), 11)
    assert torch.equal(kernels.texture_global_grad(t), texture_global_grad(t))
    key, vanished = kernels.gradcam_key_flagged(t[0])
    ref_key, ref_vanished = gradcam_key_flagged(t[0])
    assert torch.equal(key, ref_key) and vanished == ref_vanished
    assert torch.equal(kernels.texture_grad_and_energy(t)[1], t[0].abs().sum(dim=0) / 4)


def test_other_dtypes_take_the_eager_path() -> None:
    t = _rand((1, 4, 9, 8), 12).double()
    assert torch.equal(kernels.texture_global_grad(t), texture_global_grad(t))
    assert kernels.texture_global_grad(t).dtype == torch.float64


def test_kernels_compile_in_memory_without_a_cache_location(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numba
    from glam.engine import _numba_kernels

    real = numba.njit

    def no_cache(*args: object, cache: bool = False, **kw: object) -> object:
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x'")
        return real(*args, **kw)

    monkeypatch.setattr(numba, "njit", no_cache)

    @_numba_kernels.jit()
    def double(a: np.ndarray) -> None:
        for i in numba.prange(a.shape[0]):
            a[i] *= 2

    a = np.arange(4, dtype=np.float32)
    double(a)
    np.testing.assert_array_equal(a, [0, 2, 4, 6])


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_gradients_are_not_taken_for_vanishing_weights(fused: bool) -> None:
    """A NaN/Inf gradient must keep a non-finite key (the engine's finiteness check names
    it), never pass as "vanishing weights" with a silent zero key."""
    from glam.engine import reference

    key_of = kernels.gradcam_key_flagged if fused else gradcam_key_flagged
    for bad in (float("nan"), float("inf")):
        g = _rand((4, 6, 5), 14)
        g[1, 2, 3] = bad
        key, vanished = key_of(g)
        assert not vanished and not torch.isfinite(key).all()
        assert not torch.isfinite(reference.A(g)).all()
