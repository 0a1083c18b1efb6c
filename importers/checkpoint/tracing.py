"""Tracing a spandrel module to an FX graph that reproduces it at any input size it accepts.

The module is the parity reference; every candidate graph must reproduce it at four sizes
(:data:`CHECK_SIZES`: the probe, a second size, an odd size that is no multiple of any
window, a small odd size) before it is taken. In order:

1. **Pad-and-crop, when the model needs a size multiple.** spandrel's ``size_requirements``
   (SAFMN, DITN: the input must be a multiple of ``m``) or the model's own pad-to-window
   (SwinIR, HAT, OmniSR pad each input to their window ``w``). The model is exported with
   ``torch.export`` for inputs that are multiples of ``m`` (derived dynamic dimensions
   ``m * d``), and the graph pads outside the export exactly as the model (or spandrel)
   pads, with the padding mode that reproduces it (reflect for SwinIR / HAT and spandrel,
   zeros for OmniSR), and crops the output. ``torch.export`` of the unpadded model would
   specialise the pad to the probe size's case.
2. **Whole-module routes**: ``torch.export`` with dynamic height and width,
   ``torch.fx.symbolic_trace``, ``torch.jit.trace`` + glam's ``ts2fx``. A route that read a
   tensor value as a Python number while tracing (a mixture-of-experts gate choosing its
   experts, ``x.item()`` in a branch) holds the branch taken at the probe input: it is
   kept only when no other route works, and the import records it
   (``metadata["specialised"] = "values"``) so that the analysis-time parity check names
   the cause when an image takes another branch.
3. **Pad-and-crop for the multiples a failed route's shape guards name** (GRL:
   ``(64 - H % 64) % 64 == 0``).
4. A graph valid only for multiples of some ``m`` (``multiple``), then, as the last resort,
   ``torch.export`` specialised to the probe size (``fixed``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
import os
import re
import signal
import threading
import warnings as pywarnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from glam.errors import ConversionError, first_line
from glam.importers.checkpoint.specialisation import eager_value_reads, graph_value_reads
from glam.importers.checkpoint.wrappers import (
    FlatOutputs,
    PadToMultiple,
    SpandrelCall,
    flatten_outputs,
    pad_like_spandrel,
    padded_side,
)
from glam.importers.probe import probe_input
from torch import fx, nn

__all__ = ["CHECK_SIZES", "PAD_MODES", "PROBE_SIZE", "Trace", "trace_module", "window_size"]

PROBE_SIZE = (40, 36)
SECOND_SIZE = (48, 48)
ODD_SIZE = (43, 37)  # no multiple of any window: a specialising shape guard shows here
SMALL_SIZE = (21, 19)  # small and odd: guards specialised to the probe's size range show here
CHECK_SIZES = {"the probe size": PROBE_SIZE, "a second input size": SECOND_SIZE,
               f"the odd size {ODD_SIZE[0]}x{ODD_SIZE[1]}": ODD_SIZE,
               f"the small size {SMALL_SIZE[0]}x{SMALL_SIZE[1]}": SMALL_SIZE}
_SELF_CHECK_RTOL = 1e-5
#: padding modes tried, in order, for the pad-and-crop graph (the model's own mode wins):
#: ``reflect-or-constant`` reflects where reflect can and pads zeros where the input is too
#: small for it (GRL: ``try: reflect`` ``except: constant``)
PAD_MODES = ("reflect", "constant", "replicate", "reflect-or-constant")
#: the largest input side the derived dynamic dimensions allow (a multiple of every m)
_MAX_SIDE = 8192
_GUARD_MODULUS = re.compile(r"%\s*(\d+)")
_GUARD_DIVISOR = re.compile(r"//\s*(\d+)")


@dataclass
class Trace:
    """The graph :func:`trace_module` chose and how.

    Attributes
    ----------
    gm:
        The untapped graph (conv nodes carry ``glam_name``, the module qualname).
    route:
        How it was made, e.g. ``"torch.export + pad-to-window (reflect)"``.
    errors:
        Why each route tried before it failed (or was passed over).
    fixed:
        Specialised to the probe size (the last resort).
    multiple:
        ``None`` for a graph that takes any size, else the multiple its input sizes must be.
    specialised:
        ``"values"`` when the trace holds a branch chosen by a tensor value at the probe
        input, ``"size"`` for a fixed-size graph, else ``None``.
    detail:
        What was specialised (the node and model location of the value read).
    """

    gm: fx.GraphModule
    route: str
    errors: dict[str, str] = field(default_factory=dict)
    fixed: bool = False
    multiple: int | None = None
    specialised: str | None = None
    detail: str = ""


class _Checks:
    """The target module's outputs at :data:`CHECK_SIZES`, and the comparison of a graph
    with them."""

    def __init__(self, target: nn.Module, channels: int) -> None:
        self.inputs = {where: probe_input(channels, *size) for where, size in CHECK_SIZES.items()}
        req, minimum, square = _requirements(target)
        padded = {_aligned_size(size, req, minimum, square) for size in CHECK_SIZES.values()}
        if len(padded) == 1:
            # every check size pads to the same input (Uformer: 128x128): one more that
            # pads to another, or a graph fixed to that size would pass
            side = max(next(iter(padded))) + 1
            self.inputs[f"the size {side}x{side}"] = probe_input(channels, side, side)
        with torch.no_grad():
            self.refs = {w: flatten_outputs(target(x.clone())) for w, x in self.inputs.items()}

    def run(self, gm: fx.GraphModule, sizes: tuple[str, ...] | None = None) -> None:
        """Raise :class:`ConversionError` where ``gm`` differs from the module."""
        for where in sizes or tuple(self.inputs):
            with torch.no_grad(), pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore")
                outs = flatten_outputs(gm(self.inputs[where].clone()))
            _check_outputs(outs, self.refs[where], where)


def trace_module(target: nn.Module, example: torch.Tensor) -> Trace:
    """Trace ``target`` to an untapped FX graph that reproduces it (module docstring).

    Parameters
    ----------
    target:
        The eval-mode module as glam analyses it (the parity reference), possibly wrapped in
        :class:`PadToMultiple` and/or :class:`FlatOutputs`.
    example:
        A native input at the probe size.

    Returns
    -------
    Trace

    Raises
    ------
    ConversionError
        When no route reproduces the module; the message names every route's reason.
    """
    checks = _Checks(target, int(example.shape[1]))
    inner, wrappers = _unwrap(target)
    req, minimum, square = _requirements(target)
    window = own_pad_multiple(inner)
    scale = _scale(checks)
    unpadded = _rewrap(inner, wrappers, pad=False)  # what the pad-and-crop path exports
    errors: dict[str, str] = {}
    tried: set[int] = set()
    value_fallback: Trace | None = None
    partial: Trace | None = None

    def pad_path(m: int, why: str) -> Trace | None:
        nonlocal partial
        m = math.lcm(m, req)
        if m in tried or (m < 2 and not square):
            return None
        tried.add(m)
        name = ("pad-to-window" if why == "window" else
                f"pad-to-multiple {m}" if m > 1 else "pad-to-size")
        try:
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore")
                gm = _export_multiple(unpadded, example, m, minimum, square)
        except Exception as exc:  # noqa: BLE001 - each route fails in its own way
            errors[f"torch.export for multiples of {m}"] = first_line(exc, 200)
            return None
        modes = ("reflect",) + tuple(p for p in PAD_MODES if p != "reflect") if req > 1 else PAD_MODES
        for mode in modes:
            route = f"torch.export + {name} ({mode})"
            try:
                wrapped = _pad_wrapped(gm, scale, m, mode, minimum, square)
                checks.run(wrapped)
            except Exception as exc:  # noqa: BLE001 - the next mode
                errors[route] = first_line(exc, 200)
                continue
            return Trace(_named(wrapped, unpadded), route, errors)
        try:
            # at every check size, aligned to m: a graph whose guards pin one size (MPRNet's
            # trunc(H / 2) == 20) or a range (IPT's patch count // 64) is no graph "for
            # multiples of m"
            sizes = list(dict.fromkeys(_aligned_size(sz, m, minimum, square)
                                       for sz in CHECK_SIZES.values()))
            top = max(sizes)
            sizes.append((top[0] + m, top[1] + m))  # at least two, however large m is
            for size in sizes:
                _compare(gm, target, probe_input(int(example.shape[1]), *size))
            if m > 1:
                partial = partial or Trace(_named(gm, unpadded),
                                           f"torch.export (multiples of {m})", errors, multiple=m)
        except Exception as exc:  # noqa: BLE001 - not even at multiples
            errors[f"torch.export (multiples of {m})"] = first_line(exc, 200)
        return None

    # 1. the multiple the model (or spandrel) pads to, padded outside the export
    if req > 1 or window or square:  # (a minimum size alone: the whole-module routes pad)
        found = pad_path(window or req,
                         "window" if window and window == window_size(inner) else "multiple")
        if found is not None:
            return found
    # 2. whole-module routes
    routes: tuple[tuple[str, Callable[[], tuple[fx.GraphModule, str]]], ...] = (
        ("torch.export", lambda: _export_dynamic(target, example)),
        ("fx.symbolic_trace", lambda: (_symbolic(target), "")),
        ("jit.trace+ts2fx", lambda: _jit_ts2fx(target, example)),
    )
    for route, build in routes:
        try:
            gm, values = build()
            checks.run(gm)
        except Exception as exc:  # noqa: BLE001 - each route fails in its own way
            errors[route] = first_line(exc, 200)
            continue
        if values:
            value_fallback = value_fallback or Trace(
                _named(gm, target), route, dict(errors), specialised="values", detail=values)
            errors[route] = f"passed over: it holds a branch chosen by a tensor value ({values})"
            continue
        return Trace(_named(gm, target), route, errors)
    # 3. the multiples the failed routes' shape guards name
    for m in _guard_multiples(errors):
        found = pad_path(m, "multiple")
        if found is not None:
            return found
    # 4. fallbacks
    if value_fallback is not None:
        value_fallback.errors = errors
        return value_fallback
    if partial is not None:
        partial.errors = errors
        return partial
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            gm = _export(target, example, dynamic=False)
            checks.run(gm, ("the probe size",))
    except Exception as exc:  # noqa: BLE001
        errors["torch.export (static)"] = first_line(exc, 200)
        raise ConversionError(
            "cannot trace the spandrel module: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        ) from None
    return Trace(_named(gm, target), "torch.export (static)", errors, fixed=True,
                 specialised="size", detail=f"the probe size {PROBE_SIZE[0]}x{PROBE_SIZE[1]}")


# ------------------------------------------------------------------------------- helpers


def _unwrap(target: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The innermost model and the wrappers around it, outermost first."""
    wrappers: list[nn.Module] = []
    m = target
    while isinstance(m, (PadToMultiple, FlatOutputs, SpandrelCall)):
        wrappers.append(m)
        m = m.model
    return m, wrappers


