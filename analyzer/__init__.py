"""glam: global and local attribution maps (GL-AM) for super-resolution networks.

Public API::

    import glam
    model = glam.load("model.onnx")                     # tapped, parity-checked FX graph
    inputs = glam.prepare_image(model, "hr.png", hr=True)
    result = glam.analyze(model, inputs.lr, reference=inputs.reference, lam=True)

What is computed, step by step, is ``docs/method.md``.
"""

from __future__ import annotations

from glam.errors import (
    AnalysisError,
    ArchiveError,
    ConventionError,
    EngineParityError,
    GlamError,
    InsufficientMemoryError,
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

# The engine modules import ``glam.importers`` (which imports ``glam.errors``); loading them
# lazily keeps ``import glam.importers`` and ``import glam`` free of import cycles, and
# ``import glam`` light (no torch until a name that needs it is used).
_LAZY = {
    "load": "glam.importers.loader",
    "from_module": "glam.importers.loader",
    "detect_format": "glam.importers.detect",
    "ImportedModel": "glam.importers.model",
    "TapInfo": "glam.importers.model",
    "PreparedImage": "glam.api",
    "Result": "glam.api",
    "analyze": "glam.api",
    "default_roi": "glam.api",
    "prepare_image": "glam.api",
    "resolve_device": "glam.engine.device",
    "GlamMaps": "glam.engine.glam",
    "LayerRecord": "glam.engine.glam",
    "compute_glam": "glam.engine.glam",
    "layer_keys": "glam.engine.glam",
    "LamResult": "glam.engine.lam",
    "compute_lam": "glam.engine.lam",
    "EngineParity": "glam.engine.reference",
    "reference_glam": "glam.engine.reference",
    "attributed_fraction": "glam.engine.metrics",
    "diffusion_index": "glam.engine.metrics",
    "gini": "glam.engine.metrics",
    "mse_psnr": "glam.engine.metrics",
    "psnr_y": "glam.engine.metrics",
    "read_image": "glam.images",
    "BatchOptions": "glam.batch.driver",
    "run_batch": "glam.batch.driver",
    "load_plan": "glam.batch.plan",
    "SanityResult": "glam.sanity_checks.workflow",
    "sanity": "glam.sanity_checks.workflow",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'glam' has no attribute {name!r}")


__all__ = [
    "ImportedModel",
    "TapInfo",
    "detect_format",
    "from_module",
    "load",
    "AnalysisError",
    "BatchOptions",
    "ArchiveError",
    "ConventionError",
    "EngineParityError",
    "EngineParity",
    "GlamError",
    "GlamMaps",
    "LamResult",
    "LayerRecord",
    "ModelError",
    "ModelFileError",
    "UnsafeModelError",
    "NotSuperResolutionError",
    "InsufficientMemoryError",
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
    "load_plan",
    "mse_psnr",
    "prepare_image",
    "psnr_y",
    "read_image",
    "reference_glam",
    "resolve_device",
    "run_batch",
    "sanity",
    "SanityResult",
]
