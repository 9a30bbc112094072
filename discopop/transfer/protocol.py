"""``discopop evaluate``: any set of losses, on any task, over a list of betas and fresh seeds.

The paper's evidence for a discovered loss is not its discovery score but how it transfers: to
held-out tasks and across the KL strength beta. This module runs that experiment with the same
fair protocol and statistics as discovery's confirmation, so its verdicts mean the same thing:

1. **Learning rate** (``tuning``): at each (task, beta) every loss is fine-tuned at every point of
   ``training.lr_grid`` with the run seed (``--tune-seeds K``: and the K - 1 seeds after it, their mean
   deciding) and scored on the ``search`` prompts; its rate is the best of those (``tuning.Sweep.best``:
   ties go to the smaller rate). A loss no rate could train is
   failed at that beta (LRML's NaN at large beta shows up here).
2. **Fresh seeds** (``confirmation.fresh_seeds``): each loss is re-trained at its own rate on the
   same fresh seeds and scored on the ``confirm`` prompts, which chose nothing.
3. **Verdicts** (``stats``): per (seed, prompt) paired differences against DPO and against the
   strongest baseline at that beta (and, for a reference at a moved constant, ``--constants``, against
   the same reference at its default constants: does the tuning budget change the reference), all
   Holm-corrected together over the comparisons at that (task, beta). A
   failed seed fails the comparison. The strongest baseline is the other reference loss with the
   best fresh-seed mean among those that trained on every fresh seed (by search fitness only when
   none did): every reference runs on the same fresh seeds here, and a baseline picked on one search
   seed can be beaten while another reference scores higher (measured: hinge led AQFL on the search
   seed, AQFL led hinge by 0.014 on 10 fresh seeds). Picking the baseline by its fresh mean favours
   the baseline (its winner's curse), so a "beats" stays conservative.

A run's candidate (``--run``) carries the beta and learning rate its run scored it at (``LossSpec.beta``,
``learning_rate``): it trains at that beta in every cell and at that rate only, so the loss judged is the one
the run ranked. The command drops either only where the user asks (``--betas``, ``--tune-lr``) and says which.

All training runs through the sandboxed executor (candidate code only ever runs in the loss
oracle); one executor per (task, beta), since beta is part of a worker's training config. Every
fine-tune is cached in ``OUT/results.sqlite`` (``fitness.result_store``) under (loss code hash, task
key, beta, seed, split, learning rate), so an interrupted evaluation resumes where it stopped; as in
the confirmation, a stored failure of the loss is never retried (retrying would select lucky seeds),
while a failure of the machinery (a worker died or timed out) is not stored and runs again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from discopop.archive import ARCHIVE_NAME, Archive, ArchiveError, Evaluation
from discopop.config import RunSettings, plain
from discopop.config.references import known
from discopop.contract.losses import LossRejected, code_hash, read_source, static_check
from discopop.execution.executors import Executor, Job
from discopop.execution.messages import TrainReply
from discopop.fitness import stats
from discopop.fitness.result_store import CACHE_NAME, ResultCache, RunKey  # noqa: F401 - the evaluate command's
from discopop.fitness.tuning import LrProtocol, Sweep
from discopop.proposers.reference import NOISE_CONSTANTS, reference_candidate, reference_variants
from discopop.report.run import beta_of, learning_rate_of, run_beta
from discopop.search.confirmation import SEED_OFFSET, fresh_seeds, top_candidates
from discopop.search.confirmation import SPLIT as CONFIRM_SPLIT
from discopop.tasks import stable_key

SEARCH_SPLIT = "search"
NOT_RUN = "not run yet"
BASELINE = "dpo"
# Training settings that change what a fine-tune computes; a cached result is only re-used when they match.
# beta and the learning rate are part of the cache key; timeouts and thread counts change nothing computed.
_TRAINING_KEYS = ("epochs", "batch_size", "lr_scheduler", "warmup_steps", "max_grad_norm", "max_pairs",
                  "pair_fraction")


class EvaluateError(ValueError):
    """Bad input to ``discopop evaluate``: one line for the user."""


@dataclass(frozen=True)
class LossSpec:
    """One loss to evaluate: its display name, its code (as given), where it came from, whether it is a reference."""

    name: str
    code: str
    origin: str
    reference: bool = False
    # A run row's own settings, as its run scored it (``--run``): the beta it trained at (``metrics.beta`` where the
    # run's beta axis chose one, else the run's ``training.beta``) and its chosen learning rate. Set, the loss trains
    # at that beta in every cell and at that rate only (no sweep); None, it gets the cell's beta / the whole grid.
    beta: float | None = None
    learning_rate: float | None = None
    # A reference at moved constants (``--constants``): the code hash of the same reference at its defaults, which
    # it is also judged against (``Cell.vs_default``). None for every other loss.
    default_hash: str | None = None

    @property
    def hash(self) -> str:
        return code_hash(self.code)

    def settings_text(self, beta_note: str, lr_note: str) -> str:
        """Which beta and rate this loss trains at, in words (``discopop evaluate`` prints it for a run's row);
        the notes say what it gets where it carries no setting of its own, and why."""
        beta = f"beta {self.beta:g} (its run's)" if self.beta is not None else f"beta {beta_note}"
        rate = f"lr {self.learning_rate:g} (its run's)" if self.learning_rate is not None else f"lr {lr_note}"
        return f"{beta}, {rate}"


def resolve_losses(items: Iterable[str], run_dir: Path | None = None, top_k: int = 0,
                   always: tuple[str, ...] = (BASELINE,), constants: bool = False,
                   flip_rate: float | None = None) -> list[LossSpec]:
    """Reference names, loss files and a run's top ``top_k`` scored candidates, each static-checked here.

    ``always`` names references added when missing (DPO: every verdict is relative to it). Names are made
    unique; the same code given twice is evaluated once. ``constants``: each named reference also at each of its
    declared constants moved one step down and up (``reference_variants``, e.g. ``simpo_gamma_0_1667``), as
    references of their own: the equal tuning budget discover gives baselines with ``baseline_constants``.
    ``flip_rate``: the task's label-flip rate (``tasks.label_flip_rate``; None where unknown): the references
    built for a known flip rate (cDPO, rDPO, AOT: ``NOISE_CONSTANTS``) run at it, as in ``discover``, and their
    names say it (``rdpo_eps_0_25``); their code, so their cache key, is that of the rate.
    """
    specs: list[LossSpec] = []
    for item in items:
        path = Path(item)
        if item in known():  # the contract-v2 references (proposals/v2/) too: named here, as in ``baselines``
            cand = reference_candidate(item, flip_rate)
            specs.append(LossSpec(_at_rate(item, flip_rate), cand.code, "reference", reference=True))
            if constants:
                specs += [LossSpec(v.name, v.code, "reference", reference=True, default_hash=code_hash(cand.code))
                          for v in reference_variants(item, flip_rate)]  # (no flip-rate reference has any)
        elif path.is_file():
            try:
                code, _ = read_source(path)
            except (OSError, UnicodeDecodeError) as err:
                raise EvaluateError(f"cannot read loss file {path}: {err}") from None
            specs.append(LossSpec(path.stem, code, str(path)))
        else:
            raise EvaluateError(f"'{item}' is neither a loss file nor a reference loss "
                                f"(references: {', '.join(known())})")
    if run_dir is not None and top_k > 0:
        specs.extend(run_winners(run_dir, top_k))
    for name in always:
        if not any(s.reference and s.name == name for s in specs):
            specs.insert(0, LossSpec(_at_rate(name, flip_rate), reference_candidate(name, flip_rate).code,
                                     "reference", reference=True))
    unique: dict[str, LossSpec] = {}
    names: set[str] = set()
    for spec in specs:
        try:
            static_check(spec.code)
        except LossRejected as err:
            raise EvaluateError(f"{spec.origin}: static check: {err}") from None
        if spec.hash in unique:
            continue
        name, n = spec.name, 2
        while name in names:
            name, n = f"{spec.name}_{n}", n + 1
        names.add(name)
        unique[spec.hash] = replace(spec, name=name)
    if not unique:
        raise EvaluateError("no losses to evaluate: name reference losses, loss files, or --run RUN_DIR --top-k K")
    return list(unique.values())


def _at_rate(name: str, flip_rate: float | None) -> str:
    """A flip-rate reference's name with the rate it runs at (``rdpo_eps_0_25``): its rows at another rate (the
    file's 0.1, another task's) never read as these; any other name as it is."""
    if flip_rate is None or name not in NOISE_CONSTANTS:
        return name
    return re.sub(r"\W", "_", f"{name}_eps_{flip_rate:g}")


def run_winners(run_dir: Path, top_k: int) -> list[LossSpec]:
    """The ``top_k`` best scored non-reference candidates of a discovery run (by search fitness), each with the
    beta and learning rate it was scored at (re-training it at other settings would judge a loss the run never
    ranked; ``discopop evaluate`` drops them only where the user asks)."""
    if not (Path(run_dir) / ARCHIVE_NAME).is_file():
        raise EvaluateError(f"{run_dir} is not a discopop run directory (no {ARCHIVE_NAME})")
    try:
        archive = Archive(Path(run_dir) / ARCHIVE_NAME, create=False)
        rows = top_candidates(archive, top_k)
        archive.close()
    except (ArchiveError, sqlite3.DatabaseError) as err:
        raise EvaluateError(f"cannot read the archive of {run_dir}: {err}") from None
    if not rows:
        raise EvaluateError(f"{run_dir} has no scored candidates to evaluate")
    default_beta = run_beta(Path(run_dir))
    return [LossSpec(r.name, r.code, f"{run_dir}#{r.id}", beta=beta_of(r, default_beta),
                     learning_rate=learning_rate_of(r)) for r in rows]


def task_key(cfg: RunSettings) -> str:
    """The task's name plus a hash of everything (task and training settings) a cached result depends on."""
    training = {k: getattr(cfg.training, k) for k in _TRAINING_KEYS}
    task = stable_key({k: v for k, v in plain(cfg.task).items() if k != "cache_dir"})
    blob = json.dumps({"task": task, "training": training, "kl_coef": cfg.task.kl_coef}, sort_keys=True, default=str)
    return f"{cfg.task.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class Cell:
    """One loss at one (task, beta): its learning-rate sweep, fresh-seed runs and verdicts."""

    task: str
    beta: float
    loss: LossSpec
    sweep: Sweep = field(default_factory=Sweep)
    learning_rate: float | None = None
    search_fitness: float | None = None
    runs: dict[int, Evaluation] = field(default_factory=dict)  # fresh seed -> run
    estimate: dict[str, Any] = field(default_factory=dict)  # mean, se, reward, kl, per-seed fitness, failed
    vs_dpo: dict[str, Any] | None = None
    vs_best: dict[str, Any] | None = None
    best_baseline: str | None = None
    vs_default: dict[str, Any] | None = None  # a reference at moved constants against its defaults
    default_name: str | None = None

    @property
    def trained_beta(self) -> float:
        """The beta this loss trains at in this cell: its run's own where it carries one, else the cell's."""
        return self.loss.beta if self.loss.beta is not None else self.beta

    def rates(self, protocol: LrProtocol) -> tuple[float, ...]:
        """The learning rates its search runs: its run's own rate alone where it carries one, else the grid."""
        return (self.loss.learning_rate,) if self.loss.learning_rate is not None else protocol.grid


