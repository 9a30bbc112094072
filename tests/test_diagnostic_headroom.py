"""benchmarks/diagnostic_headroom.py: the tier's ceilings, and its pairs figure from ``fitness.pairs_ceiling``.

Why: the benchmark once kept its own Bradley-Terry fit, which under-estimated what the pairs carry (docs/results.md
§0); its pairs row must be the shared pipeline, and its ceilings must stay ordered as ceilings are.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import benchmark_script

from discopop.fitness import pairs_ceiling
from discopop.tasks.diagnostic import setting, split_contexts, world

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


def test_the_pairs_row_is_the_shared_pipeline() -> None:
    dh, s = benchmark_script("diagnostic_headroom"), setting("clean")
    scores, choice = dh.pairs_pipeline(s, [1000, 1001], tune=1)
    assert choice == pairs_ceiling.choose(s, [2000])  # chosen on the first tuning seed, as a run chooses a rate
    assert np.array_equal(scores, pairs_ceiling.confirm_scores(s, choice, [1000, 1001]))
    assert not np.array_equal(scores[0], scores[1])  # each fresh seed's own pairs


def test_the_ceilings_are_ordered() -> None:
    dh, s = benchmark_script("diagnostic_headroom"), setting("narrow_support")
    w, part = world(s), split_contexts(s, "confirm")
    reference = float((w.eval_ref[part].exp() * w.eval_reward[part]).sum(dim=1).mean())
    anything = float(dh.unconstrained(w.eval_ref[part], w.eval_reward[part], s.kl_coef).mean())
    own = dh.split_fitness(s, dh.fit_policy(w.eval_features[part], w.eval_ref[part], w.eval_reward[part],
                                            s.kl_coef, 0.0))
    true_reward, _ = dh.fit_chosen(s, w.train_reward, (1e-3, 1e-2))
    pipeline = float(dh.pairs_pipeline(s, [1000], tune=1)[0].mean())
    assert anything > own > reference  # no policy beats the per-context optimum; training beats none
    assert own >= true_reward - 1e-6 and own >= pipeline - 1e-6  # the class's own best on these contexts
    assert pipeline > reference  # the pairs carry something


def test_a_composite_preset_is_its_worlds_with_the_fields_set_on_each() -> None:
    dh = benchmark_script("diagnostic_headroom")
    worlds = dh.parse_preset("narrow_support+clean+pairs_per_context=128", 0)
    assert [s.name for s in worlds] == ["narrow_support", "clean"]
    assert [s.pairs_per_context for s in worlds] == [128, 128]
    one = setting("narrow_support", task_seed=1, extra_confirm_contexts=5)
    assert dh.parse_preset("narrow_support+task_seed=1", 5) == [one]  # one world, as before
    assert dh.averaged([{"a": 1.0, "b": 0.0}, {"a": 2.0, "b": 1.0}]) == {"a": 1.5, "b": 0.5}
