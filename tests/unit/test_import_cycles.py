"""No import cycles in the package: every module can be understood (and
imported) after the modules it depends on, the inventory model before its
loader, the area commands without the top-level command."""

from __future__ import annotations

import ast
from pathlib import Path

from moodleops import REPO_ROOT

# The package as pyproject.toml lays it out: the areas stay at the top of the repository.
PACKAGE_DIRS = {"moodleops": "moodleops", "moodleops.exporters": "exporters",
                "moodleops.capacity": "capacity", "moodleops.loadtests": "loadtests"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, directory in PACKAGE_DIRS.items():
        base = REPO_ROOT / directory
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if name.split(".")[1:2] and name.split(".")[1] in {"exporters", "capacity", "loadtests"} \
                    and package == "moodleops":
                continue
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package imported at module level (lazy imports inside
    functions are how a cycle is avoided on purpose, so they do not count)."""
    out: set[str] = set()
    own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for imported in names:
            if imported in modules:
                out.add(imported)
            # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless the
            # importer is itself inside them (then they are already running).
            parts = imported.split(".")
            out.update(pkg for pkg in (".".join(parts[:i]) for i in range(1, len(parts)))
                       if pkg in modules and pkg not in own_packages)
    return out


def test_the_package_has_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) - {name} for name, path in modules.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    # The graph is the real one (a parser that saw nothing would find no cycle).
    assert "moodleops.inventory.model" in graph["moodleops.inventory.loader"]


def test_area_commands_do_not_import_the_top_level_command() -> None:
    # moodleops.cli imports every area (AREAS, by name): an area importing it back would be a cycle.
    from moodleops.cli import AREAS
    modules = _modules()
    offenders = [area for area in AREAS.values() if "moodleops.cli" in _imports(area, modules[area], modules)]
    assert offenders == []