@dataclass
class Progress:
    """Callbacks a display implements: a fine-tune is about to run / has finished (cached ones count too)."""

    planned: Callable[[int], None] = lambda n: None
    done: Callable[[str, float, str, RunKey, Evaluation, bool], None] = lambda *a: None


ExecutorFactory = Callable[[RunSettings], Executor]


def beta_config(cfg: RunSettings, beta: float) -> RunSettings:
    """The run settings with ``training.beta`` set to ``beta`` (a copy)."""
    return replace(cfg, training=replace(cfg.training, beta=float(beta)))


class TransferEvaluation:
    """Runs the protocol of the module docstring for ``losses`` on each task config and beta."""

    def __init__(self, losses: list[LossSpec] | list[list[LossSpec]], task_cfgs: list[RunSettings],
                 betas: list[float], n_seeds: int,
                 cache: ResultCache, make_executor: ExecutorFactory, progress: Progress | None = None,
                 train: bool = True, tune_seeds: int = 1):
        """``losses``: one list for every task, or one list per task config, in their order (the flip-rate
        references are built at each task's own rate: ``resolve_losses(..., flip_rate=)``)."""
        if n_seeds < 1:
            raise EvaluateError(f"--seeds must be >= 1, got {n_seeds}")
        if not 1 <= tune_seeds < SEED_OFFSET:
            raise EvaluateError(f"--tune-seeds must be between 1 and {SEED_OFFSET - 1}, got {tune_seeds}")
        if not betas or any(not (math.isfinite(b) and b > 0) for b in betas):
            raise EvaluateError(f"betas must be positive numbers, got {betas}")
        self.task_cfgs = list(task_cfgs)
        if losses and isinstance(losses[0], list):
            self.task_losses = [list(task) for task in cast(list[list[LossSpec]], losses)]
        else:
            self.task_losses = [cast(list[LossSpec], list(losses))] * len(self.task_cfgs)
        if len(self.task_losses) != len(self.task_cfgs):
            raise EvaluateError(f"{len(self.task_losses)} loss lists for {len(self.task_cfgs)} tasks")
        self.betas = [float(b) for b in betas]
        self.n_seeds = n_seeds
        self.cache = cache
        self.make_executor = make_executor
        self.progress = progress or Progress()
        self.train = train  # False: report what the cache holds, run nothing (a cell not yet run says so)
        # Seeds each grid point is trained on, the run seed first; the rate (and, with several betas, a loss's own
        # beta) is chosen on their mean. One seed picks within ~0.01 of noise on `addition` (docs/results.md, "each
        # reference at its own β"); they are never fresh seeds (those start at SEED_OFFSET).
        self.tune_seeds = int(tune_seeds)

    def total_runs(self) -> int:
        """Fine-tunes the whole evaluation needs at most (grid + fresh seeds per loss, task and beta)."""
        if not self.task_cfgs:
            return 0
        grid = len(LrProtocol.from_config(self.task_cfgs[0].training).grid)
        per_cell = sum((1 if loss.learning_rate is not None else grid) * self.tune_seeds + self.n_seeds
                       for losses in self.task_losses for loss in losses)
        return len(self.betas) * per_cell

    def run(self) -> list[Cell]:
        self.progress.planned(self.total_runs())
        cells: list[Cell] = []
        for cfg, losses in zip(self.task_cfgs, self.task_losses, strict=True):
            for beta in self.betas:
                cells.extend(self._one(beta_config(cfg, beta), losses))
        return cells

    def _one(self, cfg: RunSettings, losses: list[LossSpec]) -> list[Cell]:
        """All losses at one (task, beta): sweep, fresh seeds, verdicts."""
        protocol = LrProtocol.from_config(cfg.training)
        key_task, beta, seed = task_key(cfg), cfg.training.beta, cfg.seed
        task_name = cfg.task.name
        cells = [Cell(task_name, beta, loss) for loss in losses]
        executor: list[Executor] = []  # started only if something is not cached
        try:
            tuning = [seed + i for i in range(self.tune_seeds)]
            search = {c.loss.hash: [RunKey(c.loss.hash, key_task, c.trained_beta, s, SEARCH_SPLIT, lr)
                                    for lr in c.rates(protocol) for s in tuning] for c in cells}
            found = self._run_keys(cfg, cells, search, executor)
            for cell in cells:
                for lr in cell.rates(protocol):
                    runs = [found.get(RunKey(cell.loss.hash, key_task, cell.trained_beta, s, SEARCH_SPLIT, lr))
                            for s in tuning]
                    if any(ev is None for ev in runs):  # not run yet (report-only)
                        continue
                    bad = next((ev for ev in runs if not (ev.ok and math.isfinite(ev.fitness))), None)
                    cell.sweep.add(lr, bad is None, _score_only(runs) if bad is None else None, "train",
                                   (bad.error or "non-finite") if bad is not None else None)
                best = cell.sweep.best()
                if best is not None:
                    cell.learning_rate, cell.search_fitness = best[0], float(best[1].fitness)
            seeds = fresh_seeds(seed, self.n_seeds)
            confirm = {c.loss.hash: [RunKey(c.loss.hash, key_task, c.trained_beta, s, CONFIRM_SPLIT, c.learning_rate)
                                     for s in seeds] for c in cells if c.learning_rate is not None}
            found = self._run_keys(cfg, cells, confirm, executor)
            for cell in cells:
                cell.runs = {k.seed: found[k] for k in confirm.get(cell.loss.hash, []) if k in found}
        finally:
            for ex in executor:
                ex.close()
        judge(cells, seeds)
        return cells

    def _run_keys(self, cfg: RunSettings, cells: list[Cell], keys: dict[str, list[RunKey]],
                  executor: list[Executor]) -> dict[RunKey, Evaluation]:
        """Each key's cached run, running (and caching) those not yet done through the executor."""
        by_hash = {c.loss.hash: c for c in cells}
        found: dict[RunKey, Evaluation] = {}
        todo: dict[int, RunKey] = {}
        jobs: list[Job] = []
        for loss_hash, loss_keys in keys.items():
            for key in loss_keys:
                cached = self.cache.get(key)
                if cached is not None:
                    found[key] = cached
                    self.progress.done(by_hash[loss_hash].loss.name, key.beta, by_hash[loss_hash].task, key, cached,
                                       True)
                    continue
                todo[len(jobs)] = key
                own_beta = by_hash[loss_hash].loss.beta  # a run row's beta; None: the executor's (the cell's)
                jobs.append(Job(len(jobs), by_hash[loss_hash].loss.code, "train", key.seed, split=key.split,
                                learning_rate=key.learning_rate, beta=own_beta))
        if jobs and self.train:
            if not executor:
                executor.append(self.make_executor(cfg))
            for result in executor[0].run(jobs):
                key = todo[result.job.row_id]
                found[key] = self.cache.put(key, result)
                cell = by_hash[key.code_hash]
                self.progress.done(cell.loss.name, key.beta, cell.task, key, found[key], False)
        return found


