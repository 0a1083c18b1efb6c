"""Checkpoint backend: a ``.pth`` / ``.safetensors`` SR state dict through spandrel.

Most SR models in circulation are state-dict checkpoints of a few dozen community
architectures (ESRGAN, Real-ESRGAN compact, SwinIR, HAT, DAT, OmniSR, SPAN, SAFMN, ...).
This backend

1. reads the tensors safely (:mod:`glam.importers.checkpoint.safety`: ``torch.load(weights_only=True)``
   or ``safetensors``; nothing in the file runs);
2. lets spandrel (the ``community`` extra) detect the architecture and its hyper-parameters
   and build the ``nn.Module``; a checkpoint spandrel does not recognise, and a face
   restoration or inpainting model, is refused; a restoration model at scale 1 (denoising,
   deblurring, ...) is imported with a warning that says so;
3. wraps the module in :class:`PadToMultiple` when spandrel says its input sizes must be a
   multiple of some ``m`` (padding the way spandrel's own call does: reflect on the bottom /
   right, output cropped back), and reports it; architectures that pad to their attention
   window themselves (SwinIR, HAT, OmniSR) are reported with their window;
4. traces it into an FX graph: ``torch.export`` with dynamic height and width first, then
   ``torch.fx.symbolic_trace``, then ``torch.jit.trace`` + glam's ``ts2fx``, and last a
   ``torch.export`` specialised to the probe size (a fixed-size graph, reported). Each
   candidate must reproduce the module at the probe size, at a second size and at an odd
   size (no multiple of any window) before it is taken; the reasons the earlier routes
   failed are kept in ``metadata["route_errors"]``. A dynamic export that reproduces the
   module at the first two sizes but whose shape guards refuse the odd one (SwinIR, HAT:
   ``torch.export`` specialises the model's pad-to-window to "no padding needed") is
   wrapped: the input is padded outside the graph to a multiple of the window with the
   model's own mode (reflect for SwinIR / HAT, zeros for OmniSR: the first of
   :data:`PAD_MODES` that passes the four self-checks) and the output cropped. When no mode
   passes, that graph is kept when no later route is size-generic: it accepts input sizes
   that are multiples of the window, ``metadata["input_multiple"]`` and a warning say so.

The parity reference is the spandrel module itself; tap names are its module qualnames.
"""

from __future__ import annotations

import copy
import time
import warnings as pywarnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from glam.errors import (
    ConversionError,
    MissingDependencyError,
    ModelFileError,
    NotSuperResolutionError,
    first_line,
)
from glam.importers.checkpoint.safety import CheckpointKind, read_state_dict
from glam.importers.model import RawGraph
from glam.importers.probe import probe_input
from torch import fx, nn

__all__ = [
    "PadToMultiple",
    "describe",
    "load_checkpoint",
    "module_from_state_dict",
    "reconcile_metadata",
    "trace_module",
]

PROBE_SIZE = (40, 36)
SECOND_SIZE = (48, 48)
ODD_SIZE = (43, 37)  # no multiple of any window: a specialising shape guard shows here
SMALL_SIZE = (21, 19)  # small and odd: guards specialised to the probe's size range show here
_SELF_CHECK_RTOL = 1e-5
#: padding modes tried, in order, for the pad-to-window wrapper (the model's own mode wins)
PAD_MODES = ("reflect", "constant", "replicate")
ROUTES = ("torch.export", "fx.symbolic_trace", "jit.trace+ts2fx", "torch.export (static)")


class PadToMultiple(nn.Module):
    """Pad the input to a multiple of ``multiple`` (reflect, bottom/right), crop the output.

    The same padding spandrel's ``ImageModelDescriptor.__call__`` applies for a model whose
    ``size_requirements.multiple_of`` is above 1 (without its final clamp, which would cut
    the gradients GL-AM needs).
    """

    def __init__(self, model: nn.Module, multiple: int, scale: int) -> None:
        super().__init__()
        self.model = model
        self.multiple = int(multiple)
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = self.multiple
        x = nn.functional.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        y = self.model(x)
        return y[..., : h * self.scale, : w * self.scale]


