"""Work ahead on idle workers (issue 25): the next generation's first jobs run while this one's last jobs do, and
the run's archive is the same as without it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scripted_executor import Script, ScriptedExecutor, ScriptedProposer, candidate, loss_code
from scripted_executor import config_with as config

from discopop.config import RunSettings
from discopop.config.compose import compose
from discopop.execution.executors import Job, JobResult
from discopop.search.events import EventLog
from discopop.search.loop import Loop
from discopop.search.work_ahead import SpeculativeExecutor, job_key


class Recording(ScriptedExecutor):
    """A scripted pool that records every job it runs (from any thread) in order, and can fail chosen jobs'
    machinery once."""

    def __init__(self, *args: Any, machinery_once: set[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ran: list[Job] = []
        self.machinery_once = set(machinery_once or ())
        self._lock = threading.Lock()

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        for job in jobs:
            with self._lock:
                self.ran.append(job)
            if job.stage in self.machinery_once:
                self.machinery_once.discard(job.stage)
                yield JobResult(job, False, job.stage, "worker died", machinery=True)
                continue
            yield self.answer(job)


def _wait_for(predicate, limit: float = 10.0) -> None:
    """Poll until ``predicate()`` holds (bounded, so a broken test fails instead of hanging)."""
    end = time.monotonic() + limit
    while not predicate() and time.monotonic() < end:
        time.sleep(0.01)


def test_a_job_run_ahead_is_handed_out_under_the_asking_job_and_not_run_again() -> None:
    inner = Recording(workers=2)
    ahead = Job(0, loss_code("b"), "train", 7, learning_rate=2e-5)
    spec = SpeculativeExecutor(inner, supplier=lambda: [ahead])
    try:
        first = list(spec.run([Job(1, loss_code("a"), "check", 7)]))  # one job, two workers: one runs ahead
        assert [r.job.row_id for r in first] == [1]
        _wait_for(lambda: spec.peek(ahead) is not None)
        assert spec.stats.started == 1 and job_key(inner.ran[-1]) == job_key(ahead)
        asked = Job(5, loss_code("b"), "train", 7, learning_rate=2e-5)
        (result,) = list(spec.run([asked]))
        assert result.job is asked and result.ok and spec.stats.hits == 1
        assert len(inner.ran) == 2  # not run again
        other_rate = Job(6, loss_code("b"), "train", 7, learning_rate=4e-5)  # another job: runs
        (result,) = list(spec.run([other_rate]))
        assert result.job is other_rate and len(inner.ran) == 3
    finally:
        spec.close()


def test_a_machinery_failure_ahead_is_never_handed_out() -> None:
    inner = Recording(workers=2, machinery_once={"check"})
    ahead = Job(0, loss_code("b"), "check", 7)
    spec = SpeculativeExecutor(inner, supplier=lambda: [ahead])
    try:
        list(spec.run([Job(1, loss_code("a"), "train", 7, learning_rate=2e-5)]))
        _wait_for(lambda: spec.stats.dropped == 1)
        (result,) = list(spec.run([Job(3, loss_code("b"), "check", 7)]))
        assert result.ok and not result.machinery and result.job.row_id == 3
        assert [j.stage for j in inner.ran].count("check") == 2  # the failed one ran again when asked for
    finally:
        spec.close()


class Held(Recording):
    """Holds every job of row 1 or 2 until ``release`` is set."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.holding = 0

    def answer(self, job: Job) -> JobResult:
        if job.row_id in (1, 2):
            self.holding += 1
            self.release.wait(10)
        return super().answer(job)


def test_no_job_runs_ahead_while_every_worker_has_a_job_of_the_round() -> None:
    inner = Held(workers=2)
    spec = SpeculativeExecutor(inner, supplier=lambda: [Job(0, loss_code("b"), "check", 7)])
    try:
        results = spec.run([Job(1, loss_code("a"), "check", 7), Job(2, loss_code("c"), "check", 7)])
        thread = threading.Thread(target=lambda: list(results))
        thread.start()
        _wait_for(lambda: inner.holding >= 1)
        assert spec.stats.started == 0  # both workers have a job of the round (the pool holds both)
        inner.release.set()
        thread.join(10)
        assert spec.stats.started == 1  # a worker freed: the job ahead started then
    finally:
        spec.close()


