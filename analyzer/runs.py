"""Orchestration behind ``glam analyze`` / ``glam demo``: model + images -> analyses -> archive.

>>> import glam.importers
>>> from glam.runs import AnalyzeOptions, analyze_images
>>> model = glam.importers.load("model.onnx")                                    # doctest: +SKIP
>>> summaries = analyze_images(model, ["img.png"], "glam-runs.h5",
...                            AnalyzeOptions(hr=True, lam=True))           # doctest: +SKIP

One module on purpose (over 600 lines): ``analyze``, ``baseline`` and ``demo`` share its
per-image loop, run naming and summaries; splitting them would spread one workflow over
three files.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from glam.archive.hdf5 import STORE_DTYPES, RunWriter, StoreDtype, open_archive
from glam.errors import AnalysisError, EngineParityError, MissingDependencyError, UserInputError
from glam.progress import PhaseLog
from glam.resume import ATTR as RESUME_ATTR
from glam.resume import complete_runs_to_skip, options_key

if TYPE_CHECKING:  # torch-free at import: `glam ls` / `show` use this module's tables
    from glam.engine.glam import StoreMode
    from glam.importers.model import ImportedModel

DEFAULT_ARCHIVE = "glam-runs.h5"


@dataclass
class AnalyzeOptions:
    """Options of one ``glam analyze`` invocation (shared by every image).

    Attributes
    ----------
    run:
        Run name; with several images the image stem is appended (``NAME__stem``).
    roi:
        ``(top, left)`` in output pixels, or ``None`` for the output centre.
    window:
        ROI window.
    hr:
        The images are HR references (LR = bicubic downscale).
    reference:
        An HR reference for a single LR image.
    reference_dir:
        A directory of HR references: each LR image is paired with the file of the same
        name, or of the name with its ``LR`` token replaced by ``HR`` (``img_001_LR.png`` ->
        ``img_001_HR.png``), see :func:`pair_images`.
    lam, lam_fold, lam_sigma, lam_kernel, lam_batch:
        LAM and its path options.
    store, store_dtype:
        What per-layer data to archive and in which float type.
    device:
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    overwrite:
        Replace existing runs of the same name.
    figures:
        Directory for per-run figures (``DIR/<run>/``), or ``None``.
    baseline:
        Mark runs as baselines.
    command_line:
        Recorded in each run's provenance.
    progress:
        Show LAM's progress bar.
    verify:
        Also run the literal GLAM.md reference and record the engine's error
        (``engine_parity``); a run above 1e-4 is archived, then reported as an error.
    max_pixels:
        Largest LR image (pixels) to analyse; ``None``: :data:`DEFAULT_MAX_PIXELS`.
        Larger images are refused before any work, with the analysis' estimated memory.
    import_options:
        The model import's overrides (``--in-channels``, ``--input-range``, ...), recorded
        with each run so that a rerun resumes only runs made the same way
        (:mod:`glam.resume`).
    figure_format:
        ``png``, ``pdf`` or ``svg`` (the matplotlib figures; overlays are always PNG).
    figure_scale, figure_gamma:
        Display scale of the figures' maps (``linear``, ``gamma`` with its exponent, ``log``).
    """

    run: str | None = None
    roi: tuple[int, int] | None = None
    window: int = 16
    hr: bool = False
    reference: str | Path | None = None
    reference_dir: str | Path | None = None
    lam: bool = False
    lam_fold: int = 50
    lam_sigma: float = 1.2
    lam_kernel: int = 9
    lam_batch: int = 8
    store: StoreMode = "maps"
    store_dtype: StoreDtype = "float32"
    device: str = "auto"
    overwrite: bool = False
    figures: str | Path | None = None
    baseline: bool = False
    command_line: str = ""
    progress: bool = False
    verify: bool = False
    max_pixels: int | None = None
    import_options: dict[str, Any] = field(default_factory=dict)
    figure_format: str = "png"
    figure_scale: str = "linear"
    figure_gamma: float = 0.5

    def validate(self) -> None:
        """Reject bad option values before any work is done.

        Raises
        ------
        AnalysisError, UserInputError
        """
        if self.window < 2:
            raise AnalysisError(
                f"window {self.window} is too small; use a window of at least 2 pixels"
            )
        if self.roi is not None and (self.roi[0] < 0 or self.roi[1] < 0):
            raise AnalysisError(f"ROI {self.roi[0]},{self.roi[1]} is negative; use TOP,LEFT >= 0")
        if self.hr and self.reference is not None:
            raise UserInputError("pass either --hr or --reference HR.png, not both")
        if self.reference_dir is not None:
            if self.hr or self.reference is not None:
                raise UserInputError(
                    "--reference-dir pairs LR images with HR files; do not combine it with "
                    "--hr or --reference"
                )
            if not Path(self.reference_dir).is_dir():
                raise UserInputError(
                    f"--reference-dir {str(self.reference_dir)!r} is not a directory; pass the "
                    "folder that holds the HR images"
                )
        if self.lam_fold < 1:
            raise AnalysisError(f"--lam-fold {self.lam_fold} must be at least 1")
        if self.lam_batch < 1:
            raise AnalysisError(f"--lam-batch {self.lam_batch} must be at least 1")
        if self.lam_kernel < 1:
            raise AnalysisError(f"--lam-kernel {self.lam_kernel} must be at least 1")
        if self.lam_kernel > MAX_LAM_KERNEL:
            raise AnalysisError(
                f"--lam-kernel {self.lam_kernel} is too large (at most {MAX_LAM_KERNEL}; LAM's "
                "default is 9): its blur kernels would not fit in memory"
            )
        if not (math.isfinite(self.lam_sigma) and self.lam_sigma > 0):
            raise AnalysisError(
                f"--lam-sigma {self.lam_sigma!r} must be a finite number > 0 (LAM's default "
                "is 1.2); 0, negative or NaN blur gives a meaningless baseline"
            )
        if self.max_pixels is not None and self.max_pixels < 1:
            raise AnalysisError(f"--max-pixels {self.max_pixels} must be at least 1")
        if self.store not in ("maps", "tensors"):
            raise UserInputError(f"store mode {self.store!r} is not supported; use maps or tensors")
        if self.store_dtype not in STORE_DTYPES:
            raise UserInputError(
                f"store dtype {self.store_dtype!r} is not supported; use float32 or float16"
            )
        from glam.report.views import FIGURE_FORMATS, Display

        Display(self.figure_scale, self.figure_gamma)  # type: ignore[arg-type]
        if self.figure_format not in FIGURE_FORMATS:
            raise UserInputError(
                f"--figure-format {self.figure_format!r} is not supported; use one of "
                f"{', '.join(FIGURE_FORMATS)}"
            )


#: Largest accepted ``--lam-kernel`` (LAM's blur kernel size).
MAX_LAM_KERNEL = 255
#: Default largest LR image, in pixels (``--max-pixels``): 2048 x 2048.
DEFAULT_MAX_PIXELS = 2048 * 2048


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"image {str(p)!r} does not exist; pass an existing image file")
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # header only; the limit below is glam's own
    try:
        with Image.open(p) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserInputError(f"{str(p)!r} is not a readable image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_image_files(paired: ImagePairs) -> None:
    """Read every image's and reference's header (cheap) before the model import, so that a
    missing or unreadable file is reported before seconds of waiting.

    Raises
    ------
    UserInputError
        Naming the first file that is missing or not an image.
    """
    for f in [*paired.files, *(r for r in paired.references if r is not None)]:
        image_size(f)


def check_image_sizes(model: ImportedModel, files: Sequence[Path], options: AnalyzeOptions) -> None:
    """Refuse, before any work (exit 2), images above the pixel limit and images whose
    analysis would not fit the memory available (:func:`glam.memory.check_memory`: the
    estimate against the cgroup limit, ``MemAvailable`` or the GPU's free memory).

    Raises
    ------
    AnalysisError
        Above ``--max-pixels``, with the estimated memory.
    InsufficientMemoryError
        The estimate does not fit; names the estimate, the memory available and the options
        that would fit.
    """
    from glam.engine.device import resolve_device
    from glam.memory import check_memory, estimate_memory

    limit = options.max_pixels or DEFAULT_MAX_PIXELS
    s = max(int(model.conventions.scale), 1)
    device = resolve_device(options.device)
    checked: set[tuple[int, int]] = set()
    for f in files:
        w, h = image_size(f)
        lh, lw = (h // s, w // s) if options.hr else (h, w)
        lr = lh * lw
        if lr > limit:
            est = estimate_memory(model, lh, lw, lam=options.lam, lam_batch=options.lam_batch,
                                  store=options.store, verify=options.verify)
            raise AnalysisError(
                f"image {str(f)!r} is {w}x{h} ({lr:,} LR pixels), above the limit of "
                f"{limit:,}; its analysis would need about {est.describe()}; "
                f"crop or downscale it, or pass --max-pixels {lr} to try anyway"
            )
        if (lh, lw) in checked:
            continue
        checked.add((lh, lw))
        if model.conventions.fixed_size is None:  # a size the graph cannot run: its own error
            from glam.importers.size_rule import check_input_size

            check_input_size(model.metadata.get("input_multiple"), lh, lw)
        check_memory(model, lh, lw, device=device, lam=options.lam,
                     lam_batch=options.lam_batch, store=options.store, verify=options.verify,
                     what=f"the analysis of {Path(f).name}")


@dataclass
class RunSummary:
    """What one analysed image produced (also the ``--json`` line of ``glam analyze``)."""

    run: str
    archive: str
    model: str
    image: str
    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    engine_parity: dict[str, Any] | None = None
    run_parity: dict[str, Any] | None = None  # the output against the reference on this input
    skipped: bool = False  # already complete in the archive (a resumed invocation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats become ``None``)."""
        return {
            "schema_version": 1,
            "run": self.run,
            "archive": self.archive,
            "model": self.model,
            "image": self.image,
            "metrics": {k: finite_or_none(v) for k, v in self.metrics.items()},
            "warnings": list(self.warnings),
            "figures": list(self.figures),
            **({"engine_parity": self.engine_parity} if self.engine_parity is not None else {}),
            **({"run_parity": self.run_parity} if self.run_parity is not None else {}),
            **({"skipped": True} if self.skipped else {}),
        }


def finite_or_none(v: Any) -> Any:
    """``None`` for NaN/Inf floats (JSON has no infinity), the value otherwise."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def parse_roi(text: str | None) -> tuple[int, int] | None:
    """Parse ``"TOP,LEFT"``.

    Raises
    ------
    AnalysisError
        When the text is not two comma-separated integers.
    """
    if text is None or text == "":
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise AnalysisError(
            f"--roi {text!r} is not TOP,LEFT (two integers in output pixels, e.g. --roi 40,64)"
        ) from None


def sanitize_name(text: str) -> str:
    """Make ``text`` usable as one HDF5 name: ``/`` and whitespace become ``_``."""
    out = "".join("_" if (ch == "/" or ch == "\\" or ch.isspace()) else ch for ch in text)
    return out.lstrip(".") or "run"


def default_run_name(model_path: str | Path, image_path: str | Path) -> str:
    """``<model stem>__<image stem>``, e.g. ``rcan_small_x2.legacy__astronaut_hr``."""
    return sanitize_name(f"{Path(model_path).stem}__{Path(image_path).stem}")


def expand_images(paths: Sequence[str | Path]) -> list[Path]:
    """Every image named (directories expand to the images in them, sorted).

    Raises
    ------
    UserInputError
        For a missing path or a directory without images.
    """
    if not paths:
        raise UserInputError("no image given; pass an image file or a directory of images")
    out: list[Path] = []
    for p in paths:
        q = Path(p)
        if not q.exists():
            raise UserInputError(f"image {str(q)!r} does not exist; pass an existing image or directory")
        from glam.images import list_images

        out.extend(list_images(q))
    return out


_LR_HR_TOKEN = re.compile(r"(?i)(?<![A-Za-z0-9])(LR|HR)(?![A-Za-z])")


def _token_partner(stem: str, want: str) -> tuple[str, str] | None:
    """``(own token, partner stem)`` when ``stem`` holds an ``LR``/``HR`` token (the last
    one, delimited by non-letters: ``img_001_SRF_4_LR``, ``baby_HR``, ``lr-01``)."""
    found = list(_LR_HR_TOKEN.finditer(stem))
    if not found:
        return None
    m = found[-1]
    tok = m.group(1)
    other = "HR" if tok.upper() == "LR" else "LR"
    other = other if tok.isupper() else other.lower()
    if tok.upper() != want:
        return None
    return tok.upper(), stem[: m.start(1)] + other + stem[m.end(1) :]


@dataclass
class ImagePairs:
    """The images to analyse and their HR references (see :func:`pair_images`)."""

    files: list[Path]
    references: list[Path | None]
    note: str | None = None


def pair_images(images: Sequence[str | Path], options: AnalyzeOptions) -> ImagePairs:
    """Expand ``images`` and pair LR images with their HR references.

    * ``--reference-dir DIR``: every LR image needs a file in ``DIR`` named like it with its
      ``LR`` token replaced by ``HR`` (``img_001_SRF_4_LR.png`` -> ``img_001_SRF_4_HR.png``,
      tried first), or with its name, or its stem with any image suffix; a missing one is
      an error.
    * Otherwise, when the images themselves hold ``*_LR`` / ``*_HR`` pairs (a benchmark
      folder such as Set5's ``image_SRF_4``), each LR image is analysed against its HR
      partner and the HR partners are not analysed as LR inputs; with ``--hr`` the HR
      images are analysed (LR = their bicubic downscale) and their LR partners skipped.
      Images without a partner are analysed as before.

    Raises
    ------
    UserInputError
        A missing path, a directory without images, or an LR image without its HR file in
        ``--reference-dir``.
    """
    files = expand_images(images)
    if options.reference_dir is not None:
        d = Path(options.reference_dir)
        refs: list[Path | None] = []
        for f in files:
            # the LR -> HR name first: a benchmark folder may hold both (Set5's image_SRF_4)
            partner = _token_partner(f.stem, "LR")
            tried = []
            if partner is not None:
                tried += [d / (partner[1] + sfx) for sfx in (f.suffix, *IMAGE_SUFFIXES_ANY)]
            tried.append(d / f.name)
            tried += [d / (f.stem + sfx) for sfx in IMAGE_SUFFIXES_ANY if sfx != f.suffix]
            hit = next((t for t in tried if t.is_file()), None)
            if hit is None:
                want = [f.name, f.stem + ".*"]
                if partner is not None:
                    want.append(partner[1] + ".*")
                raise UserInputError(
                    f"no HR reference for {f.name!r} in --reference-dir {str(d)!r} (looked for "
                    f"{', '.join(want)}); name the HR file like the LR one, or like it with its "
                    "LR token replaced by HR"
                )
            refs.append(hit)
        return ImagePairs(files, refs, f"paired {len(files)} image(s) with HR files in {d}")
    by_name = {(f.parent, f.stem): f for f in files}
    pairs: dict[Path, Path] = {}
    for f in files:
        partner = _token_partner(f.stem, "LR")
        if partner is not None and (f.parent, partner[1]) in by_name:
            pairs[f] = by_name[(f.parent, partner[1])]
    if not pairs:
        return ImagePairs(files, [None] * len(files))
    if options.reference is not None:
        raise UserInputError(
            "--reference names one HR image but the images hold *_LR/*_HR pairs; drop "
            "--reference (the pairs are used)"
        )
    hr_of = set(pairs.values())
    if options.hr:
        kept = [f for f in files if f not in pairs]
        return ImagePairs(kept, [None] * len(kept),
                          f"--hr: analysing the HR images; skipped {len(pairs)} LR partner(s)")
    kept = [f for f in files if f not in hr_of]
    return ImagePairs(kept, [pairs.get(f) for f in kept],
                      f"paired {len(pairs)} *_LR image(s) with their *_HR reference(s)")


#: Suffixes tried for a reference's stem (lower and upper case).
IMAGE_SUFFIXES_ANY = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp",
                      ".PNG", ".JPG", ".JPEG", ".BMP", ".TIF", ".TIFF", ".WEBP")


def run_names(
    model_path: str | Path, images: Sequence[Path], run: str | None
) -> list[str]:
    """Run names for ``images``: default names, ``run`` for one image, ``run__stem`` for many."""
    if run is None:
        return [default_run_name(model_path, im) for im in images]
    if "/" in run:
        raise UserInputError(
            f"--run {run!r} contains '/'; a run name is one HDF5 name, e.g. {sanitize_name(run)!r}"
        )
    if len(images) == 1:
        return [run]
    return [f"{run}__{sanitize_name(Path(im).stem)}" for im in images]


def _crop_rgb(lr_rgb: Any, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    from glam.images import rgb_float

    arr = rgb_float(lr_rgb)
    if crop is not None:
        t, l_, h, w = crop
        arr = arr[t : t + h, l_ : l_ + w]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def analyze_one(
    model: ImportedModel,
    image: str | Path,
    archive: str | Path,
    name: str,
    options: AnalyzeOptions,
    *,
    on_layer: Callable[[Any], None] | None = None,
    reference: str | Path | None = None,
    log: PhaseLog | None = None,
) -> RunSummary:
    """Analyse one image and commit the run to the archive.

    Per-layer records are streamed to the archive writer as the engine produces them.

    Parameters
    ----------
    model:
        Imported model.
    image:
        LR image (or HR with ``options.hr``).
    archive:
        Archive path.
    name:
        Run name.
    options:
        Analysis options.
    on_layer:
        Extra per-layer callback (called after the record is written; tests use it).
    reference:
        This image's HR reference (from :func:`pair_images`); default ``options.reference``.
    log:
        Phase log (GL-AM, LAM, figures lines and LAM's progress on stderr).

    Returns
    -------
    RunSummary
    """
    from glam.api import analyze, prepare_image

    ref = reference if reference is not None else options.reference
    prepared = prepare_image(model, image, hr=options.hr, reference=ref)
    with RunWriter(
        archive,
        name,
        store=options.store,
        store_dtype=options.store_dtype,
        overwrite=options.overwrite,
    ) as writer:

        def sink(rec: Any) -> None:
            writer.add_layer(rec)
            if on_layer is not None:
                on_layer(rec)

        result = analyze(
            model,
            prepared.lr,
            options.roi,
            options.window,
            reference=prepared.reference,
            lam=options.lam,
            device=options.device,
            store=options.store,
            on_layer=sink,
            keep_layers=False,
            lam_fold=options.lam_fold,
            lam_sigma=options.lam_sigma,
            lam_kernel=options.lam_kernel,
            lam_batch=options.lam_batch,
            progress=options.progress,
            verify=options.verify,
            log=log,
        )
        result.warnings = list(dict.fromkeys([*prepared.warnings, *result.warnings]))
        input_rgb = None
        if model.conventions.in_channels == 1 and prepared.lr_rgb is not None:
            input_rgb = _crop_rgb(prepared.lr_rgb, result.input_crop)
        writer.finish(
            model,
            result,
            image_path=prepared.image_path,
            image_sha256=prepared.image_sha256,
            reference_path=prepared.reference_path,
            image_is_hr=prepared.is_hr,
            input_rgb=input_rgb,
            command_line=options.command_line,
            baseline=options.baseline,
            extra_attrs={RESUME_ATTR: options_key(options, ref)},
        )
    summary = RunSummary(
        run=name,
        archive=str(archive),
        model=str(model.path),
        image=str(image),
        metrics=dict(result.metrics),
        warnings=list(dict.fromkeys([*model.warnings, *result.warnings])),
        engine_parity=_parity_summary(model, result),
        run_parity=result.run_parity.to_dict() if result.run_parity is not None else None,
    )
    if options.figures is not None:
        t = time.perf_counter()
        written = write_run_figures(
            archive, name, Path(options.figures) / name, figure_format=options.figure_format,
            scale=options.figure_scale, gamma=options.figure_gamma,
        )
        summary.figures = [str(p) for p in written]
        if log is not None:
            log.done("figures", time.perf_counter() - t, f"{len(written)} files")
    return summary


def _parity_summary(model: ImportedModel, result: Any) -> dict[str, Any] | None:
    """``engine_parity`` of a run as a JSON-ready dict with a one-line ``description``."""
    ep = result.engine_parity
    if ep is None:
        return None
    return {**ep.to_dict(), "description": ep.describe([t.name for t in model.taps])}


def check_engine_parity(summaries: Sequence[RunSummary]) -> None:
    """Raise :class:`EngineParityError` naming the worst run whose ``--verify`` failed.

    Raises
    ------
    EngineParityError
        When some run's engine error exceeds the GLAM.md tolerance (its run is archived).
    """
    failed = [s for s in summaries if s.engine_parity is not None and not s.engine_parity["passed"]]
    if not failed:
        return
    worst = max(failed, key=lambda s: float(s.engine_parity["max_error"] or math.inf))  # type: ignore[index]  # noqa: E501
    ep = worst.engine_parity
    assert ep is not None
    more = f" ({len(failed)} of {len(summaries)} runs failed)" if len(summaries) > 1 else ""
    raise EngineParityError(
        f"engine parity failed for run {worst.run!r}: {ep['description']}, above its bound "
        f"{ep['bounds'][ep['worst_map']]:.2g}{more}; the run is archived with its engine_parity "
        "record — please report this model (the maps of this run are not trustworthy)"
    )


def verify_default_input(model: ImportedModel, device: str = "auto") -> dict[str, Any]:
    """``glam inspect --verify``: engine parity on the bundled default image (its bicubic
    downscale by the model's scale, the ROI at the output centre).

    Returns the JSON-ready ``engine_parity`` dict (with ``description`` and ``image``).
    """
    from glam.api import analyze, prepare_image

    image = default_demo_inputs()[1]
    prepared = prepare_image(model, image, hr=True)
    result = analyze(model, prepared.lr, device=device, keep_layers=False, verify=True)
    out = _parity_summary(model, result)
    assert out is not None  # verify=True always measures
    return {**out, "image": str(image), "roi": list(result.roi), "window": result.window}


def write_run_figures(
    archive: str | Path,
    run: str,
    directory: str | Path,
    *,
    figure_format: str = "png",
    scale: str = "linear",
    gamma: float = 0.5,
) -> list[Path]:
    """Write the figures of an archived run into ``directory`` (``glam.report.figures``:
    the matplotlib figures in ``figure_format`` and the native-resolution overlays)."""
    from glam.report import figures
    from glam.report.views import Display

    display = Display(scale, gamma)  # type: ignore[arg-type]
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with open_archive(archive) as ar:
        data = ar.figure_data(run)
    return list(figures.write_all(data, d, figure_format=figure_format, display=display))


def analyze_images(
    model: ImportedModel,
    images: Sequence[str | Path],
    archive: str | Path,
    options: AnalyzeOptions,
    *,
    progress: bool = False,
    on_run: Callable[[RunSummary], None] | None = None,
    on_layer: Callable[[Any], None] | None = None,
    log: PhaseLog | None = None,
) -> list[RunSummary]:
    """Analyse every image (directories expand) into one archive, one run per image.

    Run names are checked against the archive *before* anything is computed. Each run is
    committed as soon as it is done, so an interruption keeps the finished ones.

    Parameters
    ----------
    model:
        Imported model.
    images:
        Image files and/or directories.
    archive:
        Archive path (created if missing).
    options:
        Analysis options.
    progress:
        Show a tqdm progress bar over images on stderr.
    on_run:
        Called with each run's summary right after it is committed.
    on_layer:
        Extra per-layer callback.
    log:
        Phase log: each image's phases (prefixed ``[i/n image]`` when there are several)
        and, with several images, a progress bar over them that suits a terminal or a log
        (:func:`glam.progress.progress_bar`); replaces ``progress``.

    Returns
    -------
    list[RunSummary]
    """
    options.validate()
    paired = pair_images(images, options)
    files = paired.files
    if options.reference is not None and len(files) > 1:
        raise UserInputError(
            "--reference names one HR image but several LR images were given; use --hr with "
            "HR images instead, or analyse one image at a time"
        )
    names = run_names(model.path, files, options.run)
    done = complete_runs_to_skip(archive, model.path, files, paired.references, names, options)
    oc = int(model.conventions.out_channels)
    if oc not in (1, 3):
        from glam.errors import ConventionError

        raise ConventionError(
            f"the model's output {model.conventions.output_name!r} has {oc} channels; glam "
            "analyses images (1 channel = Y, 3 = RGB); pick an image output with --output"
        )
    todo = [(f, r, n) for f, r, n in zip(files, paired.references, names, strict=True)
            if n not in done]
    check_image_sizes(model, [f for f, _, _ in todo], options)
    out: list[RunSummary] = _skipped_summaries(archive, [n for n in names if n in done])
    if on_run is not None:
        for s in out:
            on_run(s)
    if done and log is not None:
        log.line(f"resume: {len(done)} of {len(names)} run(s) already complete in {archive} "
                 "with the same model, image, ROI and options: skipped")
    many = len(todo) > 1
    if log is not None:
        bar = log.bar(len(todo), "images", "image") if many else None
    else:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="glam analyze", unit="image", disable=not progress)
    try:
        for i, (f, ref, name) in enumerate(todo, start=1):
            if log is not None and many:
                log.prefix = f"[{i}/{len(todo)} {Path(f).name}] "
            elif bar is not None:
                bar.set_postfix_str(Path(f).name)
            s = analyze_one(
                model, f, archive, name, options, on_layer=on_layer, reference=ref, log=log
            )
            out.append(s)
            if on_run is not None:
                on_run(s)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.prefix = ""
    check_engine_parity(out)
    return out


def _skipped_summaries(archive: str | Path, names: Sequence[str]) -> list[RunSummary]:
    """Summaries of runs a resumed invocation skipped, read back from the archive."""
    if not names:
        return []
    out = []
    with open_archive(archive) as ar:
        for name in names:
            g = ar.group(name)
            a = dict(g.attrs)
            out.append(RunSummary(
                run=name, archive=str(archive), model=str(a.get("model_path", "")),
                image=str(a.get("image_path", "")),
                metrics={k: float(v) for k, v in g["metrics"].attrs.items()},
                warnings=[str(w) for w in a.get("warnings", [])], skipped=True))
    return out


def summary_table(summaries: Sequence[RunSummary]) -> str:
    """A plain-text table: run, DI local/global, PSNR, Y-PSNR, DI LAM, seconds."""
    head = ("run", "DI local", "DI global", "PSNR", "Y-PSNR", "DI LAM", "seconds")
    rows = [head]
    for s in summaries:
        m = s.metrics
        rows.append(
            (
                s.run,
                _fmt(m.get("di_local")),
                _fmt(m.get("di_global")),
                _fmt(m.get("psnr")),
                _fmt(m.get("psnr_y")),
                _fmt(m.get("di_lam")),
                _fmt(m.get("seconds_glam", 0.0) + m.get("seconds_lam", 0.0)),
            )
        )
    return format_table(rows)


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:.{digits}f}"


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table; numeric columns are right-aligned, the others left-aligned."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]

    def numeric(i: int) -> bool:
        cells = [str(r[i]) for r in rows[1:]]
        return bool(cells) and all(_is_number(c) for c in cells)

    right = [numeric(i) for i in range(len(widths))]
    lines = []
    for r in rows:
        cells = [
            str(c).rjust(w) if rj else str(c).ljust(w)
            for c, w, rj in zip(r, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    if text in ("-", "inf", "", "..."):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------- demo

DEMO_LAM_FOLD = 50
"""LAM path steps of ``glam demo``: LAM's own default, as in the LAM paper and the README."""


@dataclass
class DemoResult:
    """What ``glam demo`` produced."""

    out_dir: Path
    archive: Path
    run: str
    model: str
    image: str
    figures: list[Path]
    summary: RunSummary
    report: Path | None = None  # report.html (None: the report extra, jinja2, is missing)
    warmup_seconds: float = 0.0  # the untimed warm-up run before the timed analysis
    lam_fold: int = DEMO_LAM_FOLD


def default_demo_inputs() -> tuple[Path | None, Path]:
    """The bundled default model (``fixtures.DEFAULT_MODEL``, ``None`` when fixtures are not
    built) and image (``fixtures.DEFAULT_IMAGE`` or ``fixtures/images/astronaut_hr.png``)."""
    root = Path(__file__).resolve().parent.parent / "fixtures"
    model: Path | None = None
    image = root / "images" / "astronaut_hr.png"
    try:
        import glam.fixtures as fixtures
    except ImportError:
        fixtures = None  # type: ignore[assignment]
    if fixtures is not None:
        m = getattr(fixtures, "DEFAULT_MODEL", None)
        i = getattr(fixtures, "DEFAULT_IMAGE", None)
        model = Path(m) if m is not None else None
        image = Path(i) if i is not None else image
    return model, image


def run_demo(
    out_dir: str | Path = "glam-demo",
    *,
    model_path: str | Path | None = None,
    image_path: str | Path | None = None,
    lam_fold: int = DEMO_LAM_FOLD,
    device: str = "auto",
    command_line: str = "glam demo",
    progress: bool = False,
    trust_model: bool = False,
    log: PhaseLog | None = None,
    warmup: bool = True,
    threads: int | None = None,
    figure_format: str = "png",
    figure_scale: str = "linear",
    figure_gamma: float = 0.5,
) -> DemoResult:
    """The main job on the bundled defaults: GL-AM + LAM on a fixture model, archive + figures.

    Parameters
    ----------
    out_dir:
        Output directory (``demo.h5`` and ``figures/<run>/`` are written there).
    model_path, image_path:
        Override the bundled model / HR image.
    lam_fold:
        LAM path steps (default 50, LAM's own).
    device:
        Device string.
    command_line:
        Recorded in the archive.
    progress:
        Show LAM's progress bar.
    trust_model:
        Passed to :func:`glam.importers.load`.
    log:
        Phase log (import, parity, warm-up, GL-AM, LAM, figures, report on stderr).
    warmup:
        First run GL-AM and one batch of LAM's path untimed on the same input, so that the
        reported GL-AM and LAM times exclude one-time costs (loading or compiling the
        numba kernels, torch's first-call allocations and kernel selection).
    threads:
        Thread count already applied (:func:`glam.threads.apply_threads`), for the log.
    figure_format, figure_scale, figure_gamma:
        As in :class:`AnalyzeOptions`.

    Returns
    -------
    DemoResult

    Raises
    ------
    UserInputError
        When no bundled model exists and none is given.
    """
    default_model, default_image = default_demo_inputs()
    mp = Path(model_path) if model_path is not None else default_model
    ip = Path(image_path) if image_path is not None else default_image
    if model_path is not None and not Path(model_path).is_file():
        raise UserInputError(f"--model {str(model_path)!r} does not exist; pass a model file")
    if mp is None or not mp.exists():
        raise UserInputError(
            "the bundled demo model is missing (fixtures/models/ is not built); build it with "
            "`python -m glam.fixtures.make_fixtures` or pass --model MODEL"
        )
    image_size(ip)  # a missing or unreadable --image fails before torch is imported
    import glam.importers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "demo.h5"
    t = time.perf_counter()
    model = glam.importers.load(mp, trust_model=trust_model)
    if log is not None:
        log_import(log, model, time.perf_counter() - t, threads=threads)
    options = AnalyzeOptions(
        hr=True,
        lam=True,
        lam_fold=lam_fold,
        device=device,
        overwrite=True,
        figures=out / "figures",
        command_line=command_line,
        progress=progress,
        figure_format=figure_format,
        figure_scale=figure_scale,
        figure_gamma=figure_gamma,
    )
    options.validate()
    check_image_sizes(model, [ip], options)  # before the warm-up: the memory it needs
    warm = _warm_up(model, ip, options) if warmup else 0.0
    if log is not None and warmup:
        log.done("warm-up", warm, "untimed: numba kernel loading/compilation, first-call "
                 "allocation; excluded from the GL-AM and LAM times")
    summaries = analyze_images(model, [ip], archive, options, log=log)
    s = summaries[0]
    from glam.report.html import write_report

    t = time.perf_counter()
    try:
        report: Path | None = write_report(archive, out / "report.html", [s.run])
    except MissingDependencyError:
        report = None
    if log is not None:
        log.done("report", time.perf_counter() - t)
    return DemoResult(
        out_dir=out,
        archive=archive,
        run=s.run,
        model=str(mp),
        image=str(ip),
        figures=[Path(f) for f in s.figures],
        summary=s,
        report=report,
        warmup_seconds=warm,
        lam_fold=lam_fold,
    )


def _warm_up(model: ImportedModel, image: Path, options: AnalyzeOptions) -> float:
    """One untimed GL-AM and one LAM batch on ``image``; returns the seconds it took."""
    from glam.api import analyze, prepare_image

    t = time.perf_counter()
    prepared = prepare_image(model, image, hr=options.hr)
    analyze(model, prepared.lr, options.roi, options.window, device=options.device,
            keep_layers=False, lam=options.lam, lam_fold=min(options.lam_batch, options.lam_fold),
            lam_batch=options.lam_batch)
    return time.perf_counter() - t


def log_import(
    log: PhaseLog, model: ImportedModel, seconds: float, *, threads: int | None = None
) -> None:
    """The ``import`` and ``parity`` lines of a phase log for a freshly imported model."""
    parity_s = float(model.timings.get("parity", 0.0))
    more = f", {threads} thread(s)" if threads is not None else ""
    log.done("import", max(0.0, seconds - parity_s),
             f"{Path(model.path).name}: {model.format}, {len(model.taps)} taps, "
             f"x{model.conventions.scale}{more}")
    p = model.parity
    log.done("parity", parity_s, f"max |error| {p.max_abs_error:.2g} against {p.reference}, "
             f"tolerance {p.tolerance:g}")


def demo_report(demo: DemoResult) -> list[str]:
    """A few friendly lines about what the demo wrote and what it shows."""
    m = demo.summary.metrics
    lines = [
        f"glam demo: {Path(demo.model).name} on {Path(demo.image).name} (HR; LR = bicubic x"
        f"{_scale_hint(demo)} downscale)",
        f"  archive : {demo.archive}  (run {demo.run!r}; browse with `glam ls {demo.archive}`)",
        f"  figures : {Path(demo.out_dir) / 'figures' / demo.run}/ ({len(demo.figures)} files)",
        f"  report  : {demo.report}  (open it in a browser)" if demo.report is not None else
        "  report  : skipped (install the report extra: pip install 'glam-sr[report]')",
    ]
    if "psnr" in m:
        lines.append(f"  output  : PSNR {_fmt(m['psnr'])} dB against the HR image")
    di_l, di_g = m.get("di_local"), m.get("di_global")
    lines.append(
        f"  GL-AM   : DI local {_fmt(di_l)}, global {_fmt(di_g)} "
        f"(diffusion index: 0 = a few pixels matter, 100 = every pixel matters equally)"
    )
    if "di_lam" in m:
        from glam.report.views import speed_text

        lines.append(
            f"  LAM     : DI {_fmt(m['di_lam'])} (input size, as LAM reports it; "
            f"{_fmt(m.get('di_lam_output'))} at output size), fold {demo.lam_fold}"
        )
        s_gl, s_lam = m.get("seconds_glam"), m.get("seconds_lam")
        if s_gl is not None and s_lam is not None:
            warm = (f"; both exclude a {demo.warmup_seconds:.1f} s untimed warm-up (kernel "
                    "loading/compilation, first-call allocation)" if demo.warmup_seconds else "")
            lines.append(
                f"  time    : GL-AM {_fmt(s_gl)} s, LAM {_fmt(s_lam)} s: "
                f"{speed_text(s_gl, s_lam)}{warm}"
            )
    af, af_lam = m.get("attributed_fraction_local"), m.get("attributed_fraction_lam")
    if af is not None:
        line = (
            f"  pixels  : {100 * af:.1f}% of output pixels carry above-average GL-AM (local) "
            "attribution for the ROI"
        )
        if af_lam is not None:
            line += f", {100 * af_lam:.1f}% for LAM"
        lines.append(line)
    lines.append(
        f"  ROI     : {roi_text(demo)}; the figures mark it with a box, bright = matters most"
    )
    return lines


def roi_text(demo: DemoResult) -> str:
    """``16x16 window at (top, left) of the HxW output``."""
    try:
        with open_archive(demo.archive) as ar:
            rd = ar.run(demo.run)
    except Exception:  # noqa: BLE001 - a hint only
        return "centre of the output"
    H, W = rd.output.shape[-2:]
    return f"{rd.window}x{rd.window} window at (top={rd.roi[0]}, left={rd.roi[1]}) of the {H}x{W} output"


def _scale_hint(demo: DemoResult) -> str:
    try:
        with open_archive(demo.archive) as ar:
            return str(ar.run(demo.run).attrs.get("scale", "?"))
    except Exception:  # noqa: BLE001 - a hint only
        return "?"
