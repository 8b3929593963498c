"""The `swapwatch` package has no import cycle between its own modules.

The graph is built statically from the source with `ast`, so no optional dependency has to be installed
and no module is executed. Every import counts, wherever it is written:

- imports inside functions still run, and a cycle through them only fails later, at the first call;
- imports under `if TYPE_CHECKING:` never run, but a cycle through them is a cycle in the design all the
  same: the two modules cannot be understood, tested or moved one without the other, and the first
  runtime use of the annotation (pydantic, `typing.get_type_hints`) turns it into a real one.

An import of `a.b.c` records an edge to `a.b.c` only, not to the packages `a` and `a.b` that Python also
initialises on the way: every package `__init__` that re-exports its submodules would otherwise be in a
cycle with each of them, which is harmless (the package is already initialising when the submodule runs).
`from a.b import c` points at the submodule `a.b.c` when there is one, else at the package `a.b`.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = "swapwatch"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the package folder."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _absolute(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str:
    """The module a `from ... import` names, with relative levels resolved against `importer`."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    # Level 1 is the importer's own package: the module itself for an __init__, its parent otherwise.
    drop = node.level - 1 if _is_package(importer, modules) else node.level
    base = base[: len(base) - drop] if drop else base
    return ".".join([*base, node.module] if node.module else base)


def _nearest_module(name: str, modules: dict[str, Path]) -> str | None:
    """`name` if it is a swapwatch module, else its closest enclosing swapwatch module (None outside)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(importer: str, modules: dict[str, Path]) -> dict[str, int]:
    """swapwatch modules that `importer` imports anywhere in its source -> line of the first such import."""
    tree = ast.parse(modules[importer].read_text(encoding="utf-8"), filename=str(modules[importer]))
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        target = _nearest_module(name, modules)
        if target is not None and target != importer:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, importer, modules)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node.lineno)
    return found


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, dict[str, int]]:
    modules = module_files() if modules is None else modules
    return {name: imports_of(name, modules) for name in modules}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a path that returns to its first module) per strongly connected component of 2+ modules.

    Tangled modules form one component however many cycles run through them; one shortest cycle each is
    enough to point at the import to move, and breaking it shows the next one on the following run.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    # Tarjan's algorithm, iterative: the graph is deep enough that recursion is not worth the risk.
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_cycle_in(component, graph) for component in sorted(components)]


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (breadth-first)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    """`a (line 3) -> b (line 7) -> a`: each module with the line of its import of the next one."""
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def test_swapwatch_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 200, f"no package to check at {ROOT}?"
    cycles = find_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) in swapwatch:\n" + "\n".join(
        f"  {describe(cycle, graph)}" for cycle in cycles
    )


# --- the checker itself ------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(root / "pkg", "pkg")


def test_imports_resolve_relative_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    modules = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import thing\n",
        "pkg/sub/__init__.py": "from .a import thing\n",
        "pkg/sub/a.py": (
            "from typing import TYPE_CHECKING\n"
            "import os\n"
            "from . import b\n"
            "from ..top import x\n"
            "if TYPE_CHECKING:\n    from pkg.sub.c import C\n"
            "def f():\n    import pkg.sub.d.missing_attr\n"
        ),
        "pkg/sub/b.py": "",
        "pkg/sub/c.py": "",
        "pkg/sub/d.py": "",
        "pkg/top.py": "",
    })
    assert set(imports_of("pkg.sub.a", modules)) == {"pkg.sub.b", "pkg.top", "pkg.sub.c", "pkg.sub.d"}
    assert set(imports_of("pkg.sub", modules)) == {"pkg.sub.a"}
    assert set(imports_of("pkg", modules)) == {"pkg.sub"}


def test_find_cycles_reports_each_cycle_once(tmp_path: Path) -> None:
    modules = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def later():\n    from pkg.a import x\n",
        "pkg/c.py": "from pkg.a import x\n",
    })
    graph = import_graph(modules)
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert describe(["pkg.a", "pkg.b", "pkg.a"], graph) == "pkg.a (line 1) -> pkg.b (line 2) -> pkg.a"