class WaitingForProposals(Recording):
    """Holds each fine-tune of generation 1's row until the loop's lookahead has its proposals, so that the
    generation-2 work exists to run ahead (a deterministic schedule instead of a race with the proposer's thread)."""

    loop: Loop | None = None

    def answer(self, job: Job) -> JobResult:
        if job.stage == "train" and job.row_id == 3 and self.loop is not None:
            _wait_for(lambda: self.loop._ahead is not None and self.loop._ahead.ready is not None)
        return super().answer(job)


def _run(tmp_path: Path, executor: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], EventLog]:
    cfg, _ = compose(["baselines=[dpo,lrml]", "training.lr_grid=[1e-5,2e-5,4e-5]", "confirm.seeds=0",
                      "wandb.mode=disabled", "selection.max_seeds=2", "selection.reference_store=false", "seed=3"])
    scripts = {"a": Script(fitness={2e-5: 0.9, 4e-5: 0.95}), "b": Script(fitness={2e-5: 0.8}),
               "c": Script(fitness=0.7)}
    inner = executor(scripts)
    spec = SpeculativeExecutor(inner) if isinstance(inner, WaitingForProposals) else inner
    log = EventLog()
    tmp_path.mkdir(parents=True)
    proposer = ScriptedProposer({1: [candidate("a")], 2: [candidate("b")], 3: [candidate("c")]}, lookahead=1)
    loop = Loop(RunSettings.coerce(config(cfg, candidates_per_generation=1)), tmp_path, log, executor=spec,
                proposer=proposer, task_meta={"sft_heldout_reward": 0.8, "pairs": 64})
    if isinstance(inner, WaitingForProposals):
        inner.loop = loop
    try:
        loop.run(3)
        rows = [(r.id, r.name, r.generation, r.status, r.fitness, r.error,
                 {k: v for k, v in r.metrics.items() if k != "seconds"}) for r in loop.archive.rows()]
        evals = [(e.candidate_id, e.seed, e.split, e.learning_rate, e.fitness)
                 for r in loop.archive.rows() for e in loop.archive.evaluations(r.id)]
    finally:
        loop.archive.close()
    return rows, evals, log


def test_the_next_generation_is_checked_while_this_one_trains_and_the_archive_is_the_same(tmp_path: Path) -> None:
    """Event order on a scripted run (1 proposal a generation, 2 workers, so each round of a candidate's climb
    leaves a worker idle): generation 2's check runs ahead, before generation 1's row is decided, and the archive
    equals the one made without work ahead."""
    plain_rows, plain_evals, _ = _run(tmp_path / "plain", lambda s: Recording(s, workers=2))
    holder: dict[str, WaitingForProposals] = {}

    def make(scripts):
        holder["inner"] = WaitingForProposals(scripts, workers=2)
        return holder["inner"]

    rows, evals, log = _run(tmp_path / "ahead", make)
    inner = holder["inner"]
    b_code = loss_code("b")
    b_checks = [i for i, j in enumerate(inner.ran) if j.code == b_code and j.stage == "check"]
    a_trains = [i for i, j in enumerate(inner.ran) if j.row_id == 3 and j.stage == "train"]
    assert len(b_checks) == 1 and inner.ran[b_checks[0]].row_id == 0  # run ahead, never again under its row id
    assert b_checks[0] < a_trains[-1]  # while generation 1's row was still training
    b_screen = [j for j in inner.ran if j.code == b_code and j.stage == "train"]
    assert b_screen and b_screen[0].row_id == 0  # its screen ran ahead too, at the rate the cascade then asked:
    assert not [j for j in b_screen[1:] if (j.learning_rate, j.seed) == (b_screen[0].learning_rate, b_screen[0].seed)]
    notes = [e.text for e in log.events if type(e).__name__ == "Note" and e.text.startswith("work ahead")]
    assert notes and "used" in notes[0]
    assert (rows, evals) == (plain_rows, plain_evals)


