"""Transfer in the verdict (``confirm.transfer``): which variants a run confirms on, the runs it asks each
variant's executor for, what it stores, and the verdict words; one test on the real diagnostic tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helper_confirm
import numpy as np
import pytest
from helper_confirm import PROMPTS, SEEDS, scored_row

from discopop.archive import Archive, Evaluation
from discopop.config import ConfigError, RunSettings, TrainingSettings, task_settings
from discopop.config.compose import compose
from discopop.config.variants import transfer_tasks, variant_names, variant_task
from discopop.execution.executors import Executor, Job, JobResult
from discopop.execution.messages import TrainReply
from discopop.fitness import stats
from discopop.fitness.result_store import DEADLINE_MISSED
from discopop.search.confirmation import fresh_seeds, judge
from discopop.search.transfer_confirm import (
    FAILS,
    HOLDS,
    SUPERSEDED_TRANSFER,
    TRANSFERS,
    UNJUDGED,
    confirm_transfer,
    split_of,
    transfer_text,
    transfer_verdicts,
)

REPO = Path(__file__).resolve().parent.parent
PROPOSALS = REPO / "discopop" / "proposals"
archive = helper_confirm.archive  # the shared fixture, asked for by name


def _settings(*overrides: str) -> RunSettings:
    cfg, _ = compose(list(overrides))
    settings = RunSettings.coerce(cfg)
    settings.check()
    return settings


def test_auto_transfers_each_task_to_one_held_out_variant() -> None:
    clean = _settings("task=diagnostic")
    assert clean.confirm.transfer == "auto"
    assert variant_names({"kind": "diagnostic", "preset": "clean"}, "auto") == ["label_noise"]
    assert variant_names({"kind": "diagnostic", "preset": "ties"}, "auto") == ["clean"]
    assert variant_names({"kind": "hub"}, "auto") == [] and variant_names({"kind": "diagnostic"}, []) == []
    ((name, task),) = transfer_tasks({"kind": "diagnostic", "preset": "clean", "contexts": 64, "name": "d"}, "auto")
    assert name == "label_noise" and task == {"kind": "diagnostic", "preset": "label_noise", "contexts": 64,
                                              "name": "d_label_noise"}


@pytest.mark.parametrize(("overrides", "message"), [
    (["task=diagnostic", "confirm.transfer=[clean]"], "unknown variant"),  # its own preset is no transfer
    (["task=diagnostic", "confirm.transfer=[noisy]"], "unknown variant"),
    (["task=diagnostic", "confirm.transfer=[ties,ties]"], "twice"),
    (["task=diagnostic", "confirm.transfer=all"], "auto or a list"),
])
def test_a_bad_transfer_setting_is_refused_before_the_run(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings(*overrides)


def test_an_explicit_list_is_kept_in_order() -> None:
    settings = _settings("task=diagnostic", "task.preset=ties", "confirm.transfer=[label_noise,clean]")
    assert variant_names({"kind": "diagnostic", "preset": "ties"}, settings.confirm.transfer) == [
        "label_noise", "clean"]
    with pytest.raises(ConfigError, match="no transfer variant"):
        variant_task({"kind": "hub"}, "clean")


class VariantExecutor(Executor):
    """Answers train jobs with exact-match rewards whose accuracy is ``accuracy[variant][row_id]``: one uniform
    draw per (seed, prompt) shared by every arm (common random numbers), as a real task's prompts are."""

    def __init__(self, variant: str, accuracy: dict[int, float], made: list[str]) -> None:
        self.variant, self.accuracy = variant, accuracy
        self.jobs: list[Job] = []
        self.closed = False
        made.append(variant)

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        for job in jobs:
            self.jobs.append(job)
            u = np.random.default_rng(job.seed).random(PROMPTS)
            rewards = (u < self.accuracy[job.row_id]).astype(float).tolist()
            yield JobResult(job, True, "train", reply=TrainReply(
                fitness=float(np.mean(rewards)), reward=float(np.mean(rewards)), kl=0.0, steps=4, kl_coef=0.0,
                per_prompt=rewards, per_prompt_kl=[0.0] * PROMPTS, learning_rate=job.learning_rate))

    def close(self) -> None:
        self.closed = True