def arm_matrix(runs: dict[int, Evaluation], seeds: list[int]) -> tuple[np.ndarray | None, str | None]:
    """One loss's seeds x prompts fitness matrix, or None and why (a failed or missing seed fails the arm)."""
    rows = []
    for seed in seeds:
        run = runs.get(seed)
        if run is None:  # every key is run or cached as a failure, so a missing seed was not run yet
            return None, NOT_RUN
        per_prompt = run.per_prompt_fitness() if run.ok else []
        if not run.ok or not per_prompt or not all(map(math.isfinite, per_prompt)):
            return None, f"seed {seed} failed: {run.error or 'no finite per-prompt scores'}"
        rows.append(per_prompt)
    if len({len(r) for r in rows}) != 1:
        return None, "per-prompt scores of different lengths"
    return np.asarray(rows, dtype=float), None


def judge(cells: list[Cell], seeds: list[int], alpha: float = stats.ALPHA) -> None:
    """Estimates per loss and verdicts against DPO, the strongest baseline and (a reference at moved constants) its
    defaults, Holm over all of them at this (task, beta)."""
    matrices: dict[str, np.ndarray | None] = {}
    for cell in cells:
        if cell.learning_rate is not None:
            matrix, failed = arm_matrix(cell.runs, seeds)
        elif cell.sweep.errors:
            matrix, failed = None, "no learning rate trained: " + "; ".join(
                f"{lr:g}: {e}" for (lr, _), (_, e) in cell.sweep.errors.items())
        else:
            matrix, failed = None, NOT_RUN
        matrices[cell.loss.hash] = matrix
        done = [r for r in cell.runs.values() if r.ok]
        cell.estimate = {
            "seeds": seeds, "fitness": [cell.runs[s].fitness if s in cell.runs and cell.runs[s].ok else None
                                        for s in seeds],
            "mean": float(np.mean([r.fitness for r in done])) if done else None,
            "reward": float(np.mean([r.reward for r in done])) if done else None,
            "kl": float(np.mean([r.kl for r in done])) if done else None,
            "se": stats.crossed_estimate(matrix).se if matrix is not None and len(seeds) >= 2 else None,
            "failed": failed,
        }
    by_name = {c.loss.name: c for c in cells}
    by_hash = {c.loss.hash: c for c in cells}
    dpo = by_name.get(BASELINE) if by_name.get(BASELINE) and by_name[BASELINE].loss.reference else None
    references = [c for c in cells if c.loss.reference and c.search_fitness is not None]
    comparisons: list[tuple[Cell, str, stats.Comparison]] = []
    for cell in cells:
        targets: list[tuple[str, Cell]] = []
        if dpo is not None and cell is not dpo:
            targets.append(("vs_dpo", dpo))
        others = [r for r in references if r is not cell]
        if others:
            by_search = sorted(others, key=lambda r: -r.search_fitness)  # the fallback first
            best = stats.strongest_baseline(
                by_search, lambda r: None if r.estimate["failed"] else r.estimate["mean"])
            cell.best_baseline = best.loss.name
            if best is not dpo or cell is dpo:
                targets.append(("vs_best", best))
        default = by_hash.get(cell.loss.default_hash) if cell.loss.default_hash else None
        if default is not None and default is not cell:
            cell.default_name = default.loss.name
            if not any(base is default for _, base in targets):  # the same test twice would only inflate Holm
                targets.append(("vs_default", default))
        for role, base in targets:
            failure = cell.estimate["failed"] and f"{cell.loss.name}: {cell.estimate['failed']}"
            failure = failure or (base.estimate["failed"] and f"{base.loss.name}: {base.estimate['failed']}")
            comp = stats.compare(cell.loss.name, base.loss.name, matrices[cell.loss.hash], matrices[base.loss.hash],
                                 alpha=alpha, failure=failure or None)
            comparisons.append((cell, role, comp))
    stats.decide([c for *_, c in comparisons], alpha=alpha)
    for cell, role, comp in comparisons:
        entry = comp.as_dict()
        entry["text"] = stats.describe(entry)
        setattr(cell, role, entry)
        if cell.default_name is not None and comp.baseline == cell.default_name:
            cell.vs_default = entry


