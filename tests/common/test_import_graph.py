"""The import graph of the services, read from the source with `ast` (every import, also those
inside functions, which is where a cycle hides): no cycle inside a distribution, and no
service importing another (they talk over gRPC; oddity.common and the stubs are shared)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.servers import repo_root

# The distribution under services/<folder> and the top-level packages of `oddity` it holds.
DISTRIBUTIONS = {
    "common": ("common", "v1", "oip"),
    "detector": ("detector",),
    "trainer": ("trainer",),
    "embedder": ("embedder",),
    "client": ("client", "cli"),
}
SHARED = ("common", "v1", "oip")


def _modules(folder: str) -> dict[str, Path]:
    root = repo_root() / "services" / folder
    return {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
        for path in sorted((root / "oddity").rglob("*.py"))
    }


ALL_MODULES: dict[str, Path] = {name: path for folder in DISTRIBUTIONS for name, path in _modules(folder).items()}


def _imports(module: str, path: Path) -> set[str]:
    """The oddity modules `module` imports: `from a.b import c` is a.b.c when that is a
    module, else the package a.b."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in ALL_MODULES else base)
    return {name for name in found if name.startswith("oddity.") and name in ALL_MODULES}


GRAPH = {module: _imports(module, path) for module, path in ALL_MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
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
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_the_imports_that_matter():
    # Guards the reader itself: a parent package, a module imported by name and a relative-free
    # function-level import are all edges.
    assert "oddity.common.bundle.contract" in GRAPH["oddity.common.bundle"]
    assert "oddity.common.bundle.errors" in GRAPH["oddity.common.bundle.contract"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_no_import_cycle_inside_a_distribution(folder):
    modules = set(_modules(folder))
    cycles = _cycles({m: GRAPH[m] & modules for m in modules})
    assert cycles == [], f"import cycles in services/{folder}: {cycles}"


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_no_service_imports_another(folder):
    own = {f"oddity.{package}" for package in DISTRIBUTIONS[folder] + SHARED}
    foreign = sorted(
        f"{module} -> {target}"
        for module in _modules(folder)
        for target in GRAPH[module]
        if ".".join(target.split(".")[:2]) not in own
    )
    assert foreign == [], f"services/{folder} imports other services: {foreign}"


def test_common_imports_no_service():
    foreign = sorted(
        f"{module} -> {target}"
        for module in _modules("common")
        for target in GRAPH[module]
        if target.split(".")[1] not in SHARED
    )
    assert foreign == []
