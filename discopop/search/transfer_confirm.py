"""Transfer in the verdict: the confirmation's arms re-trained and compared on held-out task variants.

A winner of the run's own task may have fitted that task's quirks. So after the fresh-seed confirmation
(``search.confirmation``) the same arms (the top candidates, DPO and the ``confirm.references`` best
baselines) are re-trained on each variant ``confirm.transfer`` names (``config.variants``), on the same
fresh seeds, each at the learning rate it was confirmed at, and scored on the variant's own ``confirm``
prompts. Each candidate is compared with DPO and with the reference strongest on that variant's fresh
seeds, with the same paired statistics (``fitness.stats``); all transfer comparisons (every candidate,
baseline and variant) are Holm-corrected together as one family, apart from the run's own confirmation,
whose verdicts stay as they were. "Wins and transfers" is an intersection of the two claims, so it needs no
further correction.

A variant is another task, so it runs on its own pool of workers (``make_executor(name, task)``, closed
when its runs are done). The runs are archived under the split ``transfer:<variant>`` and, like the
confirmation's, re-used on resume, a stored failure never retried. Results go to ``metrics["transfer"]``
of every confirmed row: ``{variant: {<the arm_scores summary>, "baseline", and on candidates "vs_dpo",
"vs_best", "transfers"}}``, where ``transfers`` is one of :data:`WORDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from discopop.archive import Archive, Row
from discopop.execution.executors import Executor
from discopop.fitness import stats
from discopop.fitness.result_store import StoredRuns
from discopop.search.confirmation import SPLIT as CONFIRM
from discopop.search.confirmation import (
    baseline_pool,
    best_references,
    fresh_seeds,
    missing_jobs,
    pairwise,
    reference_row,
    run_missing,
    store_current,
    strongest_on_fresh_seeds,
    top_candidates,
)

PREFIX = "transfer:"
TRANSFERS, HOLDS, FAILS, UNJUDGED = "transfers", "holds", "does not transfer", "not judged"
# beats the variant's strongest baseline / within noise of it / below it or failed / the baseline failed (the
# machine's fault where a reference's run could not finish: the candidate is neither credited nor blamed)
WORDS = (TRANSFERS, HOLDS, FAILS, UNJUDGED)

ExecutorFactory = Callable[[str, dict[str, Any]], Executor]  # (variant name, its plain task settings) -> executor
# (variant name, its plain task settings) -> the shared result store as keyed for that variant (None: none)
StoreFactory = Callable[[str, dict[str, Any]], StoredRuns | None]


TRANSFER = "transfer"  # a row's metrics key for its verdicts on the held-out variants
# Where they go when a later transfer check of the run leaves the row out (a longer run, another finalist pick): its
# verdicts were Holm-corrected in another family, so nothing may show them as current; kept, under this key.
SUPERSEDED_TRANSFER = "superseded_transfer"


def split_of(variant: str) -> str:
    """The archive split a variant's runs are stored under."""
    return f"{PREFIX}{variant}"


def _unique(rows: list[Row | None]) -> list[Row]:
    return list({r.id: r for r in rows if r is not None}.values())


def confirm_transfer(archive: Archive, make_executor: ExecutorFactory, variants: list[tuple[str, dict[str, Any]]],
                     base_seed: int, n_seeds: int, top_k: int, baseline: str = "dpo", references: int = 2,
                     alpha: float = stats.ALPHA, log: Callable[[str], None] | None = None,
                     prompts: str = CONFIRM, stores: StoreFactory | None = None) -> list[stats.Comparison]:
    """Re-train the confirmation's arms on every variant (what is not archived yet), judge and store them.

    ``prompts``: the variant's held-out part scored (``confirm``; a replication run's ``replicate``). ``stores``:
    the shared result store keyed by each variant's own settings, so that the references' fresh-seed runs there
    are computed once, as on the run's own task (a second run trains only the candidates' runs)."""
    dpo = reference_row(archive, baseline)
    if dpo is None or n_seeds < 1 or not variants:
        return []
    seeds = fresh_seeds(base_seed, n_seeds)
    contenders = best_references(archive, max(1, references))
    candidates = top_candidates(archive, top_k)
    arms = _unique([*candidates, dpo, *contenders])
    for name, task in variants:
        split = split_of(name)
        todo = missing_jobs(archive, arms, seeds, split, prompts)
        if not todo:
            continue
        if log:
            log(f"transfer: {len(todo)} fine-tune(s) on the held-out variant {name}")
        store = stores(name, task) if stores is not None else None
        executor = make_executor(name, task)
        try:
            run_missing(archive, executor, arms, seeds, store, split, prompts)
        finally:
            executor.close()
    return judge_transfer(archive, candidates, dpo, contenders, seeds, [n for n, _ in variants], alpha)


