"""The loop, the cascade, the repair queue and ``--resume``, driven in-process by the scripted executor.

No worker, oracle or task is started (``scripted_executor.py``): each test runs whole
``Loop.run`` calls on a real archive in milliseconds. What a real worker adds (sandboxing,
training, scoring) is covered by the end-to-end tests (``test_cli.py``, ``test_faults.py``,
``test_openai_loop.py``).
"""

from __future__ import annotations

import io
import json
import math
import re
import sqlite3
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from scripted_executor import Script, ScriptedExecutor, ScriptedProposer, candidate, loss_name
from scripted_executor import config_with as config

from discopop.archive import Archive
from discopop.config.compose import RunSettings, compose, resolve_auto, resolve_run
from discopop.proposers import build_proposer
from discopop.proposers.base import Candidate
from discopop.report.display import Display
from discopop.search.loop import Loop, proposals_per_generation

GRID = (1e-5, 2e-5, 4e-5)
META = {"sft_heldout_reward": 0.8, "pairs": 64}


@pytest.fixture(scope="module")
def base_cfg() -> dict[str, Any]:
    cfg, _ = compose(["baselines=[dpo,lrml]", f"training.lr_grid=[{','.join(map(str, GRID))}]",
                      "training.lr_screen_margin=0.05", "confirm.seeds=0", "wandb.mode=disabled",
                      "selection.max_seeds=1"])  # the seed race has its own tests (test_seed_race.py)
    return cfg


def display() -> Display:
    return Display(0, console=Console(file=io.StringIO(), width=200), quiet=True)


def run_loop(cfg: dict[str, Any], run_dir: Path, executor: ScriptedExecutor, proposer=None, generations: int = 1,
             **kwargs: Any):
    run_dir.mkdir(parents=True, exist_ok=True)
    loop = Loop(RunSettings.coerce(cfg), run_dir, display(), proposer=proposer, executor=executor, task_meta=META,
                **kwargs)
    try:
        return loop.run(generations)
    finally:
        loop.archive.close()


def table(run_dir: Path, query: str) -> list[tuple]:
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        return conn.execute(query).fetchall()


def candidates(run_dir: Path) -> list[tuple]:
    """Everything a run decides about its candidates (not the clock: timestamps and seconds)."""
    out = []
    for row in table(run_dir, "SELECT id, generation, parent_ids, proposer, name, code, status, error, fitness, "
                              "metrics FROM candidates ORDER BY id"):
        metrics = json.loads(row[-1])
        metrics.pop("seconds", None)
        out.append((*row[:-1], metrics))
    return out


def evaluations(run_dir: Path) -> list[tuple]:
    return table(run_dir, "SELECT id, candidate_id, seed, split, learning_rate, fitness, error FROM evaluations "
                          "ORDER BY id")


def state(run_dir: Path, key: str):
    found = table(run_dir, f"SELECT value FROM run_state WHERE key = '{key}'")
    return json.loads(found[0][0]) if found else None


def by_name(run_dir: Path) -> dict[str, tuple]:
    return {r[4]: r for r in candidates(run_dir)}


REFS = {"dpo": Script(fitness={1e-5: 0.80, 2e-5: 0.85, 4e-5: 0.83}), "lrml": Script(fitness={4e-5: 0.86})}


def test_auto_asks_one_proposal_per_worker() -> None:
    assert proposals_per_generation("auto", 3) == 3
    assert proposals_per_generation("auto", 0) == 1
    assert proposals_per_generation(2, 4) == 2


