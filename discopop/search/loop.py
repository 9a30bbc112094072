"""The outer discovery loop: baselines, then propose -> evaluate -> archive, then confirm winners.

It only orchestrates: proposing is the proposer's job, the evaluation cascade is
``evaluate.Evaluator``'s, running candidate code is the executor's (sandboxed workers), and the
archive is the single record of progress, which is what makes ``--resume`` exact. What a person sees is
the display's business: the loop reports typed events (``search.events``) and prints nothing itself.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from discopop.archive import ARCHIVE_NAME, Archive, ArchiveError, Row
from discopop.config import RunSettings, plain, task_settings
from discopop.config.variants import transfer_tasks
from discopop.contract.losses import LossRejected, code_hash, static_check
from discopop.execution.executors import Executor, Job, WorkerSpec
from discopop.execution.factory import make_executor
from discopop.execution.observed import ObservedExecutor
from discopop.fitness import stats
from discopop.fitness.judge import with_judge
from discopop.fitness.result_store import ResultCache, StoredRuns, StoreError, shared_path
from discopop.fitness.tuning import LrProtocol
from discopop.proposers import Proposer, ProposerStop, build_proposer
from discopop.proposers.base import Candidate, HistoryEntry
from discopop.proposers.gate import admit
from discopop.proposers.llm.facts import FitnessFacts
from discopop.proposers.reference import reference_candidate, reference_variants
from discopop.sandbox import Limits
from discopop.search.cascade import Evaluator, Outcome
from discopop.search.confirmation import confirm
from discopop.search.events import (
    CandidateFinished,
    CandidateStage,
    ConfirmationVerdict,
    GenerationFinished,
    JobEvents,
    Note,
    PhaseFinished,
    PhaseStarted,
    ResultsReady,
    RunDisplay,
    RunFinished,
    RunStarted,
    RunStopped,
    RunWarning,
    ScreenMeasured,
    TransferVerdict,
)
from discopop.search.fidelity import Fidelity
from discopop.search.history import history_as_of, history_entry, proposer_history
from discopop.search.pick_stage import PickStage
from discopop.search.screen_agreement import screen_agreement
from discopop.search.seed_race import RacePolicy
from discopop.search.transfer_confirm import ExecutorFactory, StoreFactory, confirm_transfer, transfer_verdicts
from discopop.search.work_ahead import SpeculativeExecutor
from discopop.status import REPAIRABLE_STATUSES, Status
from discopop.tasks import Task, label_flip_rate, load_task


class RunLocked(RuntimeError):
    pass


@dataclass
class RunSummary:
    run_dir: Path
    seconds: float
    stopped: str | None = None


def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on the run directory for the life of the process."""
    handle = open(run_dir / ".discopop.lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunLocked(f"another discover process is already running on {run_dir}") from None
    return handle


def worker_spec(cfg: RunSettings) -> WorkerSpec:
    """What each worker is started with (the task and training settings cross to it as JSON: ``WarmWorker``)."""
    training, executor = cfg.training, cfg.executor
    return WorkerSpec(
        task=cfg.task, training=training, kl_coef=cfg.task.kl_coef, threads=training.threads,
        limits=Limits(memory_mb=executor.memory_mb, file_size_mb=executor.file_mb),
        check_timeout=training.check_timeout, train_timeout=training.train_timeout,
        oracle_timeout=training.oracle_timeout, kept_oracles=executor.kept_oracles,
        fused_backward=executor.fused_backward, oracle_start=executor.oracle_start,
    )


def candidate_of(row: Row) -> Candidate:
    """The proposal behind an archived row, as its proposer made it (``proposer_info`` is its ``info``)."""
    return Candidate(name=row.name, code=row.code, thought=row.thought, parent_ids=list(row.parent_ids),
                     proposer=row.proposer, info=dict(row.metrics.get("proposer_info") or {}))


def owed_repairs(archive: Archive, proposer: str, generation: int, max_repairs: int) -> list[tuple[Row, int]]:
    """Failed rows of ``proposer`` in ``generation`` whose repair was never asked (a stop came first), with
    the attempt that repair would be: 1 for a proposal, n + 1 for the n-th repair of one.

    A row without an answer (``proposer_info.transport_error``: the request failed, e.g. an endpoint down
    in an older version's run) owes nothing: there is no code to repair."""
    if max_repairs <= 0 or generation <= 0:
        return []
    rows = {r.id: r for r in archive.rows_of_generation(generation)}
    repaired = {r.parent_ids[0] for r in rows.values() if len(r.parent_ids) == 1 and r.parent_ids[0] in rows
                and rows[r.parent_ids[0]].status in REPAIRABLE_STATUSES}
    owed = []
    for row in rows.values():
        if row.proposer != proposer or row.status not in REPAIRABLE_STATUSES or row.id in repaired:
            continue
        if (row.metrics.get("proposer_info") or {}).get("transport_error"):
            continue
        attempt, parent = 1, row.parent_ids
        while len(parent) == 1 and parent[0] in rows and rows[parent[0]].status in REPAIRABLE_STATUSES:
            attempt, parent = attempt + 1, rows[parent[0]].parent_ids
        if attempt <= max_repairs:
            owed.append((row, attempt))
    return owed


def _number(value: Any) -> float | None:
    """A metric as a float for an event (None where it is missing or not a number)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def verdicts(comparisons: list[stats.Comparison]) -> list[ConfirmationVerdict]:
    """The confirmation's (or the transfer's) comparisons as events, in the order they were judged."""
    return [ConfirmationVerdict(c.candidate, c.baseline, str(c.extra.get("role", "")), c.verdict,
                                stats.describe(c.as_dict()), c.extra.get("variant")) for c in comparisons]


def proposals_per_generation(setting: int | str, parallelism: int) -> int:
    """``candidates_per_generation``: a number, or ``auto`` = one per worker, so a generation fills them all."""
    if setting == "auto":
        return max(1, int(parallelism))
    return int(setting)


class Lookahead:
    """The proposals of the next generation, asked on a background thread while this one is evaluated.

    The proposer gets a history fixed before the evaluation starts (``search.history.history_as_of``), so
    what it sees never depends on timing. Whatever it raises (a ``ProposerStop``: budget, key) is
    raised again by ``result`` in the loop's thread. The thread is a daemon: Ctrl-C does not wait
    for an LLM request; an unfinished lookahead is dropped and asked again by ``--resume``.
    """

    def __init__(self, proposer: Proposer, history: list[HistoryEntry], k: int, generation: int):
        self.generation = generation
        self.claimed = False  # its proposals were handed to the loop (to be archived)
        self._candidates: list[Candidate] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._ask, args=(proposer, history, k), daemon=True,
                                        name=f"propose-generation-{generation}")
        self._thread.start()

    def _ask(self, proposer: Proposer, history: list[HistoryEntry], k: int) -> None:
        try:
            self._candidates = proposer.propose(history, k, self.generation)
        except BaseException as err:  # noqa: BLE001 - handed to the loop's thread by result()
            self._error = err

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def ready(self) -> list[Candidate] | None:
        """The proposals once made and not yet claimed (None before that, after a failure, or once claimed)."""
        return None if self.running or self._error is not None or self.claimed else list(self._candidates)

    @property
    def unclaimed(self) -> bool:
        """Finished with proposals the loop has not taken yet."""
        return not self.running and self._error is None and not self.claimed

    def result(self) -> list[Candidate]:
        """Wait for the proposals and claim them; what the proposer raised is raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.claimed = True
        return self._candidates


