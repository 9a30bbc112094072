"""``fitness.pairs_ceiling``: the Bradley-Terry pipeline that measures what a setting's pairs alone can reach.

Why: the pipeline is the evidence that a better loss exists (issue 24), so it must be what it says: DPO's own
converged solution at scale 1 (not a stronger oracle), fitted to the pairs only, chosen on the search contexts,
deterministic.
"""

from __future__ import annotations

import pytest
import torch

from discopop.fitness import pairs_ceiling
from discopop.tasks.diagnostic import pairs, setting, world

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


def _dpo_gradient(s, seed: int, weights: torch.Tensor) -> torch.Tensor:
    """The gradient of DPO's mean loss over all of ``seed``'s pairs with respect to the policy's ``W``."""
    w, data = world(s), pairs(s, seed)
    weights = weights.clone().requires_grad_(True)
    logp = torch.log_softmax(w.train_ref[data.context] + w.train_features[data.context] @ weights, dim=1)
    ref = w.train_ref[data.context]
    rho = ((logp.gather(1, data.chosen[:, None]) - logp.gather(1, data.rejected[:, None]))
           - (ref.gather(1, data.chosen[:, None]) - ref.gather(1, data.rejected[:, None]))).squeeze(1)
    (-torch.nn.functional.logsigmoid(s.beta * rho)).mean().backward()
    return weights.grad


@pytest.mark.parametrize("name", ["clean", "narrow_support"])
def test_scale_one_is_dpos_stationary_point(name: str) -> None:
    """At scale 1 the policy is where DPO's full-batch gradient vanishes, up to the penalty's own term: the pipeline
    is converged DPO (plus a scale), not information a loss could not reach."""
    s, penalty = setting(name), 1e-4
    m = pairs_ceiling.bt_logits(s, 0, penalty)
    grad = _dpo_gradient(s, 0, pairs_ceiling.policy(s, m, 1.0))
    # L_dpo(W) = L_bt(beta W), and grad L_bt(M) = -2 penalty M at the penalised optimum
    residual = float((grad + 2 * s.beta * penalty * m).abs().max())
    assert residual < 1e-7, residual
    # a different W (half the scale) is not stationary
    assert float(_dpo_gradient(s, 0, pairs_ceiling.policy(s, m, 0.5)).abs().max()) > 1e-3


def test_it_learns_from_the_pairs_and_only_them() -> None:
    s = setting("clean")
    a, b = pairs_ceiling.bt_logits(s, 0, 1e-3), pairs_ceiling.bt_logits(s, 1, 1e-3)
    assert not torch.allclose(a, b)  # another seed's pairs, another model
    assert torch.equal(a, pairs_ceiling.bt_logits(s, 0, 1e-3))  # deterministic
    w = world(s)
    trained = pairs_ceiling.per_context(s, pairs_ceiling.policy(s, a, 1.0), "search").mean()
    untrained = pairs_ceiling.per_context(s, torch.zeros_like(a), "search").mean()
    reference = float((w.eval_ref.exp() * w.eval_reward).sum(dim=1)[: s.eval_contexts // 2].mean())
    assert untrained == pytest.approx(reference)  # W = 0 is the reference policy (KL 0)
    assert trained > untrained + 0.02  # measured +0.046 at scale 1 (converged DPO over-moves on 4 pairs a context)


def test_choice_is_on_the_search_contexts_and_deterministic() -> None:
    s = setting("clean")
    choice = pairs_ceiling.choose(s, [2000], penalties=(1e-3,), scales=(0.25, 1.0, 4.0))
    assert choice == pairs_ceiling.choose(s, [2000], penalties=(1e-3,), scales=(0.25, 1.0, 4.0))
    m = pairs_ceiling.bt_logits(s, 2000, 1e-3)
    scores = {c: pairs_ceiling.per_context(s, pairs_ceiling.policy(s, m, c), "search").mean() for c in (0.25, 1.0, 4.0)}
    assert choice.scale == max(scores, key=scores.get)
    assert choice.search_fitness == pytest.approx(scores[choice.scale])
    assert pairs_ceiling.confirm_scores(s, choice, [1000, 1001]).shape == (2, s.eval_contexts - s.eval_contexts // 2)