def test_every_arm_is_rerun_on_each_variant_judged_as_one_family_and_resume_runs_nothing(archive: Archive) -> None:
    cand = scored_row(archive, "cand", 0.95, lr=4e-5)
    dpo, hinge = scored_row(archive, "dpo", 0.80, "reference"), scored_row(archive, "hinge", 0.90, "reference")
    # on "easy" the candidate clearly leads both; on "hard" it falls below hinge, the strongest there
    accuracy = {"easy": {cand: 0.80, dpo: 0.50, hinge: 0.55}, "hard": {cand: 0.50, dpo: 0.52, hinge: 0.75}}
    made: list[str] = []
    pools: dict[str, VariantExecutor] = {}

    def factory(name: str, task: dict[str, Any]) -> Executor:
        assert task == {"preset": name}
        pools[name] = VariantExecutor(name, accuracy[name], made)
        return pools[name]

    variants = [("easy", {"preset": "easy"}), ("hard", {"preset": "hard"})]
    comps = confirm_transfer(archive, factory, variants, base_seed=0, n_seeds=3, top_k=1, references=1)
    assert made == ["easy", "hard"] and all(p.closed for p in pools.values())
    for name, pool in pools.items():  # every arm, every fresh seed, the candidate at its own rate, confirm prompts
        assert sorted((j.row_id, j.seed) for j in pool.jobs) == sorted((r, s) for r in (cand, dpo, hinge)
                                                                       for s in SEEDS)
        assert {j.split for j in pool.jobs} == {"confirm"}
        assert {j.learning_rate for j in pool.jobs if j.row_id == cand} == {4e-5}
        assert len(archive.evaluations(split=split_of(name))) == 9
    assert archive.evaluations(split="confirm") == []  # the run's own confirmation is not touched
    assert len(comps) == 4 and {c.family for c in comps} == {4}  # one Holm family over every variant
    transfer = archive.get(cand).metrics["transfer"]
    assert transfer["easy"]["transfers"] == TRANSFERS and transfer["easy"]["vs_best"]["baseline"] == "hinge"
    assert transfer["hard"]["transfers"] == FAILS and transfer["hard"]["vs_best"]["verdict"] == stats.BELOW
    assert transfer["easy"]["vs_dpo"]["verdict"] == stats.BEATS
    assert archive.get(hinge).metrics["transfer"]["hard"]["mean"] > archive.get(dpo).metrics["transfer"]["hard"]["mean"]
    assert "vs_dpo" not in archive.get(dpo).metrics["transfer"]["easy"]  # a baseline row: its summary only
    text = transfer_text(transfer)
    assert text.startswith("easy: transfers (+0.2") and "hard: does not transfer" in text
    made.clear()
    again = confirm_transfer(archive, factory, variants, base_seed=0, n_seeds=3, top_k=1, references=1)
    assert made == [] and [c.verdict for c in again] == [c.verdict for c in comps]  # resumed: nothing re-run
    # a later check with another finalist: the first one's verdicts are kept apart, never shown as current
    other = scored_row(archive, "other", 0.99, lr=4e-5)
    accuracy["easy"][other], accuracy["hard"][other] = 0.6, 0.6
    confirm_transfer(archive, factory, variants, base_seed=0, n_seeds=3, top_k=1, references=1)
    assert "transfer" in archive.get(other).metrics and "transfer" not in archive.get(cand).metrics
    assert archive.get(cand).metrics[SUPERSEDED_TRANSFER] == transfer
    assert [row.name for row, _ in transfer_verdicts(archive)] == ["other"]


def test_a_second_run_reads_the_references_variant_runs_from_the_store_and_trains_only_candidates(
        tmp_path: Path) -> None:
    """Issue 25: references computed once, on the transfer variants too (a variant's runs keyed by its own task)."""
    from discopop.fitness.result_store import ResultCache, StoredRuns  # lazy: only this test needs the store

    cache = ResultCache(tmp_path / "results.sqlite")
    variants = [("easy", {"preset": "easy"}), ("hard", {"preset": "hard"})]
    ran: dict[int, list[str]] = {}
    for run in (1, 2):
        arch = Archive(tmp_path / f"run{run}.sqlite")
        try:
            cand = scored_row(arch, f"cand{run}", 0.95, lr=4e-5)  # each run finds its own candidate
            dpo, hinge = scored_row(arch, "dpo", 0.80, "reference"), scored_row(arch, "hinge", 0.90, "reference")
            accuracy = {cand: 0.8, dpo: 0.5, hinge: 0.55}
            made: list[str] = []
            pools: list[VariantExecutor] = []

            def factory(name: str, task: dict[str, Any], accuracy=accuracy, made=made, pools=pools) -> Executor:
                pools.append(VariantExecutor(name, accuracy, made))
                return pools[-1]

            def stores(name: str, task: dict[str, Any]) -> StoredRuns:
                return StoredRuns(cache, f"variant-{name}", 0.5, 1e-5)

            comps = confirm_transfer(arch, factory, variants, base_seed=0, n_seeds=3, top_k=1, references=1,
                                     stores=stores)
            names = {cand: "cand", dpo: "dpo", hinge: "hinge"}
            ran[run] = sorted(names[j.row_id] for pool in pools for j in pool.jobs)
            assert len(comps) == 4
            for name, _ in variants:  # every arm has its runs on every variant, stored or trained
                assert len(arch.evaluations(split=split_of(name))) == 9
        finally:
            arch.close()
    assert ran[1] == sorted(["cand", "dpo", "hinge"] * 6)  # 3 seeds x 2 variants each
    assert ran[2] == ["cand"] * 6  # the references' runs came from the store


