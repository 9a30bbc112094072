"""The rich_deterministic preset: a fast-tier setting whose pairs carry headroom above DPO and IPO (issue 24).

Why: a search can only find a better loss where one exists. On this preset a Bradley-Terry fit to one seed's pairs,
turned into its exact in-class policy (``fitness.pairs_ceiling``), beats DPO and IPO at their tuned rate (the
strongest reference, CELL, only by 1.3 x MDE at 10 seeds: docs/results.md §0). The preset must be registered for
runs and transfer, be clean's world with deterministic labels and 16 pairs a context, and be seeded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from discopop.config.task import DIAGNOSTIC_PRESETS
from discopop.config.variants import variant_names
from discopop.contract.losses import load_loss
from discopop.fitness import pairs_ceiling
from discopop.fitness.diagnostic_tune import fine_tune
from discopop.tasks.diagnostic import PRESETS, pairs, setting, split_contexts, world

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"
NAME = "rich_deterministic"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


def test_registered_for_runs_and_transfers_to_clean() -> None:
    assert NAME in PRESETS and NAME in DIAGNOSTIC_PRESETS
    assert variant_names({"kind": "diagnostic", "preset": NAME}, "auto") == ["clean"]


def test_cleans_world_with_deterministic_labels_and_more_pairs() -> None:
    s = PRESETS[NAME]
    assert s == replace(PRESETS["deterministic"], name=NAME, pairs_per_context=16)
    a, b = world(s), world(PRESETS["clean"])
    for field in ("train_features", "train_reward", "train_ref", "eval_features", "eval_reward", "eval_ref"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    data = pairs(s, 0)
    assert len(data.context) == 16 * s.contexts
    assert bool(data.label_correct.all())  # continuous rewards: no ties, every label says which is better
    assert not bool(pairs(PRESETS["clean"], 0).label_correct.all())  # clean's Bradley-Terry labels do not


def test_seeded() -> None:
    s = PRESETS[NAME]
    assert torch.equal(pairs(s, 7).chosen, pairs(setting(NAME), 7).chosen)
    assert not torch.equal(pairs(s, 7).chosen, pairs(s, 8).chosen)


def _lead(name: str) -> float:
    """Pairs pipeline minus the better of DPO and IPO at their tuned rate (0.03), seed 1000, on the tier's 3,968
    confirming contexts; the pipeline's setting is the one the scan chose (penalty 1e-3, scale 1/4)."""
    s = setting(name, extra_confirm_contexts=3840)
    part = split_contexts(s, "confirm")
    pipe = pairs_ceiling.per_context(s, pairs_ceiling.policy(s, pairs_ceiling.bt_logits(s, 1000, 1e-3), 0.25),
                                     "confirm").mean()
    refs = [np.mean(fine_tune(load_loss((PROPOSALS / f"{loss}.py").read_text()), s, seed=1000, lr=0.03)
                    .per_context[part.start:part.stop]) for loss in ("dpo", "ipo")]
    return float(pipe - max(refs))


def test_the_pairs_carry_headroom_above_dpo_and_ipo() -> None:
    """One seed (measured +0.023; the scan's mean over 10 seeds is in docs/results.md). Not contrasted with
    narrow_support at one seed: there the pipeline's seed SD (0.019) makes one seed say nothing (seed 1000: +0.017,
    against a 5-seed mean that ties IPO)."""
    lead = _lead(NAME)
    assert lead > 0.015, lead
