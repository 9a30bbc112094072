"""Noise-aware selection: who gets extra search seeds, the pooled noise and lower bound, what the archive keeps
and what proposers rank by. The decision logic is pure; one real run (slow) races through a sandboxed worker."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import SMALL_RUN

from discopop.archive import Archive
from discopop.config.compose import ConfigError, compose, compose_settings, validate
from discopop.proposers.base import Candidate
from discopop.search import seed_race
from discopop.search.confirmation import top_candidates
from discopop.search.history import proposer_history, selection_policy
from discopop.search.seed_race import RacePolicy, SeedScores

POLICY = RacePolicy(max_seeds=3, top_k=2, z=1.0, noise_prior=0.01)


def test_pooled_noise_is_the_prior_until_measured_then_moves_to_the_measurement() -> None:
    assert seed_race.pooled_noise([SeedScores((0.9,))], prior=0.01) == pytest.approx(0.01)
    many = [SeedScores((0.90, 0.94)), SeedScores((0.80, 0.84, 0.82)), SeedScores((0.7, 0.74))] * 10
    measured = math.sqrt(sum(s.sum_sq for s in many) / sum(s.n - 1 for s in many))
    pooled = seed_race.pooled_noise(many, prior=0.01)
    assert measured > 0.02 and 0.01 < pooled < measured and pooled == pytest.approx(measured, rel=0.05)


def test_a_loss_measured_more_often_has_the_higher_lower_bound_at_the_same_mean() -> None:
    once, thrice = SeedScores((0.9,)), SeedScores((0.89, 0.9, 0.91))
    assert thrice.lower(0.01, 1.0) > once.lower(0.01, 1.0)
    assert once.lower(0.01, 1.0) == pytest.approx(0.89) and once.upper(0.01, 1.0) == pytest.approx(0.91)


def test_only_candidates_in_contention_get_another_seed_and_never_past_the_cap() -> None:
    rivals = [SeedScores((0.95, 0.95, 0.95)), SeedScores((0.93, 0.93, 0.93)), SeedScores((0.5,))]
    bar = seed_race.kth_lower(rivals, POLICY, noise=0.01)  # the 2nd best lower bound
    assert bar == pytest.approx(0.93 - 0.01 / math.sqrt(3))
    near, far = SeedScores((0.925,)), SeedScores((0.90,))
    assert seed_race.seeds_wanted(near, 1, False, bar, POLICY, 0.01) == 1
    assert seed_race.seeds_wanted(far, 1, False, bar, POLICY, 0.01) == 0
    assert seed_race.seeds_wanted(near, 3, False, bar, POLICY, 0.01) == 0  # at the cap (failed seeds count)
    # A reference (the bar everyone is compared with) gets every seed left at once, in contention or not.
    assert seed_race.seeds_wanted(far, 1, True, bar, POLICY, 0.01) == 2
    # Fewer rivals than k: everyone could enter the top k.
    assert seed_race.kth_lower(rivals[:1], POLICY, 0.01) == -math.inf


def test_race_seeds_are_neither_the_search_seed_nor_confirmation_seeds() -> None:
    from discopop.search.confirmation import fresh_seeds

    seeds = RacePolicy(max_seeds=RacePolicy.__dataclass_fields__["max_seeds"].default + 99).extra_seeds(7)
    assert len(seeds) == 99 and 7 not in seeds and not set(seeds) & set(fresh_seeds(7, 100))


def test_a_failed_seed_stops_the_race_and_the_summary_keeps_seed_order() -> None:
    from discopop.search.cascade import Race

    race = Race(2e-5, [0], [0.9])
    race.add(501, 0.92, None)  # runs finish in any order
    race.add(500, None, "train: worker died")
    race.add(502, float("nan"), None)
    assert race.failed == "seed 500: train: worker died"
    summary = seed_race.summary(race.seeds, race.values, race.learning_rate, race.failed)
    assert summary["seeds"] == [0, 500, 501, 502] and summary["fitness"] == [0.9, None, 0.92, None]
    assert summary["n"] == 2 and summary["mean"] == pytest.approx(0.91)
    assert summary["std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    scores = seed_race.scores_of("scored", 0.9, {"race": summary})
    assert scores == SeedScores((0.9, 0.92))
    assert seed_race.scores_of("train_failed", None, {"race": summary}) is None


@pytest.mark.parametrize("override, words", [
    ("selection.max_seeds=0", "selection.max_seeds must be in 1..100"),
    ("selection.top_k=0", "selection.top_k must be >= 1"),
    ("selection.z=-1", "selection.z must be"),
    ("selection.noise_prior=abc", "selection"),
    ("proposer.history_mode=blind", "proposer.history_mode must be feedback or none"),
    ("proposer.population=islands", "proposer.population must be cells or flat"),
])
def test_bad_selection_settings_are_one_line_errors(override: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")) as err:  # a type mistake: while composing
        validate(compose([override])[0])
    assert "\n" not in str(err.value)


def _scored(archive: Archive, name: str, fitness: float, race: list[float] | None, proposer: str = "evolution"):
    row = archive.add(Candidate(name, f"# {name}\n", proposer=proposer), 0 if proposer == "reference" else 1)
    metrics = {"race": seed_race.summary(list(range(len(race))), race, 1e-5, None)} if race else {}
    archive.finish(row, "scored", fitness=fitness, metrics=metrics)
    return row


def test_history_and_confirmation_rank_by_the_lower_bound_not_one_lucky_seed(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive.sqlite")
    archive.set_state(seed_race.STATE_KEY, POLICY.as_dict())
    lucky = _scored(archive, "lucky", 0.95, None)  # one seed, never raced
    steady = _scored(archive, "steady", 0.94, [0.94, 0.945, 0.95])
    noisy = _scored(archive, "noisy", 0.96, [0.96, 0.90, 0.91])
    entries = {e.name: e for e in proposer_history(archive)}
    noise = seed_race.pooled_noise([SeedScores((0.94, 0.945, 0.95)), SeedScores((0.96, 0.90, 0.91))], 0.01)
    assert entries["steady"].fitness_seeds == (0.94, 0.945, 0.95) and entries["lucky"].fitness_seeds == (0.95,)
    assert entries["steady"].fitness_mean == pytest.approx(0.945)
    assert entries["steady"].fitness_lcb == pytest.approx(0.945 - noise / math.sqrt(3))
    assert entries["lucky"].fitness_lcb == pytest.approx(0.95 - noise)
    assert entries["steady"].selection_fitness == entries["steady"].fitness_lcb
    ranked = sorted(entries.values(), key=lambda e: -e.selection_fitness)
    assert [e.name for e in ranked] == ["steady", "lucky", "noisy"]  # by one seed it would be noisy, lucky, steady
    assert [r.id for r in top_candidates(archive, 2)] == [steady, lucky]
    assert noisy not in [r.id for r in top_candidates(archive, 2)]
    archive.close()


@pytest.mark.slow
def test_a_real_race_archives_every_seed_and_races_only_contenders(tmp_path: Path, tiny_task) -> None:
    """A reference, then a contender, then a hopeless candidate, through sandboxed workers on the tiny task
    (7 fine-tunes; ~1 min on 2 idle cores). The tiny task barely separates losses, so contention is set by the
    archive: first too few rivals (everyone is in contention), then two rows no real loss can reach."""
    from discopop.execution.executors import LocalExecutor
    from discopop.fitness.tuning import LrProtocol
    from discopop.proposers.reference import reference_candidate
    from discopop.search.cascade import Evaluator
    from discopop.search.loop import worker_spec

    cfg, _ = compose_settings([*SMALL_RUN, "selection.max_seeds=3", "selection.top_k=2", "training.lr_grid=[2e-5]"])
    archive = Archive(tmp_path / "archive.sqlite")
    dpo = reference_candidate("dpo")
    near = dpo.code.replace("-F.logsigmoid(beta * rho)", "-F.logsigmoid(1.05 * beta * rho)")
    hopeless = dpo.code.replace("-F.logsigmoid(beta * rho)", "F.logsigmoid(beta * rho)")
    assert dpo.code != near and dpo.code != hopeless
    executor = LocalExecutor(worker_spec(cfg), workers=2)
    policy = RacePolicy.from_config(cfg)
    try:
        evaluator = Evaluator(archive, executor, seed=0, protocol=LrProtocol.from_config(cfg.training),
                              race=policy)
        (ref,) = list(evaluator.evaluate([archive.get(archive.add(dpo, 0))]))
        # One rival for a top 2: the contender is in contention whatever it scores, and races to the cap.
        (contender,) = list(evaluator.evaluate([archive.get(archive.add(Candidate("near_dpo", near,
                                                                                  proposer="evolution"), 1))]))
        for name in ("out_of_reach_1", "out_of_reach_2"):  # fitness is at most 1: these set a bar of ~2
            _scored(archive, name, 2.0, [2.0, 2.0, 2.0])
        (out,) = list(evaluator.evaluate([archive.get(archive.add(Candidate("negated_dpo", hopeless,
                                                                            proposer="evolution"), 1))]))
    finally:
        executor.close()
    assert selection_policy(archive) == policy
    for outcome in (ref, contender):  # every seed at the chosen rate, each an evaluations row
        assert outcome.status == "scored"
        race = outcome.metrics["race"]
        assert race["seeds"] == [0, 500, 501] and race["n"] == 3 and race["failed"] is None
        runs = archive.evaluations(outcome.row_id, split="search")
        assert sorted(e.seed for e in runs) == [0, 500, 501]
        assert {e.learning_rate for e in runs} == {race["learning_rate"]}
        # The race ranks each seed on the held-apart (odd-indexed) prompts, as ``tuning.split_fitness`` does; the
        # evaluations row keeps every prompt, so the race's per-seed figure is the odd half of its per-prompt fitness.
        ranked = [sum(e.per_prompt_fitness()[1::2]) / len(e.per_prompt_fitness()[1::2])
                  for e in sorted(runs, key=lambda e: e.seed)]
        assert ranked == pytest.approx(race["fitness"])
        assert race["fitness"][0] == pytest.approx(outcome.fitness)  # the fitness column: the search seed
    assert out.status == "scored" and out.metrics["race"]["seeds"] == [0]  # out of contention: one seed
    assert len(archive.evaluations(out.row_id)) == 1
    entry = next(e for e in proposer_history(archive) if e.id == contender.row_id)
    assert len(entry.fitness_seeds) == 3 and entry.fitness_lcb < entry.fitness_mean
    archive.close()
