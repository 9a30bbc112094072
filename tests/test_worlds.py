"""A composite diagnostic task (``task.preset=a+b``, ``tasks/worlds.py``): its worlds' fine-tunes, per context."""

from __future__ import annotations

from dataclasses import replace
from itertools import permutations
from pathlib import Path

import pytest
import torch

from discopop.config import ConfigError, RunSettings, TrainingSettings, task_settings
from discopop.config.compose import compose
from discopop.config.task import DIAGNOSTIC_PRESETS
from discopop.config.variants import allowed_variants, transfer_tasks, variant_names
from discopop.contract.losses import load_loss
from discopop.fitness.diagnostic_tune import DiagnosticTuner, fine_tune, tuning_seeds
from discopop.tasks import load_task, worlds
from discopop.tasks.diagnostic import as_task, from_config, setting, split_contexts, world
from discopop.tasks.worlds import settings_of

REPO = Path(__file__).resolve().parent.parent
DPO_SOURCE = (REPO / "discopop" / "proposals" / "dpo.py").read_text()
SMALL = ["task.contexts=64", "task.eval_contexts=64", "task.steps=30", "task.batch=64",
         "task.extra_confirm_contexts=0", "task.extra_search_contexts=0"]  # 32 search, 32 confirming a world
COMPOSITE = "narrow_support+clean"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


@pytest.fixture(scope="module")
def dpo():
    return load_loss(DPO_SOURCE)  # a trusted reference file


def _tuner(preset: str, *more: str) -> DiagnosticTuner:
    cfg, _ = compose(["task=diagnostic", f"task.preset={preset}", *SMALL, *more])
    return DiagnosticTuner(task_settings(cfg["task"]), TrainingSettings(**cfg["training"]), kl_coef=0.05)


def test_a_composite_reply_averages_each_context_over_its_worlds_own_fine_tunes(dpo) -> None:
    tuner = _tuner(COMPOSITE)
    assert [s.name for s in tuner.settings] == ["narrow_support", "clean"]
    reply = tuner.run(dpo, seed=3, split="confirm", learning_rate=0.1, tune_seeds=2)
    own = [_tuner(name).run(dpo, seed=3, split="confirm", learning_rate=0.1, tune_seeds=2)
           for name in COMPOSITE.split("+")]
    for key in ("per_prompt", "per_prompt_kl", "per_prompt_greedy"):
        # one score a shared context (the worlds' mean), not two: the crossed statistics count each context once
        assert len(reply[key]) == 32
        assert reply[key] == pytest.approx([(a + b) / 2 for a, b in zip(own[0][key], own[1][key], strict=True)],
                                           abs=1e-6 if key == "per_prompt_kl" else 1e-12)
    assert own[0]["per_prompt"] != own[1]["per_prompt"]  # the worlds train different policies (same contexts)
    direct = [fine_tune(dpo, s, seed=3, lr=0.1, beta=0.1).per_context_reward[split_contexts(s, "confirm")]
              for s in tuner.settings]  # each world's fine-tune, called directly
    assert reply["per_prompt"] == [(a + b) / 2 for a, b in zip(*direct, strict=True)]
    per_context = [r - 0.05 * k for r, k in zip(reply["per_prompt"], reply["per_prompt_kl"], strict=True)]
    assert reply["fitness"] == pytest.approx(sum(per_context) / 32, abs=1e-6)  # per_prompt_kl is rounded
    assert reply["fitness"] == pytest.approx((own[0]["fitness"] + own[1]["fitness"]) / 2, abs=1e-12)
    assert reply["reward"] == sum(reply["per_prompt"]) / 32
    assert reply["tune_fitness"] == pytest.approx((own[0]["tune_fitness"] + own[1]["tune_fitness"]) / 2, abs=1e-12)
    tuned = [sum(fine_tune(dpo, s, seed=t, lr=0.1, beta=0.1).per_context[split_contexts(s, "confirm")]) / 32
             for t in tuning_seeds(3, 2) for s in tuner.settings]
    assert reply["tune_fitness"] == pytest.approx(sum(tuned) / len(tuned), abs=1e-12)
    assert reply["steps"] == 60 and reply["final_loss"] == pytest.approx(
        (own[0]["final_loss"] + own[1]["final_loss"]) / 2, abs=1e-15)
    for key in ("train_reward", "loss_start", "loss_end"):
        assert reply["train_metrics"][key] == pytest.approx(
            (own[0]["train_metrics"][key] + own[1]["train_metrics"][key]) / 2, abs=2e-5)  # each rounded to 1e-5
    chosen, rejected = tuner.reference_logps()  # every world's pairs scale the drawn check inputs
    assert len(chosen) == len(rejected) == sum(64 * s.pairs_per_context for s in tuner.settings)