def test_a_variant_within_noise_holds_and_a_failed_run_fails_it(archive: Archive) -> None:
    cand, dpo = scored_row(archive, "cand", 0.95), scored_row(archive, "dpo", 0.80, "reference")
    archive.add_evaluation(Evaluation(cand, SEEDS[0], split_of("broken"), None, error="train: loss is nan"))
    made: list[str] = []
    accuracy = {cand: 0.6, dpo: 0.6}
    variants = [("same", {}), ("broken", {})]
    confirm_transfer(archive, lambda name, _: VariantExecutor(name, accuracy, made), variants, 0, 3, 1, references=1)
    transfer = archive.get(cand).metrics["transfer"]
    assert transfer["same"]["transfers"] == HOLDS and transfer["same"]["vs_best"] is None  # DPO is the strongest
    assert transfer["broken"]["transfers"] == FAILS and transfer["broken"]["vs_dpo"]["verdict"] == stats.FAILED
    assert sum(1 for e in archive.evaluations(cand, split_of("broken")) if not e.ok) == 1  # never retried


class MissesDeadlines(VariantExecutor):
    """A loaded machine: the jobs of the rows in ``stalls`` miss the oracle's deadline ``misses`` times each (the
    message the oracle's channel gives), then train as ``VariantExecutor`` does."""

    def __init__(self, accuracy: dict[int, float], stalls: set[int], misses: int) -> None:
        super().__init__("slow", accuracy, [])
        self.stalls, self.left = stalls, {}
        self.misses = misses

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        for job in jobs:
            key = (job.row_id, job.seed)
            if job.row_id in self.stalls and self.left.setdefault(key, self.misses) > 0:
                self.left[key] -= 1
                self.jobs.append(job)
                yield JobResult(job, False, "train", f"oracle: {DEADLINE_MISSED} (0 of 20 bytes came)")
            else:
                yield from super().run([job])


@pytest.mark.parametrize("misses", [1, 2])
def test_a_reference_that_misses_the_oracle_deadline_is_retried_and_never_blamed_on_the_candidate(
        archive: Archive, misses: int) -> None:
    """Under load a trusted reference's seed can miss the oracle's deadline: it is run once more; missed twice, it
    is not archived (the seed stays missing, a resumed run trains it), and the candidate reads "not judged", not
    "does not transfer". A candidate that misses twice fails its seed, as a stalling loss should."""
    cand, dpo = scored_row(archive, "cand", 0.95), scored_row(archive, "dpo", 0.80, "reference")
    executor = MissesDeadlines({cand: 0.6, dpo: 0.6}, stalls={cand, dpo}, misses=misses)
    confirm_transfer(archive, lambda name, _: executor, [("slow", {})], 0, 3, 1, references=1)
    runs = {row: archive.evaluations(row, split_of("slow")) for row in (cand, dpo)}
    assert len([j for j in executor.jobs if j.row_id == dpo]) == 2 * len(SEEDS)  # each seed: a miss and a retry
    word = archive.get(cand).metrics["transfer"]["slow"]["transfers"]
    if misses == 1:
        assert all(e.ok for e in runs[dpo]) and all(e.ok for e in runs[cand]) and word == HOLDS
    else:
        assert runs[dpo] == [] and len(runs[cand]) == len(SEEDS) and not any(e.ok for e in runs[cand])
        assert word == FAILS  # the candidate's own failure decides first


