"""Resuming ``glam analyze DIR -o runs.h5`` and ``glam baseline`` (issue 23): which runs of
this invocation the archive already holds, complete, from the same model file, the same
image (and HR reference) and the same options, so that a rerun after Ctrl-C skips them and
computes only the rest.

Each run records what it was asked for in its ``analysis_options`` attribute (JSON,
:func:`options_key`): the requested ROI (or ``"centre"``), window, ``--hr``, the reference's
SHA-256, LAM and its settings, store mode and float type, ``--verify``, the import
overrides that change the analysed function (``--in-channels``, ``--layout``,
``--input-range``, ``--output``) and whether it is a baseline. Where and how fast it ran
(``--device``, ``--threads``) and what an import accepts (``--tolerance``,
``--trust-model``) are not part of it. A run of the same name is skipped when its model's
and image's SHA-256 and that record match; one that differs (another model, image or
options, or a run written before the record existed) is refused as before, naming what
differs, unless ``--overwrite`` (which recomputes every run, as it always did).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glam.archive.hdf5 import check_run_names, existing_runs, open_archive
from glam.errors import ArchiveError

__all__ = ["ATTR", "complete_runs_to_skip", "import_key", "options_key"]

#: The run attribute holding :func:`options_key`'s JSON.
ATTR = "analysis_options"


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_key(in_channels: int | str | None = None, layout: str | None = None,
               input_range: int | str = "auto", output: int | str | None = None) -> dict[str, Any]:
    """The import overrides that change what is analysed, in one canonical form (the CLI's
    strings and a batch plan's numbers give the same key)."""
    return {"in_channels": int(in_channels) if in_channels not in (None, "") else None,
            "layout": str(layout).upper() if layout else None,
            "input_range": str(input_range),
            "output": str(output) if output is not None else None}


def options_key(options: Any, reference: str | Path | None) -> str:
    """The options that decide a run's content, as canonical JSON (see the module doc);
    ``options`` is a :class:`glam.runs.AnalyzeOptions` (not imported: runs imports this)."""
    key: dict[str, Any] = {
        "roi": list(options.roi) if options.roi is not None else "centre",
        "window": int(options.window),
        "hr": bool(options.hr),
        "reference_sha256": _sha256(reference) if reference is not None else None,
        "lam": bool(options.lam),
        "store": options.store,
        "store_dtype": options.store_dtype,
        "verify": bool(options.verify),
        "baseline": bool(options.baseline),
        "import": import_key(**options.import_options),
    }
    if options.lam:
        key.update(lam_fold=int(options.lam_fold), lam_sigma=float(options.lam_sigma),
                   lam_kernel=int(options.lam_kernel), lam_batch=int(options.lam_batch))
    return json.dumps(key, sort_keys=True)


def _difference(attrs: dict[str, Any], model_sha: str, image: Path, want: str) -> str | None:
    """Why an archived run is not this invocation's run, or ``None`` when it is."""
    if str(attrs.get("model_sha256", "")) != model_sha:
        return f"another model file (sha256 {str(attrs.get('model_sha256', ''))[:12]})"
    if str(attrs.get("image_sha256", "")) != _sha256(image):
        return f"another image (sha256 {str(attrs.get('image_sha256', ''))[:12]})"
    have = attrs.get(ATTR)
    if have is None:
        return "options it did not record (written by an older glam)"
    have_d, want_d = json.loads(str(have)), json.loads(want)
    diff = [f"{k} {have_d.get(k)!r}, not {want_d.get(k)!r}"
            for k in sorted(set(have_d) | set(want_d)) if have_d.get(k) != want_d.get(k)]
    return f"other options ({'; '.join(diff)})" if diff else None


def complete_runs_to_skip(
    archive: str | Path,
    model_path: str | Path,
    files: Sequence[Path],
    references: Sequence[Path | None],
    names: Sequence[str],
    options: Any,
) -> set[str]:
    """The runs of ``names`` already complete in ``archive`` with the same model, image,
    ROI and options (none with ``options.overwrite``); checks the other names as
    :func:`~glam.archive.hdf5.check_run_names` does.

    Raises
    ------
    ArchiveError
        For a run of the same name that differs, naming what differs and the fix.
    """
    check_run_names(archive, names, overwrite=True)  # a usable archive, valid distinct names
    if options.overwrite:
        return set()
    existing = set(existing_runs(archive))
    if not existing.intersection(names):
        return set()
    model_sha = _sha256(model_path)
    skip: set[str] = set()
    with open_archive(archive) as ar:
        for f, ref, name in zip(files, references, names, strict=True):
            if name not in existing:
                continue
            why = _difference(dict(ar.group(name).attrs), model_sha, Path(f),
                              options_key(options, ref if ref is not None else options.reference))
            if why is not None:
                raise ArchiveError(
                    f"run {name!r} already exists in {str(archive)!r} from {why}; pass "
                    "--overwrite to replace it or --run NAME to choose another name"
                )
            skip.add(name)
    return skip