def judge_transfer(archive: Archive, candidates: list[Row], dpo: Row, contenders: list[Row], seeds: list[int],
                   variants: list[str], alpha: float = stats.ALPHA) -> list[stats.Comparison]:
    """Compare each candidate with DPO and each variant's strongest baseline; Holm over all of them; store."""
    stored: dict[int, dict[str, dict[str, Any]]] = {}
    family: list[tuple[Row, str, str, stats.Comparison]] = []
    for name in variants:
        split = split_of(name)
        best = strongest_on_fresh_seeds(archive, baseline_pool(contenders, dpo), seeds, split)
        scored, comps = pairwise(archive, candidates, dpo, best, seeds, alpha=alpha, also=contenders, split=split)
        for row_id, (_, info) in scored.items():
            stored.setdefault(row_id, {})[name] = {**info, "baseline": best.name if best is not None else None}
        for cand, key, _, comp in comps:
            comp.extra.update(variant=name)
            family.append((cand, name, key, comp))
    stats.decide([c for *_, c in family], alpha=alpha)
    for cand, name, key, comp in family:
        entry = comp.as_dict()
        entry["text"] = stats.describe(entry)
        stored[cand.id][name][key] = entry
        stored[cand.id][name].setdefault("vs_best", None)
    for cand in candidates:
        for name in variants:
            stored[cand.id][name]["transfers"] = verdict_word(stored[cand.id][name])
    store_current(archive, TRANSFER, SUPERSEDED_TRANSFER, stored)
    return [c for *_, c in family]


def verdict_word(entry: Mapping[str, Any]) -> str:
    """Whether a candidate transfers to a variant: its comparison with that variant's strongest baseline (DPO
    where DPO is the strongest) beats it, is within noise of it, or is below it (or the candidate failed); not
    judged where only the baseline failed."""
    comp = entry.get("vs_best") or entry.get("vs_dpo") or {}
    verdict = comp.get("verdict")
    if comp.get("baseline_failed"):
        return UNJUDGED
    if verdict == stats.BEATS:
        return TRANSFERS
    if verdict == stats.WITHIN:
        return HOLDS
    return FAILS


def transfer_text(transfer: Mapping[str, Any] | None) -> str:
    """A candidate's transfer verdicts in one line (``""`` where it has none), e.g.
    ``"label_noise: transfers (+0.021 ... vs hinge)"``."""
    if not isinstance(transfer, Mapping):
        return ""
    parts = []
    for name, entry in transfer.items():
        if not isinstance(entry, Mapping) or "transfers" not in entry:
            continue
        comp = entry.get("vs_best") or entry.get("vs_dpo")
        label = "DPO" if not entry.get("vs_best") else None
        parts.append(f"{name}: {entry['transfers']} ({stats.describe(comp, label)})")
    return "; ".join(parts)


def transfer_verdicts(archive: Archive) -> list[tuple[Row, str]]:
    """Each confirmed candidate with transfer verdicts, and those verdicts in one line (the loop reports them)."""
    found = []
    for row in archive.rows_not_by_proposer("reference"):
        text = transfer_text(row.metrics.get(TRANSFER))
        if text:
            found.append((row, text))
    return found