def _rewrap(inner: nn.Module, wrappers: list[nn.Module], *, pad: bool) -> nn.Module:
    """``inner`` in the same wrappers, without :class:`PadToMultiple` unless ``pad``."""
    m = inner
    for w in reversed(wrappers):
        if isinstance(w, FlatOutputs):
            m = FlatOutputs(m)
        elif isinstance(w, SpandrelCall):
            m = SpandrelCall(m, w.call_fn)
        elif pad:
            m = PadToMultiple(m, w.multiple, w.scale, w.minimum, w.square)
    return m


def _requirements(target: nn.Module) -> tuple[int, int, bool]:
    """spandrel's ``(multiple, minimum, square)`` the target pads to (``(1, 0, False)``)."""
    _, wrappers = _unwrap(target)
    pad = next((w for w in wrappers if isinstance(w, PadToMultiple)), None)
    return (pad.multiple, pad.minimum, pad.square) if pad is not None else (1, 0, False)


def _int_attr(module: nn.Module, name: str) -> int | None:
    v = getattr(module, name, None)
    if isinstance(v, (tuple, list)) and v:
        v = v[0]
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 1 else None


def window_size(module: nn.Module) -> int | None:
    """The attention window of a model (``module.window_size``), if any."""
    return _int_attr(module, "window_size")


