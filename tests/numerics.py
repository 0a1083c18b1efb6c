"""Float comparisons of the test suite, in one place (issue 23, "the README's test command is
red on another CPU").

Two kinds of comparison, never a bare ``atol=1e-6``:

* **the same computation twice** (a rerun, another thread count of a deterministic kernel,
  a cached model, a round trip through the archive) is compared bit for bit:
  :func:`assert_same`;
* **two different computations** of one quantity (batched vs per-layer, numba vs eager
  torch, the engine vs the literal reference, float32 vs float64, two export routes, CPU vs
  CUDA) are compared with :func:`assert_close`, whose bound is
  ``ulps * eps * scale``: float32's resolution ``eps = 2**-23`` times the quantity's scale
  (by default the largest magnitude of the expected tensor; a normalised map has scale 1)
  times a count of epsilons ``ulps`` that each call states and justifies.

How the ``ulps`` were chosen: every :func:`assert_close` call appends its measured error,
in units of ``eps * scale``, to the file named by ``GLAM_NUMERICS_LOG`` (when set);
``python tests/numerics.py LOG...`` prints the worst value per call site
(``GLAM_NUMERICS_MEASURE=1`` logs without failing, to measure a new bound). Each bound is the
worst value measured on three instruction sets (AVX-512, and AVX2 and the x86-64 baseline
through :data:`ISA_ENVIRONMENTS`) times 4, rounded up to a power of 2, and at least 8 (a
comparison measured bit-identical may still round differently elsewhere); the measured
values are in the comment beside each bound. Tests that compare different computations
carry the ``numerics`` marker: ``tests/test_numerics_isa.py`` reruns them under the other
instruction sets, so a bound that holds on one CPU only fails here.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23 = 1.19e-7: float32's spacing at 1.0
EPS64 = float(np.finfo(np.float64).eps)  # 2**-52 = 2.2e-16
EPS16 = float(np.finfo(np.float16).eps)  # 2**-10 = 9.8e-4 (archived float16 layers)

#: Environment variables that make torch (ATen's vector kernels), oneDNN (convolutions),
#: MKL (matrix products) and numba (GL-AM's fused kernels) use a narrower instruction set
#: than the machine offers: ``avx2`` as on most x86-64 CI runners, ``default`` the x86-64
#: baseline (SSE; numba's ``generic`` CPU).
ISA_ENVIRONMENTS: dict[str, dict[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "NUMBA_CPU_NAME": "haswell",
    },
    "default": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "NUMBA_CPU_NAME": "generic",
    },
}


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_same(actual: Any, desired: Any, err_msg: str = "") -> None:
    """Bit-identical (NaN where NaN): the same computation run twice."""
    a, d = _array(actual), _array(desired)
    np.testing.assert_array_equal(a, d, err_msg=err_msg)


def _log(site: str, measured: float, ulps: float, eps: float) -> None:
    path = os.environ.get("GLAM_NUMERICS_LOG")
    if not path:
        return
    frame = sys._getframe(2)
    where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
    rec = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "where": where,
           "label": site, "measured": measured, "bound": ulps, "eps": eps,
           "isa": os.environ.get("ATEN_CPU_CAPABILITY", "native")}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


def assert_close(
    actual: Any,
    desired: Any,
    *,
    ulps: float,
    scale: float | None = None,
    eps: float = EPS32,
    err_msg: str = "",
) -> float:
    """``max |actual - desired| <= ulps * eps * scale``: two different float computations.

    Parameters
    ----------
    actual, desired:
        Arrays or tensors of the same shape (NaN must sit at the same places).
    ulps:
        How many ``eps * scale`` the two may differ by (measured worst case times a margin;
        the caller says where it comes from).
    scale:
        The quantity's magnitude; default ``max |desired|`` (1 for a normalised map). A
        quantity that is zero everywhere gets scale 1.
    eps:
        The resolution of the computation's float type (:data:`EPS32` or :data:`EPS64`).
    err_msg:
        Names the compared quantity in a failure.

    Returns
    -------
    float
        The measured error in units of ``eps * scale``.
    """
    a, d = _array(actual), _array(desired)
    assert a.shape == d.shape, f"{err_msg}: shapes {a.shape} and {d.shape} differ"
    nan_a, nan_d = np.isnan(a), np.isnan(d)
    assert np.array_equal(nan_a, nan_d), f"{err_msg}: NaN at different places"
    a, d = np.where(nan_a, 0.0, a), np.where(nan_d, 0.0, d)
    if scale is None:
        scale = float(np.abs(d).max()) if d.size else 1.0
    scale = scale if scale > 0 else 1.0
    err = float(np.abs(a - d).max()) if a.size else 0.0
    measured = err / (eps * scale)
    _log(err_msg, measured, ulps, eps)
    bound = ulps * eps * scale
    if os.environ.get("GLAM_NUMERICS_MEASURE") == "1":  # measuring the bounds: log only
        return measured
    assert err <= bound, (
        f"{err_msg or 'values'}: max |difference| {err:.3g} is {measured:.1f} eps x scale "
        f"{scale:.3g}, above the bound of {ulps:g} eps x scale = {bound:.3g}"
    )
    return measured


def assert_error_within(error: float, *, ulps: float, scale: float = 1.0, eps: float = EPS32,
                        label: str = "") -> float:
    """An already measured ``max |a - b|`` (an import's parity error, a map difference
    computed by the code under test) is at most ``ulps * eps * scale``; logged like
    :func:`assert_close`. Returns the error in units of ``eps * scale``."""
    measured = float(error) / (eps * scale)
    _log(label, measured, ulps, eps)
    if os.environ.get("GLAM_NUMERICS_MEASURE") == "1":
        return measured
    assert float(error) <= ulps * eps * scale, (
        f"{label or 'error'} {float(error):.3g} is {measured:.1f} eps x scale {scale:.3g}, "
        f"above the bound of {ulps:g} eps x scale = {ulps * eps * scale:.3g}"
    )
    return measured


#: GLAM.md's tolerance for two implementations of the maps (1e-4 on maps in [0, 1]), in
#: float32 epsilons: the product's own acceptance bound (engine parity, routes, CPU/CUDA),
#: not a test's choice.
GLAM_MD_ULPS = 1e-4 / EPS32


def _worst(paths: list[str]) -> None:
    """Print the worst measured error per call site over numerics logs (see module doc)."""
    worst: dict[str, dict[str, Any]] = {}
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                key = r["where"]
                if key not in worst or r["measured"] > worst[key]["measured"]:
                    worst[key] = r
    for key in sorted(worst):
        r = worst[key]
        print(f"{key:32s} worst {r['measured']:9.2f} eps (bound {r['bound']:g}) on {r['isa']:8s}"
              f" {r['test']} {r['label']}")


if __name__ == "__main__":  # pragma: no cover - a measuring aid
    _worst(sys.argv[1:])