def test_baselines_first_then_each_generation_is_one_batch_sharing_the_workers(base_cfg, tmp_path: Path) -> None:
    """With 2 workers a generation holds 2 proposals from the same history; their checks share a round,
    their screens another; references climb from the grid's middle (all 3 rates here), candidates screen at the
    run's most common rate."""
    proposer = ScriptedProposer({1: [candidate("a"), candidate("b"), candidate("never_asked")],
                                 2: [candidate("c"), candidate("d")]})
    executor = ScriptedExecutor({**REFS, "a": Script(fitness=0.7), "b": Script(fitness={4e-5: 0.9, 2e-5: 0.88}),
                                 "c": Script(fitness=0.6), "d": Script(fitness=0.65)}, workers=2, order="reversed")
    summary = run_loop(config(base_cfg, candidates_per_generation="auto"), tmp_path, executor, proposer, 2)
    assert summary.stopped is None and executor.warmed == 1 and executor.closed == 1
    assert [a[:3] for a in proposer.asked] == [("propose", 1, 2), ("propose", 2, 2)]
    assert proposer.asked[0][3] == 2 and proposer.asked[1][3] == 4  # gen 2 saw all of gen 1, not half of it
    found = by_name(tmp_path)
    assert [(r[1], r[4], r[6]) for r in candidates(tmp_path)] == [
        (0, "dpo", "scored"), (0, "lrml", "scored"), (1, "a", "scored"), (1, "b", "scored"),
        (2, "c", "scored"), (2, "d", "scored")]
    rounds = [{(j.row_id, j.stage) for j in r} for r in executor.rounds]
    ids = {name: row[0] for name, row in found.items()}
    assert {(ids["a"], "check"), (ids["b"], "check")} in rounds
    assert {(ids["c"], "train"), (ids["d"], "train")} in rounds
    ref_rates = sorted(j.learning_rate for j in executor.jobs("train") if j.row_id == ids["dpo"])
    assert ref_rates == list(GRID)
    # lrml's best is 4e-5 and dpo's 2e-5: a tie in counts goes to the first most common, dpo's 2e-5.
    first = [j.learning_rate for j in executor.jobs("train") if j.row_id == ids["a"]]
    assert first[0] == 2e-5 and len(first) == 1  # 0.7 is more than 0.05 below the best 0.86: no climb
    climbed = sorted(j.learning_rate for j in executor.jobs("train") if j.row_id == ids["b"])
    assert climbed == list(GRID)  # 0.88 at 2e-5 is within the margin: both neighbours are tried
    assert found["b"][8] == pytest.approx(0.9) and found["b"][9]["learning_rate"] == 4e-5
    assert found["b"][9]["lr_tuned"] is True and found["a"][9]["lr_tuned"] is False
    assert state(tmp_path, "generations_done") == 2
    assert sorted(proposer.observed) == proposer.observed == [ids[n] for n in "abcd"]


def test_explicit_candidates_per_generation_is_kept(base_cfg, tmp_path: Path) -> None:
    proposer = ScriptedProposer({1: [candidate(n) for n in "abc"]})
    run_loop(config(base_cfg, candidates_per_generation=3), tmp_path, ScriptedExecutor(REFS, workers=2), proposer)
    assert proposer.asked == [("propose", 1, 3, 2)]
    assert [r[4] for r in candidates(tmp_path)][2:] == ["a", "b", "c"]


def test_failures_at_every_stage_are_archived_with_their_reason(base_cfg, tmp_path: Path) -> None:
    unparseable = Candidate("unparseable", "no code here", error="unparseable answer: no code")
    code = candidate("forbidden").code
    forbidden = Candidate("forbidden", code.replace("import torch.nn", "import os\nimport torch.nn"))
    gen = [unparseable, forbidden, candidate("nan"), candidate("twin", thought="x"), candidate("diverges"),
           candidate("unscorable"), candidate("again_dpo"), candidate("half_fails")]
    executor = ScriptedExecutor({
        **REFS, "nan": Script(check_error="non-finite loss on the large inputs"),
        "twin": Script(behaves_like="dpo"), "diverges": Script(train_error="non-finite loss at step 1"),
        "unscorable": Script(train_error="generation failed", train_stage="score"),
        "again_dpo": Script(behaves_like="twin"), "half_fails": Script(fitness=0.5, fail_rates=(2e-5,)),
    }, workers=2)
    run_loop(config(base_cfg, candidates_per_generation=8), tmp_path, executor, ScriptedProposer({1: gen}))
    found = by_name(tmp_path)
    ids = {name: row[0] for name, row in found.items()}
    fates = {name: (row[6], row[7], row[9].get("stage")) for name, row in found.items() if row[1] == 1}
    assert fates["unparseable"] == ("invalid", "unparseable answer: no code", None)
    assert fates["forbidden"][0] == "invalid" and fates["forbidden"][1].startswith("static check:")
    assert fates["forbidden"][2] == "static"
    assert fates["nan"] == ("invalid", "numeric check: non-finite loss on the large inputs", "numeric")
    assert fates["twin"] == ("duplicate", f"same training behaviour as #{ids['dpo']} (dpo)", "numeric")
    assert fates["again_dpo"][0] == "duplicate"
    assert fates["diverges"] == ("train_failed", "non-finite loss at step 1", "train")
    assert fates["unscorable"] == ("eval_failed", "generation failed", "score")
    assert fates["half_fails"] == ("train_failed", "diverged", "train")  # its one screen rate failed
    trained = {j.row_id for j in executor.jobs("train")}
    assert not trained & {ids[n] for n in ("unparseable", "forbidden", "nan", "twin", "again_dpo")}
    checked = {j.row_id for j in executor.jobs("check")}
    assert ids["unparseable"] not in checked and ids["forbidden"] not in checked
    failed_runs = [e for e in evaluations(tmp_path) if e[1] == ids["diverges"]]
    assert len(failed_runs) == 1 and failed_runs[0][6] == "non-finite loss at step 1"