class HoldsTheOtherScreen(Recording):
    """Holds row 4's first fine-tune (its screen) until row 3 has a second fine-tune (its climb) started (bounded),
    so that the test can see the climb run while the round that decides it is still open."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.saw_climb_ahead = False

    def _climb_started(self) -> bool:
        with self._lock:
            return sum(j.row_id == 3 and j.stage == "train" for j in self.ran) >= 2

    def answer(self, job: Job) -> JobResult:
        with self._lock:
            first = job.row_id == 4 and job.stage == "train" and sum(j.row_id == 4 and j.stage == "train"
                                                                     for j in self.ran) == 1
        if first:
            _wait_for(self._climb_started)
            self.saw_climb_ahead = self._climb_started()
        return super().answer(job)


def _lock_step(tmp_path: Path, inner: Recording, ahead: bool) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    cfg, _ = compose(["baselines=[dpo,lrml]", "training.lr_grid=[1e-5,2e-5,4e-5]", "confirm.seeds=0",
                      "wandb.mode=disabled", "selection.max_seeds=2", "selection.reference_store=false", "seed=3"])
    tmp_path.mkdir(parents=True)
    proposer = ScriptedProposer({1: [candidate("a"), candidate("b")]})  # lock step: no lookahead
    loop = Loop(RunSettings.coerce(config(cfg, candidates_per_generation=2)), tmp_path, EventLog(),
                executor=SpeculativeExecutor(inner) if ahead else inner, proposer=proposer,
                task_meta={"sft_heldout_reward": 0.8, "pairs": 64})
    try:
        loop.run(1)
        rows = [(r.id, r.name, r.status, r.fitness, {k: v for k, v in r.metrics.items() if k != "seconds"})
                for r in loop.archive.rows()]
        evals = [(e.candidate_id, e.seed, e.split, e.learning_rate, e.fitness)
                 for r in loop.archive.rows() for e in loop.archive.evaluations(r.id)]
    finally:
        loop.archive.close()
    return rows, evals


def test_a_rows_next_round_starts_as_soon_as_its_own_jobs_are_in_and_the_archive_is_the_same(tmp_path: Path) -> None:
    """Lock step (the evolution proposer's default): row 3 (``a``, best at a higher rate, so it climbs) gets its
    climb started while row 4's screen still holds the round open; every job is run once; same archive."""
    scripts = {"a": Script(fitness={2e-5: 0.9, 4e-5: 0.95}), "b": Script(fitness={2e-5: 0.5})}
    plain = _lock_step(tmp_path / "plain", Recording(scripts, workers=2), ahead=False)
    inner = HoldsTheOtherScreen(scripts, workers=2)
    assert _lock_step(tmp_path / "ahead", inner, ahead=True) == plain
    assert inner.saw_climb_ahead
    keys = [job_key(j) for j in inner.ran]
    assert len(keys) == len(set(keys))  # nothing ran twice: the climb run ahead was the one the round asked for


def test_a_racing_rows_following_seed_runs_beside_its_current_one(tmp_path: Path) -> None:
    """One racing row (k = 1, 2 workers): while seed 2 of its race runs, the idle worker runs seed 3, which the
    race then asks for (it stays in contention); the archive is the one made without work ahead."""
    cfg, _ = compose(["baselines=[dpo,lrml]", "training.lr_grid=[2e-5]", "confirm.seeds=0", "wandb.mode=disabled",
                      "selection.max_seeds=3", "selection.reference_store=false", "seed=3"])
    scripts = {"a": Script(fitness=0.9)}
    out = []
    for ahead in (False, True):
        inner = Recording(scripts, workers=2)
        executor = SpeculativeExecutor(inner) if ahead else inner
        (tmp_path / str(ahead)).mkdir()
        loop = Loop(RunSettings.coerce(config(cfg, candidates_per_generation=1)), tmp_path / str(ahead), EventLog(),
                    executor=executor, proposer=ScriptedProposer({1: [candidate("a")]}),
                    task_meta={"sft_heldout_reward": 0.8, "pairs": 64})
        try:
            loop.run(1)
            row = loop.archive.rows_of_generation(1)[0]
            evals = [(e.seed, e.fitness) for e in loop.archive.evaluations(row.id)]
            out.append((row.fitness, row.metrics["race"], evals))
        finally:
            loop.archive.close()
        seeds = [j.seed for j in inner.ran if j.row_id == row.id and j.stage == "train"]
    assert out[0] == out[1] and out[0][1]["n"] == 3
    assert sorted(seeds) == sorted(set(seeds)) and len(seeds) == 3  # each seed once
    assert executor.stats.hits >= 1
