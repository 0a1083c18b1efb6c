"""What the HTML report (:mod:`glam.report.html`) needs from one archived run.

:class:`ReportRun` bundles the run as read back (:class:`~glam.archive.hdf5.RunData`),
its figure data (:class:`~glam.archive.figure_data.FigureData`, images and final maps)
and the layer explorer's data: for every participating layer the per-layer diffusion index
and attributed fraction of its local and global key at output size (``N(R(N(map), (H, W)))``,
the key that enters the sums, GLAM.md), and, for an evenly sampled subset of at most
``max_keys`` layers, the key at the layer's native resolution (``N(map)``). The metrics
use :mod:`glam.engine.metrics`, so the report's numbers are the engine's.

>>> from glam.archive import open_archive
>>> from glam.archive.report_data import read_report_run
>>> with open_archive("runs.h5") as ar:                        # doctest: +SKIP
...     rr = read_report_run(ar, "a", max_keys=64)
...     [(l.index, l.di_local) for l in rr.layers]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from glam.archive.figure_data import FigureData, sample_indices

if TYPE_CHECKING:
    from glam.archive.hdf5 import Archive, RunData
    from glam.archive.sanity import SanityRecord


@dataclass
class LayerView:
    """One participating layer in the explorer.

    Attributes
    ----------
    index, name, op, shape:
        The tap (execution order index, name, op, output shape).
    di_local, di_global, af_local, af_global:
        DI and attributed fraction of the local / global key at output size (``None``
        when the layer has no such map, or when GLAM.md's vanishing-weights rule made the
        key exactly 0: its DI would read 100, a value of the rule, not of the layer).
    local_native, global_native:
        ``N(map)`` at the layer's native resolution, for sampled layers only (else ``None``).
    vanish:
        ``"local"`` / ``"global"`` when GLAM.md's "Vanishing weights" rule set that key to 0.
    """

    index: int
    name: str
    op: str
    shape: list[int]
    di_local: float | None = None
    di_global: float | None = None
    af_local: float | None = None
    af_global: float | None = None
    local_native: np.ndarray | None = None
    global_native: np.ndarray | None = None
    vanish: list[str] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        """Whether the layer's native keys were read (shown as images)."""
        return self.local_native is not None or self.global_native is not None


@dataclass
class ReportRun:
    """One run as the HTML report shows it.

    Attributes
    ----------
    data:
        The run as read back.
    figure:
        Images and final maps (no per-layer keys; those are in ``layers``).
    layers:
        Every participating layer with a record, execution order.
    n_sampled:
        How many of ``layers`` carry native keys (``<= max_keys``).
    sanity:
        The run's ``glam sanity`` results, when it has them.
    masks:
        Attributed-pixel masks (``map > mean(map)``, paper section IV-D-2) of
        ``"local"`` (the local Sum) and ``"lam"`` (LAM's map at output size, when present).
    """

    data: RunData
    figure: FigureData
    layers: list[LayerView] = field(default_factory=list)
    n_sampled: int = 0
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    sanity: SanityRecord | None = None


def _n(a: np.ndarray) -> np.ndarray:
    """``N(z) = max(z, 0) / max(max(z, 0))`` (GLAM.md), zeros for an all-zero map."""
    z = np.maximum(np.nan_to_num(np.asarray(a, dtype=np.float32)), 0.0)
    top = float(z.max()) if z.size else 0.0
    return z / top if top > 0 else np.zeros_like(z)


def read_report_run(ar: Archive, name: str, *, max_keys: int = 64) -> ReportRun:
    """Read one run for the report (see the module docstring).

    Parameters
    ----------
    ar:
        An open archive.
    name:
        Run name.
    max_keys:
        Most layers whose native keys are read (evenly sampled, first and last kept).

    Returns
    -------
    ReportRun

    Raises
    ------
    ArchiveError
        When the run is not in the archive.
    """
    import torch
    from glam.archive.hdf5 import _read
    from glam.engine.glam import layer_keys
    from glam.engine.metrics import attributed_fraction, diffusion_index

    rd = ar.run(name)
    fig = ar.figure_data(rd, max_keys=0)
    H, W = rd.output.shape[-2:]
    g = ar._group(name)
    layers_g = g["layers"] if "layers" in g else {}
    part = [t for t in rd.taps if t["participating"] and str(t["index"]) in layers_g]
    chosen = {part[i]["index"] for i in sample_indices(len(part), max_keys)} if max_keys > 0 else set()
    views: list[LayerView] = []
    for t in part:
        lg = layers_g[str(t["index"])]
        v = LayerView(index=int(t["index"]), name=str(t["name"]), op=str(t["op"]),
                      shape=list(t["shape"]),
                      vanish=[f for f in ("local", "global")
                              if bool(lg.attrs.get(f"{f}_weights_vanish", False))])
        for fam in ("local", "global"):
            ds = f"{fam}_map"
            if ds not in lg:
                continue
            raw = _read(lg[ds])
            (key,) = layer_keys([torch.from_numpy(np.ascontiguousarray(raw))], (H, W))
            k = key.numpy()
            if fam not in v.vanish:
                setattr(v, f"di_{fam}", diffusion_index(k))
                setattr(v, f"af_{fam}", attributed_fraction(k))
            if v.index in chosen:
                setattr(v, f"{fam}_native", _n(raw))
        views.append(v)
    masks = {"local": rd.local["sum"] > rd.local["sum"].mean()}
    if fig.lam_map_output is not None:
        masks["lam"] = fig.lam_map_output > fig.lam_map_output.mean()
    return ReportRun(data=rd, figure=fig, layers=views,
                     n_sampled=sum(1 for v in views if v.sampled), masks=masks,
                     sanity=ar.sanity(name))