def test_a_code_duplicate_costs_no_job(base_cfg, tmp_path: Path) -> None:
    same = candidate("copy_of_a").code.replace("def copy_of_a(", "def renamed(")
    gen = [candidate("copy_of_a"), Candidate("renamed", same)]
    executor = ScriptedExecutor(REFS, workers=2)
    run_loop(config(base_cfg, candidates_per_generation=2), tmp_path, executor, ScriptedProposer({1: gen}))
    found = by_name(tmp_path)
    assert found["renamed"][6] == "duplicate"
    assert found["renamed"][7].startswith(f"same code as #{found['copy_of_a'][0]}")
    assert found["renamed"][0] not in {j.row_id for j in executor.jobs()}


def test_repairs_go_in_waves_up_to_the_limit(base_cfg, tmp_path: Path) -> None:
    """Two failures of one generation: both repairs are asked, then evaluated in the same rounds; a fix that
    fails again is repaired again (attempt 2), and the limit stops a third attempt."""
    proposer = ScriptedProposer(
        {1: [candidate("x"), candidate("y"), candidate("fine")]},
        repairs={"x": candidate("x_fix1"), "y": candidate("y_fix1"), "x_fix1": candidate("x_fix2"),
                 "x_fix2": candidate("x_fix3")},
        max_repairs=2)
    executor = ScriptedExecutor({**REFS, "x": Script(check_error="wrong shape"), "y": Script(train_error="oom"),
                                 "x_fix1": Script(check_error="still wrong"), "x_fix2": Script(check_error="no")},
                                workers=2)
    run_loop(config(base_cfg, candidates_per_generation=3), tmp_path, executor, proposer)
    found = by_name(tmp_path)
    ids = {name: row[0] for name, row in found.items()}
    assert [a for a in proposer.asked if a[0] == "repair"] == [
        ("repair", "x", 1, "numeric check: wrong shape"), ("repair", "y", 1, "oom"),
        ("repair", "x_fix1", 2, "numeric check: still wrong")]
    assert "x_fix3" not in found  # x_fix2 failed on attempt 2 = max_repairs: not sent back
    assert found["x_fix1"][2] == f"[{ids['x']}]" and found["x_fix2"][2] == f"[{ids['x_fix1']}]"
    assert found["y_fix1"][2] == f"[{ids['y']}]" and found["y_fix1"][6] == "scored"
    assert all(found[n][1] == 1 for n in ("x_fix1", "y_fix1", "x_fix2"))
    rounds = [{j.row_id for j in r} for r in executor.rounds if r[0].stage == "check"]
    assert {ids["x_fix1"], ids["y_fix1"]} in rounds  # the wave's fixes shared one round of checks
    assert found["x_fix1"][0] < found["y_fix1"][0] < found["x_fix2"][0]


def test_no_repair_without_a_repairing_proposer_or_for_other_failures(base_cfg, tmp_path: Path) -> None:
    proposer = ScriptedProposer({1: [candidate("bad"), candidate("twin"), candidate("unscorable")]},
                                repairs={"twin": candidate("t2"), "unscorable": candidate("u2")}, max_repairs=3)
    executor = ScriptedExecutor({**REFS, "bad": Script(check_error="nan"), "twin": Script(behaves_like="dpo"),
                                 "unscorable": Script(train_error="x", train_stage="score")})
    run_loop(config(base_cfg, candidates_per_generation=3), tmp_path, executor, proposer)
    assert [a[:3] for a in proposer.asked if a[0] == "repair"] == [("repair", "bad", 1)]  # it had no fix
    assert {r[4] for r in candidates(tmp_path)} == {"dpo", "lrml", "bad", "twin", "unscorable"}


def evolved_fitness(name: str) -> Script:
    """Fitness by name for the offline proposer's children (deterministic, spread over 0.5 .. 0.9)."""
    return Script(fitness=0.5 + (zlib.crc32(name.encode()) % 400) / 1000)


