"""The evaluation cascade for archived candidates, cheap to costly, first failure stops:

1. static check (AST only, in this process: nothing is executed);
2. duplicate by normalised code hash;
3. numeric checks in a sandboxed worker (returns the behaviour fingerprint and diagnostics);
4. duplicate by training behaviour: the same fingerprint as an archived row, up to a positive
   factor (so a rescaled loss or one with an added constant is a duplicate and costs no training);
4b. the cheap stages of ``fidelity`` (when ``cascade.stages`` names any): a diagnostic-bandit score and/or a
   short fine-tune; a stage whose rank agreement with the full protocol is shown rejects candidates below
   its cut, any other only orders the work;
5. short DPO fine-tunes + held-out scoring in a sandboxed worker, over the learning-rate protocol
   of ``tuning`` (a screen at one rate, the climb over the grid only for candidates near the best;
   references climb from the grid's middle, the same search a passing candidate gets; with
   ``training.beta_grid`` the grid points are (rate, beta) pairs, for references and candidates alike);
6. the seed race of ``seed_race``: extra search seeds at the chosen rate while a row is in
   contention for the top k (references: all of them), archived per seed and summarised in
   ``metrics.race``. The row stays ``proposed`` until its race ends, so a crash re-runs it whole.

A reference's fine-tunes (steps 5-6) come from the shared result store (``fitness.result_store``)
when an earlier run with the same settings made them: the stored reply is used as if the job had
run, and the row says so (``metrics.cached`` true, ``metrics.cached_runs``: how many came from the
store; its ``seconds`` count only the fine-tunes run now). Each one the store lacks runs and is stored.

Each outcome is written to the archive as soon as it is known.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from discopop.archive import Archive, Evaluation, Row
from discopop.contract.losses import LossRejected, code_hash, static_check
from discopop.execution.executors import Executor, Job, JobResult
from discopop.fitness.result_store import StoredRuns
from discopop.fitness.tuning import LrProtocol, Point, Sweep, split_fitness
from discopop.search import seed_race
from discopop.search.fidelity import Fidelity
from discopop.search.history import seed_scores
from discopop.status import Status

# Two fingerprints (unit vectors of policy gradients, see ``checks.fingerprint``) with cosine
# >= 1 - FINGERPRINT_TOL are the same training behaviour. For unit vectors 1 - cos ~ |a - b|^2 / 2.
# The same loss written another way (softplus for -logsigmoid, rho summed in another order, times
# 100, plus 3) differs only by float32 round-off: ~1e-6 relative per entry (eps 1.2e-7, a few ops)
# plus the stored rounding (5e-8 an entry), so |a - b| <~ 1e-5 and 1 - cos <~ 1e-10 (measured:
# under 1e-13). A genuinely different loss is far above: DPO with beta 1% larger gives 3e-6,
# with beta doubled 1e-2, IPO 0.26. 1e-7 sits three orders above the round-off, 30x below a 1% beta.
FINGERPRINT_TOL = 1e-7


@dataclass
class Race:
    """A row's extra search seeds at its chosen learning rate (``seed_race``); the search seed comes first."""

    learning_rate: float
    seeds: list[int]
    values: list[float | None]  # fitness per seed, None where that fine-tune failed
    failed: str | None = None  # the first failed seed's reason: the race stops there (no retries)
    beta: float | None = None  # the chosen beta (None: the beta axis is off, the run's training.beta)
    picks: list[float | None] = field(default_factory=list)  # held-out fitness per seed (selection.pick_holdout)

    def add(self, seed: int, fitness: float | None, error: str | None, pick: float | None = None) -> None:
        self.seeds.append(seed)
        ok = error is None and fitness is not None and math.isfinite(fitness)
        self.values.append(float(fitness) if ok else None)
        self.picks.append(float(pick) if ok and pick is not None and math.isfinite(pick) else None)
        if not ok and self.failed is None:
            self.failed = f"seed {seed}: {error or 'non-finite fitness'}"


@dataclass
class Outcome:
    row_id: int
    status: str
    fitness: float | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _unit(fingerprint: list[float] | None) -> np.ndarray | None:
    """The fingerprint renormalised (rounding left it a hair off unit length); None if there is none."""
    if not fingerprint:
        return None
    vec = np.asarray(fingerprint, dtype=np.float64)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 and math.isfinite(norm) else None


