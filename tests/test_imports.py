"""The package's import graph: no cycles, and the settings (``discopop.config``) a leaf.

Every import statement counts, at module level or inside a function, under ``TYPE_CHECKING`` or not: a
cycle hidden in a function still ties two modules together. ``from a.b import c`` is an edge to the
module ``a.b.c`` when there is one, else to ``a.b``; an edge to a package means its ``__init__``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest
import tomllib
from source_trees import parsed

PACKAGE = Path(__file__).resolve().parents[1] / "discopop"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file, for every module and package ``__init__`` under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_names(name: str, path: Path) -> list[str]:
    """Every dotted name ``name``'s module imports, anywhere in its file (relative imports resolved)."""
    tree = parsed(path)  # the graph is built a dozen times (copies with one file changed): each text parsed once
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return found


def import_graph(package: Path = PACKAGE) -> nx.DiGraph:
    """Module -> the package modules it imports (the longest known prefix of each imported name)."""
    known = modules(package)
    graph = nx.DiGraph()
    for name, path in known.items():
        graph.add_node(name)
        for target in imported_names(name, path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph.add_edge(name, target)
    return graph


def unexplained_lazy_imports(path: Path) -> list[int]:
    """Lines of the in-function import blocks of ``path`` with no ``# lazy: <reason>`` on their first line or above.

    A block is a run of consecutive import statements; one comment explains the block.
    """
    source = path.read_text()
    lines = source.splitlines()
    missing: list[int] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        bodies = [getattr(node, f) for f in ("body", "orelse", "finalbody") if isinstance(getattr(node, f, None), list)]
        bodies += [handler.body for handler in getattr(node, "handlers", [])]
        for statements in bodies:
            previous_is_import = False
            for statement in statements:
                is_import = isinstance(statement, ast.Import | ast.ImportFrom)
                if is_import and in_function and not previous_is_import:
                    first = statement.lineno - 1
                    if "# lazy:" not in lines[first] and not lines[first - 1].strip().startswith("# lazy:"):
                        missing.append(statement.lineno)
                previous_is_import = is_import
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(parsed(path), False)
    return missing


def test_every_import_inside_a_function_says_why() -> None:
    """An import is lazy only for a reason (an optional or heavy dependency, a sandbox's import order)."""
    missing = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in modules().values()
               for line in unexplained_lazy_imports(path)]
    assert not missing, "imports inside functions without a '# lazy: <reason>' comment: " + ", ".join(missing)


def test_an_unexplained_lazy_import_is_reported(tmp_path: Path) -> None:
    planted = tmp_path / "m.py"
    planted.write_text("def f():\n    import json\n    import os\n\n\ndef g():\n"
                       "    import re  # lazy: a reason\n    import sys\n")
    assert unexplained_lazy_imports(planted) == [2]


def test_the_graph_sees_imports_inside_functions_and_package_inits() -> None:
    graph = import_graph()
    assert graph.has_edge("discopop.config.compose", "discopop.config")  # package __init__ as a target
    assert graph.has_edge("discopop.proposers", "discopop.proposers.llm.proposer")  # inside a function of an __init__
    assert graph.number_of_nodes() == len(modules()) > 50


def test_there_is_no_import_cycle() -> None:
    graph = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    shown = [" -> ".join(a for a, _ in nx.find_cycle(graph.subgraph(c))) for c in cycles]
    assert not cycles, "import cycle(s): " + "; ".join(f"{s} -> (back to the start)" for s in shown)


def in_config(name: str) -> bool:
    return name == "discopop.config" or name.startswith("discopop.config.")


def test_the_settings_import_nothing_else_of_the_package() -> None:
    graph = import_graph()
    outside = sorted((a, b) for a, b in graph.edges if in_config(a) and not in_config(b))
    assert not outside, "discopop.config must be a leaf; it imports " + ", ".join(f"{b} (in {a})" for a, b in outside)


def copy_package(tmp_path: Path) -> Path:
    """The package's Python files copied under ``tmp_path`` (to plant an import in)."""
    copy = tmp_path / "discopop"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    return copy


