"""Several diagnostic worlds as one task (``task.preset=narrow_support+clean``): a fitness averaged over worlds.

Why: on the fast tier a search that sees one world tunes its losses to that world (docs/results.md §0: winners that
beat IPO on ``narrow_support`` did not transfer to ``clean``, where CELL stays ahead). The standard remedy in
objective discovery: the fitness averages over several training worlds, and transfer is judged on a world the
search never saw (``config.variants`` picks one outside the composite).

A composite is one setting per world: the world's preset with the fields the config sets (the same for every
world). Its fine-tune is one fine-tune per world at the same seed, rate and beta (each world's own
:func:`~discopop.fitness.diagnostic_tune.fine_tune`: nothing is shared between them but the loss). Its held-out
"prompts" are the contexts, and a context's score is its mean over the worlds: the worlds are built from the same
task seed, so they share their contexts, and a context's scores in two worlds correlate (+0.34 to +0.46 on
narrow_support+clean). Counting the copies as separate prompts (the first version) made the crossed SE optimistic
by 1.10-1.17x; averaging them keeps a context one prompt, so the crossed statistics stay honest, and the mean (the
fitness) is unchanged. Worlds that split their held-out contexts differently cannot be averaged: refused in one line.
A single world is exactly :func:`discopop.tasks.diagnostic.as_task`'s task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from discopop.config.task import diagnostic_worlds
from discopop.tasks.base import Task
from discopop.tasks.diagnostic import DiagnosticSetting, from_config, split_contexts
from discopop.tasks.diagnostic import as_task as world_task

# Facts of a world's task that count contexts: the worlds share them, so a composite's are any world's (checked).
SHARED_COUNTS = ("contexts", "eval_contexts", "extra_confirm_contexts", "extra_search_contexts")


def settings_of(cfg: Mapping[str, Any]) -> list[DiagnosticSetting]:
    """The worlds a ``task=diagnostic`` config describes, in its preset's order (one world: ``from_config``'s)."""
    worlds = diagnostic_worlds(cfg.get("preset"))
    if len(worlds) == 1:
        return [from_config(cfg)]
    return [from_config({**cfg, "preset": name}) for name in worlds]


def split_parts(settings: Sequence[DiagnosticSetting], split: str) -> list[slice]:
    """Per world, the held-out contexts of ``split`` (``tasks.diagnostic.split_contexts``)."""
    return [split_contexts(s, split) for s in settings]


def per_context_mean(lists: Sequence[Sequence[float]], parts: Sequence[slice]) -> list[float]:
    """Per held-out context of the split, its mean over the worlds (each world's list cut to its ``parts`` slice):
    the worlds share their contexts, so a context stays one prompt of the crossed statistics. One world: its own
    list, bit for bit."""
    cut = [list(values[part]) for values, part in zip(lists, parts, strict=True)]
    if len(cut) == 1:
        return cut[0]
    return [sum(scores) / len(scores) for scores in zip(*cut, strict=True)]


def mean(values: Sequence[float]) -> float:
    """The plain mean; one value is returned as it is (so a single world's figures are its own, bit for bit)."""
    return values[0] if len(values) == 1 else sum(values) / len(values)


def _meta(tasks: Sequence[Task], preset: str) -> dict[str, Any]:
    """A composite's task facts: counts summed, rates weighted as the fitness weighs them (the search contexts for
    the reference's reward, the pairs for flips and correct labels, the held-out contexts for the rest)."""
    def weighted(key: str, weight: str) -> float:
        total = sum(float(t.meta[weight]) for t in tasks)
        return sum(float(t.meta[key]) * float(t.meta[weight]) for t in tasks) / total

    search = [len(t.heldout_prompts) for t in tasks]
    return {
        "preset": preset, "worlds": [t.meta["preset"] for t in tasks],
        "pairs": sum(int(t.meta["pairs"]) for t in tasks),
        **{key: int(tasks[0].meta[key]) for key in SHARED_COUNTS},
        "actions": max(int(t.meta["actions"]) for t in tasks),
        # the share of flipped labels over all the composite's pairs: the one rate cDPO and rDPO are told (search.loop)
        "label_noise": weighted("label_noise", "pairs"),
        "sft_heldout_reward": sum(float(t.meta["sft_heldout_reward"]) * n for t, n in zip(tasks, search, strict=True))
        / sum(search),
        "best_reward": weighted("best_reward", "eval_contexts"),
        "labels_correct": weighted("labels_correct", "pairs"),
        "mode_is_best": weighted("mode_is_best", "eval_contexts"),
    }


def as_task(cfg: Mapping[str, Any]) -> Task:
    """The run's :class:`Task` for ``task=diagnostic``: one world's (``tasks.diagnostic.as_task``), or a composite's,
    whose prompts are the contexts its worlds share (each scored as its mean over the worlds)."""
    worlds = diagnostic_worlds(cfg.get("preset"))
    if len(worlds) == 1:
        return world_task(cfg)
    tasks = [world_task({**cfg, "preset": name}) for name in worlds]
    for split in ("search", "confirm", "replicate"):
        sizes = {name: len(t.prompts(split)) if split != "replicate" or t.replicate_prompts else 0
                 for name, t in zip(worlds, tasks, strict=True)}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"task.preset={cfg.get('preset')}: its worlds hold different numbers of {split!r} "
                             f"contexts ({sizes}); a composite averages each context over its worlds, so they must "
                             "agree (set task.eval_contexts / task.extra_*_contexts for all)")
    first = tasks[0]
    return Task(
        name=str(cfg.get("name") or "diagnostic"), model_path="", tokenizer_path="", pairs_path=Path(),
        heldout_prompts=list(first.heldout_prompts), confirm_prompts=list(first.confirm_prompts),
        replicate_prompts=list(first.replicate_prompts) if all(t.replicate_prompts for t in tasks) else [],
        reward=None, max_new_tokens=1, score="expected", meta=_meta(tasks, str(cfg.get("preset"))),
    )
