"""Progress in fine-tunes (issue 30, item 4): the display counts fine-tunes, names the phase, shows every
running job and an ETA from measured rates, and prints plain lines at an interval without a terminal."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from scripted_executor import Script, ScriptedExecutor, ScriptedProposer, candidate, loss_code
from scripted_executor import config_with as config

from discopop.archive import Row
from discopop.config import RunSettings
from discopop.config.compose import compose
from discopop.execution.executors import Job, JobResult
from discopop.execution.observed import ObservedExecutor
from discopop.report.display import PRIOR_PER_CANDIDATE, Display
from discopop.search import events
from discopop.search.loop import Loop


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _row(row_id: int, name: str) -> Row:
    return Row(id=row_id, generation=0, parent_ids=[], proposer="reference", name=name, thought="", code="",
               code_hash="", status="proposed", error=None, fitness=None, metrics={}, created_at="", finished_at=None)


def test_counts_fine_tunes_shows_every_running_job_and_an_eta_from_the_measured_rate() -> None:
    clock = Clock()
    display = Display(3, console=Console(file=io.StringIO()), quiet=True, confirm_fine_tunes=10, clock=clock)
    assert display.status_line().startswith("[starting]"), "before the loop names a phase (task build, workers)"
    display.set_generation("references")
    display.stage(_row(1, "dpo"), "train")
    display.stage(_row(2, "ipo\x1b[2J"), "train")
    jobs = [Job(1, "", "train", 0, learning_rate=lr) for lr in (1e-5, 2e-5)]
    jobs.append(Job(2, "", "train", 0, learning_rate=1e-5))
    display.jobs_queued([Job(2, "", "check", 0), *jobs], parallelism=2)
    assert display.fine_tunes_queued == 3, "checks are not fine-tunes"
    running = display.running()
    assert len(running) == 2 and "checks" in running[0] and "#1 dpo: fine-tune lr 1e-05" in running[1]
    # 3 queued + 1 candidate not started x the prior + the confirmation's 10
    assert display.expected_total() == 3 + round(PRIOR_PER_CANDIDATE) + 10
    assert display.eta() is None, "no rate measured yet"
    display.job_done(JobResult(Job(2, "", "check", 0), True, "check"))
    clock.now += 10
    display.job_done(JobResult(jobs[0], True, "train"))
    assert display.eta() is None, "one finished fine-tune starts the clock; a rate needs a second"
    clock.now += 20
    display.job_done(JobResult(jobs[1], True, "train"))
    assert display.fine_tunes_done == 2
    assert [label.split(":")[0] for label in display.running()] == ["#2 ipo\x1b[2J"]
    left = display.expected_total() - 2
    assert display.eta() == pytest.approx(left * 20.0)
    display.finished(_row(1, "dpo"), "scored", 0.5, None)  # dpo cost 2 fine-tunes: the rate per candidate
    assert display.per_candidate() == 2.0
    line = display.status_line()
    assert line.startswith("[references] fine-tunes 2/~") and "\x1b" not in line and "running 1" in line
    display.set_generation("confirmation")
    assert display.expected_total() < 3 + round(PRIOR_PER_CANDIDATE) + 10, "the confirmation's share is queued now"


def test_without_a_terminal_a_plain_line_comes_at_an_interval() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)
    with Display(2, console=console, interval=0.02) as display:
        display.jobs_queued([Job(1, "", "train", 0, learning_rate=1e-5)], parallelism=1)
        deadline = time.monotonic() + 10
        while out.getvalue().count("fine-tunes") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    lines = [line for line in out.getvalue().splitlines() if "fine-tunes" in line]
    assert len(lines) >= 2, "repeated while nothing else happens (a long fine-tune)"
    assert lines[0].startswith("[starting] fine-tunes 0/~") and "running 1: #1" in lines[0]


def test_observed_executor_reports_every_job_and_result() -> None:
    seen: list[tuple[str, Any]] = []

    class Watcher:
        def jobs_queued(self, jobs: list[Job], parallelism: int) -> None:
            seen.append(("queued", (len(jobs), parallelism)))

        def job_done(self, result: JobResult) -> None:
            seen.append(("done", result.job.row_id))

    inner = ScriptedExecutor(workers=3)
    executor = ObservedExecutor(inner, Watcher())
    jobs = [Job(i, loss_code(f"l{i}"), "check", 0) for i in (1, 2)]
    results = list(executor.run(jobs))
    assert len(results) == 2 and executor.parallelism == 3
    assert seen[0] == ("queued", (2, 3)) and sorted(v for k, v in seen[1:]) == [1, 2]


class Recorder(Display):
    def __init__(self) -> None:
        super().__init__(0, console=Console(file=io.StringIO(), width=200), quiet=True)
        self.phases: list[str] = []
        self.train_jobs: dict[str, int] = {}

    def set_generation(self, label: str) -> None:
        super().set_generation(label)
        self.phases.append(label)

    def jobs_queued(self, jobs: list[Job], parallelism: int) -> None:
        super().jobs_queued(jobs, parallelism)
        for job in jobs:
            if job.stage == "train":
                self.train_jobs[self.generation] = self.train_jobs.get(self.generation, 0) + 1


def test_the_loop_names_each_phase_and_every_fine_tune_reaches_the_display(tmp_path: Path) -> None:
    cfg, _ = compose(["baselines=[dpo,lrml]", "training.lr_grid=[1e-5,2e-5,4e-5]", "confirm.seeds=2",
                      "confirm.top_k=1", "confirm.references=1", "wandb.mode=disabled", "selection.max_seeds=1",
                      "selection.reference_store=false"])
    executor = ScriptedExecutor(workers=2)
    display = Recorder()
    loop = Loop(RunSettings.coerce(config(cfg, candidates_per_generation=2)), tmp_path, display, executor=executor,
                proposer=ScriptedProposer({1: [candidate("a"), candidate("b")], 2: [candidate("c")]}),
                task_meta={"sft_heldout_reward": 0.8, "pairs": 64})
    try:
        loop.run(2)
    finally:
        loop.archive.close()
    assert display.phases == ["references", "generation 1/2", "generation 2/2", "confirmation"]
    assert display.fine_tunes_done == len(executor.jobs("train")) == sum(display.train_jobs.values())
    assert set(display.train_jobs) == {"references", "generation 1/2", "generation 2/2", "confirmation"}


def test_the_transfer_confirmation_counts_its_fine_tunes_too(tmp_path: Path) -> None:
    """The held-out variant's fine-tunes run on their own executor: they must reach the progress count as well."""
    cfg, _ = compose(["baselines=[dpo,lrml]", "training.lr_grid=[2e-5]", "confirm.seeds=2", "confirm.top_k=1",
                      "confirm.references=1", "wandb.mode=disabled", "selection.max_seeds=1",
                      "selection.reference_store=false", "confirm.transfer=[hardflip]"])
    executor, variant_executors = ScriptedExecutor(workers=2), []

    def for_variant(name: str, task: dict) -> ScriptedExecutor:
        variant_executors.append(ScriptedExecutor(workers=2))
        return variant_executors[-1]

    display = Recorder()
    loop = Loop(RunSettings.coerce(config(cfg, candidates_per_generation=1)), tmp_path, display, executor=executor,
                proposer=ScriptedProposer({1: [candidate("a")]}), transfer_executor=for_variant,
                task_meta={"sft_heldout_reward": 0.8, "pairs": 64})
    try:
        loop.run(1)
    finally:
        loop.archive.close()
    transfer_jobs = sum(len(e.jobs("train")) for e in variant_executors)
    assert transfer_jobs > 0 and "confirming transfer to held-out variants" in display.phases
    assert display.fine_tunes_done == len(executor.jobs("train")) + transfer_jobs


