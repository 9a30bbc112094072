"""The fast tier's confirmation: extra held-out contexts for the confirming half, and its task-specific defaults.

Why: on ``task=diagnostic`` the context term is most of a paired difference's variance, and held-out contexts are
exact and nearly free, so the confirmation gets more of them (and more fresh seeds) than the search. The extra
contexts must not move the world a search trains and is scored on, and a user's explicit value must win.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discopop.config.compose import compose
from discopop.fitness.calibration import ArmScores, subset, variance_split
from discopop.tasks import stable_key
from discopop.tasks.diagnostic import as_task, heldout_contexts, setting, split_contexts, world

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


def test_extra_contexts_leave_the_training_side_and_the_search_half_as_they_were() -> None:
    base = world(setting("label_noise"))
    more = world(setting("label_noise", extra_confirm_contexts=300))
    for name in ("train_features", "train_reward", "train_ref", "support"):
        assert torch.equal(getattr(base, name), getattr(more, name)), name
    assert torch.equal(more.eval_reward[:256], base.eval_reward)
    assert torch.equal(more.eval_ref[:256], base.eval_ref)
    assert more.eval_reward.shape == (556, 16)
    extra = more.eval_reward[256:]  # new contexts, standardised per context like the others
    assert torch.allclose(extra.mean(dim=1), torch.zeros(300, dtype=extra.dtype), atol=1e-9)
    assert not torch.equal(extra[:10], base.eval_reward[:10])


def test_eval_contexts_itself_moves_the_world_which_is_why_the_extra_contexts_exist() -> None:
    """Growing ``eval_contexts`` redraws the training side (one generator for everything): not a setting a benchmark
    on a preset's world could change."""
    base, grown = world(setting("label_noise")), world(setting("label_noise", eval_contexts=512))
    assert not torch.equal(base.train_reward, grown.train_reward)


def test_splits_give_the_extra_contexts_to_the_confirmation_only() -> None:
    s = setting("clean", extra_confirm_contexts=100)
    assert heldout_contexts(s) == 356
    assert split_contexts(s, "search") == slice(0, 128)
    assert split_contexts(s, "confirm") == slice(128, 356)
    kept = setting("clean", extra_confirm_contexts=100, replicate_contexts=20)
    assert split_contexts(kept, "confirm") == slice(128, 336)
    assert split_contexts(kept, "replicate") == slice(336, 356)
    task = as_task({"preset": "clean", "extra_confirm_contexts": 100})
    assert len(task.heldout_prompts) == 128 and len(task.confirm_prompts) == 228
    assert task.confirm_prompts[-1] == "context 355"


def test_extra_search_contexts_widen_the_search_half_on_the_same_world() -> None:
    """A wider search split that is measurement only: the training side, the confirming contexts and the first half
    of ``eval_contexts`` are the world's own; the new contexts come first and only the search scores them."""
    base = world(setting("narrow_support", extra_confirm_contexts=50))
    wide = world(setting("narrow_support", extra_confirm_contexts=50, extra_search_contexts=200))
    for name in ("train_features", "train_reward", "train_ref", "support"):
        assert torch.equal(getattr(base, name), getattr(wide, name)), name
    assert torch.equal(wide.eval_reward[200:], base.eval_reward)  # eval_contexts and the extra confirming ones
    assert not torch.equal(wide.eval_reward[:10], base.eval_reward[:10])
    assert not torch.equal(wide.eval_reward[:10], base.eval_reward[-50:-40])  # not the confirming stream again
    s = setting("narrow_support", extra_confirm_contexts=50, extra_search_contexts=200)
    assert heldout_contexts(s) == 506
    assert split_contexts(s, "search") == slice(0, 328)
    assert split_contexts(s, "confirm") == slice(328, 506)
    task = as_task({"preset": "narrow_support", "extra_confirm_contexts": 50, "extra_search_contexts": 200})
    assert len(task.heldout_prompts) == 328 and len(task.confirm_prompts) == 178
    assert task.confirm_prompts[0] == "context 328" and task.meta["extra_search_contexts"] == 200


def test_a_composite_widens_every_world_search_half_alike() -> None:
    from discopop.tasks.worlds import as_task as composite_task

    task = composite_task({"preset": "narrow_support+label_noise", "extra_search_contexts": 64})
    assert len(task.heldout_prompts) == 192 and task.meta["extra_search_contexts"] == 64


def test_unset_extra_contexts_hash_as_before_they_existed() -> None:
    plain = {"kind": "diagnostic", "preset": "clean"}
    assert stable_key({**plain, "extra_confirm_contexts": None}) == plain
    assert stable_key({**plain, "extra_confirm_contexts": 0}) == plain
    assert stable_key({**plain, "extra_confirm_contexts": 64}) != plain
    assert stable_key({**plain, "extra_search_contexts": 0}) == plain
    assert stable_key({**plain, "extra_search_contexts": 64}) != plain


