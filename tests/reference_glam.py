"""The tests' handle on the literal GLAM.md reference (:mod:`glam.engine.reference`), plus
LAM's Gini written out once more in float64.

``reference_glam`` keeps the tuple form the tests were written against:
``(local, global, parents, y)``.
"""

from __future__ import annotations

import numpy as np
import torch
from glam.engine.reference import reference_glam as _reference_glam
from torch import fx


def reference_glam(
    graph: fx.GraphModule, x: torch.Tensor, top: int, left: int, l: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[int], np.ndarray]:
    ref = _reference_glam(graph, x, top, left, l)
    assert ref.output is not None
    return ref.local, ref.global_, ref.parents, ref.output


def reference_gini(m: np.ndarray) -> float:
    a = np.array(m, dtype=np.float64).flatten()
    if a.min() < 0:
        a -= a.min()
    a = np.sort(a + 1e-7)
    n = a.shape[0]
    idx = np.arange(1, n + 1)
    return float((np.sum((2 * idx - n - 1) * a)) / (n * np.sum(a)))