def evolution_run(base_cfg, run_dir: Path, generations: int, lookahead: int = 0, **executor_args: Any):
    cfg = config(base_cfg, candidates_per_generation="auto", proposer__lookahead=lookahead)
    executor = ScriptedExecutor(REFS, default=evolved_fitness, **executor_args)
    return run_loop(cfg, run_dir, executor, build_proposer(cfg["proposer"], seed=cfg["seed"]), generations), executor


def test_finishing_order_does_not_change_the_archive(base_cfg, tmp_path: Path) -> None:
    """Workers finish in any order; the archive (every row and every evaluation) is the same."""
    archives = []
    for tag, order in (("submitted", "submitted"), ("reversed", "reversed"), ("shuffled", 7)):
        evolution_run(base_cfg, tmp_path / tag, 4, workers=2, order=order)
        archives.append((candidates(tmp_path / tag), evaluations(tmp_path / tag)))
    assert len(archives[0][0]) == 2 + 4 * 2
    assert archives[0] == archives[1] == archives[2]


def test_twins_in_one_batch_keep_the_earlier_row_whatever_finishes_first(base_cfg, tmp_path: Path) -> None:
    for order in ("submitted", "reversed"):
        run_dir = tmp_path / order
        executor = ScriptedExecutor({**REFS, "second": Script(behaves_like="first")}, workers=2, order=order)
        run_loop(config(base_cfg, candidates_per_generation=2), run_dir, executor,
                 ScriptedProposer({1: [candidate("first"), candidate("second")]}))
        found = by_name(run_dir)
        assert (found["first"][6], found["second"][6]) == ("scored", "duplicate"), order


def test_interrupted_run_resumes_exactly(base_cfg, tmp_path: Path) -> None:
    """Ctrl-C mid-generation, then ``--resume``: the rows in flight are re-run, the generation is never
    proposed again, nothing finished changes, and the archive equals an uninterrupted run's."""
    evolution_run(base_cfg, tmp_path / "straight", 4, workers=2)
    straight = candidates(tmp_path / "straight")
    run_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        # 8 jobs for the references, then about 3 a generation: Ctrl-C in generation 2 or 3
        evolution_run(base_cfg, run_dir, 4, workers=2, interrupt_after=14)
    before = {r[0]: r for r in candidates(run_dir)}
    in_flight = [i for i, r in before.items() if r[6] == "proposed"]
    done = state(run_dir, "generations_done")
    assert in_flight and 1 < done < 4 and {before[i][1] for i in in_flight} == {done}
    cfg = config(base_cfg, candidates_per_generation="auto")
    proposer = build_proposer(cfg["proposer"], seed=cfg["seed"])
    asked: list[int] = []
    original = proposer.propose
    proposer.propose = lambda history, k, generation: asked.append(generation) or original(history, k, generation)
    executor = ScriptedExecutor(REFS, default=evolved_fitness, workers=2)
    run_loop(cfg, run_dir, executor, proposer, 4)
    assert asked == list(range(done + 1, 5)), "an interrupted generation was proposed again"
    assert executor.rounds[0] and {j.row_id for j in executor.rounds[0]} == set(in_flight)
    after = {r[0]: r for r in candidates(run_dir)}
    assert all(after[i] == row for i, row in before.items() if row[6] != "proposed")
    assert candidates(run_dir) == straight


def test_a_stop_while_repairing_leaves_the_repair_owed_and_resume_asks_it_first(base_cfg, tmp_path: Path) -> None:
    gens = {1: [candidate("broken"), candidate("ok")], 2: [candidate("later")]}
    scripts = {**REFS, "broken": Script(check_error="nan")}
    cfg = config(base_cfg, candidates_per_generation=2)
    stopping = ScriptedProposer(gens, repairs={"broken": candidate("fixed")}, max_repairs=1,
                                stop_at={("repair", "broken")})
    executor = ScriptedExecutor(scripts, workers=2)
    summary = run_loop(cfg, tmp_path, executor, stopping, 2)
    assert summary.stopped == "scripted stop at the repair of broken" and executor.closed == 1
    assert state(tmp_path, "generations_done") == 1  # its proposals are archived: never proposed again
    assert [r[4] for r in candidates(tmp_path)] == ["dpo", "lrml", "broken", "ok"]
    resumed = ScriptedProposer(gens, repairs={"broken": candidate("fixed")}, max_repairs=1)
    run_loop(cfg, tmp_path, ScriptedExecutor(scripts, workers=2), resumed, 2)
    assert [a[:3] for a in resumed.asked] == [("repair", "broken", 1), ("propose", 2, 2)]
    found = by_name(tmp_path)
    assert (found["fixed"][1], found["fixed"][2], found["fixed"][6]) == (1, f"[{found['broken'][0]}]", "scored")
    assert found["later"][1] == 2


