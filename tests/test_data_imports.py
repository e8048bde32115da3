"""The data package reads one way: its imports (module-level or inside functions) form no circle, and
no module of it calls another's private names. Read from the source with ``ast``, so an import that
only runs when an error is raised counts as much as one at the top of a file; imports under
``if TYPE_CHECKING:`` (type hints only, never run) are left out."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mlpkit"
BY_NAME = re.compile(r"^[A-Za-z_]\w*(\.\w+)+:\w+$")  # "mlpkit.data.table:load_csv"


def module_name(file: Path, root: Path) -> str:
    """``mlpkit/data/table.py`` -> ``mlpkit.data.table``; a package's ``__init__.py`` -> the package."""
    parts = list(file.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST) -> list[tuple[int, str, list[str], int]]:
    """(line, module, names, level) of every import at any depth, outside ``if TYPE_CHECKING:`` blocks,
    and of every "package.module:function" string (a registry entry importlib loads by name, as
    mlpkit.data.dataset.SOURCES does)."""
    found: list[tuple[int, str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:  # only the body is for the type checker
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, [], 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", [alias.name for alias in node.names], node.level))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and BY_NAME.match(node.value):
            found.append((node.lineno, node.value.partition(":")[0], [], 0))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {module of ``package`` it imports: the first line that does}, for every .py file
    under ``root / package``. ``from p import m`` counts as importing the submodule ``p.m`` when there
    is one, else the package ``p``; a package's own ``__init__`` is not counted for its submodules."""
    files = sorted((root / package).rglob("*.py"))
    modules = {module_name(file, root) for file in files}
    graph: dict[str, dict[str, int]] = {}
    for file in files:
        name = module_name(file, root)
        here = name if file.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for line, module, names, level in imported_names(ast.parse(file.read_text(), str(file))):
            if level:  # relative: from . import x, from ..errors import y
                base = here.split(".")[:len(here.split(".")) - (level - 1)]
                module = ".".join(base + ([module] if module else []))
            targets = [f"{module}.{alias}" if f"{module}.{alias}" in modules else module for alias in names] or [module]
            for target in targets:
                while target and target not in modules:  # import mlpkit.data.table.x -> mlpkit.data.table
                    target = target.rpartition(".")[0]
                if target and target != name and target in modules:
                    edges.setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One circle (a -> b -> ... -> a) per knot of modules (see ``tangled``)."""
    return [circle_in(graph, set(group)) for group in tangled(graph)]


def tangled(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(groups)


def circle_in(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, through the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, {})):
                if target == start:
                    return paths[node] + [start]
                if target in group and target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    return [start]


def show(graph: dict[str, dict[str, int]], circle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(circle, circle[1:])) + f" -> {circle[-1]}"


def report(graph: dict[str, dict[str, int]], circles: list[list[str]]) -> str:
    """Each circle, and every module caught in the same knot (modules that import each other by some path)."""
    knots = {frozenset(group) for group in tangled(graph)}
    return "\n".join(f"{show(graph, circle)}\n  knot: {', '.join(sorted(next(k for k in knots if circle[0] in k)))}"
                     for circle in circles)


def test_the_data_package_imports_one_way():
    """Within mlpkit/data, every import points one way, function-level ones included."""
    graph = import_graph(ROOT, "mlpkit")
    inside = {name: {target: line for target, line in edges.items() if target.startswith("mlpkit.data")}
              for name, edges in graph.items() if name.startswith("mlpkit.data")}
    assert "mlpkit.data.formats" in inside and inside["mlpkit.data.table"]  # the walk found the package
    found = cycles(inside)
    assert not found, "import circles in mlpkit/data:\n" + report(inside, found)


def test_no_import_circle_of_the_whole_package_runs_through_the_data_package():
    """No circle through mlpkit/data by way of other modules (data -> cache -> data) either."""
    graph = import_graph(ROOT, "mlpkit")
    found = [c for c in cycles(graph) if any(name.startswith("mlpkit.data") for name in c)]
    assert not found, "import circles through mlpkit/data:\n" + report(graph, found)


def test_the_whole_package_imports_one_way():
    """No import circle anywhere in mlpkit (the trainer, its callbacks and the checkpointer included)."""
    graph = import_graph(ROOT, "mlpkit")
    found = cycles(graph)
    assert not found, "import circles in mlpkit:\n" + report(graph, found)


def test_the_check_finds_a_circle_made_by_an_import_inside_a_function(tmp_path):
    """The checks above can fail: a circle closed by a function-level import is found and printed; a
    TYPE_CHECKING import makes none."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import helper\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                                  "def helper():\n    from pkg.c import x\n    return x\n")
    (package / "c.py").write_text("def x():\n    from . import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.c": 5}
    assert graph["pkg.c"] == {"pkg.a": 2}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert show(graph, cycles(graph)[0]) == "pkg.a (line 1) -> pkg.b (line 5) -> pkg.c (line 2) -> pkg.a"
    (package / "c.py").write_text("def x():\n    pass\n")
    assert cycles(import_graph(tmp_path, "pkg")) == []
    (package / "c.py").write_text('SOURCES = {"a": "pkg.a:load"}\n')  # loaded by name: a circle too
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def private_calls(file: Path, root: Path = ROOT) -> list[str]:
    """``obj._name`` uses where ``obj`` is not ``self`` or ``cls`` (dunders aside), and ``from m import
    _name``: another object's or module's private names, as ``file:line: text``."""
    tree = ast.parse(file.read_text(), str(file))
    return [f"{file.relative_to(root)}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if reaches_in(node)]


def reaches_in(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return any(alias.name.startswith("_") for alias in node.names)
    return (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")))


def test_no_data_module_reaches_into_another_objects_private_names():
    found = [use for file in sorted((PACKAGE / "data").glob("*.py")) for use in private_calls(file)]
    assert not found, "private names used from outside their class:\n" + "\n".join(found)


def test_the_private_name_check_can_fail(tmp_path):
    (tmp_path / "m.py").write_text("from __future__ import annotations\nfrom columns import _encode\n"
                                   "def f(table_file):\n    return table_file._source(), self._own\n")
    assert sorted(private_calls(tmp_path / "m.py", tmp_path)) == ["m.py:2: from columns import _encode",
                                                                  "m.py:4: table_file._source"]