#: attributes naming the multiple a model pads its input to in its own forward, in the
#: order they take precedence (GRL pads to ``pad_size`` 64, not to its window 32;
#: NAFNet / KBNet to ``padder_size``; SwinIR, HAT, OmniSR to ``window_size``;
#: MixDehazeNet to ``patch_size``)
PAD_ATTRIBUTES = ("pad_size", "padder_size", "window_size", "patch_size")


def own_pad_multiple(module: nn.Module) -> int | None:
    """The multiple a model pads its input to itself (:data:`PAD_ATTRIBUTES`), if any."""
    for name in PAD_ATTRIBUTES:
        m = _int_attr(module, name)
        if m is not None:
            return m
    return None


def _scale(checks: _Checks) -> int:
    ref = checks.refs["the probe size"][0]
    return max(1, int(ref.shape[-2]) // PROBE_SIZE[0])


def _aligned_size(size: tuple[int, int], m: int, minimum: int = 0,
                  square: bool = False) -> tuple[int, int]:
    """``size`` padded to the requirements (ints)."""
    h, w = (int(padded_side(int(d), m, minimum)) for d in size)
    return (max(h, w),) * 2 if square else (h, w)


def _guard_multiples(errors: dict[str, str]) -> list[int]:
    """The multiples failed routes' shape guards name: moduli (``x.size()[2] % 64``,
    largest first), then divisors (``2 * ((x.size()[3] - 1) // 2)``: RealCUGAN's even
    sizes)."""
    texts = [t for t in errors.values() if "Guard" in t or "guard" in t]
    out: list[int] = []
    for pattern in (_GUARD_MODULUS, _GUARD_DIVISOR):
        found = {int(n) for t in texts for n in pattern.findall(t) if 1 < int(n) <= 256}
        out += [m for m in sorted(found, reverse=True) if m not in out]
    return out


def _check_outputs(outs: list[torch.Tensor], refs: list[torch.Tensor], where: str) -> None:
    """Raise :class:`ConversionError` unless ``outs`` equal the module's ``refs`` (count,
    shapes, values within :data:`_SELF_CHECK_RTOL` of the reference's scale)."""
    if len(outs) != len(refs):
        raise ConversionError(f"{len(outs)} outputs at {where}, the module gives {len(refs)}")
    for out, ref in zip(outs, refs, strict=True):
        if out.shape != ref.shape:
            raise ConversionError(
                f"output {list(out.shape)} at {where}, the module gives {list(ref.shape)}"
            )
        err = float((out.float() - ref.float()).abs().max()) if out.numel() else 0.0
        if not err <= _SELF_CHECK_RTOL * max(1.0, float(ref.abs().max()) if ref.numel() else 1.0):
            raise ConversionError(f"differs from the module by {err:.3g} at {where}")


def _compare(gm: fx.GraphModule, target: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad(), pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        outs, refs = flatten_outputs(gm(x.clone())), flatten_outputs(target(x.clone()))
    h, w = x.shape[-2:]
    _check_outputs(outs, refs, f"{h}x{w}")


class ExportBudgetExceeded(ConversionError):
    """A dynamic ``torch.export`` ran past :func:`export_budget` seconds."""


def export_budget() -> float:
    """Seconds one dynamic ``torch.export`` may take before glam tries the next route
    (``GLAM_EXPORT_BUDGET_S``, default 120). Its symbolic shape reasoning (sympy) can run
    for many minutes on some window transformers (DCTLSA, Uformer: over 10 minutes on a
    2-core machine) where ``torch.jit.trace`` takes a second."""
    try:
        return float(os.environ.get("GLAM_EXPORT_BUDGET_S", "120"))
    except ValueError:
        return 120.0


class _Expired(BaseException):
    """Raised by the alarm: a ``BaseException``, so that no ``except Exception`` inside the
    exporter swallows it."""


@contextlib.contextmanager
def _time_limited(seconds: float) -> Iterator[None]:
    """Raise :class:`ExportBudgetExceeded` in the block after ``seconds`` (main thread and
    POSIX only; elsewhere no limit). The alarm interrupts Python code (sympy), never C++; it
    repeats every 0.5 s until the block has left, in case code in between catches it."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return

    armed = [True]

    def expire(_sig: int, _frame: object) -> None:
        if armed[0]:
            raise _Expired

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
    try:
        yield
    except _Expired:
        armed[0] = False
        raise ExportBudgetExceeded(
            f"gave up after {seconds:g} s of symbolic shape reasoning (GLAM_EXPORT_BUDGET_S)"
        ) from None
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _export(module: nn.Module, example: torch.Tensor, *, dynamic: bool,
            shapes: object = None) -> fx.GraphModule:
    from glam.importers.export.backend import name_convs, unlifted_module

    if dynamic and shapes is None:
        auto = torch.export.Dim.AUTO
        shapes = ({2: auto, 3: auto},)
    with _time_limited(export_budget() if dynamic else 0):
        ep = torch.export.export(module, (example,), dynamic_shapes=shapes if dynamic else None,
                                 strict=False)
        ep = ep.run_decompositions({})
    gm = unlifted_module(ep)
    name_convs(gm)
    return gm


def _export_dynamic(module: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, str]:
    gm = _export(module, example, dynamic=True)
    return gm, graph_value_reads(gm)


def _export_multiple(module: nn.Module, example: torch.Tensor, m: int, minimum: int = 0,
                     square: bool = False) -> fx.GraphModule:
    """``module`` exported for inputs whose sides are multiples of ``m`` (at an aligned
    example, at least ``minimum``, square if asked): the model's own padding to ``m`` is
    then a no-op the graph may specialise."""
    h, w = _aligned_size(tuple(int(d) for d in example.shape[-2:]), m, minimum, square)
    aligned = probe_input(int(example.shape[1]), h, w)
    low = max(1, -(-minimum // m))
    dh = torch.export.Dim("h_blocks", min=low, max=_MAX_SIDE // m)
    dw = dh if square else torch.export.Dim("w_blocks", min=low, max=_MAX_SIDE // m)
    try:
        return _export(module, aligned, dynamic=True, shapes=({2: m * dh, 3: m * dw},))
    except ExportBudgetExceeded:
        raise
    except Exception:  # noqa: BLE001 - some models reject derived dims; AUTO then
        return _export(module, aligned, dynamic=True)


def _symbolic(module: nn.Module) -> fx.GraphModule:
    # on a copy: a forward that assigns attributes (SPAN: ``self.mean = self.mean.type_as(x)``)
    # would leave a Proxy in the reference module
    return fx.symbolic_trace(copy.deepcopy(module))


def _jit_ts2fx(module: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, str]:
    """``torch.jit.trace`` + ``ts2fx``, and where the model reads an input-dependent value as
    a Python number (the trace then holds the branch that value chose)."""
    from glam.importers.torchscript.ts2fx import translate

    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        sm = torch.jit.trace(module, (example,), check_trace=False)
    # "Converting a tensor to a Python boolean ...", "Iterating over a tensor ...": during
    # tracing sizes are tensors too, so the warning alone does not tell a size from a value;
    # the eager run does
    warned = any(issubclass(w.category, torch.jit.TracerWarning)
                 and "might cause the trace to be incorrect" in str(w.message) for w in caught)
    gm, _ = translate(sm, (example,))
    return gm, (eager_value_reads(module, example) if warned else "")


def _pad_wrapped(gm: fx.GraphModule, scale: int, m: int, mode: str, minimum: int = 0,
                 square: bool = False) -> fx.GraphModule:
    """One flat FX graph: pad (:func:`pad_like_spandrel` with ``mode``, bottom/right) to a
    multiple of ``m`` (at least ``minimum``, square if asked), the exported graph, crop the
    output(s) back to ``scale`` times the input.

    Built by graph surgery (the exported graph's nodes are copied after the padding nodes);
    its ``_guards_fn`` call is dropped, the padding guarantees the sizes it checks. The conv
    nodes keep their ``nn_module_stack`` metadata and hence their names.
    """
    inner = copy.deepcopy(gm)
    for node in list(inner.graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn":
            inner.graph.erase_node(node)
    g = fx.Graph()
    x = g.placeholder("x")
    h = g.call_function(torch.ops.aten.sym_size.int, (x, 2))
    w = g.call_function(torch.ops.aten.sym_size.int, (x, 3))

    padded = g.call_function(pad_like_spandrel, (x, m, minimum, square, mode))
    placeholders = [n for n in inner.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ConversionError(f"the exported graph has {len(placeholders)} inputs, not 1")
    out = g.graph_copy(inner.graph, {placeholders[0]: padded})
    hs = g.call_function(operator.mul, (h, scale))
    ws = g.call_function(operator.mul, (w, scale))

    def crop(o: fx.Node) -> fx.Node:
        return g.call_function(operator.getitem, (o, (Ellipsis, slice(None, hs), slice(None, ws))))

    if isinstance(out, (tuple, list)):
        # image outputs (4-D) are cropped; side outputs (a degradation estimate) pass
        out = tuple(crop(o) if _is_image(o) else o for o in out)
    else:
        out = crop(out)
    g.output(out)
    outer = fx.GraphModule(inner, g)
    for name in ("train", "eval"):
        outer.__dict__.pop(name, None)
    return outer


def _is_image(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return getattr(val, "dim", lambda: 4)() == 4


def _named(gm: fx.GraphModule, traced: nn.Module) -> fx.GraphModule:
    """Tap names are the spandrel module's qualnames, without the ``model.`` prefix of each
    glam wrapper around the module that was traced."""
    from glam.importers.tap import default_tap_name, find_conv_nodes

    strip = "model." * len(_unwrap(traced)[1])
    for node in find_conv_nodes(gm):
        name = default_tap_name(node)
        if strip and name.startswith(strip):
            name = name[len(strip):]
        node.meta["glam_name"] = name
    return gm