def load_checkpoint(path: Path, kind: CheckpointKind, *, is_zip: bool) -> RawGraph:
    """Load a state-dict checkpoint as an untapped FX graph of the module spandrel builds.

    Parameters
    ----------
    path:
        ``.pth`` / ``.pt`` / ``.ckpt`` (pickle) or ``.safetensors`` file.
    kind:
        ``"pickle"`` or ``"safetensors"`` (from :func:`glam.importers.detect.detect_format`).
    is_zip:
        Whether a pickle checkpoint is a torch zip archive.

    Returns
    -------
    RawGraph
        ``format="checkpoint"``; ``metadata`` holds what spandrel detected (``architecture``,
        ``spandrel_scale``, ``spandrel_channels``, ``tags``, ``purpose``,
        ``size_requirements``) and the trace ``route``.

    Raises
    ------
    UnsafeModelError, ModelFileError, MissingDependencyError, NotSuperResolutionError,
    ConversionError
    """
    p = Path(path)
    sd = read_state_dict(p, kind, is_zip=is_zip)
    module, metadata, warnings = module_from_state_dict(sd, str(p))
    metadata["checkpoint"] = kind
    c_in = int(metadata["spandrel_channels"][0])
    example = probe_input(c_in, *PROBE_SIZE)
    t0 = time.perf_counter()
    gm, route, errors, fixed, multiple = trace_module(module, example)
    metadata["route"] = route
    if multiple is not None:
        metadata["input_multiple"] = multiple
        what = f"multiples of {multiple} (the model's window)" if multiple else "some sizes"
        warnings.append(
            f"traced with {route}, whose shape guards specialise the model's pad-to-window: the "
            f"graph accepts only input sizes that are {what}; pad or crop inputs to such a "
            f"size ({errors.get(route, '')})"
        )
    metadata["conversion_s"] = round(time.perf_counter() - t0, 3)
    if errors:
        metadata["route_errors"] = errors
    if fixed:
        warnings.append(
            f"traced with {route}, specialised to the probe size {PROBE_SIZE[0]}x{PROBE_SIZE[1]} "
            f"(earlier routes failed: {'; '.join(f'{k}: {v}' for k, v in errors.items())}); "
            "the graph only accepts that input size"
        )

    def reference(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.array(a, copy=True)) for a in inputs])
        return [out.detach().cpu().numpy()]

    return RawGraph(
        gm=gm,
        format="checkpoint",
        reference=reference,
        reference_name=f"spandrel {metadata['architecture']} module",
        input_names=["input"],
        output_names=["output"],
        input_shape=(1, c_in, *(PROBE_SIZE if fixed else (None, None))),
        metadata=metadata,
        warnings=warnings,
    )


def _spandrel() -> Any:
    try:
        import spandrel
    except ImportError as exc:
        raise MissingDependencyError("spandrel", "community") from exc
    return spandrel


