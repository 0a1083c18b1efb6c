"""HDF5 archives of GL-AM runs (schema version 1, documented in ``docs/archive.md``).

One archive holds many runs (models x images). Writing is crash-safe:

* per-layer records are streamed, as the engine produces them, into a private *scratch*
  HDF5 file beside the archive (chunked, gzip-compressed, optionally float16), so memory
  does not grow with depth and the archive itself is not open while a run is computed;
* a finished run is copied into the archive under a temporary name
  (``/runs/.tmp-<run>-<pid>``), renamed with ``move`` and only then marked
  ``complete=True``; the file is flushed and closed after each run;
* a *new* archive is first written to a temporary file in the same directory and published
  (a hard link, which fails if another process created the archive meanwhile; the run is
  then appended to that archive) once its first run is complete;
* on every open for writing, leftover temporary groups (and scratch files of dead processes)
  are deleted, so a crash or Ctrl-C mid-run leaves the earlier runs intact and readable.

Reading goes through :func:`open_archive`:

>>> from glam.archive.hdf5 import open_archive
>>> with open_archive("glam-runs.h5") as ar:                 # doctest: +SKIP
...     for name in ar.runs():
...         run = ar.run(name)
...         print(name, run.metrics["di_local"])
...     fig = ar.figure_data(name)                           # for glam.report.figures

One module on purpose (over 600 lines): the schema constants, the atomic writer and the
reader share the private encoding helpers (attributes, datasets, quantisation) and the
commit protocol; a split would export those helpers between files.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np
from glam.archive.figure_data import FigureData, LayerKey, sample_indices, to_rgb_uint8
from glam.errors import ArchiveError

if TYPE_CHECKING:
    from glam.api import Result
    from glam.archive.sanity import SanityRecord
    from glam.engine.glam import LayerRecord
    from glam.importers.model import ImportedModel

FORMAT = "glam"
SCHEMA_VERSION = 1
TMP_PREFIX = ".tmp-"
StoreDtype = Literal["float32", "float16"]
STORE_DTYPES: tuple[str, ...] = ("float32", "float16")

#: ``normalization`` attribute of the final maps and of raw data.
NORM_N = "N (GLAM.md)"
NORM_RAW = "none (raw)"
MAP_NAMES = ("consensus", "variation", "sum")
_GZIP_LEVEL = 4
_LOCK_WAIT_S = 30.0


# ------------------------------------------------------------------------------- helpers


def glam_version() -> str:
    """The installed glam version."""
    from glam import __version__

    return __version__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _module_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _ort_version() -> str:
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        v = _module_version(dist)
        if v != "not installed":
            return v
    return "not installed"


def software_versions() -> dict[str, str]:
    """Versions recorded in every run's provenance."""
    return {
        "glam_version": glam_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _module_version("torch"),
        "onnx": _module_version("onnx"),
        "onnxruntime": _ort_version(),
        "onnx2torch": _module_version("onnx2torch"),
        "numpy": _module_version("numpy"),
        "h5py": _module_version("h5py"),
        "hdf5": h5py.version.hdf5_version,
    }


def _str_array(items: Sequence[str]) -> np.ndarray:
    return np.array([str(s) for s in items], dtype=h5py.string_dtype())


def _set_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    """Write attributes, skipping ``None`` and turning lists of strings into string arrays."""
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)) and (not value or isinstance(value[0], str)):
            if all(isinstance(v, str) for v in value):
                obj.attrs.create(key, _str_array(value))
                continue
        if isinstance(value, bool):
            obj.attrs[key] = np.bool_(value)
        elif isinstance(value, (list, tuple)):
            obj.attrs[key] = np.asarray(value)
        else:
            obj.attrs[key] = value


def _write_parity(group: h5py.Group, parity: dict[str, Any]) -> None:
    """The import parity; a quantized graph's parity in steps (``docs/quantized.md``) goes to
    the ``steps`` subgroup, its node-by-node report to ``steps/nodes``."""
    steps = parity.pop("steps", None)
    _set_attrs(group, parity)
    if steps:
        nodes = steps.pop("nodes", None)
        sg = group.create_group("steps")
        _set_attrs(sg, steps)
        if nodes:
            _set_attrs(sg.create_group("nodes"), nodes)


def _read_parity(group: h5py.Group) -> dict[str, Any]:
    """:func:`_write_parity`'s group as a dict (``steps`` and ``steps["nodes"]`` nested)."""
    out = _attrs(group)
    if "steps" in group:
        out["steps"] = _attrs(group["steps"])
        if "nodes" in group["steps"]:
            out["steps"]["nodes"] = _attrs(group["steps"]["nodes"])
    return out


def _py(value: Any) -> Any:
    """An HDF5 attribute value as plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {k: _py(v) for k, v in obj.attrs.items()}


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # cannot tell cheaply: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _quantize(a: np.ndarray, dtype: StoreDtype) -> tuple[np.ndarray, float]:
    """Cast ``a`` for storage; float16 stores ``a / scale`` with ``scale`` a power of two >=
    ``max|a|``, so tiny raw gradients neither underflow nor overflow (value = stored * scale)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "float32":
        return a, 1.0
    finite = a[np.isfinite(a)]
    m = float(np.max(np.abs(finite))) if finite.size else 0.0
    scale = 2.0 ** math.ceil(math.log2(m)) if m > 0 else 1.0
    return (a / np.float32(scale)).astype(np.float16), scale


def _dataset(
    group: h5py.Group,
    name: str,
    data: np.ndarray,
    *,
    dtype: StoreDtype = "float32",
    normalization: str | None = None,
    **attrs: Any,
) -> h5py.Dataset:
    """A chunked, gzip-compressed (shuffle) dataset with its ``normalization`` recorded."""
    stored, scale = _quantize(np.asarray(data), dtype)
    kwargs: dict[str, Any] = {}
    if stored.ndim > 0 and stored.size > 0:
        # fletcher32: a checksum per chunk, so that flipped bytes are an error on read
        # (`glam ls --verify`), never data.
        kwargs = {"chunks": True, "compression": "gzip", "compression_opts": _GZIP_LEVEL,
                  "shuffle": True, "fletcher32": True}
    ds = group.create_dataset(name, data=stored, **kwargs)
    if dtype == "float16":
        ds.attrs["scale"] = scale
    if normalization is not None:
        ds.attrs["normalization"] = normalization
    _set_attrs(ds, attrs)
    return ds