@pytest.mark.parametrize("source, expected", [("from discopop.config import plain\n", "discopop.config"),
                                              ("from . import base\n", "discopop.tasks.base"),
                                              ("def f():\n    import discopop.tasks.hub\n", "discopop.tasks.hub")])
def test_an_added_import_is_an_edge(tmp_path: Path, source: str, expected: str) -> None:
    """What the checks above rely on: a planted import, at top level or in a function, shows as an edge."""
    copy = copy_package(tmp_path)
    planted = copy / "tasks" / "planted.py"
    planted.write_text(source)
    assert import_graph(copy).has_edge("discopop.tasks.planted", expected)


def test_a_planted_cycle_is_found(tmp_path: Path) -> None:
    """The cycle check fails on a cycle: config importing a component that imports config."""
    copy = copy_package(tmp_path)
    (copy / "config" / "task.py").write_text((PACKAGE / "config" / "task.py").read_text()
                                             + "\n\ndef _late():\n    from discopop.tasks.hub import load_hub_task\n")
    graph = import_graph(copy)
    cycles = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert any({"discopop.config.task", "discopop.tasks.hub"} <= c for c in cycles)
    assert graph.has_edge("discopop.config.task", "discopop.tasks.hub") and not in_config("discopop.tasks.hub")


def test_no_package_exports_a_name_that_is_also_one_of_its_modules() -> None:
    """``discopop.report.leaderboard`` was a function of the package and a module in it: whichever was imported last
    won, so a test passed alone and failed after another imported the module. One name, one thing."""
    import importlib
    import pkgutil

    import discopop

    clashes = []
    for info in pkgutil.walk_packages(discopop.__path__, "discopop."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        exported = {name for name, value in vars(package).items()
                    if not name.startswith("_") and callable(value) and not isinstance(value, type(discopop))}
        clashes += [f"{info.name}.{name}" for name in sorted(exported & modules)]
    assert not clashes, f"a package exports a function or class named like one of its modules: {clashes}"


IMPORT_NAMES = {"hydra-core": "hydra", "pytest-xdist": "xdist"}  # distributions imported under another name


def dependency_names(pyproject: Path = PACKAGE.parent / "pyproject.toml") -> set[str]:
    """The import names of every dependency ``pyproject.toml`` declares (required and optional)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = [*project["dependencies"], *(d for group in project["optional-dependencies"].values() for d in group)]
    return {IMPORT_NAMES.get(name, name).replace("-", "_") for name in (re.split(r"[<>=!~\[; ]", s)[0] for s in specs)}


def named_after_dependencies(package: Path, names: set[str]) -> list[str]:
    """Modules and packages under ``package`` whose own name is a dependency's (``discopop/trl.py`` was one)."""
    return sorted(str(path.relative_to(package.parent)) for path in package.rglob("*.py")
                  if (path.parent.name if path.name == "__init__.py" else path.stem) in names)


def test_no_module_is_named_after_a_dependency(tmp_path: Path) -> None:
    """A module named like a library reads as that library in every import line and traceback (issue 27 item 1)."""
    names = dependency_names()
    assert {"trl", "torch", "openai", "ray", "hydra"} <= names  # the parser sees the list it guards
    assert named_after_dependencies(PACKAGE, names) == []
    planted = tmp_path / "discopop"
    (planted / "proposers").mkdir(parents=True)
    (planted / "trl.py").write_text("")
    (planted / "proposers" / "openai.py").write_text("")
    assert named_after_dependencies(planted, names) == ["discopop/proposers/openai.py", "discopop/trl.py"]


# The archive stores (issue 27 item 4): it imports nothing above the loss contract, and nobody else writes SQL.
ARCHIVE = "discopop.archive"
STORAGE_IMPORTS = ("discopop.contract", "discopop.config", "discopop.status")
# Modules that own an SQLite file of their own (the run archive, the shared result cache, the judge's cache).
STORAGE_MODULES = {"discopop/archive.py", "discopop/fitness/result_store.py", "discopop/fitness/judge.py"}
SQL = re.compile(r"\b(SELECT|INSERT INTO|DELETE FROM|UPDATE \w+ SET|WHERE|PRAGMA)\b"
                 r"|\b\w+ (=|!=|<>|<=|>=|<|>) (\?|'[^']*')")  # a query, or a fragment such as "status = ?"
PRIVATE_STORAGE = {"conn", "_conn", "_select"}  # an archive's connection and its raw query (another object's own
# ``self._select`` is its business)


def sql_offences(path: Path, text_too: bool = True) -> list[str]:
    """Where ``path`` talks SQL to storage it does not own: ``x.rows(<anything>)`` (``rows`` takes no query),
    ``x.conn`` / ``x._conn`` / ``x._select``, and (``text_too``) a string constant that is SQL or a fragment."""
    found = []
    for node in ast.walk(parsed(path)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "rows"
                and (node.args or node.keywords)):
            found.append(f"{path.name}:{node.lineno}: .rows() given a query")
        elif (isinstance(node, ast.Attribute) and node.attr in PRIVATE_STORAGE
              and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif text_too and isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            found.append(f"{path.name}:{node.lineno}: SQL text {node.value[:40]!r}")
    return found


def test_the_archive_imports_only_storage_level_modules() -> None:
    """No search, proposer, behaviour or report concept in the storage layer: those read rows, rows do not know them."""
    above = sorted(b for b in import_graph().successors(ARCHIVE)
                   if not any(b == s or b.startswith(s + ".") for s in STORAGE_IMPORTS))
    assert not above, f"{ARCHIVE} imports {above}; only {STORAGE_IMPORTS} are allowed"


def test_no_caller_writes_sql() -> None:
    """Callers ask the archive by named methods; SQL lives in the modules that own a database. Benchmarks count
    for the archive's methods (some read the documented schema straight from the file with ``sqlite3``, as other
    tools may)."""
    root = PACKAGE.parent
    offences = [o for p in sorted(PACKAGE.rglob("*.py")) if str(p.relative_to(root)) not in STORAGE_MODULES
                for o in sql_offences(p)]
    offences += [o for p in sorted((root / "benchmarks").glob("*.py")) for o in sql_offences(p, text_too=False)]
    assert not offences, "SQL outside the storage modules: " + "; ".join(offences)


@pytest.mark.parametrize("source, expected", [
    ("rows = archive.rows(\"proposer = 'reference'\")\n", 2),  # the query call and its text
    ("rows = archive.rows(query)\n", 1),
    ("rows = archive.rows(where='x')\n", 1),
    ("archive.conn.execute(statement)\n", 1),
    ("n = archive._select(where, ())\n", 1),
    ("q = 'SELECT name FROM candidates'\n", 1),
    ("fragment = 'status = ? AND generation <= ?'\n", 1),
    ("fragment = \"proposer != 'reference'\"\n", 1)])
def test_the_sql_check_sees_a_caller_writing_sql(tmp_path: Path, source: str, expected: int) -> None:
    planted = tmp_path / "caller.py"
    planted.write_text(source)
    assert len(sql_offences(planted)) == expected


def test_the_sql_check_passes_named_queries_and_prose(tmp_path: Path) -> None:
    planted = tmp_path / "caller.py"
    planted.write_text("rows = archive.rows()\nscored = archive.scored_rows()\n"
                       "refs = archive.rows_by_proposer('reference', status='scored')\n"
                       "'''Select the best loss where the bound is highest (a = b in prose).'''\n")
    assert sql_offences(planted) == []


def test_a_planted_archive_import_of_the_search_is_found(tmp_path: Path) -> None:
    copy = copy_package(tmp_path)
    (copy / "archive.py").write_text((PACKAGE / "archive.py").read_text() + "\nfrom discopop.search import seed_race\n")
    assert import_graph(copy).has_edge(ARCHIVE, "discopop.search.seed_race")
