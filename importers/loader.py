"""``glam.importers.load``: any ONNX / TorchScript / torch.export SR model to a tapped FX graph."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from glam.errors import (
    ConventionError,
    GlamError,
    ModelError,
    UserInputError,
    first_line,
)
from glam.importers.conventions import (
    DEFAULT_PROBE_SIZE,
    SECOND_PROBE_DELTA,
    choose_image_output,
    detect_input_range,
    forced_range_warning,
    infer_input_layout,
    measure_scale,
    range_errors,
    select_output,
    to_native,
)
from glam.importers.detect import detect_format
from glam.importers.device_pass import follow_input_device
from glam.importers.differentiable import make_differentiable, probe_backward
from glam.importers.model import (
    Conventions,
    ImportedModel,
    RawGraph,
    TapInfo,
    parents_from_ancestors,
)
from glam.importers.parity import check_parity, native_runner
from glam.importers.probe import probe_input
from glam.importers.quiet import captured
from glam.importers.size_rule import ODD_OFFSET, probe_size_rule
from glam.importers.tap import functionalize_inplace, participation, tap_ancestry, tap_graph
from glam.importers.torchscript.jit_builtin_ids import keep_retired_ops_alive
from torch import fx, nn

# torch.export and torch.jit share this process: see glam.importers.torchscript.jit_builtin_ids.
keep_retired_ops_alive()

DEFAULT_TOLERANCE = 1e-4


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _raw_graph(path: Path, fmt: str, channels: int | None, trust_model: bool = False) -> RawGraph:
    if fmt == "onnx":
        from glam.importers.onnx.backend import load_onnx

        return load_onnx(path)
    if fmt == "torchscript":
        from glam.importers.torchscript.backend import load_torchscript

        return load_torchscript(path, channels=channels, trust_model=trust_model)
    if fmt == "checkpoint":
        from glam.importers.checkpoint.backend import load_checkpoint
        from glam.importers.detect import checkpoint_details

        kind, is_zip = checkpoint_details(path)
        return load_checkpoint(path, kind, is_zip=is_zip)
    from glam.importers.export.backend import load_exported

    return load_exported(path, trust_model=trust_model)


def load(
    path: str | Path,
    *,
    in_channels: int | None = None,
    layout: str | None = None,
    input_range: str | int = "auto",
    output: str | int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    probe_size: tuple[int, int] | None = None,
    trust_model: bool = False,
) -> ImportedModel:
    """Import an SR model file into a tapped, canonical, parity-checked FX graph.

    The format is detected from the file's content. Conventions (layout, channels, fixed
    size, output, range, scale) are detected and may be overridden.

    Parameters
    ----------
    path:
        ONNX (optionally with external data beside it), TorchScript, ``.pt2`` file, or a
        ``.pth`` / ``.safetensors`` state-dict checkpoint of an architecture spandrel knows
        (the ``community`` extra; read with ``weights_only=True`` / safetensors).
    in_channels:
        Force 1 (Y of YCbCr) or 3 (RGB) input channels.
    layout:
        Force ``"NCHW"`` or ``"NHWC"``.
    input_range:
        ``"auto"`` (default), 1 or 255.
    output:
        Output to analyse, by name or index (default 0).
    tolerance:
        Largest accepted max-abs difference from the original model (canonical [0, 1] scale).
    probe_size:
        Input size used for probing dynamic-size models (default 40x36).
    trust_model:
        Run TorchScript / ``torch.export`` graphs with operators outside glam's allow-list
        of pure tensor ops (:data:`glam.importers.safety.PURE_OPS`). Off by default: such a
        model is refused with :class:`~glam.errors.UnsafeModelError` before it runs.
        Unsafe zip members, native code and arbitrary pickles are refused either way.

    Returns
    -------
    ImportedModel

    Raises
    ------
    ModelFileError, UnsafeModelError, NotSuperResolutionError, ConventionError, UnsupportedOpsError,
    ConversionError, ParityError
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise UserInputError(
            f"parity tolerance {tolerance!r} must be a finite number >= 0 (default "
            f"{DEFAULT_TOLERANCE:g})"
        )
    p = Path(path)
    fmt = detect_format(p)
    # exporters and tracers print graphs and warnings; the user sees glam's lines
    with captured() as log:
        raw = _raw_graph(p, fmt, in_channels, trust_model)
        imported = finish_import(
            raw,
            path=str(p),
            sha256=sha256_of(p),
            in_channels=in_channels,
            layout=layout,
            input_range=input_range,
            output=output,
            tolerance=tolerance,
            probe_size=probe_size,
        )
    if log.text():
        imported.metadata["import_log"] = log.text()
    if fmt == "checkpoint":
        from glam.importers.checkpoint.backend import reconcile_metadata

        c = imported.conventions
        imported.warnings.extend(
            reconcile_metadata(imported.metadata, c.scale, (c.in_channels, c.out_channels))
        )
    return imported


