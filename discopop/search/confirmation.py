"""Fresh-seed confirmation of the winners: re-train, re-score on held-back prompts, compare in pairs.

Search fitness is measured on one seed and the search prompts, and the best of many noisy
measurements is biased upwards (winner's curse). So the top candidates, DPO and the run's
``references`` strongest baselines by search fitness are re-trained on the same fresh seeds, each at
its own learning rate and beta (``metrics["learning_rate"]``, ``metrics["beta"]``, else the config's), and
scored on the
``confirm`` prompts, which the search never saw. The strongest baseline is the confirmed reference
with the best fresh-seed mean (no failed seed), so a candidate is never held to a baseline that only
led on the search seeds, where the best references are often within noise of each other. A fresh
seed draws a new pair subsample as well as a new data order (``discopop.fitness.training``), so seed noise
is real training noise.

Each candidate is compared with DPO and with the strongest baseline per (seed, prompt)
(``discopop.fitness.stats``); all comparisons of the confirmation are Holm-corrected together. Every
training run is an ``evaluations`` row in the archive, so a resumed confirmation re-uses the runs
already done, and a failed run stays failed: it makes its comparisons "failed", never a smaller
sample. Results go to ``metrics["confirmation"]`` of each confirmed row:

``{"seeds", "fitness" (per seed, None where it failed), "mean", "se", "std" (of the per-seed fitness:
the fresh-seed noise the LLM is told, ``proposers.facts``), "learning_rate", ("beta" where the search chose
one), "failed", "vs_dpo",
"vs_best"}`` where ``vs_*`` are ``stats.Comparison.as_dict()`` plus ``"text"`` (``vs_best`` is None
when DPO is the strongest baseline; both are absent on baseline rows). A row an earlier confirmation of the
run judged and this one leaves out keeps that result under ``metrics["superseded_confirmation"]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from discopop.archive import Archive, Evaluation, Row
from discopop.contract.losses import code_hash
from discopop.execution.executors import Executor, Job, JobResult
from discopop.fitness import stats
from discopop.fitness.result_store import MACHINE_RETRIES, StoredRuns, archives_failure, storable
from discopop.search.history import PICK_STAGE, pick_standings
from discopop.status import Status

# Where a row's confirmation goes when a later confirmation of the run leaves the row out: its verdicts were
# Holm-corrected in another family, against a strongest baseline that may have changed, so the leaderboard, the
# report and the LLM's facts must not show them as current; kept (nothing is lost), under this key.
SUPERSEDED = "superseded_confirmation"

SPLIT = "confirm"
SEED_OFFSET = 1000  # fresh seeds are base_seed + 1000 + i: never the search seed


def fresh_seeds(base_seed: int, n_seeds: int) -> list[int]:
    return [base_seed + SEED_OFFSET + i for i in range(n_seeds)]


def reference_row(archive: Archive, name: str) -> Row | None:
    rows = archive.rows_by_proposer("reference", status=Status.SCORED, name=name)
    return rows[0] if rows else None


def _by_selection(archive: Archive, rows: list[Row], pick_stage: bool = True) -> list[Row]:
    """Best first by the search's lower confidence bound (``seed_race``; one seed each: by search fitness), on the
    prompts held out of selection where the run held them out (``history.pick_standings``).

    ``pick_stage``: rows re-trained on pick seeds (``metrics.pick_stage``, ``search.pick_stage``) come first, by
    their mean there; a row that failed a pick seed comes last (it would fail the confirmation's seeds too)."""
    standing = pick_standings(archive)

    def key(row: Row) -> tuple[int, float, int]:
        stage = row.metrics.get(PICK_STAGE) if pick_stage else None
        if isinstance(stage, dict):
            mean = stage.get("mean")
            return (0, -float(mean), row.id) if mean is not None else (2, 0.0, row.id)
        return 1, -(standing[row.id].lcb if row.id in standing else -math.inf), row.id

    return sorted(rows, key=key)


def best_references(archive: Archive, n: int, pick_stage: bool = True) -> list[Row]:
    """The ``n`` reference losses with the best search fitness in this run (lower confidence bound over seeds;
    ``pick_stage``: as :func:`_by_selection`)."""
    return _by_selection(archive, archive.rows_by_proposer("reference", status=Status.SCORED), pick_stage)[:n]


def strongest_on_fresh_seeds(archive: Archive, references: list[Row], seeds: list[int],
                             split: str = SPLIT) -> Row | None:
    """The reference with the best fresh-seed mean among those with every seed scored; else the search's first.

    ``split``: the archive split the runs are stored under (a transfer variant's, ``search.transfer_confirm``)."""
    def fresh_mean(row: Row) -> float | None:
        _, summary = arm_scores(archive, row, seeds, split)
        return summary["mean"] if summary["failed"] is None else None

    return stats.strongest_baseline(references, fresh_mean) if references else None


def baseline_pool(contenders: list[Row], dpo: Row) -> list[Row]:
    """Every confirmed reference a candidate may be held to: the contenders and DPO (once). Without DPO here, a run
    whose contenders all trail DPO on the fresh seeds would call the weaker of them "the strongest baseline"."""
    return list({r.id: r for r in [*contenders, dpo]}.values())


# Two rows whose search fine-tunes scored every prompt alike (correlation of the per-prompt fitness over their
# common search seeds at or above 1 - SAME_OUTCOME_TOL) trained the same policy, whatever their code says. On the
# README's default run (docs/results.md, fifth stop) the three finalists were one loss written three ways:
# 1 - r ~ 1e-5 between them, against >= 5.5e-4 from every other candidate and 5e-3 from IPO; 1e-4 sits between.
SAME_OUTCOME_TOL = 1e-4


def _search_outcome(archive: Archive, row: Row) -> dict[int, np.ndarray]:
    """The row's per-prompt search fitness per seed at its chosen learning rate (seeds run once at it only)."""
    rate = learning_rate(row)
    runs: dict[int, list[Evaluation]] = {}
    for ev in archive.evaluations(row.id, split="search"):
        if ev.ok and rate is not None and ev.learning_rate is not None and math.isclose(ev.learning_rate, rate):
            runs.setdefault(ev.seed, []).append(ev)
    return {seed: np.asarray(evs[0].per_prompt_fitness(), dtype=np.float64)
            for seed, evs in runs.items() if len(evs) == 1 and evs[0].per_prompt}


def same_outcome(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> bool:
    """Whether two rows' search fine-tunes scored the prompts alike on every seed both ran (``SAME_OUTCOME_TOL``)."""
    seeds = sorted(s for s in a.keys() & b.keys() if a[s].shape == b[s].shape)
    if not seeds:
        return False
    x, y = np.concatenate([a[s] for s in seeds]), np.concatenate([b[s] for s in seeds])
    if x.size < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()) or x.std() == 0 or y.std() == 0:
        return bool(x.size and np.array_equal(x, y))
    return float(np.corrcoef(x, y)[0, 1]) >= 1.0 - SAME_OUTCOME_TOL


def top_candidates(archive: Archive, k: int, pick_stage: bool = True) -> list[Row]:
    """Best scored non-reference candidates by search fitness (lower confidence bound over their seeds), one per
    trained outcome: a row whose search fine-tunes match a better pick's (``same_outcome``) is passed over, so the
    confirmation's finalist slots and its Holm tests go to different policies, not to one loss written k ways.
    ``pick_stage``: ordered as :func:`_by_selection` (False: as selection ranked them, which fills the pool)."""
    picked: list[tuple[Row, dict[int, np.ndarray]]] = []
    rows = archive.rows_not_by_proposer("reference", status=Status.SCORED)
    for row in _by_selection(archive, rows, pick_stage):
        if len(picked) >= k:
            break
        outcome = _search_outcome(archive, row)
        if not any(same_outcome(outcome, other) for _, other in picked):
            picked.append((row, outcome))
    return [row for row, _ in picked]


def learning_rate(row: Row) -> float | None:
    """The row's own learning rate from the search (None: the config default)."""
    lr = row.metrics.get("learning_rate")
    return float(lr) if lr is not None else None


def chosen_beta(row: Row) -> float | None:
    """The beta the row's search chose (``metrics.beta``, where ``training.beta_grid`` was on; None: the config's)."""
    beta = row.metrics.get("beta")
    return float(beta) if beta is not None else None


def store_current(archive: Archive, key: str, retired_as: str, results: dict[int, dict[str, Any]]) -> None:
    """Write ``results`` (row id -> value) under ``metrics[key]``, and move ``key`` to ``retired_as`` on every other
    row that has it: an earlier round's rows that this one leaves out (a resumed, longer run; another pick) keep
    what they had, and nothing shows it as current."""
    for row in archive.rows():
        if row.id not in results and isinstance(row.metrics.get(key), dict):
            archive.retire_metric(row.id, key, retired_as)
    for row_id, value in results.items():
        archive.update_metrics(row_id, {key: value})


def latest_runs(archive: Archive, row_id: int, split: str = SPLIT) -> dict[int, Evaluation]:
    """This row's confirmation runs by seed (the latest where a seed was run twice)."""
    return {e.seed: e for e in archive.evaluations(row_id, split=split)}


def missing_jobs(archive: Archive, rows: list[Row], seeds: list[int], split: str = SPLIT,
                 prompts: str | None = None) -> list[Job]:
    """A confirm-split training job, at the row's own learning rate and beta, for every (row, seed) not yet run.

    A stored failure is not retried: re-running until a seed succeeds would select the lucky ones. ``split``:
    where the runs are stored in the archive; ``prompts``: the task's held-out part the job scores (default: the
    same name; a transfer variant's runs are stored apart but score that variant's own confirm prompts).
    """
    return [Job(r.id, r.code, "train", seed, split=prompts or split, learning_rate=learning_rate(r),
                beta=chosen_beta(r))
            for r in rows for seed in seeds if seed not in latest_runs(archive, r.id, split)]


def run_missing(archive: Archive, executor: Executor, rows: list[Row], seeds: list[int],
                store: StoredRuns | None = None, split: str = SPLIT, prompts: str | None = None) -> None:
    """Run :func:`missing_jobs`; store each run (or its failure) as an evaluation as soon as it finishes.

    With a ``store``, a reference's run comes from it when an earlier run with the same settings made it
    (the same fresh seed, split and learning rate), and one it lacks is stored when it finishes. ``split``:
    the archive split of the runs (the store is keyed by the run's own task: pass none for another task).

    A failure that says nothing about the loss (``result_store.storable``: a worker that died, an oracle that could
    not start or missed its deadline on a loaded machine) is run ``MACHINE_RETRIES`` more times; what is archived
    after that is ``result_store.archives_failure``'s rule (a reference's machine failure is not: its seed stays
    missing, the verdicts that need it read "not judged", and a resumed run trains it again).
    """
    def add(result: JobResult) -> None:
        job = result.job
        if result.ok:
            archive.add_evaluation(Evaluation.from_reply(job.row_id, job.seed, split, result.trained))
        elif archives_failure(result, trusted_code=by_id[job.row_id].proposer == "reference"):
            archive.add_evaluation(Evaluation(job.row_id, job.seed, split, job.learning_rate,
                                              error=f"{result.stage}: {result.error}"))

    by_id = {r.id: r for r in rows}
    todo = []
    for job in missing_jobs(archive, rows, seeds, split, prompts):
        row = by_id[job.row_id]
        found = store.lookup(job, code_hash(row.code)) if store is not None and row.proposer == "reference" else None
        if found is not None:
            add(found)
        else:
            todo.append(job)
    for attempt in range(1 + MACHINE_RETRIES):
        again = []
        for result in executor.run(todo):
            row = by_id[result.job.row_id]
            if store is not None and row.proposer == "reference":
                store.save(result, code_hash(row.code))
            if attempt < MACHINE_RETRIES and not storable(result):
                again.append(result.job)
            else:
                add(result)
        todo = again
        if not todo:
            break


def arm_scores(archive: Archive, row: Row, seeds: list[int],
               split: str = SPLIT) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The row's seeds x prompts fitness matrix (None if any seed failed or is missing) and its summary."""
    runs = latest_runs(archive, row.id, split)
    failed = None
    fitness: list[float | None] = []
    matrix = []
    for seed in seeds:
        run = runs.get(seed)
        if run is None:
            failed = failed or f"seed {seed}: no result"
        elif not run.ok or not all(map(math.isfinite, run.per_prompt_fitness())) or not run.per_prompt:
            failed = failed or f"seed {seed} failed: {run.error or 'no finite per-prompt scores'}"
        fitness.append(run.fitness if run is not None and run.ok else None)
        if run is not None and run.ok:
            matrix.append(run.per_prompt_fitness())
    summary: dict[str, Any] = {"seeds": seeds, "fitness": fitness, "learning_rate": learning_rate(row),
                               "failed": failed, "mean": None, "se": None, "std": None}
    if chosen_beta(row) is not None:  # only where the beta axis chose one: without it, the summary is as before
        summary["beta"] = chosen_beta(row)
    done = [f for f in fitness if f is not None]
    if done:
        summary["mean"] = float(np.mean(done))
    if len(done) >= 2:
        summary["std"] = float(np.std(done, ddof=1))
    if failed is not None or len({len(m) for m in matrix}) != 1:
        if failed is None:
            summary["failed"] = "per-prompt scores of different lengths"
        return None, summary
    scores = np.asarray(matrix, dtype=float)
    if len(seeds) >= 2:
        summary["se"] = stats.crossed_estimate(scores).se
    return scores, summary


Scored = dict[int, tuple[np.ndarray | None, dict[str, Any]]]


def pairwise(archive: Archive, candidates: list[Row], dpo: Row, best: Row | None, seeds: list[int],
             alpha: float = stats.ALPHA, also: list[Row] | None = None,
             split: str = SPLIT) -> tuple[Scored, list[tuple[Row, str, Row, stats.Comparison]]]:
    """Every arm's scores on ``split`` and each candidate's comparison with DPO and the strongest baseline, not
    yet Holm-corrected (the caller decides the family): (scores by row id, [(candidate, role, baseline, comp)])."""
    arms = {r.id: r for r in [*candidates, dpo, *([best] if best else []), *(also or [])]}
    scored = {row_id: arm_scores(archive, row, seeds, split) for row_id, row in arms.items()}
    baselines = [("vs_dpo", dpo)] + ([("vs_best", best)] if best is not None and best.id != dpo.id else [])
    comparisons: list[tuple[Row, str, Row, stats.Comparison]] = []
    for cand in candidates:
        a, a_info = scored[cand.id]
        for key, base in baselines:
            b, b_info = scored[base.id]
            failure = a_info["failed"] and f"{cand.name}: {a_info['failed']}"
            failure = failure or (b_info["failed"] and f"{base.name}: {b_info['failed']}")
            comp = stats.compare(cand.name, base.name, a, b, alpha=alpha, failure=failure or None)
            comp.extra.update(baseline_id=base.id, role=key)
            if b_info["failed"] and not a_info["failed"]:  # nothing is known of the candidate: not judged
                comp.extra.update(baseline_failed=True)
            comparisons.append((cand, key, base, comp))
    return scored, comparisons


def judge(archive: Archive, candidates: list[Row], dpo: Row, best: Row | None, seeds: list[int],
          alpha: float = stats.ALPHA, also: list[Row] | None = None, split: str = SPLIT) -> list[stats.Comparison]:
    """Compare each candidate with DPO and the strongest baseline from the stored runs; store the verdicts
    (and the fresh-seed summaries of ``also``, the other confirmed references)."""
    scored, comparisons = pairwise(archive, candidates, dpo, best, seeds, alpha=alpha, also=also, split=split)
    stats.decide([c for *_, c in comparisons], alpha=alpha)
    confirmation = {row_id: dict(info) for row_id, (_, info) in scored.items()}
    for cand, key, _, comp in comparisons:
        entry = comp.as_dict()
        entry["text"] = stats.describe(entry)
        confirmation[cand.id][key] = entry
        confirmation[cand.id].setdefault("vs_best", None)
    store_current(archive, "confirmation", SUPERSEDED, confirmation)
    return [c for *_, c in comparisons]


def confirm(archive: Archive, executor: Executor, base_seed: int, n_seeds: int, top_k: int,
            baseline: str = "dpo", alpha: float = stats.ALPHA, references: int = 2,
            store: StoredRuns | None = None, split: str = SPLIT) -> list[stats.Comparison]:
    """Re-train the top candidates, ``baseline`` and the ``references`` best baselines on fresh seeds; hold the
    candidates to DPO and to the best of those references on the fresh seeds; store everything.

    ``store``: the shared result store the references' fresh-seed runs are looked up in first. ``split``: the
    held-out prompts scored, ``confirm`` or, in a replication run, ``replicate`` (``task.replicate_prompts``)."""
    dpo = reference_row(archive, baseline)
    if dpo is None or n_seeds < 1:
        return []
    seeds = fresh_seeds(base_seed, n_seeds)
    contenders = best_references(archive, max(1, references))
    candidates = top_candidates(archive, top_k)
    arms = list({r.id: r for r in [*candidates, dpo, *contenders]}.values())
    run_missing(archive, executor, arms, seeds, store, split)
    best = strongest_on_fresh_seeds(archive, baseline_pool(contenders, dpo), seeds, split)
    return judge(archive, candidates, dpo, best, seeds, alpha=alpha, also=contenders, split=split)