def test_a_stop_while_proposing_keeps_the_run_resumable(base_cfg, tmp_path: Path) -> None:
    gens = {1: [candidate("one")], 2: [candidate("two")]}
    cfg = config(base_cfg, candidates_per_generation=1)
    summary = run_loop(cfg, tmp_path, ScriptedExecutor(REFS), ScriptedProposer(gens, stop_at={("propose", 2)}), 3)
    assert summary.stopped == "scripted stop at generation 2"
    assert state(tmp_path, "generations_done") == 1  # nothing of generation 2 was archived: it is asked again
    resumed = ScriptedProposer(gens)
    run_loop(cfg, tmp_path, ScriptedExecutor(REFS), resumed, 3)
    assert [a[1] for a in resumed.asked] == [2, 3]
    assert [r[4] for r in candidates(tmp_path)] == ["dpo", "lrml", "one", "two"]
    assert [r[4] for r in candidates(tmp_path) if r[3] == "reference"] == ["dpo", "lrml"]  # baselines not repeated


def test_the_loop_confirms_the_winner_on_fresh_seeds(base_cfg, tmp_path: Path) -> None:
    cfg = config(base_cfg, candidates_per_generation=1, confirm__seeds=3, confirm__top_k=1)
    scripts = {**REFS, "winner": Script(fitness={2e-5: 0.95, 4e-5: 0.97}, seed_shift={1001: 0.01})}
    executor = ScriptedExecutor(scripts, workers=2)
    run_loop(cfg, tmp_path, executor, ScriptedProposer({1: [candidate("winner")]}))
    found = by_name(tmp_path)
    conf = found["winner"][9]["confirmation"]
    assert conf["seeds"] == [1000, 1001, 1002] and conf["learning_rate"] == 4e-5
    assert conf["fitness"] == pytest.approx([0.97, 0.98, 0.97])
    assert conf["vs_dpo"]["baseline"] == "dpo" and conf["vs_best"]["baseline"] == "lrml"
    confirm_jobs = [j for j in executor.jobs("train") if j.split == "confirm"]
    assert {(j.row_id, j.seed) for j in confirm_jobs} == {
        (found[n][0], s) for n in ("winner", "dpo", "lrml") for s in (1000, 1001, 1002)}
    assert all(math.isclose(j.learning_rate, found["dpo"][9]["learning_rate"])
               for j in confirm_jobs if j.row_id == found["dpo"][0])


def test_auto_resolves_to_this_machines_cores_and_is_recorded(base_cfg, monkeypatch) -> None:
    monkeypatch.setattr("discopop.config.compose.usable_cores", lambda: 8)
    cfg = RunSettings.coerce(config(base_cfg, executor__workers="auto", candidates_per_generation="auto",
                                    training__threads=2))
    resolve_auto(cfg)
    assert (cfg.executor.workers, cfg.candidates_per_generation) == (4, 4)
    cfg, _ = resolve_run(1, None, ["executor.workers=3"])
    assert (cfg.executor.workers, cfg.candidates_per_generation) == (3, 3)
    cfg, _ = resolve_run(1, None, ["candidates_per_generation=5"])
    assert cfg.candidates_per_generation == 5 and cfg.executor.workers == 8 // cfg.training.threads


def test_archive_rows_are_never_left_proposed_after_a_clean_run(base_cfg, tmp_path: Path) -> None:
    evolution_run(base_cfg, tmp_path, 3, workers=3)
    archive = Archive(tmp_path / "archive.sqlite", create=False)
    try:
        assert not [r for r in archive.rows() if r.status == "proposed"]
        assert {r.generation for r in archive.rows_by_proposer("evolution")} == {1, 2, 3}
        assert len(archive.rows_by_proposer("evolution")) == 9  # 3 workers: 3 per generation
    finally:
        archive.close()


# -- lookahead: generation g+1 proposed while g is evaluated -------------------------------------------------------


