"""The diagnostic tier: deterministic, exact, sensitive to the loss, and the same through the loss oracle."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_remote_loss import remote, supply  # noqa: F401 - the module-scoped oracle supply fixture

from discopop.contract.losses import load_loss
from discopop.fitness import stats
from discopop.fitness.diagnostic_tune import DiagnosticFailure, batch_order, fine_tune
from discopop.tasks.diagnostic import PRESETS, pairs, setting, world

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"
DPO_SOURCE = (PROPOSALS / "dpo.py").read_text()
# Small and fast; the presets' defaults are what the benchmark measures.
FAST = {"contexts": 64, "eval_contexts": 64, "steps": 30, "batch": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


@pytest.fixture(scope="module")
def dpo():
    return load_loss(DPO_SOURCE)  # a trusted reference file


def test_same_seed_same_result_and_seeds_differ(dpo) -> None:
    s = setting("clean", **FAST)
    a, b = fine_tune(dpo, s, seed=3, lr=0.03), fine_tune(dpo, s, seed=3, lr=0.03)
    assert a.per_context == b.per_context and a.losses == b.losses
    assert fine_tune(dpo, s, seed=4, lr=0.03).per_context != a.per_context


def test_common_random_numbers_are_per_seed_not_per_loss() -> None:
    s = setting("clean", **FAST)
    assert torch.equal(pairs(s, 5).chosen, pairs(s, 5).chosen)
    assert not torch.equal(pairs(s, 5).chosen, pairs(s, 6).chosen)
    order = batch_order(100, 32, 10, seed=1)
    assert order.shape == (10, 32) and torch.equal(order, batch_order(100, 32, 10, seed=1))
    assert sorted(order.flatten()[:96].tolist()) == sorted(set(order.flatten()[:96].tolist()))  # an epoch: no repeat


def test_pairs_respect_the_setting() -> None:
    s = setting("shifted_support", **FAST)
    w, data = world(s), pairs(s, 0)
    assert (data.chosen != data.rejected).all()
    assert w.support[data.context, data.chosen].all() and w.support[data.context, data.rejected].all()
    assert int(w.support.sum(dim=1).max()) == math.ceil(s.support * s.actions)
    assert bool(pairs(setting("deterministic", **FAST), 0).label_correct.all())
    noisy = pairs(setting("label_noise", **FAST), 0).label_correct.double().mean()
    assert noisy < pairs(setting("clean", **FAST), 0).label_correct.double().mean() - 0.1
    ties = setting("ties", **FAST)
    tie = world(ties).train_reward[pairs(ties, 0).context, pairs(ties, 0).chosen] == \
        world(ties).train_reward[pairs(ties, 0).context, pairs(ties, 0).rejected]
    assert 0.1 < tie.double().mean() < 0.6


def test_reference_is_imperfect() -> None:
    w = world(PRESETS["clean"])
    mode_best = w.eval_reward.gather(1, w.eval_ref.argmax(1, keepdim=True)).squeeze(1) == w.eval_reward.max(1).values
    assert 0.1 < mode_best.double().mean() < 0.6


def test_exact_scores_match_brute_force(dpo) -> None:
    s = setting("clean", **FAST)
    result = fine_tune(dpo, s, seed=0, lr=0.05)
    w, weights = world(s), result.weights.tolist()
    for x in range(0, s.eval_contexts, 7):
        f = w.eval_features[x].tolist()
        logits = [w.eval_ref[x, a].item() + sum(f[i] * weights[i][a] for i in range(s.features))
                  for a in range(s.actions)]
        z = sum(math.exp(v) for v in logits)
        p = [math.exp(v) / z for v in logits]
        reward = sum(p[a] * w.eval_reward[x, a].item() for a in range(s.actions))
        kl = sum(p[a] * (math.log(p[a]) - w.eval_ref[x, a].item()) for a in range(s.actions))
        assert result.per_context_reward[x] == pytest.approx(reward, abs=1e-9)
        assert result.per_context_kl[x] == pytest.approx(kl, abs=1e-9)
    assert result.reward == pytest.approx(sum(result.per_context_reward) / s.eval_contexts)


def test_dpo_improves_on_the_reference(dpo) -> None:
    result = fine_tune(dpo, setting("clean", **FAST), seed=0, lr=0.03)
    assert result.reward > result.reference_reward + 0.05
    assert result.kl > 0.01


def contract(body: str) -> str:
    """Loss source with the contract's signature, where ``pc, pr, rc, rr`` name the four inputs."""
    return (f"def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, "
            f"beta):\n    pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, "
            f"reference_rejected_logps\n    return {body}\n")


@pytest.mark.parametrize("body", ["0.0 * (pc - pr)", "rc - rr"])  # zero gradient; no gradient at all
def test_a_loss_that_ignores_the_data_changes_nothing(body: str) -> None:
    result = fine_tune(load_loss(contract(body)), setting("clean", **FAST), seed=0, lr=0.1)
    assert result.reward == pytest.approx(result.reference_reward, abs=1e-12)
    assert result.kl == pytest.approx(0.0, abs=1e-12)


def test_a_broken_loss_fails_the_run() -> None:
    s = setting("clean", **FAST)
    with pytest.raises(DiagnosticFailure, match="non-finite"):
        fine_tune(load_loss(contract("(pc - pr) / 0.0")), s, seed=0, lr=0.1)
    with pytest.raises(DiagnosticFailure, match="shape"):
        fine_tune(load_loss(contract("(pc - pr).sum()")), s, seed=0, lr=0.1)


def test_deterministic_preferences_make_dpo_drift(dpo) -> None:
    """Azar et al.'s point: with deterministic labels DPO's optimum is at infinity, so KL grows without bound."""
    s = setting("deterministic")
    runs = [fine_tune(dpo, s, seed=0, lr=0.03, steps=steps) for steps in (40, 120, 360)]
    kls = [r.kl for r in runs]
    assert kls[0] + 0.3 < kls[1] and kls[1] + 0.3 < kls[2]
    assert runs[2].reward < runs[0].reward  # and the drift costs reward: over-optimisation


def test_remote_loss_gives_the_same_result(supply, dpo) -> None:  # noqa: F811
    s = setting("label_noise", **FAST)
    local = fine_tune(dpo, s, seed=2, lr=0.03)
    with remote(supply, DPO_SOURCE) as fn:
        through_oracle = fine_tune(fn, s, seed=2, lr=0.03)
    assert through_oracle.per_context == pytest.approx(local.per_context, abs=1e-9)
    assert through_oracle.losses == pytest.approx(local.losses, abs=1e-9)


# 360 short fine-tunes: ~10 s on 2 cores at load ~4 (~28 s at load ~13); 500 nulls in the benchmark
def test_null_comparisons_rarely_reject(dpo) -> None:
    """DPO against itself on independent fresh seeds: ``stats.compare`` must reject about alpha of the time.

    Large version: ``python benchmarks/diagnostic_tier.py --nulls 500``."""
    s = setting("clean", contexts=32, eval_contexts=64, steps=10, batch=128)
    count, per_arm, rejected = 60, 3, 0
    for i in range(count):
        first = 10_000 + 2 * per_arm * i
        arms = [[fine_tune(dpo, s, seed=first + a * per_arm + k, lr=0.05).per_context for k in range(per_arm)]
                for a in (0, 1)]
        rejected += stats.decide([stats.compare("dpo", "dpo", *arms)])[0].verdict != stats.WITHIN
    assert rejected <= 8  # P(X >= 9) < 0.01 for Binomial(60, 0.05)
