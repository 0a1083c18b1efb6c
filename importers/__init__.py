"""Importers: ONNX, TorchScript and ``torch.export`` SR models to tapped ``torch.fx`` graphs.

>>> import glam.importers
>>> model = glam.importers.load("fixtures/models/rcan_small_x2.legacy.onnx")  # doctest: +SKIP
>>> y, taps = model(x)                                                  # doctest: +SKIP
"""

from __future__ import annotations

from glam.importers.detect import detect_format
from glam.importers.loader import from_module, load, sha256_of
from glam.importers.model import Conventions, ImportedModel, ParityReport, RawGraph, TapInfo

__all__ = [
    "Conventions",
    "ImportedModel",
    "ParityReport",
    "RawGraph",
    "TapInfo",
    "detect_format",
    "from_module",
    "load",
    "sha256_of",
]
