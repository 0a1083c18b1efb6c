"""Typed errors of glam, all derived from one root, :class:`GlamError`.

Two families matter to callers (and to the CLI's exit codes):

* :class:`UserInputError` (exit code 2): the caller handed us something wrong — a bad
  path, a corrupt file, an ROI outside the image, a missing archive run. The message
  names the bad value and says how to fix it.
* :class:`ModelError` (exit code 3): the model itself could not be imported or run —
  unsupported operators, failed parity, NaN outputs.

Every message is one line; the CLI prints it without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class GlamError(Exception):
    """Root of every error glam raises on purpose."""

    exit_code: int = 3


class UserInputError(GlamError, ValueError):
    """The caller passed a value that cannot work (exit code 2)."""

    exit_code = 2


class ModelError(GlamError, RuntimeError):
    """The model could not be imported, converted or run (exit code 3)."""

    exit_code = 3


class ModelFileError(UserInputError):
    """The file is not a readable ONNX / TorchScript / torch.export model."""


class UnsafeModelError(ModelFileError):
    """The model file could run code or touch files outside glam's control (refused, exit 2).

    Unsafe zip member names, native (AOTInductor) payloads, pickles needing arbitrary
    Python objects, and operators outside the allow-list of pure tensor ops (the last one
    can be overridden with ``--trust-model``).
    """


class NotSuperResolutionError(UserInputError):
    """The model's output size is not an integer multiple ``s >= 1`` of its input size."""


class UnsupportedOpsError(ModelError):
    """The model uses operators glam cannot convert; lists every one of them at once."""

    def __init__(self, ops: Iterable[tuple[str, int]], detail: str = "") -> None:
        self.ops = sorted(set(ops))
        listed = ", ".join(f"{op}-{ver}" for op, ver in self.ops)
        msg = f"unsupported operators (op-opset): {listed}"
        if detail:
            msg += f"; {detail}"
        msg += "; re-export the model with a supported opset or without these ops"
        super().__init__(msg)


class ConversionError(ModelError):
    """A supported format whose conversion to torch.fx failed for another reason."""


class ParityError(ModelError):
    """The imported graph does not compute the same function as the original model."""

    def __init__(self, message: str, max_abs_error: float, node: str | None = None) -> None:
        self.max_abs_error = max_abs_error
        self.node = node
        super().__init__(message)


class ConventionError(UserInputError):
    """An input/output convention (channels, range, layout, size) does not fit the model."""


class AnalysisError(UserInputError):
    """Bad analysis arguments: ROI outside the output, window too small, image too small."""


class InsufficientMemoryError(AnalysisError):
    """The analysis would need more memory than the machine (or the GPU) has available;
    refused before any work, naming the estimate, the memory available and what fits."""


class NumericalError(ModelError):
    """NaN or Inf in the model output or in gradients."""


class EngineParityError(ModelError):
    """``--verify``: the engine's maps differ from the literal GLAM.md reference (exit 3)."""


class ArchiveError(UserInputError):
    """An HDF5 archive is missing, corrupt, of another schema, or lacks the asked-for run."""


class MissingDependencyError(GlamError):
    """An optional dependency (an extra) is needed for this feature."""

    exit_code = 2

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed; install it with `pip install 'glam-sr[{extra}]'`"
        )


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters (its type's name
    when the message is empty): how glam quotes a library's error inside its own one-line
    message."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
