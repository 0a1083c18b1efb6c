"""Checkpoint backend: a ``.pth`` / ``.safetensors`` SR state dict through spandrel.

Most SR models in circulation are state-dict checkpoints of a few dozen community
architectures (ESRGAN, Real-ESRGAN compact, SwinIR, HAT, DAT, OmniSR, SPAN, SAFMN, PLKSR,
DITN, SeemoRe, ...). This backend

1. reads the tensors safely (:mod:`glam.importers.checkpoint.safety`:
   ``torch.load(weights_only=True)`` or ``safetensors``; nothing in the file runs);
2. lets spandrel (the ``community`` extra) detect the architecture and its hyper-parameters
   and build the ``nn.Module``; a checkpoint spandrel does not recognise, and a face
   restoration or inpainting model, is refused; a restoration model at scale 1 (denoising,
   deblurring, ...) is imported with a warning that says so;
3. wraps the module so that glam analyses it as spandrel runs it: :class:`PadToMultiple`
   when spandrel says its input sizes must be a multiple of some ``m`` (reflect padding on
   the bottom / right, output cropped back), :class:`FlatOutputs` when it returns more
   than an image (MMRealSR's degradation estimates, MPRNet's stage outputs: every output is
   named, the first image output is analysed and the choice recorded);
4. traces it with :func:`glam.importers.checkpoint.tracing.trace_module`: any size the
   model accepts (pad-and-crop for size multiples and attention windows), a branch chosen
   by a tensor value recorded as such, a fixed-size graph only as the last resort.

The parity reference is the spandrel module itself; tap names are its module qualnames.
"""

from __future__ import annotations

import time
import warnings as pywarnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from glam.errors import (
    MissingDependencyError,
    ModelFileError,
    NotSuperResolutionError,
    first_line,
)
from glam.importers.checkpoint.safety import CheckpointKind, read_state_dict
from glam.importers.checkpoint.tracing import PROBE_SIZE, trace_module, window_size
from glam.importers.checkpoint.wrappers import (
    FlatOutputs,
    PadToMultiple,
    SpandrelCall,
    custom_call,
    flatten_outputs,
)
from glam.importers.model import RawGraph
from glam.importers.probe import probe_input
from torch import nn

__all__ = [
    "PadToMultiple",
    "describe",
    "load_checkpoint",
    "module_from_state_dict",
    "reconcile_metadata",
]

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
    with torch.no_grad():
        first = module(example.clone())
    if not isinstance(first, torch.Tensor):
        # several outputs: named in order; the conventions pick the image one
        module = _flat(module)
    n_out = len(flatten_outputs(first))
    t0 = time.perf_counter()
    trace = trace_module(module, example)
    metadata["route"] = trace.route
    metadata["conversion_s"] = round(time.perf_counter() - t0, 3)
    if trace.errors:
        metadata["route_errors"] = trace.errors
    if trace.specialised:
        metadata["specialised"] = trace.specialised
        metadata["specialised_detail"] = trace.detail
    if trace.multiple is not None:
        metadata["input_multiple"] = trace.multiple
        warnings.append(
            f"traced with {trace.route}: no padding mode reproduces the model off a multiple "
            f"of {trace.multiple}, so the graph accepts only input sizes that are multiples of "
            f"{trace.multiple}; pad or crop inputs to such a size"
        )
    if trace.specialised == "values":
        warnings.append(
            f"traced with {trace.route}, which holds the branch a tensor value chose at the "
            f"probe input ({trace.detail}; no route keeps the model's data-dependent control "
            "flow); every analysis checks the output against the spandrel module on the "
            "analysed input and refuses an input that takes another branch"
        )
    if trace.fixed:
        warnings.append(
            f"traced with {trace.route}, specialised to the probe size {PROBE_SIZE[0]}x"
            f"{PROBE_SIZE[1]} (no size-generic route worked: "
            f"{'; '.join(f'{k}: {v}' for k, v in trace.errors.items())}); the graph only "
            "accepts that input size"
        )

    def reference(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.array(a, copy=True)) for a in inputs])
        return [o.detach().cpu().numpy() for o in flatten_outputs(out)]

    return RawGraph(
        gm=trace.gm,
        format="checkpoint",
        reference=reference,
        reference_name=f"spandrel {metadata['architecture']} module",
        input_names=["input"],
        output_names=["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)],
        input_shape=(1, c_in, *(PROBE_SIZE if trace.fixed else (None, None))),
        metadata=metadata,
        warnings=warnings,
    )


def _flat(module: nn.Module) -> nn.Module:
    """:class:`FlatOutputs` inside :class:`PadToMultiple` (which crops the image outputs),
    so that every route traces a flat tuple of tensors."""
    if isinstance(module, PadToMultiple):
        return PadToMultiple(FlatOutputs(module.model), module.multiple, module.scale,
                             module.minimum, module.square).eval()
    return FlatOutputs(module).eval()


def _spandrel() -> Any:
    """spandrel, with the architectures of ``spandrel_extra_arches`` registered too when it
    is installed (the ``community`` extra: SRFormer, Restormer, MPRNet, ...)."""
    try:
        import spandrel
    except ImportError as exc:
        raise MissingDependencyError("spandrel", "community") from exc
    try:
        import spandrel_extra_arches
    except ImportError:
        pass
    else:
        spandrel_extra_arches.install(ignore_duplicates=True)
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
    req = meta["size_requirements"]
    multiple, minimum, square = int(req["multiple_of"]), int(req["minimum"]), bool(req["square"])
    window = window_size(module)
    call = custom_call(desc)
    if call is not None:  # the module as spandrel calls it (e.g. DRUNet's noise-level channel)
        module = SpandrelCall(module, call).eval()
        meta["spandrel_call"] = True
    if multiple > 1 or minimum or square:
        module = PadToMultiple(module, multiple, int(desc.scale), minimum, square).eval()
        needs = ", ".join(x for x in (
            f"a multiple of {multiple}" if multiple > 1 else "",
            f"at least {minimum} pixels" if minimum else "", "square" if square else "") if x)
        warnings.append(
            f"{arch} needs input sizes that are {needs}; glam pads each input as spandrel does "
            "(bottom/right, reflect, replicate beyond what reflect can) and crops the output back"
        )
    if window:
        warnings.append(
            f"{arch} attends within windows of {window}x{window} pixels: the model pads each "
            f"input to a multiple of {window} itself and crops its output"
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


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"