def _point(row: Row) -> Point:
    """The (learning rate, beta) a scored row chose (beta None: it ran at the run's training.beta)."""
    beta = row.metrics.get("beta")
    return float(row.metrics["learning_rate"]), None if beta is None else float(beta)


def same_behaviour(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a positive factor (cosine within FINGERPRINT_TOL of 1); a negative factor is not."""
    return a.shape == b.shape and float(a @ b) >= 1.0 - FINGERPRINT_TOL


class Evaluator:
    """Runs the cascade for a batch of archived ``proposed`` rows through an executor."""

    def __init__(self, archive: Archive, executor: Executor, seed: int, protocol: LrProtocol,
                 on_stage: Callable[[Row, str], None] | None = None, race: seed_race.RacePolicy | None = None,
                 store: StoredRuns | None = None, fidelity: Fidelity | None = None):
        self.archive = archive
        self.fidelity = fidelity  # the cheap stages before the full protocol (None: none)
        self._cheap: dict[int, dict[str, Any]] = {}  # row id -> its cheap-stage results, archived with its fate
        self.executor = executor
        self.store = store  # where references' fine-tunes are looked up first (None: always trained)
        self.seed = seed
        self.protocol = protocol
        self.on_stage = on_stage or (lambda row, stage: None)
        self.race = race or seed_race.RacePolicy()
        # Told each row's next-round jobs as soon as they are known (``_next_round_ahead``); None: not asked.
        self.on_ahead: Callable[[list[Job]], None] | None = None
        if race is not None:  # readers of the archive (history, confirmation) rank with the same policy
            archive.set_state(seed_race.STATE_KEY, self.race.as_dict())

    def _finish(self, row: Row, status: str, *, fitness=None, error=None, stage=None, seconds=None,
                extra=None, evaluations: list[Evaluation] | None = None) -> Outcome:
        """Archive the row's fate, with its training evaluations (one per fine-tune) in the same transaction."""
        metrics: dict[str, Any] = dict(extra or {})
        if row.id in self._cheap:
            metrics["fidelity"] = self._cheap.pop(row.id)
        if stage:
            metrics["stage"] = stage
        if seconds:
            metrics["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
        self.archive.finish(row.id, status, fitness=fitness, error=error, metrics=metrics,
                            evaluations=evaluations or [])
        return Outcome(row.id, status, fitness, error, metrics)

    def _known_behaviours(self) -> dict[int, tuple[str, float, np.ndarray]]:
        """Fingerprints of every archived row that has one: id -> (name, beta, unit vector)."""
        found = {}
        for r in self.archive.finished_rows():
            checks = r.metrics.get("checks") or {}
            vec = _unit(checks.get("fingerprint"))
            if vec is not None:
                found[r.id] = (r.name, float(checks.get("beta", 0.0)), vec)
        return found

    @staticmethod
    def _twin(checks: dict[str, Any], known: dict[int, tuple[str, float, np.ndarray]]) -> tuple[int, str] | None:
        """The earliest known row with the same training behaviour (measured at the same beta)."""
        vec = _unit(checks.get("fingerprint"))
        if vec is None:
            return None
        beta = float(checks.get("beta", 0.0))
        for row_id in sorted(known):
            name, other_beta, other = known[row_id]
            if other_beta == beta and same_behaviour(vec, other):
                return row_id, name
        return None

    def evaluate(self, rows: list[Row]) -> Iterator[Outcome]:
        """Evaluate rows (each ``proposed``); yield each outcome as soon as it is archived."""
        started: dict[int, float] = {}
        seconds: dict[int, dict[str, float]] = {}
        checks_of: dict[int, dict[str, Any]] = {}
        to_check: list[Row] = []
        in_batch: dict[str, Row] = {}  # code hash -> the batch's first row with it
        for row in rows:
            started[row.id] = time.perf_counter()
            seconds[row.id] = {}
            self.on_stage(row, "static")
            try:
                static_check(row.code)
            except LossRejected as err:
                yield (self._finish(row, Status.INVALID, error=f"static check: {err}", stage="static"))
                continue
            digest = code_hash(row.code)
            # An earlier row of this batch counts too (it is still ``proposed``, so the archive skips it):
            # identical code checks and trains identically, so only the first is run.
            twin = self.archive.find_hash(digest) or in_batch.setdefault(digest, row)
            if twin.id != row.id:
                yield (self._finish(row, Status.DUPLICATE, error=f"same code as #{twin.id} ({twin.name})",
                                             stage="static"))
                continue
            to_check.append(row)
        by_id = {row.id: row for row in rows}
        for row in to_check:
            self.on_stage(row, "check")
        to_train: list[Row] = []
        known = self._known_behaviours()  # plus this batch's rows as they pass: a twin waiting to train counts
        # Results in row order, not finishing order: of two behaviour twins in one batch, the earlier row is kept.
        checked = self.executor.run([Job(r.id, r.code, "check", self.seed) for r in to_check])
        for result in sorted(checked, key=lambda r: r.job.row_id):
            row = by_id[result.job.row_id]
            seconds[row.id]["check"] = result.seconds
            if not result.ok:
                status = Status.INVALID
                yield (self._finish(row, status, error=f"{result.stage} check: {result.error}",
                                             stage=result.stage, seconds=self._total(seconds, started, row.id)))
                continue
            checks_of[row.id] = result.checked.checks
            twin = self._twin(checks_of[row.id], known)
            vec = _unit(checks_of[row.id].get("fingerprint"))
            if vec is not None:
                known[row.id] = (row.name, float(checks_of[row.id].get("beta", 0.0)), vec)
            if twin is not None:
                yield (self._finish(row, Status.DUPLICATE, error=f"same training behaviour as #{twin[0]} ({twin[1]})",
                                    stage="numeric", seconds=self._total(seconds, started, row.id),
                                    extra={"checks": checks_of[row.id]}))
                continue
            self.on_stage(row, "train")
            to_train.append(row)
        if self.fidelity is not None and to_train:
            to_train = yield from self._cheap_stages(to_train, seconds, started, checks_of)
        yield from self._train(to_train, seconds, started, checks_of)

    def _cheap_stages(self, rows: list[Row], seconds, started, checks_of) -> Iterator[Outcome]:
        """Run ``fidelity``'s stages in order; yield each rejected row's outcome; return the rest, ordered."""
        fidelity = self.fidelity
        for stage in fidelity.stages:
            if not rows:
                break
            for row in rows:
                self.on_stage(row, stage)
            cut = fidelity.cut(stage, self.archive)  # from finished rows only: the same whatever the batch
            results = fidelity.score(stage, rows, self._cheap_rate)
            by_id = {row.id: row for row in rows}
            for row in rows:
                result = results.get(row.id)
                if result is not None:
                    self._cheap.setdefault(row.id, {})[stage] = {**result.as_dict(),
                                                                 "filters": fidelity.filters[stage]}
                    seconds[row.id][stage] = result.seconds
            rows, rejected = fidelity.decide(stage, rows, results, cut)
            for row_id, why in sorted(rejected.items()):
                yield self._finish(by_id[row_id], Status.EVAL_FAILED, error=f"filtered: {why}", stage="fidelity",
                                   seconds=self._total(seconds, started, row_id), extra={"checks": checks_of[row_id]})
        return rows

    def _train_jobs(self, row: Row, points: list[Point]) -> list[Job]:
        return [Job(row.id, row.code, "train", self.seed, learning_rate=lr, beta=beta,
                    tune_seeds=self.protocol.tune_seeds) for lr, beta in points]

    def _screen_points(self, row: Row) -> list[Point]:
        """The first points a row is trained at: one screen (references: the grid's middle), or the whole
        grid for every row when there is no screening rule."""
        return self.screen_points_of(row.proposer, row.parent_ids)

    def screen_points_of(self, proposer: str, parent_ids: list[int]) -> list[Point]:
        """``_screen_points`` of a row by ``proposer`` with these parents (also of a proposal not archived yet)."""
        protocol = self.protocol
        if not protocol.screens:
            return protocol.points()
        if proposer == "reference":
            return [protocol.default_point()]
        parents = [p for p in (self.archive.get(i) for i in parent_ids) if p is not None]
        parent_points = [_point(p) for p in parents if p.metrics.get("learning_rate")]
        run_points = [_point(r) for r in self.archive.scored_rows()
                      if r.metrics.get("learning_rate")]
        return [protocol.screen_point(parent_points, run_points)]

    def first_job_ahead(self, proposer: str, parent_ids: list[int], code: str, checks: dict[str, Any]) -> Job | None:
        """The first fine-tune a checked proposal not archived yet will be asked for, as the archive stands now
        (``search.work_ahead`` runs it on an idle worker): its short stage when that comes first, else its
        screen; None for a behaviour twin of an archived row, a first stage that is no fine-tune on the run's task,
        or a whole grid (no screening rule)."""
        if self._twin(checks, self._known_behaviours()) is not None:
            return None
        points = self.screen_points_of(proposer, parent_ids)
        if self.fidelity is not None and self.fidelity.stages:
            if self.fidelity.stages[0] != "short":
                return None
            rate, fraction = points[0][0] if len(points) == 1 else self.protocol.default(), self.fidelity.settings
            return Job(0, code, "train", self.seed, learning_rate=rate, step_fraction=fraction.short_fraction)
        if len(points) != 1:
            return None
        lr, beta = points[0]
        return Job(0, code, "train", self.seed, learning_rate=lr, beta=beta, tune_seeds=self.protocol.tune_seeds)

    def _cheap_rate(self, row: Row) -> float:
        """The rate of a row's short stage: its screen rate (the grid's middle when the whole grid is its screen)."""
        points = self._screen_points(row)
        return points[0][0] if len(points) == 1 else self.protocol.default()

    def _run_round(self, jobs: list[Job], rows: dict[int, Row]) -> Iterator[JobResult]:
        """One round's results as they come: a reference's fine-tune from the store when it holds it (no executor
        call), every other job through the executor, a reference's result stored as soon as it finishes."""
        if self.store is None:
            yield from self.executor.run(jobs)
            return
        todo: list[Job] = []
        for job in jobs:
            row = rows[job.row_id]
            found = self.store.lookup(job, code_hash(row.code)) if row.proposer == "reference" else None
            if found is not None:
                yield found
            else:
                todo.append(job)
        if todo:
            for result in self.executor.run(todo):
                row = rows[result.job.row_id]
                if row.proposer == "reference":
                    self.store.save(result, code_hash(row.code))
                yield result

    def _best_fitness(self) -> float | None:
        values = [r.fitness for r in self.archive.scored_rows() if r.fitness is not None]
        return max(values) if values else None

    def _train(self, rows: list[Row], seconds, started, checks_of) -> Iterator[Outcome]:
        """Fine-tune each row over the learning-rate protocol (``tuning``), then race it over extra seeds
        (``seed_race``); yield each outcome when decided.

        Rounds: every row's first rates (a screen, or the whole grid for references), then the climb
        for rows near the best, then extra seeds at the chosen rate while a row is in contention; each
        round is one ``executor.run`` so parallel workers share it, whatever phase each row is in.
        """
        sweeps = {row.id: Sweep() for row in rows}
        races: dict[int, Race] = {}
        cached: dict[int, int] = {}  # row id -> its fine-tunes that came from the store
        pending = {row.id: self._train_jobs(row, self._screen_points(row)) for row in rows}
        full_grid = {row_id for row_id, jobs in pending.items() if len(jobs) == len(self.protocol.points())}
        screened: set[int] = set()
        by_id = {row.id: row for row in rows}
        def order(r: JobResult) -> tuple:
            return r.job.row_id, r.job.learning_rate or 0.0, r.job.beta or 0.0, r.job.seed

        while pending:
            jobs = [j for row_jobs in pending.values() for j in row_jobs]
            done: list[JobResult] = []
            left = {row_id: len(row_jobs) for row_id, row_jobs in pending.items()}
            if self.on_ahead is not None:  # a racing row's following seed: wanted unless this one ends its race
                self.on_ahead([job for row_id in pending if row_id in races
                               for job in self._race_seed_after(by_id[row_id], races[row_id], pending[row_id])])
            for result in self._run_round(jobs, by_id):
                done.append(result)
                left[result.job.row_id] -= 1
                if self.on_ahead is not None and not left[result.job.row_id]:  # this row's round is over
                    row_id = result.job.row_id
                    mine = sorted((r for r in done if r.job.row_id == row_id), key=order)
                    self.on_ahead(self._next_round_ahead(by_id[row_id], sweeps[row_id], races.get(row_id), mine,
                                                         row_id in screened, row_id in full_grid))
            done.sort(key=order)
            for result in done:  # in job order, so each row's evaluations are archived in the same order every run
                row_id, job = result.job.row_id, result.job
                if result.cached:
                    cached[row_id] = cached.get(row_id, 0) + 1
                self._absorb(sweeps[row_id], races.get(row_id), result)
                sweeps[row_id].evaluations.append(
                    Evaluation.from_reply(row_id, job.seed, job.split, result.trained) if result.ok else
                    Evaluation(row_id, job.seed, job.split, job.learning_rate, error=result.error or result.stage))
                seconds[row_id]["train"] = seconds[row_id].get("train", 0.0) + result.seconds
            best = self._best_fitness()
            contest = self._race_contest() if self.race.enabled else None
            decided, pending = list(pending), {}
            for row_id in decided:
                sweep, row = sweeps[row_id], by_id[row_id]
                jobs, race = self._next_round(row, sweep, races.get(row_id), row_id in screened,
                                              row_id in full_grid, best, contest)
                screened.add(row_id)
                if race is not None:
                    races[row_id] = race
                if jobs:
                    pending[row_id] = jobs
                else:
                    yield self._record_training(row, sweep, seconds, started, checks_of[row_id], races.get(row_id),
                                                cached.get(row_id, 0))

    def _absorb(self, sweep: Sweep, race: Race | None, result: JobResult) -> None:
        """One fine-tune's result into its row's state: a race seed while the row races, else a protocol point."""
        job = result.job
        if race is not None:
            race.add(job.seed, self.protocol.rank(result.trained) if result.ok else None,
                     None if result.ok else f"{result.stage}: {result.error}",
                     self.protocol.pick(result.trained) if result.ok else None)
        else:
            sweep.add(job.learning_rate, result.ok, result.trained if result.ok else None, result.stage,
                      result.error, beta=job.beta, cached=result.cached)

    def _next_round(self, row: Row, sweep: Sweep, race: Race | None, screened: bool, full_grid: bool,
                    best: float | None, contest: tuple[float, float] | None) -> tuple[list[Job], Race | None]:
        """The row's jobs for the next round and its race (a new one when the protocol has just finished), or no
        jobs when the row is decided. The one place this decision lives: ``_train`` acts on it and work ahead
        (``_next_round_ahead``) asks it on copies. Marks ``sweep.tuned`` once the protocol counts the row as tuned:
        the whole grid (references) or a screen worth a climb."""
        if race is not None:
            return self._race_jobs(row, race, contest), race
        points: list[Point] = []
        if full_grid:
            sweep.tuned = True
        elif not screened:  # the screen just finished: is the candidate worth a climb?
            if sweep.results and (row.proposer == "reference" or self.protocol.worth_tuning(
                    split_fitness(sweep.best()[1])[0], best)):
                sweep.tuned = True
                points = self.protocol.next_points(sweep)
        else:
            points = self.protocol.next_points(sweep)
        if points:
            return self._train_jobs(row, points), None
        start = self._race_start(sweep) if contest is not None else None
        return (self._race_jobs(row, start, contest), start) if start is not None else ([], None)

    def _next_round_ahead(self, row: Row, sweep: Sweep, race: Race | None, results: list[JobResult],
                          screened: bool, full_grid: bool) -> list[Job]:
        """The jobs ``row`` will get in the next round, known as soon as its own jobs of this round are in (the
        decision reads only the row's results and the archive, which no row changes before the round ends): an idle
        worker may run them now (``search.work_ahead``). ``_next_round`` on copies, so nothing here changes the run.
        References: none (their jobs may come from the store)."""
        if row.proposer == "reference":
            return []
        sweep = Sweep(results=dict(sweep.results), errors=dict(sweep.errors), cached=set(sweep.cached),
                      tuned=sweep.tuned)
        race = None if race is None else Race(race.learning_rate, list(race.seeds), list(race.values), race.failed,
                                              race.beta, list(race.picks))
        for result in results:
            self._absorb(sweep, race, result)
        contest = self._race_contest() if self.race.enabled else None
        return self._next_round(row, sweep, race, screened, full_grid, self._best_fitness(), contest)[0]

    def _race_seed_after(self, row: Row, race: Race, running: list[Job]) -> list[Job]:
        """The seed a racing row runs after the ones of this round, if the race goes on (a guess: an idle worker
        may run it, ``search.work_ahead``; if the race stops instead, only that worker's idle time is spent)."""
        if row.proposer == "reference" or race.failed or not running:
            return []
        remaining = self.race.extra_seeds(self.seed)[len(race.seeds) - 1:]
        if len(remaining) <= len(running):
            return []
        return [Job(row.id, row.code, "train", remaining[len(running)], learning_rate=race.learning_rate,
                    beta=race.beta)]

    def _race_start(self, sweep: Sweep) -> Race | None:
        """A row whose protocol found a finite best enters the race with that run as its first seed."""
        best, ranked = sweep.best_point(), self._ranked_fitness(sweep)
        if best is None or ranked is None or not math.isfinite(ranked):
            return None
        return Race(best[0][0], [self.seed], [ranked], beta=best[0][1], picks=[_finite(self.protocol.pick(best[1]))])

    def _ranked_fitness(self, sweep: Sweep) -> float | None:
        """The row's fitness at its chosen point: the protocol's ranking prompts (their selection half with
        ``selection.pick_holdout``)."""
        if not self.protocol.pick_holdout:
            return sweep.ranked_fitness()
        best = sweep.best()
        return None if best is None else self.protocol.rank(best[1])

    def _race_contest(self) -> tuple[float, float]:
        """The bar a racing row must reach (k-th best lower bound of the archived scored rows) and the noise."""
        scores = [s for r in self.archive.scored_rows() if (s := seed_scores(r)) is not None]
        noise = seed_race.pooled_noise(scores, self.race.noise_prior)
        return seed_race.kth_lower(scores, self.race, noise), noise

    def _race_jobs(self, row: Row, race: Race, contest: tuple[float, float] | None) -> list[Job]:
        """The extra seeds this row runs next (none once out of contention, at the cap, or after a failure)."""
        if contest is None or race.failed:
            return []
        bar, noise = contest
        scores = seed_race.SeedScores(tuple(v for v in race.values if v is not None))
        count = seed_race.seeds_wanted(scores, len(race.seeds), row.proposer == "reference", bar, self.race, noise)
        todo = self.race.extra_seeds(self.seed)[len(race.seeds) - 1:][:count]
        return [Job(row.id, row.code, "train", seed, learning_rate=race.learning_rate, beta=race.beta)
                for seed in todo]

    @staticmethod
    def _total(seconds, started, row_id) -> dict[str, float]:
        out = dict(seconds[row_id])
        out["total"] = time.perf_counter() - started[row_id]
        return out

    def _record_training(self, row: Row, sweep: Sweep, seconds, started, checks: dict,
                         race: Race | None = None, cached: int = 0) -> Outcome:
        secs = self._total(seconds, started, row.id)
        summary = sweep.summary(self.protocol.grid, self.protocol.betas)
        if cached:  # fine-tunes from the result store: their timings are an earlier run's, not this one's
            summary.update(cached=True, cached_runs=cached)
        best = sweep.best()
        if best is None:
            stage, error = next(iter(sweep.errors.values()))
            status = Status.EVAL_FAILED if stage == "score" else Status.TRAIN_FAILED
            return self._finish(row, status, error=error, stage=stage, seconds=secs,
                                extra={"checks": checks, **summary}, evaluations=sweep.evaluations)
        runs = [d for point, d in sweep.results.items() if point not in sweep.cached]  # those run now
        secs.update(score=sum(d.score_seconds for d in runs), steps=sum(d.step_seconds for d in runs),
                    runs=len(runs) + len(sweep.errors))
        secs["overhead"] = secs["total"] - secs["steps"] - secs["score"]
        _, data = best
        fitness = self._ranked_fitness(sweep)
        metrics = {"reward": data.reward, "greedy": data.greedy, "kl": data.kl, "fitness": fitness,
                   "steps": data.steps, "final_loss": data.final_loss, "train": data.train_metrics,
                   "checks": checks, **summary,
                   **({"behaviour": data.behaviour} if data.behaviour else {}),  # drift vs the checks
                   **({"judge": data.judge} if data.judge else {})}  # a judged task's grading and cost
        if race is not None:
            metrics["race"] = seed_race.summary(race.seeds, race.values, race.learning_rate, race.failed)
        if self.protocol.pick_holdout:  # the finalists' order (``seed_race.pick_scores_of``), seed by seed
            seeds, picks = (race.seeds, race.picks) if race is not None else ([self.seed], [_finite(
                self.protocol.pick(data))])
            metrics["pick"] = seed_race.summary(seeds, picks, best[0], None)
        if not math.isfinite(fitness):
            return self._finish(row, Status.EVAL_FAILED, error="non-finite fitness", stage="score", seconds=secs,
                                extra=metrics, evaluations=sweep.evaluations)
        return self._finish(row, Status.SCORED, fitness=fitness, seconds=secs, extra=metrics,
                            evaluations=sweep.evaluations)
