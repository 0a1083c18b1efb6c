"""The sanity room: ``glam sanity`` (issue 18), evidence that the attribution maps explain
the model — model randomization (``randomize``), similarity measures (``similarity``),
deletion / insertion faithfulness (``faithfulness``), indicators (``indicators``) and the
workflow writing them to an archive (``workflow``, ``runner``). Imports ``analyzer.errors``,
the engine, ``analyzer.api``, the archive (its ``sanity`` group), the report (the sanity
figure) and ``importers``; never the gate, the runs workflows or the CLI.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableRoom(types.ModuleType):
    """``analyzer.sanity`` is both this room and the public function: calling the package
    calls :func:`analyzer.sanity.workflow.sanity` (importing the room's modules sets the
    attribute ``analyzer.sanity`` to the package, so the package itself must be the
    callable)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from analyzer.sanity.workflow import sanity

        return sanity(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableRoom
