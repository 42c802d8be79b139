"""The package's shape holds: no import cycle among aigw's modules (type-hint imports
included, so a lower layer can never lean on a higher one), and no module over ~700 lines unless
its docstring says why it is one concept (`Size:`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aigw"
MAX_LINES = 700


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every aigw module `name` imports anywhere (top level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from aigw import sse` imports the module aigw.sse
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def _graph() -> dict[str, set[str]]:
    graph = {name: set(_imports(name, path)) for name, path in MODULES.items()}
    # A package's own __init__ importing its children is not a cycle with them.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".") or name == "aigw"}
        graph[name].discard("aigw")
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_aigw_modules() -> None:
    graph = _graph()
    assert graph.get("aigw.proxy"), "the import graph was not read"
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_lower_layers_never_import_higher_ones() -> None:
    """Storage never imports policy or the pipeline; the pipeline never imports the server."""
    graph = _graph()

    def reaches(start: str, forbidden: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node.startswith(forbidden):
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    for store in [m for m in MODULES if m.startswith("aigw.state")]:
        for higher in ("aigw.limits", "aigw.proxy", "aigw.server", "aigw.call"):
            assert not reaches(store, higher), f"{store} reaches {higher}"
    for pipeline in ("aigw.proxy", "aigw.forward", "aigw.delivery", "aigw.call"):
        assert not reaches(pipeline, "aigw.server"), pipeline
        assert not reaches(pipeline, "aigw.cli"), pipeline


def test_modules_over_700_lines_say_why_they_are_one_concept() -> None:
    long = []
    for name, path in MODULES.items():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if "Size:" not in doc:
                long.append(f"{name} ({lines} lines)")
    assert long == [], "over ~700 lines without a `Size:` reason in the docstring"