def module_from_state_dict(
    state_dict: dict[str, Any], path: str = "checkpoint"
) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """Build the SR module of a state dict with spandrel, in eval mode, float32, on the CPU.

    Parameters
    ----------
    state_dict:
        Parameter name to tensor (as read by :func:`glam.importers.checkpoint.safety.read_state_dict`).
    path:
        Named in messages.

    Returns
    -------
    tuple[nn.Module, dict[str, Any], list[str]]
        The module (wrapped in :class:`PadToMultiple` when spandrel requires a size
        multiple), the metadata of :func:`describe`, and warnings (window sizes, restoration
        models at scale 1).

    Raises
    ------
    ModelFileError
        When spandrel recognises no architecture in the state dict.
    NotSuperResolutionError
        For face-restoration and inpainting models.
    """
    spandrel = _spandrel()
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            desc = spandrel.ModelLoader(device="cpu").load_from_state_dict(
                spandrel.canonicalize_state_dict(dict(state_dict))
            )
    except spandrel.UnsupportedModelError:
        keys = ", ".join(list(state_dict)[:5])
        raise ModelFileError(
            f"{path!r} is a state-dict checkpoint of an architecture spandrel "
            f"{_version('spandrel')} does not recognise (first keys: {keys}); export the model "
            "to ONNX, TorchScript or torch.export instead"
        ) from None
    except (RuntimeError, KeyError, ValueError, IndexError, AssertionError, TypeError) as exc:
        raise ModelFileError(
            f"spandrel recognised {path!r} but could not build its module ({first_line(exc, 200)}); "
            "the checkpoint may be incomplete"
        ) from None
    meta = describe(desc)
    arch = meta["architecture"]
    if isinstance(desc, spandrel.MaskedImageModelDescriptor) or meta["purpose"] == "Inpainting":
        raise NotSuperResolutionError(
            f"{path!r} is a {arch} inpainting model (image + mask in), not super-resolution; "
            "glam analyses SR models"
        )
    if meta["purpose"] == "FaceSR":
        raise NotSuperResolutionError(
            f"{path!r} is a {arch} face-restoration model (spandrel purpose FaceSR), not a "
            "general SR model; glam analyses SR models"
        )
    warnings: list[str] = []
    if meta["purpose"] == "Restoration":
        warnings.append(
            f"{arch} is a restoration model at scale 1 (denoising / deblurring / artefact "
            "removal, not super-resolution); GL-AM is computed as for SR at scale 1"
        )
    module = desc.model.eval().float()
    for prm in module.parameters():
        prm.requires_grad_(False)
    multiple = int(meta["size_requirements"]["multiple_of"])
    window = _window_size(module)
    if multiple > 1:
        module = PadToMultiple(module, multiple, int(desc.scale)).eval()
        warnings.append(
            f"{arch} needs input sizes that are a multiple of {multiple}; glam pads each input "
            f"to the next multiple of {multiple} (reflect, bottom/right, as spandrel does) and "
            "crops the output back"
        )
    elif window:
        warnings.append(
            f"{arch} attends within windows of {window}x{window} pixels: the model pads each "
            f"input to a multiple of {window} itself (reflect) and crops its output"
        )
    if window:
        meta["window_size"] = window
    return module, meta, warnings


def describe(desc: Any) -> dict[str, Any]:
    """What spandrel detected, JSON-ready (shown by ``glam inspect``)."""
    req = desc.size_requirements
    arch = desc.architecture
    return {
        "architecture": str(arch.name),
        "architecture_id": str(arch.id),
        "spandrel_version": _version("spandrel"),
        "purpose": str(desc.purpose),
        "spandrel_scale": int(desc.scale),
        "spandrel_channels": [int(desc.input_channels), int(desc.output_channels)],
        "tags": [str(t) for t in desc.tags],
        "size_requirements": {
            "minimum": int(req.minimum),
            "multiple_of": int(req.multiple_of),
            "square": bool(req.square),
        },
    }


def reconcile_metadata(metadata: dict[str, Any], scale: int, channels: tuple[int, int]) -> list[str]:
    """Warnings where glam's measurement (GLAM.md "Inputs") disagrees with spandrel's metadata.

    Parameters
    ----------
    metadata:
        The backend's metadata (``spandrel_scale``, ``spandrel_channels``).
    scale:
        The scale glam measured from two input sizes.
    channels:
        ``(in, out)`` channels glam detected.

    Returns
    -------
    list[str]
        One warning per disagreement (empty when they agree); glam's values are used.
    """
    out: list[str] = []
    s = metadata.get("spandrel_scale")
    if s is not None and int(s) != int(scale):
        out.append(
            f"spandrel reports scale x{s} for this {metadata.get('architecture')}, glam measured "
            f"x{scale} from two input sizes; glam uses x{scale}"
        )
    ch = metadata.get("spandrel_channels")
    if ch is not None and tuple(int(c) for c in ch) != tuple(channels):
        out.append(
            f"spandrel reports {ch[0]}->{ch[1]} channels, glam detected "
            f"{channels[0]}->{channels[1]}; glam uses its own"
        )
    return out


def _window_size(module: nn.Module) -> int | None:
    ws = getattr(module, "window_size", None)
    if isinstance(ws, (tuple, list)) and ws:
        ws = ws[0]
    return int(ws) if isinstance(ws, int) and ws > 1 else None


# ------------------------------------------------------------------------------- tracing