def test_a_resumed_run_counts_only_the_rows_still_ahead(tmp_path: Path) -> None:
    from discopop.archive import Archive
    from discopop.cli.main import candidates_ahead
    from discopop.config import RunSettings

    cfg = RunSettings.coerce(compose(["baselines=[dpo,lrml]", "generations=3", "candidates_per_generation=2"])[0])
    assert candidates_ahead(cfg, tmp_path, resumed=False) == 2 + 3 * 2
    arch = Archive(tmp_path / "archive.sqlite")
    for name in ("dpo", "lrml", "a"):
        arch.finish(arch.add(candidate(name), generation=0), "scored", fitness=0.5, metrics={})
    arch.add(candidate("b"), generation=1)  # still proposed: re-run, so still ahead
    arch.close()
    assert candidates_ahead(cfg, tmp_path, resumed=True) == 2 + 3 * 2 - 3


def _projection(event: events.Event) -> tuple[Any, ...]:
    """An event in the words a test can list: its type and the fields that do not depend on timing."""
    match event:
        case events.CandidateFinished():
            return ("finished", event.name, event.status)
        case events.GenerationFinished():
            return ("generation done", event.generation, event.candidates, event.scored)
        case events.ConfirmationVerdict():
            return ("verdict", event.candidate, event.baseline, event.role)
        case events.RunStarted():
            return ("run", event.generations, event.seed, event.resumed_after)
        case events.RunFinished():
            return ("end", event.stopped)
        case events.ResultsReady():
            return ("results", sorted(r.name for r in event.rows))
    return (type(event).__name__, *(getattr(event, f) for f in ("label", "text") if hasattr(event, f)))