def _checksummed(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    """A small dataset (the tap table) with a Fletcher32 checksum like every other one
    (chunked, since HDF5 checksums chunks; empty arrays cannot be chunked, and HDF5 filters
    no variable-length strings: the tap names and ops stay unchecked)."""
    vlen = h5py.check_string_dtype(data.dtype) is not None and data.dtype.kind == "O"
    kwargs: dict[str, Any] = (
        {"chunks": True, "fletcher32": True} if data.size > 0 and not vlen else {}
    )
    return group.create_dataset(name, data=data, **kwargs)


def _read(ds: h5py.Dataset) -> np.ndarray:
    """A dataset as float32 (float16 datasets are multiplied back by their ``scale``)."""
    a = ds[()]
    if a.dtype == np.float16:
        return a.astype(np.float32) * np.float32(ds.attrs.get("scale", 1.0))
    return a


def validate_run_name(name: str) -> str:
    """Check that ``name`` is usable as one HDF5 link name of a run.

    Raises
    ------
    ArchiveError
        For an empty name, one containing ``/``, or a reserved name.
    """
    if not isinstance(name, str) or not name.strip():
        raise ArchiveError("run name is empty; pass --run NAME with a non-empty name")
    if "/" in name or "\x00" in name:
        raise ArchiveError(
            f"run name {name!r} contains '/'; a run name is one HDF5 name, use e.g. "
            f"{name.replace('/', '__')!r}"
        )
    if name in (".", "..") or name.startswith("."):
        raise ArchiveError(
            f"run name {name!r} starts with '.', which is reserved for temporary groups; "
            "choose another --run name"
        )
    return name


def _open_h5(path: Path, mode: str) -> h5py.File:
    """Open an HDF5 file, waiting up to 30 s while another glam process holds its lock."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            return h5py.File(path, mode)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ArchiveError(
                    f"archive {str(path)!r} is locked by another process; wait for it to "
                    "finish or write to another archive with -o"
                ) from None
            time.sleep(0.2)
        except OSError as exc:
            if _is_lock_error(exc) and time.monotonic() <= deadline:
                time.sleep(0.2)
                continue
            raise


_SPACE_MARGIN = 1 << 20


def ensure_space(path: Path, extra: int, *, current: int | None = None) -> None:
    """Raise ``OSError`` (ENOSPC / EFBIG) *before* writing ``extra`` more bytes to ``path``
    would exceed the free disk space or the file-size limit (``ulimit -f``).

    HDF5 does not recover from a failed write (the run then dies in object finalisers or
    worse), so glam checks first, with the uncompressed size as the upper bound. The
    archive is therefore never left half-written by a full disk.
    """
    import errno
    import resource

    extra = int(extra * 1.05) + _SPACE_MARGIN
    size = current if current is not None else (path.stat().st_size if path.exists() else 0)
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and size + extra > soft:
        raise OSError(
            errno.EFBIG,
            f"file size limit of {soft} bytes (ulimit -f) reached: writing needs about "
            f"{size + extra} bytes",
            str(path),
        )
    try:
        st = os.statvfs(path.parent if not path.is_dir() else path)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if extra > free:
        raise OSError(errno.ENOSPC, f"no space left on device: {free} bytes free, about "
                      f"{extra} needed", str(path.parent))


def _is_lock_error(exc: OSError) -> bool:
    """Whether HDF5 failed to *lock* the file (another writer), not e.g. a damaged
    superblock ("sblock" also contains "lock")."""
    text = str(exc).lower()
    return "unable to lock file" in text or (
        "lock" in text and ("errno = 11" in text or "temporarily unavailable" in text)
    )


def _check_root(f: h5py.File, path: Path) -> int:
    fmt = _py(f.attrs.get("format"))
    if fmt != FORMAT:
        raise ArchiveError(
            f"{str(path)!r} is an HDF5 file but not a glam archive (format attribute "
            f"{fmt!r}, expected {FORMAT!r}); pass an archive written by `glam analyze`"
        )
    ver = _py(f.attrs.get("schema_version"))
    if not isinstance(ver, int) or isinstance(ver, bool):
        raise ArchiveError(
            f"archive {str(path)!r} has an unreadable schema_version {ver!r}; it was not "
            "written by glam or is damaged"
        )
    if ver > SCHEMA_VERSION:
        raise ArchiveError(
            f"archive {str(path)!r} has schema_version {ver}, newer than this glam supports "
            f"({SCHEMA_VERSION}); upgrade glam (installed {glam_version()})"
        )
    if ver < 1:
        raise ArchiveError(
            f"archive {str(path)!r} has unknown schema_version {ver}; this glam reads "
            f"schema version {SCHEMA_VERSION}"
        )
    runs = f.get("runs", getlink=True)
    if runs is not None and not isinstance(f.get("runs"), h5py.Group):
        raise ArchiveError(
            f"archive {str(path)!r} is damaged: /runs is not a group; it was not written by "
            "glam — write to a new archive with -o"
        )
    return ver


def _complete_runs(runs: h5py.Group) -> list[str]:
    out = []
    for name, obj in runs.items():  # a dangling external link (glam batch --links) is None
        if name.startswith("."):
            continue
        if isinstance(obj, h5py.Group) and bool(obj.attrs.get("complete", False)):
            out.append(name)
    return out


def _is_hdf5(path: Path) -> bool:
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def existing_runs(path: str | Path) -> list[str]:
    """Names of the complete runs in an archive, ``[]`` when the file does not exist yet.

    Raises
    ------
    ArchiveError
        When ``path`` exists but is not a glam archive of a readable schema.
    """
    p = Path(path)
    if not p.exists():
        return []
    with open_archive(p) as ar:
        return ar.runs()


def check_archive_target(path: str | Path) -> None:
    """Check that ``path`` can hold an archive: an existing glam archive, or a new file in an
    existing directory.

    Raises
    ------
    ArchiveError
        For a directory, a missing parent directory, or a file that is not a glam archive.
    """
    p = Path(path)
    if p.is_dir():
        raise ArchiveError(
            f"archive path {str(p)!r} is a directory; pass a file name such as "
            f"{str(p / 'glam-runs.h5')!r}"
        )
    if not p.exists():
        if not p.parent.is_dir():
            raise ArchiveError(
                f"directory {str(p.parent)!r} of the archive does not exist; create it first"
            )
        return
    existing_runs(p)


def check_run_names(path: str | Path, names: Sequence[str], *, overwrite: bool = False) -> None:
    """Refuse run names that already exist in the archive (unless ``overwrite``).

    Raises
    ------
    ArchiveError
        Naming the clashing runs and the fix.
    """
    check_archive_target(path)
    for n in names:
        validate_run_name(n)
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise ArchiveError(
            f"run name(s) {', '.join(dupes)} would be written twice; give the images distinct "
            "file names or run them separately with --run"
        )
    if overwrite:
        return
    clash = [n for n in names if n in set(existing_runs(path))]
    if clash:
        raise ArchiveError(
            f"run {', '.join(repr(c) for c in clash)} already exists in {str(path)!r}; pass "
            "--overwrite to replace it or --run NAME to choose another name"
        )


# -------------------------------------------------------------------------------- writer


def _scratch_glob(archive: Path) -> str:
    return f".{archive.name}.*.scratch.h5"


def _new_archive_glob(archive: Path) -> str:
    return f".{archive.name}.*.new.h5"


def _clean_stale_files(archive: Path) -> None:
    """Delete scratch / new-archive temporary files left by dead processes."""
    for pattern in (_scratch_glob(archive), _new_archive_glob(archive)):
        for f in archive.parent.glob(pattern):
            parts = f.name[len(archive.name) + 2 :].split(".")
            try:
                pid = int(parts[0])
            except (ValueError, IndexError):
                continue
            if not _pid_alive(pid):
                with suppress(OSError):
                    f.unlink()


def clean_temporary_groups(f: h5py.File) -> list[str]:
    """Delete leftover ``/runs/.tmp-*`` groups (and incomplete runs) of an archive open for
    writing; returns their names."""
    runs = f.require_group("runs")
    gone = []
    for name in list(runs.keys()):
        obj = runs.get(name)
        if name.startswith(TMP_PREFIX) or (
            isinstance(obj, h5py.Group) and not bool(obj.attrs.get("complete", False))
        ):
            del runs[name]
            gone.append(name)
    return gone


def _init_root(f: h5py.File) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
    f.attrs["glam_version"] = glam_version()
    f.attrs["created"] = _now()
    f.create_group("runs", track_order=True)


_COUNTER = 0


class RunWriter:
    """Writes one run: layers streamed as produced, the rest at :meth:`finish`, then commits.

    Use it as a context manager; leaving the block without :meth:`finish` (an exception,
    Ctrl-C) discards the scratch file and leaves the archive untouched.

    Parameters
    ----------
    archive:
        Archive path (created on the first commit if it does not exist).
    name:
        Run name (one HDF5 name, no ``/``).
    store:
        ``"maps"`` or ``"tensors"`` (recorded; tensors arrive inside the layer records).
    store_dtype:
        ``"float32"`` or ``"float16"`` for the per-layer datasets.
    overwrite:
        Replace an existing run of the same name.

    Examples
    --------
    >>> with RunWriter("runs.h5", "m__img") as rw:                       # doctest: +SKIP
    ...     result = glam.analyze(model, lr, on_layer=rw.add_layer, keep_layers=False)
    ...     rw.finish(model, result, image_path="img.png", image_sha256="...")
    """

    def __init__(
        self,
        archive: str | Path,
        name: str,
        *,
        store: str = "maps",
        store_dtype: StoreDtype = "float32",
        overwrite: bool = False,
    ) -> None:
        global _COUNTER
        if store_dtype not in STORE_DTYPES:
            raise ArchiveError(
                f"store dtype {store_dtype!r} is not supported; use float32 or float16"
            )
        self.archive = Path(archive)
        self.name = validate_run_name(name)
        self.store = store
        self.store_dtype: StoreDtype = store_dtype
        self.overwrite = overwrite
        check_archive_target(self.archive)  # validate before computing anything
        _COUNTER += 1
        self.scratch = self.archive.parent / (
            f".{self.archive.name}.{os.getpid()}.{_COUNTER}.scratch.h5"
        )
        self._file: h5py.File | None = h5py.File(self.scratch, "w", track_order=True)
        self._group = self._file.create_group("run", track_order=True)
        self._group.attrs["complete"] = np.bool_(False)
        self._layers = self._group.create_group("layers", track_order=True)
        self._n_layers = 0
        self._fp16_loss: list[str] = []
        self.committed = False

    # -- context manager
    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            self.abort()

    def abort(self) -> None:
        """Discard the scratch file (the archive is not touched)."""
        if self._file is not None:
            with suppress(Exception):
                self._file.close()
            self._file = None
        with suppress(OSError):
            self.scratch.unlink()

    # -- streaming
    def add_group(self, name: str) -> h5py.Group:
        """A new, empty member group of the run (e.g. ``sanity``), committed with it."""
        if self._file is None:
            raise ArchiveError("this run writer is closed")
        if name in self._group:
            raise ArchiveError(f"the run already has a member {name!r}")
        return self._group.create_group(name, track_order=True)

    def add_layer(self, rec: LayerRecord) -> None:
        """Write one :class:`~glam.engine.glam.LayerRecord` (the ``on_layer`` sink of analyze)."""
        if self._file is None:
            raise ArchiveError("this run writer is closed")
        ensure_space(self.scratch, sum(
            int(np.asarray(a).nbytes) for a in (
                rec.local_map, rec.global_map, rec.global_grad_map, rec.activation_energy,
                getattr(rec, "activation", None), getattr(rec, "grad_local", None),
                getattr(rec, "grad_global", None)) if a is not None))
        g = self._layers.create_group(str(int(rec.index)))
        _set_attrs(
            g,
            {
                "index": int(rec.index),
                "name": rec.name,
                "op": rec.op,
                "parent": int(rec.parent),
                "participating": bool(rec.participating),
                "participation": str(getattr(rec, "reason", "")),
                "shape": [int(d) for d in rec.shape],
                "local_weights_vanish": bool(rec.local_vanished),
                "global_weights_vanish": bool(rec.global_vanished),
            },
        )
        dt = self.store_dtype
        _dataset(g, "local_map", rec.local_map, dtype=dt, normalization=NORM_RAW,
                 formula="A(g_j), g_j = dT_ROI(y)/df_j; key = N(R(N(local_map), (H, W)))")
        if rec.global_map is not None:
            _dataset(g, "global_map", rec.global_map, dtype=dt,
                     normalization="m_j = N(R(N(A(G_j)))) * N(a_j) (GLAM.md), not re-normalised",
                     formula="key = N(R(N(global_map), (H, W)))")
        if rec.global_grad_map is not None:
            _dataset(g, "global_grad_map", rec.global_grad_map, dtype=dt,
                     normalization=NORM_RAW, formula="A(G_j), G_j = dT_Global(f_j)/df_parent(j)")
        if rec.activation_energy is not None:
            _dataset(g, "activation_energy", rec.activation_energy, dtype=dt,
                     normalization=NORM_RAW, formula="a_j = mean_c |f_j|")
        for key, formula in (
            ("activation", "f_j (signed)"),
            ("grad_local", "g_j = dT_ROI(y)/df_j (signed)"),
            ("grad_global", "G_j = dT_Global(f_j)/df_parent(j) (signed)"),
        ):
            arr = getattr(rec, key)
            if arr is not None:
                _dataset(g, key, arr, dtype=dt, normalization=NORM_RAW, formula=formula)
        if dt == "float16" and not self._fp16_loss:
            for arr in (rec.local_map, rec.global_map, rec.activation):
                if arr is not None and np.any(np.abs(arr) > 0):
                    a = np.abs(np.asarray(arr, dtype=np.float32))
                    rel = a[a > 0].min() / a.max()
                    if rel < 6e-8:
                        self._fp16_loss.append(
                            "float16 storage flushes values below 6e-8 of each dataset's "
                            f"maximum to zero (first seen at tap {rec.index})"
                        )
                        break
        self._n_layers += 1
        if self._n_layers % 16 == 0:
            self._file.flush()

    # -- final
    def finish(
        self,
        model: ImportedModel,
        result: Result,
        *,
        image_path: str,
        image_sha256: str,
        reference_path: str | None = None,
        image_is_hr: bool = False,
        input_rgb: np.ndarray | None = None,
        command_line: str = "",
        store: str | None = None,
        baseline: bool = False,
        extra_attrs: dict[str, Any] | None = None,
    ) -> str:
        """Write everything but the layers, then commit the run into the archive.

        Parameters
        ----------
        model:
            The analysed model (path, hash, conventions, parity are recorded).
        result:
            The :class:`~glam.api.Result` (layers already streamed via :meth:`add_layer`;
            any records it still holds are written too).
        image_path, image_sha256:
            The input image and its hash.
        reference_path, image_is_hr:
            Where the HR reference came from (``image_is_hr``: the image itself, ``--hr``).
        input_rgb:
            ``3 x h x w`` RGB of the LR input, for showing 1-channel (Y) models in colour.
        command_line:
            Recorded in the provenance.
        store:
            Store mode (defaults to the writer's).
        baseline:
            Mark the run as a baseline (issue 5's reference archives).
        extra_attrs:
            More run attributes.

        Returns
        -------
        str
            The run name.
        """
        if self._file is None:
            raise ArchiveError("this run writer is closed")
        for rec in result.layers:
            if str(rec.index) not in self._layers:
                self.add_layer(rec)
        body = 0
        for a in (getattr(result, "input", None), getattr(result, "output", None),
                  getattr(result, "reference", None), input_rgb):
            if isinstance(a, np.ndarray) or hasattr(a, "nbytes"):
                body += int(a.nbytes)
        out = getattr(result, "output", None)
        if isinstance(out, np.ndarray):
            body += int(out.size) * 4 * 8  # local/global maps, LAM maps at output size
        ensure_space(self.scratch, body)
        self._write_body(
            model,
            result,
            image_path=image_path,
            image_sha256=image_sha256,
            reference_path=reference_path,
            image_is_hr=image_is_hr,
            input_rgb=input_rgb,
            command_line=command_line,
            store=store or self.store,
            baseline=baseline,
            extra_attrs=extra_attrs or {},
        )
        self._file.flush()
        self._file.close()
        self._file = None
        try:
            commit_run(self.archive, self.scratch, self.name, overwrite=self.overwrite)
            self.committed = True
        finally:
            with suppress(OSError):
                self.scratch.unlink()
        return self.name

    def _write_body(
        self,
        model: ImportedModel,
        result: Result,
        *,
        image_path: str,
        image_sha256: str,
        reference_path: str | None,
        image_is_hr: bool,
        input_rgb: np.ndarray | None,
        command_line: str,
        store: str,
        baseline: bool,
        extra_attrs: dict[str, Any],
    ) -> None:
        g = self._group
        c = model.conventions
        warnings = list(dict.fromkeys([*model.warnings, *result.warnings, *self._fp16_loss]))
        ref_sha = None
        if reference_path is not None and Path(reference_path).is_file():
            from glam.importers.loader import sha256_of

            ref_sha = image_sha256 if image_is_hr else sha256_of(reference_path)
        _set_attrs(
            g,
            {
                "name": self.name,
                "model_path": str(model.path),
                "model_name": Path(str(model.path)).name,
                "model_sha256": model.sha256,
                "model_format": str(model.format),
                "image_path": str(image_path),
                "image_name": Path(str(image_path)).name,
                "image_sha256": image_sha256,
                "image_is_hr": bool(image_is_hr),
                "reference_path": reference_path,
                "reference_sha256": ref_sha,
                "scale": int(c.scale),
                "offset": [int(o) for o in c.offset],
                "roi_top": int(result.roi[0]),
                "roi_left": int(result.roi[1]),
                "window": int(result.window),
                "input_range": int(c.input_range),
                "in_channels": int(c.in_channels),
                "out_channels": int(c.out_channels),
                "device": str(result.device),
                "store": store,
                "store_dtype": self.store_dtype,
                "baseline": bool(baseline),
                "lam": result.lam is not None,
                "n_taps": len(result.taps),
                "input_crop": list(result.input_crop) if result.input_crop else None,
                "warnings": warnings,
                "created": _now(),
                **extra_attrs,
            },
        )
        color = "Y (ITU-R BT.601)" if c.in_channels == 1 else "RGB"
        _dataset(g, "input", result.input, normalization=NORM_RAW, range="[0, 1]", color=color,
                 description="the exact LR tensor fed to the model")
        _dataset(g, "output", result.output, normalization=NORM_RAW,
                 range="[0, 1] (not clipped)", color="Y (ITU-R BT.601)"
                 if c.out_channels == 1 else "RGB")
        if input_rgb is not None:
            _dataset(g, "input_rgb", input_rgb, normalization=NORM_RAW, range="[0, 1]",
                     description="RGB of the LR input, to show Y models in colour")
        if result.reference is not None:
            _dataset(g, "reference", result.reference, normalization=NORM_RAW, range="[0, 1]",
                     description="HR reference cropped to the output")

        # taps
        t = g.create_group("taps", track_order=True)
        taps = result.taps
        rank = max((len(x.shape) for x in taps), default=4)
        shapes = np.full((len(taps), rank), -1, dtype=np.int64)
        for i, x in enumerate(taps):
            shapes[i, : len(x.shape)] = x.shape
        ck = _checksummed
        ck(t, "index", np.array([x.index for x in taps], dtype=np.int32))
        ck(t, "name", _str_array([x.name for x in taps]))
        ck(t, "op", _str_array([x.op for x in taps]))
        ck(t, "parent", np.array([x.parent for x in taps], dtype=np.int32))
        ck(t, "participating", np.array([x.participating for x in taps], dtype=bool))
        ck(t, "reason", _str_array([x.reason for x in taps]))
        ds = ck(t, "shape", shapes)
        ds.attrs["padding"] = -1

        # final maps
        for family, maps in (("local", result.local), ("global", result.global_)):
            fg = g.create_group(family, track_order=True)
            for key in MAP_NAMES:
                mm = result.map_metrics.get(f"{family}/{key}", {})
                _dataset(fg, key, maps[key], normalization=NORM_N, **mm)

        # LAM
        if result.lam is not None:
            lam = result.lam
            lg = g.create_group("lam", track_order=True)
            _set_attrs(lg, {"fold": int(lam.fold), "sigma": float(lam.sigma),
                            "kernel": int(lam.kernel_size), "batch": int(lam.batch),
                            "seconds": float(lam.seconds)})
            _dataset(lg, "attribution", lam.attribution, normalization=NORM_RAW,
                     description="signed LAM attribution at input size")
            _dataset(lg, "map", lam.map, normalization="|sum_c attr| / max (GLAM.md LAM)",
                     **result.map_metrics.get("lam/map", {}))
            _dataset(lg, "map_output", lam.map_output,
                     normalization="R(map, (H, W)) of the normalised LAM map",
                     **result.map_metrics.get("lam/map_output", {}))

        # metrics
        mg = g.create_group("metrics")
        _set_attrs(mg, {k: float(v) for k, v in result.metrics.items()})
        _set_attrs(mg, {f"seconds_{k}": float(v) for k, v in result.timings.items()
                        if f"seconds_{k}" not in result.metrics})
        mmg = g.create_group("map_metrics", track_order=True)
        for key, vals in result.map_metrics.items():
            _set_attrs(mmg.require_group(key), {k: float(v) for k, v in vals.items()})

        # provenance
        pg = g.create_group("provenance", track_order=True)
        lam_opts = {}
        if result.lam is not None:
            lam_opts = {"lam_fold": int(result.lam.fold), "lam_sigma": float(result.lam.sigma),
                        "lam_kernel": int(result.lam.kernel_size),
                        "lam_batch": int(result.lam.batch)}
        _set_attrs(
            pg,
            {
                **software_versions(),
                "command_line": command_line,
                "argv": list(sys.argv),
                "store": store,
                "store_dtype": self.store_dtype,
                "lam": result.lam is not None,
                **lam_opts,
                "device": str(result.device),
                "model_metadata": json.dumps(model.metadata, sort_keys=True, default=str),
                "warnings": warnings,
            },
        )
        cg = pg.create_group("conventions")
        conv = c.to_dict()
        conv["fixed_size"] = conv["fixed_size"] or [-1, -1]  # (-1, -1): any input size
        _set_attrs(cg, conv)
        _write_parity(pg.create_group("parity"), model.parity.to_dict())
        # the analysed output against the reference runtime on this input (a run whose
        # check failed is never archived)
        if getattr(result, "run_parity", None) is not None:
            _write_parity(pg.create_group("run_parity"), result.run_parity.to_dict())

        # engine parity (--verify): the engine against the literal GLAM.md reference
        if result.engine_parity is not None:
            ep = result.engine_parity
            eg = g.create_group("engine_parity", track_order=True)
            _set_attrs(eg, {"tolerance": float(ep.tolerance), "max_error": float(ep.max_error),
                            "worst_map": ep.worst_map, "passed": bool(ep.passed),
                            "seconds_reference": float(ep.seconds),
                            "reference": "glam.engine.reference.reference_glam"})
            _set_attrs(eg.create_group("errors", track_order=True),
                       {k: float(v) for k, v in ep.errors.items()})
            _set_attrs(eg.create_group("worst_layer", track_order=True),
                       {k: int(v) for k, v in ep.worst_layer.items()})
            _set_attrs(eg.create_group("bounds", track_order=True),
                       {k: float(ep.bound(k)) for k in ep.errors})



def _commit_copy(
    f: h5py.File, src: h5py.Group, run: h5py.Group, runs: h5py.Group, name: str, tmp_name: str
) -> None:
    """The commit step every writer shares: copy ``run`` (from ``src``'s file) into ``runs``
    under the hidden, incomplete name ``tmp_name``, then replace ``runs/name`` with it and
    mark it complete, flushing around the swap so a crash leaves the old run or the new one,
    never half of either."""
    src.copy(run, runs, name=tmp_name)
    runs[tmp_name].attrs["complete"] = np.bool_(False)
    f.flush()
    if name in runs:
        del runs[name]
    runs.move(tmp_name, name)
    runs[name].attrs["complete"] = np.bool_(True)
    f.flush()

def _publish_new(new: Path, target: Path) -> bool:
    """Put the finished file ``new`` at ``target`` unless ``target`` exists by now.

    Two glam processes can both see no archive and both build one; ``os.replace`` would let
    the second silently drop the first one's run. A hard link is created atomically and
    fails when the name is taken, so exactly one file wins and the loser learns it (and
    appends to the winner instead). ``new`` is removed either way. On a filesystem without
    hard links the rename is used, as before.
    """
    try:
        os.link(new, target)
    except FileExistsError:
        new.unlink()
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                             errno.EXDEV, errno.ENOSYS):
            raise
        os.replace(new, target)
        return True
    new.unlink()
    return True


def _append_run(archive: Path, src: h5py.Group, name: str, *, overwrite: bool) -> None:
    if not _is_hdf5(archive):
        raise ArchiveError(
            f"{str(archive)!r} exists and is not an HDF5 file; refusing to overwrite it "
            "— choose another archive with -o"
        )
    with _open_h5(archive, "r+") as f:
        _check_root(f, archive)
        clean_temporary_groups(f)
        runs = f.require_group("runs")
        if name in runs and not overwrite:
            raise ArchiveError(
                f"run {name!r} already exists in {str(archive)!r}; pass --overwrite to "
                "replace it or --run NAME to choose another name"
            )
        _commit_copy(f, src, src["run"], runs, name, f"{TMP_PREFIX}{name}-{os.getpid()}")


def _create_with_run(archive: Path, src: h5py.Group, name: str) -> bool:
    """Build a new archive holding the run beside ``archive`` and publish it; False when
    another process created ``archive`` meanwhile (nothing was written then)."""
    new = archive.parent / f".{archive.name}.{os.getpid()}.new.h5"
    try:
        with h5py.File(new, "w", track_order=True) as f:
            _init_root(f)
            _commit_copy(f, src, src["run"], f["runs"], name, f"{TMP_PREFIX}{name}-{os.getpid()}")
        return _publish_new(new, archive)
    except BaseException:
        with suppress(OSError):
            new.unlink()
        raise


def commit_run(archive: str | Path, scratch: str | Path, name: str, *, overwrite: bool) -> None:
    """Copy the finished run in ``scratch`` (group ``/run``) into ``archive`` atomically.

    The run is copied to ``/runs/.tmp-<name>-<pid>``, renamed to ``/runs/<name>`` and marked
    ``complete=True`` last; the archive is flushed and closed. A new archive is built in a
    temporary file beside it and published without replacing an archive another process
    created in the meantime (the run is then appended to that one).

    Raises
    ------
    ArchiveError
        When the name exists (without ``overwrite``) or the archive is not a glam archive.
    """
    archive, scratch = Path(archive), Path(scratch)
    _clean_stale_files(archive)
    # Space for the copy, checked before the archive is touched (a failed HDF5 write
    # could leave it damaged). A new archive is written to a temporary file beside it.
    ensure_space(archive, scratch.stat().st_size,
                 current=archive.stat().st_size if archive.exists() else 0)
    with h5py.File(scratch, "r") as src:
        if not archive.exists() and _create_with_run(archive, src, name):
            return
        _append_run(archive, src, name, overwrite=overwrite)


def init_archive(path: str | Path) -> None:
    """Create an empty glam archive at ``path`` (atomically: a temporary file published
    without replacing one another process created meanwhile); an existing archive is only
    checked.

    Raises
    ------
    ArchiveError
        When ``path`` exists and is not a glam archive.
    """
    p = Path(path)
    check_archive_target(p)
    if p.exists():
        return
    new = p.parent / f".{p.name}.{os.getpid()}.new.h5"
    try:
        with h5py.File(new, "w", track_order=True) as f:
            _init_root(f)
        if not _publish_new(new, p):  # another process created it meanwhile
            check_archive_target(p)
    except BaseException:
        with suppress(OSError):
            new.unlink()
        raise


def adopt_runs(
    archive: str | Path,
    items: Sequence[tuple[str | Path, str]],
    *,
    link: bool = False,
    on_open: Any = None,
) -> None:
    """Bring complete runs of other glam archives (``(source, run)`` pairs, e.g. a batch's
    shards) into ``archive``, in one open of it.

    A copied run goes through the same protocol as :func:`commit_run` (temporary name,
    rename, ``complete=True`` last); with ``link`` the run becomes an HDF5 external link to
    ``source:/runs/<run>`` (the path relative to the archive's folder, so the pair can be
    moved together). ``on_open(file)`` is called last, inside the same open (the ``batch``
    record). A run already in ``archive`` is replaced.

    Raises
    ------
    ArchiveError
        When ``archive`` is not a glam archive, or a source run is missing or incomplete.
    """
    archive = Path(archive)
    init_archive(archive)
    with _open_h5(archive, "r+") as f:
        _check_root(f, archive)
        clean_temporary_groups(f)
        runs = f.require_group("runs")
        for source, name in items:
            source = Path(source)
            with _open_h5(source, "r") as src:
                g = src.get(f"runs/{name}")
                if not isinstance(g, h5py.Group) or not bool(g.attrs.get("complete", False)):
                    raise ArchiveError(
                        f"run {name!r} is not complete in {str(source)!r}; rerun its task"
                    )
                tmp_name = f"{TMP_PREFIX}{name}-{os.getpid()}"
                if link:
                    rel = os.path.relpath(source.resolve(), archive.resolve().parent)
                    if name in runs:
                        del runs[name]
                    runs[name] = h5py.ExternalLink(rel, f"/runs/{name}")
                    continue
                ensure_space(archive, _group_bytes(g))
                _commit_copy(f, src, g, runs, name, tmp_name)
        if on_open is not None:
            on_open(f)
        f.flush()


def _group_bytes(g: h5py.Group) -> int:
    """Stored bytes of the datasets under ``g`` (for :func:`ensure_space`)."""
    total = 0

    def visit(_key: str, obj: h5py.HLObject) -> None:
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += int(obj.id.get_storage_size())

    g.visititems(visit)
    return total


def drop_run(archive: str | Path, name: str) -> None:
    """Delete run ``name`` from ``archive`` (nothing when absent)."""
    p = Path(archive)
    if not p.exists():
        return
    with _open_h5(p, "r+") as f:
        runs = f.get("runs")
        if isinstance(runs, h5py.Group) and name in runs:
            del runs[name]


# -------------------------------------------------------------------------------- reader


@dataclass
class RunData:
    """One archived run, read back (maps and tensors as float32 numpy arrays).

    Attributes
    ----------
    name:
        Run name.
    attrs:
        Run attributes (``model_path``, ``image_path``, ``scale``, ``roi_top`` ...).
    metrics:
        Scalar metrics (``di_local``, ``di_global``, ``psnr`` ...).
    map_metrics:
        ``{"local/sum": {"di": ..., "attributed_fraction": ...}, ...}``.
    provenance:
        Versions, command line, options; ``provenance["conventions"]``,
        ``provenance["parity"]`` (import, probe input) and ``provenance["run_parity"]``
        (the analysed input; runs written since 2026-12-06) are dicts.
    input, output, reference, input_rgb:
        Arrays (``reference``/``input_rgb`` may be ``None``).
    local, global_:
        ``{"consensus", "variation", "sum"}`` maps.
    lam:
        ``{"attribution", "map", "map_output"}`` plus ``"attrs"``, or ``None``.
    taps:
        One dict per tap: ``index, name, op, parent, participating, shape``.
    warnings:
        Recorded warnings.
    engine_parity:
        The ``engine_parity`` group (``--verify`` runs): its attributes plus ``"errors"``
        and ``"worst_layer"`` dicts; empty when the run was not verified.
    """

    name: str
    attrs: dict[str, Any]
    metrics: dict[str, float]
    map_metrics: dict[str, dict[str, float]]
    provenance: dict[str, Any]
    input: np.ndarray
    output: np.ndarray
    reference: np.ndarray | None
    input_rgb: np.ndarray | None
    local: dict[str, np.ndarray]
    global_: dict[str, np.ndarray]
    lam: dict[str, Any] | None
    taps: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    engine_parity: dict[str, Any] = field(default_factory=dict)

    @property
    def roi(self) -> tuple[int, int]:
        """``(top, left)`` in output pixels."""
        return int(self.attrs["roi_top"]), int(self.attrs["roi_left"])

    @property
    def window(self) -> int:
        """ROI window size."""
        return int(self.attrs["window"])

    @property
    def baseline(self) -> bool:
        """Whether the run is a baseline."""
        return bool(self.attrs.get("baseline", False))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (``glam show --json``)."""
        participating = sum(1 for t in self.taps if t["participating"])
        return {
            "run": self.name,
            "attrs": self.attrs,
            "metrics": self.metrics,
            "map_metrics": self.map_metrics,
            "provenance": self.provenance,
            "warnings": self.warnings,
            "taps": {"count": len(self.taps), "participating": participating,
                     "table": self.taps},
        }


class Archive:
    """A glam archive opened for reading (see :func:`open_archive`)."""

    def __init__(self, path: str | Path, *, what: str = "archive",
                 writer: str = "glam analyze MODEL IMAGE") -> None:
        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise ArchiveError(
                f"{what} {str(p)!r} does not exist; write one with `{writer} "
                f"-o {p.name}` or pass the right path"
            )
        if p.is_dir():
            raise ArchiveError(f"archive path {str(p)!r} is a directory; pass an .h5 archive file")
        if not _is_hdf5(p):
            raise ArchiveError(
                f"{str(p)!r} is not an HDF5 file; pass an archive written by `glam analyze`"
            )
        try:
            self._f = _open_h5(p, "r")
        except OSError as exc:
            raise ArchiveError(f"cannot open archive {str(p)!r}: {exc}") from None
        try:
            self.schema_version = _check_root(self._f, p)
        except BaseException:
            self._f.close()
            raise
        self.attrs = _attrs(self._f)

    # -- lifetime
    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs
    def runs(self) -> list[str]:
        """Names of the complete runs, in the order they were written."""
        runs = self._f.get("runs")
        if not isinstance(runs, h5py.Group):
            return []
        return _complete_runs(runs)

    def _group(self, name: str) -> h5py.Group:
        available = self.runs()
        if name not in available:
            listing = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
            hint = f"available runs: {listing}" if available else "the archive holds no runs"
            raise ArchiveError(
                f"run {name!r} is not in {str(self.path)!r}; {hint} (see `glam ls "
                f"{self.path.name}`)"
            )
        return self._f["runs"][name]

    def group(self, name: str) -> h5py.Group:
        """The raw ``h5py`` group of a complete run (read-only)."""
        return self._group(name)

    def run(self, name: str) -> RunData:
        """Read one run (everything but the per-layer data).

        Raises
        ------
        ArchiveError
            When the run is not in the archive (the message lists the available runs).
        """
        g = self._group(name)
        try:
            return self._read_run(name, g)
        except (KeyError, OSError, ValueError, TypeError, AttributeError) as exc:
            raise self._damaged(name, exc) from None

    def _damaged(self, name: str, exc: BaseException) -> ArchiveError:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return ArchiveError(
            f"run {name!r} of {str(self.path)!r} is damaged ({detail}); the other runs are "
            f"unaffected — re-run it with --overwrite or remove it (see `glam ls "
            f"{self.path.name} --verify`)"
        )

    def verify_run(self, name: str) -> int:
        """Read every dataset of a run, checking HDF5's Fletcher32 checksums where written.

        Returns the number of datasets read. Raises :class:`ArchiveError` naming the run
        (and the dataset) when one cannot be read or a required group is missing.
        """
        g = self._group(name)
        count = 0
        current = ""
        try:
            for req in ("metrics", "input", "output", "local", "global"):
                if req not in g:
                    raise KeyError(f"required member {req!r} is missing")

            def visit(key: str, obj: h5py.HLObject) -> None:
                nonlocal count, current
                current = key
                if isinstance(obj, h5py.Dataset):
                    obj[()]
                    count += 1

            g.visititems(visit)
            self._read_run(name, g)
        except (KeyError, OSError, ValueError, TypeError, AttributeError) as exc:
            where = f"dataset {current!r}: " if current else ""
            raise self._damaged(name, type(exc)(f"{where}{exc}")) from None
        return count

    def _read_run(self, name: str, g: h5py.Group) -> RunData:
        if "metrics" not in g:
            raise KeyError("its 'metrics' group is missing")
        attrs = _attrs(g)
        prov = _attrs(g["provenance"]) if "provenance" in g else {}
        if "provenance" in g:
            if "conventions" in g["provenance"]:
                prov["conventions"] = _attrs(g["provenance"]["conventions"])
            for sub in ("parity", "run_parity"):
                if sub in g["provenance"]:
                    prov[sub] = _read_parity(g["provenance"][sub])
            conv = prov.get("conventions", {})
            if conv.get("fixed_size") == [-1, -1]:
                conv["fixed_size"] = None
        mm = {}
        if "map_metrics" in g:
            def visit(key: str, obj: h5py.HLObject) -> None:
                if isinstance(obj, h5py.Group) and len(obj.attrs):
                    mm[key] = {k: float(v) for k, v in _attrs(obj).items()}

            g["map_metrics"].visititems(visit)
        lam = None
        if "lam" in g:
            lg = g["lam"]
            lam = {k: _read(lg[k]) for k in ("attribution", "map", "map_output") if k in lg}
            lam["attrs"] = _attrs(lg)
        taps = []
        if "taps" in g:
            t = g["taps"]
            names = [_py(x) for x in t["name"][()]]
            ops = [_py(x) for x in t["op"][()]]
            parents = t["parent"][()].tolist()
            part = t["participating"][()].tolist()
            shapes = t["shape"][()].tolist()
            # archives written before 2026-12-06 have no reasons (and no batch-folded taps)
            reasons = [_py(x) for x in t["reason"][()]] if "reason" in t else [""] * len(names)
            for i in range(len(names)):
                taps.append({"index": i, "name": names[i], "op": ops[i],
                             "shape": [d for d in shapes[i] if d >= 0],
                             "parent": int(parents[i]), "participating": bool(part[i]),
                             "reason": reasons[i]})
        return RunData(
            name=name,
            attrs=attrs,
            metrics={k: float(v) for k, v in _attrs(g["metrics"]).items()} if "metrics" in g else {},
            map_metrics=mm,
            provenance=prov,
            input=_read(g["input"]),
            output=_read(g["output"]),
            reference=_read(g["reference"]) if "reference" in g else None,
            input_rgb=_read(g["input_rgb"]) if "input_rgb" in g else None,
            local={k: _read(g["local"][k]) for k in MAP_NAMES},
            global_={k: _read(g["global"][k]) for k in MAP_NAMES},
            lam=lam,
            taps=taps,
            warnings=list(attrs.get("warnings", [])),
            engine_parity=_engine_parity(g),
        )

    def sanity(self, name: str) -> SanityRecord | None:
        """The run's ``glam sanity`` results, or ``None`` when it has none."""
        from glam.archive.sanity import read_sanity

        return read_sanity(self._group(name))

    def n_layers(self, name: str) -> int:
        """Number of archived layer records of a run."""
        g = self._group(name)
        return len(g["layers"]) if "layers" in g else 0

    def layer(self, name: str, index: int) -> dict[str, Any]:
        """One layer record: its attributes plus every dataset (float32, rescaled).

        Raises
        ------
        ArchiveError
            When the run or the layer does not exist.
        """
        g = self._group(name)
        key = str(int(index))
        if "layers" not in g or key not in g["layers"]:
            n = self.n_layers(name)
            raise ArchiveError(
                f"layer {index} is not in run {name!r}; it has layers 0..{n - 1}"
            )
        lg = g["layers"][key]
        rec = _attrs(lg)
        for k, ds in lg.items():
            rec[k] = _read(ds)
        return rec

    def iter_layers(self, name: str) -> Iterator[dict[str, Any]]:
        """Layer records in execution order, one at a time (memory stays flat)."""
        for i in range(self.n_layers(name)):
            yield self.layer(name, i)

    def figure_data(self, run: str | RunData, *, max_keys: int = 16) -> FigureData:
        """Everything :mod:`glam.report.figures` needs for one run.

        Parameters
        ----------
        run:
            Run name or an already read :class:`RunData`.
        max_keys:
            Most per-layer keys to include (evenly sampled participating layers).

        Returns
        -------
        FigureData
        """
        import torch
        from glam.engine.glam import layer_keys
        from glam.images import merge_y_with_cbcr

        rd = self.run(run) if isinstance(run, str) else run
        H, W = rd.output.shape[-2:]
        if rd.input_rgb is not None:
            from PIL import Image

            input_rgb = to_rgb_uint8(rd.input_rgb)
            output_rgb = (
                merge_y_with_cbcr(rd.output, Image.fromarray(input_rgb))
                if rd.output.shape[0] == 1
                else to_rgb_uint8(rd.output)
            )
        else:
            input_rgb = to_rgb_uint8(rd.input)
            output_rgb = to_rgb_uint8(rd.output)
        part = [t["index"] for t in rd.taps if t["participating"]]
        chosen = [part[i] for i in sample_indices(len(part), max_keys)]
        g = self._group(rd.name)
        local_keys: list[LayerKey] = []
        global_keys: list[LayerKey] = []
        n_global = 0
        if "layers" in g:
            recs = []
            for idx in chosen:
                lg = g["layers"].get(str(idx))
                if lg is not None:
                    recs.append((idx, _py(lg.attrs.get("name", str(idx))), lg))
            if recs:
                loc = [torch.from_numpy(_read(lg["local_map"])) for _, _, lg in recs]
                for (idx, nm, lg), k in zip(recs, layer_keys(loc, (H, W)), strict=True):
                    van = bool(lg.attrs.get("local_weights_vanish", False))
                    local_keys.append(LayerKey(idx, nm, k.numpy(), van))
                grecs = [(i, n, lg) for i, n, lg in recs if "global_map" in lg]
                glo = [torch.from_numpy(_read(lg["global_map"])) for _, _, lg in grecs]
                if glo:
                    for (idx, nm, lg), k in zip(grecs, layer_keys(glo, (H, W)), strict=True):
                        van = bool(lg.attrs.get("global_weights_vanish", False))
                        global_keys.append(LayerKey(idx, nm, k.numpy(), van))
            n_global = sum(1 for i in part if "global_map" in g["layers"].get(str(i), {}))
        return FigureData(
            name=rd.name,
            input_rgb=input_rgb,
            output_rgb=output_rgb,
            roi=rd.roi,
            window=rd.window,
            local=dict(rd.local),
            global_=dict(rd.global_),
            metrics=dict(rd.metrics),
            lam_map_output=rd.lam["map_output"] if rd.lam and "map_output" in rd.lam else None,
            local_keys=local_keys,
            global_keys=global_keys,
            model_name=str(rd.attrs.get("model_name", Path(str(rd.attrs.get("model_path", ""))).name)),
            local_total=len(part) if "layers" in g else 0,
            global_total=n_global,
        )


def _engine_parity(g: h5py.Group) -> dict[str, Any]:
    """The ``engine_parity`` group of a run as a dict (empty when absent)."""
    if "engine_parity" not in g:
        return {}
    eg = g["engine_parity"]
    out = _attrs(eg)
    for sub in ("errors", "worst_layer", "bounds"):
        if sub in eg:
            out[sub] = _attrs(eg[sub])
    return out


def open_archive(path: str | Path, *, what: str = "archive",
                 writer: str = "glam analyze MODEL IMAGE") -> Archive:
    """Open a glam archive for reading, validating ``format`` and ``schema_version``.

    Parameters
    ----------
    path:
        The ``.h5`` archive.
    what, writer:
        How a missing file is named and which command writes one (``glam check`` says
        ``baseline`` and ``glam baseline MODEL IMAGES``).

    Returns
    -------
    Archive
        Use as a context manager, or call ``close()``.

    Raises
    ------
    ArchiveError
        Missing file, not HDF5, not a glam archive, unknown or newer schema.
    """
    return Archive(path, what=what, writer=writer)