def trace_module(
    module: nn.Module, example: torch.Tensor
) -> tuple[fx.GraphModule, str, dict[str, str], bool, int | None]:
    """Trace ``module`` to an untapped FX graph through the first route that reproduces it.

    Parameters
    ----------
    module:
        The eval-mode module (the parity reference).
    example:
        A native input at the probe size.

    Returns
    -------
    tuple[fx.GraphModule, str, dict[str, str], bool, int | None]
        The graph (conv nodes carry ``glam_name``, the module qualname), the route taken
        (one of :data:`ROUTES`), why each other route failed, whether the graph is
        specialised to the probe size, and ``None`` for a size-generic graph, else the
        multiple its input sizes must be (the model's window; 0 when unknown).

    Raises
    ------
    ConversionError
        When no route reproduces the module; the message names every route's reason.
    """
    with torch.no_grad():
        ref1 = module(example)
        second = probe_input(example.shape[1], *SECOND_SIZE)
        ref2 = module(second)
        odd = probe_input(example.shape[1], *ODD_SIZE)
        ref3 = module(odd)
        small = probe_input(example.shape[1], *SMALL_SIZE)
        ref4 = module(small)
    errors: dict[str, str] = {}
    partial: tuple[fx.GraphModule, str] | None = None
    window = _window_size(_inner(module))
    aligned = example
    if window and (example.shape[-2] % window or example.shape[-1] % window):
        h, w = (-(-int(d) // window) * window for d in example.shape[-2:])
        aligned = probe_input(example.shape[1], h, w)
    builders = (
        (ROUTES[0], lambda: _export(module, aligned, dynamic=True), False),
        (ROUTES[1], lambda: _symbolic(module), False),
        (ROUTES[2], lambda: _jit_ts2fx(module, example), False),
        (ROUTES[3], lambda: _export(module, example, dynamic=False), True),
    )
    strip = "model." if isinstance(module, PadToMultiple) else ""
    for route, build, fixed in builders:
        if fixed and partial is not None:
            break
        try:
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore")
                gm = build()
                if gm is not None and aligned is not example and route == ROUTES[0]:
                    with torch.no_grad():
                        _self_check(gm, aligned, module(aligned), "the aligned probe size")
                    raise _Partial()
                _self_check(gm, example, ref1, "the probe size")
                if not fixed:
                    _self_check(gm, second, ref2, "a second input size")
        except _Partial:
            errors[route] = f"shape guards hold only for multiples of the window {window}"
            partial = partial or (gm, route)
            continue
        except Exception as exc:  # noqa: BLE001 - each route fails in its own way
            errors[route] = first_line(exc, 200)
            continue
        try:
            if not fixed:
                with pywarnings.catch_warnings():
                    pywarnings.simplefilter("ignore")
                    _self_check(gm, odd, ref3, f"the odd size {ODD_SIZE[0]}x{ODD_SIZE[1]}")
                    _self_check(gm, small, ref4, f"the small size {SMALL_SIZE[0]}x{SMALL_SIZE[1]}")
        except Exception as exc:  # noqa: BLE001 - a shape guard refusing the odd size
            errors[route] = first_line(exc, 200)
            if partial is None:
                partial = (gm, route)
            continue
        _name_convs(gm, strip)
        return gm, route, errors, fixed, None
    if partial is not None and window:
        # the graph holds for multiples of the window: pad outside it exactly as the model
        # pads itself (reflect, bottom/right) and crop, which makes it size-generic
        gm, route = partial
        scale = int(ref1.shape[-2]) // int(example.shape[-2])
        # the padding mode is the model's own: SwinIR and HAT reflect, OmniSR pads zeros
        for mode in PAD_MODES:
            try:
                with pywarnings.catch_warnings():
                    pywarnings.simplefilter("ignore")
                    wrapped = _pad_wrapped(gm, window, scale, mode)
                    for xi, ri, where in ((example, ref1, "the probe size"),
                                          (second, ref2, "a second size"),
                                          (odd, ref3, "an odd size"), (small, ref4, "a small size")):
                        _self_check(wrapped, xi, ri, where)
                _name_convs(wrapped, strip)
                return wrapped, f"{route} + pad-to-window ({mode})", errors, False, None
            except Exception as exc:  # noqa: BLE001 - the next mode, else the window-multiple graph
                errors[f"{route} + pad-to-window ({mode})"] = first_line(exc, 200)
    if partial is not None:
        gm, route = partial
        _name_convs(gm, strip)
        return gm, route, errors, False, window or 0
    raise ConversionError(
        "cannot trace the spandrel module: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
    )


class _Partial(Exception):
    """A dynamic export whose shape guards hold only for multiples of the model's window."""


def _pad_wrapped(gm: fx.GraphModule, window: int, scale: int, mode: str) -> fx.GraphModule:
    """One flat FX graph: pad (``mode``) to a multiple of ``window``, the exported graph, crop.

    Built by graph surgery (the exported graph's nodes are copied after the padding nodes);
    its ``_guards_fn`` call is dropped, the padding guarantees the sizes it checks. The conv
    nodes keep their ``nn_module_stack`` metadata and hence their names.
    """
    import operator

    inner = copy.deepcopy(gm)
    for node in list(inner.graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn":
            inner.graph.erase_node(node)
    g = fx.Graph()
    x = g.placeholder("x")
    h = g.call_function(torch.ops.aten.sym_size.int, (x, 2))
    w = g.call_function(torch.ops.aten.sym_size.int, (x, 3))

    def pad_of(d: fx.Node) -> fx.Node:
        r = g.call_function(operator.mod, (d, window))
        return g.call_function(operator.mod, (g.call_function(operator.sub, (window, r)), window))

    padded = g.call_function(
        torch.nn.functional.pad, (x, (0, pad_of(w), 0, pad_of(h))), {"mode": mode}
    )
    placeholders = [n for n in inner.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ConversionError(f"the exported graph has {len(placeholders)} inputs, not 1")
    out = g.graph_copy(inner.graph, {placeholders[0]: padded})
    if isinstance(out, (tuple, list)):
        out = out[0]
    y = g.call_function(
        operator.getitem,
        (out, (Ellipsis, slice(None, g.call_function(operator.mul, (h, scale))),
               slice(None, g.call_function(operator.mul, (w, scale))))),
    )
    g.output(y)
    outer = fx.GraphModule(inner, g)
    for name in ("train", "eval"):
        outer.__dict__.pop(name, None)
    return outer


def _inner(module: nn.Module) -> nn.Module:
    return module.model if isinstance(module, PadToMultiple) else module


def _export(module: nn.Module, example: torch.Tensor, *, dynamic: bool) -> fx.GraphModule:
    from glam.importers.export.backend import name_convs, unlifted_module

    shapes = None
    if dynamic:
        auto = torch.export.Dim.AUTO
        shapes = ({2: auto, 3: auto},)
    ep = torch.export.export(module, (example,), dynamic_shapes=shapes, strict=False)
    gm = unlifted_module(ep.run_decompositions({}))
    name_convs(gm)
    return gm


def _symbolic(module: nn.Module) -> fx.GraphModule:
    # on a copy: a forward that assigns attributes (SPAN: ``self.mean = self.mean.type_as(x)``)
    # would leave a Proxy in the reference module
    return fx.symbolic_trace(copy.deepcopy(module))


def _jit_ts2fx(module: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    from glam.importers.torchscript.ts2fx import translate

    sm = torch.jit.trace(module, (example,), check_trace=False)
    gm, _ = translate(sm, (example,))
    return gm


def _self_check(gm: fx.GraphModule, x: torch.Tensor, ref: torch.Tensor, where: str) -> None:
    with torch.no_grad():
        out = gm(x.clone())
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConversionError(f"output {got} at {where}, the module gives {list(ref.shape)}")
    err = float((out.float() - ref.float()).abs().max())
    if not err <= _SELF_CHECK_RTOL * max(1.0, float(ref.abs().max())):
        raise ConversionError(f"differs from the module by {err:.3g} at {where}")


def _name_convs(gm: fx.GraphModule, strip: str) -> None:
    """Tap names are the spandrel module's qualnames (``strip``: :class:`PadToMultiple`'s prefix)."""
    from glam.importers.tap import default_tap_name, find_conv_nodes

    for node in find_conv_nodes(gm):
        name = default_tap_name(node)
        if strip and name.startswith(strip):
            name = name[len(strip):]
        node.meta["glam_name"] = name


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"

