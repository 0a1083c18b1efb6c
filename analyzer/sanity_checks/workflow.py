"""``glam.sanity(...)``: does the attribution explain the model? (issue 18)

Three groups of evidence for one model, input and ROI, for GL-AM's local and global Sum,
LAM and a plain gradient saliency baseline (``|dT_ROI/dx|`` summed over channels):

1. **cascading model randomization** (Adebayo et al., NeurIPS 2018): the convolutions are
   re-initialised block by block from the output end towards the input, and after each
   step every map is computed again and compared with the trained model's map (Spearman,
   SSIM, top-k overlap); the **independent** variant re-initialises one block at a time;
2. **deletion / insertion** of LR pixels in the order of each local attribution (and of
   random orderings, mean of ``n_random`` seeds), :mod:`glam.sanity_checks.faithfulness`;
3. **indicators** (:mod:`glam.sanity_checks.indicators`): per-layer DI, effective receptive
   field radii, Gini of the global Sum inside / outside textured regions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from glam.api import Result, analyze
from glam.archive.sanity import METHODS, RandomizationRecord, SanityRecord
from glam.engine.glam import compute_glam
from glam.engine.lam import compute_lam
from glam.engine.texture import texture_roi
from glam.errors import AnalysisError, NumericalError
from glam.importers.model import ImportedModel
from glam.sanity_checks import faithfulness as faith
from glam.sanity_checks.indicators import erf_radii, layer_dis, texture_gini
from glam.sanity_checks.randomize import conv_parameters, randomized, tap_blocks
from glam.sanity_checks.similarity import similarities

VARIANTS = ("cascading", "independent")


@dataclass
class SanityResult:
    """What :func:`sanity` produced: the trained model's analysis and the record."""

    result: Result
    record: SanityRecord
    saliency: np.ndarray
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (see :meth:`SanityRecord.summary`)."""
        out = self.record.summary()
        out["seconds"] = self.seconds
        return out


def gradient_saliency(model: ImportedModel, x: torch.Tensor, roi: tuple[int, int],
                      window: int) -> np.ndarray:
    """``|dT_ROI/dx|`` summed over the input channels, divided by its maximum (LR size)."""
    z = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = model.graph(z)[0]
        (g,) = torch.autograd.grad(texture_roi(y, roi[0], roi[1], window).sum(), [z])
    if not torch.isfinite(g).all():
        raise NumericalError("the saliency gradient contains NaN/Inf; the model is numerically "
                             "broken on this input")
    s = g[0].abs().sum(dim=0)
    mx = s.max()
    return (s / mx if mx > 0 else s).detach().cpu().numpy()


def _maps(model: ImportedModel, x: torch.Tensor, roi: tuple[int, int], window: int,
          methods: Sequence[str], lam_kw: dict[str, Any]) -> dict[str, np.ndarray | None]:
    """The compared maps of the current weights; ``None`` for one that broke (NaN/Inf)."""
    out: dict[str, np.ndarray | None] = {}
    if "local" in methods or "global" in methods:
        try:
            g = compute_glam(model, x, roi[0], roi[1], window, keep_layers=False)
            out["local"], out["global"] = g.local["sum"], g.global_["sum"]
        except NumericalError:
            out["local"] = out["global"] = None
    if "lam" in methods:
        try:
            out["lam"] = compute_lam(model, x, roi[0], roi[1], window, **lam_kw).map
        except NumericalError:
            out["lam"] = None
    if "saliency" in methods:
        try:
            out["saliency"] = gradient_saliency(model, x, roi, window)
        except NumericalError:
            out["saliency"] = None
    return {m: out[m] for m in methods}


def _compare(ref: dict[str, np.ndarray], new: dict[str, np.ndarray | None], topk: float
             ) -> dict[str, dict[str, float]]:
    nan = {"spearman": float("nan"), "ssim": float("nan"), "topk": float("nan")}
    return {m: (similarities(ref[m], v, topk=topk) if v is not None and np.isfinite(v).all()
                else dict(nan)) for m, v in new.items()}


def _lr_map(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An output-size map averaged down to the LR grid (area pooling)."""
    t = torch.from_numpy(np.asarray(m, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(t, hw)[0, 0].numpy()


def check_choices(methods: Sequence[str], variants: Sequence[str]) -> None:
    """Refuse unknown (or no) methods and unknown randomization variants
    (:class:`AnalysisError`); shared by :func:`sanity` and ``glam sanity``'s option check.
    An empty list of variants passes: the API may skip randomization."""
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise AnalysisError(f"unknown sanity method(s) {bad or list(methods)}; choose from "
                            f"{', '.join(METHODS)}")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise AnalysisError(f"unknown randomization variant(s) {bad}; choose from "
                            f"{', '.join(VARIANTS)}")


def sanity(
    model: ImportedModel,
    lr: torch.Tensor,
    roi: tuple[int, int] | None = None,
    window: int = 16,
    *,
    reference: torch.Tensor | None = None,
    methods: Sequence[str] = METHODS,
    variants: Sequence[str] = VARIANTS,
    blocks: int | None = 8,
    seed: int = 0,
    topk: float = 0.05,
    baseline: str | torch.Tensor = "blur",
    max_fraction: float = 0.5,
    step: float = 0.01,
    n_random: int = 5,
    batch: int = 8,
    lam_fold: int = 50,
    lam_sigma: float = 1.2,
    lam_kernel: int = 9,
    lam_batch: int = 8,
    device: str | torch.device = "auto",
    on_layer: Callable[[Any], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SanityResult:
    """Sanity checks and faithfulness of GL-AM, LAM and gradient saliency on one input.

    Parameters
    ----------
    model, lr, roi, window, reference:
        As for :func:`glam.analyze` (the trained model's analysis is run first, with
        LAM when ``"lam"`` is among ``methods``).
    methods:
        Maps to test, a subset of ``("local", "global", "lam", "saliency")``.
    variants:
        ``"cascading"`` (blocks re-initialised from the output end, cumulatively) and/or
        ``"independent"`` (one block at a time).
    blocks:
        Taps are grouped into this many contiguous blocks, one randomization step each;
        ``None``: one tap per step.
    seed:
        Seeds the re-initialised weights and the random orderings.
    topk:
        Fraction of pixels in the top-k overlap.
    baseline:
        Deletion baseline: ``"blur"`` (LAM's kernel), ``"bicubic"`` or a tensor like ``lr``.
    max_fraction, step:
        Deletion / insertion fractions ``0, step, ..., max_fraction``.
    n_random:
        Random orderings averaged for the random baseline curve.
    batch:
        Deletion / insertion steps per model evaluation.
    lam_fold, lam_sigma, lam_kernel, lam_batch:
        LAM's parameters (a smaller fold makes each randomization step cheaper).
    device:
        As for :func:`glam.analyze`.
    on_layer:
        Streaming sink for the trained model's per-layer records (e.g. an archive writer).
    progress:
        Called with a short line after each step.

    Returns
    -------
    SanityResult

    Raises
    ------
    AnalysisError
        Unknown method or variant, bad steps, a flat ROI.
    """
    t_start = time.perf_counter()
    check_choices(methods, variants)
    if n_random < 1:
        raise AnalysisError(f"n_random {n_random} must be at least 1")
    say = progress or (lambda _msg: None)
    records: list[Any] = []

    def sink(rec: Any) -> None:
        records.append(rec)
        if on_layer is not None:
            on_layer(rec)

    result = analyze(model, lr, roi, window, reference=reference, lam="lam" in methods,
                     device=device, on_layer=sink, keep_layers=False, lam_fold=lam_fold,
                     lam_sigma=lam_sigma, lam_kernel=lam_kernel, lam_batch=lam_batch)
    roi = result.roi
    x = torch.from_numpy(result.input)[None].to(result.device)
    lam_kw = {"sigma": lam_sigma, "fold": lam_fold, "l": lam_kernel, "lam_batch": lam_batch}
    sal = gradient_saliency(model, x, roi, window)
    ref: dict[str, np.ndarray] = {"local": result.local["sum"], "global": result.global_["sum"],
                                  "saliency": sal}
    if result.lam is not None:
        ref["lam"] = result.lam.map
    ref = {m: ref[m] for m in methods}
    say(f"trained model analysed ({time.perf_counter() - t_start:.1f} s)")

    # -- 1. randomization
    params = conv_parameters(model)
    fixed = [i for i, p in enumerate(params) if not p]
    warnings = list(result.warnings)
    if fixed:
        warnings.append(
            f"{len(fixed)} tap(s) have weights computed in the graph, not stored, and are not "
            f"re-initialised: {fixed[:10]}{' ...' if len(fixed) > 10 else ''}"
        )
    groups = [g for g in tap_blocks(model.n_taps, blocks) if g]
    rand: dict[str, RandomizationRecord] = {}
    for variant in variants:
        steps = list(reversed(groups))  # from the output end towards the input
        sims: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
        n_rand: list[int] = []
        for k, block in enumerate(steps):
            taps = [i for b in steps[: k + 1] for i in b] if variant == "cascading" else block
            with randomized(model, taps, seed, params):
                new = _maps(model, x, roi, window, methods, lam_kw)
            for m, vals in _compare(ref, new, topk).items():
                for metric, v in vals.items():
                    sims[m].setdefault(metric, []).append(v)
            n_rand.append(len(taps))
            say(f"{variant} step {k + 1}/{len(steps)}: taps {block[0]}-{block[-1]} "
                + ", ".join(f"{m} {sims[m]['spearman'][-1]:.2f}" for m in methods))
        rand[variant] = RandomizationRecord(
            block_start=np.array([b[0] for b in steps], dtype=np.int64),
            block_stop=np.array([b[-1] + 1 for b in steps], dtype=np.int64),
            taps_randomized=np.array(n_rand, dtype=np.int64),
            similarity={m: {k: np.array(v) for k, v in d.items()} for m, d in sims.items()},
        )

    # -- 2. deletion / insertion (the local view: LR orderings)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    base = faith.baseline_image(x, baseline, sigma=lam_sigma, kernel=lam_kernel)
    t0 = float(faith.roi_texture(model, x, roi, window)[0])
    orders: dict[str, np.ndarray] = {}
    lr_maps = {"local": _lr_map(result.local["sum"], (h, w)), "saliency": sal}
    if result.lam is not None:
        lr_maps["lam"] = result.lam.map
    for m in ("local", "lam", "saliency"):
        if m in methods:
            orders[m] = faith.ordering(lr_maps[m])
    kw = {"max_fraction": max_fraction, "step": step, "batch": batch, "t0": t0}
    deletion: dict[str, np.ndarray] = {}
    insertion: dict[str, np.ndarray] = {}
    fractions = np.zeros(0)
    for m, order in orders.items():
        d, i = faith.curves(model, x, order, roi, window, base, **kw)
        deletion[m], insertion[m], fractions = d.values, i.values, d.fractions
    rng = np.random.default_rng(seed)
    rd, ri = [], []
    for _ in range(n_random):
        d, i = faith.curves(model, x, rng.permutation(h * w), roi, window, base, **kw)
        rd.append(d.values)
        ri.append(i.values)
        fractions = d.fractions
    deletion["random"], insertion["random"] = np.mean(rd, axis=0), np.mean(ri, axis=0)
    say("deletion / insertion done")

    # -- 3. indicators
    out_hw = (int(result.output.shape[-2]), int(result.output.shape[-1]))
    per_layer = layer_dis(records, out_hw)
    indicators = {**erf_radii(result.local["sum"], roi, window),
                  **texture_gini(result.global_["sum"], result.output),
                  "di_local": result.metrics["di_local"], "di_global": result.metrics["di_global"]}
    settings = {
        "roi_top": roi[0], "roi_left": roi[1], "window": window, "blocks": blocks or 0,
        "seed": seed, "topk": topk, "baseline": baseline if isinstance(baseline, str)
        else "tensor", "max_fraction": max_fraction, "step": step, "n_random": n_random,
        "lam_fold": lam_fold, "lam_sigma": lam_sigma, "lam_kernel": lam_kernel,
        "input_h": h, "input_w": w, "variants": list(variants),
        "reinit": "N(0, std(w)) per tensor, seed*100003+tap",
        "taps_not_reinitialised": fixed,
    }
    record = SanityRecord(
        settings=settings, n_taps=model.n_taps, methods=list(methods), randomization=rand,
        fractions=fractions, deletion=deletion, insertion=insertion, indicators=indicators,
        layers={"layer_index": per_layer["index"], "layer_di_local": per_layer["di_local"],
                "layer_di_global": per_layer["di_global"]},
    )
    return SanityResult(result=result, record=record, saliency=sal,
                        seconds=time.perf_counter() - t_start, warnings=warnings)
