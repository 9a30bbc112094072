"""benchmarks/pick_shrinkage.py and benchmarks/offspring_yield.py on a small archive built here.

Why: both read figures from run archives that docs/results.md quotes (how much of a pick is selection on the search
data; where children above the best reference come from); a wrong baseline, seed or parent would change the
figures silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import benchmark_script

from discopop.archive import ARCHIVE_NAME, Archive
from discopop.proposers.base import Candidate
from discopop.status import Status


def _row(archive: Archive, name: str, proposer: str, fitness: float, race: dict[int, float],
         parents: list[int] | None = None, pick: dict[int, float] | None = None) -> int:
    code = f"def {name}(a, b, c, d, beta):\n    return a - b\n"
    row_id = archive.add(Candidate(name=name, code=code, thought="", parent_ids=parents or [], proposer=proposer),
                         generation=0 if proposer == "reference" else 1)
    metrics = {"race": {"seeds": list(race), "fitness": list(race.values())}}
    if pick is not None:  # a run with selection.pick_holdout
        metrics["pick"] = {"seeds": list(pick), "fitness": list(pick.values())}
    archive.finish(row_id, Status.SCORED, fitness=fitness, metrics=metrics)
    return row_id


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """One run: two references, a pick bred from the weaker one, and a grandchild of that pick."""
    run = tmp_path / "seed0" / "feedback"
    run.mkdir(parents=True)
    archive = Archive(run / ARCHIVE_NAME)
    strong = _row(archive, "cell", "reference", 1.10, {0: 1.10, 500: 1.09, 501: 1.08})
    weak = _row(archive, "aqfl", "reference", 1.00, {0: 1.00, 500: 1.01, 501: 0.99})
    pick = _row(archive, "aqfl_focus_1", "evolution", 1.13, {0: 1.13, 500: 1.12, 501: 1.10}, [weak])
    _row(archive, "aqfl_focus_1_tune_1", "evolution", 1.05, {0: 1.05}, [pick])
    archive.close()
    (tmp_path / "ids.txt").write_text(f"{strong} {weak} {pick}")
    return run


def test_the_shrinkage_is_the_seed_mean_gap_to_the_named_baseline_less_the_confirmed_delta(run_dir: Path) -> None:
    ps = benchmark_script("pick_shrinkage")
    pick_id = int((run_dir.parents[1] / "ids.txt").read_text().split()[2])
    run = {"run": str(run_dir), "pick": {"id": pick_id, "delta": 0.01,
                                         "text": "+0.010 [+0.004, +0.016] beats cell, Holm p=0.01: MDE 0.006"}}
    gap, confirmed, per_seed, held_out = ps.run_gaps(run)
    assert per_seed == pytest.approx({0: 0.03, 500: 0.03, 501: 0.02})  # against cell, not aqfl, seed by seed
    assert gap == pytest.approx(0.08 / 3) and confirmed == 0.01 and held_out is None  # no holdout in this run
    assert ps.baseline_name("-0.004 [-0.010, +0.002] within noise of dpo, Holm p=1") == "dpo"
    assert ps.baseline_name("no verdict") is None


def test_with_a_holdout_the_held_out_gap_is_read_from_the_pick_half(tmp_path: Path) -> None:
    ps = benchmark_script("pick_shrinkage")
    run_dir = tmp_path / "seed0" / "feedback"
    run_dir.mkdir(parents=True)
    archive = Archive(run_dir / ARCHIVE_NAME)
    _row(archive, "cell", "reference", 1.10, {0: 1.10, 500: 1.09}, pick={0: 1.12, 500: 1.11})
    pick = _row(archive, "cell_x", "evolution", 1.14, {0: 1.14, 500: 1.12}, pick={0: 1.13, 500: 1.10})
    archive.close()
    gaps = ps.run_gaps({"run": str(run_dir), "pick": {"id": pick, "delta": 0.0, "text": "+0.000 within noise of cell"}})
    assert gaps.search == pytest.approx(0.035) and gaps.held_out == pytest.approx(0.0)  # (0.01 - 0.01) / 2


def test_children_above_the_best_reference_are_counted_by_their_first_parent(run_dir: Path) -> None:
    oy = benchmark_script("offspring_yield")
    by_kind, by_reference = oy.tally_arm(oy.archives([run_dir.parents[1]], "feedback"))
    assert (by_kind["reference"].children, by_kind["reference"].hits, by_kind["reference"].above_parent) == (1, 1, 1)
    assert (by_kind["evolved"].children, by_kind["evolved"].hits, by_kind["evolved"].above_parent) == (1, 0, 0)
    assert by_reference["aqfl"].children == 1 and by_reference["cell"].children == 0
    assert by_reference["cell"].parent_fitness == [1.10]


def _summary_run(verdict: str, transfer: dict[str, str], pick: float | None) -> dict:
    return {"winner": {"verdict": verdict, "transfer": transfer}, "pick": {} if pick is None else {"delta": pick}}


def test_batch_compare_pairs_picks_by_run_seed_and_counts_beat_and_hold() -> None:
    bc = benchmark_script("batch_compare")
    base = {"feedback": {"0": _summary_run("beats", {"clean": "holds"}, 0.010),
                         "1": _summary_run("beats", {"clean": "does not transfer"}, 0.002),
                         "2": _summary_run("within noise", {"clean": "holds"}, None)}}
    new = {"feedback": {"0": _summary_run("beats", {"clean": "transfers"}, 0.014),
                        "1": _summary_run("beats", {"clean": "holds"}, 0.008),
                        "2": _summary_run("beats", {}, 0.001)}}  # no transfer verdict: not a hold
    assert [bc.beat_and_hold(r) for r in base["feedback"].values()] == [True, False, False]
    assert [bc.beat_and_hold(r) for r in new["feedback"].values()] == [True, True, False]
    assert bc.paired(base["feedback"], new["feedback"]) == pytest.approx([0.004, 0.006])  # seed 2: base unconfirmed
    lines = bc.compare(base, new, ["feedback"])
    assert "feedback base: winner beats 2/3, beat-and-hold 1/3" in lines
    assert "feedback new: winner beats 3/3, beat-and-hold 2/3" in lines
    assert lines[-1].startswith("feedback new - base, pick's confirmed delta paired by run seed: +0.0050 [")
