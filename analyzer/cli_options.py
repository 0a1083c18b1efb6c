"""Options shared by several ``glam`` commands (issue 14): ``--threads`` / ``--quiet`` and
the phase log they control, and the ``--figure-*`` display options.

Kept out of :mod:`glam.cli` so that the command module only registers them. Values are
kept in the click context's ``meta`` (no extra parameters on each command function); nothing
heavy is imported until a command asks for its phase log or thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_QUIET = "glam.quiet"
_THREADS = "glam.threads"
_FIGURE = "glam.figure"
_LOG = "glam.log"
_CHOSEN = "glam.threads_chosen"

__all__ = ["figure_options", "figure_settings", "phase_log", "run_options", "use_threads"]


def _keep(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta[f"{key}.{param.name}" if key == _FIGURE else key] = value
        return value

    return store


def run_options(f: F) -> F:
    """``--threads N`` and ``--quiet``: compute threads and the phase log (issue 14)."""
    f = click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                     expose_value=False, callback=_keep(_THREADS),
                     help="Threads for torch, numba and onnxruntime (default: the CPUs that "
                          "are free now: affinity and cgroup quota, less the CPUs other "
                          "processes keep busy).")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False,
                        callback=_keep(_QUIET),
                        help="No phase log or progress on stderr (results, run warnings and "
                             "errors still print).")(f)


def figure_options(f: F) -> F:
    """``--figure-format``, ``--figure-scale``, ``--figure-gamma``."""
    f = click.option("--figure-format", "figure_format", type=click.Choice(["png", "pdf", "svg"]),
                     default="png", show_default=True, expose_value=False,
                     callback=_keep(_FIGURE),
                     help="File format of the figures (overlays/ are always native-size PNG).")(f)
    f = click.option("--figure-scale", "figure_scale",
                     type=click.Choice(["linear", "gamma", "log"]), default="linear",
                     show_default=True, expose_value=False, callback=_keep(_FIGURE),
                     help="Display scale of the maps: gamma or log lift faint attribution.")(f)
    return click.option("--figure-gamma", "figure_gamma", type=click.FloatRange(min=0.0, min_open=True),
                        default=0.5, show_default=True, expose_value=False,
                        callback=_keep(_FIGURE), help="Exponent of --figure-scale gamma.")(f)


def figure_settings() -> dict[str, Any]:
    ctx = click.get_current_context()
    return {k: ctx.meta.get(f"{_FIGURE}.{k}", d) for k, d in
            (("figure_format", "png"), ("figure_scale", "linear"), ("figure_gamma", 0.5))}


def phase_log() -> Any:
    """This command's :class:`~glam.progress.PhaseLog` (one per invocation)."""
    from glam.progress import PhaseLog

    ctx = click.get_current_context()
    if _LOG not in ctx.meta:
        ctx.meta[_LOG] = PhaseLog(quiet=bool(ctx.meta.get(_QUIET)))
    return ctx.meta[_LOG]


def use_threads() -> int:
    """Apply ``--threads`` (default: the CPUs free now, :func:`glam.threads.choose_threads`)
    once per command and say what was chosen in the phase log; a note when an explicit
    ``--threads`` oversubscribes the CPUs (more threads than CPUs, or than are free)."""
    from glam.threads import choose_threads, oversubscription

    ctx = click.get_current_context()
    if _CHOSEN in ctx.meta:
        return int(ctx.meta[_CHOSEN])
    choice = choose_threads(ctx.meta.get(_THREADS))
    import torch

    torch.set_num_threads(choice.threads)
    ctx.meta[_CHOSEN] = choice.threads
    log = phase_log()
    log.line(choice.describe())
    note = oversubscription(choice.threads, budget=choice.budget) if choice.explicit else None
    if note:
        log.line(f"note: {note}")
    return choice.threads
