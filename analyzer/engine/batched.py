"""GL-AM's per-layer map work batched across layers of the same shape (the CUDA path).

The per-layer path (:mod:`glam.engine.kernels`) takes one layer at a time: on CPU a
fused numba kernel, elsewhere about 20 eager torch operations per layer, several of which
read a scalar back to the host (the vanishing-weights test, the maxima of ``N``). On CUDA
each such read waits for the GPU to drain, so a model with hundreds of layers is bound by
Python and by those round trips, not by the GPU. Here the same work is done on stacks:

* :func:`texture_and_energy`: ``dT_Global/df_j`` and ``a_j = mean_c |f_j|`` of many same-shape
  tap outputs in one set of operations;
* :class:`KeyBatcher` / :func:`gradcam_keys`: Grad-CAM keys ``A(g)`` of same-shape gradients,
  GLAM.md's vanishing-weights rule evaluated on the device (a boolean per layer, no read);
* :func:`global_layer_maps`: ``m_j = N(R(N(A(G_j)), (H_j, W_j))) * N(a_j)`` per same-shape
  group, one resize per group;
* :func:`to_host`: the per-layer results of a chunk of layers in one device-to-host copy.

The formulas are those of :mod:`glam.engine.texture` and :mod:`glam.engine.maps`
applied along a leading batch dimension, so the maps agree with the per-layer path to float32
rounding (tested on CPU, where this path is selectable with ``per_layer="batched"``).
:func:`compiled` optionally wraps the stacked functions in ``torch.compile`` and falls back
to the eager functions, with one warning, where that is not possible (no C/C++ compiler,
an inductor failure).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from glam.engine.maps import VANISHING_WEIGHTS, normalize_, resize
from glam.engine.texture import texture_global_grad

BATCH_BYTES = 512 * 2**20
"""At most this many bytes of stacked activations or gradients per batch (memory bound)."""

_COMPILE_STATE: dict[str, Any] = {"failed": None, "cache": {}}


def vanish_mask(signed: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """GLAM.md's vanishing-weights test (:func:`glam.engine.maps.weights_vanish`) on the
    device, for ``(B,)`` maxima; returns a ``(B,)`` boolean tensor.

    Compared in float64, as the per-layer test compares Python floats: ``True`` where the
    weights are float rounding (``signed <= 1e-4 * magnitude``) or ``g`` is all zeros,
    ``False`` wherever a maximum is NaN/Inf.
    """
    s, m = signed.double(), magnitude.double()
    finite = torch.isfinite(s) & torch.isfinite(m)
    return finite & ((m == 0) | (s <= VANISHING_WEIGHTS * m))


def _gradcam_stack(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``|sum_c alpha_c g_c|`` ``(B, H*W)`` and vanished flags of a ``(B, C, H*W)`` stack."""
    alpha = flat.mean(dim=2)
    signed = alpha.abs().amax(dim=1)
    magnitude = flat.abs().mean(dim=2).amax(dim=1)
    vanished = vanish_mask(signed, magnitude)
    key = torch.bmm(alpha[:, None, :], flat)[:, 0].abs_()
    return torch.where(vanished[:, None], torch.zeros_like(key), key), vanished


