"""The ``sanity`` group of an archived run (``glam sanity``; layout in docs/archive.md).

:class:`SanityRecord` is what the sanity check hands to the archive and what the report
reads back: plain arrays and scalars, so that neither room needs the other's code.
:func:`write_sanity` writes one into an HDF5 group (every array with a Fletcher32
checksum, like the rest of the run); :func:`read_sanity` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
from glam.errors import ArchiveError

SANITY_VERSION = 1
METHODS = ("local", "global", "lam", "saliency")
METRICS = ("spearman", "ssim", "topk")
THRESHOLD = 0.5


@dataclass
class RandomizationRecord:
    """One randomization variant (``cascading`` or ``independent``), one entry per step.

    Attributes
    ----------
    block_start, block_stop:
        The taps ``[start, stop)`` re-initialised *at* this step (cascading: together with
        every later block; independent: alone).
    taps_randomized:
        How many taps are re-initialised in the model of this step.
    similarity:
        ``{method: {metric: values per step}}`` against the trained model's map.
    """

    block_start: np.ndarray
    block_stop: np.ndarray
    taps_randomized: np.ndarray
    similarity: dict[str, dict[str, np.ndarray]]

    def first_below(self, method: str, metric: str = "spearman",
                    threshold: float = THRESHOLD) -> int:
        """Index of the first step whose similarity is below ``threshold`` (NaN counts as
        below: the map broke down), or -1 when it never falls below."""
        v = self.similarity[method][metric]
        below = np.flatnonzero(~(v >= threshold))
        return int(below[0]) if below.size else -1


@dataclass
class SanityRecord:
    """Everything ``glam sanity`` measured for one run."""

    settings: dict[str, Any]
    n_taps: int
    methods: list[str]
    randomization: dict[str, RandomizationRecord]
    fractions: np.ndarray
    deletion: dict[str, np.ndarray]
    insertion: dict[str, np.ndarray]
    indicators: dict[str, float]
    layers: dict[str, np.ndarray] = field(default_factory=dict)

    def auc(self, method: str, curve: str) -> float:
        """Trapezoidal AUC of a deletion / insertion curve, divided by the fraction span."""
        v = (self.deletion if curve == "deletion" else self.insertion)[method]
        f = np.asarray(self.fractions, dtype=np.float64)
        span = float(f[-1] - f[0]) or 1.0
        return float(np.sum((v[1:] + v[:-1]) * np.diff(f)) / 2.0 / span)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays but the per-step similarities' thresholds)."""
        rand: dict[str, Any] = {}
        for variant, r in self.randomization.items():
            per: dict[str, Any] = {}
            for m in r.similarity:
                per[m] = {}
                for metric in r.similarity[m]:
                    k = r.first_below(m, metric)
                    per[m][metric] = {
                        "first_below_step": k,
                        "taps_randomized": int(r.taps_randomized[k]) if k >= 0 else None,
                        "final": _num(r.similarity[m][metric][-1]) if len(r.taps_randomized)
                        else None,
                        "min": _num(np.nanmin(r.similarity[m][metric]))
                        if np.isfinite(r.similarity[m][metric]).any() else None,
                    }
                if variant == "independent":
                    v = r.similarity[m]["spearman"]
                    per[m]["blocks_below"] = int(np.sum(~(v >= THRESHOLD)))
            rand[variant] = {"steps": int(len(r.taps_randomized)), "methods": per}
        faith = {m: {"deletion_auc": self.auc(m, "deletion"),
                     "insertion_auc": self.auc(m, "insertion")} for m in self.deletion}
        return {
            "sanity_version": SANITY_VERSION,
            "settings": {k: _py(v) for k, v in self.settings.items()},
            "n_taps": self.n_taps,
            "threshold": THRESHOLD,
            "randomization": rand,
            "faithfulness": faith,
            "indicators": {k: _num(v) for k, v in self.indicators.items()},
            "layers": {k: [_num(x) for x in np.asarray(v).tolist()] for k, v in self.layers.items()},
        }


def _num(v: Any) -> float | None:
    f = float(v)
    return f if np.isfinite(f) else None


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_py(x) for x in v]
    return v


