"""What the tests read from glam's stderr: the message lines, without the phase log.

glam writes its phase log and notes (``glam: import 1.2 s``, ``glam: note: the machine is
busy ...``) on stderr before any ``error: ...`` line; whether a note appears can depend on the
machine's load, so tests that count error lines read them through :func:`message_lines`.
"""

from __future__ import annotations

PHASE_PREFIX = "glam: "


def message_lines(stderr: str) -> list[str]:
    """The non-blank lines of ``stderr`` that are not phase-log lines (``glam: ...``)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(PHASE_PREFIX)]
