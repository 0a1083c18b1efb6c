"""The tap table as ``glam inspect``, ``glam show`` and the report print it: a headline that
counts each kind of non-participating tap (GLAM.md "Participating taps": batch-folded,
no spatial extent, not 4-D) and one row per tap. Works on the tap dicts of
:meth:`glam.importers.model.ImportedModel.summary` and of an archived run alike (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def taps_summary(taps: Sequence[dict[str, Any]]) -> str:
    """``"19 convolution(s), 13 participating, 6 batch-folded"``: the tap table's headline
    (``glam inspect`` and ``glam show``); each kind of non-participation is counted."""
    parts = [f"{len(taps)} convolution(s)", f"{sum(1 for t in taps if t['participating'])} participating"]
    kinds: dict[str, int] = {}
    for t in taps:
        if not t["participating"] and t.get("reason"):
            kind = participation_kind(t["reason"])
            kinds[kind] = kinds.get(kind, 0) + 1
    parts += [f"{n} {kind}" for kind, n in kinds.items()]
    return ", ".join(parts)


def participation_kind(reason: str) -> str:
    """The short kind of a non-participation reason (``"batch-folded"``, ``"no spatial
    extent"``, ``"not 4-D"``)."""
    return reason.split(" (")[0]


def tap_row(t: dict[str, Any]) -> tuple[str, ...]:
    """One row of the tap table: index, name, op, shape, parent, participation."""
    if t["participating"]:
        part = "yes"
    else:
        part = f"no: {participation_kind(t['reason'])}" if t.get("reason") else "no"
    return (str(t["index"]), t["name"], t["op"], "x".join(map(str, t["shape"])),
            str(t["parent"]), part)


def not_participating(taps: Sequence[dict[str, Any]]) -> list[str]:
    """One line per kind of non-participating tap, with its count and first example:
    ``"6 batch-folded (e.g. #1 body.0.conv1: batch-folded (output 25x8x8x8: ...))"``."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for t in taps:
        if not t["participating"]:
            kinds.setdefault(participation_kind(t.get("reason", "")) or "not participating", []).append(t)
    return [
        f"{len(ts)} {kind} (e.g. #{ts[0]['index']} {ts[0]['name']}"
        + (f": {ts[0]['reason']}" if ts[0].get("reason") else "") + ")"
        for kind, ts in kinds.items()
    ]
