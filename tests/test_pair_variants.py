"""The addition task's pair variants (``tasks.pair_variants``): what each does to labelled pairs, that they are
off by default, and that they change the task's cache key but never the SFT model's."""

from __future__ import annotations

import random

import pytest

from discopop.config import ConfigError, RunSettings
from discopop.config.compose import compose
from discopop.config.variants import variant_names
from discopop.tasks import build_key
from discopop.tasks.pair_variants import is_hard, label_facts, maybe_tie, reshape, tie_generator
from discopop.tasks.synthetic import Addition, config_hash, sft_key

ADD = Addition()
HARD, EASY = "07+35=", "01+02="  # 7 + 5 carries; 1 + 2 does not


def _pairs() -> list[dict[str, str]]:
    return [{"prompt": HARD, "chosen": "42", "rejected": "32"}, {"prompt": EASY, "chosen": "3", "rejected": "13"},
            {"prompt": "50+50=", "chosen": "100", "rejected": "99"}]


def test_hard_prompts_are_the_carries() -> None:
    assert is_hard(ADD, HARD) and not is_hard(ADD, EASY)


def test_hard_flip_swaps_only_pairs_on_hard_prompts() -> None:
    out = reshape(_pairs(), ADD, {"hard_flip": 1.0}, seed=0)
    assert out[0] == {"prompt": HARD, "chosen": "32", "rejected": "42"} and out[1:] == _pairs()[1:]
    facts = label_facts(out, ADD)
    assert facts["hard_chosen_correct"] == 0.0 and facts["chosen_correct"] == pytest.approx(2 / 3, abs=1e-4)


def test_length_bias_makes_the_longer_answer_chosen() -> None:
    out = reshape(_pairs(), ADD, {"length_bias": 1.0}, seed=0)
    assert out[1] == {"prompt": EASY, "chosen": "13", "rejected": "3"}  # the longer, wrong answer now chosen
    assert out[0] == _pairs()[0] and out[2] == _pairs()[2]  # equal lengths / the longer was already chosen
    assert label_facts(out, ADD)["uneven_longer_chosen"] == 1.0


def test_a_tie_is_two_different_wrong_answers() -> None:
    rng = tie_generator({"ties": 1.0}, seed=0)
    tie = maybe_tie(_pairs()[0], ["32", "32", "41"], 1.0, rng)
    assert {tie["chosen"], tie["rejected"]} == {"32", "41"} and label_facts([tie], ADD)["ties"] == 1.0
    assert maybe_tie(_pairs()[0], ["32", "32"], 1.0, rng) == _pairs()[0]  # one distinct wrong answer: no tie
    assert tie_generator({"ties": 0.0}, 0) is None and maybe_tie(_pairs()[0], ["32", "41"], 1.0, None) == _pairs()[0]


def test_off_by_default_the_pairs_are_untouched() -> None:
    cfg, _ = compose([])
    pairs = cfg["task"]["pairs"]
    assert (pairs["hard_flip"], pairs["ties"], pairs["length_bias"]) == (0.0, 0.0, 0.0)
    assert reshape(_pairs(), ADD, pairs, seed=0) == _pairs()


def test_flips_are_seeded_and_near_their_rate() -> None:
    many = [{"prompt": HARD, "chosen": "42", "rejected": "32"}] * 2000
    a, b = reshape(many, ADD, {"hard_flip": 0.4}, 5), reshape(many, ADD, {"hard_flip": 0.4}, 5)
    assert a == b and 0.35 < 1 - label_facts(a, ADD)["chosen_correct"] < 0.45
    assert a != reshape(many, ADD, {"hard_flip": 0.4}, 6)
    assert random.Random(0).random() == random.Random(0).random()  # (the global generator is not used)


def test_variant_presets_share_the_sft_model_and_only_pairs_change_the_key() -> None:
    base, _ = compose(["task=addition"])
    old = {**base["task"], "pairs": {k: v for k, v in base["task"]["pairs"].items()
                                     if k not in ("hard_flip", "ties", "length_bias")}}
    assert build_key(base["task"]) == build_key(old)  # the default addition task keeps its cache
    keys = set()
    for preset in ("addition_hardflip", "addition_ties", "addition_lengthbias"):
        cfg, _ = compose([f"task={preset}"])
        RunSettings.coerce(cfg).check()
        assert config_hash(sft_key(build_key(cfg["task"]))) == config_hash(sft_key(build_key(base["task"])))
        keys.add(config_hash(build_key(cfg["task"])))
    assert len(keys) == 3 and config_hash(build_key(base["task"])) not in keys


def test_addition_transfers_to_a_variant_other_than_itself() -> None:
    add, _ = compose(["task=addition"])
    flip, _ = compose(["task=addition_hardflip"])
    assert variant_names(add["task"], "auto") == ["hardflip"] and variant_names(flip["task"], "auto") == ["uniform"]
    with pytest.raises(ConfigError, match="unknown variant"):
        variant_names(flip["task"], ["hardflip"])
    with pytest.raises(ConfigError, match=r"pairs.ties must be in \[0, 1\]"):
        RunSettings.coerce(compose(["task.pairs.ties=1.5"])[0]).check()