def gradcam_keys(grads: Sequence[torch.Tensor], *, compile: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``A(g)`` (GLAM.md) of same-shape gradients ``(C, H, W)`` (or ``(1, C, H, W)``).

    Returns
    -------
    keys : torch.Tensor
        ``(B, H, W)``; exactly 0 for a layer whose weights vanish.
    vanished : torch.Tensor
        ``(B,)`` booleans, on the gradients' device (nothing is read back).
    """
    c, h, w = (int(d) for d in grads[0].shape[-3:])
    flat = torch.stack([g.reshape(c, h * w) for g in grads])
    keys, vanished = compiled("gradcam", _gradcam_stack, compile)(flat)
    return keys.reshape(len(grads), h, w), vanished


def _texture_and_energy_stack(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = int(stack.shape[1])
    return texture_global_grad(stack), stack.abs().sum(dim=1).div_(c)


def texture_and_energy(
    taps: Sequence[torch.Tensor], *, compile: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dT_Global/df`` ``(B, C, H, W)`` and ``a = mean_c |f|`` ``(B, H, W)`` of same-shape tap
    outputs ``f`` (each ``1 x C x H x W``), as :func:`glam.engine.texture.texture_global_grad`
    computes them one at a time."""
    stack = torch.cat([t.detach() for t in taps])
    return compiled("texture", _texture_and_energy_stack, compile)(stack)


def global_layer_maps(
    raws: Sequence[torch.Tensor], energies: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``m_j = N(R(N(A(G_j)), (H_j, W_j))) * N(a_j)`` for each layer (GLAM.md, global map).

    ``raws[b]`` is ``A(G_j) >= 0`` at the parent's resolution, ``energies[b]`` is ``a_j``
    at ``j``'s; layers with the same pair of shapes are computed together. ``N(N(z)) = N(z)``
    exactly for ``z >= 0``, so ``N`` after the resize is only applied when the sizes differ,
    as on the per-layer path.
    """
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for b, (r, a) in enumerate(zip(raws, energies, strict=True)):
        groups.setdefault((tuple(r.shape), tuple(a.shape)), []).append(b)
    out: list[torch.Tensor | None] = [None] * len(raws)
    for (r_shape, a_shape), idx in groups.items():
        m = normalize_(torch.stack([raws[b] for b in idx]))
        if r_shape != a_shape:
            m = normalize_(resize(m, a_shape))
        m.mul_(normalize_(torch.stack([energies[b] for b in idx])))
        for k, b in enumerate(idx):
            out[b] = m[k]
    return [t for t in out if t is not None]


def batches(items: Sequence[int], nbytes: Callable[[int], int], max_items: int) -> list[list[int]]:
    """Split ``items`` (in order) into runs of at most ``max_items`` items and
    :data:`BATCH_BYTES` bytes (a single larger item is a run of its own)."""
    runs: list[list[int]] = []
    run: list[int] = []
    size = 0
    for i in items:
        b = nbytes(i)
        if run and (len(run) >= max_items or size + b > BATCH_BYTES):
            runs.append(run)
            run, size = [], 0
        run.append(i)
        size += b
    if run:
        runs.append(run)
    return runs


class KeyBatcher:
    """Grad-CAM keys of gradients that arrive one at a time (the local backward pass),
    computed in same-shape batches of up to ``max_items`` gradients.

    Attributes
    ----------
    keys : dict[int, torch.Tensor]
        ``A(g_i)`` per index, filled as batches are flushed.
    vanished : dict[int, torch.Tensor]
        0-d boolean device tensors: the vanishing-weights rule set ``A(g_i)`` to 0.
    """

    def __init__(self, max_items: int, *, compile: bool = False) -> None:
        self.max_items = max_items
        self.compile = compile
        self.keys: dict[int, torch.Tensor] = {}
        self.vanished: dict[int, torch.Tensor] = {}
        self._pending: dict[tuple[int, ...], list[tuple[int, torch.Tensor, bool]]] = {}
        self._bytes: dict[tuple[int, ...], int] = {}
        self._nonzero: list[torch.Tensor] = []

    def add(self, i: int, g: torch.Tensor, participating: bool) -> None:
        """Queue ``g_i`` (``C x H x W``); ``participating`` taps count for :meth:`depends`."""
        shape = tuple(int(d) for d in g.shape[-3:])
        queue = self._pending.setdefault(shape, [])
        queue.append((i, g, participating))
        self._bytes[shape] = self._bytes.get(shape, 0) + g.numel() * g.element_size()
        if len(queue) >= self.max_items or self._bytes[shape] >= BATCH_BYTES:
            self._flush(shape)

    def _flush(self, shape: tuple[int, ...]) -> None:
        queue = self._pending.pop(shape, [])
        self._bytes.pop(shape, None)
        if not queue:
            return
        keys, vanished = gradcam_keys([g for _, g, _ in queue], compile=self.compile)
        part = [g for _, g, p in queue if p]
        if part:
            self._nonzero.append(torch.stack([g.reshape(-1) for g in part]).ne(0).any())
        for k, (i, _, _) in enumerate(queue):
            self.keys[i] = keys[k]
            self.vanished[i] = vanished[k]

    def flush(self) -> None:
        """Compute the keys of every queued gradient."""
        for shape in list(self._pending):
            self._flush(shape)

    def depends(self, device: torch.device) -> torch.Tensor:
        """0-d boolean tensor on ``device``: some participating gradient is non-zero (read
        once, by the caller)."""
        if not self._nonzero:
            return torch.zeros((), dtype=torch.bool, device=device)
        return torch.stack(self._nonzero).any()


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Each tensor as a numpy array on the host, through one copy of their concatenation.

    Float tensors come back as float32, boolean ones as bool; on CPU this is a copy only.
    """
    if not tensors:
        return []
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors]).cpu().numpy()
    out: list[np.ndarray] = []
    start = 0
    for t in tensors:
        n = t.numel()
        arr = flat[start : start + n].reshape(tuple(t.shape))
        out.append(arr > 0.5 if t.dtype == torch.bool else arr)
        start += n
    return out


def compiler_available() -> bool:
    """Whether a C/C++ compiler is on ``PATH`` (inductor needs one: C++ kernels on CPU,
    Triton's launchers on CUDA)."""
    return any(shutil.which(cc) for cc in ("cc", "gcc", "g++", "clang", "c++"))


def compiled(name: str, fn: Callable[..., Any], enable: bool) -> Callable[..., Any]:
    """``fn`` through ``torch.compile(dynamic=True)`` when ``enable``, else ``fn``.

    Falls back to ``fn`` (warning once per process) where no compiler is available or
    compilation fails; the eager function computes the same values.
    """
    if not enable:
        return fn
    state = _COMPILE_STATE
    if state["failed"] is None and not compiler_available():
        state["failed"] = "no C/C++ compiler on PATH"
        _warn_fallback(state["failed"])
    if state["failed"] is not None:
        return fn
    cache: dict[str, Callable[..., Any]] = state["cache"]
    if name not in cache:
        cache[name] = torch.compile(fn, dynamic=True)

    def run(*args: Any) -> Any:
        if state["failed"] is not None:
            return fn(*args)
        try:
            return cache[name](*args)
        except Exception as exc:  # noqa: BLE001 - any inductor/compiler failure: eager
            state["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            _warn_fallback(state["failed"])
            return fn(*args)

    return run


def _warn_fallback(reason: str) -> None:
    warnings.warn(
        f"torch.compile is not usable here ({reason}); GL-AM's batched per-layer work runs "
        "eagerly (same maps, slower on CUDA)",
        RuntimeWarning,
        stacklevel=3,
    )


def reset_compile_state() -> None:
    """Forget compiled functions and any earlier compile failure (tests)."""
    _COMPILE_STATE["failed"] = None
    _COMPILE_STATE["cache"] = {}
