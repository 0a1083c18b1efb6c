"""``glam batch``'s options -> a plan and a run (what :mod:`glam.cli` calls)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glam.batch.driver import BatchOptions, BatchSummary, run_batch
from glam.batch.plan import load_plan, parse_roi_list, plan_from_options
from glam.errors import UserInputError


def parse_grid(text: str | None) -> tuple[int, int] | None:
    """``"ROWS,COLS"`` -> ``(rows, cols)`` (``--roi-grid``).

    Raises
    ------
    UserInputError
        When it is not two integers >= 1.
    """
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        rows, cols = int(parts[0]), int(parts[1])
        if rows < 1 or cols < 1:
            raise ValueError
    except ValueError:
        raise UserInputError(
            f"--roi-grid {text!r} is not ROWS,COLS (two integers >= 1, e.g. --roi-grid 2,2)"
        ) from None
    return rows, cols


def batch_command(
    plan_file: str | None,
    archive: str | Path,
    *,
    models: str | None,
    images: Sequence[str],
    rois: str | None,
    roi_grid: str | None,
    options: dict[str, Any],
    batch: dict[str, Any],
    trust_model: bool,
    echo: Callable[[str], None] | None,
) -> BatchSummary:
    """Build the plan (a file, or ``--models`` x ``--images``) and run it.

    ``options`` holds the analysis options given on the command line; with a plan file they
    override the plan's top-level options.

    Raises
    ------
    UserInputError
        For both or neither of a plan file and ``--models``/``--images``.
    """
    from glam.paths import check_output_file

    check_output_file(Path(archive), "archive")
    if plan_file is not None:
        if models or images:
            raise UserInputError(
                "pass either a PLAN.toml or --models/--images, not both (list the models "
                "and images in the plan)"
            )
        plan = load_plan(plan_file)
        plan.options.update(options)
        if rois and roi_grid:
            raise UserInputError("pass either --rois or --roi-grid, not both")
        if rois or roi_grid:
            plan.rois = parse_roi_list(rois)
            plan.roi_grid = parse_grid(roi_grid)
        plan.trust_model = plan.trust_model or trust_model
        for m in plan.models:
            plan.analyze_options(m).validate()
    else:
        names = [m.strip() for m in (models or "").split(",") if m.strip()]
        if not names or not images:
            raise UserInputError(
                "glam batch needs a PLAN.toml, or --models A,B and --images DIR (e.g. "
                "glam batch --models a.onnx,b.pt --images imgs/ -o zoo.h5)"
            )
        plan = plan_from_options(names, list(images), rois=parse_roi_list(rois),
                                 roi_grid=parse_grid(roi_grid), options=options,
                                 trust_model=trust_model,
                                 source=str(batch.get("command_line", "")))
    return run_batch(plan, archive, BatchOptions(**batch), echo=echo)
