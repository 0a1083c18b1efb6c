"""The layout of docs/architecture.md holds: no import cycles between glam's modules, each
room imports only what its ``__init__`` says it may, and no module is over 600 lines
without a reason at its top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: repository folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"analyzer": "glam", "importers": "glam.importers"}
LONG = 600
REASON = "One module"  # how a long module's docstring starts its reason


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGES[parts[0]], *parts[1:]])


def _modules() -> dict[str, Path]:
    out = {}
    for folder in PACKAGES:
        for p in (ROOT / folder).rglob("*.py"):
            out[_module_name(p)] = p
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """glam modules imported anywhere in ``path`` (module level, functions, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            # ``from pkg import module`` imports the module, not the package's other names
            names = [s for s in subs if s in known] or [node.module]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


MODULES = _modules()
GRAPH = {m: _imports(p, set(MODULES)) - {m} for m, p in MODULES.items()}


def _package_of(m: str) -> str:
    return m if MODULES[m].name == "__init__.py" else m.rpartition(".")[0]


def test_no_import_cycles_between_modules() -> None:
    """Package ``__init__`` re-exports are followed too, except a package's own children."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if MODULES[m].name == "__init__.py" and n.startswith(m + "."):
                continue  # a package importing its own modules is no cycle
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


ROUTES = ("onnx", "torchscript", "export", "checkpoint")
#: the importers' shared modules (tapping, parity, conventions, safety, ...): every module of
#: importers/ that is not a route room
SHARED_IMPORTERS = tuple(
    m for m in MODULES
    if m.startswith("glam.importers.") and m.split(".")[2] not in ROUTES
)

# room -> the glam modules/packages it may import (prefixes), besides itself
ALLOWED = {
    "glam.engine": ("glam.errors", "glam.importers"),
    "glam.archive": ("glam.errors", "glam.images", "glam.engine", "glam.api",
                         "glam", "glam.importers"),
    "glam.report": ("glam.errors", "glam.archive"),
    "glam.gate": ("glam.errors", "glam.engine", "glam.archive", "glam.api",
                      "glam.runs", "glam.images", "glam.progress", "glam.importers",
                      "glam.memory", "glam.resume"),
    "glam.batch": ("glam.errors", "glam.engine", "glam.archive", "glam.api",
                       "glam.runs", "glam.paths", "glam.importers"),
    "glam.sanity_checks": ("glam.errors", "glam.engine", "glam.api", "glam.archive",
                        "glam.report", "glam.importers", "glam.memory"),
    "glam.importers": ("glam.errors",),
    # the routes: each reads its format and hands a RawGraph to the shared pipeline; the
    # checkpoint route traces spandrel's module through the export and TorchScript routes
    "glam.importers.onnx": ("glam.errors", *SHARED_IMPORTERS),
    # TorchScript's fallback route goes through torch.export (TS2EPConverter)
    "glam.importers.torchscript": ("glam.errors", "glam.importers.export", *SHARED_IMPORTERS),
    "glam.importers.export": ("glam.errors", *SHARED_IMPORTERS),
    "glam.importers.checkpoint": ("glam.errors", "glam.importers.export",
                                  "glam.importers.torchscript", *SHARED_IMPORTERS),
}


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_rooms_import_only_what_they_may(room: str) -> None:
    bad = []
    for m, deps in GRAPH.items():
        if not (m == room or m.startswith(room + ".")):
            continue
        for d in deps:
            if d == room or d.startswith(room + "."):
                continue
            if d == "glam" and room != "glam.archive":
                bad.append(f"{m} -> {d}")
                continue
            if not any(d == a or d.startswith(a + ".") for a in ALLOWED[room]):
                bad.append(f"{m} -> {d}")
    assert not bad, f"{room} may import only {ALLOWED[room]}: " + ", ".join(sorted(bad))


def test_shared_importers_modules_do_not_reach_into_a_route() -> None:
    """Only the dispatcher (``loader``) and format detection (``detect``) know the routes;
    tapping, parity, conventions and safety serve every route and import none."""
    bad = [
        f"{m} -> {d}"
        for m in SHARED_IMPORTERS
        if m not in ("glam.importers.loader", "glam.importers.detect", "glam.importers")
        for d in GRAPH[m]
        if d.startswith("glam.importers.") and d.split(".")[2] in ROUTES
    ]
    assert not bad, "shared importers modules import a route: " + ", ".join(sorted(bad))


def test_each_room_says_what_it_holds() -> None:
    for pkg in ("glam.engine", "glam.archive", "glam.report", "glam.gate",
                "glam.batch", "glam.sanity_checks"):
        doc = ast.get_docstring(ast.parse(MODULES[pkg].read_text())) or ""
        assert "room" in doc and "mport" in doc, f"{pkg}/__init__.py must say what it holds and may import"


def test_long_modules_say_why() -> None:
    long = []
    for m, p in MODULES.items():
        n = len(p.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if n > LONG and REASON not in doc:
            long.append(f"{m} ({n} lines)")
    assert not long, "modules over 600 lines without a reason at their top: " + ", ".join(long)
