"""Reading a batch archive across models: ``glam compare ZOO.h5 --image IMG`` (the runs of
every model on one image, for the paper's Table I and Fig. 3/4) and ``--by-model`` (per
model, DI and PSNR over the image set as mean ± std)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glam.archive.hdf5 import open_archive
from glam.errors import UserInputError
from glam.runs import format_table

#: Metrics of the per-model summary: (metric key, column title).
SUMMARY_METRICS = (
    ("di_local", "DI local"),
    ("di_global", "DI global"),
    ("psnr", "PSNR"),
    ("di_lam", "DI LAM"),
)


def _run_attrs(archive: str | Path) -> list[tuple[str, dict[str, Any], dict[str, float]]]:
    """``(run, attrs, metrics)`` of every complete run, without reading any array."""
    out = []
    with open_archive(archive) as ar:
        for name in ar.runs():
            g = ar.group(name)
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            m = g.get("metrics")
            metrics = {k: float(v) for k, v in m.attrs.items()} if m is not None else {}
            out.append((name, attrs, metrics))
    return out


def runs_for_image(archive: str | Path, image: str) -> list[str]:
    """The runs (every model, every ROI) of one image, named by file name or stem.

    Raises
    ------
    UserInputError
        When no run used that image (the message lists the images there are).
    """
    rows = _run_attrs(archive)
    want = Path(image).name
    hits = [n for n, a, _ in rows
            if want in (str(a.get("image_name", "")), Path(str(a.get("image_name", ""))).stem)]
    if not hits:
        names = sorted({str(a.get("image_name", "")) for _, a, _ in rows})
        listing = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        raise UserInputError(
            f"no run of {str(archive)!r} used image {image!r}; its images are: "
            f"{listing or '(none)'}"
        )
    return hits


def _mean_std(values: Sequence[float]) -> str:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "-"
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def model_summary(archive: str | Path) -> str:
    """Per model (``model_name`` + sha256), over its runs: DI local / global, PSNR and DI LAM
    as mean ± std (sample std; ``-`` when no run has the metric).

    Returns
    -------
    str
        A plain-text table, one row per model.

    Raises
    ------
    UserInputError
        When the archive holds no runs.
    """
    rows = _run_attrs(archive)
    if not rows:
        raise UserInputError(f"{str(archive)!r} holds no runs; run `glam batch` first")
    by: dict[tuple[str, str], list[dict[str, float]]] = {}
    images: dict[tuple[str, str], set[str]] = {}
    for _, a, m in rows:
        key = (str(a.get("model_name", "?")), str(a.get("model_sha256", ""))[:12])
        by.setdefault(key, []).append(m)
        images.setdefault(key, set()).add(str(a.get("image_sha256", a.get("image_name", ""))))
    names = [k[0] for k in by]
    table = [("model", "runs", "images", *[t for _, t in SUMMARY_METRICS])]
    for key, ms in by.items():
        label = key[0] if names.count(key[0]) == 1 else f"{key[0]} ({key[1]})"
        table.append((label, str(len(ms)), str(len(images[key])),
                      *[_mean_std([m.get(k, math.nan) for m in ms]) for k, _ in SUMMARY_METRICS]))
    return format_table(table)