def test_a_single_world_is_todays_task_exactly(dpo) -> None:
    cfg, _ = compose(["task=diagnostic", "task.preset=narrow_support", *SMALL])
    assert settings_of(cfg["task"]) == [from_config(cfg["task"])]
    assert load_task(cfg["task"]) == as_task(cfg["task"])
    tuner = _tuner("narrow_support")
    reply = tuner.run(dpo, seed=1, split="search", learning_rate=0.1)
    full = fine_tune(dpo, tuner.setting, seed=1, lr=0.1, beta=0.1)
    part = split_contexts(tuner.setting, "search")
    reward, kl = full.per_context_reward[part], full.per_context_kl[part]
    assert reply["per_prompt"] == reward and reply["final_loss"] == full.final_loss and reply["steps"] == 30
    assert reply["fitness"] == sum(reward) / len(reward) - 0.05 * (sum(kl) / len(kl))  # the same float, not approx
    assert reply["train_metrics"]["train_reward"] == round(full.train_reward, 5)


def test_load_task_names_the_shared_contexts_once_and_weighs_its_facts() -> None:
    cfg, _ = compose(["task=diagnostic", "task.preset=clean+label_noise", *SMALL, "task.pairs_per_context=4"])
    task = load_task(cfg["task"])
    ones = [as_task({**cfg["task"], "preset": name}) for name in ("clean", "label_noise")]
    assert task.prompts("search") == [f"context {i}" for i in range(32)] == ones[1].prompts("search")
    assert task.prompts("confirm") == [f"context {i}" for i in range(32, 64)]
    assert task.meta["worlds"] == ["clean", "label_noise"] and task.meta["pairs"] == 2 * 64 * 4
    assert task.meta["eval_contexts"] == 64  # shared, not summed
    assert task.meta["label_noise"] == pytest.approx(0.15)  # half the pairs flipped at 0.3: what cDPO is told
    assert task.meta["sft_heldout_reward"] == pytest.approx(sum(t.meta["sft_heldout_reward"] for t in ones) / 2)


def test_worlds_that_split_their_contexts_differently_are_refused_in_one_line(monkeypatch) -> None:
    """No preset sets its own context counts today; a future one that did could not be averaged per context."""
    cfg, _ = compose(["task=diagnostic", "task.preset=clean+label_noise", *SMALL])

    def one_world(world_cfg):  # label_noise's world with half its search contexts
        task = as_task(world_cfg)
        if world_cfg["preset"] != "label_noise":
            return task
        return replace(task, heldout_prompts=task.heldout_prompts[:16])

    monkeypatch.setattr(worlds, "world_task", one_world)
    with pytest.raises(ValueError, match=r"different numbers of 'search' contexts .*'label_noise': 16") as info:
        worlds.as_task(cfg["task"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("preset", "expected"), [("narrow_support+clean", "label_noise"),
                                                  ("narrow_support+shifted_support", "clean"),
                                                  ("clean+label_noise", "ties")])
def test_auto_transfers_a_composite_to_a_world_outside_it(preset: str, expected: str) -> None:
    task = {"kind": "diagnostic", "preset": preset, "contexts": 64, "name": "d"}
    assert variant_names(task, "auto") == [expected]
    ((name, variant),) = transfer_tasks(task, "auto")
    assert variant == {"kind": "diagnostic", "preset": expected, "contexts": 64, "name": f"d_{expected}"}
    with pytest.raises(ConfigError, match="unknown variant"):  # a training world is never its transfer variant
        variant_names(task, [preset.split("+")[0]])


def test_no_composite_of_two_worlds_transfers_to_one_of_them() -> None:
    for pair in permutations(DIAGNOSTIC_PRESETS, 2):
        task = {"kind": "diagnostic", "preset": "+".join(pair)}
        assert not set(allowed_variants(task)) & set(pair)
        (picked,) = variant_names(task, "auto")
        assert picked in DIAGNOSTIC_PRESETS and picked not in pair


@pytest.mark.parametrize(("preset", "message"), [
    ("narrow_support+noisy", "unknown world.s. 'noisy'"),
    ("clean+", "unknown world.s. ''"),
    ("clean+clean", "lists a world twice"),
    ("noisy", "task.preset must be one of clean"),  # one world: the message it always had
])
def test_a_bad_composite_is_refused_in_one_line(preset: str, message: str) -> None:
    cfg, _ = compose(["task=diagnostic"])
    cfg["task"]["preset"] = preset
    with pytest.raises(ConfigError, match=message) as err:
        RunSettings.coerce(cfg).check()
    assert "\n" not in str(err.value)


def test_a_composite_on_the_command_line_composes_and_checks() -> None:
    cfg, _ = compose(["task=diagnostic", f"task.preset={COMPOSITE}", "confirm.transfer=auto"])
    RunSettings.coerce(cfg).check()
    assert cfg["task"]["preset"] == COMPOSITE


def test_eval_contexts_redraws_the_world_and_extra_confirm_contexts_does_not() -> None:
    """What the settings' help says: compare runs at one ``eval_contexts`` (another value is another world)."""
    base = world(setting("clean"))
    wider = world(setting("clean", eval_contexts=512))
    more = world(setting("clean", extra_confirm_contexts=64))
    assert torch.equal(base.train_features, wider.train_features)
    assert not torch.equal(base.train_reward, wider.train_reward)  # the training side moved too
    assert torch.equal(base.train_reward, more.train_reward) and torch.equal(base.eval_reward, more.eval_reward[:256])
