"""SFT coverage of small sums (``task.sft.small_sum_share``) and the mixed-length addition task (issue 24 item 5).

Uniform two-digit operands make sums under 20 2.1% of the SFT data, too few for the reference to learn: a floor
no preference loss can move. The setting over-samples them; off, the SFT draws and the cache keys are exactly
those of a build from before it existed.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from discopop.config import ConfigError, RunSettings
from discopop.config.compose import compose
from discopop.tasks import build_key, synthetic
from discopop.tasks.synthetic import LANGUAGES, Addition, MixedLengthAddition, Sorting, config_hash, sft_key

ADD = Addition()
SFT = {"batch_size": 200, "noise": 0.1, "systematic_error": 0.6}


def _train() -> list[tuple[str, str]]:
    return synthetic.split_heldout(ADD, ADD.problems(random.Random(0)), 3000)[1]


def test_small_sums_are_two_percent_of_the_problems() -> None:
    problems = ADD.problems(random.Random(0))
    assert sum(ADD.small_sum(p) for p, _ in problems) == 210  # sum_{s<20} (s + 1)
    assert ADD.small_sum("07+12=") and not ADD.small_sum("10+10=") and not Sorting().small_sum("s31402>")


def test_off_the_sft_draws_are_those_of_a_build_before_the_setting() -> None:
    train = _train()
    draw = synthetic.sft_prompt_sampler(ADD, train, 0.0, random.Random(7))
    before = random.Random(7)
    assert [draw() for _ in range(500)] == [before.choice(train) for _ in range(500)]


def test_the_share_of_small_sums_in_the_sft_data_is_the_setting() -> None:
    train = _train()
    tokenizer = synthetic.build_tokenizer(ADD.alphabet)
    shares = {}
    for share in (0.0, 0.3):
        batches = synthetic._sft_batches(ADD, train, tokenizer, {**SFT, "small_sum_share": share}, random.Random(1))
        ids, _ = next(batches)
        prompts = [tokenizer.decode(row[:6]) for row in ids.tolist()]
        shares[share] = sum(ADD.small_sum(p) for p in prompts) / len(prompts)
    assert shares[0.0] < 0.08 and 0.2 < shares[0.3] < 0.4  # binomial(200): 0.3 +- 0.1 is ~3 SDs
    draw_a, draw_b = (synthetic.sft_prompt_sampler(ADD, train, 0.3, random.Random(2)) for _ in range(2))
    assert [draw_a() for _ in range(100)] == [draw_b() for _ in range(100)]  # seeded


def test_pair_prompts_cover_small_sums_only_when_asked() -> None:
    train = _train()
    off = synthetic.pair_prompts(ADD, train, {"prompts": 3000}, random.Random(4))
    assert off == [p for p, _ in random.Random(4).sample(train, 3000)]  # the draws of a build before the setting
    on = synthetic.pair_prompts(ADD, train, {"prompts": 1000, "small_sum_share": 0.1}, random.Random(4))
    small = sum(ADD.small_sum(p) for p, _ in train)
    assert len(on) == len(set(on)) == 1000 and sum(ADD.small_sum(p) for p in on) == min(small, 100)
    assert sum(ADD.small_sum(p) for p in off) < 0.04 * len(off)
    capped = synthetic.pair_prompts(ADD, train, {"prompts": 3000, "small_sum_share": 0.5}, random.Random(4))
    assert sum(ADD.small_sum(p) for p in capped) == small and len(capped) == 3000  # all there are, no repeats


def test_the_default_keeps_its_cache_keys_and_coverage_changes_the_sft_key() -> None:
    base, _ = compose(["task=addition"])
    old = {**base["task"], **{part: {k: v for k, v in base["task"][part].items() if k != "small_sum_share"}
                              for part in ("sft", "pairs")}}
    assert base["task"]["sft"]["small_sum_share"] == base["task"]["pairs"]["small_sum_share"] == 0.0
    assert build_key(base["task"]) == build_key(old)  # the default addition task keeps its cache
    covered, _ = compose(["task=addition", "task.sft.small_sum_share=0.1"])
    RunSettings.coerce(covered).check()
    assert config_hash(sft_key(build_key(covered["task"]))) != config_hash(sft_key(build_key(base["task"])))
    pairs_only, _ = compose(["task=addition", "task.pairs.small_sum_share=0.05"])
    assert sft_key(build_key(pairs_only["task"])) == sft_key(build_key(base["task"]))  # reuses the SFT model
    assert build_key(pairs_only["task"]) != build_key(base["task"])


def test_coverage_is_checked() -> None:
    for overrides, message in ((["task.sft.small_sum_share=1.0"], r"small_sum_share must be in \[0, 1\)"),
                               (["task=sorting", "task.sft.small_sum_share=0.1"], "for addition tasks"),
                               (["task=sorting", "task.pairs.small_sum_share=0.1"], "pairs.small_sum_share is for")):
        with pytest.raises(ConfigError, match=message):
            RunSettings.coerce(compose(overrides)[0]).check()


MIXED = MixedLengthAddition()


def test_mixed_length_answers_span_one_to_five_digits_on_fixed_width_prompts() -> None:
    problems = MIXED.problems(random.Random(0))
    assert problems == MIXED.problems(random.Random(0)) and problems != MIXED.problems(random.Random(1))
    assert {len(p) for p, _ in problems} == {10} and len(set(problems)) == len(problems)
    lengths = Counter(len(a) for _, a in problems)
    assert set(lengths) == {1, 2, 3, 4, 5} and lengths[2] > 1000 and lengths[5] > 500
    digits = Counter(tuple(len(str(int(x))) for x in p.rstrip("=").split("+")) for p, _ in problems)
    assert len(digits) == 16 and min(digits.values()) >= 100  # every (digits of a, digits of b) shape
    for prompt, answer in problems[:2000]:
        assert MIXED.answer(prompt) == answer and MIXED.reward(prompt, answer) == 1.0
        habit = MIXED.systematic_error(prompt, answer)
        assert habit is None or MIXED.reward(prompt, habit) == 0.0
    assert MIXED.answer("0007+1234=") == "1241" and MIXED.systematic_error("0007+1234=", "1241") == "1231"
    assert MIXED.problem_key("0007+1234=") == MIXED.problem_key("1234+0007=")


def test_mixed_length_preset_is_its_own_task_with_its_own_sft_model() -> None:
    base, _ = compose(["task=addition"])
    mixed, _ = compose(["task=addition_mixedlen"])
    RunSettings.coerce(mixed).check()
    assert mixed["task"]["language"] == "addition_mixedlen" and "addition_mixedlen" in LANGUAGES
    assert mixed["task"]["pairs"]["label_noise"] == base["task"]["pairs"]["label_noise"]
    assert config_hash(sft_key(build_key(mixed["task"]))) != config_hash(sft_key(build_key(base["task"])))
