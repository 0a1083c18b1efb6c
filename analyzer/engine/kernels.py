"""Fused CPU kernels for GL-AM's per-layer elementwise work (compiled with numba).

Besides its share of the two backward passes, every participating layer costs a texture
cotangent ``dT_Global/df_j`` (GLAM.md "Texture objective"), Grad-CAM keys ``A(g_j)`` and
``A(G_j)`` with GLAM.md's vanishing-weights test, an activation energy ``a_j``,
and two keys normalised and added into the Consensus / Variation sums. As eager torch
operations these are about 14, 10, 3 and 7 passes over activation- or output-sized
tensors, each with its own dispatch; the kernels here take one or two (the texture
cotangent and ``a_j`` share one pass over ``f_j``). Measured on this project's 2-core
machine: the texture cotangent of a 64x64x64 layer takes 0.2 ms instead of 0.6-1.8 ms
(2 ms instead of 33 ms at 64x256x256).

Each function here runs its kernel on float32 CPU tensors and otherwise (CUDA, other
dtypes, numba missing, ``GLAM_FUSED_KERNELS=0``) the eager torch code of
:mod:`glam.engine.texture` and :mod:`glam.engine.maps`, which stays the literal statement of
GLAM.md. Both agree to float32 rounding (tested); channel sums are accumulated in float64.
Every output element is computed in a fixed order whatever the thread count, so results
stay bitwise deterministic on CPU.

The kernels are compiled on first use and cached on disk by numba (about 10 s once per
machine); loading them takes about 0.6 s once per process (:func:`warm_up`).
"""

from __future__ import annotations

import functools
import gc
import os
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol

import numpy as np
import torch
from glam.engine.maps import gradcam_key_flagged as _gradcam_key_flagged_eager
from glam.engine.maps import interpolation_matrix, weights_vanish
from glam.engine.maps import resize as _resize_eager
from glam.engine.texture import texture_global_grad as _texture_global_grad_eager

_STATE: dict[str, ModuleType | bool | None] = {"module": None}
_THREADS = threading.local()  # the thread count this thread last gave numba


def _kernels() -> ModuleType | None:
    """The compiled kernels, or ``None`` when they are off or numba is not installed."""
    if os.environ.get("GLAM_FUSED_KERNELS", "1") == "0":
        return None
    if _STATE["module"] is None:
        try:
            from glam.engine import _numba_kernels

            _STATE["module"] = _numba_kernels
        except ImportError:  # no numba wheel for this platform: the eager path
            _STATE["module"] = False
            warnings.warn(
                "numba is not installed: GL-AM runs its per-layer work as eager torch "
                "operations on CPU (same results, slower); `pip install numba` to speed it up",
                RuntimeWarning,
                stacklevel=3,
            )
    module = _STATE["module"]
    return module if isinstance(module, ModuleType) else None


def enabled() -> bool:
    """Whether the fused kernels are in use (numba importable, not disabled by
    ``GLAM_FUSED_KERNELS=0``)."""
    return _kernels() is not None


def warm_up() -> bool:
    """Load the compiled kernels and start numba's thread pool now (once per process).

    The first call of each kernel in a process loads its machine code from numba's disk
    cache (about 0.6 s in all, with the numba import and one full garbage collection, on
    this project's machine).
    :func:`glam.engine.glam.compute_glam` calls this before its timer starts, so its timings
    measure the analysis, not this one-time load. Returns whether the kernels are in use.
    """
    if _kernels() is None:
        return False
    if not _STATE.get("warm"):
        f = torch.zeros((1, 2, 3, 3), dtype=torch.float32)
        texture_grad_and_energy(f)
        gradcam_key_flagged(f[0])
        accumulate_keys(_Sums(), torch.zeros((1, 3, 3), dtype=torch.float32))
        # numba's import leaves several hundred thousand new Python objects; the next full
        # garbage collection walks them all (measured: 0.2 s, inside the demo's segment
        # build). Take that collection here, once, with the rest of the load.
        gc.collect()
        _STATE["warm"] = True
    return True


