"""Untrusted state-dict checkpoints: read tensors, never run code.

A ``.pth`` / ``.pt`` / ``.ckpt`` checkpoint is a pickle (a zip holding ``*/data.pkl`` since
torch 1.6, a bare pickle stream before). A pickle can name any Python callable and call it
while it is read (``__reduce__``), so glam reads these files only with
``torch.load(weights_only=True)``: torch's restricted unpickler, which resolves only tensor
rebuild functions, storages and plain containers and refuses every other global before
calling anything. A checkpoint that needs more (a pickled ``nn.Module``, a training-state
object, a custom class) is refused with one line that names the global and says how to
re-save the file. ``.safetensors`` files are read with ``safetensors`` (a JSON header and raw
tensor bytes; no code in the format).

Zip checkpoints are vetted like TorchScript files first (:func:`glam.importers.safety.vet_zip`).
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import warnings as pywarnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from glam.errors import (
    GlamError,
    MissingDependencyError,
    ModelFileError,
    UnsafeModelError,
    first_line,
)

__all__ = ["CheckpointKind", "checkpoint_kind", "read_state_dict"]

CheckpointKind = Literal["pickle", "safetensors"]

#: First bytes of a bare (pre-zip) pickle stream: PROTO opcode with protocols 2 to 5.
_PICKLE_HEADS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
#: Upper bound for a safetensors JSON header (the format itself caps it at 100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000
#: Keys of training checkpoints that wrap the weights (BasicSR, Lightning, ...), in order.
_WRAPPER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model", "net", "network", "generator")


def checkpoint_kind(path: Path, head: bytes) -> CheckpointKind | None:
    """``"pickle"`` / ``"safetensors"`` when ``path`` looks like a state-dict checkpoint.

    Parameters
    ----------
    path:
        The file (read only for the safetensors header).
    head:
        Its first bytes (at least 8).

    Returns
    -------
    CheckpointKind or None
        ``None`` when the content is neither a bare pickle stream nor a safetensors file
        (zip checkpoints are recognised by :func:`glam.importers.detect.detect_format`).
    """
    if head[:2] in _PICKLE_HEADS:
        return "pickle"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{" and path.stat().st_size >= 8 + n:
            with path.open("rb") as fh:
                fh.seek(8)
                header = fh.read(n)
            try:
                meta = json.loads(header)
            except (UnicodeDecodeError, json.JSONDecodeError):
                return None
            if isinstance(meta, dict) and all(
                k == "__metadata__" or (isinstance(v, dict) and "dtype" in v) for k, v in meta.items()
            ):
                return "safetensors"
    return None


def read_state_dict(path: Path, kind: CheckpointKind, *, is_zip: bool) -> dict[str, Any]:
    """Read a checkpoint's tensors without running any code from it.

    Parameters
    ----------
    path:
        The checkpoint.
    kind:
        ``"pickle"`` (``torch.load(weights_only=True)``) or ``"safetensors"``.
    is_zip:
        Whether a pickle checkpoint is a torch zip archive (vetted member by member first).

    Returns
    -------
    dict[str, Any]
        The (unwrapped) state dict: parameter name to tensor.

    Raises
    ------
    UnsafeModelError
        When the pickle needs globals beyond tensors and containers (full unpickling), or the
        zip has unsafe members.
    ModelFileError
        When the file is damaged or holds no tensors.
    MissingDependencyError
        For ``.safetensors`` without the ``safetensors`` package.
    """
    import torch

    p = Path(path)
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise MissingDependencyError("safetensors", "community") from exc
        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelFileError(
                f"cannot read safetensors file {str(p)!r} ({first_line(exc, 200)}); it may be truncated "
                "— re-download it"
            ) from None
    else:
        if is_zip:
            from glam.importers import safety

            safety.vet_zip(p, "checkpoint")
        try:
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore")
                obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeModelError(
                f"checkpoint {str(p)!r} needs full unpickling, which could run arbitrary code "
                f"({_global_named(exc)}); glam reads only weights: re-save it with "
                "torch.save(model.state_dict(), path) or as .safetensors"
            ) from None
        except GlamError:
            raise
        except Exception as exc:  # noqa: BLE001 - damaged archives raise assorted errors
            raise ModelFileError(
                f"cannot read checkpoint {str(p)!r} ({first_line(exc, 200)}); it may be truncated or "
                "damaged — re-download it"
            ) from None
    return _unwrap(obj, str(p))


def _unwrap(obj: Any, path: str) -> dict[str, Any]:
    """The tensor mapping inside a training checkpoint (``params_ema``, ``state_dict``, ...)."""
    import torch

    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ModelFileError(
            f"checkpoint {path!r} holds a {type(obj).__name__}, not a state dict of tensors; "
            "save model.state_dict()"
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelFileError(
            f"checkpoint {path!r} holds no tensors (keys: {', '.join(map(str, list(obj)[:6]))}); "
            "save model.state_dict()"
        )
    return sd


def _global_named(exc: BaseException) -> str:
    """The refused global from torch's ``weights_only`` message, else the first line."""
    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(
        r"global '?([\w.]+)'? (?:is|was) (?:forbidden|not an allowed)", text
    )
    if m:
        return f"it references the Python global {m.group(1)}"
    return f"torch.load(weights_only=True) refused it: {first_line(exc, 200)}"