def own_beta_cells(cells: list[Cell], alpha: float = stats.ALPHA) -> list[Cell]:
    """Each loss at its own beta, per task: the cell whose search score was best over the betas evaluated (ties to
    the smaller beta), judged again against DPO and the strongest baseline each at *their* own beta, Holm over the
    comparisons of a task.

    Why: the equal tuning budget over beta. At one beta a loss whose best beta lies elsewhere is judged off its
    optimum (at beta 0.1 the summed IPO trails DPO, at 0.5 it leads). The beta is chosen as the rate is, on the
    search prompts with the run seed, never on the fresh seeds that judge it; every beta's fresh seeds are the same
    seeds and the fitness's KL price does not depend on beta, so losses at different betas pair per (seed, prompt).
    Copies: the per-beta cells keep their own verdicts. Empty when fewer than two betas were evaluated.
    """
    if len({c.beta for c in cells}) < 2:
        return []
    chosen: list[Cell] = []
    for task in dict.fromkeys(c.task for c in cells):
        by_loss: dict[str, list[Cell]] = {}
        for c in sorted((c for c in cells if c.task == task), key=lambda c: c.beta):
            by_loss.setdefault(c.loss.hash, []).append(c)
        picks = []
        for series in by_loss.values():
            scored = [c for c in series if c.search_fitness is not None]
            best = max(scored, key=lambda c: c.search_fitness) if scored else series[0]  # max keeps the first tie
            picks.append(replace(best, vs_dpo=None, vs_best=None, best_baseline=None, vs_default=None,
                                 default_name=None, estimate={}))
        seeds = next((c.estimate["seeds"] for c in cells if c.task == task and c.estimate.get("seeds")), [])
        judge(picks, list(seeds), alpha=alpha)
        chosen.extend(picks)
    return chosen


def _score_only(runs: list[Evaluation]) -> TrainReply:
    """A grid point's stored search runs (one per tuning seed) as the sweep ranks it here: their mean whole
    fitness, no per-prompt halves (the evaluate protocol chooses the rate on the whole search split; a split would
    change which rate it chooses). One seed: that run's own numbers, exactly as before tuning seeds."""
    mean = (lambda values: float(np.mean(values))) if len(runs) > 1 else (lambda values: values[0])
    greedy = [ev.greedy for ev in runs]
    return TrainReply(fitness=mean([ev.fitness for ev in runs]), reward=mean([ev.reward for ev in runs]),
                      kl=mean([ev.kl for ev in runs]), steps=0, per_prompt=(), per_prompt_kl=(),
                      kl_coef=runs[0].kl_coef, learning_rate=runs[0].learning_rate,
                      greedy=None if any(g is None for g in greedy) else mean(greedy))
