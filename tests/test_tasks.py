"""Embedded tasks: held-out prompts never trained on, cached by config, verifiable reward."""

from __future__ import annotations

import random

from datasets import load_from_disk

from discopop.tasks import build_key, load_task
from discopop.tasks.synthetic import LANGUAGES, Addition, Sorting, config_hash


def test_heldout_prompts_never_appear_in_training_pairs(tiny_task) -> None:
    task, _ = tiny_task
    pairs = load_from_disk(str(task.pairs_path))
    held = set(task.heldout_prompts) | set(task.confirm_prompts)
    assert held and not held & set(pairs["prompt"])
    assert not set(task.heldout_prompts) & set(task.confirm_prompts)
    for row in pairs:
        assert task.reward(row["prompt"], row["chosen"]) == 1.0
        assert task.reward(row["prompt"], row["rejected"]) == 0.0


def test_cache_hit_reuses_the_build(tiny_task) -> None:
    task, cfg = tiny_task
    again = load_task(cfg["task"])
    assert again.model_path == task.model_path and again.meta == task.meta
    changed = {**cfg["task"], "seed": 1}
    assert config_hash(build_key(changed)) != config_hash(build_key(cfg["task"]))


def test_rewards_are_exact_and_zero_outside_the_language() -> None:
    add, srt = Addition(), Sorting()
    assert add.reward("07+35=", "42") == 1.0
    for bad in ("042", "42 ", "4", "forty-two", "", "42<eos>"):
        assert add.reward("07+35=", bad) == 0.0
    assert srt.reward("s31402>", "01234") == 1.0 and srt.reward("s31402>", "0123") == 0.0


def test_systematic_errors_are_wrong_answers() -> None:
    for language in (cls() for cls in LANGUAGES.values()):
        for prompt, answer in language.problems(random.Random(0))[:500]:
            habit = language.systematic_error(prompt, answer)
            if habit is not None:
                assert habit != answer and language.reward(prompt, habit) == 0.0