def test_a_candidate_is_not_judged_where_only_the_baseline_could_not_finish(archive: Archive) -> None:
    cand, dpo = scored_row(archive, "cand", 0.95), scored_row(archive, "dpo", 0.80, "reference")
    executor = MissesDeadlines({cand: 0.6, dpo: 0.6}, stalls={dpo}, misses=2)
    confirm_transfer(archive, lambda name, _: executor, [("slow", {})], 0, 3, 1, references=1)
    entry = archive.get(cand).metrics["transfer"]["slow"]
    assert entry["transfers"] == UNJUDGED and entry["vs_dpo"]["verdict"] == stats.FAILED
    assert archive.evaluations(dpo, split_of("slow")) == []  # nothing stored: a resumed run trains those seeds
    executor.stalls = set()
    confirm_transfer(archive, lambda name, _: executor, [("slow", {})], 0, 3, 1, references=1)
    assert archive.get(cand).metrics["transfer"]["slow"]["transfers"] == HOLDS


class DiagnosticExecutor(Executor):
    """Runs the jobs in this process on the diagnostic tier. Only for the trusted reference files this test archives
    (``discopop/proposals``): candidate code only ever runs in the sandbox's loss oracle."""

    def __init__(self, task: dict[str, Any], training: dict[str, Any]) -> None:
        from discopop.fitness.diagnostic_tune import DiagnosticTuner  # lazy: torch, only for this executor

        self.tuner = DiagnosticTuner(task_settings(task), TrainingSettings(**training), kl_coef=0.0)

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        from discopop.contract.losses import load_loss  # lazy: trusted reference files only, see the class doc

        for job in jobs:
            reply = self.tuner.run(load_loss(job.code), seed=job.seed, split=job.split, learning_rate=job.learning_rate)
            yield JobResult(job, True, "train", reply=TrainReply(**reply))

    def close(self) -> None:
        pass


@pytest.mark.usefixtures("one_torch_thread")
def test_the_diagnostic_tier_confirms_on_its_held_out_preset(archive: Archive) -> None:
    small = {"kind": "diagnostic", "name": "diagnostic", "preset": "clean", "contexts": 32, "eval_contexts": 16,
             "steps": 10, "batch": 32}
    training = {"beta": 0.1, "learning_rate": 0.1}
    ipo = scored_row(archive, "ipo_as_candidate", 0.9, code=(PROPOSALS / "ipo.py").read_text())
    dpo = scored_row(archive, "dpo", 0.8, "reference", code=(PROPOSALS / "dpo.py").read_text())
    hinge = scored_row(archive, "hinge", 0.85, "reference", code=(PROPOSALS / "hinge.py").read_text())
    seeds = fresh_seeds(0, 2)
    own = DiagnosticExecutor(small, training)
    for row in (ipo, dpo, hinge):  # the run's own confirmation, on the clean preset
        for seed in seeds:
            (result,) = own.run([Job(row, archive.get(row).code, "train", seed, split="confirm")])
            archive.add_evaluation(Evaluation.from_reply(row, seed, "confirm", result.trained))
    judge(archive, [archive.get(ipo)], archive.get(dpo), archive.get(hinge), seeds)
    ((name, task),) = transfer_tasks(small, "auto")
    confirm_transfer(archive, lambda _, t: DiagnosticExecutor(t, training), [(name, task)], 0, 2, 1, references=1)
    runs = archive.evaluations(split=split_of("label_noise"))
    assert len(runs) == 6 and all(len(e.per_prompt) == 8 for e in runs)  # the variant's confirm half
    clean = {(e.candidate_id, e.seed): e.fitness for e in archive.evaluations(split="confirm")}
    assert all(e.fitness != clean[(e.candidate_id, e.seed)] for e in runs)  # noisy labels: other fine-tunes
    entry = archive.get(ipo).metrics["transfer"]["label_noise"]
    assert entry["vs_dpo"]["prompts"] == 8 and entry["vs_dpo"]["seeds"] == 2
    assert entry["transfers"] in (TRANSFERS, HOLDS, FAILS)
    assert archive.get(ipo).metrics["confirmation"]["vs_dpo"]["prompts"] == 8  # the run's own verdict stays


# ---- replications score prompts neither the search nor the confirmation used (confirm.split=replicate) ----


def test_the_replicate_part_is_disjoint_and_unset_changes_nothing() -> None:
    from discopop.tasks.base import heldout_parts

    heldout = [f"p{i}" for i in range(20)]
    assert heldout_parts({"search_prompts": 8}, heldout) == (heldout[:8], heldout[8:], [])
    search, confirm, replicate = heldout_parts({"search_prompts": 8, "replicate_prompts": 5}, heldout)
    assert (search, confirm, replicate) == (heldout[:8], heldout[8:15], heldout[15:])
    with pytest.raises(ValueError, match="replicate_prompts must be in"):
        heldout_parts({"search_prompts": 8, "replicate_prompts": 12}, heldout)  # nothing left to confirm on


