"""Generate the hostile-input corpus at test time (no binary blobs in the repository).

Every payload that could run code does one thing when it runs: it creates its *marker*
file (``touch MARKER``). The tests assert that the marker never appears.

``python tests/hostile/make_corpus.py OUT_DIR`` writes the whole corpus (for manual runs);
the tests call the individual ``make_*`` functions in ``tmp_path``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "models"
PT2 = FIXTURES / "carn_small_x2.pt2"
TS = FIXTURES / "carn_small_x2.trace.pt"
ONNX = FIXTURES / "carn_small_x2.legacy.onnx"


class _Payload:
    """Pickles to ``os.system("touch MARKER")``: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(marker: Path) -> bytes:
    """A ``torch.save`` zip whose ``data.pkl`` runs ``touch MARKER`` when unpickled."""
    import torch

    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    return buf.getvalue()


def evil_raw_pickle(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(_Payload(marker))


def _root(names: list[str]) -> str:
    return names[0].split("/")[0]


def rewrite_zip(
    src: Path,
    dst: Path,
    *,
    replace: dict[str, bytes | None] | None = None,
    add: dict[str, bytes] | None = None,
) -> Path:
    """Copy the zip ``src`` to ``dst`` (stored, uncompressed) with members replaced/added.

    Names in ``replace`` / ``add`` are relative to the archive's root folder; a value of
    ``None`` in ``replace`` drops the member. ``add`` names starting with ``/`` are used
    verbatim (for hostile names).
    """
    replace = replace or {}
    add = add or {}
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        root = _root(names)
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
            for name in names:
                rel = name[len(root) + 1:]
                if rel in replace:
                    if replace[rel] is not None:
                        zout.writestr(name, replace[rel])
                    continue
                zout.writestr(name, zin.read(name))
            for rel, data in add.items():
                zout.writestr(rel[1:] if rel.startswith("//") else f"{root}/{rel}", data)
    return dst


# -------------------------------------------------------------------------- .pt2 payloads


def _pt2_json(src: Path = PT2) -> dict:
    with zipfile.ZipFile(src) as z:
        root = _root(z.namelist())
        return json.loads(z.read(f"{root}/models/model.json"))


def make_pt2_legacy_weights(dst: Path, marker: Path) -> Path:
    """Legacy ``data/weights/model.pt`` (torch falls back to ``weights_only=False``)."""
    return rewrite_zip(PT2, dst, replace={"data/weights/model_weights_config.json": None},
                       add={"data/weights/model.pt": evil_pickle(marker)})


def make_pt2_legacy_constants(dst: Path, marker: Path) -> Path:
    return rewrite_zip(PT2, dst, replace={"data/constants/model_constants_config.json": None},
                       add={"data/constants/model.pt": evil_pickle(marker)})


def make_pt2_sample_inputs(dst: Path, marker: Path) -> Path:
    """Sample inputs that only load with ``weights_only=False``."""
    return rewrite_zip(PT2, dst, replace={"data/sample_inputs/model.pt": evil_pickle(marker)})


def make_pt2_pickled_weight(dst: Path, marker: Path) -> Path:
    """A weight with ``use_pickle: true`` (torch calls ``torch.load(weights_only=False)``)."""
    with zipfile.ZipFile(PT2) as z:
        root = _root(z.namelist())
        cfg = json.loads(z.read(f"{root}/data/weights/model_weights_config.json"))
    first = next(iter(cfg["config"]))
    cfg["config"][first]["use_pickle"] = True
    cfg["config"][first]["path_name"] = "weight_evil"
    return rewrite_zip(
        PT2, dst,
        replace={"data/weights/model_weights_config.json": json.dumps(cfg).encode()},
        add={"data/weights/weight_evil": evil_pickle(marker)},
    )


def _constant(kind: str, data: bytes) -> dict[str, bytes | None]:
    cfg = {"config": {"evil": {"path_name": f"{kind}0", "is_param": False, "use_pickle": True,
                               "tensor_meta": None}}}
    return {"data/constants/model_constants_config.json": json.dumps(cfg).encode()}


def make_pt2_opaque_constant(dst: Path, marker: Path) -> Path:
    """An opaque constant (torch calls ``pickle.loads``)."""
    return rewrite_zip(PT2, dst, replace=_constant("opaque_obj_", b""),
                       add={"data/constants/opaque_obj_0": evil_raw_pickle(marker)})


def make_pt2_custom_obj(dst: Path, marker: Path) -> Path:
    return rewrite_zip(PT2, dst, replace=_constant("custom_obj_", b""),
                       add={"data/constants/custom_obj_0": evil_raw_pickle(marker)})


def make_pt2_aoti(dst: Path, marker: Path) -> Path:
    """An AOTInductor package member (torch extracts and ``dlopen``s it)."""
    return rewrite_zip(PT2, dst, add={
        "data/aotinductor/model/model.so": b"\x7fELF" + b"\0" * 60,
        "data/aotinductor/model/model.wrapper.cpp": f"// touch {marker}\n".encode(),
    })


def make_pt2_native_member(dst: Path, marker: Path) -> Path:
    return rewrite_zip(PT2, dst, add={"extra/libevil.so": b"\x7fELF" + b"\0" * 60})


def make_pt2_zip_slip(dst: Path, marker: Path) -> Path:
    """A member whose name walks out of the extraction folder."""
    rel = os.path.relpath(marker, "/")
    return rewrite_zip(PT2, dst, add={f"data/aotinductor/model/../../../../../../../../{rel}": b"x"})


def make_pt2_absolute_member(dst: Path, marker: Path) -> Path:
    return rewrite_zip(PT2, dst, add={f"//{marker}": b"x"})


def make_pt2_sympy_eval(dst: Path, marker: Path) -> Path:
    """A symbolic-shape expression that ``sympy.sympify`` (an ``eval``) would run."""
    prog = _pt2_json()
    code = f"__import__('os').system('touch {marker}')"
    done = False
    stack = [prog]
    while stack and not done:
        o = stack.pop()
        if isinstance(o, dict):
            if isinstance(o.get("expr_str"), str):
                o["expr_str"] = code
                done = True
                break
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    if not done:
        prog.setdefault("range_constraints", {})
        prog["graph_module"]["graph"].setdefault("sym_int_values", {})["evil"] = {
            "as_expr": {"expr_str": code, "hint": None}}
    return rewrite_zip(PT2, dst, replace={"models/model.json": json.dumps(prog).encode()})


def make_pt2_bad_target(dst: Path, marker: Path) -> Path:
    """A node whose target resolves to ``os.system`` through ``torch.serialization.os``."""
    prog = _pt2_json()
    for node in prog["graph_module"]["graph"]["nodes"]:
        if "relu" in node["target"] or "add" in node["target"]:
            node["target"] = "torch.serialization.os.system"
            break
    return rewrite_zip(PT2, dst, replace={"models/model.json": json.dumps(prog).encode()})


# --------------------------------------------------------------------- other formats


def make_onnx_outside_data(dst_dir: Path, marker: Path, target: str = "/etc/hostname") -> Path:
    """An ONNX model whose external data points at a file outside its folder."""
    import onnx

    model = onnx.load(str(ONNX))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    del init.external_data[:]
    for k, v in (("location", target), ("offset", "0"), ("length", "4")):
        e = init.external_data.add()
        e.key, e.value = k, v
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / "outside.onnx"
    onnx.save(model, str(dst))
    return dst


def make_ts_bad_crc(dst: Path, marker: Path) -> Path:
    """A TorchScript zip with one byte of its largest weight record flipped (CRC fails)."""
    data = bytearray(TS.read_bytes())
    with zipfile.ZipFile(TS) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    head = info.header_offset
    name_len = int.from_bytes(data[head + 26:head + 28], "little")
    extra_len = int.from_bytes(data[head + 28:head + 30], "little")
    start = head + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x40
    dst.write_bytes(bytes(data))
    return dst


def make_ts_side_effect(dst: Path, marker: Path) -> Path:
    """A scripted SR model whose forward creates MARKER through ``aten::from_file``."""
    import torch
    from torch import nn

    class Evil(nn.Module):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path
            self.conv = nn.Conv2d(3, 12, 3, padding=1)
            self.shuffle = nn.PixelShuffle(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.from_file(self.path, True, 4)
            return self.shuffle(self.conv(x)) + 0.0 * t.sum()

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Evil(str(marker))), str(dst))
    return dst