def from_module(
    module: nn.Module,
    *,
    in_channels: int = 3,
    input_range: str | int = 1,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str = "module",
) -> ImportedModel:
    """Import an eager ``nn.Module`` through ``torch.fx.symbolic_trace`` (tests, notebooks).

    The reference for parity is the eager module itself.
    """
    gm = fx.symbolic_trace(module)

    def reference(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(a) for a in inputs])
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().cpu().numpy() for o in outs]

    raw = RawGraph(
        gm=gm,
        format="torchscript",
        reference=reference,
        reference_name="eager nn.Module",
        input_names=["input"],
        output_names=["output"],
        input_shape=(1, in_channels, None, None),
        metadata={"source": type(module).__name__},
    )
    imported = finish_import(
        raw,
        path=name,
        sha256="",
        in_channels=in_channels,
        layout="NCHW",
        input_range=input_range,
        output=None,
        tolerance=tolerance,
        probe_size=None,
    )
    imported.format = "module"
    return imported


def finish_import(
    raw: RawGraph,
    *,
    path: str,
    sha256: str,
    in_channels: int | None,
    layout: str | None,
    input_range: str | int,
    output: str | int | None,
    tolerance: float,
    probe_size: tuple[int, int] | None,
) -> ImportedModel:
    """Common pipeline after a backend: conventions, parity, tapping, tap table."""
    gm = raw.gm
    rewritten = follow_input_device(gm)
    if rewritten:
        raw.metadata["device_args_rewritten"] = rewritten
    gm.eval()
    for prm in gm.parameters():
        prm.requires_grad_(False)
    lay = infer_input_layout(raw.input_shape, layout=layout, channels=in_channels)
    run = native_runner(gm)
    channels = lay.channels
    if channels is None:
        channels = _guess_channels(run, lay)
    output_note = None
    try:
        if output is None:
            out_idx, output_note = choose_image_output(run, lay, channels, raw.output_names)
        else:
            out_idx = select_output(raw.output_names, output)
        meas = measure_scale(run, lay, channels, out_idx, probe_size)
    except GlamError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        raise ModelError(
            f"the converted model failed to run on a {channels}-channel {lay.layout} input: "
            f"{first_line(exc)}"
        ) from None
    if meas.out_channels not in (1, 3):
        others = [n for i, n in enumerate(raw.output_names) if i != out_idx]
        raise ConventionError(
            f"output {raw.output_names[out_idx] if out_idx < len(raw.output_names) else out_idx!r} "
            f"has {meas.out_channels} channels (scale x{meas.scale}); glam analyses SR models "
            "whose output is an image of 1 channel (Y) or 3 (RGB) (GLAM.md \"Inputs\")"
            + (f"; pick the image output with --output (others: {', '.join(others)})"
               if others else "; this is not an SR model")
        )
    size = lay.fixed_size or probe_size or DEFAULT_PROBE_SIZE
    range_warnings: list[str] = []
    if input_range in ("auto", None):
        rng, rng_src = detect_input_range(
            run, lay.layout, channels, out_idx, size, meas.scale, meas.offset
        )
    else:
        rng = int(input_range)
        if rng not in (1, 255):
            raise ConventionError(f"input range {input_range!r} is not supported; use auto, 1 or 255")
        rng_src = "flag"
        errs = range_errors(run, lay.layout, channels, out_idx, size, meas.scale, meas.offset)
        forced_warning = forced_range_warning(errs, rng)
        if forced_warning is not None:
            range_warnings.append(forced_warning)
    conv = Conventions(
        in_channels=channels,
        out_channels=meas.out_channels,
        layout=lay.layout,  # type: ignore[arg-type]
        input_range=rng,
        range_source=rng_src,
        fixed_size=lay.fixed_size,
        output_index=out_idx,
        output_name=raw.output_names[out_idx] if out_idx < len(raw.output_names) else str(out_idx),
        scale=meas.scale,
        offset=meas.offset,
        scale_source=meas.source,
    )
    metadata = dict(raw.metadata)
    size_warnings: list[str] = []
    if output_note is not None:
        metadata["output_choice"] = output_note
        size_warnings.append(output_note)
    if lay.fixed_size is None and meas.source == "two sizes":
        size2 = (size[0] + SECOND_PROBE_DELTA[0], size[1] + SECOND_PROBE_DELTA[1])
        rule = probe_size_rule(run, lay.layout, channels, out_idx, (size, size2), conv.output_size)
        if rule is not None and metadata.get("input_multiple") is None:
            metadata["input_multiple"] = rule
            size_warnings.append(
                f"the graph accepts only input sizes that are a multiple of {rule} (it runs at "
                f"{size[0]}x{size[1]} and {size2[0]}x{size2[1]}, not at "
                f"{size[0] + ODD_OFFSET[0]}x{size[1] + ODD_OFFSET[1]}; e.g. a pad to an attention "
                "window frozen at export); glam refuses other sizes"
                if rule else
                f"the graph runs at {size[0]}x{size[1]} and {size2[0]}x{size2[1]} but not at "
                f"{size[0] + ODD_OFFSET[0]}x{size[1] + ODD_OFFSET[1]}; which input sizes it "
                "accepts is unknown"
            )
    # the graph that parity proves is the graph that is analysed: in-place ops functional,
    # ops without a derivative rewritten (glam.importers.differentiable)
    inplace_warnings = functionalize_inplace(gm)
    rewritten_ops = make_differentiable(gm)
    if rewritten_ops:
        metadata["rewritten_ops"] = rewritten_ops
    x = probe_input(channels, *size)
    t_parity = time.perf_counter()
    parity = check_parity(raw, gm, x, conv, tolerance)
    t_parity = time.perf_counter() - t_parity
    tapped, tap_nodes, tap_warnings = tap_graph(
        gm,
        layout=conv.layout,
        input_range=conv.input_range,
        output_index=out_idx,
        n_outputs=len(raw.output_names),
    )
    probe_backward(tapped, x)
    ancestors, shapes, y = tap_ancestry(tapped, x)
    reasons = [participation(s) for s in shapes]
    flags = [not r for r in reasons]
    parents = parents_from_ancestors(ancestors, flags)
    taps = [
        TapInfo(
            index=i,
            name=t.name,
            op=t.op,
            shape=tuple(int(d) for d in shapes[i]),
            parent=parents[i],
            participating=flags[i],
            reason=reasons[i],
        )
        for i, t in enumerate(tap_nodes)
    ]
    if not taps:
        raise ModelError(
            f"no convolution found in {path!r}; GL-AM attributes through convolution layers"
        )
    return ImportedModel(
        graph=tapped,
        path=path,
        sha256=sha256,
        format=raw.format,
        taps=taps,
        tap_ancestors=ancestors,
        conventions=conv,
        parity=parity,
        metadata=metadata,
        warnings=list(raw.warnings) + range_warnings + size_warnings + inplace_warnings
        + tap_warnings,
        input_names=list(raw.input_names),
        output_names=list(raw.output_names),
        timings={"parity": t_parity},
        reference=raw.reference,
        node_parity=raw.node_parity,
    )


def _guess_channels(run, lay) -> int:
    size = lay.fixed_size or DEFAULT_PROBE_SIZE
    errors = []
    for c in (3, 1):
        try:
            with torch.no_grad():
                run(to_native(probe_input(c, *size), lay.layout, 1))
            return c
        except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
            errors.append(f"{c} channels: {first_line(exc)}")
    raise ConventionError(
        "could not find the number of input channels (tried 3 and 1): "
        + "; ".join(errors)
        + "; pass --in-channels"
    )
