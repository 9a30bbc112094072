"""Code-health rules the project keeps: one status vocabulary, one ranking, no borrowed private names."""

from __future__ import annotations

import ast
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from source_trees import parsed

from discopop.archive import Archive, Row
from discopop.proposers.base import Candidate
from discopop.search.history import ranked
from discopop.search.seed_race import RacePolicy
from discopop.status import FAILED_STATUSES, REPAIRABLE_STATUSES, STATUSES, Status

PACKAGE = Path(__file__).resolve().parent.parent / "discopop"


def _private_imports(path: Path) -> list[str]:
    """``from discopop.x import _name`` and ``module._name`` on an imported discopop module."""
    tree = parsed(path)
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("discopop"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("discopop")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    offences = {str(p.relative_to(PACKAGE)): bad for p in sorted(PACKAGE.rglob("*.py")) if (bad := _private_imports(p))}
    assert offences == {}


def test_the_checker_sees_a_private_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from discopop.execution.worker import _secret\nfrom discopop import stats\nstats._hidden()\n")
    assert _private_imports(probe) == ["discopop.execution.worker._secret", "stats._hidden"]


def test_status_strings_are_the_ones_archives_store(tmp_path: Path) -> None:
    # The strings are the archive contract: an archive from any earlier version must still read.
    assert STATUSES == ("proposed", "invalid", "duplicate", "train_failed", "eval_failed", "scored")
    assert set(FAILED_STATUSES) == set(STATUSES) - {Status.PROPOSED, Status.SCORED}
    assert set(REPAIRABLE_STATUSES) < set(FAILED_STATUSES)
    arch = Archive(tmp_path / "archive.sqlite")
    row_id = arch.add(Candidate("a", "x = 1\n"), 1)
    arch.finish(row_id, Status.TRAIN_FAILED, error="train: boom")
    arch.close()
    conn = sqlite3.connect(tmp_path / "archive.sqlite")
    assert conn.execute("SELECT status FROM candidates").fetchone() == ("train_failed",)
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK constraint lists exactly these strings
        conn.execute("UPDATE candidates SET status = 'lost'")


def _row(row_id: int, status: str, fitness: float | None) -> Row:
    return Row(row_id, 1, [], "evolution", f"c{row_id}", "", "", "", status, None, fitness, {}, "", None)


def test_one_ranking_keeps_finite_scored_rows_best_first_older_first_on_ties() -> None:
    rows = [_row(1, Status.SCORED, 0.2), _row(2, Status.SCORED, float("nan")), _row(3, Status.INVALID, 9.0),
            _row(4, Status.SCORED, 0.5), _row(5, Status.SCORED, 0.2), _row(6, Status.SCORED, None)]
    assert [r.id for r in ranked(rows)] == [4, 1, 5]


def test_ranking_uses_the_lower_bound_over_search_seeds_not_the_lucky_first_seed() -> None:
    """A row whose first seed was lucky but whose race pulled its mean down ranks below a steadier row."""
    lucky = replace(_row(1, Status.SCORED, 0.98), metrics={"race": {"fitness": [0.98, 0.90, 0.91]}})
    steady = replace(_row(2, Status.SCORED, 0.95), metrics={"race": {"fitness": [0.95, 0.95, 0.95]}})
    once = _row(3, Status.SCORED, 0.951)  # one seed at the same mean: the wider bound ranks it below
    assert [r.id for r in ranked([lucky, steady, once])] == [2, 3, 1]
    assert [r.id for r in ranked([lucky, steady, once], RacePolicy(z=0.0))] == [3, 2, 1]  # z 0: by mean


def test_every_test_file_has_exactly_one_kind() -> None:
    """``pytest -m unit`` (and sandbox, e2e) must cover the suite: a new test file is classified in conftest."""
    from conftest import TEST_KINDS  # lazy: conftest is importable only once pytest has put tests/ on the path

    listed = [name for names in TEST_KINDS.values() for name in names]
    files = sorted(p.name for p in Path(__file__).resolve().parent.glob("test_*.py"))
    assert sorted(set(listed)) == sorted(listed), "a test file is listed under two kinds"
    unclassified, gone = sorted(set(files) - set(listed)), sorted(set(listed) - set(files))
    assert sorted(listed) == files, f"unclassified: {unclassified}, listed but gone: {gone}"


def _module_file(module: str) -> Path | None:
    """The source file of ``discopop.x.y`` (a module, or a package's ``__init__``), or None if there is none."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _bound_names(body: list[ast.stmt]) -> set[str]:
    """Names a module binds at its top level: defs, classes, assignments, imports, also inside if/try/with/for."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        for block in ("body", "orelse", "finalbody"):
            if isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.AsyncFor | ast.While):
                names |= _bound_names(getattr(node, block, []))
        if isinstance(node, ast.Try):
            names |= {n for handler in node.handlers for n in _bound_names(handler.body)}
    return names


def unresolved_discopop_imports(folder: Path) -> list[str]:
    """``from discopop.x import name`` lines (at any depth) in ``folder``'s scripts whose module or name is gone.

    Read from the source, not imported: importing what the benchmarks use (TRL, transformers, peft, wandb) cost
    ~6 s of CPU, a tenth of ``pytest -m unit``. The package binds no names dynamically (no ``__getattr__``, no
    star imports), so a name a module's source does not bind, and that is not a submodule, is gone."""
    missing = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("discopop"):
                source = _module_file(node.module)
                if source is None:
                    missing.append(f"{path.name}:{node.lineno}: No module named '{node.module}'")
                    continue
                bound = _bound_names(parsed(source).body)
                missing += [f"{path.name}:{node.lineno}: {node.module}.{alias.name}" for alias in node.names
                            if alias.name not in bound and not (  # a package: the name may be a submodule
                                source.name == "__init__.py" and _module_file(f"{node.module}.{alias.name}"))]
    return missing


