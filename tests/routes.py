"""Export one eager module through every route glam reads (tests only).

``legacy.onnx`` (TorchScript-based ONNX exporter), ``dynamo.onnx`` (torch.export-based ONNX
exporter), ``trace.pt`` (``torch.jit.trace``), ``script.pt`` (``torch.jit.script``) and
``pt2`` (``torch.export.save``), each with dynamic height and width where the route allows.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

ROUTES: tuple[str, ...] = ("legacy.onnx", "dynamo.onnx", "trace.pt", "script.pt", "pt2")


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """The exporters print progress and warnings; tests want none of it."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def export_route(module: nn.Module, route: str, path: Path, example: torch.Tensor) -> Path:
    """Write ``module`` (eval mode) through ``route`` to ``path`` and return ``path``.

    Raises ``ValueError`` for an unknown route; exporter errors propagate (a route that
    cannot export a graph is a finding, not a skip).
    """
    module.eval()
    path = Path(path)
    with _quiet(), torch.no_grad():
        if route == "legacy.onnx":
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=17,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {2: "h", 3: "w"}, "output": {2: "H", 3: "W"}},
            )
        elif route == "dynamo.onnx":
            dyn = torch.export.Dim.DYNAMIC
            prog = torch.onnx.export(
                module, (example,), dynamo=True, dynamic_shapes=({2: dyn, 3: dyn},),
                input_names=["input"], output_names=["output"], optimize=True, verbose=False,
            )
            prog.save(str(path), external_data=False)
        elif route == "trace.pt":
            torch.jit.trace(module, example, check_trace=False).save(str(path))
        elif route == "script.pt":
            torch.jit.script(module).save(str(path))
        elif route == "pt2":
            dyn = torch.export.Dim.AUTO
            ep = torch.export.export(module, (example,), dynamic_shapes=({2: dyn, 3: dyn},))
            torch.export.save(ep, str(path))
        else:
            raise ValueError(f"unknown route {route!r}; use one of {', '.join(ROUTES)}")
    return path
