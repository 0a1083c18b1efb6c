"""Importers: ONNX, TorchScript, ``torch.export`` and checkpoint SR models to tapped ``torch.fx``
graphs.

>>> from glam import importers
>>> model = importers.load("fixtures/models/rcan_small_x2.legacy.onnx")  # doctest: +SKIP
>>> y, taps = model(x)                                                  # doctest: +SKIP

The public names are loaded lazily, so that importing a light module of this package
(:mod:`glam.importers.quiet`, :mod:`glam.importers.detect`'s callers in the CLI) does not
import torch.
"""

from __future__ import annotations

_LAZY = {
    "Conventions": "glam.importers.model",
    "ImportedModel": "glam.importers.model",
    "ParityReport": "glam.importers.model",
    "RawGraph": "glam.importers.model",
    "TapInfo": "glam.importers.model",
    "detect_format": "glam.importers.detect",
    "from_module": "glam.importers.loader",
    "load": "glam.importers.loader",
    "sha256_of": "glam.importers.loader",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glam.importers' has no attribute {name!r}")


__all__ = sorted(_LAZY)