# ------------------------------------------------------------------ images, archives


def make_png_header(dst: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width x height`` pixels but carries (almost) no data: a
    decompression bomb for anything that trusts the header and allocates."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    dst.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                    + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return dst


def flip_dataset_bytes(archive: Path, dataset: str) -> None:
    """Flip bytes in the middle of the stored (compressed) data of ``dataset``."""
    import h5py

    with h5py.File(archive, "r") as f:
        ds = f[dataset]
        if ds.chunks:
            info = ds.id.get_chunk_info(0)
            offset, size = info.byte_offset, info.size
        else:
            offset, size = ds.id.get_offset(), ds.id.get_storage_size()
    data = bytearray(archive.read_bytes())
    for i in range(min(8, size)):
        data[offset + size // 2 + i - min(8, size) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


def make_nested_json(dst: Path, depth: int = 100_000) -> Path:
    dst.write_text("{\"runs\": " + "[" * depth + "]" * depth + "}")
    return dst


_SETSTATE_SRC = """
import sys
from typing import Tuple

import torch
from torch import nn


class Evil(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.buf = torch.zeros(1)
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        self.buf = torch.from_file(self.path, True, 4)


torch.jit.save(torch.jit.script(Evil(sys.argv[2])), sys.argv[1])
"""


def make_ts_setstate(dst: Path, marker: Path) -> Path:
    """A scripted model whose ``__setstate__`` (run by ``torch.jit.load``) creates MARKER.

    Scripted from a generated source file (TorchScript needs the source on disk).
    """
    import subprocess

    src = dst.with_suffix(".make.py")
    src.write_text(_SETSTATE_SRC)
    subprocess.run([sys.executable, str(src), str(dst), str(marker)], check=True,
                   capture_output=True, timeout=300)
    src.unlink()
    return dst


#: name -> (generator, output file name)
PAYLOADS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "pt2_legacy_weights": (make_pt2_legacy_weights, "legacy_weights.pt2"),
    "pt2_legacy_constants": (make_pt2_legacy_constants, "legacy_constants.pt2"),
    "pt2_sample_inputs": (make_pt2_sample_inputs, "sample_inputs.pt2"),
    "pt2_pickled_weight": (make_pt2_pickled_weight, "pickled_weight.pt2"),
    "pt2_opaque_constant": (make_pt2_opaque_constant, "opaque.pt2"),
    "pt2_custom_obj": (make_pt2_custom_obj, "custom_obj.pt2"),
    "pt2_aoti": (make_pt2_aoti, "aoti.pt2"),
    "pt2_native_member": (make_pt2_native_member, "native.pt2"),
    "pt2_zip_slip": (make_pt2_zip_slip, "zip_slip.pt2"),
    "pt2_absolute_member": (make_pt2_absolute_member, "absolute.pt2"),
    "pt2_sympy_eval": (make_pt2_sympy_eval, "sympy.pt2"),
    "pt2_bad_target": (make_pt2_bad_target, "target.pt2"),
    "ts_side_effect": (make_ts_side_effect, "side_effect.pt"),
    "ts_setstate": (make_ts_setstate, "setstate.pt"),
}


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "hostile-corpus")
    out.mkdir(parents=True, exist_ok=True)
    for name, (make, fname) in PAYLOADS.items():
        make(out / fname, out / f"MARKER-{name}")
    make_ts_bad_crc(out / "bad_crc.pt", out / "MARKER-bad-crc")
    make_onnx_outside_data(out / "onnx_outside", out / "MARKER-onnx")
    print(f"corpus written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
