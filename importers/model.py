"""Data classes describing an imported, tapped SR model.

A backend (ONNX, TorchScript, torch.export) turns a file into a :class:`RawGraph`: an
untapped ``torch.fx.GraphModule`` in the model's *native* conventions plus a callable
that runs the original model for parity. :func:`glam.importers.load` then detects the I/O
conventions, taps every convolution, proves parity and returns an :class:`ImportedModel`
whose graph takes the *canonical* input (NCHW, float32, range [0, 1]) and returns
``(y, (f_0, ..., f_{n-1}))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

ModelFormat = Literal["onnx", "torchscript", "export", "checkpoint", "module"]


@dataclass
class RawGraph:
    """What a format backend hands to the common import pipeline.

    Attributes
    ----------
    gm:
        Untapped graph; ``gm(*inputs)`` returns a tensor or a tuple/list of tensors in the
        model's native conventions. Conv nodes may carry ``node.meta["glam_name"]`` (a stable
        human-readable tap name, e.g. the ONNX weight name or the module path).
    format:
        ``"onnx"``, ``"torchscript"``, ``"export"`` or ``"checkpoint"`` (spandrel).
    reference:
        Runs the *original* model (onnxruntime session, ScriptModule, exported program) on
        native numpy inputs and returns every output as numpy.
    reference_name:
        What ``reference`` is, e.g. ``"onnxruntime[CUDAExecutionProvider]"``.
    input_names, output_names:
        Names of the model's inputs/outputs (ONNX value names, or ``input_0`` ...).
    input_shape:
        Native input shape with ``None`` for dynamic dimensions, or ``None`` when unknown.
    metadata:
        Format details shown by ``glam inspect`` (opset, producer, ...).
    warnings:
        Fidelity warnings recorded during conversion.
    first_divergence:
        Optional callable ``(native_inputs) -> str | None`` naming the first graph node whose
        value differs from the original model, used to explain a parity failure.
    node_parity:
        Optional callable ``(native_inputs) -> dict`` for a quantized graph: every node run
        on the reference's own inputs, the largest difference in quantization codes
        (:mod:`glam.importers.quant_parity` uses it when the output check in steps fails).
    """

    gm: torch.fx.GraphModule
    format: ModelFormat
    reference: Callable[[list[np.ndarray]], list[np.ndarray]]
    reference_name: str
    input_names: list[str]
    output_names: list[str]
    input_shape: tuple[int | None, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    first_divergence: Callable[[list[np.ndarray]], str | None] | None = None
    node_parity: Callable[[list[np.ndarray]], dict[str, Any]] | None = None


@dataclass(frozen=True)
class TapInfo:
    """One tapped convolution.

    Attributes
    ----------
    index:
        Position in execution (topological) order, 0-based.
    name:
        Stable human-readable name (ONNX weight/node name or module path).
    op:
        Operator type, e.g. ``"Conv2d"``, ``"ConvTranspose2d"``, ``"aten.convolution"``.
    shape:
        Output shape ``(1, C, H, W)`` at the probe input.
    parent:
        ``parent(j)`` of GLAM.md at the probe input: the latest participating tap that is a
        graph ancestor, or ``-1`` for the model input.
    participating:
        4-D output of batch size 1 with ``H > 1`` and ``W > 1`` at the probe input
        (GLAM.md "Participating taps").
    reason:
        Why the tap does not participate (``""`` when it does), e.g. ``"batch-folded
        (output 25x16x8x8: ...)"`` for a conv on windows stacked in the batch axis.
    """

    index: int
    name: str
    op: str
    shape: tuple[int, ...]
    parent: int
    participating: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class Conventions:
    """The model's I/O conventions as detected (or overridden by the user).

    Attributes
    ----------
    in_channels:
        1 (Y of YCbCr) or 3 (RGB).
    out_channels:
        Channels of the selected output.
    layout:
        ``"NCHW"`` or ``"NHWC"`` (native input layout).
    input_range:
        1 (inputs in [0, 1]) or 255 (inputs in [0, 255]).
    range_source:
        How ``input_range`` was chosen: ``"flag"``, ``"auto"`` (with the errors), ...
    fixed_size:
        ``(h, w)`` when the model only accepts one input size, else ``None``.
    output_index:
        Which output of a multi-output model is analysed.
    output_name:
        Its name.
    scale:
        Integer ``s`` in ``out = s * in + offset``.
    offset:
        ``(offset_h, offset_w)``; non-zero for models that crop a border.
    scale_source:
        ``"two sizes"`` or ``"one size (fixed-size model)"``.
    """

    in_channels: int
    out_channels: int
    layout: Literal["NCHW", "NHWC"]
    input_range: int
    range_source: str
    fixed_size: tuple[int, int] | None
    output_index: int
    output_name: str
    scale: int
    offset: tuple[int, int]
    scale_source: str

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Output size for an input of ``h x w`` (GLAM.md "Inputs": ``out = s*in + offset``)."""
        return self.scale * h + self.offset[0], self.scale * w + self.offset[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["offset"] = list(self.offset)
        d["fixed_size"] = list(self.fixed_size) if self.fixed_size else None
        return d


@dataclass(frozen=True)
class ParityReport:
    """Numerical parity between the imported graph and the original model."""

    reference: str
    max_abs_error: float
    passed: bool
    tolerance: float
    input_shape: tuple[int, ...]
    first_divergence: str | None = None
    seconds: float = 0.0
    steps: dict[str, Any] | None = None
    """A quantized graph's parity in output quantization steps
    (:class:`glam.importers.quant_parity.StepParity`), which then decides ``passed``."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


@dataclass
class ImportedModel:
    """A tapped, canonical, parity-checked FX graph of an SR model.

    Call it with a canonical input ``x`` (``1 x C_in x h x w``, float32, range [0, 1]) to get
    ``(y, taps)`` where ``y`` is the canonical output (``1 x C_out x H x W``, range [0, 1]
    scale) and ``taps[i]`` the output of convolution ``i`` with autograd intact.
    """

    graph: torch.fx.GraphModule
    path: str
    sha256: str
    format: ModelFormat
    taps: list[TapInfo]
    tap_ancestors: list[frozenset[int]]
    conventions: Conventions
    parity: ParityReport
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of the import's steps that a phase log reports (``parity``)."""
    reference: Callable[[list[np.ndarray]], list[np.ndarray]] | None = field(
        default=None, repr=False, compare=False
    )
    """Runs the original model on native numpy inputs (:attr:`RawGraph.reference`): the
    analysis checks its output against it on every analysed input
    (:func:`glam.importers.parity.run_parity`). ``None``: nothing to check against (e.g. a
    weight-randomised copy)."""
    node_parity: Callable[[list[np.ndarray]], dict[str, Any]] | None = field(
        default=None, repr=False, compare=False
    )
    """A quantized graph's node-by-node check on the reference's own inputs
    (:attr:`RawGraph.node_parity`), for run parity's second rule."""

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return self.graph(x)

    @property
    def n_taps(self) -> int:
        return len(self.taps)

    def to(self, device: torch.device | str) -> ImportedModel:
        """Move the graph's parameters and buffers to ``device`` (in place) and return self."""
        self.graph.to(device)
        return self

    def parents(self, participating: Sequence[bool]) -> list[int]:
        """``parent(j)`` of GLAM.md for every tap, given which taps participate.

        Parameters
        ----------
        participating:
            One flag per tap (participation depends on the analysed input's size).

        Returns
        -------
        list[int]
            For every tap ``j``: the participating graph ancestor latest in execution order,
            or ``-1`` (the model input) when there is none.
        """
        return parents_from_ancestors(self.tap_ancestors, participating)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (what ``glam inspect --json`` prints)."""
        c = self.conventions
        return {
            "path": self.path,
            "sha256": self.sha256,
            "format": self.format,
            "metadata": self.metadata,
            "scale": c.scale,
            "offset": list(c.offset),
            "input": {
                "names": self.input_names,
                "channels": c.in_channels,
                "layout": c.layout,
                "range": c.input_range,
                "range_source": c.range_source,
                "fixed_size": list(c.fixed_size) if c.fixed_size else None,
            },
            "output": {
                "names": self.output_names,
                "index": c.output_index,
                "name": c.output_name,
                "channels": c.out_channels,
            },
            "conventions": c.to_dict(),
            "parity": self.parity.to_dict(),
            "warnings": list(self.warnings),
            "taps": [t.to_dict() for t in self.taps],
        }


def parents_from_ancestors(
    ancestors: Sequence[frozenset[int]], participating: Sequence[bool]
) -> list[int]:
    """Compute ``parent(j)`` (GLAM.md) from tap ancestry and participation flags."""
    out: list[int] = []
    for anc in ancestors:
        cands = [i for i in anc if participating[i]]
        out.append(max(cands) if cands else -1)
    return out
