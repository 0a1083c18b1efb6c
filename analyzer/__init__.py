"""glam: global and local attribution maps (GL-AM) for super-resolution networks.

Public API::

    import importers, analyzer
    model = importers.load("model.onnx")                # tapped, parity-checked FX graph
    inputs = analyzer.prepare_image(model, "hr.png", hr=True)
    result = analyzer.analyze(model, inputs.lr, reference=inputs.reference, lam=True)
"""

from __future__ import annotations

from analyzer.errors import (
    AnalysisError,
    ArchiveError,
    ConventionError,
    GlamError,
    ModelError,
    ModelFileError,
    NotSuperResolutionError,
    NumericalError,
    ParityError,
    UnsafeModelError,
    UnsupportedOpsError,
    UserInputError,
)

__version__ = "0.1.0"

# The engine modules import ``importers`` (which imports ``analyzer.errors``); loading them
# lazily keeps ``import importers`` and ``import analyzer`` free of import cycles.
_LAZY = {
    "PreparedImage": "analyzer.api",
    "Result": "analyzer.api",
    "analyze": "analyzer.api",
    "default_roi": "analyzer.api",
    "prepare_image": "analyzer.api",
    "resolve_device": "analyzer.device",
    "GlamMaps": "analyzer.glam",
    "LayerRecord": "analyzer.glam",
    "compute_glam": "analyzer.glam",
    "layer_keys": "analyzer.glam",
    "LamResult": "analyzer.lam",
    "compute_lam": "analyzer.lam",
    "attributed_fraction": "analyzer.metrics",
    "diffusion_index": "analyzer.metrics",
    "gini": "analyzer.metrics",
    "mse_psnr": "analyzer.metrics",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analyzer' has no attribute {name!r}")


__all__ = [
    "AnalysisError",
    "ArchiveError",
    "ConventionError",
    "GlamError",
    "GlamMaps",
    "LamResult",
    "LayerRecord",
    "ModelError",
    "ModelFileError",
    "UnsafeModelError",
    "NotSuperResolutionError",
    "NumericalError",
    "ParityError",
    "PreparedImage",
    "Result",
    "UnsupportedOpsError",
    "UserInputError",
    "__version__",
    "analyze",
    "attributed_fraction",
    "compute_glam",
    "compute_lam",
    "default_roi",
    "diffusion_index",
    "gini",
    "layer_keys",
    "mse_psnr",
    "prepare_image",
    "resolve_device",
]
