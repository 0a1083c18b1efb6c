"""The ``glam`` command line: a thin layer over :mod:`glam.importers`, :mod:`glam.runs`,
:mod:`glam.archive.hdf5` and :mod:`glam.report.figures`.

Exit codes: 0 success; 2 user errors (bad paths, ROI outside the output, corrupt model file,
missing run, not an archive, click usage errors); 3 model or runtime failures (unsupported
operators, failed parity, NaN). Errors print one ``error: ...`` line on stderr; ``--debug``
(``-v``) adds the traceback.

One module on purpose (over 600 lines): the click group and one short function per command,
each only parsing options and calling the API; keeping them together shows the whole command
surface in one place.
"""

from __future__ import annotations

import json
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from glam.cli_options import (
    figure_options,
    figure_settings,
    phase_log,
    run_options,
    use_threads,
)
from glam.errors import GlamError, UserInputError

F = TypeVar("F", bound=Callable[..., Any])

_DEBUG = "glam.debug"
_TRUST = "glam.trust_model"
_MAX_PIXELS = "glam.max_pixels"
_ARGV = "glam.argv"


def _one_line(text: str) -> str:
    return "; ".join(s.strip() for s in str(text).strip().splitlines() if s.strip())


class GlamGroup(click.Group):
    """A click group that turns :class:`GlamError` into ``error: ...`` + its exit code."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[_ARGV] = argv
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        from glam.progress import unsilence

        unsilence()
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except GlamError as exc:
            self._report(ctx, exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _interrupted()
            ctx.exit(130)
        except BrokenPipeError:
            _silence_stdout()
            ctx.exit(0)
        except OSError as exc:
            from glam.paths import describe_os_error

            msg = describe_os_error(exc)
            if msg is None and not isinstance(exc, PermissionError):
                self._report(ctx, exc, prefix=f"unexpected {type(exc).__name__}: ")
                if not ctx.meta.get(_DEBUG):
                    click.echo("       (rerun with --debug for the traceback)", err=True)
                ctx.exit(3)
            if msg is None:
                msg = (f"permission denied on {exc.filename!r}; check its permissions or pass "
                       "another path")
            if ctx.meta.get(_DEBUG):
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            click.echo(f"error: {msg}", err=True)
            ctx.exit(2 if isinstance(exc, PermissionError) else 3)
        except Exception as exc:  # noqa: BLE001 - one line, exit 3, traceback on --debug
            self._report(ctx, exc, prefix=f"unexpected {type(exc).__name__}: ")
            if not ctx.meta.get(_DEBUG):
                click.echo("       (rerun with --debug for the traceback)", err=True)
            ctx.exit(3)

    @staticmethod
    def _report(ctx: click.Context, exc: BaseException, prefix: str = "") -> None:
        if ctx.meta.get(_DEBUG):
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        click.echo(f"error: {prefix}{_one_line(str(exc)) or type(exc).__name__}", err=True)


def _interrupted() -> None:
    """The last line of an interrupted command: progress bars are silenced first, so that
    one torn down afterwards cannot print after it."""
    from glam.progress import silence

    silence()
    click.echo("error: interrupted; finished runs are kept in the archive", err=True)


def _silence_stdout() -> None:
    """After a broken pipe (``glam ls | head -1``): send further output to /dev/null so
    the interpreter's final flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    from glam.importers.quiet import set_passthrough

    if value:
        ctx.meta[_DEBUG] = True
    # what exporters print while a model is imported: captured, or on stderr with --debug
    set_passthrough(bool(ctx.meta.get(_DEBUG)))
    return value


def debug_option(f: F) -> F:
    """``--debug`` / ``-v``: print tracebacks of errors, and what the exporters print while
    a model is imported (captured otherwise, in ``metadata["import_log"]``)."""
    return click.option(
        "--debug",
        "-v",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Print the traceback of errors and the exporters' own output during import.",
    )(f)


