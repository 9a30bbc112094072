"""Several diagnostic worlds as one task (``task.preset=narrow_support+clean``): a fitness averaged over worlds.

Why: on the fast tier a search that sees one world tunes its losses to that world (docs/results.md §0: winners that
beat IPO on ``narrow_support`` did not transfer to ``clean``, where CELL stays ahead). The standard remedy in
objective discovery: the fitness averages over several training worlds, and transfer is judged on a world the
search never saw (``config.variants`` picks one outside the composite).

A composite is one setting per world: the world's preset with the fields the config sets (the same for every
world). Its fine-tune is one fine-tune per world at the same seed, rate and beta (each world's own
:func:`~discopop.fitness.diagnostic_tune.fine_tune`: nothing is shared between them but the loss), and its held-out
"prompts" are the worlds' contexts, one world after another. So a per-context score list is the concatenation of the
worlds' own lists, its mean is the composite's fitness, and the crossed statistics see each world's contexts as
prompts. A single world is exactly :func:`discopop.tasks.diagnostic.as_task`'s task.

Known limit: the worlds are built from the same task seed, so they share their contexts, and a context's scores in
two worlds correlate (+0.34 to +0.46 on narrow_support+clean): counting them as separate prompts makes the crossed
SE optimistic by 1.10-1.17x (docs/results.md, "Searching on several worlds"). Averaging a context over its worlds,
or a task seed per world, would fix it; neither is done yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from discopop.config.task import diagnostic_worlds
from discopop.tasks.base import Task
from discopop.tasks.diagnostic import DiagnosticSetting, from_config, split_contexts
from discopop.tasks.diagnostic import as_task as world_task

# Facts of a world's task that are counts: a composite's is their sum (the others are averaged, see ``_meta``).
COUNTS = ("pairs", "contexts", "eval_contexts", "extra_confirm_contexts")


def settings_of(cfg: Mapping[str, Any]) -> list[DiagnosticSetting]:
    """The worlds a ``task=diagnostic`` config describes, in its preset's order (one world: ``from_config``'s)."""
    worlds = diagnostic_worlds(cfg.get("preset"))
    if len(worlds) == 1:
        return [from_config(cfg)]
    return [from_config({**cfg, "preset": name}) for name in worlds]


def split_parts(settings: Sequence[DiagnosticSetting], split: str) -> list[slice]:
    """Per world, the held-out contexts of ``split`` (``tasks.diagnostic.split_contexts``)."""
    return [split_contexts(s, split) for s in settings]


def joined(lists: Sequence[Sequence[float]], parts: Sequence[slice]) -> list[float]:
    """The worlds' per-context lists cut to their split and concatenated, world after world (the prompts' order)."""
    return [v for values, part in zip(lists, parts, strict=True) for v in values[part]]


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
        **{key: sum(int(t.meta[key]) for t in tasks) for key in COUNTS},
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
    """The run's :class:`Task` for ``task=diagnostic``: one world's (``tasks.diagnostic.as_task``), or a composite's
    whose prompts of each split are its worlds' own, named ``"<world>: context <i>"``, world after world."""
    worlds = diagnostic_worlds(cfg.get("preset"))
    if len(worlds) == 1:
        return world_task(cfg)
    tasks = [world_task({**cfg, "preset": name}) for name in worlds]

    def names(split: str) -> list[str]:
        return [f"{w}: {p}" for w, t in zip(worlds, tasks, strict=True) for p in t.prompts(split)]

    return Task(
        name=str(cfg.get("name") or "diagnostic"), model_path="", tokenizer_path="", pairs_path=Path(),
        heldout_prompts=names("search"), confirm_prompts=names("confirm"),
        replicate_prompts=names("replicate") if all(t.replicate_prompts for t in tasks) else [],
        reward=None, max_new_tokens=1, score="expected", meta=_meta(tasks, str(cfg.get("preset"))),
    )
