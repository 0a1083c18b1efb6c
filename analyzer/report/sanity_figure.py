"""The ``glam sanity`` figure: similarity against randomized depth and the deletion /
insertion curves, drawn from an archived :class:`~glam.archive.sanity.SanityRecord`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from glam.archive.sanity import THRESHOLD, SanityRecord
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LABELS = {"local": "GL-AM local Sum", "global": "GL-AM global Sum", "lam": "LAM",
          "saliency": "gradient saliency", "random": "random (mean)"}
COLORS = {"local": "#1f77b4", "global": "#2ca02c", "lam": "#d62728", "saliency": "#9467bd",
          "random": "#7f7f7f"}


def sanity_figure(rec: SanityRecord, metric: str = "spearman") -> Figure:
    """Randomization panels (one per variant, ``metric`` against the taps re-initialised)
    and the deletion and insertion curves, in one row."""
    variants = list(rec.randomization)
    n = len(variants) + 2
    fig = Figure(figsize=(4.0 * n, 3.4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, variant in zip(axes, variants, strict=False):
        r = rec.randomization[variant]
        cascading = variant == "cascading"
        xs = r.taps_randomized if cascading else np.arange(1, len(r.taps_randomized) + 1)
        for m, sims in r.similarity.items():
            ax.plot(xs, sims[metric], marker="o", ms=3, color=COLORS.get(m), label=LABELS.get(m, m))
        ax.axhline(THRESHOLD, color="black", lw=0.8, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # taps and blocks are counts
        ax.set_ylim(-0.2, 1.05)
        ax.set_xlabel("taps re-initialised from the output end" if cascading
                      else "block re-initialised alone (1 = output end)")
        ax.set_ylabel(f"{metric} with the trained map")
        ax.set_title(f"{variant} randomization ({rec.n_taps} taps)", fontsize=10)
        ax.legend(fontsize=7)
    for ax, curve in zip(axes[len(variants):], ("deletion", "insertion"), strict=True):
        data = rec.deletion if curve == "deletion" else rec.insertion
        for m, v in data.items():
            ax.plot(rec.fractions * 100, v, color=COLORS.get(m), ls=":" if m == "random" else "-",
                    label=f"{LABELS.get(m, m)} (AUC {rec.auc(m, curve):.3f})")
        ax.set_xlabel("LR pixels " + ("removed" if curve == "deletion" else "restored") + " (%)")
        ax.set_ylabel("T_ROI / T_ROI(input)")
        ax.set_title(f"{curve} ({'lower' if curve == 'deletion' else 'higher'} AUC is better)",
                     fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_sanity_figure(rec: SanityRecord, path: str | Path, *, dpi: int = 110) -> Path:
    """Render :func:`sanity_figure` to a PNG at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = sanity_figure(rec)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, facecolor="white", format="png")
    fig.clear()
    return path
