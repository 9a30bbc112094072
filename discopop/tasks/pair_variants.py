"""Ways of building and labelling an embedded task's preference pairs in which a loss's *shape* matters.

With uniform label noise every DPO-family loss behaves much alike; these variants put the noise where a loss's
treatment of hard, ambiguous or biased pairs decides the outcome (issue 24, item 5). Each is a ``task.pairs``
setting, off (0) by default, so the default task and its cache keys are unchanged, and each only changes how
the pairs are made from the cached SFT model's samples (the SFT model is reused: ``synthetic.sft_key``):

* ``hard_flip``: the probability a pair on a *hard* prompt (one where the reference has a habitual mistake,
  addition: a carry) has its label swapped, on top of ``label_noise``: the noise sits where the data is
  most informative, as annotators disagree most on hard items;
* ``ties``: the share of prompts whose pair is replaced by a tie, two different answers that are both wrong,
  in random order: a loss that pushes every margin to infinity over-fits these coin flips;
* ``length_bias``: the probability that, in a pair whose answers differ in length, the longer one is made the
  chosen one whatever its correctness: a spurious feature (the verbosity bias of real preference data).

Each draws from its own seeded generator, used only when the variant is on, so the pairs of a task without
them are exactly those it had before they existed.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

Pair = dict[str, str]
# Offsets of each variant's generator from the task seed (synthetic.flip_labels uses seed + 1).
TIE_SEED, HARD_SEED, LENGTH_SEED = 2, 3, 4


class _Language(Protocol):
    def systematic_error(self, prompt: str, answer: str) -> str | None: ...

    def answer(self, prompt: str) -> str: ...


def is_hard(language: _Language, prompt: str) -> bool:
    """A prompt on which the reference has its habitual mistake (addition: a carry out of the ones digit)."""
    return language.systematic_error(prompt, language.answer(prompt)) is not None


def tie_generator(cfg: dict[str, Any], seed: int) -> random.Random | None:
    """The generator of ``ties`` (None when the variant is off: nothing is drawn)."""
    return random.Random(seed + TIE_SEED) if float(cfg.get("ties") or 0) > 0 else None


def maybe_tie(pair: Pair, wrong: list[str], rate: float, rng: random.Random | None) -> Pair:
    """``pair``, or with probability ``rate`` a tie of two different wrong answers of the prompt, in random order
    (kept as it is when the prompt's samples hold fewer than two different wrong answers)."""
    if rng is None:
        return pair
    distinct = list(dict.fromkeys(wrong))
    if rng.random() >= rate or len(distinct) < 2:
        return pair
    first, second = distinct[0], distinct[1]
    if rng.random() < 0.5:
        first, second = second, first
    return {"prompt": pair["prompt"], "chosen": first, "rejected": second}


def reshape(pairs: list[Pair], language: _Language, cfg: dict[str, Any], seed: int) -> list[Pair]:
    """Apply ``hard_flip`` and then ``length_bias`` (each only when set) to labelled pairs."""
    hard = float(cfg.get("hard_flip") or 0)
    if hard > 0:
        rng = random.Random(seed + HARD_SEED)
        pairs = [_swap(p) if is_hard(language, p["prompt"]) and rng.random() < hard else p for p in pairs]
    bias = float(cfg.get("length_bias") or 0)
    if bias > 0:
        rng = random.Random(seed + LENGTH_SEED)
        pairs = [_swap(p) if len(p["rejected"]) > len(p["chosen"]) and rng.random() < bias else p for p in pairs]
    return pairs


def _swap(pair: Pair) -> Pair:
    return {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}


def label_facts(pairs: list[Pair], language: _Language) -> dict[str, float]:
    """How the pairs are labelled: the share whose chosen answer is the correct one, overall, on hard prompts,
    and where the answers differ in length; the share of ties (neither answer correct)."""
    def share(items: list[Pair], test) -> float:
        return round(sum(1 for p in items if test(p)) / len(items), 4) if items else float("nan")

    right = lambda p: p["chosen"] == language.answer(p["prompt"])  # noqa: E731 - a one-line predicate
    tie = lambda p: language.answer(p["prompt"]) not in (p["chosen"], p["rejected"])  # noqa: E731
    hard = [p for p in pairs if is_hard(language, p["prompt"])]  # lists of dicts: ``in`` compares by value
    uneven = [p for p in pairs if len(p["chosen"]) != len(p["rejected"])]
    return {"pairs": len(pairs), "chosen_correct": share(pairs, right), "hard_share": share(pairs, lambda p: p in hard),
            "hard_chosen_correct": share(hard, right), "uneven_chosen_correct": share(uneven, right),
            "uneven_longer_chosen": share(uneven, lambda p: len(p["chosen"]) > len(p["rejected"])),
            "ties": share(pairs, tie)}
