"""Embedded tasks: held-out prompts never trained on, cached by config, verifiable reward."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from discopop.tasks import build_key, load_task
from discopop.tasks.synthetic import LANGUAGES, Addition, Sorting, config_hash, flip_labels, split_heldout


def test_heldout_prompts_never_appear_in_training_pairs(tiny_task) -> None:
    task, cfg = tiny_task
    pairs = load_from_disk(str(task.pairs_path))
    held = set(task.heldout_prompts) | set(task.confirm_prompts)
    assert held and not held & set(pairs["prompt"])
    assert not set(task.heldout_prompts) & set(task.confirm_prompts)
    # Nor their swapped twins: a+b is held out together with b+a.
    language = LANGUAGES[cfg["task"]["language"]]()
    held_keys = {language.problem_key(p) for p in held}
    assert not held_keys & {language.problem_key(p) for p in pairs["prompt"]}
    flipped = 0
    for row in pairs:
        chosen, rejected = task.reward(row["prompt"], row["chosen"]), task.reward(row["prompt"], row["rejected"])
        assert {chosen, rejected} == {0.0, 1.0}
        flipped += chosen == 0.0
    assert flipped <= len(pairs)  # how many is label_noise's business: see test_label_noise_flips_a_seeded_share


def test_the_heldout_split_keeps_each_unordered_problem_on_one_side() -> None:
    language = Addition()
    problems = language.problems(random.Random(0))
    heldout, train = split_heldout(language, problems, 3000)
    assert 3000 <= len(heldout) <= 3001 and len(heldout) + len(train) == len(problems)
    twins_held = {language.problem_key(p) for p, _ in heldout}
    assert not twins_held & {language.problem_key(p) for p, _ in train}
    assert language.problem_key("07+35=") == language.problem_key("35+07=")


def test_label_noise_flips_a_seeded_share() -> None:
    pairs = [{"prompt": f"{i:02d}+00=", "chosen": str(i), "rejected": str(i + 1)} for i in range(100)] * 20
    noisy = flip_labels(pairs, 0.25, random.Random(3))
    share = sum(n["chosen"] != p["chosen"] for n, p in zip(noisy, pairs, strict=True)) / len(pairs)
    assert 0.2 < share < 0.3
    assert noisy == flip_labels(pairs, 0.25, random.Random(3))
    assert flip_labels(pairs, 0.0, random.Random(3)) == pairs


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


def test_a_pairs_only_change_samples_from_the_stored_sft_model(tiny_task, cache_dir, tmp_path, monkeypatch) -> None:
    """Changing the label noise must not train the SFT model again: the new pairs are the stored model's pairs,
    flipped as a fresh build flips them. (A fresh build is not compared weight for weight: SFT on CPU can differ
    in the last bits with the thread count, which is why the stage is stored.)"""
    from discopop.config import plain
    from discopop.tasks import synthetic

    task, cfg = tiny_task  # built through load_task (label noise 0.25), which stored its SFT stage under cache_dir
    base = build_key(plain(cfg["task"]))
    monkeypatch.setattr(synthetic, "train_sft", lambda *a, **k: pytest.fail("the SFT model was trained again"))
    built = {}
    for noise in (0.0, 0.4):
        meta = synthetic.build({**base, "pairs": {**base["pairs"], "label_noise": noise}}, tmp_path / str(noise),
                               stage_root=cache_dir)
        assert meta["sft_reused"] and meta["sft_heldout_reward"] == task.meta["sft_heldout_reward"]
        built[noise] = load_from_disk(str(tmp_path / str(noise) / "pairs")).to_list()
    rng = lambda: random.Random(base["seed"] + 1)  # noqa: E731 - the build's flip generator, fresh each time
    assert built[0.4] == flip_labels(built[0.0], 0.4, rng()) != built[0.0]
    assert load_from_disk(str(task.pairs_path)).to_list() == flip_labels(built[0.0], 0.25, rng())
    weights = [load_file(Path(d) / "model.safetensors") for d in (tmp_path / "0.4" / "sft_model", task.model_path)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