def test_every_benchmark_imports_names_that_exist(tmp_path: Path) -> None:
    """Benchmarks have no tests of their own: a moved name would only show when someone runs one."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    assert unresolved_discopop_imports(benchmarks) == []
    (tmp_path / "stale.py").write_text("def f():\n    from discopop.execution.executors import make_executor\n"
                                       "from discopop.gone import x\nfrom discopop.sandbox import oracle, Limits\n")
    assert sorted(unresolved_discopop_imports(tmp_path)) == [
        "stale.py:2: discopop.execution.executors.make_executor", "stale.py:3: No module named 'discopop.gone'"]


# Output through one place (issue 27 item 5): the search reports events (``search.events``); displays print.
QUIET_PACKAGE = PACKAGE / "search"
OUTPUT_MODULES = ("rich", "wandb")


def output_offences(path: Path) -> list[str]:
    """Where ``path`` shows something itself: a ``print()`` call, a write to ``sys.stdout``/``sys.stderr``, any
    ``.console`` (a display's console), or an import of a terminal or tracking library."""
    found = []
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"{path.name}:{node.lineno}: print()")
        elif isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr", "console"):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{path.name}:{node.lineno}: import {n}" for n in names if n.split(".")[0] in OUTPUT_MODULES]
    return found


def test_nothing_in_the_search_prints_or_logs_itself() -> None:
    """The loop, the cascade, the confirmation and the rest of ``search`` report events; a display decides."""
    offences = [o for p in sorted(QUIET_PACKAGE.rglob("*.py")) for o in output_offences(p)]
    assert not offences, "output outside a display: " + "; ".join(offences)


@pytest.mark.parametrize("source", ["print('done')\n", "self.display.console.print(text)\n",
                                    "import sys\nsys.stderr.write('x')\n", "from rich.markup import escape\n",
                                    "import wandb\n", "from rich import print as show\n"])
def test_the_output_check_sees_a_planted_print(tmp_path: Path, source: str) -> None:
    planted = tmp_path / "loop.py"
    planted.write_text(source)
    assert len(output_offences(planted)) == 1


def test_the_output_check_passes_events_and_prose(tmp_path: Path) -> None:
    planted = tmp_path / "loop.py"
    planted.write_text("self.display.show(Note('printed to the console'))\nfingerprint(a, b)\n"
                       "'''The display prints; the loop does not print().'''\n")
    assert output_offences(planted) == []


# Modules that run only in a sandboxed child (the oracle template's forked children set their own environment).
CHILD_ONLY = {"sandbox/oracle_template.py"}


def switches_set_in_process(path: Path) -> set[str | None]:
    """The environment variables ``path`` sets in its own process: ``os.environ[NAME] = ...`` and
    ``os.environ.setdefault(NAME, ...)``, NAME a string or a module-level string constant (None: not resolved)."""
    tree = parsed(path)
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) for target in node.targets if isinstance(target, ast.Name)}

    def name(node: ast.AST) -> str | None:
        return node.value if isinstance(node, ast.Constant) else constants.get(getattr(node, "id", ""))

    def is_environ(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
                and node.value.id == "os")

    found: set[str | None] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_environ(node.func.value)
                and node.func.attr in ("setdefault", "update", "__setitem__")):
            found |= {name(node.args[0])} if node.args and node.func.attr != "update" else {None}
        elif isinstance(node, ast.Assign):
            found |= {name(t.slice) for t in node.targets if isinstance(t, ast.Subscript) and is_environ(t.value)}
    return found


def test_commands_started_by_tests_inherit_no_switch_the_package_sets_in_process(monkeypatch) -> None:
    """A test that runs package code in process (``report.quiet``, ``report.tracking``) may leave a variable set;
    ``conftest.command_env``, which every test that starts a command uses, must drop each one."""
    from conftest import INHERITED_SWITCHES, command_env  # lazy: importable only once pytest put tests/ on the path

    set_here = set().union(*(switches_set_in_process(p) for p in sorted(PACKAGE.rglob("*.py"))
                             if str(p.relative_to(PACKAGE)) not in CHILD_ONLY))
    assert {"HF_HUB_DISABLE_PROGRESS_BARS", "WANDB_DISABLE_WEAVE"} <= set_here  # the scan sees both kinds
    assert set_here <= set(INHERITED_SWITCHES), f"set in process, inherited by started commands: {set_here}"
    for switch in INHERITED_SWITCHES:
        monkeypatch.setenv(switch, "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    env = command_env(Path("cache"), EXTRA="x")
    assert not set(INHERITED_SWITCHES) & set(env) and env["HTTPS_PROXY"] == "http://127.0.0.1:9"
    assert (env["WANDB_MODE"], env["DISCOPOP_CACHE_DIR"], env["EXTRA"]) == ("disabled", "cache", "x")
    direct = command_env(no_proxy=True)
    assert "HTTPS_PROXY" not in direct and direct["NO_PROXY"] == "*" and "DISCOPOP_CACHE_DIR" in direct


def test_the_switch_scan_sees_a_planted_switch(tmp_path: Path) -> None:
    planted = tmp_path / "m.py"
    planted.write_text('import os\nSWITCH = "A_SWITCH"\n\n\ndef f():\n    os.environ[SWITCH] = "1"\n'
                       '    os.environ.setdefault("B_SWITCH", "1")\n    os.environ.update(C="1")\n')
    assert switches_set_in_process(planted) == {"A_SWITCH", "B_SWITCH", None}