def _ds(g: h5py.Group, name: str, data: np.ndarray) -> None:
    a = np.asarray(data)
    kwargs: dict[str, Any] = {"chunks": True, "fletcher32": True} if a.size > 0 else {}
    g.create_dataset(name, data=a, **kwargs)


def write_sanity(group: h5py.Group, rec: SanityRecord) -> None:
    """Write ``rec`` into the (empty) group ``group`` (the run's ``sanity``)."""
    group.attrs["sanity_version"] = np.int64(SANITY_VERSION)
    group.attrs["settings"] = json.dumps({k: _py(v) for k, v in rec.settings.items()},
                                         sort_keys=True)
    group.attrs["n_taps"] = np.int64(rec.n_taps)
    group.attrs["methods"] = json.dumps(list(rec.methods))
    rg = group.create_group("randomization", track_order=True)
    for variant, r in rec.randomization.items():
        vg = rg.create_group(variant, track_order=True)
        _ds(vg, "block_start", r.block_start.astype(np.int64))
        _ds(vg, "block_stop", r.block_stop.astype(np.int64))
        _ds(vg, "taps_randomized", r.taps_randomized.astype(np.int64))
        for m, metrics in r.similarity.items():
            mg = vg.create_group(m, track_order=True)
            for metric, v in metrics.items():
                _ds(mg, metric, np.asarray(v, dtype=np.float64))
                mg.attrs[f"first_below_{metric}"] = np.int64(r.first_below(m, metric))
    fg = group.create_group("faithfulness", track_order=True)
    _ds(fg, "fractions", np.asarray(rec.fractions, dtype=np.float64))
    for m in rec.deletion:
        mg = fg.create_group(m, track_order=True)
        _ds(mg, "deletion", np.asarray(rec.deletion[m], dtype=np.float64))
        _ds(mg, "insertion", np.asarray(rec.insertion[m], dtype=np.float64))
        mg.attrs["deletion_auc"] = rec.auc(m, "deletion")
        mg.attrs["insertion_auc"] = rec.auc(m, "insertion")
    ig = group.create_group("indicators", track_order=True)
    for k, v in rec.indicators.items():
        ig.attrs[k] = float(v)
    for k, v in rec.layers.items():
        _ds(ig, k, np.asarray(v))


def read_sanity(run: h5py.Group) -> SanityRecord | None:
    """The run's ``sanity`` group as a :class:`SanityRecord`, or ``None`` when it has none.

    Raises
    ------
    ArchiveError
        When the group is there but unreadable or of a newer layout.
    """
    if "sanity" not in run:
        return None
    g = run["sanity"]
    try:
        version = int(g.attrs["sanity_version"])
        if version > SANITY_VERSION:
            raise ArchiveError(
                f"the run's sanity group has layout {version}, this glam reads up to "
                f"{SANITY_VERSION}; upgrade glam"
            )
        rand = {}
        for variant, vg in g["randomization"].items():
            sim = {m: {metric: vg[m][metric][()] for metric in vg[m]}
                   for m in vg if isinstance(vg[m], h5py.Group)}
            rand[variant] = RandomizationRecord(
                block_start=vg["block_start"][()], block_stop=vg["block_stop"][()],
                taps_randomized=vg["taps_randomized"][()], similarity=sim)
        fg = g["faithfulness"]
        methods = [m for m in fg if isinstance(fg[m], h5py.Group)]
        ig = g["indicators"]
        return SanityRecord(
            settings=json.loads(str(g.attrs["settings"])),
            n_taps=int(g.attrs["n_taps"]),
            methods=list(json.loads(str(g.attrs["methods"]))),
            randomization=rand,
            fractions=fg["fractions"][()],
            deletion={m: fg[m]["deletion"][()] for m in methods},
            insertion={m: fg[m]["insertion"][()] for m in methods},
            indicators={k: float(v) for k, v in ig.attrs.items()},
            layers={k: ig[k][()] for k in ig},
        )
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise ArchiveError(f"the run's sanity group is damaged ({exc}); run `glam sanity` "
                           "again") from None
