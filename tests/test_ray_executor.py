"""The Ray backend runs the same cascade as the local pool (a local Ray instance stands in for a cluster)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import SMALL_RUN, command_env

REPO = Path(__file__).resolve().parent.parent


# slow (~28 s on 2 idle cores: a local Ray instance starts): `pytest -m slow` runs it. The cascade it runs is the
# local pool's, which the default suite runs end to end (tests/test_cli.py).
@pytest.mark.slow
def test_discover_on_ray(tmp_path: Path, cache_dir: Path, tiny_task) -> None:
    """``tiny_task``: the task is built beforehand, in this process, not inside the run's time limit."""
    run_dir = tmp_path / "run"
    args = ["discover", "--generations", "1", "--quiet", *SMALL_RUN, "executor=ray", "executor.workers=2",
            "confirm.seeds=0", f"hydra.run.dir={run_dir}"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=400,
                         env=command_env(cache_dir, RAY_USAGE_STATS_ENABLED="0"))
    assert out.returncode == 0, out.stderr[-3000:]
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        found = conn.execute("SELECT name, status, fitness, proposer, generation FROM candidates").fetchall()
    assert [r[0] for r in found if r[3] == "reference"] == ["dpo", "lrml"]
    assert [r[4] for r in found if r[3] == "evolution"] == [1, 1]  # one proposal per actor, evaluated together
    assert all(r[1] != "proposed" for r in found)
    assert any(r[1] == "scored" and 0.0 <= r[2] <= 1.0 for r in found)
