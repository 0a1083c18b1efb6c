"""What a file handed to glam as a model is, from its bytes alone, before torch is imported
(issue 23: a JPEG given as the model took 4 s to be refused, a truncated ONNX file was
called "unrecognised content").

:func:`refusal` recognises files that cannot be a model (images, PDFs, glam archives, text,
compressed files) by their magic numbers, and models that were cut short: a zip container
(TorchScript, ``torch.export``, a ``.pth`` checkpoint) without its end-of-central-directory
record, a ``.safetensors`` file shorter than its header says, an ONNX protobuf whose
top-level fields run past the end of the file. Standard library only; anything it does not
recognise is left to :func:`glam.importers.load`, which reads the content properly.

>>> refusal(__file__) is not None   # a Python source file is text, not a model
True
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

__all__ = ["refusal"]

#: (magic prefix, what it is)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a glam archive?)"),
    (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (extract the model first)"),
    (b"Rar!", "a RAR archive (extract the model first)"),
)
#: ModelProto's top-level fields (onnx.proto): number -> wire type.
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_ONNX_NAMES = {7: "graph", 8: "opset_import", 6: "doc_string", 14: "metadata_props",
               20: "training_info", 25: "functions"}
_FIX = ("pass the model file (.onnx, TorchScript .pt, torch.export .pt2, .pth or "
        ".safetensors); images go after it")


def _varint(buf: bytes, i: int) -> tuple[int, int] | None:
    out = shift = 0
    while i < len(buf):
        b = buf[i]
        out |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            return None
    return None


def _onnx_truncation(p: Path, size: int) -> str | None:
    """Where an ONNX protobuf whose top-level fields parse runs past the end of the file,
    else ``None`` (not ONNX, or whole). Reads the file (ONNX models are read whole anyway)."""
    data = p.read_bytes()
    i, fields = 0, 0
    while i < len(data):
        tag = _varint(data, i)
        if tag is None:
            return f"a field tag at byte {i}" if fields else None
        key, j = tag
        number, wire = key >> 3, key & 7
        if _ONNX_FIELDS.get(number) != wire:
            return None  # not a ModelProto (or garbage after it): the importer decides
        if wire == 0:
            v = _varint(data, j)
            if v is None:
                return f"field {number} at byte {i}" if fields else None
            i = v[1]
        else:
            ln = _varint(data, j)
            if ln is None:
                return f"field {number} at byte {i}" if fields else None
            length, k = ln
            if k + length > size:
                name = _ONNX_NAMES.get(number, f"field {number}")
                return (f"its {name} needs {length:,} bytes from byte {k:,} but the file ends "
                        f"at {size:,}")
            i = k + length
        fields += 1
    return None


def _zip_truncated(p: Path, size: int) -> bool:
    """A zip whose end-of-central-directory record is missing (cut short)."""
    with p.open("rb") as fh:
        fh.seek(max(0, size - (65536 + 22)))
        tail = fh.read()
    return b"PK\x05\x06" not in tail


def _safetensors_truncation(p: Path, head: bytes, size: int) -> str | None:
    n = struct.unpack("<Q", head[:8])[0]
    if 8 + n > size:
        return f"its header needs {n:,} bytes but the file ends at {size:,}"
    with p.open("rb") as fh:
        fh.seek(8)
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return None
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    if need > size:
        return f"its tensors need {need:,} bytes but the file has {size:,}"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a cut in the middle of a multi-byte character at the end of the sample
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    if not text:
        return False
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
    return printable / len(text) > 0.97


def refusal(path: str | Path) -> str | None:
    """The reason ``path`` cannot be imported as a model, or ``None`` when it may be one
    (see the module docstring). ``path`` must exist and be a file."""
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        return f"model file {str(p)!r} is empty; re-export or re-download it"
    with p.open("rb") as fh:
        head = fh.read(4096)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"{str(p)!r} is {what}, not a model; {_FIX}"
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        return f"{str(p)!r} is a WebP image, not a model; {_FIX}"
    if head.startswith(b"PK\x03\x04"):
        if _zip_truncated(p, size):
            return (f"model file {str(p)!r} is a truncated zip archive (a TorchScript, "
                    "torch.export or .pth checkpoint file cut short: its central directory "
                    "is missing); re-save or re-download it")
        return None
    if len(head) >= 9 and head[8:9] == b"{":
        why = _safetensors_truncation(p, head, size)
        if why is not None:
            return (f"model file {str(p)!r} is a truncated .safetensors file ({why}); "
                    "re-download it")
        return None
    if head[:1] == b"\x80":  # a pickle (legacy torch.save): the importer reads it safely
        return None
    why = _onnx_truncation(p, size)
    if why is not None:
        return (f"model file {str(p)!r} is a truncated ONNX file ({why}); re-export or "
                "re-download it")
    if _is_text(head):
        return f"{str(p)!r} is a text file, not a model; {_FIX}"
    return None