def safe_for_concurrent_calls() -> bool:
    """Whether two threads may call the kernels at once: true when they are off (eager
    torch), or numba runs its parallel loops on OpenMP or TBB (its ``workqueue`` fallback
    is not thread-safe)."""
    kernels = _kernels()
    if kernels is None:
        return True
    warm_up()
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return False
    return layer in ("omp", "tbb")


def _applies(t: torch.Tensor) -> ModuleType | None:
    """The kernels if ``t`` goes through them (a float32 CPU tensor), else ``None``."""
    if t.device.type != "cpu" or t.dtype != torch.float32:
        return None
    kernels = _kernels()
    n = torch.get_num_threads()
    if kernels is not None and getattr(_THREADS, "n", None) != n:
        import numba

        # as many threads as torch's intra-op pool, never more than numba has; both counts
        # are per thread, so this thread remembers what it set (numba's setter costs about
        # 0.1 ms, once per layer and pass: 0.15 s of a paper RCAN analysis)
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        if torch.get_num_threads() != n:
            # starting numba's OpenMP threading layer resets the shared OpenMP runtime to
            # NUMBA_NUM_THREADS, which silently undid torch.set_num_threads (--threads 1)
            torch.set_num_threads(n)
        _THREADS.n = n
    return kernels


def _numpy(t: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous numpy view of ``t`` reshaped (copied only if ``t`` is strided)."""
    return t.detach().contiguous().reshape(shape).numpy()


def _rows_per_task(h: int) -> int:
    """Rows per parallel task of the texture kernel: about four tasks per thread."""
    return max(4, -(-h // (4 * torch.get_num_threads())))


def texture_global_grad(t: torch.Tensor) -> torch.Tensor:
    """``dT_Global/dt`` for ``t`` of shape ``(N, C, H, W)`` (no autograd graph).

    The formula and summation order of :func:`glam.engine.texture.texture_global_grad`, in
    one pass: with ``u = dh * (1/mag)`` and ``v = dw * (1/mag)``,
    ``g[p,q] = ((v[p,q] - v[p,q-1]) - u[p-1,q]) + u[p,q]`` (absent terms left out).
    Equal to autograd's gradient of :func:`glam.engine.texture.texture_global` to float32
    rounding (tested).
    """
    kernels = _applies(t)
    if kernels is None:
        return _texture_global_grad_eager(t)
    n, c, h, w = (int(d) for d in t.shape)
    g = torch.empty((n, c, h, w), dtype=torch.float32)
    if h < 2 or w < 2:  # no differences: T_Global is constant
        return g.zero_()
    energy = np.empty((h, w), dtype=np.float32)
    for i in range(n):
        kernels.texture_energy(_numpy(t[i], (c, h, w)), g[i].numpy(), energy, _rows_per_task(h))
    return g


def texture_grad_and_energy(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``dT_Global/df`` (as :func:`texture_global_grad`) and the activation energy
    ``a = mean_c |f_c|`` (GLAM.md, global map) of one tap output ``f`` (``1 x C x H x W``),
    in one pass over ``f``."""
    c, h, w = (int(d) for d in f.shape[-3:])
    kernels = _applies(f)
    if kernels is None or h < 2 or w < 2:
        f = f.detach()
        return texture_global_grad(f), f[0].abs().sum(dim=0).div_(c)
    g = torch.empty((1, c, h, w), dtype=torch.float32)
    a = torch.empty((h, w), dtype=torch.float32)
    kernels.texture_energy(_numpy(f, (c, h, w)), g[0].numpy(), a.numpy(), _rows_per_task(h))
    return g, a


def gradcam_key_flagged(g: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(A(g), vanished)`` for ``g`` of shape ``(C, H, W)``, GLAM.md's vanishing-weights
    rule included.

    See :func:`glam.engine.maps.gradcam_key_flagged` (same values to float32 rounding): one
    pass for the per-channel means and mean magnitudes (float64), one for the weighted
    channel sum.
    """
    kernels = _applies(g)
    if kernels is None:
        return _gradcam_key_flagged_eager(g)
    c, h, w = (int(d) for d in g.shape[-3:])
    key = torch.empty((h, w), dtype=torch.float32)
    signed, magnitude = kernels.gradcam(_numpy(g, (c, h * w)), key.view(h * w).numpy())
    if weights_vanish(signed, magnitude):
        return key.zero_(), True
    return key, False


@functools.lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero entries of :func:`glam.engine.maps.interpolation_matrix` ``(n_out, n_in)``
    row by row: ``(index, weight)``, each ``(n_out, k)`` with ``k`` the most taps of any
    row (at most 4 for bicubic; shorter rows are padded with weight 0)."""
    m = interpolation_matrix(n_in, n_out, "cpu", torch.float32).numpy()
    nz = m != 0
    k = max(1, int(nz.sum(axis=1).max()))
    idx = np.zeros((n_out, k), dtype=np.int64)
    wts = np.zeros((n_out, k), dtype=np.float32)
    for p in range(n_out):
        cols = np.flatnonzero(nz[p])
        idx[p, : cols.size] = cols
        idx[p, cols.size :] = cols[-1] if cols.size else 0
        wts[p, : cols.size] = m[p, cols]
    return idx, wts


def resize_stack(z: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``R(z, size)`` of a stack ``(B, h, w)`` of same-size maps through the taps of the
    bicubic resize (:func:`glam.engine.maps.resize`'s matrices, their non-zero entries only);
    where the kernels do not apply, :func:`glam.engine.maps.resize` (the dense products).

    Same values as the dense ``M_h @ z @ M_w^T`` to float32 rounding (tested); 16x fewer
    multiply-adds at 64 -> 256 (on paper-size RCAN the dense products were about a tenth of
    one forward+backward: 834 key resizes per analysis).
    """
    kernels = _applies(z)
    if kernels is None or z.dim() != 3:
        return _resize_eager(z, size)
    b, h, w = (int(d) for d in z.shape)
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return z
    row_idx, row_w = _taps(h, H)
    col_idx, col_w = _taps(w, W)
    out = torch.empty((b, H, W), dtype=torch.float32)
    if b:
        kernels.resize_taps(z.detach().contiguous().numpy(), row_idx, row_w, col_idx, col_w, out.numpy())
    return out


class _Sums:
    """The running sums :func:`accumulate_keys` updates (what
    :class:`glam.engine.accumulate.KeyAccumulator` holds)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.variation: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None


class RunningSums(Protocol):
    """Anything with the three running sums (``None`` before the first key)."""

    total: torch.Tensor | None
    variation: torch.Tensor | None
    previous: torch.Tensor | None


def accumulate_keys(acc: RunningSums, resized: torch.Tensor) -> bool:
    """Add the keys ``N(z)`` of resized maps ``z`` (``(B, H, W)``, execution order) to the
    running Consensus and Variation sums of ``acc``, in one pass over the stack.

    Each key is ``max(z, 0) / max(max(z, 0))`` (0 where that maximum is 0), the division
    of :func:`glam.engine.maps.normalize_`; ``total += k_b`` and ``variation += |k_b - k_{b-1}|``
    are added in execution order for every pixel. Returns ``False`` (nothing added) where
    the kernel does not apply, or for a non-finite stack, which the eager path keeps visible.
    """
    kernels = _applies(resized)
    if kernels is None:
        return False
    b, h, w = (int(d) for d in resized.shape)
    if b == 0:
        return True
    flat = resized.contiguous().view(b, h * w)
    maxima = flat.amax(dim=1).clamp_(min=0)
    if not bool(torch.isfinite(maxima).all()):
        return False
    has_previous = acc.total is not None
    if acc.total is None or acc.variation is None or acc.previous is None:
        acc.total = torch.zeros((h, w), dtype=torch.float32)
        acc.variation = torch.zeros((h, w), dtype=torch.float32)
        acc.previous = torch.zeros((h, w), dtype=torch.float32)
    kernels.accumulate_keys(
        flat.numpy(),
        maxima.numpy(),
        acc.total.view(h * w).numpy(),
        acc.variation.view(h * w).numpy(),
        acc.previous.view(h * w).numpy(),
        has_previous,
    )
    return True
