"""Task variants a run's finalists are also confirmed on (``confirm.transfer``): transfer is part of the verdict.

A loss that wins only on the task it was searched on may have learned that task's quirks (its noise rate,
its kind of pairs). So the confirmation re-trains the finalists and the baselines on held-out *variants* of
the run's task as well (``discopop.search.transfer_confirm``), and the verdict says whether the winner
transfers. A variant is the run's own task settings with a few changed, so its size, training and scoring stay
the run's:

* ``task=diagnostic``: another preset of the family (``task.preset``; fields the run set explicitly stay set); for a
  composite task (``task.preset=a+b``) one world that is none of its own: transfer judged where the search never
  trained;
* the embedded addition task: a way of building or labelling its pairs (``ADDITION_VARIANTS``), which reuses
  the cached SFT model (only ``task.pairs`` changes).

``confirm.transfer=auto`` picks one held-out variant per task (``HELD_OUT``): one extra pool of workers and
``seeds x arms`` fine-tunes, not one per preset. A hub task has no variants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from discopop.config.base import ConfigError
from discopop.config.task import DIAGNOSTIC_PRESETS, diagnostic_worlds

AUTO = "auto"
# Pair-building settings (``task.pairs.*``) of each addition variant; the SFT model is not among them, so a
# variant reuses the cached one. Filled by the variants of the embedded task (see PairsSettings).
ADDITION_VARIANTS: dict[str, dict[str, Any]] = {
    "uniform": {"label_noise": 0.25, "hard_flip": 0.0, "ties": 0.0, "length_bias": 0.0},  # task=addition's pairs
    "hardflip": {"label_noise": 0.0, "hard_flip": 0.4},  # the flips all on carry prompts
    "ties": {"ties": 0.3},
    "lengthbias": {"length_bias": 0.5},
}
# The held-out variant ``auto`` transfers to, per (kind, preset or language): a clean search is tested under
# label noise (where loss shapes differ most), every noisy or odd diagnostic preset on the clean world.
HELD_OUT: dict[str, list[str]] = {
    **{f"diagnostic:{p}": ["clean"] for p in DIAGNOSTIC_PRESETS},
    "diagnostic:clean": ["label_noise"],
    "synthetic:addition": ["hardflip", "uniform"],  # the first that differs from the run's task
}


def _family(task: Mapping[str, Any]) -> str:
    kind = task.get("kind", "synthetic")
    if kind == "diagnostic":
        return f"diagnostic:{task.get('preset') or 'clean'}"
    if kind == "synthetic":
        return f"synthetic:{task.get('language', 'addition')}"
    return str(kind)


def _held_out(task: Mapping[str, Any]) -> list[str]:
    """``auto``'s candidates for ``task``, best first: ``HELD_OUT``'s for its family; for a composite diagnostic task,
    its worlds' choices in the composite's order, then every preset (those in the composite are dropped later)."""
    worlds = diagnostic_worlds(task.get("preset")) if task.get("kind", "synthetic") == "diagnostic" else []
    if len(worlds) < 2:
        return HELD_OUT.get(_family(task), [])
    return [*(n for w in worlds for n in HELD_OUT.get(f"diagnostic:{w}", [])), *DIAGNOSTIC_PRESETS]


def variant_names(task: Mapping[str, Any], transfer: Any) -> list[str]:
    """The variant names ``confirm.transfer`` asks for on ``task`` (plain settings): ``auto`` resolved, each
    checked (``ConfigError``: one line). The run's own setting is never its own transfer variant."""
    if transfer is None:
        return []
    if isinstance(transfer, str):
        if transfer != AUTO:
            raise ConfigError(f"confirm.transfer must be auto or a list of variant names, got {transfer!r}")
        return [n for n in _held_out(task) if n in allowed_variants(task)][:1]
    names = [str(n) for n in transfer]
    allowed = allowed_variants(task)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ConfigError(f"confirm.transfer: unknown variant(s) {', '.join(unknown)} for this task (allowed: "
                          f"{', '.join(allowed) or 'none'})")
    if len(set(names)) != len(names):
        raise ConfigError(f"confirm.transfer lists a variant twice: {names}")
    return names


def allowed_variants(task: Mapping[str, Any]) -> list[str]:
    """The variants a task can transfer to: those that change it (a run is not its own transfer variant; a composite
    diagnostic task transfers to single worlds outside it)."""
    kind = task.get("kind", "synthetic")
    if kind == "diagnostic":
        return [p for p in DIAGNOSTIC_PRESETS if p not in diagnostic_worlds(task.get("preset"))]
    if kind == "synthetic" and task.get("language", "addition") == "addition":
        pairs = dict(task.get("pairs") or {})
        return [n for n, change in ADDITION_VARIANTS.items() if any(pairs.get(k) != v for k, v in change.items())]
    return []


def variant_task(task: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The plain task settings of variant ``name`` of ``task``: the run's with the variant's changes."""
    base = dict(task)
    kind = base.get("kind", "synthetic")
    if kind == "diagnostic":
        return {**base, "preset": name, "name": f"{base.get('name') or 'diagnostic'}_{name}"}
    if kind == "synthetic" and name in ADDITION_VARIANTS:
        return {**base, "name": f"{base.get('name') or 'addition'}_{name}",
                "pairs": {**dict(base.get("pairs") or {}), **ADDITION_VARIANTS[name]}}
    raise ConfigError(f"no transfer variant {name!r} for a {kind} task")


def transfer_tasks(task: Mapping[str, Any], transfer: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, plain task settings) of every variant ``confirm.transfer`` asks for on ``task``."""
    return [(n, variant_task(task, n)) for n in variant_names(task, transfer)]
