"""The narrow_support preset: where loss shape, not the rate, decides the fast tier's outcome (issue 24 goal iii).

Why: the preset is registered for runs and transfer, its data has the stated property (each context's pairs lie
within 4 of 16 actions, so the same few pairs recur), its world is shifted_support's, it is seeded, and
its mechanism holds at the tier's size (a bounded-target loss beats every stopping point of DPO's path).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from discopop.config.task import DIAGNOSTIC_PRESETS
from discopop.config.variants import variant_names
from discopop.contract.losses import load_loss
from discopop.fitness.diagnostic_tune import fine_tune
from discopop.tasks.diagnostic import PRESETS, pairs, setting, world

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"
NAME = "narrow_support"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


def test_registered_for_runs_and_transfers_to_clean() -> None:
    assert NAME in PRESETS and NAME in DIAGNOSTIC_PRESETS
    assert variant_names({"kind": "diagnostic", "preset": NAME}, "auto") == ["clean"]


def test_pairs_lie_within_a_quarter_of_the_actions_and_recur() -> None:
    s = PRESETS[NAME]
    w, data = world(s), pairs(s, 0)
    keep = math.ceil(s.support * s.actions)
    assert keep == 4 and bool((w.support.sum(dim=1) == keep).all())
    assert bool(w.support[data.context, data.chosen].all() and w.support[data.context, data.rejected].all())
    # Unordered pairs per context: 8 draws among C(4, 2) = 6 must recur; with 4 pairs over all 16 actions (clean; the
    # reference samples them, so its likely ones recur too) 17% do.
    def repeats(st) -> float:
        d = pairs(st, 0)
        lo, hi = torch.minimum(d.chosen, d.rejected), torch.maximum(d.chosen, d.rejected)
        key = (d.context * st.actions + lo) * st.actions + hi
        return 1 - len(torch.unique(key)) / len(key)
    assert repeats(s) > 2 * repeats(PRESETS["clean"])
    assert repeats(s) >= 0.25 and s.pairs_per_context > math.comb(keep, 2)


def test_shifted_supports_world_with_fewer_actions_and_more_pairs() -> None:
    a, b = world(PRESETS[NAME]), world(PRESETS["shifted_support"])
    for field in ("train_features", "train_reward", "train_ref", "eval_features", "eval_reward", "eval_ref"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert int(a.support.sum()) < int(b.support.sum())
    assert PRESETS[NAME] == replace(PRESETS["shifted_support"], name=NAME, support=0.25, pairs_per_context=8)


def test_seeded() -> None:
    s = PRESETS[NAME]
    assert torch.equal(pairs(s, 7).chosen, pairs(setting(NAME), 7).chosen)
    assert not torch.equal(pairs(s, 7).chosen, pairs(s, 8).chosen)
    dpo = load_loss((PROPOSALS / "dpo.py").read_text())
    small = setting(NAME, steps=10)
    a, b = fine_tune(dpo, small, seed=3, lr=0.03), fine_tune(dpo, small, seed=3, lr=0.03)
    assert a.per_context == b.per_context
    assert fine_tune(dpo, small, seed=4, lr=0.03).per_context != a.per_context


def test_no_stopping_point_undoes_it() -> None:
    """IPO at one rate beats DPO at *every* rate of a fine grid (every stopping point of its path) on narrow_support,
    by more than DPO's whole spread between neighbouring grid points; on the clean world it does not."""
    dpo = load_loss((PROPOSALS / "dpo.py").read_text())
    ipo = load_loss((PROPOSALS / "ipo.py").read_text())
    lead = {}
    for name in (NAME, "clean"):
        s = PRESETS[name]
        best_dpo = max(fine_tune(dpo, s, seed=1000, lr=lr).fitness for lr in (0.005, 0.01, 0.015, 0.02, 0.03, 0.06))
        lead[name] = fine_tune(ipo, s, seed=1000, lr=0.03).fitness - best_dpo
    assert lead[NAME] > 0.02, lead
    assert lead["clean"] < 0.01, lead