class Loop:
    """One discovery run on ``run_dir``'s archive.

    ``display`` hears what happens (``search.events``): the terminal, wandb, a test's ``EventLog``, or
    several as ``Displays``; the loop shows nothing itself. ``proposer``, ``executor`` and ``task_meta``
    default to what the config builds (the proposer, the sandboxed worker pool, the task's facts); tests
    pass in-process stand-ins instead. The loop closes the executor and the proposer when ``run`` ends.

    ``store``: where references' fine-tunes are kept (``fitness.result_store``); by default the store
    shared by every run, ``<cache_dir>/results.sqlite``, but only with the loop's own executor: an
    injected stand-in's results must never reach a real run. ``selection.reference_store=false``: none.
    """

    def __init__(self, cfg: RunSettings, run_dir: Path, display: RunDisplay, *,
                 proposer: Proposer | None = None,
                 executor: Executor | None = None, task_meta: Mapping[str, Any] | None = None,
                 store: ResultCache | None = None, transfer_executor: ExecutorFactory | None = None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.display = display
        self.archive = Archive(run_dir / ARCHIVE_NAME)
        self.seed = self.cfg.seed
        self.proposer: Proposer = proposer or build_proposer(self.cfg.proposer, seed=self.seed)
        self.executor = executor
        # (variant, task) -> executor for confirm.transfer; default: a pool like the run's (none with an injected
        # executor: a stand-in's variants must be stood in for too)
        self.transfer_executor = transfer_executor
        self.task_meta = task_meta
        self.store = store
        state = self.archive.get_state("proposer_state")
        if state is not None:
            self.proposer.load_state(state)
        self.best: float | None = None
        # Generations whose proposals are archived (one ahead of generations_done while a lookahead's are).
        self.proposed = 0
        # Row ids whose outcome the proposer hears of once the lookahead in flight has returned (None: at once).
        self._unobserved: list[int] | None = None
        # A lookahead still running when a stop came: the proposer is busy on its thread, so it is left alone
        # (no state saved, not closed); --resume asks that generation again from the last saved state.
        self._abandoned = False
        self._ahead: Lookahead | None = None  # the next generation's proposals, whose first jobs may run ahead
        self._jobs_ahead: dict[str, Job | None] = {}  # code -> its first fine-tune ahead (None: none)

    def _note(self, text: str) -> None:
        self.display.show(Note(text))

    def _say_screen(self) -> None:
        """How this run's rate screen ranked (``search.screen_agreement``): a filtering stage shows its agreement."""
        record = screen_agreement(self.archive.rows(), self.archive.evaluations(split="search"), seed=self.seed)
        if record.screened:
            self.display.show(ScreenMeasured(record, self.cfg.cascade.min_rho_lower))

    def _confirmed_baselines(self) -> int:
        """How many baselines the confirmation re-trains: ``confirm.references`` of those this run scored."""
        return self.cfg.confirmed_baselines(len(self.archive.rows_by_proposer("reference", status=Status.SCORED)))

    def _pick_stage(self, executor: Executor, protocol: LrProtocol, store: StoredRuns | None) -> None:
        """Order the finalists on seeds selection never trained on (``selection.pick_seeds``; off at 0)."""
        sel = self.cfg.selection
        if sel.pick_seeds < 1:
            return
        self.display.show(PhaseStarted("pick"))
        self._note(f"pick: re-training the {sel.pick_pool} best distinct candidates on {sel.pick_seeds} seeds "
                   "selection never trained on, to choose the finalists (selection.pick_seeds)")
        PickStage(sel.pick_seeds, sel.pick_pool, protocol).run(self.archive, executor, self.seed,
                                                                self._confirmed_baselines(), store)
        self.display.show(PhaseFinished("pick"))

    def _staged(self, row: Row, stage: str) -> None:
        self.display.show(CandidateStage(row.id, row.name, stage))

    def _record(self, outcomes) -> list[Outcome]:
        """Report each outcome as it comes; then tell the proposer, in row order.

        Outcomes arrive in the order workers finish, which timing decides; the proposer learns of
        them in archive order, so what it sees (and so the run) does not depend on timing.
        """
        recorded = []
        for out in outcomes:
            recorded.append(out)
            row = self.archive.get(out.row_id)
            if out.fitness is not None:
                self.best = out.fitness if self.best is None else max(self.best, out.fitness)
            metrics = out.metrics or {}
            self.display.show(CandidateFinished(row.id, row.name, row.generation, out.status, out.fitness,
                                                _number(metrics.get("reward")), _number(metrics.get("kl")),
                                                out.error, self.best))
        recorded.sort(key=lambda o: o.row_id)
        if self._unobserved is not None:  # the proposer is busy with a lookahead: it hears of these after it
            self._unobserved += [out.row_id for out in recorded]
        else:
            self._observe([out.row_id for out in recorded])
        return recorded

    def _observe(self, ids: list[int]) -> None:
        for row_id in ids:
            row = self.archive.get(row_id)
            if row.proposer == self.proposer.name:
                self.proposer.observe(history_entry(row))  # read after the outcome was archived

    def _checkpoint(self, generation: int | None = None) -> None:
        """Save the proposer's state (spending, bandit, conversation) and, if given, the generation done."""
        state = None if self._abandoned else self.proposer.state()
        if state is not None:
            self.archive.set_state("proposer_state", state)
        if generation is not None:
            self.archive.set_state("generations_done", generation)

    def _archive_proposals(self, candidates: list[Candidate], generation: int) -> list[int]:
        """Archive a generation's proposals; from now on it is never proposed again (``generations_proposed``,
        saved with the proposer's state that made them)."""
        ids = [self._add(c, generation) for c in candidates]
        self.proposed = generation
        self.archive.set_state("generations_proposed", generation)
        self._checkpoint()
        return ids

    def _evaluate_ids(self, evaluator: Evaluator, ids: list[int], width: int | None = None) -> list[Outcome]:
        """Evaluate in batches as wide as the executor (or ``width``), so each candidate's times are its own."""
        rows = [r for r in (self.archive.get(i) for i in ids) if r.status == Status.PROPOSED]
        width = max(1, width or evaluator.executor.parallelism)
        out: list[Outcome] = []
        for start in range(0, len(rows), width):
            out += self._record(evaluator.evaluate(rows[start:start + width]))
        return out

    def _repair(self, evaluator: Evaluator, outcomes: list[Outcome], candidates: dict[int, Any], generation: int,
                attempts: dict[int, int] | None = None):
        """Give failed proposals back to the proposer to fix, up to ``max_repairs`` times each.

        ``attempts`` gives, per failed row, the attempt its repair would be (default 1: a fresh proposal).
        Repairs go in waves: every failure of a wave is sent back (in row order), and the fixes are
        evaluated together, so they share the workers; their failures make the next wave.
        """
        max_repairs = self.proposer.max_repairs
        wave = sorted(((o, (attempts or {}).get(o.row_id, 1)) for o in outcomes if o.status in REPAIRABLE_STATUSES),
                      key=lambda item: item[0].row_id)
        while wave:
            fixes: dict[int, int] = {}  # new row id -> its attempt
            for failed, attempt in wave:
                if attempt > max_repairs or failed.row_id not in candidates:
                    continue
                fixed = self.proposer.repair(candidates[failed.row_id], failed.row_id, failed.error or "", attempt)
                if fixed is None:
                    continue
                fixed.parent_ids = [failed.row_id]
                row_id = self._add(fixed, generation)
                candidates[row_id] = candidate_of(self.archive.get(row_id))  # as the gate admitted it
                fixes[row_id] = attempt
            wave = [(out, fixes[out.row_id] + 1) for out in self._process(evaluator, list(fixes))
                    if out.status in REPAIRABLE_STATUSES]

    def _repair_owed(self, evaluator: Evaluator, generation: int) -> None:
        """Ask the repairs a stop left owed in ``generation`` (failures whose repair was never asked)."""
        owed = owed_repairs(self.archive, self.proposer.name, generation, self.proposer.max_repairs)
        if owed:
            self._note(f"asking the repairs of {len(owed)} failed candidate(s) owed since the last stop")
            self._repair(evaluator, [Outcome(r.id, r.status, r.fitness, r.error) for r, _ in owed],
                         {r.id: candidate_of(r) for r, _ in owed}, generation,
                         attempts={r.id: attempt for r, attempt in owed})

    def _generation(self, evaluator: Evaluator, generation: int, ids: list[int],
                    candidates: dict[int, Candidate] | None, last: int, k: int) -> None:
        """Evaluate rows ``ids`` of ``generation``, then ask its repairs; with lookahead, the proposals of
        ``generation + 1`` are asked meanwhile (docs/DESIGN.md, "Keeping the workers busy").

        ``candidates`` (row id -> proposal) for the repairs; None for a generation a stop interrupted, whose
        owed repairs the archive tells. The proposer's calls come in one fixed order, one at a time:
        propose(g+1) [while g is evaluated], then observe(g's outcomes, in row order), then g's repairs.
        Whatever happens, the generation then counts as done: its proposals are archived, so --resume re-runs
        its rows in flight and asks its owed repairs, but never proposes it again.
        """
        ahead = None
        if self.proposer.lookahead and 1 <= generation < last and self.proposed == generation:
            ahead = Lookahead(self.proposer, history_as_of(self.archive, generation), k, generation + 1)
            self._unobserved = []
            self._ahead, self._jobs_ahead = ahead, {}
        try:
            outcomes = self._process(evaluator, ids)
            if ahead is not None:
                self._archive_proposals(ahead.result(), ahead.generation)
                unobserved, self._unobserved = sorted(self._unobserved or []), None
                self._observe(unobserved)
            if candidates is None:
                self._repair_owed(evaluator, generation)
            else:
                self._repair(evaluator, outcomes, candidates, generation)
        finally:
            self._unobserved = None
            self._ahead = None
            busy = ahead is not None and ahead.running  # decided once: the thread may finish any moment
            if busy:
                self._abandoned = True  # neither its proposals nor the proposer's state after them are saved
            try:
                if ahead is not None and not busy and ahead.unclaimed:  # it finished before the stop: keep them
                    self._archive_proposals(ahead.result(), ahead.generation)
            finally:
                self._checkpoint(generation)

    def _work_ahead(self, evaluator: Evaluator, executor: SpeculativeExecutor) -> list[Job]:
        """The next generation's first jobs, most wanted first: every proposal's check, then the first fine-tune
        of each whose check (run ahead) passed. Only proposals the cascade would train: admitted by the gate,
        statically valid, code not archived yet. Asked in the loop's thread (it reads the archive)."""
        proposals = self._ahead.ready if self._ahead is not None else None
        if not proposals:
            return []
        checks: list[Job] = []
        firsts: list[Job] = []
        for proposal in proposals:
            proposal = admit(proposal)
            if proposal.error:
                continue
            try:
                static_check(proposal.code)
            except LossRejected:
                continue
            if self.archive.find_hash(code_hash(proposal.code)) is not None:
                continue
            check = Job(0, proposal.code, "check", self.seed)
            checks.append(check)
            if proposal.code not in self._jobs_ahead:
                done = executor.peek(check)
                if done is None:
                    continue
                self._jobs_ahead[proposal.code] = None if not done.ok else evaluator.first_job_ahead(
                    proposal.proposer, list(proposal.parent_ids), proposal.code, done.checked.checks)
            first = self._jobs_ahead[proposal.code]
            if first is not None:
                firsts.append(first)
        return checks + firsts

    def _process(self, evaluator: Evaluator, ids: list[int]) -> list[Outcome]:
        """Evaluate new rows; rows already decided at insertion (unparseable proposals) are just reported.

        Returns the outcomes in row order."""
        rows = [self.archive.get(i) for i in ids]
        decided = [Outcome(r.id, r.status, None, r.error) for r in rows if r.status != Status.PROPOSED]
        return sorted(self._record(decided) + self._evaluate_ids(evaluator, ids), key=lambda o: o.row_id)

    def _add(self, candidate: Candidate, generation: int) -> int:
        """Archive one proposal, through the gate (``proposers.gate``): the only way proposals enter the archive.

        Whatever the proposal holds (a lone surrogate, a 2,000-term sum, a 5 MB answer), this archives a row,
        ``invalid`` with its one-line reason if the gate refused it, and the run goes on."""
        candidate = admit(candidate, self.archive.has_name)
        if candidate.error:
            return self.archive.add(candidate, generation, status=Status.INVALID, error=candidate.error)
        return self.archive.add(candidate, generation)

    def _variant_executor(self, name: str, task: dict[str, Any]) -> Executor:
        """A pool of workers like the run's, on the transfer variant ``task`` (built here first: workers only read)."""
        load_task(task, log=self._note)
        return make_executor(self.cfg.executor, worker_spec(replace(self.cfg, task=task_settings(task))))

    def _variant_store(self, store: StoredRuns | None, device: str | None) -> StoreFactory | None:
        """The run's reference store keyed by a transfer variant's own settings (None: the run has no store)."""
        if store is None:
            return None
        return lambda name, task: StoredRuns.for_run(replace(self.cfg, task=task_settings(task)), store.cache, device)

    def _confirm_transfer(self, store: StoredRuns | None = None, device: str | None = None) -> None:
        """Confirm the same arms on the held-out variants of ``confirm.transfer`` and say whether winners transfer."""
        conf = self.cfg.confirm
        variants = transfer_tasks(plain(self.cfg.task), conf.transfer)
        if not variants:
            return
        factory = self.transfer_executor or (self._variant_executor if self.executor is None else None)
        if factory is None:
            self.display.show(RunWarning("transfer not confirmed: an injected executor and no executor for the "
                                         "variants"))
            return
        phase = "confirming transfer to held-out variants"
        self.display.show(PhaseStarted(phase))
        self._note(f"re-scoring the same arms on the held-out variant(s) {', '.join(n for n, _ in variants)}")
        def observed(name: str, task: dict[str, Any]) -> Executor:  # its fine-tunes count in the progress too
            return ObservedExecutor(factory(name, task), JobEvents(self.display))

        comparisons = confirm_transfer(self.archive, observed, variants, self.seed, conf.seeds, conf.top_k,
                                       references=self._confirmed_baselines(), log=self._note, prompts=conf.split,
                                       stores=self._variant_store(store, device))
        for verdict in verdicts(comparisons):
            self.display.show(verdict)
        for row, text in transfer_verdicts(self.archive):
            self.display.show(TransferVerdict(row.id, row.name, text))
        self.display.show(PhaseFinished(phase))

    def _load_task(self) -> Task:
        """Build (or read from the cache) the task, and say what it is."""
        task = load_task(self.cfg.task, log=self._note)
        ref_reward = task.meta.get("sft_heldout_reward")
        ref_text = f"reference held-out reward {ref_reward:.3f}, " if ref_reward is not None else ""
        self._note(f"task '{task.name}': {ref_text}{task.meta.get('pairs')} preference pairs")
        return task

    def _open_store(self, device: str | None) -> StoredRuns | None:
        """The reference store this run reads and writes (``__init__``), keyed by this run's settings."""
        if not self.cfg.selection.reference_store:
            return None
        cache = self.store
        if cache is None:
            if self.executor is not None:
                return None
            try:
                cache = ResultCache(shared_path(self.cfg))
            except StoreError as err:
                self.display.show(RunWarning(f"no reference store ({err}): references are trained"))
                return None
        return StoredRuns.for_run(self.cfg, cache, device)

    def _say_baselines(self, store: StoredRuns | None, ids: list[int]) -> None:
        """One progress line: how many baselines the store gave whole, how many were trained (in part)."""
        if store is None or not ids:
            return
        rows = [self.archive.get(i) for i in ids]
        whole = sum(1 for r in rows if r.metrics.get("cached") and not (r.metrics.get("seconds") or {}).get("runs"))
        trained = len(rows) - whole
        self._note(f"baselines: {whole} from the store" + (f", {trained} trained" if trained else "")
                         + f" ({store.hits} fine-tunes read, {store.stored} stored in {store.cache.path})"
                         + (f"; store given up: {store.error}" if store.error else ""))

    def _fidelity(self, executor: Executor) -> Fidelity | None:
        """The cheap stages (``cascade.stages``), with whether each filters, recorded in the run's state."""
        settings = self.cfg.cascade
        if not settings.stages:
            return None
        fidelity = Fidelity(settings, task=self.cfg.task, training=self.cfg.training, seed=self.seed,
                            executor=executor, base_spec=worker_spec(self.cfg))
        self.archive.set_state("cascade", fidelity.summary())
        for stage, info in fidelity.summary().items():
            self._note(f"cheap stage {stage}: " + ("filters" if info["filters"] else "orders only")
                             + (f" (agreement rho {info['agreement'].get('rho')}, lower "
                                f"{info['agreement'].get('lower')})" if info["agreement"] else
                                " (no agreement measured for these settings)"))
        return fidelity

    def _generation_finished(self, generation: int) -> None:
        """Report a decided generation: its rows, how many scored, the best of them (read from the archive)."""
        rows = self.archive.rows_of_generation(generation)
        fitness = [r.fitness for r in rows if r.status == Status.SCORED and r.fitness is not None]
        self.display.show(GenerationFinished(generation, len(rows), len(fitness), max(fitness, default=None)))

    def run(self, generations: int) -> RunSummary:
        started = time.perf_counter()
        done = int(self.archive.get_state("generations_done", 0))
        self.display.show(RunStarted(generations, self.seed, done))
        # Injected task facts (tests) mean no task object: nothing to judge, the executor scores alone.
        task = None if self.task_meta is not None else self._load_task()
        meta = dict(task.meta) if task is not None else self.task_meta
        self.proposer.set_facts(  # the LLM is told what fitness is in this run
            FitnessFacts.from_run(self.cfg, meta, self.archive.rows()))
        executor = self.executor or make_executor(self.cfg.executor, worker_spec(self.cfg))
        if self.executor is None and getattr(self.cfg.executor, "work_ahead", False):
            executor = SpeculativeExecutor(executor)
        ahead_of = executor if isinstance(executor, SpeculativeExecutor) else None  # an injected one is used too
        store = self._open_store(getattr(executor, "device", None))
        # A judged task's completions are graded here, where the API key may be (never in a worker).
        executor = with_judge(executor, self.cfg.task, task, self.run_dir, self.proposer.meter)
        # every job reaches the display (progress in fine-tunes)
        executor = ObservedExecutor(executor, JobEvents(self.display))
        fidelity = self._fidelity(executor)
        protocol = LrProtocol.from_config(self.cfg.training, self.cfg.selection.pick_holdout)
        evaluator = Evaluator(self.archive, executor, self.seed, protocol, on_stage=self._staged,
                              race=RacePolicy.from_config(self.cfg), store=store, fidelity=fidelity)
        if ahead_of is not None:  # idle workers run a row's next round, the next generation's first jobs
            ahead_of.supplier = lambda: self._work_ahead(evaluator, ahead_of)  # (with lookahead)
            evaluator.on_ahead = ahead_of.offer
        stopped = None
        # With W workers, W proposals per generation (auto), all from the same history: the cascade runs
        # them together, so every worker is busy and timing never decides what the proposer saw; with
        # lookahead the next generation is proposed while this one trains (docs/DESIGN.md, "Keeping the
        # workers busy").
        k = proposals_per_generation(self.cfg.candidates_per_generation, executor.parallelism)
        self.proposed = max(done, int(self.archive.get_state("generations_proposed", done)))
        try:
            self._note("starting sandboxed workers (torch, transformers and TRL load once per worker)")
            executor.warm_up()
            # The generation the last stop interrupted: its rows in flight re-run, its owed repairs asked
            # (and, with lookahead, the next generation proposed meanwhile if the stop came before that).
            in_flight = [r.id for r in self.archive.pending_rows(done)]
            if in_flight:
                self._note(f"re-running {len(in_flight)} candidate(s) interrupted by the last stop")
            if in_flight or done > 0:
                self._generation(evaluator, done, in_flight, None, generations, k)
                if done > 0:
                    self._generation_finished(done)
            done_refs = {r.name for r in self.archive.rows_by_proposer("reference")}
            self.display.show(PhaseStarted("references"))
            flips = label_flip_rate(self.cfg.task, meta)  # embedded tasks' pairs.label_noise, the diagnostic facts'
            refs = [reference_candidate(n, flips) for n in self.cfg.baselines]
            if self.cfg.baseline_constants:  # each declared constant one step down and up, as baselines of their own
                refs += [v for n in self.cfg.baselines for v in reference_variants(n, flips)]
            ids = [self._add(c, 0) for c in refs if c.name not in done_refs]
            # All references in one batch: a reference's evaluation reads nothing of the archive (its grid climb
            # and all its race seeds are its own), so batching changes no result, and each round keeps every
            # worker busy instead of ending with one of them waiting on the other's last job.
            self._evaluate_ids(evaluator, ids, width=len(ids))
            self._say_baselines(store, ids)
            self.display.show(PhaseFinished("references"))
            for generation in range(done + 1, generations + 1):
                phase = f"generation {generation}/{generations}"
                self.display.show(PhaseStarted(phase))
                if self.proposed < generation:
                    proposals = self.proposer.propose(proposer_history(self.archive), k, generation)
                    ids = self._archive_proposals(proposals, generation)
                    candidates = {i: candidate_of(self.archive.get(i)) for i in ids}  # as the gate admitted them
                else:  # proposed ahead, while the previous generation trained
                    rows = self.archive.rows_of_generation(generation)
                    ids, candidates = [r.id for r in rows], {r.id: candidate_of(r) for r in rows}
                self._generation(evaluator, generation, ids, candidates, generations, k)
                self._generation_finished(generation)
                self.display.show(PhaseFinished(phase))
            if ahead_of is not None and ahead_of.stats.started:
                st = ahead_of.stats
                self._note(f"work ahead: {st.started} job(s) run on idle workers, {st.hits} of them used")
            if protocol.screens and generations > 0:  # else no row was screened: nothing to say
                self._say_screen()
            conf = self.cfg.confirm
            if conf.seeds > 0:
                self._pick_stage(executor, protocol, store)
                self.display.show(PhaseStarted("confirmation"))
                n = self._confirmed_baselines()
                self._note(f"re-scoring the top {conf.top_k}, DPO and the {n} best baselines "
                           f"on {conf.seeds} fresh seeds and the held-back prompts")
                comparisons = confirm(self.archive, executor, self.seed, conf.seeds, conf.top_k,
                                      references=n, store=store, split=conf.split)
                for verdict in verdicts(comparisons):
                    self.display.show(verdict)
                self.display.show(PhaseFinished("confirmation"))
                self._confirm_transfer(store, getattr(executor, "device", None))
            self.display.show(ResultsReady(tuple(self.archive.rows())))  # the confirmation table, the winner's code
        except ProposerStop as stop:
            stopped = str(stop)
            self.display.show(RunStopped(stopped, str(self.run_dir)))
        finally:
            executor.close()
            if fidelity is not None:
                fidelity.close()
            if store is not None and self.store is None:  # opened here (a store passed in is the caller's)
                store.close()
            with suppress(ArchiveError):  # a stop inside propose() may have spent money: keep it counted
                self._checkpoint()
            if not self._abandoned:  # else its thread may still be using the proposer; it dies with the process
                self.proposer.close()
            seconds = time.perf_counter() - started
            self.display.show(RunFinished(seconds, stopped))
        return RunSummary(self.run_dir, seconds, stopped)
