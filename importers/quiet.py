"""Quiet imports: what exporters and tracers print while glam imports a model is captured.

``torch.export`` logs whole graphs when it meets a data-dependent value (311 lines for one
mixture-of-experts checkpoint), ``torch.jit.trace`` warns about every tensor read as a
Python value, the ONNX exporters and onnxscript log their passes. A user of ``glam inspect``
should see glam's lines; the captured text stays available: in the model's
``metadata["import_log"]`` and, with ``--debug``, on stderr.

:func:`captured` takes over, for the duration of a ``with`` block, the handlers of the
loggers of torch, ONNX and spandrel (those that have handlers of their own or would reach
Python's last-resort handler), Python warnings, and ``sys.stdout`` / ``sys.stderr``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings as pywarnings
from collections.abc import Iterator

__all__ = ["CAPTURED_PREFIXES", "MAX_LINES", "Capture", "captured", "set_passthrough"]

#: loggers whose records are captured (and their children)
CAPTURED_PREFIXES = ("torch", "onnx", "onnxscript", "onnx_ir", "onnxruntime", "spandrel")
#: at most this many captured lines are kept (the first ones; the count of the rest noted)
MAX_LINES = 400


_PASSTHROUGH = False


def set_passthrough(on: bool) -> None:
    """Let the libraries' output through instead of capturing it (``glam --debug``)."""
    global _PASSTHROUGH
    _PASSTHROUGH = bool(on)


class Capture:
    """The captured text of one import: log records, warnings and printed output."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        for line in str(text).splitlines():
            if not line.strip():
                continue
            if len(self.lines) < MAX_LINES:
                self.lines.append(line.rstrip())
            else:
                self.dropped += 1

    def text(self) -> list[str]:
        """The captured lines, with a last line counting those dropped."""
        more = [f"... {self.dropped} more line(s) not kept"] if self.dropped else []
        return self.lines + more


class _Handler(logging.Handler):
    """Keeps WARNING and above: what the libraries' own handlers would have printed (torch's
    structured-trace DEBUG records, always emitted, are not output)."""

    def __init__(self, sink: Capture) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.add(f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - a broken log record must not break an import
            self.sink.add(f"{record.levelname} {record.name}: (unprintable record)")


def _loggers() -> list[logging.Logger]:
    found = [logging.getLogger(p) for p in CAPTURED_PREFIXES]
    for name, obj in list(logging.root.manager.loggerDict.items()):
        if isinstance(obj, logging.Logger) and name.split(".")[0] in CAPTURED_PREFIXES:
            found.append(obj)
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def captured() -> Iterator[Capture]:
    """Capture the libraries' logging, Python warnings and printed output into a
    :class:`Capture` for the duration of the block; everything is restored afterwards."""
    sink = Capture()
    if _PASSTHROUGH:
        yield sink
        return
    handler = _Handler(sink)
    saved = []
    for lg in _loggers():
        saved.append((lg, lg.handlers[:], lg.propagate))
        lg.handlers = [handler]
        lg.propagate = False
    out, err = io.StringIO(), io.StringIO()
    try:
        with pywarnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            pywarnings.simplefilter("always")
            try:
                yield sink
            finally:
                for w in caught:
                    sink.add(f"warning {w.category.__name__}: {w.message}")
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers = handlers
            lg.propagate = propagate
        sink.add(out.getvalue())
        sink.add(err.getvalue())