def _set_trust(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[_TRUST] = True
    return value


def trust_option(f: F) -> F:
    """``--trust-model``: run graphs with operators outside the pure-op allow-list."""
    return click.option(
        "--trust-model",
        is_flag=True,
        expose_value=False,
        callback=_set_trust,
        help="Run TorchScript / torch.export graphs with operators outside glam's allow-list "
             "of pure tensor ops (file I/O, custom ops). Only for models you trust; see "
             "README, Security.",
    )(f)


def _set_max_pixels(ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    if value is not None:
        ctx.meta[_MAX_PIXELS] = value


def _max_pixels() -> int | None:
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get(_MAX_PIXELS)


def _trusted() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(_TRUST))


def _existing_model(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """MODEL must exist and may be a model, checked while parsing (before torch is
    imported): an image, a text file or a truncated model file is refused at once
    (:func:`glam.sniff.refusal`)."""
    p = Path(value)
    if not p.exists():
        raise UserInputError(
            f"model {value!r} does not exist; pass an ONNX, TorchScript or torch.export file"
        )
    if p.is_dir():
        raise UserInputError(f"model {value!r} is a directory; pass the model file")
    from glam.errors import ModelFileError
    from glam.sniff import refusal

    why = refusal(p)
    if why is not None:
        raise ModelFileError(why)
    return value


def _comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (comma-separated option values)."""
    return [m.strip() for m in text.split(",") if m.strip()]


def _command_line(ctx: click.Context) -> str:
    root = ctx.find_root()
    argv = root.meta.get(_ARGV, sys.argv[1:])
    return "glam " + shlex.join(str(a) for a in argv)


def _model_options(f: F) -> F:
    """Import overrides shared by ``inspect`` and ``analyze``."""
    for opt in reversed(
        [
            click.option("--in-channels", type=click.Choice(["1", "3"]), default=None,
                         help="Input channels: 1 (Y of YCbCr) or 3 (RGB); default: detected."),
            click.option("--layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False),
                         default=None, help="Native input layout; default: detected."),
            click.option("--input-range", type=click.Choice(["auto", "1", "255"]),
                         default="auto", show_default=True,
                         help="Native input range: [0, 1] or [0, 255]."),
            click.option("--output", "output", default=None,
                         help="Output to analyse, by name or index (default 0)."),
            click.option("--tolerance", type=float, default=None, show_default="1e-4",
                         help="Largest accepted parity error against the original model."),
            trust_option,
        ]
    ):
        f = opt(f)
    return f


def _analysis_options(*, reference_help: str, lam_help: str, store_help: str) -> Callable[[F], F]:
    """Options shared by ``analyze`` and ``baseline`` (ROI, reference, LAM, storage, device,
    import overrides)."""
    options = [
        click.option("--run", "run", default=None,
                     help="Run name (several images: NAME__<image stem>); default <model>__<image>."),
        click.option("--roi", default=None, metavar="TOP,LEFT",
                     help="ROI corner in output pixels (default: the output centre)."),
        click.option("--window", type=int, default=16, show_default=True, help="ROI window size."),
        click.option("--hr", is_flag=True,
                     help="IMAGE is the HR reference; LR = bicubic downscale."),
        click.option("--reference", default=None, metavar="HR.png", help=reference_help),
        click.option("--reference-dir", "reference_dir", default=None, metavar="DIR",
                     help="HR references for LR images: the file of the same name in DIR, or "
                          "with its LR token as HR (img_LR.png -> img_HR.png). Without it, "
                          "*_LR/*_HR pairs among the images are paired automatically."),
        click.option("--lam", is_flag=True, help=lam_help),
        click.option("--lam-fold", type=int, default=50, show_default=True, help="LAM path steps."),
        click.option("--lam-batch", type=int, default=8, show_default=True,
                     help="LAM path steps per model evaluation."),
        click.option("--lam-sigma", type=float, default=1.2, show_default=True,
                     help="LAM blur sigma."),
        click.option("--lam-kernel", type=int, default=9, show_default=True,
                     help="LAM kernel size."),
        click.option("--store", type=click.Choice(["maps", "tensors"]), default="maps",
                     show_default=True, help=store_help),
        click.option("--store-dtype", type=click.Choice(["float32", "float16"]),
                     default="float32", show_default=True,
                     help="Float type of per-layer datasets."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N."),
        click.option("--max-pixels", type=int, default=None, expose_value=False,
                     callback=_set_max_pixels, metavar="N",
                     help="Largest LR image in pixels (default 2048x2048); larger images are "
                          "refused up front with the estimated memory."),
    ]

    def apply(f: F) -> F:
        f = _model_options(f)
        for opt in reversed(options):
            f = opt(f)
        return f

    return apply


def _load_model(
    path: str,
    in_channels: str | None,
    layout: str | None,
    input_range: str,
    output: str | None,
    tolerance: float | None,
    *,
    log: Any = None,
) -> Any:
    import time

    import glam.importers

    threads = use_threads()
    t0 = time.perf_counter()
    out: str | int | None = output
    if output is not None and output.strip().lstrip("-").isdigit():
        out = int(output)
    kwargs: dict[str, Any] = {}
    if tolerance is not None:
        import math

        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise UserInputError(
                f"--tolerance {tolerance!r} must be a finite number >= 0 (the largest accepted "
                "parity error; default 1e-4)"
            )
        kwargs["tolerance"] = tolerance
    model = glam.importers.load(
        path,
        in_channels=int(in_channels) if in_channels else None,
        layout=layout.upper() if layout else None,
        input_range=input_range,
        output=out,
        trust_model=_trusted(),
        **kwargs,
    )
    if log is not None:
        from glam.runs import log_import

        log_import(log, model, time.perf_counter() - t0, threads=threads)
    return model


def _check_outputs(
    *,
    archive: Path | None = None,
    figures: str | None = None,
    json_report: str | None = None,
    junit_report: str | None = None,
    out_dir: str | None = None,
) -> None:
    """Every output path is writable, checked before the slow work (exit 2 naming it)."""
    from glam.paths import check_output_dir, check_output_file

    if archive is not None:
        check_output_file(archive, "archive")
    if figures is not None:
        check_output_dir(figures, "--figures")
    if json_report is not None:
        check_output_file(json_report, "--json")
    if junit_report is not None:
        check_output_file(junit_report, "--junit")
    if out_dir is not None:
        check_output_dir(out_dir, "--out")


def _json_line(obj: Any) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True, allow_nan=False)


def _jsonable(obj: Any) -> Any:
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------- group


@click.group(cls=GlamGroup, context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
@click.version_option(package_name="glam", prog_name="glam")
def cli() -> None:
    """GL-AM attribution maps for super-resolution networks (ONNX / TorchScript / torch.export).

    \b
    glam inspect MODEL               what glam sees in a model (taps, scale, parity)
    glam analyze MODEL IMAGE...      GL-AM (and LAM) into an HDF5 archive
    glam ls / show / export          read an archive
    glam compare ARCHIVE --runs A,B  one figure and table across runs
    glam report ARCHIVE -o page.html one self-contained HTML page of the runs
    glam baseline MODEL IMAGES -o B.h5   archive a CI baseline
    glam check MODEL --baseline B.h5     gate MODEL against it (exit 1 on regression)
    glam batch PLAN.toml -o zoo.h5   models x images on Ray into one archive
    glam sanity MODEL IMAGE          do the maps explain the model (randomization, deletion)
    glam demo                        the whole job on the bundled model and image
    """


# -------------------------------------------------------------------------------- inspect


@cli.command()
@click.argument("model", callback=_existing_model)
@_model_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--verify", is_flag=True,
              help="Also check the engine against the literal GLAM.md reference on the bundled "
                   "default image; exit 3 when a map differs by more than 1e-4.")
@run_options
@debug_option
def inspect(
    model: str,
    in_channels: str | None,
    layout: str | None,
    input_range: str,
    output: str | None,
    tolerance: float | None,
    as_json: bool,
    verify: bool,
) -> None:
    """Import MODEL and show its format, conventions, parity and tap table."""
    m = _load_model(model, in_channels, layout, input_range, output, tolerance)
    s = m.summary()
    parity = None
    if verify:
        from glam.runs import verify_default_input

        parity = verify_default_input(m)
        s["engine_parity"] = parity
    if as_json:
        click.echo(_json_line({"schema_version": 1, **s}))
        _fail_on_engine_parity(parity)
        return
    from glam.archive.taps import tap_row, taps_summary
    from glam.runs import format_table

    meta = s.get("metadata") or {}
    inp, out, par = s["input"], s["output"], s["parity"]
    click.echo(f"model      {s['path']}")
    click.echo(f"format     {s['format']}" + "".join(
        f", {k} {meta[k]}" for k in ("opset", "producer_name", "producer_version", "ir_version")
        if k in meta))
    click.echo(f"sha256     {s['sha256']}")
    if "architecture" in meta:  # a checkpoint: what spandrel detected
        c_in, c_out = meta["spandrel_channels"]
        click.echo(f"arch       {meta['architecture']} (spandrel {meta['spandrel_version']}): "
                   f"x{meta['spandrel_scale']}, {c_in}->{c_out} channels, {meta['purpose']}, "
                   f"tags {', '.join(meta['tags']) or '-'}; traced with {meta['route']}")
    click.echo(
        f"input      {', '.join(inp['names']) or '-'}: {inp['channels']} channel(s) "
        f"{'(Y of YCbCr)' if inp['channels'] == 1 else '(RGB)'}, {inp['layout']}, range "
        f"[0, {inp['range']}] ({inp['range_source']}), "
        f"{'fixed ' + 'x'.join(map(str, inp['fixed_size'])) if inp['fixed_size'] else 'any size'}"
        + (f" that is a multiple of {meta['input_multiple']}" if meta.get("input_multiple") else "")
    )
    click.echo(
        f"output     {out['name']} (index {out['index']} of {len(out['names']) or 1}), "
        f"{out['channels']} channel(s)"
    )
    click.echo(f"scale      x{s['scale']} (offset {s['offset'][0]},{s['offset'][1]}; "
               f"{s['conventions'].get('scale_source', '')})")
    quant = meta.get("quantization")
    if quant:
        for line in _quantization_lines(quant):
            click.echo(line)
    if par.get("steps"):
        st = par["steps"]
        click.echo(
            f"parity     {'passed' if par['passed'] else 'FAILED'} in output quantization steps: "
            f"{st['within_one'] * 100:.2f} % of {st['elements']} values within 1 step "
            f"(>= {st['min_share'] * 100:g} %), {st['beyond_one']} beyond, max {st['max_steps']:.3g}"
            f" steps; step {st['step']:.3g} ({st['unit']}); max abs error "
            f"{par['max_abs_error']:.3g} against {par['reference']}"
        )
    else:
        click.echo(
            f"parity     {'passed' if par['passed'] else 'FAILED'}: max abs error "
            f"{par['max_abs_error']:.3g} <= {par['tolerance']:g} against {par['reference']}"
        )
    for w in s.get("warnings", []):
        click.echo(f"warning    {w}")
    taps = s["taps"]
    click.echo(f"taps       {taps_summary(taps)}")
    rows = [("index", "name", "op", "shape", "parent", "part.")]
    for t in taps:
        rows.append(tap_row(t))
    click.echo(format_table(rows))
    if parity is not None:
        click.echo(f"verify     {_parity_line(parity)} on {Path(parity['image']).name}")
    _fail_on_engine_parity(parity)


def _quantization_lines(quant: dict[str, Any]) -> list[str]:
    """``glam inspect``'s lines about a quantized model (docs/quantized.md)."""
    types = []
    if quant.get("activation_types"):
        types.append(f"activations {'/'.join(quant['activation_types'])}")
    if quant.get("weight_types"):
        types.append(f"weights {'/'.join(quant['weight_types'])}")
    if quant.get("per_channel"):
        types.append("per-channel")
    ops = ", ".join(f"{op} x{n}" for op, n in quant.get("ops", {}).items())
    return [
        f"quantized  {' + '.join(quant.get('formats', []))}"
        + (f" ({', '.join(types)})" if types else "") + f": {ops}",
        f"simulated  {quant.get('simulation', '')}",
    ]


def _fail_on_engine_parity(parity: dict[str, Any] | None) -> None:
    """Exit 3 (one line) when ``inspect --verify`` found the engine off the reference."""
    if parity is not None and not parity["passed"]:
        from glam.errors import EngineParityError

        raise EngineParityError(
            f"engine parity failed: {parity['description']}, above its bound "
            f"{parity['bounds'][parity['worst_map']]:.2g} — please report this model"
        )


# -------------------------------------------------------------------------------- analyze


@cli.command()
@click.argument("model", callback=_existing_model)
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--archive", "archive", default=None,
              help="HDF5 archive to write/append (default ./glam-runs.h5).")
@_analysis_options(
    reference_help="HR reference of an LR IMAGE (for PSNR).",
    lam_help="Also compute LAM (Gu & Dong, CVPR 2021).",
    store_help="Per-layer data to archive.",
)
@click.option("--figures", "figures", default=None, metavar="DIR",
              help="Write each run's figures into DIR/<run>/.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per run on stdout (and nothing else).")
@click.option("--overwrite", is_flag=True, help="Replace runs that already exist.")
@click.option("--verify", is_flag=True,
              help="Also run the literal GLAM.md reference and record the engine's error per "
                   "map (engine_parity); exit 3 when it exceeds 1e-4.")
@figure_options
@run_options
@debug_option
@click.pass_context
def analyze(
    ctx: click.Context,
    model: str,
    images: Sequence[str],
    archive: str | None,
    run: str | None,
    roi: str | None,
    window: int,
    hr: bool,
    reference: str | None,
    reference_dir: str | None,
    lam: bool,
    lam_fold: int,
    lam_batch: int,
    lam_sigma: float,
    lam_kernel: int,
    store: str,
    store_dtype: str,
    device: str,
    in_channels: str | None,
    layout: str | None,
    input_range: str,
    output: str | None,
    tolerance: float | None,
    figures: str | None,
    as_json: bool,
    overwrite: bool,
    verify: bool,
) -> None:
    """Compute GL-AM for MODEL on each IMAGE (file or directory) into an HDF5 archive.

    Rerunning the same command resumes it: runs already complete in the archive with the
    same model, image, ROI and options are skipped (--overwrite recomputes them)."""
    from glam.resume import complete_runs_to_skip
    from glam.runs import (
        DEFAULT_ARCHIVE,
        AnalyzeOptions,
        RunSummary,
        analyze_images,
        check_image_files,
        pair_images,
        parse_roi,
        run_names,
        summary_table,
    )

    archive_path = Path(archive) if archive else Path(DEFAULT_ARCHIVE)
    options = AnalyzeOptions(
        run=run,
        roi=parse_roi(roi),
        window=window,
        hr=hr,
        reference=reference,
        reference_dir=reference_dir,
        lam=lam,
        lam_fold=lam_fold,
        lam_sigma=lam_sigma,
        lam_kernel=lam_kernel,
        lam_batch=lam_batch,
        store=store,  # type: ignore[arg-type]
        store_dtype=store_dtype,  # type: ignore[arg-type]
        device=device,
        overwrite=overwrite,
        figures=figures,
        command_line=_command_line(ctx),
        progress=lam and not as_json and sys.stderr.isatty(),
        verify=verify,
        max_pixels=_max_pixels(),
        import_options=_import_options(in_channels, layout, input_range, output),
        **figure_settings(),
    )
    options.validate()
    if reference is not None and not Path(reference).is_file():
        raise UserInputError(f"reference {reference!r} does not exist; pass the HR image file")
    # Fail on paths, unreadable images and name clashes before the (slow) model import;
    # runs already complete from the same model, image and options are resumed (skipped).
    paired = pair_images(images, options)
    files = paired.files
    check_image_files(paired)
    complete_runs_to_skip(archive_path, model, files, paired.references,
                          run_names(model, files, run), options)
    _check_outputs(archive=archive_path, figures=figures)
    log = phase_log()
    if paired.note:
        log.line(f"note: {paired.note}")
    m = _load_model(model, in_channels, layout, input_range, output, tolerance, log=log)
    many = len(files) > 1

    def report(s: RunSummary) -> None:
        if as_json:
            click.echo(_json_line(s.to_dict()))
            return
        if many:
            for w in s.warnings:
                click.echo(f"warning: {s.run}: {w}", err=True)
            return
        mt = s.metrics
        click.echo(f"run {s.run!r} -> {s.archive}" + (
            " (already complete with the same model, image, ROI and options: skipped)"
            if s.skipped else ""))
        parts = [f"DI local {mt['di_local']:.2f}", f"DI global {mt['di_global']:.2f}"]
        if "psnr" in mt:
            parts.append(f"PSNR {mt['psnr']:.2f} dB")
        if "psnr_y" in mt:
            parts.append(f"Y-PSNR {_num(mt['psnr_y'])} dB (shave {int(mt['psnr_y_shave'])})")
        if "di_lam" in mt:
            parts.append(f"DI LAM {mt['di_lam']:.2f}")
        click.echo("  " + ", ".join(parts) + f" ({mt.get('seconds_glam', 0.0):.2f} s GL-AM)")
        if s.engine_parity is not None:
            click.echo("  " + _parity_line(s.engine_parity))
        for w in s.warnings:
            click.echo(f"  warning: {w}")
        if s.figures:
            click.echo(f"  figures: {Path(s.figures[0]).parent}/")

    summaries = analyze_images(m, images, archive_path, options, on_run=report, log=log)
    log.summary()
    if many:
        table = summary_table(summaries)
        click.echo(table, err=as_json)
        skipped = sum(s.skipped for s in summaries)
        click.echo(f"{len(summaries)} run(s) -> {archive_path}" + (
            f" ({skipped} already complete: skipped, {len(summaries) - skipped} computed)"
            if skipped else ""), err=as_json)


def _import_options(in_channels: str | None, layout: str | None, input_range: str,
                    output: str | None) -> dict[str, Any]:
    """The import overrides a run records for resuming (:func:`glam.resume.import_key`)."""
    return {"in_channels": in_channels, "layout": layout, "input_range": input_range,
            "output": output}


def _num(v: float) -> str:
    import math

    return f"{v:.2f}" if math.isfinite(v) else ("inf" if v > 0 else "n/a")


def _parity_line(ep: dict[str, Any]) -> str:
    """One line for ``--verify``: the engine's largest error against the reference."""
    verdict = "passed" if ep["passed"] else "FAILED"
    return (
        f"engine parity {verdict} against the literal GLAM.md reference: worst "
        f"{ep['description']}; GLAM.md tolerance {ep['tolerance']:g} (reference "
        f"{ep['seconds']:.2f} s)"
    )


# ----------------------------------------------------------------------------- ls / show


@cli.command(name="ls")
@click.argument("archive")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@click.option("--verify", is_flag=True,
              help="Read every dataset of every run, checking its checksum; exit 2 naming "
                   "the damaged runs.")
@debug_option
@click.pass_context
def ls_(ctx: click.Context, archive: str, as_json: bool, verify: bool) -> None:
    """List the runs of ARCHIVE with model, image, DI local/global and PSNR."""
    from glam.archive.hdf5 import open_archive
    from glam.runs import _fmt, format_table

    rows = [("run", "model", "image", "DI local", "DI global", "PSNR", "Y-PSNR", "DI LAM")]
    damaged: list[str] = []
    with open_archive(archive) as ar:
        names = ar.runs()
        for name in names:
            try:
                if verify:
                    ar.verify_run(name)
                g = ar.group(name)
                a, mt = dict(g.attrs), dict(g["metrics"].attrs)
            except GlamError as exc:
                damaged.append(str(exc))
                continue
            except (KeyError, OSError, ValueError, TypeError) as exc:
                damaged.append(str(ar._damaged(name, exc)))
                continue
            if as_json:
                click.echo(_json_line({
                    "schema_version": 1, "run": name, "model": a.get("model_path"),
                    "image": a.get("image_path"), "baseline": a.get("baseline", False),
                    "metrics": {k: float(v) for k, v in mt.items()},
                }))
                continue
            rows.append((
                name,
                Path(str(a.get("model_path", ""))).name,
                Path(str(a.get("image_path", ""))).name,
                _fmt(_f(mt.get("di_local"))),
                _fmt(_f(mt.get("di_global"))),
                _fmt(_f(mt.get("psnr"))),
                _fmt(_f(mt.get("psnr_y"))),
                _fmt(_f(mt.get("di_lam"))),
            ))
    if not as_json:
        if len(rows) == 1:
            click.echo(f"{archive}: {'no intact runs' if damaged else 'no runs'}")
        else:
            click.echo(format_table(rows))
    if verify and not damaged and not as_json:
        click.echo(f"verified {len(names)} run(s): every dataset reads back", err=True)
    for msg in damaged:
        click.echo(f"error: {_one_line(msg)}", err=True)
    if damaged:
        ctx.exit(2)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


@cli.command()
@click.argument("archive")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print the run's description as JSON.")
@debug_option
def show(archive: str, run: str, as_json: bool) -> None:
    """Show RUN of ARCHIVE: metrics, provenance and a tap summary."""
    from glam.archive.hdf5 import open_archive
    from glam.archive.taps import tap_row, taps_summary
    from glam.runs import _fmt, format_table

    with open_archive(archive) as ar:
        rd = ar.run(run)
    if as_json:
        click.echo(_json_line({"schema_version": 1, "archive": archive, **rd.summary()}))
        return
    a = rd.attrs
    click.echo(f"run        {rd.name}{'  (baseline)' if rd.baseline else ''}")
    click.echo(f"model      {a.get('model_path')} ({a.get('model_format')}, "
               f"sha256 {str(a.get('model_sha256', ''))[:12]})")
    click.echo(f"image      {a.get('image_path')} ({'HR' if a.get('image_is_hr') else 'LR'}, "
               f"sha256 {str(a.get('image_sha256', ''))[:12]})")
    h, w = rd.input.shape[-2:]
    H, W = rd.output.shape[-2:]
    click.echo(f"sizes      LR {h}x{w} -> SR {H}x{W} (x{a.get('scale')}), ROI "
               f"top={a.get('roi_top')} left={a.get('roi_left')} window={a.get('window')}")
    click.echo(f"device     {a.get('device')}; store {a.get('store')} ({a.get('store_dtype')})")
    click.echo("metrics")
    for k in sorted(rd.metrics):  # DI with two decimals, as every command prints it
        click.echo(f"  {k:28s} {_fmt(rd.metrics[k], 2 if k.startswith('di_') else 4)}")
    p = rd.provenance
    click.echo("provenance")
    for k in ("glam_version", "python", "torch", "onnx", "onnxruntime", "command_line"):
        if k in p:
            click.echo(f"  {k:14s} {p[k]}")
    par = p.get("parity", {})
    if par:
        click.echo(f"  parity         {'passed' if par.get('passed') else 'FAILED'} "
                   f"({par.get('max_abs_error', float('nan')):.3g} vs {par.get('reference')})")
    rp = p.get("run_parity", {})
    if rp:
        shape = "x".join(str(int(d)) for d in list(rp.get("input_shape", []))[-2:])
        click.echo(f"  run parity     {'passed' if rp.get('passed') else 'FAILED'} "
                   f"({rp.get('max_abs_error', float('nan')):.3g} on the analysed {shape} input "
                   f"vs {rp.get('reference')})")
    for wmsg in rd.warnings:
        click.echo(f"warning    {wmsg}")
    click.echo(f"taps       {taps_summary(rd.taps)}")
    rows = [("index", "name", "op", "shape", "parent", "part.")]
    shown = rd.taps if len(rd.taps) <= 24 else rd.taps[:12] + rd.taps[-6:]
    for i, t in enumerate(shown):
        if len(rd.taps) > 24 and i == 12:
            rows.append(("...", f"({len(rd.taps) - 18} more)", "", "", "", ""))
        rows.append(tap_row(t))
    click.echo(format_table(rows))
    ep = rd.engine_parity
    if ep:
        worst = str(ep.get("worst_map", ""))
        click.echo(f"engine parity  {'passed' if ep.get('passed') else 'FAILED'}: worst {worst} "
                   f"off by {ep.get('errors', {}).get(worst, float('nan')):.2g} (bound "
                   f"{ep.get('bounds', {}).get(worst, ep.get('tolerance')):.2g}) against the "
                   "literal GLAM.md reference")


# --------------------------------------------------------------------------------- export


@cli.command()
@click.argument("archive")
@click.argument("run")
@click.option("--to", "to", required=True, metavar="DIR", help="Output directory.")
@figure_options
@debug_option
def export(archive: str, run: str, to: str) -> None:
    """Write RUN's figures (PNG, PDF or SVG) and maps (.npy) into DIR."""
    import numpy as np
    from glam.archive.hdf5 import open_archive
    from glam.report import figures

    d = Path(to)
    if d.exists() and not d.is_dir():
        raise UserInputError(f"--to {to!r} is a file; pass a directory")
    from glam.paths import check_output_dir

    check_output_dir(d, "--to")
    d.mkdir(parents=True, exist_ok=True)
    with open_archive(archive) as ar:
        rd = ar.run(run)
        data = ar.figure_data(rd)
    from glam.report.views import Display

    fs = figure_settings()
    written: list[Path] = list(figures.write_all(
        data, d, figure_format=fs["figure_format"],
        display=Display(fs["figure_scale"], fs["figure_gamma"])))
    arrays: dict[str, Any] = {"input": rd.input, "output": rd.output}
    if rd.reference is not None:
        arrays["reference"] = rd.reference
    for k, v in rd.local.items():
        arrays[f"local_{k}"] = v
    for k, v in rd.global_.items():
        arrays[f"global_{k}"] = v
    if rd.lam:
        for k in ("attribution", "map", "map_output"):
            if k in rd.lam:
                arrays[f"lam_{k}"] = rd.lam[k]
    for k, v in arrays.items():
        p = d / f"{k}.npy"
        np.save(p, np.asarray(v, dtype=np.float32))
        written.append(p)
    meta = d / "run.json"
    meta.write_text(json.dumps(_jsonable({"schema_version": 1, "archive": archive,
                                          **rd.summary()}), sort_keys=True, indent=1))
    written.append(meta)
    click.echo(f"exported run {run!r} to {d}/ ({len(written)} files)")


# -------------------------------------------------------------------------------- compare


@cli.command()
@click.argument("archive")
@click.option("--runs", "runs", default=None, metavar="A,B,...",
              help="Comma-separated run names (at least 2).")
@click.option("--image", "image", default=None, metavar="IMG",
              help="Instead of --runs: every model's runs of this image (a batch archive).")
@click.option("--by-model", is_flag=True,
              help="Per-model DI / PSNR over the image set (mean ± std) instead.")
@click.option("--to", "to", default=".", show_default=True, metavar="DIR",
              help="Directory for compare.png and compare.txt.")
@figure_options
@debug_option
def compare(archive: str, runs: str | None, image: str | None, by_model: bool, to: str) -> None:
    """One figure and one table comparing RUNS of ARCHIVE."""
    from glam.archive.hdf5 import open_archive
    from glam.report import figures

    if by_model:
        from glam.batch.summary import model_summary

        click.echo(model_summary(archive))
        return
    if (runs is None) == (image is None):
        raise UserInputError("pass --runs A,B or --image IMG (or --by-model); see `glam ls`")
    if image is not None:
        from glam.batch.summary import runs_for_image

        runs = ",".join(runs_for_image(archive, image))
    names = _comma_list(str(runs))
    if len(names) < 2:
        raise UserInputError(f"--runs {runs!r} names {len(names)} run(s); compare at least 2 "
                             "(e.g. --runs A,B; see `glam ls`)")
    d = Path(to)
    if d.exists() and not d.is_dir():
        raise UserInputError(f"--to {to!r} is a file; pass a directory")
    with open_archive(archive) as ar:
        data = [ar.figure_data(n) for n in names]
    d.mkdir(parents=True, exist_ok=True)
    from glam.report.views import Display

    fs = figure_settings()
    fig = figures.compare_figure(data, d / f"compare.{fs['figure_format']}",
                                 Display(fs["figure_scale"], fs["figure_gamma"]))
    table = figures.compare_table(data)
    (d / "compare.txt").write_text(table + "\n")
    click.echo(table)
    click.echo(f"figure: {fig}")


# --------------------------------------------------------------------------------- report


@cli.command()
@click.argument("archive")
@click.option("--runs", "runs", default=None, metavar="A,B,...",
              help="Comma-separated run names (default: every run, in archive order).")
@click.option("-o", "--out", "out", default="report.html", show_default=True, metavar="FILE",
              help="The HTML file to write (self-contained: images embedded, no network).")
@click.option("--max-keys", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most layers per run in the layer explorer (evenly sampled).")
@debug_option
def report(archive: str, runs: str | None, out: str, max_keys: int) -> None:
    """One self-contained HTML page of ARCHIVE's runs: maps, layers, comparison, provenance."""
    from glam.report.html import write_report

    names = _comma_list(runs) if runs else None
    click.echo(f"report: {write_report(archive, out, names, max_keys=max_keys)}")


# ---------------------------------------------------------------------------------- batch


@cli.command()
@click.argument("plan_file", required=False, metavar="[PLAN.toml]")
@click.option("-o", "--archive", "archive", required=True, metavar="ZOO.h5",
              help="The batch archive (created or resumed; shards go to ZOO.h5.shards/).")
@click.option("--models", default=None, metavar="A,B,...", help="Models (instead of a plan).")
@click.option("--images", multiple=True, metavar="PATH", help="Images or directories (repeatable).")
@click.option("--rois", default=None, metavar="T,L;T,L", help="ROIs (default: output centre).")
@click.option("--roi-grid", default=None, metavar="ROWS,COLS", help="A grid of ROIs per output.")
@click.option("--window", type=int, default=16, show_default=True, help="ROI window size.")
@click.option("--hr", is_flag=True, help="The images are HR references (LR = bicubic /s).")
@click.option("--reference-dir", "reference_dir", default=None, metavar="DIR",
              help="HR references for LR images, as for analyze (without it, *_LR/*_HR pairs "
                   "among the images are paired).")
@click.option("--lam", is_flag=True, help="Also compute LAM.")
@click.option("--lam-fold", type=int, default=50, show_default=True, help="LAM path steps.")
@click.option("--lam-batch", type=int, default=8, show_default=True,
              help="LAM path steps per model evaluation.")
@click.option("--store", type=click.Choice(["maps", "tensors"]), default="maps", show_default=True)
@click.option("--store-dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Float type of per-layer datasets.")
@click.option("--verify", is_flag=True,
              help="Also run the literal GLAM.md reference per task; a task whose maps differ "
                   "by more than 1e-4 fails.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@click.option("--address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
              help="Join this Ray cluster (default: start a local one for the batch).")
@click.option("--workers", type=int, default=None, help="Most workers (default: all slots).")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True,
              help="CPUs (torch threads) per CPU worker.")
@click.option("--gpu-fraction", type=float, default=0.25, show_default=True,
              help="GPU share per worker when the cluster has GPUs.")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local cluster.")
@click.option("--links", is_flag=True, help="External links to the shards instead of copies.")
@click.option("--dashboard", is_flag=True, help="Start Ray's dashboard with the local cluster.")
@click.option("--ray-logs", is_flag=True, help="Show the workers' output.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@trust_option
@debug_option
@click.pass_context
def batch(ctx: click.Context, plan_file: str | None, archive: str, models: str | None,
          images: Sequence[str], rois: str | None, roi_grid: str | None, window: int, hr: bool,
          reference_dir: str | None, lam: bool, lam_fold: int, lam_batch: int, store: str,
          store_dtype: str, verify: bool, device: str, address: str | None, workers: int | None,
          cpus_per_worker: float, gpu_fraction: float, num_cpus: int | None, links: bool,
          dashboard: bool, ray_logs: bool, as_json: bool) -> None:
    """Run models x images (a PLAN.toml, or --models/--images) on Ray into one archive."""
    from glam.batch.cli_support import batch_command

    summary = batch_command(
        plan_file, archive, models=models, images=images, rois=rois, roi_grid=roi_grid,
        options={k: v for k, v in {
            "window": window, "hr": hr, "reference_dir": reference_dir, "lam": lam,
            "lam_fold": lam_fold, "lam_batch": lam_batch, "store": store,
            "store_dtype": store_dtype, "verify": verify, "device": device}.items()
                 if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE},
        batch={"address": address, "workers": workers, "cpus_per_worker": cpus_per_worker,
               "gpu_fraction": gpu_fraction, "num_cpus": num_cpus, "links": links,
               "dashboard": dashboard, "ray_logs": ray_logs,
               "progress": not as_json and sys.stderr.isatty(),
               "command_line": _command_line(ctx)},
        trust_model=_trusted(), echo=lambda line: click.echo(line, err=True),
    )
    if as_json:
        click.echo(_json_line(summary.to_dict()))
    else:
        click.echo(f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
                   f"({summary.recovered} recovered) in {summary.seconds:.1f} s -> {archive}")
        for f in summary.failures:
            click.echo(f"  failed {f['run']}: {f['error']}", err=True)
    ctx.exit(summary.exit_code)


# ------------------------------------------------------------------------ baseline / check


@cli.command()
@click.argument("model", callback=_existing_model)
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--archive", "archive", required=True, metavar="BASELINE.h5",
              help="Baseline archive to write (or append to).")
@_analysis_options(
    reference_help="HR reference of an LR IMAGE (enables the PSNR check).",
    lam_help="Also compute LAM (enables the LAM checks).",
    store_help="Per-layer data to archive (maps are always kept).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run on stdout.")
@click.option("--overwrite", is_flag=True, help="Replace runs that already exist.")
@run_options
@debug_option
@click.pass_context
def baseline(
    ctx: click.Context, model: str, images: Sequence[str], archive: str, run: str | None,
    roi: str | None, window: int, hr: bool, reference: str | None, reference_dir: str | None,
    lam: bool, lam_fold: int,
    lam_batch: int, lam_sigma: float, lam_kernel: int, store: str, store_dtype: str,
    device: str, in_channels: str | None, layout: str | None, input_range: str,
    output: str | None, tolerance: float | None, as_json: bool, overwrite: bool,
) -> None:
    """Write a baseline archive for `glam check`: `glam analyze` with runs marked baseline.

    Rerunning the same command resumes it (complete runs from the same model, image and
    options are skipped; --overwrite recomputes them)."""
    from glam.gate.check import make_baseline, prepare_baseline
    from glam.runs import AnalyzeOptions, RunSummary, parse_roi

    options = AnalyzeOptions(
        run=run, roi=parse_roi(roi), window=window, hr=hr, reference=reference,
        reference_dir=reference_dir, lam=lam,
        lam_fold=lam_fold, lam_sigma=lam_sigma, lam_kernel=lam_kernel, lam_batch=lam_batch,
        store=store, store_dtype=store_dtype, device=device,  # type: ignore[arg-type]
        overwrite=overwrite, command_line=_command_line(ctx), baseline=True,
        max_pixels=_max_pixels(),
        import_options=_import_options(in_channels, layout, input_range, output),
    )
    files = prepare_baseline(model, images, archive, options)
    _check_outputs(archive=Path(archive))
    log = phase_log()
    m = _load_model(model, in_channels, layout, input_range, output, tolerance, log=log)

    def report(s: RunSummary) -> None:
        click.echo(_json_line({**s.to_dict(), "baseline": True}) if as_json
                   else f"baseline run {s.run!r} -> {s.archive}"
                   + (" (already complete: skipped)" if s.skipped else ""))

    summaries = make_baseline(m, files, archive, options, on_run=report, log=log)
    log.summary()
    if not as_json:
        skipped = sum(s.skipped for s in summaries)
        more = f" ({skipped} already complete: skipped)" if skipped else ""
        click.echo(f"{len(summaries)} baseline run(s) in {archive}{more}; gate a model with "
                   f"`glam check MODEL --baseline {archive}`")


@cli.command()
@click.argument("model", callback=_existing_model)
@click.option("--baseline", "baseline_path", required=True, metavar="BASELINE.h5",
              help="Baseline archive (`glam baseline`).")
@click.option("--runs", "runs", default=None, metavar="A,B,...",
              help="Runs to check, names or globs (default: every baseline run).")
@click.option("--tol", "tol", multiple=True, metavar="[RUN_GLOB:]METRIC=VALUE",
              help="Tolerance of one metric (repeatable; VALUE 'off' skips it).")
@click.option("--tolerances", "tolerances_file", default=None, metavar="FILE",
              help="Tolerance file (TOML or JSON), see docs/ci.md.")
@click.option("--top-k", "top_k", type=float, default=None, metavar="PERCENT",
              help="k of the top-k overlap checks (default 10).")
@click.option("--json", "json_path", default=None, metavar="REPORT.json",
              help="Write the JSON report here.")
@click.option("--junit", "junit_path", default=None, metavar="REPORT.xml",
              help="Write a JUnit XML report here.")
@click.option("--html", "html_path", default=None, metavar="REPORT.html",
              help="Write an HTML page of the result (checks, baseline/candidate maps) here.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--input-range", type=click.Choice(["baseline", "auto", "1", "255"]),
              default="baseline", show_default=True,
              help="Model input range: the baseline's, detected, or forced.")
@click.option("--defaults", "defaults", type=click.Choice(["auto", "float", "quantized"]),
              default="auto", show_default=True,
              help="Default tolerances: auto = the quantized ones for a quantized (int8) "
                   "model, the float ones otherwise (docs/ci.md).")
@click.option("--failures-only", is_flag=True, help="Show only failed checks in the table.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when checks fail (collect reports).")
@click.option("--verify", is_flag=True,
              help="Also require engine parity: the engine against the literal GLAM.md "
                   "reference on every run (check engine_parity_max_error, default 1e-4).")
@click.option("--max-pixels", type=int, default=None, expose_value=False,
              callback=_set_max_pixels, metavar="N",
              help="Largest stored baseline input in pixels (default 2048x2048).")
@trust_option
@run_options
@debug_option
def check(
    model: str, baseline_path: str, runs: str | None, tol: Sequence[str],
    tolerances_file: str | None, top_k: float | None, json_path: str | None,
    junit_path: str | None, device: str, input_range: str, defaults: str, failures_only: bool,
    exit_zero: bool, verify: bool, html_path: str | None,
) -> None:
    """Gate MODEL against a baseline: exit 0 pass, 1 regression, 2 usage, 3 model error."""
    from glam.gate.check import check_model
    from glam.gate.tolerances import build_tolerances

    tolerances = build_tolerances(tolerances_file, tol, top_k)
    _check_outputs(json_report=json_path, junit_report=junit_path)
    from glam.archive.hdf5 import open_archive

    open_archive(baseline_path, what="baseline", writer="glam baseline MODEL IMAGES").close()
    names = _comma_list(runs) if runs else None
    rng = None if input_range == "baseline" else input_range
    if html_path:
        from glam.report.html import check_output_path

        check_output_path(html_path)  # before the slow work
    use_threads()
    rep = check_model(model, baseline_path, tolerances, names, device, input_range=rng,
                      verify=verify, trust_model=_trusted(), max_pixels=_max_pixels(),
                      log=phase_log(), defaults=defaults)
    click.echo(rep.table(failures_only=failures_only))
    if rep.tolerances.defaults == "quantized":
        click.echo(f"note: {rep.tolerances.sources[-1]}: tolerances measured for int8 "
                   "against float (docs/ci.md); --defaults float for the float ones")
    for note in rep.notes():
        click.echo(f"note: {note}")
    for path, write in ((json_path, rep.write_json), (junit_path, rep.write_junit)):
        if path:
            click.echo(f"report: {write(path)}")
    if html_path:
        from glam.report.html import write_check_report

        click.echo(f"report: {write_check_report(rep.to_dict(), html_path, candidate_maps=rep.maps)}")
    click.echo(rep.final_line(), err=True)
    if not rep.ok and not exit_zero:
        raise click.exceptions.Exit(1)


# ----------------------------------------------------------------------------------- demo


@cli.command()
@click.option("--out", "out", default="glam-demo", show_default=True, metavar="DIR",
              help="Output directory.")
@click.option("--model", "model", default=None, help="Use this model instead of the bundled one.")
@click.option("--image", "image", default=None, help="Use this HR image instead of the bundled one.")
@click.option("--lam-fold", type=int, default=None, help="LAM path steps (default 50).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-warmup", is_flag=True,
              help="Skip the untimed warm-up run (the times then include one-time costs).")
@figure_options
@trust_option
@run_options
@debug_option
@click.pass_context
def demo(ctx: click.Context, out: str, model: str | None, image: str | None,
         lam_fold: int | None, device: str, no_warmup: bool) -> None:
    """Run GL-AM and LAM on the bundled model and CC0 image; write an archive and figures."""
    from glam.runs import DEMO_LAM_FOLD, demo_report, run_demo

    _check_outputs(out_dir=out)
    threads = use_threads()
    log = phase_log()
    res = run_demo(out, model_path=model, image_path=image,
                   lam_fold=lam_fold if lam_fold is not None else DEMO_LAM_FOLD,
                   device=device, command_line=_command_line(ctx), trust_model=_trusted(),
                   log=log, warmup=not no_warmup, threads=threads, **figure_settings())
    log.summary()
    for line in demo_report(res):
        click.echo(line)


@cli.command(name="sanity")
@click.argument("model")
@click.argument("image")
@click.option("-o", "--archive", "archive", default="sanity.h5", show_default=True,
              help="Archive for the run and its sanity/ group.")
@click.option("--run", "run", default=None, help="Run name; default <model>__<image>.")
@click.option("--roi", default=None, metavar="TOP,LEFT", help="ROI corner (output pixels).")
@click.option("--window", type=int, default=16, show_default=True, help="ROI window size.")
@click.option("--hr", is_flag=True, help="IMAGE is the HR reference; LR = bicubic downscale.")
@click.option("--crop", type=int, default=None, metavar="N",
              help="Centre-crop the LR input to N x N first.")
@click.option("--blocks", type=click.IntRange(min=0), default=8, show_default=True,
              help="Randomization steps (contiguous tap blocks); 0: one tap per step.")
@click.option("--methods", default="local,global,lam,saliency", show_default=True,
              help="Maps to test (comma-separated).")
@click.option("--variants", default="cascading,independent", show_default=True,
              help="Randomization variants (comma-separated).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights/orders.")
@click.option("--topk", type=float, default=0.05, show_default=True,
              help="Fraction of pixels in the top-k overlap.")
@click.option("--baseline", type=click.Choice(["blur", "bicubic"]), default="blur",
              show_default=True, help="What a deleted LR pixel becomes.")
@click.option("--step", type=float, default=0.01, show_default=True,
              help="Deletion / insertion step (fraction of LR pixels).")
@click.option("--max-fraction", type=float, default=0.5, show_default=True,
              help="Deletion / insertion up to this fraction.")
@click.option("--n-random", type=int, default=5, show_default=True,
              help="Random orderings averaged for the random baseline.")
@click.option("--curve-batch", type=int, default=8, show_default=True,
              help="Deletion / insertion steps per model evaluation.")
@click.option("--lam-fold", type=int, default=50, show_default=True, help="LAM path steps.")
@click.option("--lam-batch", type=int, default=8, show_default=True,
              help="LAM path images per model evaluation.")
@click.option("--figure", "figure", default=None, metavar="PNG", help="Write the figure here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--overwrite", is_flag=True, help="Replace the run if it exists.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_model_options
@debug_option
@click.pass_context
def sanity_(ctx: click.Context, model: str, image: str, archive: str, run: str | None,
            roi: str | None, window: int, hr: bool, crop: int | None, blocks: int,
            methods: str, variants: str, seed: int, topk: float, baseline: str, step: float,
            max_fraction: float, n_random: int, curve_batch: int, lam_fold: int,
            lam_batch: int, figure: str | None,
            as_json: bool, overwrite: bool, device: str, in_channels: str | None,
            layout: str | None, input_range: str, output: str | None,
            tolerance: float | None) -> None:
    """Sanity checks of the maps on MODEL and IMAGE: model randomization, deletion /
    insertion, indicators (docs/sanity.md)."""
    from glam.runs import default_run_name, parse_roi
    from glam.sanity_checks.runner import SanityOptions, format_summary, run_sanity

    if not Path(image).is_file():
        raise UserInputError(f"image {image!r} does not exist; pass an image file")
    from glam.archive.hdf5 import check_run_names
    from glam.paths import check_output_file

    name = run or default_run_name(model, image)
    check_run_names(archive, [name], overwrite=overwrite)
    _check_outputs(archive=Path(archive))
    if figure is not None:
        check_output_file(figure, "--figure")
    options = SanityOptions(
        roi=parse_roi(roi), window=window, hr=hr, crop=crop, blocks=blocks or None, seed=seed,
        methods=tuple(_comma_list(methods)), variants=tuple(_comma_list(variants)), topk=topk,
        baseline=baseline, max_fraction=max_fraction, step=step, n_random=n_random,
        batch=curve_batch, lam_fold=lam_fold, lam_batch=lam_batch, device=device,
        overwrite=overwrite, command_line=_command_line(ctx))
    options.validate()
    m = _load_model(model, in_channels, layout, input_range, output, tolerance)
    res = run_sanity(m, image, Path(archive), name, options, figure=figure,
                     progress=None if as_json else (lambda msg: click.echo(msg, err=True)))
    click.echo(_json_line(res.summary()) if as_json else format_summary(res, name, archive))


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``glam``).

    A file-size limit (``ulimit -f``) makes writes fail with ``EFBIG`` instead of killing
    the process (SIGXFSZ), so the archive's temporary files are cleaned up and the error is
    one line. A Ctrl-C outside a command (start-up, after the last output) exits 130 with a
    message; one arriving while the interpreter shuts down is ignored.
    """
    import signal

    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="glam")
    except KeyboardInterrupt:
        _interrupted()
        code = 130
    except BrokenPipeError:
        _silence_stdout()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:
        code = 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except (OSError, ValueError):
        pass
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