def test_task_diagnostic_sets_the_confirmation_defaults_and_addition_keeps_its_own() -> None:
    diag, _ = compose(["task=diagnostic"])
    assert diag["confirm"]["seeds"] == 10
    assert diag["task"]["extra_confirm_contexts"] == 3840
    assert diag["task"]["extra_search_contexts"] == 896
    search = as_task(diag["task"]).heldout_prompts
    assert len(search) == 1024 and search[896:] == [f"context {i}" for i in range(896, 1024)]
    addition, _ = compose([])
    assert addition["confirm"]["seeds"] == 5
    assert "extra_confirm_contexts" not in addition["task"]


def test_an_explicit_value_wins_over_the_tasks_default() -> None:
    cfg, _ = compose(["task=diagnostic", "confirm.seeds=5", "task.extra_confirm_contexts=0",
                      "task.extra_search_contexts=0"])
    assert cfg["confirm"]["seeds"] == 5
    assert cfg["task"]["extra_confirm_contexts"] == 0
    assert len(as_task(cfg["task"]).confirm_prompts) == 128
    assert len(as_task(cfg["task"]).heldout_prompts) == 128


def test_a_users_settings_file_wins_too(tmp_path) -> None:
    from discopop.config.compose import compose_settings  # lazy: only this test composes a --config file

    path = tmp_path / "mine.yaml"
    path.write_text("task: diagnostic\nconfirm:\n  seeds: 3\n")
    settings, _ = compose_settings([], config_file=path)
    assert settings.confirm.seeds == 3
    assert settings.task.extra_confirm_contexts == 3840


def test_variance_split_finds_the_term_that_was_put_in() -> None:
    rng = np.random.default_rng(0)
    seeds, prompts = 6, 400
    base = rng.normal(size=(seeds, prompts))
    context_heavy = base + rng.normal(scale=3.0, size=prompts)[None, :]
    seed_heavy = base + rng.normal(scale=3.0, size=seeds)[:, None] * np.ones((1, prompts))
    by_context, by_seed = variance_split(context_heavy, np.zeros_like(base)), variance_split(seed_heavy, 0 * base)
    assert by_context.prompt > 0.9 > by_context.seed
    assert by_seed.seed > 0.9 > by_seed.prompt
    assert by_seed.seed + by_seed.prompt + by_seed.residual == pytest.approx(1.0)


def test_subset_takes_the_first_seeds_and_prompts_and_refuses_more() -> None:
    arm = ArmScores(np.arange(20.0).reshape(4, 5), np.arange(20.0).reshape(4, 5))
    part = subset({"a": arm}, 2, 3)["a"]
    assert part.fitness.tolist() == [[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]]
    assert part.greedy is None
    with pytest.raises(ValueError, match="asked for 5 x 3"):
        subset({"a": arm}, 5, 3)


def test_a_run_recorded_before_the_key_keeps_the_old_confirmation_on_resume() -> None:
    """--resume coerces the saved config: a record without the key reads null (the preset's 0), not the new
    default, so an old run's confirmation is not silently scored on other contexts."""
    from discopop.config import RunSettings  # lazy: only this test coerces a recorded config

    cfg, _ = compose(["task=diagnostic"])
    del cfg["task"]["extra_confirm_contexts"]
    assert RunSettings.coerce(cfg).task.extra_confirm_contexts is None


def test_hard_flip_lands_on_the_contexts_where_the_reference_is_most_wrong_and_moves_nothing_else() -> None:
    from discopop.tasks.diagnostic import flip_rate, hard_contexts, pairs  # lazy: only these two tests use them

    plain, flipped = setting("clean"), setting("clean", hard_flip=1.0)
    hard = hard_contexts(flipped)
    w = world(plain)
    regret = w.train_reward.max(dim=1).values - (w.train_ref.exp() * w.train_reward).sum(dim=1)
    assert int(hard.sum()) == 64 and regret[hard].min() >= regret[~hard].max()
    a, b = pairs(plain, 5), pairs(flipped, 5)
    on_hard = hard[a.context]
    assert torch.equal(a.context, b.context)
    assert torch.equal(a.chosen[~on_hard], b.chosen[~on_hard])  # easy contexts: the same labels
    assert torch.equal(a.chosen[on_hard], b.rejected[on_hard])  # hard ones: every label swapped at hard_flip 1
    assert flip_rate(flipped) == pytest.approx(0.25) and flip_rate(plain) == 0.0


def test_presets_without_hard_flip_keep_their_pairs() -> None:
    from discopop.tasks.diagnostic import pairs  # lazy: only these two tests use it

    ln = pairs(setting("label_noise"), 3)
    assert ln.chosen[:8].tolist() == pairs(setting("label_noise", hard_share=0.5), 3).chosen[:8].tolist()
