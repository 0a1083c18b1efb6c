"""``glam sanity MODEL IMAGE``: run :func:`~glam.sanity_checks.workflow.sanity` on an image file
and archive the trained model's run with its ``sanity`` group (docs/archive.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from glam.api import prepare_image
from glam.archive.hdf5 import RunWriter, check_run_names
from glam.archive.sanity import write_sanity
from glam.errors import AnalysisError
from glam.importers.model import ImportedModel
from glam.report.sanity_figure import write_sanity_figure
from glam.sanity_checks.faithfulness import step_counts
from glam.sanity_checks.workflow import VARIANTS, SanityResult, check_choices, sanity


@dataclass
class SanityOptions:
    """Options of one ``glam sanity`` invocation (see :func:`~glam.sanity_checks.workflow.sanity`
    for their meaning); ``crop`` centre-crops the LR input to ``crop x crop`` first."""

    roi: tuple[int, int] | None = None
    window: int = 16
    hr: bool = False
    crop: int | None = None
    blocks: int | None = 8
    seed: int = 0
    methods: tuple[str, ...] = ("local", "global", "lam", "saliency")
    variants: tuple[str, ...] = ("cascading", "independent")
    baseline: str = "blur"
    topk: float = 0.05
    max_fraction: float = 0.5
    step: float = 0.01
    n_random: int = 5
    batch: int = 8
    lam_fold: int = 50
    lam_batch: int = 8
    device: str = "auto"
    overwrite: bool = False
    command_line: str = ""


    def validate(self) -> None:
        """Refuse bad options before the model is loaded (:class:`AnalysisError`)."""
        check_choices(self.methods, self.variants)
        if not self.variants:  # the CLI always randomizes
            raise AnalysisError(f"unknown randomization variant(s) []; choose from "
                                f"{', '.join(VARIANTS)}")
        if self.blocks is not None and self.blocks < 1:
            raise AnalysisError(f"--blocks {self.blocks} must be at least 1 (0: one tap per step)")
        if self.lam_fold < 1:
            raise AnalysisError(f"--lam-fold {self.lam_fold} must be at least 1")
        if self.crop is not None and self.crop < 2:
            raise AnalysisError(f"--crop {self.crop} must be at least 2 LR pixels")
        if not 0.0 < self.topk <= 1.0:
            raise AnalysisError(f"--topk {self.topk} must be a fraction in (0, 1], e.g. 0.05")
        step_counts(100, self.max_fraction, self.step)  # raises with the valid range
        for flag, value in (("--n-random", self.n_random), ("--curve-batch", self.batch),
                            ("--lam-batch", self.lam_batch)):
            if value < 1:
                raise AnalysisError(f"{flag} {value} must be at least 1")


def center_crop(lr: torch.Tensor, reference: torch.Tensor | None, size: int, scale: int,
                offset: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The central ``size x size`` of ``lr`` (and the matching part of an HR reference)."""
    h, w = int(lr.shape[-2]), int(lr.shape[-1])
    if size < 2 or size > min(h, w):
        raise AnalysisError(f"--crop {size} does not fit the {h}x{w} LR image; use 2..{min(h, w)}")
    top, left = (h - size) // 2, (w - size) // 2
    lr = lr[..., top : top + size, left : left + size]
    if reference is not None:
        if offset != (0, 0):
            reference = None  # a border-cropping model: the reference's geometry differs
        else:
            reference = reference[..., scale * top : scale * (top + size),
                                  scale * left : scale * (left + size)]
    return lr, reference


def run_sanity(model: ImportedModel, image: str | Path, archive: str | Path, name: str,
               options: SanityOptions, *, figure: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> SanityResult:
    """Run the sanity checks on one image, commit the run (with ``sanity/``) to ``archive``
    and write the figure to ``figure`` when given."""
    check_run_names(archive, [name], overwrite=options.overwrite)  # before the slow work
    prepared = prepare_image(model, image, hr=options.hr)
    lr, ref = prepared.lr, prepared.reference
    if options.crop is not None:
        c = model.conventions
        lr, ref = center_crop(lr, ref, options.crop, c.scale, c.offset)
    # before the work: one analysis at a time (its LAM, or a batch of deletion / insertion
    # images, whichever is larger: counted as a LAM batch of that size)
    from glam.engine.device import resolve_device
    from glam.memory import check_memory

    check_memory(model, int(lr.shape[-2]), int(lr.shape[-1]),
                 device=resolve_device(options.device), lam=True,
                 lam_batch=max(options.lam_batch if "lam" in options.methods else 1,
                               options.batch),
                 what="the sanity checks")
    with RunWriter(archive, name, overwrite=options.overwrite) as writer:
        res = sanity(
            model, lr, options.roi, options.window, reference=ref, methods=options.methods,
            variants=options.variants, blocks=options.blocks, seed=options.seed,
            topk=options.topk, baseline=options.baseline, max_fraction=options.max_fraction,
            step=options.step, n_random=options.n_random, batch=options.batch,
            lam_fold=options.lam_fold, lam_batch=options.lam_batch, device=options.device,
            on_layer=writer.add_layer, progress=progress,
        )
        write_sanity(writer.add_group("sanity"), res.record)
        res.result.warnings = list(res.warnings)  # the run records the sanity warnings too
        writer.finish(model, res.result, image_path=prepared.image_path,
                      image_sha256=prepared.image_sha256,
                      reference_path=prepared.reference_path if ref is not None else None,
                      image_is_hr=prepared.is_hr, command_line=options.command_line,
                      extra_attrs={"sanity": True, **({"lr_crop": options.crop}
                                                      if options.crop else {})})
    if figure is not None:
        write_sanity_figure(res.record, figure)
    return res


def format_summary(res: SanityResult, name: str, archive: str | Path) -> str:
    """The human summary of ``glam sanity``: one line per method."""
    rec = res.record
    lines = [f"run {name!r} -> {archive} ({res.seconds:.1f} s, {rec.n_taps} taps)"]
    casc = rec.randomization.get("cascading")
    ind = rec.randomization.get("independent")
    for m in rec.methods:
        parts: list[str] = []
        if casc is not None:
            k = casc.first_below(m)
            parts.append("cascading: Spearman < 0.5 after "
                         + (f"{int(casc.taps_randomized[k])}/{rec.n_taps} taps" if k >= 0
                            else "never"))
        if ind is not None:
            below = int((~(ind.similarity[m]["spearman"] >= 0.5)).sum())
            parts.append(f"independent: {below}/{len(ind.taps_randomized)} blocks < 0.5")
        if m in rec.deletion:
            parts.append(f"deletion AUC {rec.auc(m, 'deletion'):.3f}, "
                         f"insertion AUC {rec.auc(m, 'insertion'):.3f}")
        lines.append(f"  {m:9s} " + "; ".join(parts))
    lines.append(f"  random    deletion AUC {rec.auc('random', 'deletion'):.3f}, "
                 f"insertion AUC {rec.auc('random', 'insertion'):.3f}")
    lines += [f"  warning: {w}" for w in res.warnings]
    ind_ = rec.indicators
    lines.append(f"  ERF radius 50% {ind_['erf_r50']:.1f} px, 90% {ind_['erf_r90']:.1f} px; "
                 f"global Gini textured {ind_['gini_global_textured']:.3f} / flat "
                 f"{ind_['gini_global_flat']:.3f}")
    return "\n".join(lines)
