"""The package's import structure, read statically (ast): no import cycles, and no GUI imports at module level
outside the napari shells.

Every ``import`` / ``from ... import`` naming a napari_mine module counts, wherever it stands (module level,
function body, ``if TYPE_CHECKING:``): an import hidden in a function still ties the two modules together.
Importing ``a.b.c`` also runs ``a/b/__init__.py``, but that implicit edge is not counted: a package's
``__init__`` re-exporting its submodules would otherwise make a cycle with every submodule that imports a
sibling by its full name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "napari_mine"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# The only package allowed to import Qt or napari when it is imported. The other napari shells (_reader, viewer,
# _sample_data) import napari and the widgets inside their functions, so they are held to the rule too.
GUI_SHELLS = ("napari_mine._widgets",)
GUI_ROOTS = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _absolute(node: ast.ImportFrom, module: str, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module, modules):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(tree: ast.AST, module: str, modules: dict[str, Path]) -> set[str]:
    """The napari_mine modules `tree` imports (any depth): the named module, and for ``from P import m``
    the submodule ``P.m`` where there is one."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                while name and name not in modules:  # `import a.b.attr` is not a thing, but be lenient
                    name = name.rpartition(".")[0]
                if name.startswith(PACKAGE):
                    found.add(name)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, modules)
            if not source.startswith(PACKAGE):
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.add(f"{source}.{alias.name}")
                elif source in modules:
                    found.add(source)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(ast.parse(path.read_text(encoding="utf-8"), str(path)), name, modules)
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as ``[a, b, ..., a]``, or None when it is acyclic (iterative depth-first search)."""
    state = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return path[path.index(step):] + [step]
            elif not state.get(step):
                state[step] = 1
                path.append(step)
                stack.append(iter(sorted(graph.get(step, ()))))
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert len(graph) > 20
    assert "napari_mine.errors" in graph["napari_mine.models.backbone"]  # `from ..errors import`
    assert all(target in graph for targets in graph.values() for target in targets)


def test_the_package_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _module_level_imports(tree: ast.Module):
    """Import nodes run when the module is imported: outside function bodies and ``if TYPE_CHECKING:``."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def test_only_the_widgets_import_qt_or_napari_at_module_level():
    offenders = []
    for name, path in _modules().items():
        if any(name == shell or name.startswith(shell + ".") for shell in GUI_SHELLS):
            continue
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
            offenders += [f"{name}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in GUI_ROOTS or any(n == s or n.startswith(s + ".") for s in GUI_SHELLS)]
    assert not offenders, "GUI imports at module level outside napari_mine._widgets: " + "; ".join(offenders)


def test_the_method_core_imports_nothing_from_the_synthetic_world():
    """The synthetic world's phrasing reaches describe through its vocabulary (``Vocabulary.phrasing``)."""
    graph = import_graph()
    core = ("napari_mine.attribution", "napari_mine.decompose", "napari_mine.describe", "napari_mine.encoding")
    assert {module: sorted(t for t in graph[module] if t.startswith("napari_mine.synthetic"))
            for module in core} == {module: [] for module in core}
