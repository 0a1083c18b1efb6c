"""Shards and the archive's ``batch`` group.

Each worker writes its runs into its own shard (``<archive>.shards/shard-<token>.h5``, a
glam archive only that worker writes); the driver alone writes the archive: it adopts each
finished run from its shard (:func:`glam.archive.hdf5.adopt_runs`, by copy or external
link) together with the task's record in ``/batch/tasks/<run>``, in one open of the
archive. Layout of the group (also in ``docs/archive.md``)::

    /batch                    attrs: plan (JSON), plan_source, ray_version, sessions
    /batch/sessions/<n>       attrs: started, finished, seconds, ray_version, address,
                              cluster_resources (JSON), workers, worker_cpus, worker_gpus,
                              links, command_line, tasks, done, failed, skipped
    /batch/tasks/<run>        attrs: model, image, roi (JSON), status ("done"/"failed"),
                              error, seconds, import_seconds, shard, pid, session, attempts
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from glam.archive.hdf5 import adopt_runs, existing_runs
from glam.errors import ArchiveError

BATCH_GROUP = "batch"


def now() -> str:
    """UTC timestamp (ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def shard_dir_for(archive: str | Path) -> Path:
    """The folder of ``archive``'s shards: ``<archive>.shards`` beside it."""
    a = Path(archive)
    return a.parent / f"{a.name}.shards"


def shard_runs(shard: Path) -> list[str]:
    """Complete runs of one shard; ``[]`` for a shard that cannot be read (a worker killed
    while creating it, or one that is writing it right now)."""
    try:
        return existing_runs(shard)
    except (ArchiveError, OSError, KeyError, ValueError):
        return []


def shards(shard_dir: Path) -> list[Path]:
    """The shard files in ``shard_dir`` (sorted)."""
    if not shard_dir.is_dir():
        return []
    return sorted(shard_dir.glob("shard-*.h5"))


def recoverable(shard_dir: Path, wanted: Iterable[str]) -> list[tuple[Path, str]]:
    """``(shard, run)`` of finished runs of an earlier, interrupted batch that are not in the
    archive yet (``wanted``: the names still to do)."""
    want = set(wanted)
    out: list[tuple[Path, str]] = []
    for sh in shards(shard_dir):
        for r in shard_runs(sh):
            if r in want:
                out.append((sh, r))
                want.discard(r)
    return out


def _set(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        if v is None:
            v = ""
        if isinstance(v, (dict, list, tuple)):
            v = json.dumps(v, sort_keys=True, default=str)
        obj.attrs[k] = v if not isinstance(v, bool) else np.bool_(v)


def record(
    archive: Path,
    adopt: Sequence[tuple[Path, str]],
    tasks: Sequence[dict[str, Any]],
    *,
    link: bool,
    plan: dict[str, Any] | None = None,
    session: tuple[int, dict[str, Any]] | None = None,
) -> None:
    """Adopt runs and write task records (and the plan / a session record) in one open.

    Parameters
    ----------
    archive:
        The batch archive.
    adopt:
        ``(shard, run)`` pairs to bring into ``/runs``.
    tasks:
        Task records (``run`` plus the attributes of ``/batch/tasks/<run>``).
    link:
        External links instead of copies.
    plan:
        Attributes of ``/batch`` (the plan).
    session:
        ``(n, attrs)`` of ``/batch/sessions/<n>``.
    """

    def write(f: h5py.File) -> None:
        g = f.require_group(BATCH_GROUP)
        if plan is not None:
            _set(g, plan)
        tg = g.require_group("tasks")
        for t in tasks:
            name = t["run"]
            prev = tg.get(name)
            attempts = int(prev.attrs.get("attempts", 0)) if prev is not None else 0
            if prev is not None:
                del tg[name]
            rg = tg.create_group(name)
            _set(rg, {k: v for k, v in t.items() if k != "run"})
            rg.attrs["attempts"] = np.int64(attempts + 1)
        if session is not None:
            n, attrs = session
            sg = g.require_group("sessions")
            if str(n) in sg:
                del sg[str(n)]
            _set(sg.create_group(str(n)), attrs)
            g.attrs["sessions"] = np.int64(len(sg))

    adopt_runs(archive, list(adopt), link=link, on_open=write)


def next_session(archive: Path) -> int:
    """The number of the next ``/batch/sessions/<n>`` record."""
    if not archive.exists():
        return 0
    with h5py.File(archive, "r") as f:
        sg = f.get(f"{BATCH_GROUP}/sessions")
        return 0 if sg is None else len(sg)


def read_batch(archive: str | Path) -> dict[str, Any]:
    """The ``batch`` group as plain data: ``{"attrs", "sessions": [...], "tasks": {run: ...}}``.

    Raises
    ------
    ArchiveError
        When the archive has no ``batch`` group.
    """

    def attrs(obj: h5py.HLObject) -> dict[str, Any]:
        out = {}
        for k, v in obj.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        return out

    p = Path(archive)
    with h5py.File(p, "r") as f:
        g = f.get(BATCH_GROUP)
        if not isinstance(g, h5py.Group):
            raise ArchiveError(
                f"{str(p)!r} has no batch group; it was not written by `glam batch`"
            )
        sessions = g.get("sessions")
        tasks = g.get("tasks")
        return {
            "attrs": attrs(g),
            "sessions": [attrs(sessions[k]) for k in sorted(sessions, key=int)] if sessions else [],
            "tasks": {k: attrs(tasks[k]) for k in tasks} if tasks else {},
        }


def remove_adopted(shard_dir: Path, archive: Path) -> int:
    """Delete the shards whose runs are all in ``archive`` as copies (copy mode, at the end);
    returns how many were deleted. The folder goes too when it is left empty. A shard that
    a run of the archive links to (an earlier ``--links`` batch) is kept."""
    with h5py.File(archive, "r") as f:
        runs = f.get("runs")
        have = set() if runs is None else {
            n for n in runs
            if isinstance(runs.get(n, getlink=True), h5py.HardLink)
            and bool(runs[n].attrs.get("complete", False))
        }
    gone = 0
    for sh in shards(shard_dir):
        runs = shard_runs(sh)
        if runs and set(runs) <= have:
            with suppress(OSError):
                sh.unlink()
                gone += 1
    with suppress(OSError):
        shard_dir.rmdir()
    return gone
