"""The phase log and progress bars of long commands, on stderr.

One line per phase (import, parity, GL-AM, LAM, figures, ...) with its time, and tqdm
bars configured for where stderr goes:

* a terminal gets an ordinary bar, redrawn at most 5 times a second;
* anything else (a CI log, a file, a pipe) gets plain lines instead of a redrawn bar: one
  when the work starts, then at most one every :data:`LOG_INTERVAL` seconds, and one at the
  end, each a whole line (no carriage returns, no bar glyphs), flushed as written;
* ``quiet`` turns both off (``--quiet``); results on stdout and errors are unaffected.

>>> import io
>>> log = PhaseLog(io.StringIO())
>>> with log.phase("GL-AM"):
...     pass
>>> log.stream.getvalue().startswith("glam: GL-AM ")
True

Imports only the standard library and tqdm (lazily), so any room may hand a
:class:`PhaseLog` around.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["LOG_INTERVAL", "PhaseLog", "progress_bar", "silence", "unsilence"]

_SILENCED = {"on": False}


def silence() -> None:
    """No more progress or phase lines from this process: called before the last line a
    command prints (``error: interrupted``), so that a bar torn down afterwards (when the
    interpreter collects it) cannot write after it."""
    _SILENCED["on"] = True


def unsilence() -> None:
    """Undo :func:`silence` (a new command in the same process, as in tests)."""
    _SILENCED["on"] = False

LOG_INTERVAL = 10.0
"""Seconds between progress lines when stderr is not a terminal (``GLAM_PROGRESS_INTERVAL``
overrides it)."""
_TTY_INTERVAL = 0.2


def _interval() -> float:
    try:
        v = float(os.environ.get("GLAM_PROGRESS_INTERVAL", LOG_INTERVAL))
    except ValueError:
        return LOG_INTERVAL
    return v if v > 0 else LOG_INTERVAL


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


#: Terminal control sequences (cursor moves such as ``ESC[A``, colours): never in a log.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Lines:
    """A file for tqdm that turns each redraw (``\\r...``) into one whole line, drops
    terminal control sequences (tqdm moves the cursor up, ``ESC[A``, to redraw a bar below
    another one: the image bar while LAM's runs), and drops a redraw whose count did not
    change (tqdm's final redraw at close)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        if _SILENCED["on"]:
            return len(text)
        for part in _ESCAPES.sub("", text).replace("\r", "\n").split("\n"):
            line = part.rstrip()
            key = line.split(" [")[0]  # the count, without elapsed time and rate
            if line and key != self.last:
                self.stream.write(line + "\n")
                self.last = key
        self.flush()
        return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (AttributeError, ValueError):
            pass


def progress_bar(
    total: int,
    desc: str,
    unit: str = "it",
    *,
    stream: IO[str] | None = None,
    disable: bool = False,
) -> Any:
    """A tqdm bar that suits ``stream`` (stderr by default); see the module docstring.

    Parameters
    ----------
    total:
        Number of steps.
    desc:
        What is counted, e.g. ``"LAM path"``.
    unit:
        Unit of one step.
    stream:
        Where it writes (default ``sys.stderr``).
    disable:
        No output at all.

    Returns
    -------
    tqdm.tqdm
        Use ``update(n)`` and ``close()`` (or as a context manager).
    """
    from tqdm import tqdm

    out = stream if stream is not None else sys.stderr
    if disable:
        return tqdm(total=total, disable=True)
    if _is_tty(out):
        return tqdm(total=total, desc=desc, unit=unit, file=out, leave=False,
                    mininterval=_TTY_INTERVAL, dynamic_ncols=True)
    every = _interval()
    return tqdm(
        total=total,
        desc=f"glam: {desc}",
        unit=unit,
        file=_Lines(out),
        position=0,  # whole lines need no nesting (tqdm would move the cursor between bars)
        leave=True,
        mininterval=every,
        maxinterval=every,
        miniters=1,
        ascii=True,
        bar_format="{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}, {rate_fmt}]",
    )


class PhaseLog:
    """Timed phases of one command, one line each on ``stream`` (stderr).

    Parameters
    ----------
    stream:
        Where the lines go (default ``sys.stderr``).
    quiet:
        Write nothing (``--quiet``); :attr:`times` is still kept.
    """

    def __init__(self, stream: IO[str] | None = None, *, quiet: bool = False) -> None:
        self.stream: Any = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.times: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self.prefix = ""

    def line(self, text: str) -> None:
        """Write ``glam: <prefix><text>`` as one line (nothing when quiet)."""
        if self.quiet or _SILENCED["on"]:
            return
        self.stream.write(f"glam: {self.prefix}{text}\n")
        try:
            self.stream.flush()
        except (AttributeError, ValueError):
            pass

    def done(self, name: str, seconds: float, detail: str = "") -> None:
        """Record phase ``name`` as taking ``seconds`` and write its line."""
        self.times[name] = self.times.get(name, 0.0) + float(seconds)
        self.line(f"{name} {seconds:.2f} s" + (f" ({detail})" if detail else ""))

    @contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[None]:
        """Time the block as phase ``name``; its line is written when it ends."""
        t = time.perf_counter()
        yield
        self.done(name, time.perf_counter() - t, detail)

    def bar(self, total: int, desc: str, unit: str = "it") -> Any:
        """A :func:`progress_bar` on this log's stream (disabled when quiet)."""
        return progress_bar(total, desc, unit, stream=self.stream, disable=self.quiet)

    def summary(self) -> str:
        """``total 15.2 s (import 2.3 s, GL-AM 0.5 s, ...)``, also written as a line."""
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.times.items())
        text = f"total {time.perf_counter() - self.t0:.2f} s" + (f" ({parts})" if parts else "")
        saved, self.prefix = self.prefix, ""
        self.line(text)
        self.prefix = saved
        return text
