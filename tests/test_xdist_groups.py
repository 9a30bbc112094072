"""The suite runs on both cores (pytest-xdist): each test's ``xdist_group`` keeps the tests that share a costly
fixture in one worker, so no worker repeats a hostile corpus or the shared ``discover`` run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import tomllib
from conftest import SHARED_GROUPS, prefetching, pytest_collection_modifyitems, startup_margin, xdist_group_of

REPO = Path(__file__).resolve().parent.parent


def _item(nodeid: str, fixtures: dict[str, tuple[str, str]]) -> SimpleNamespace:
    """A stand-in for a collected test: its id and, per fixture, (scope, where the fixture is defined)."""
    defs = {name: [SimpleNamespace(scope=scope, baseid=baseid)] for name, (scope, baseid) in fixtures.items()}
    info = SimpleNamespace(name2fixturedefs=defs)
    return SimpleNamespace(nodeid=nodeid, fixturenames=list(fixtures), _fixtureinfo=info)


def test_a_test_using_its_own_files_module_fixture_is_grouped_by_file() -> None:
    item = _item("tests/test_hostile.py::test_x[a]", {"corpus": ("module", "tests/test_hostile.py"),
                                                      "tmp_path": ("function", "")})
    assert xdist_group_of(item) == "test_hostile"


def test_shared_session_fixtures_group_across_files() -> None:
    one = _item("tests/test_cli.py::test_a", {"discovered": ("session", "tests"), "cache_dir": ("session", "tests")})
    two = _item("tests/test_transfer_confirm.py::test_b", {"discovered": ("session", "tests")})
    assert xdist_group_of(one) == xdist_group_of(two) == SHARED_GROUPS["discovered"]


def test_cheap_or_foreign_fixtures_leave_a_test_ungrouped() -> None:
    assert xdist_group_of(_item("tests/test_a.py::test_a", {"tmp_path": ("function", "")})) is None
    # A module-scoped fixture from conftest (one_torch_thread) costs nothing to repeat: no group.
    assert xdist_group_of(_item("tests/test_a.py::test_a", {"one_torch_thread": ("module", "tests")})) is None
    assert xdist_group_of(_item("tests/test_a.py::test_a", {"x": ("session", "tests/test_a.py")})) is None


def test_xdist_is_installed_for_tests_and_the_readme_gives_the_grouped_parallel_run() -> None:
    """Serial is the default (on 2 cores two workers were slower); the parallel run the README offers must use the
    groups, or a shared fixture would be built once per worker."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(dep.startswith("pytest-xdist") for dep in project["project"]["optional-dependencies"]["test"])
    assert "-n" not in project["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert "-n auto --dist loadgroup" in (REPO / "README.md").read_text()


def test_timed_start_up_allowances_double_only_beside_another_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert startup_margin(30.0) == 30.0
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    assert startup_margin(30.0) == 30.0
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert startup_margin(30.0) == 60.0


def test_the_readers_of_a_prefetched_run_go_last_in_order_unless_prefetching_is_off(monkeypatch) -> None:
    """Serially the shared runs start in the background and the tests that read them run last (``prefetch``);
    under pytest-xdist or with ``DISCOPOP_TEST_PREFETCH=0`` the file order stays."""
    def collected() -> list[SimpleNamespace]:
        specs = [("tests/test_cli.py::test_reads", {"discovered": ("session", "tests")}),
                 ("tests/test_cli.py::test_plain", {"tmp_path": ("function", "")}),
                 ("tests/test_hub_task.py::test_hub", {"hub_discovered": ("module", "tests/test_hub_task.py")}),
                 ("tests/test_zz.py::test_last_file", {})]
        items = []
        for nodeid, fixtures in specs:
            item = _item(nodeid, fixtures)
            item.fspath, item.add_marker = nodeid.split("::")[0], lambda marker: None
            items.append(item)
        return items

    for env, value, expected in [
            (None, None, ["test_plain", "test_last_file", "test_reads", "test_hub"]),
            ("DISCOPOP_TEST_PREFETCH", "0", ["test_reads", "test_plain", "test_hub", "test_last_file"]),
            ("PYTEST_XDIST_WORKER", "gw0", ["test_reads", "test_plain", "test_hub", "test_last_file"])]:
        for name in ("DISCOPOP_TEST_PREFETCH", "PYTEST_XDIST_WORKER"):
            monkeypatch.delenv(name, raising=False)
        if env:
            monkeypatch.setenv(env, value)
        items = collected()
        pytest_collection_modifyitems(None, items)
        assert [i.nodeid.split("::")[1] for i in items] == expected, env
        assert prefetching() is (env is None)