def test_a_tiny_run_reports_the_expected_events_in_order(tmp_path: Path) -> None:
    """The loop's whole say, through an ``EventLog``: phases, outcomes, generations, verdicts, results, end; the
    numbers it reports are the archive's (issue 27 item 5: the loop reports events, displays decide)."""
    cfg, _ = compose(["baselines=[dpo,lrml]", "training.lr_grid=[2e-5]", "confirm.seeds=2", "confirm.top_k=1",
                      "confirm.references=1", "wandb.mode=disabled", "selection.max_seeds=1",
                      "selection.reference_store=false", "seed=3"])
    log = events.EventLog()
    executor = ScriptedExecutor({"a": Script(fitness=0.6), "b": Script(check_error="no gradient"),
                                 "c": Script(fitness=0.7)}, workers=1)
    loop = Loop(RunSettings.coerce(config(cfg, candidates_per_generation=2)), tmp_path, log, executor=executor,
                proposer=ScriptedProposer({1: [candidate("a"), candidate("b")], 2: [candidate("c")]}),
                task_meta={"sft_heldout_reward": 0.8, "pairs": 64})
    try:
        loop.run(2)
        rows = {r.name: r for r in loop.archive.rows()}
    finally:
        loop.archive.close()
    said = [_projection(e) for e in log.events
            if not isinstance(e, events.JobsQueued | events.JobReturned | events.CandidateStage)]
    rescore = ("Note", "re-scoring the top 1, DPO and the 1 best baselines on 2 fresh seeds and the held-back prompts")
    assert said == [
        ("run", 2, 3, 0), ("Note", "starting sandboxed workers (torch, transformers and TRL load once per worker)"),
        ("PhaseStarted", "references"), ("finished", "dpo", "scored"), ("finished", "lrml", "scored"),
        ("PhaseFinished", "references"),
        ("PhaseStarted", "generation 1/2"), ("finished", "a", "scored"), ("finished", "b", "invalid"),
        ("generation done", 1, 2, 1), ("PhaseFinished", "generation 1/2"),
        ("PhaseStarted", "generation 2/2"), ("finished", "c", "scored"), ("generation done", 2, 1, 1),
        ("PhaseFinished", "generation 2/2"),
        ("PhaseStarted", "confirmation"), rescore, *[("verdict", e.candidate, e.baseline, e.role)
                                                     for e in log.of(events.ConfirmationVerdict)],
        ("PhaseFinished", "confirmation"),  # the default transfer variants need an executor a stand-in lacks
        ("RunWarning", "transfer not confirmed: an injected executor and no executor for the variants"),
        ("results", ["a", "b", "c", "dpo", "lrml"]), ("end", None)]
    verdicts = log.of(events.ConfirmationVerdict)
    assert verdicts and {v.role for v in verdicts} <= {"vs_dpo", "vs_best"}
    assert {v.candidate for v in verdicts} == {max(("a", "c"), key=lambda n: rows[n].fitness)}
    for event in log.of(events.CandidateFinished):  # the numbers shown are the ones archived
        row = rows[event.name]
        assert (event.row_id, event.generation, event.fitness, event.error) == (row.id, row.generation, row.fitness,
                                                                                 row.error)
        assert event.reward == row.metrics.get("reward") and event.kl == row.metrics.get("kl")
    best = [e.best_fitness for e in log.of(events.CandidateFinished)]
    assert best == [max((f for f in (e.fitness for e in log.of(events.CandidateFinished)[:i + 1]) if f is not None),
                        default=None) for i in range(len(best))]
    trains = [j for e in log.of(events.JobsQueued) for j in e.jobs if j.stage == "train"]
    assert len(trains) == len(executor.jobs("train")) == sum(
        1 for e in log.of(events.JobReturned) if e.result.job.stage == "train")
