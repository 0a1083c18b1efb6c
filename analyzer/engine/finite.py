"""Finiteness checks of GL-AM's outputs and gradients (one host read for many maps)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from glam.errors import NumericalError


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`~glam.errors.NumericalError` naming ``what`` if ``t`` has a NaN/Inf."""
    if not torch.isfinite(t).all():
        raise NumericalError(
            f"{what} contains NaN or Inf; the model or input is numerically broken "
            "(check the input range with --input-range)"
        )


def check_all_finite(maps: Sequence[torch.Tensor], what: Sequence[str]) -> None:
    """One finiteness check for many maps (a NaN/Inf gradient makes its Grad-CAM map
    non-finite); names the first offending map."""
    if not maps:
        return
    sums = torch.stack([m.sum() for m in maps])
    if not bool(torch.isfinite(sums).all()):
        first = int((~torch.isfinite(sums)).nonzero()[0, 0])
        check_finite(maps[first] * float("nan"), what[first])