def test_unset_new_settings_leave_the_cache_keys_as_they_were() -> None:
    from discopop.fitness.result_store import settings_key
    from discopop.tasks import build_key, stable_key

    cfg, _ = compose([])
    task = dict(cfg["task"])
    assert task["replicate_prompts"] == 0
    old = {k: v for k, v in task.items() if k != "replicate_prompts"}
    assert stable_key(task) == stable_key(old) and build_key(task) == build_key(old)
    kept = {**cfg, "task": {**task, "replicate_prompts": 100}}
    assert settings_key(kept) != settings_key(cfg)  # a shorter confirm part scores other prompts: another key


def test_a_replication_needs_prompts_kept_back() -> None:
    with pytest.raises(ConfigError, match="confirm.split=replicate needs"):
        _settings("confirm.split=replicate")
    assert _settings("confirm.split=replicate", "task.replicate_prompts=500").confirm.split == "replicate"
    assert _settings("task=diagnostic", "confirm.split=replicate", "task.replicate_contexts=32")


@pytest.mark.usefixtures("one_torch_thread")
def test_diagnostic_replicate_contexts_are_scored_apart() -> None:
    from discopop.contract.losses import load_loss
    from discopop.fitness.diagnostic_tune import DiagnosticTuner
    from discopop.tasks import load_task
    from discopop.tasks.diagnostic import from_config, split_contexts

    cfg = {"kind": "diagnostic", "preset": "clean", "contexts": 32, "eval_contexts": 32, "steps": 5,
           "batch": 32, "replicate_contexts": 6}
    task = load_task(cfg)
    parts = [task.prompts(s) for s in ("search", "confirm", "replicate")]
    assert [len(p) for p in parts] == [16, 10, 6] and len(set(sum(parts, []))) == 32
    assert split_contexts(from_config({**cfg, "replicate_contexts": None}), "confirm") == slice(16, 32)
    with pytest.raises(ValueError, match="replicate_contexts"):
        split_contexts(from_config({**cfg, "replicate_contexts": None}), "replicate")
    tuner = DiagnosticTuner(task_settings(cfg), TrainingSettings(beta=0.1, learning_rate=0.1), kl_coef=0.0)
    reply = tuner.run(load_loss((PROPOSALS / "dpo.py").read_text()), seed=3, split="replicate")
    assert len(reply["per_prompt"]) == 6


def test_a_replication_confirms_on_the_replicate_part(archive: Archive) -> None:
    from discopop.search.confirmation import confirm

    cand, dpo = scored_row(archive, "cand", 0.95), scored_row(archive, "dpo", 0.80, "reference")
    made: list[str] = []
    pool = VariantExecutor("own", {cand: 0.8, dpo: 0.5}, made)
    confirm(archive, pool, base_seed=100, n_seeds=3, top_k=1, references=1, split="replicate")
    assert {j.split for j in pool.jobs} == {"replicate"} and len(pool.jobs) == 6
    assert archive.evaluations(split="confirm") == [] and len(archive.evaluations(split="replicate")) == 6
    assert archive.get(cand).metrics["confirmation"]["vs_dpo"]["verdict"] == stats.BEATS


def test_discover_confirms_on_the_held_out_addition_variant_end_to_end(discovered: tuple[Path, Any]) -> None:
    """The default (auto) on the embedded task family, through real workers: the hardflip variant's pairs are built
    from the cached SFT stage, every arm re-trains there, and the verdict carries the transfer word. The run is the
    session's shared one (``SHARED_RUN`` in tests/conftest.py: the small run with ``confirm.transfer=auto``)."""
    import json  # lazy: only this end-to-end test reads the archive's JSON
    import sqlite3

    run_dir, out = discovered
    assert out.returncode == 0, out.stderr[-2000:]
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        splits = conn.execute("SELECT DISTINCT c.name, e.split FROM evaluations e JOIN candidates c"
                              " ON c.id = e.candidate_id WHERE e.error IS NULL").fetchall()
        confirmed = [json.loads(m) for (m,) in conn.execute(
            "SELECT metrics FROM candidates WHERE proposer='evolution' AND metrics LIKE '%confirmation%'")]
    assert ("dpo", "transfer:hardflip") in splits and ("lrml", "transfer:hardflip") in splits
    assert confirmed and all(m["transfer"]["hardflip"]["transfers"] in (TRANSFERS, HOLDS, FAILS) for m in confirmed)
