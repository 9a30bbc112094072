"""The task calibration figures (``fitness.calibration``) on synthetic per-prompt scores with known answers.

The MDEs are checked against a closed form derived here, not by calling ``stats`` again: a paired difference that
is ``+h`` on one seed and ``-h`` on the other (the same on every prompt) has only a seed term, so the crossed
variance of its mean is ``h**2`` with one degree of freedom, and Student's t with one degree of freedom is the
Cauchy distribution, whose quantiles are ``tan(pi * (q - 1/2))``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from discopop.fitness.calibration import ArmScores, calibrate, greedy_shares, varying_share

ALPHA, FAMILY, PROMPTS = 0.05, 6, 8


def cauchy_mde(se: float, alpha: float) -> float:
    """(t_{1-alpha/2} + t_{0.8}) * se at one degree of freedom."""
    return (1.0 / math.tan(math.pi * alpha / 2.0) + math.tan(math.pi * 0.3)) * se


def arm(base: np.ndarray, offset: float, h: float) -> ArmScores:
    """``base`` moved by ``offset``, plus ``+h`` on seed 0 and ``-h`` on seed 1 on every prompt."""
    x = base + offset + np.array([[h], [-h]])
    return ArmScores(fitness=x, score=x.copy())


@pytest.fixture
def base() -> np.ndarray:
    rng = np.random.default_rng(7)  # seed and prompt effects shared by every arm: they cancel in the differences
    return rng.normal(0.6, 0.1, size=(1, PROMPTS)) + rng.normal(0.0, 0.05, size=(2, 1))


def test_varying_share_counts_prompts_above_the_threshold() -> None:
    stack = np.full((6, 20), 0.5)
    stack[:, :5] += np.array([0.1, -0.1, 0.2, -0.2, 0.0, 0.05])[:, None]  # SD ~0.13: varies
    stack[:, 5:10] += np.array([0.005, -0.005, 0.005, -0.005, 0.0, 0.0])[:, None]  # SD ~0.0045: does not
    assert varying_share(stack, 0.01) == pytest.approx(5 / 20)
    assert varying_share(stack, 0.001) == pytest.approx(10 / 20)
    with pytest.raises(ValueError):
        varying_share(stack[:1])


def test_greedy_shares_on_zero_one_and_on_continuous_rewards() -> None:
    stack = np.array([[1, 1, 0, 0, 1], [1, 0, 0, 1, 1], [1, 1, 0, 0, 1]], dtype=float)
    assert greedy_shares(stack) == pytest.approx((2 / 5, 2 / 5, 1 / 5))
    varies, always, never = greedy_shares(stack * 0.7 + 0.1)  # not 0/1: only "varies" means something
    assert varies == pytest.approx(2 / 5) and always is None and never is None


def test_figures_match_the_closed_form(base: np.ndarray) -> None:
    arms = {"dpo": arm(base, 0.0, 0.01), "good": arm(base, 0.3, 0.0), "mid": arm(base, 0.1, 0.03)}
    cal = calibrate(arms, family=FAMILY)
    assert (cal.seeds, cal.prompts, cal.fine_tunes) == (2, PROMPTS, 6)
    assert cal.strongest == "good"
    assert cal.spread == pytest.approx(0.3)
    vs = {p.candidate: p for p in cal.vs_strongest}
    assert set(vs) == {"dpo", "mid"}
    assert vs["dpo"].delta == pytest.approx(-0.3) and vs["dpo"].se == pytest.approx(0.01)
    assert vs["dpo"].df == pytest.approx(1.0)
    assert vs["dpo"].mde == pytest.approx(cauchy_mde(0.01, ALPHA), rel=1e-5)
    assert vs["mid"].mde_family == pytest.approx(cauchy_mde(0.03, ALPHA / FAMILY), rel=1e-5)
    # pairs: dpo-good se 0.01, dpo-mid 0.02, good-mid 0.03: the median unit is the 0.02 one
    unit = cauchy_mde(0.02, ALPHA / FAMILY)
    assert cal.spread_unit == pytest.approx(unit, rel=1e-5)
    assert cal.spread_in_mde == pytest.approx(0.3 / unit, rel=1e-5)
    assert cal.mde_vs_strongest == pytest.approx(unit, rel=1e-5)  # median of the 0.01 and 0.03 ones
    assert cal.gap == pytest.approx(0.3)
    assert cal.goals == {"varying": True, "spread": False, "mde": False}  # 1 df: the MDE is ~78 se
    assert cal.varying_score == 1.0  # every prompt moves by >= 0.1 between arms
    assert cal.greedy_varying is None  # no greedy matrices given


def test_goals_met_when_the_noise_is_small(base: np.ndarray) -> None:
    arms = {"dpo": arm(base, 0.0, 1e-5), "good": arm(base, 0.3, 0.0), "mid": arm(base, 0.1, 3e-5)}
    cal = calibrate(arms, family=FAMILY)
    assert cal.mde_vs_strongest == pytest.approx(cauchy_mde(2e-5, ALPHA / FAMILY), rel=1e-5)
    assert cal.goals == {"varying": True, "spread": True, "mde": True}


def test_dpo_strongest_cannot_meet_the_mde_goal_and_no_dpo_has_no_gap(base: np.ndarray) -> None:
    arms = {"dpo": arm(base, 0.3, 1e-5), "other": arm(base, 0.1, 0.0)}
    cal = calibrate(arms, family=FAMILY)
    assert cal.strongest == "dpo" and cal.gap == pytest.approx(-0.2) and not cal.goals["mde"]
    assert calibrate({"a": arms["dpo"], "b": arms["other"]}, family=FAMILY).gap is None


def test_score_and_fitness_are_measured_apart(base: np.ndarray) -> None:
    """The KL term can move a prompt's fitness where its score does not: figure 1 counts the score."""
    flat = np.full((2, PROMPTS), 0.5)
    kl_noise = np.array([[0.05], [-0.05]]) * np.ones((1, PROMPTS))
    arms = {"dpo": ArmScores(fitness=flat + kl_noise, score=flat.copy()),
            "b": ArmScores(fitness=flat - kl_noise + 0.01, score=flat.copy())}
    cal = calibrate(arms, family=FAMILY)
    assert cal.varying_score == 0.0 and cal.varying_fitness == 1.0 and cal.median_sd == 0.0


def test_greedy_uses_only_arms_that_kept_it(base: np.ndarray) -> None:
    a, b = arm(base, 0.0, 0.01), arm(base, 0.1, 0.02)
    a.greedy = np.array([[1, 1, 0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 1, 1, 1, 1]], dtype=float)
    cal = calibrate({"dpo": a, "b": b}, family=FAMILY)
    assert cal.greedy_fine_tunes == 2
    assert (cal.greedy_varying, cal.greedy_always, cal.greedy_never) == pytest.approx((1 / 8, 5 / 8, 2 / 8))


def test_mismatched_shapes_and_a_single_arm_are_refused(base: np.ndarray) -> None:
    with pytest.raises(ValueError):
        calibrate({"dpo": arm(base, 0.0, 0.01)}, family=FAMILY)
    short = ArmScores(fitness=base[:, :4], score=base[:, :4])
    with pytest.raises(ValueError):
        calibrate({"dpo": arm(base, 0.0, 0.01), "b": short}, family=FAMILY)
