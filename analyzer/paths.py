"""Validate output paths before the (slow) work, so a bad path is a user error (exit 2)
that names it, not an ``OSError`` after the run was committed.

Writability is *probed* (a temporary file is created and removed in the nearest existing
directory): permission bits alone say nothing for root or for read-only mounts.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from glam.errors import UserInputError

__all__ = ["check_output_dir", "check_output_file", "describe_os_error"]


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists():
        if q.parent == q:
            break
        q = q.parent
    return q


def _probe(directory: Path, what: str, shown: str) -> None:
    if not directory.is_dir():
        raise UserInputError(
            f"{what} {shown!r}: {str(directory)!r} is a file, not a directory; pass a path "
            "inside a directory"
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".glam-probe-", dir=directory)
    except OSError as exc:
        raise UserInputError(
            f"{what} {shown!r}: directory {str(directory)!r} is not writable "
            f"({exc.strerror or exc}); pass a writable path"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_output_dir(path: str | Path, what: str) -> Path:
    """``path`` is (or can be created as) a writable directory."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{what} {str(p)!r} is a file; pass a directory")
    _probe(_nearest_existing(p), what, str(p))
    return p


def check_output_file(path: str | Path, what: str) -> Path:
    """``path`` can be written as a file: not a directory, its directory exists and is
    writable, and an existing file there can be replaced."""
    p = Path(path)
    if p.is_dir():
        raise UserInputError(f"{what} {str(p)!r} is a directory; pass a file name")
    if not p.parent.exists():
        raise UserInputError(
            f"{what} {str(p)!r}: directory {str(p.parent)!r} does not exist; create it first"
        )
    _probe(p.parent, what, str(p))
    if p.exists() and not os.access(p, os.W_OK):
        raise UserInputError(f"{what} {str(p)!r} exists and is read-only; pass another path")
    return p


def describe_os_error(exc: OSError) -> str | None:
    """A one-line user-facing message for disk-full / file-size-limit errors, else ``None``."""
    where = f" writing {exc.filename!r}" if exc.filename else ""
    detail = f" ({exc.strerror})" if exc.strerror and exc.strerror[0].islower() else ""
    if exc.errno == errno.ENOSPC:
        return (f"no space left on device{where}{detail}; nothing was added to the archive — "
                "free some space or write elsewhere with -o")
    if exc.errno == errno.EFBIG:
        return (f"file too large{where}{detail}; nothing was added to the archive — raise "
                "the limit (`ulimit -f`), free space or write elsewhere with -o")
    text = str(exc).lower()
    if "no space left" in text or "file too large" in text:
        return f"no space left on device (or file size limit reached): {str(exc).splitlines()[0][:200]}"
    return None