class SignallingExecutor(ScriptedExecutor):
    """Sets ``started[g]`` when a job of a loss named ``g<g>_...`` reaches the workers; raises ``KeyboardInterrupt``
    instead when its generation is ``interrupt_in`` (Ctrl-C during that generation's evaluation)."""

    def __init__(self, *args: Any, interrupt_in: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.started = {g: threading.Event() for g in range(1, 10)}
        self.interrupt_in = interrupt_in

    def run(self, jobs):
        for job in jobs:
            found = re.match(r"g(\d+)_", loss_name(job.code))
            if found and int(found.group(1)) == self.interrupt_in:
                raise KeyboardInterrupt
            if found:
                self.started[int(found.group(1))].set()
        yield from super().run(jobs)


class WaitingProposer(ScriptedProposer):
    """propose(g) for g >= 2 waits until generation g-1's jobs have reached the workers, so ``overlapped[g]``
    is True only if it ran during that evaluation (the timeout only stops a hang). It then lingers (half a
    second at most) in case an outcome is observed meanwhile, which ``overlapping_calls`` would count."""

    def __init__(self, executor: SignallingExecutor, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.executor = executor
        self.overlapped: dict[int, bool] = {}
        self.on_main_thread: dict[int, bool] = {}
        self.observing = threading.Event()

    def proposing(self, generation: int) -> None:
        self.on_main_thread[generation] = threading.current_thread() is threading.main_thread()
        if generation > 1:
            self.observing.clear()
            self.overlapped[generation] = self.executor.started[generation - 1].wait(timeout=30)
            self.observing.wait(timeout=0.5)

    def observe(self, entry) -> None:
        super().observe(entry)
        self.observing.set()


LOOKAHEAD_GENS = {1: [candidate("g1_ok"), candidate("g1_broken")], 2: [candidate("g2_a"), candidate("g2_b")],
                  3: [candidate("g3_a"), candidate("g3_b")]}
LOOKAHEAD_SCRIPTS = {**REFS, "g1_broken": Script(check_error="nan")}
LOOKAHEAD_REPAIRS = {"g1_broken": candidate("g1_fix")}


def test_lookahead_proposes_the_next_generation_while_this_one_is_evaluated(base_cfg, tmp_path: Path) -> None:
    """propose(g+1) runs on another thread during g's evaluation, from the history as it stood before it
    (g's rows still proposed); then, in this order: observe(g's outcomes, row order), g's repairs."""
    executor = SignallingExecutor(LOOKAHEAD_SCRIPTS, workers=2, order="reversed")
    proposer = WaitingProposer(executor, LOOKAHEAD_GENS, repairs=LOOKAHEAD_REPAIRS, max_repairs=1, lookahead=1)
    summary = run_loop(config(base_cfg, candidates_per_generation=2), tmp_path, executor, proposer, 3)
    assert summary.stopped is None
    assert proposer.overlapped == {2: True, 3: True}
    assert proposer.on_main_thread == {1: True, 2: False, 3: False}
    assert proposer.overlapping_calls == 0  # never two calls at once, never state() or close() during a proposal
    ids = {r[4]: r[0] for r in candidates(tmp_path)}
    assert list(ids) == ["dpo", "lrml", "g1_ok", "g1_broken", "g2_a", "g2_b", "g1_fix", "g3_a", "g3_b"]
    assert proposer.calls == [
        ("propose", 1), ("propose", 2), ("observe", ids["g1_ok"]), ("observe", ids["g1_broken"]),
        ("repair", "g1_broken"), ("observe", ids["g1_fix"]),
        ("propose", 3), ("observe", ids["g2_a"]), ("observe", ids["g2_b"]),
        ("observe", ids["g3_a"]), ("observe", ids["g3_b"])]
    refs = [(ids["dpo"], "scored"), (ids["lrml"], "scored")]
    assert proposer.seen[2] == [*refs, (ids["g1_ok"], "proposed"), (ids["g1_broken"], "proposed")]
    assert proposer.seen[3] == [*refs, (ids["g1_ok"], "scored"), (ids["g1_broken"], "invalid"),
                                (ids["g2_a"], "proposed"), (ids["g2_b"], "proposed"), (ids["g1_fix"], "scored")]
    assert {r[6] for r in candidates(tmp_path)[2:]} == {"scored", "invalid"}
    assert (state(tmp_path, "generations_done"), state(tmp_path, "generations_proposed")) == (3, 3)


def test_lookahead_archive_is_the_same_whatever_the_finishing_order(base_cfg, tmp_path: Path) -> None:
    """Same config and seed, workers finishing in any order: the same archive; and no child of generation g
    descends from generation g-1, which was not scored yet when g was proposed."""
    archives = []
    for tag, order in (("submitted", "submitted"), ("reversed", "reversed"), ("shuffled", 7)):
        evolution_run(base_cfg, tmp_path / tag, 4, lookahead=1, workers=2, order=order)
        archives.append((candidates(tmp_path / tag), evaluations(tmp_path / tag)))
    assert len(archives[0][0]) == 2 + 4 * 2
    assert archives[0] == archives[1] == archives[2]
    generation_of = {r[0]: r[1] for r in archives[0][0]}
    for row in archives[0][0]:
        assert all(generation_of[p] < max(1, row[1] - 1) for p in json.loads(row[2])), row[:5]


@pytest.mark.parametrize("interrupt_after", [9, 11, 13, 15, 17, 19, 21])
def test_lookahead_interrupted_run_resumes_exactly(base_cfg, tmp_path: Path, interrupt_after: int) -> None:
    """Ctrl-C at any point, then ``--resume``: the archive equals an uninterrupted run's, and no generation
    whose proposals were archived is proposed again (one still being proposed at the stop is asked again)."""
    evolution_run(base_cfg, tmp_path / "straight", 4, lookahead=1, workers=2)
    straight = candidates(tmp_path / "straight")
    run_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        evolution_run(base_cfg, run_dir, 4, lookahead=1, workers=2, interrupt_after=interrupt_after)
    proposed = state(run_dir, "generations_proposed")
    assert {r[1] for r in candidates(run_dir)} == set(range(proposed + 1))
    assert any(r[6] == "proposed" for r in candidates(run_dir))
    cfg = config(base_cfg, candidates_per_generation="auto", proposer__lookahead=1)
    proposer = build_proposer(cfg["proposer"], seed=cfg["seed"])
    asked: list[int] = []
    original = proposer.propose
    proposer.propose = lambda history, k, generation: asked.append(generation) or original(history, k, generation)
    run_loop(cfg, run_dir, ScriptedExecutor(REFS, default=evolved_fitness, workers=2), proposer, 4)
    assert asked == list(range(proposed + 1, 5))
    assert candidates(run_dir) == straight


def test_a_lookahead_still_running_at_ctrl_c_is_dropped_and_asked_again(base_cfg, tmp_path: Path) -> None:
    """Ctrl-C while propose(2) is still running: the loop does not wait for it, saves no proposer state and
    does not close the proposer under it; --resume asks generation 2 from the same history."""
    cfg = config(base_cfg, candidates_per_generation=2)
    release = threading.Event()

    class Held(ScriptedProposer):
        def proposing(self, generation: int) -> None:
            if generation == 2:
                release.wait(timeout=30)

    held = Held(LOOKAHEAD_GENS, lookahead=1)
    with pytest.raises(KeyboardInterrupt):
        run_loop(cfg, tmp_path, SignallingExecutor(LOOKAHEAD_SCRIPTS, workers=2, interrupt_in=1), held, 3)
    release.set()
    assert held.overlapping_calls == 0
    assert (state(tmp_path, "generations_done"), state(tmp_path, "generations_proposed")) == (1, 1)
    assert [(r[4], r[6]) for r in candidates(tmp_path)][2:] == [("g1_ok", "proposed"), ("g1_broken", "proposed")]
    resumed = ScriptedProposer(LOOKAHEAD_GENS, lookahead=1)
    run_loop(cfg, tmp_path, ScriptedExecutor(LOOKAHEAD_SCRIPTS, workers=2), resumed, 3)
    assert [a[:2] for a in resumed.asked] == [("propose", 2), ("propose", 3)]
    assert resumed.seen[2] == held.seen[2]
    assert [r[4] for r in candidates(tmp_path)][2:] == ["g1_ok", "g1_broken", "g2_a", "g2_b", "g3_a", "g3_b"]
    assert not [r for r in candidates(tmp_path) if r[6] == "proposed"]


def straight_lookahead_run(base_cfg, run_dir: Path) -> list[tuple]:
    proposer = ScriptedProposer(LOOKAHEAD_GENS, repairs=LOOKAHEAD_REPAIRS, max_repairs=1, lookahead=1)
    run_loop(config(base_cfg, candidates_per_generation=2), run_dir, ScriptedExecutor(LOOKAHEAD_SCRIPTS, workers=2),
             proposer, 3)
    return candidates(run_dir)


def test_a_stop_raised_in_the_lookahead_surfaces_once_and_the_run_resumes(base_cfg, tmp_path: Path) -> None:
    """A ProposerStop in propose(2), on the lookahead thread: generation 1 finishes its evaluation, the run
    ends with one yellow line, and --resume proposes 2 (from the same history) before generation 1's owed repair."""
    cfg = config(base_cfg, candidates_per_generation=2)
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    stopping = ScriptedProposer(LOOKAHEAD_GENS, repairs=LOOKAHEAD_REPAIRS, max_repairs=1, lookahead=1,
                                stop_at={("propose", 2)})
    console = Console(file=io.StringIO(), width=80)
    loop = Loop(RunSettings.coerce(cfg), run_dir, Display(0, console=console, quiet=True), proposer=stopping,
                executor=ScriptedExecutor(LOOKAHEAD_SCRIPTS, workers=2), task_meta=META)
    try:
        summary = loop.run(3)
    finally:
        loop.archive.close()
    assert summary.stopped == "scripted stop at generation 2"
    lines = [line for line in console.file.getvalue().splitlines() if "run stopped" in line]
    assert len(lines) == 1 and f"discover --resume {run_dir}" in lines[0]
    assert [(r[4], r[6]) for r in candidates(run_dir)][2:] == [("g1_ok", "scored"), ("g1_broken", "invalid")]
    assert (state(run_dir, "generations_done"), state(run_dir, "generations_proposed")) == (1, 1)
    assert not [a for a in stopping.asked if a[0] == "repair"]  # the stop came first: the repair is owed
    resumed = ScriptedProposer(LOOKAHEAD_GENS, repairs=LOOKAHEAD_REPAIRS, max_repairs=1, lookahead=1)
    run_loop(cfg, run_dir, ScriptedExecutor(LOOKAHEAD_SCRIPTS, workers=2), resumed, 3)
    assert [a[:2] for a in resumed.asked] == [("propose", 2), ("repair", "g1_broken"), ("propose", 3)]
    assert resumed.seen[2] == stopping.seen[2]
    assert candidates(run_dir) == straight_lookahead_run(base_cfg, tmp_path / "straight")


def test_a_stop_while_repairing_after_the_lookahead_resumes_with_the_owed_repair(base_cfg, tmp_path: Path) -> None:
    """Generation 2 was proposed ahead and archived before generation 1's repair stopped the run: --resume asks
    only that repair, evaluates generation 2 as proposed, and ends with an uninterrupted run's archive."""
    cfg = config(base_cfg, candidates_per_generation=2)
    run_dir = tmp_path / "stopped"
    stopping = ScriptedProposer(LOOKAHEAD_GENS, repairs=LOOKAHEAD_REPAIRS, max_repairs=1, lookahead=1,
                                stop_at={("repair", "g1_broken")})
    summary = run_loop(cfg, run_dir, ScriptedExecutor(LOOKAHEAD_SCRIPTS, workers=2), stopping, 3)
    assert summary.stopped == "scripted stop at the repair of g1_broken"
    assert (state(run_dir, "generations_done"), state(run_dir, "generations_proposed")) == (1, 2)
    assert [(r[4], r[6]) for r in candidates(run_dir)][4:] == [("g2_a", "proposed"), ("g2_b", "proposed")]
    resumed = ScriptedProposer(LOOKAHEAD_GENS, repairs=LOOKAHEAD_REPAIRS, max_repairs=1, lookahead=1)
    run_loop(cfg, run_dir, ScriptedExecutor(LOOKAHEAD_SCRIPTS, workers=2), resumed, 3)
    assert [a[:2] for a in resumed.asked] == [("repair", "g1_broken"), ("propose", 3)]
    assert candidates(run_dir) == straight_lookahead_run(base_cfg, tmp_path / "straight")


def test_lookahead_defaults_and_validation() -> None:
    """On where proposing is slow (an LLM request), off where it is instant or the protocol needs lock step."""
    defaults = {}
    for preset in ("evolution", "openai", "openai_paper", "reference"):
        cfg, _ = compose([f"proposer={preset}"])
        defaults[preset] = build_proposer(cfg["proposer"], seed=0).lookahead
    assert defaults == {"evolution": 0, "openai": 1, "openai_paper": 0, "reference": 0}
    with pytest.raises(ValueError, match="lookahead must be 0 or 1"):
        build_proposer({"name": "evolution", "lookahead": 2}, seed=0)
    with pytest.raises(ValueError, match="lookahead=2 is not allowed"):
        build_proposer({"name": "openai", "lookahead": 2}, seed=0)
