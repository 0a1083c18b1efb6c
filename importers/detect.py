"""Detect a model file's format from its content, never from its suffix."""

from __future__ import annotations

import zipfile
from pathlib import Path

from glam.errors import ModelFileError
from glam.importers.checkpoint.safety import CheckpointKind, checkpoint_kind
from glam.importers.model import ModelFormat


def checkpoint_details(path: str | Path) -> tuple[CheckpointKind, bool]:
    """``(kind, is_zip)`` of a file :func:`detect_format` called a ``"checkpoint"``."""
    p = Path(path)
    with p.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK"):
        return "pickle", True
    kind = checkpoint_kind(p, head)
    if kind is None:
        raise ModelFileError(f"{str(p)!r} is not a state-dict checkpoint")
    return kind, False


def detect_format(path: str | Path) -> ModelFormat:
    """Return ``"onnx"``, ``"torchscript"``, ``"export"`` or ``"checkpoint"`` for ``path``.

    TorchScript and ``torch.export`` files are zip archives (TorchScript holds
    ``*/code/`` and ``*/constants.pkl``; ``.pt2`` holds ``*/archive_format`` or
    ``*/models/``); a state-dict checkpoint is a zip with ``*/data.pkl`` and nothing else
    of those, a bare pickle stream (torch < 1.6) or a safetensors file (little-endian header
    length, then a JSON header); ONNX files are protobuf ``ModelProto`` messages. Use
    :func:`checkpoint_details` for a checkpoint's kind.

    Raises
    ------
    ModelFileError
        For a missing, empty, truncated or non-model file.
    """
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"model file {str(p)!r} does not exist; pass the path of an .onnx/.pt/.pt2/.pth/.safetensors file")
    if p.is_dir():
        raise ModelFileError(f"model path {str(p)!r} is a directory; pass a model file")
    size = p.stat().st_size
    if size == 0:
        raise ModelFileError(f"model file {str(p)!r} is empty; re-export or re-download it")
    with p.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(
                f"model file {str(p)!r} is a damaged zip archive ({exc}); it may be truncated — "
                "re-save the TorchScript / torch.export file"
            ) from None
        if any(n.endswith("archive_format") for n in names) or any("/models/" in n for n in names):
            return "export"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "checkpoint"
        raise ModelFileError(f"{str(p)!r} is a zip archive but neither TorchScript nor torch.export")
    if checkpoint_kind(p, head) is not None:
        return "checkpoint"
    if _looks_like_onnx(p):
        return "onnx"
    raise ModelFileError(
        f"{str(p)!r} is not an ONNX, TorchScript, torch.export or checkpoint model (unrecognised "
        "content); "
        "pass a model file"
    )


def _looks_like_onnx(p: Path) -> bool:
    """Parse the protobuf header cheaply: an ONNX model has a graph with at least one node."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError, UnicodeDecodeError):
        return False
    except Exception:  # noqa: BLE001 - protobuf raises assorted errors on garbage
        return False
    return len(model.graph.node) > 0 and (model.ir_version > 0 or len(model.opset_import) > 0)
