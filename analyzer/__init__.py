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
    EngineParityError,
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
    "resolve_device": "analyzer.engine.device",
    "GlamMaps": "analyzer.engine.glam",
    "LayerRecord": "analyzer.engine.glam",
    "compute_glam": "analyzer.engine.glam",
    "layer_keys": "analyzer.engine.glam",
    "LamResult": "analyzer.engine.lam",
    "compute_lam": "analyzer.engine.lam",
    "EngineParity": "analyzer.engine.reference",
    "reference_glam": "analyzer.engine.reference",
    "attributed_fraction": "analyzer.engine.metrics",
    "diffusion_index": "analyzer.engine.metrics",
    "gini": "analyzer.engine.metrics",
    "mse_psnr": "analyzer.engine.metrics",
    "psnr_y": "analyzer.engine.metrics",
    "read_image": "analyzer.images",
    "BatchOptions": "analyzer.batch.driver",
    "run_batch": "analyzer.batch.driver",
    "load_plan": "analyzer.batch.plan",
    "SanityResult": "analyzer.sanity_checks.workflow",
    "sanity": "analyzer.sanity_checks.workflow",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if _LAZY[name] == f"analyzer.{name}" else getattr(module, name)
    raise AttributeError(f"module 'analyzer' has no attribute {name!r}")


__all__ = [
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
