"""The plan of a ``glam batch``: which models, images and ROIs, with which options.

A plan comes from a TOML file (:func:`load_plan`) or from command-line options
(:func:`plan_from_options`); :func:`expand_tasks` turns it into one :class:`Task` per
(model, image, ROI), each with the run name ``glam analyze`` would give it.

>>> plan = load_plan("zoo.toml")                                     # doctest: +SKIP
>>> tasks = expand_tasks(plan)                                       # doctest: +SKIP

A plan file::

    images = ["data/urban100/"]       # files and/or directories; *_LR/*_HR pairs are paired
    hr = true                         # images are HR references (LR = bicubic /s)
    # reference_dir = "data/hr/"      # or: HR references for LR images, as glam analyze
    lam = false
    store = "maps"                    # or "tensors"
    rois = [[40, 64], [0, 0]]         # TOP,LEFT in output pixels; or roi_grid = [2, 2]

    [[models]]
    path = "rcan.onnx"

    [[models]]
    path = "int8/rcan.onnx"
    name = "rcan_int8"                # run prefix (default: the file's stem)
    in_channels = 3                   # per-model conventions overrides
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glam.errors import UserInputError
from glam.runs import AnalyzeOptions, pair_images, sanitize_name

#: Analysis options a plan may set (top level, or per model), with their types.
_OPTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "window": int,
    "hr": bool,
    "lam": bool,
    "lam_fold": int,
    "lam_sigma": (int, float),
    "lam_kernel": int,
    "lam_batch": int,
    "store": str,
    "store_dtype": str,
    "device": str,
    "verify": bool,
    "max_pixels": int,
    "reference_dir": str,
}
#: Import (conventions) overrides of one model.
_MODEL_KEYS: dict[str, type | tuple[type, ...]] = {
    "path": str,
    "name": str,
    "in_channels": int,
    "layout": str,
    "input_range": (str, int),
    "output": (str, int),
    "tolerance": (int, float),
}
_TOP_KEYS = {"models", "images", "rois", "roi_grid", "trust_model", *_OPTION_TYPES}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the plan and its import overrides (``glam.importers.load`` keywords).

    Attributes
    ----------
    path:
        Model file.
    name:
        Run prefix; ``None``: the file's stem (``glam analyze``'s default names).
    in_channels, layout, input_range, output, tolerance:
        Conventions overrides, as ``glam analyze --in-channels`` etc.
    options:
        Analysis options overriding the plan's for this model (e.g. ``lam_batch``).
    """

    path: str
    name: str | None = None
    in_channels: int | None = None
    layout: str | None = None
    input_range: str | int = "auto"
    output: str | int | None = None
    tolerance: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`glam.importers.load` (without ``trust_model``)."""
        out: dict[str, Any] = {
            "in_channels": self.in_channels,
            "layout": self.layout.upper() if self.layout else None,
            "input_range": self.input_range,
            "output": self.output,
        }
        if self.tolerance is not None:
            out["tolerance"] = float(self.tolerance)
        return out

    @property
    def key(self) -> str:
        """What identifies one imported model (path and overrides), for the worker cache."""
        return json.dumps([self.path, self.load_kwargs()], sort_keys=True, default=str)


@dataclass
class Plan:
    """Models x images x ROIs and the analysis options shared by the tasks.

    Attributes
    ----------
    models:
        The models.
    images:
        Image files and/or directories (directories expand, sorted).
    rois:
        Explicit ROIs ``(top, left)``; empty: the output centre (or ``roi_grid``).
    roi_grid:
        ``(rows, cols)``: that many ROIs spread evenly over each output, corners included.
    options:
        Analysis options (``AnalyzeOptions`` field names).
    trust_model:
        Passed to :func:`glam.importers.load` (``--trust-model``).
    source:
        The plan file's text, or the command line it was built from (recorded).
    """

    models: list[ModelSpec]
    images: list[str]
    rois: list[tuple[int, int]] = field(default_factory=list)
    roi_grid: tuple[int, int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    trust_model: bool = False
    source: str = ""

    def to_json(self) -> str:
        """The plan as deterministic JSON (recorded in the archive's ``batch`` group)."""
        d = asdict(self)
        d.pop("source")
        return json.dumps(d, sort_keys=True, default=str)

    def analyze_options(self, model: ModelSpec) -> AnalyzeOptions:
        """The :class:`AnalyzeOptions` of ``model``'s tasks (ROI set per task)."""
        opts = {**self.options, **model.options}
        if "lam_sigma" in opts:
            opts["lam_sigma"] = float(opts["lam_sigma"])
        # recorded with each run as glam analyze records its --in-channels etc. (resuming)
        opts["import_options"] = {"in_channels": model.in_channels, "layout": model.layout,
                                  "input_range": model.input_range, "output": model.output}
        return AnalyzeOptions(**opts)


@dataclass(frozen=True)
class Task:
    """One (model, image, ROI) of a batch: one run of the archive.

    Attributes
    ----------
    run:
        Run name (``glam analyze``'s default ``<model>__<image>``, plus ``__r<top>_<left>``
        or ``__g<i>_<j>`` when the plan has several ROIs).
    model:
        Index into :attr:`Plan.models`.
    image:
        Image file.
    roi:
        ``(top, left)``, or ``None`` for the output centre.
    grid:
        ``(i, j, rows, cols)`` of a ``roi_grid`` cell (resolved once the output size is known).
    reference:
        The image's HR reference (``*_LR``/``*_HR`` pairs among the images, or
        ``reference_dir``), as ``glam analyze`` pairs them; ``None``: no reference.
    """

    run: str
    model: int
    image: str
    roi: tuple[int, int] | None = None
    grid: tuple[int, int, int, int] | None = None
    reference: str | None = None


def _bad(where: str, key: str, value: Any, want: str) -> UserInputError:
    return UserInputError(f"plan {where}: {key} = {value!r} is not {want}; fix the plan file")


def _check_type(where: str, key: str, value: Any, types: type | tuple[type, ...]) -> Any:
    ts = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in ts:
        raise _bad(where, key, value, " or ".join(t.__name__ for t in ts))
    if not isinstance(value, ts):
        raise _bad(where, key, value, "a " + " or ".join(t.__name__ for t in ts))
    return value


def _roi_pair(where: str, value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise _bad(where, "rois", value, "a list of [TOP, LEFT] pairs of integers >= 0")
    return int(value[0]), int(value[1])


def plan_from_dict(data: dict[str, Any], *, base: Path | None = None, source: str = "") -> Plan:
    """Build and validate a :class:`Plan` from parsed TOML.

    Relative model and image paths are taken relative to ``base`` (the plan file's folder).

    Raises
    ------
    UserInputError
        For unknown keys, wrong types, no models or no images, naming the key and the fix.
    """
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UserInputError(
            f"plan: unknown key(s) {', '.join(unknown)}; known keys are "
            f"{', '.join(sorted(_TOP_KEYS))}"
        )

    def rel(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() or base is None else base / q)

    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise UserInputError(
            "plan: no models; add [[models]] tables with path = \"model.onnx\" (or pass --models)"
        )
    models = []
    for i, m in enumerate(models_raw):
        where = f"models[{i}]"
        if not isinstance(m, dict) or "path" not in m:
            raise UserInputError(f"plan {where}: a model needs path = \"FILE\"; fix the plan file")
        kw: dict[str, Any] = {}
        opts: dict[str, Any] = {}
        for k, v in m.items():
            if k in _MODEL_KEYS:
                kw[k] = _check_type(where, k, v, _MODEL_KEYS[k])
            elif k in _OPTION_TYPES:
                opts[k] = _check_type(where, k, v, _OPTION_TYPES[k])
                if k == "reference_dir":
                    opts[k] = rel(opts[k])
            else:
                raise UserInputError(
                    f"plan {where}: unknown key {k!r}; a model takes "
                    f"{', '.join(sorted(_MODEL_KEYS))} or an analysis option "
                    f"({', '.join(sorted(_OPTION_TYPES))})"
                )
        kw["path"] = rel(kw["path"])
        if "name" in kw and sanitize_name(kw["name"]) != kw["name"]:
            raise _bad(where, "name", kw["name"], "one HDF5 name (no '/', no spaces, no leading '.')")
        models.append(ModelSpec(**kw, options=opts))
    images = data.get("images")
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not images or not all(isinstance(x, str) for x in images):
        raise UserInputError(
            "plan: no images; add images = [\"dir/\", \"img.png\"] (or pass --images)"
        )
    options = {k: _check_type("options", k, data[k], t) for k, t in _OPTION_TYPES.items()
               if k in data}
    if "reference_dir" in options:
        options["reference_dir"] = rel(options["reference_dir"])
    rois = [_roi_pair("options", r) for r in data.get("rois", [])]
    grid = data.get("roi_grid")
    if grid is not None:
        if rois:
            raise UserInputError("plan: give either rois or roi_grid, not both")
        if (
            not isinstance(grid, list)
            or len(grid) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid)
        ):
            raise _bad("options", "roi_grid", grid, "[ROWS, COLS], two integers >= 1")
        grid = (int(grid[0]), int(grid[1]))
    trust = data.get("trust_model", False)
    _check_type("options", "trust_model", trust, bool)
    plan = Plan(models=models, images=[rel(i) for i in images], rois=rois, roi_grid=grid,
                options=options, trust_model=trust, source=source)
    for m in plan.models:
        plan.analyze_options(m).validate()
    return plan


def load_plan(path: str | Path) -> Plan:
    """Read a TOML plan file (see the module docstring for its keys).

    Raises
    ------
    UserInputError
        When the file is missing, is not valid TOML, or the plan is invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"plan {str(p)!r} does not exist; pass a TOML plan file")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            from glam.errors import MissingDependencyError

            raise MissingDependencyError(
                "reading a plan file on Python 3.10 needs tomli; install glam-sr[batch]"
            ) from None
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"plan {str(p)!r} is not valid TOML ({exc}); fix the file") from None
    return plan_from_dict(data, base=p.resolve().parent, source=text)


def parse_roi_list(text: str | None) -> list[tuple[int, int]]:
    """``"T,L;T,L"`` -> ROIs (``--rois``).

    Raises
    ------
    UserInputError
        When an item is not two integers >= 0.
    """
    if not text:
        return []
    out = []
    for item in text.split(";"):
        parts = [p.strip() for p in item.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            t, l_ = int(parts[0]), int(parts[1])
            if t < 0 or l_ < 0:
                raise ValueError
        except ValueError:
            raise UserInputError(
                f"--rois {text!r}: {item!r} is not TOP,LEFT; pass e.g. --rois '40,64;0,0'"
            ) from None
        out.append((t, l_))
    return out


def plan_from_options(
    models: Sequence[str],
    images: Sequence[str],
    *,
    rois: Sequence[tuple[int, int]] = (),
    roi_grid: tuple[int, int] | None = None,
    options: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    trust_model: bool = False,
    source: str = "",
) -> Plan:
    """A plan from ``glam batch --models a.onnx,b.pt --images dir/``: every model with the
    same import overrides.

    Raises
    ------
    UserInputError
        For no models or no images.
    """
    data: dict[str, Any] = {
        "models": [{"path": m, **(model_overrides or {})} for m in models if m],
        "images": [i for i in images if i],
        "rois": [list(r) for r in rois],
        **(options or {}),
        "trust_model": trust_model,
    }
    if roi_grid is not None:
        data["roi_grid"] = list(roi_grid)
    return plan_from_dict(data, source=source)


def grid_roi(cell: tuple[int, int, int, int], out_hw: tuple[int, int], window: int) -> tuple[int, int]:
    """The ``(top, left)`` of ``roi_grid`` cell ``(i, j, rows, cols)`` on an output of size
    ``out_hw``: ``rows x cols`` windows spread evenly, the corner cells at the corners."""
    i, j, rows, cols = cell
    H, W = out_hw

    def at(k: int, n: int, size: int) -> int:
        span = max(size - window, 0)
        return 0 if n == 1 and span == 0 else (span // 2 if n == 1 else round(span * k / (n - 1)))

    return at(i, rows, H), at(j, cols, W)


def expand_tasks(plan: Plan) -> list[Task]:
    """One :class:`Task` per (model, image, ROI), in plan order (models outermost).

    Raises
    ------
    UserInputError
        For missing images, or two tasks with the same run name (two models with the same
        file stem: give one a ``name``).
    """
    tasks: list[Task] = []
    pairings: dict[tuple[bool, str | None], tuple[list[Path], list[Path | None]]] = {}
    for mi, m in enumerate(plan.models):
        prefix = sanitize_name(m.name or Path(m.path).stem)
        opts = plan.analyze_options(m)
        how = (bool(opts.hr), None if opts.reference_dir is None else str(opts.reference_dir))
        if how not in pairings:  # the same pairing as glam analyze of these images
            paired = pair_images(plan.images, opts)
            pairings[how] = (paired.files, paired.references)
        for f, ref in zip(*pairings[how], strict=True):
            base = f"{prefix}__{sanitize_name(Path(f).stem)}"
            kw: dict[str, Any] = {"reference": None if ref is None else str(ref)}
            if plan.roi_grid is not None:
                rows, cols = plan.roi_grid
                for i in range(rows):
                    for j in range(cols):
                        name = base if rows * cols == 1 else f"{base}__g{i}_{j}"
                        tasks.append(Task(name, mi, str(f), grid=(i, j, rows, cols), **kw))
            elif len(plan.rois) > 1:
                for r in plan.rois:
                    tasks.append(Task(f"{base}__r{r[0]}_{r[1]}", mi, str(f), roi=r, **kw))
            else:
                tasks.append(Task(base, mi, str(f), roi=plan.rois[0] if plan.rois else None,
                                  **kw))
    seen: dict[str, Task] = {}
    for t in tasks:
        if t.run in seen:
            a, b = plan.models[seen[t.run].model].path, plan.models[t.model].path
            raise UserInputError(
                f"run name {t.run!r} would be written twice (models {a!r} and {b!r}, or two "
                "images with the same stem); give the models distinct names (name = \"...\" "
                "in the plan)"
            )
        seen[t.run] = t
    if not tasks:
        raise UserInputError("the plan has no tasks; list at least one model and one image")
    return tasks
