"""The confirmation's statistics on simulated per-(seed, prompt) scores: false-positive rate under the
null, power under a real effect, failed and single-seed comparisons, Holm, and the t distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from discopop.fitness import stats, student_t

SIMS = 600
# Three binomial standard errors of a 5% rate over SIMS simulations: the Monte-Carlo tolerance.
TOLERANCE = 3 * math.sqrt(0.05 * 0.95 / SIMS)


def _confirmation(rng: np.random.Generator, seeds: int, prompts: int, effect: float = 0.0,
                  seed_sd: float = 0.35, arm_seed_sd: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Exact-match rewards of two arms trained on the same seeds and scored on the same prompts.

    Logit of a correct answer = prompt difficulty + a seed effect both arms share + an arm's own
    seed effect (how this loss happened to train on this seed) (+ ``effect`` for arm A). The two
    arms' answers on one prompt are correlated through one shared uniform draw.
    """
    difficulty = rng.normal(1.0, 1.5, prompts)
    shared = rng.normal(0.0, seed_sd, (seeds, 1))
    logit_a = difficulty + shared + rng.normal(0.0, arm_seed_sd, (seeds, 1)) + effect
    logit_b = difficulty + shared + rng.normal(0.0, arm_seed_sd, (seeds, 1))
    u = rng.random((seeds, prompts))
    return (u < 1 / (1 + np.exp(-logit_a))).astype(float), (u < 1 / (1 + np.exp(-logit_b))).astype(float)


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_false_positive_rate_under_the_null_is_at_most_alpha(seeds: int) -> None:
    rng = np.random.default_rng(seeds)
    called = 0
    for _ in range(SIMS):
        a, b = _confirmation(rng, seeds, 400)
        called += stats.decide([stats.compare("a", "b", a, b)])[0].verdict != stats.WITHIN
    assert called / SIMS <= 0.05 + TOLERANCE, f"{called}/{SIMS} null confirmations called significant"


def test_a_fixed_threshold_of_two_would_fail_this_check() -> None:
    """The simulation has teeth: the same SE judged by |delta| > 2 SE (the previous rule's threshold) instead of
    the t critical value of the seeds' degrees of freedom calls the null far too often at 3 seeds."""
    rng = np.random.default_rng(0)
    called = 0
    for _ in range(SIMS):
        a, b = _confirmation(rng, 3, 400)
        comp = stats.compare("a", "b", a, b)
        called += abs(comp.delta) > 2 * comp.se
    assert called / SIMS > 0.05 + TOLERANCE


def test_family_wise_rate_with_holm_over_six_comparisons() -> None:
    """Three candidates, each against two baselines, all null: any false call counts against the family."""
    rng = np.random.default_rng(1)
    families_with_a_false_call = 0
    for _ in range(SIMS // 2):
        comps = []
        for i in range(6):
            a, b = _confirmation(rng, 3, 300)
            comps.append(stats.compare(f"c{i}", "base", a, b))
        families_with_a_false_call += any(c.verdict != stats.WITHIN for c in stats.decide(comps))
    assert families_with_a_false_call / (SIMS // 2) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / (SIMS // 2))


def test_a_real_effect_is_detected() -> None:
    rng = np.random.default_rng(2)
    verdicts = []
    for _ in range(100):
        a, b = _confirmation(rng, 3, 1000, effect=0.6, seed_sd=0.2, arm_seed_sd=0.1)
        verdicts.append(stats.decide([stats.compare("a", "b", a, b)])[0].verdict)
    assert verdicts.count(stats.BEATS) >= 80 and stats.BELOW not in verdicts
    a, b = _confirmation(np.random.default_rng(3), 3, 1000, effect=-0.6, seed_sd=0.2, arm_seed_sd=0.1)
    assert stats.decide([stats.compare("a", "b", a, b)])[0].verdict == stats.BELOW


def test_one_seed_or_a_failed_seed_is_never_significant() -> None:
    good, bad = np.ones((1, 50)), np.zeros((1, 50))
    single = stats.decide([stats.compare("a", "b", good, bad)])[0]
    assert single.verdict == stats.FAILED and "at least 2" in single.reason and single.p_adjusted is None
    failed = stats.decide([stats.compare("a", "b", np.ones((3, 50)), np.zeros((3, 50)),
                                         failure="seed 1001 failed: loss is nan at step 3")])[0]
    assert failed.verdict == stats.FAILED and "1001" in stats.describe(failed.as_dict(), "DPO")
    mismatch = stats.compare("a", "b", np.ones((3, 50)), np.zeros((2, 50)))
    assert mismatch.verdict == stats.FAILED and "shape" in mismatch.reason


def test_identical_arms_are_within_noise_and_a_noiseless_gain_is_not() -> None:
    same = np.random.default_rng(4).random((3, 40))
    comp = stats.decide([stats.compare("a", "b", same, same.copy())])[0]
    assert comp.delta == 0.0 and comp.p == 1.0 and comp.verdict == stats.WITHIN
    shifted = stats.decide([stats.compare("a", "b", same + 0.1, same)])[0]
    assert shifted.verdict == stats.BEATS and shifted.delta == pytest.approx(0.1)


def test_holm_is_monotone_and_bounded() -> None:
    raw = [0.01, 0.04, 0.03, 0.005, 0.5, 0.2]
    adj = stats.holm(raw)
    assert adj == pytest.approx([0.05, 0.12, 0.12, 0.03, 0.5, 0.4])
    by_raw = [a for _, a in sorted(zip(raw, adj, strict=True))]
    assert by_raw == sorted(by_raw) and all(a >= r for a, r in zip(adj, raw, strict=True)) and max(adj) <= 1.0
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0] and stats.holm([0.04, 0.9]) == [0.08, 0.9]


@pytest.mark.parametrize(("df", "critical"), [(2, 4.302653), (4, 2.776445), (10, 2.228139), (30, 2.042272)])
def test_t_critical_values_match_tables(df: float, critical: float) -> None:
    assert stats.t_critical(0.05, df) == pytest.approx(critical, abs=2e-3)
    assert stats.t_two_sided_p(critical, df) == pytest.approx(0.05, abs=1e-4)


def test_crossed_standard_error_counts_seed_and_prompt_noise() -> None:
    rng = np.random.default_rng(5)
    seed_only = rng.normal(0, 1, (4, 1)) + np.zeros((4, 200))
    est = stats.crossed_estimate(seed_only)
    assert est.se == pytest.approx(seed_only[:, 0].std(ddof=1) / 2) and est.df == pytest.approx(3)
    prompt_only = rng.normal(0, 1, (1, 200)) + np.zeros((4, 200))
    est = stats.crossed_estimate(prompt_only)
    assert est.se == pytest.approx(prompt_only[0].std(ddof=1) / math.sqrt(200))
    assert est.df == 199  # the seeds agree exactly: the prompt term's df (its 80% bound on seed noise is 0)
    tiny_seed = prompt_only + rng.normal(0, 0.02, (4, 1))  # ~2% of the variance: its bound is small too
    assert stats.crossed_estimate(tiny_seed).df > 100
    some_seed = prompt_only + rng.normal(0, 0.15, (4, 1))  # a seed share the 3 seed df cannot pin down
    assert stats.crossed_estimate(some_seed).df < 20
    with pytest.raises(ValueError, match="seeds x prompts"):
        stats.crossed_estimate([1.0, 2.0])


@pytest.mark.parametrize("runs", [3, 5])
def test_pooling_runs_calls_a_null_search_rarely_and_a_consistent_gain_often(runs: int) -> None:
    """Run-level deltas of a search that finds nothing (mean 0, run-to-run spread) are called a gain at most
    alpha of the time; a gain of 1.5 run-to-run spreads is found often (power ~0.29 over 3 runs, ~0.72 over 5)."""
    rng = np.random.default_rng(runs)
    null = sum(stats.pooled_over_runs(rng.normal(0.0, 0.005, runs)).p < stats.ALPHA for _ in range(SIMS))
    assert null / SIMS <= 0.05 + TOLERANCE, f"{null}/{SIMS} null searches called a gain"
    real = sum(stats.pooled_over_runs(rng.normal(0.0075, 0.005, runs)).p < stats.ALPHA for _ in range(SIMS))
    assert real / SIMS >= (0.2 if runs == 3 else 0.6), f"only {real}/{SIMS} consistent gains found"
    assert stats.pooled_over_runs([0.01]) is None and stats.pooled_over_runs([0.01, None]) is None


def _arms(rng: np.random.Generator, n_arms: int, seeds: int, prompts: int, sd: float = 0.35) -> list[np.ndarray]:
    """Exact-match rewards of ``n_arms`` equally good losses on the same seeds and prompts (as ``_confirmation``)."""
    difficulty = rng.normal(1.0, 1.5, prompts)
    shared = rng.normal(0.0, sd, (seeds, 1))
    u = rng.random((seeds, prompts))
    return [(u < 1 / (1 + np.exp(-(difficulty + shared + rng.normal(0.0, sd, (seeds, 1)))))).astype(float)
            for _ in range(n_arms)]


def test_holding_a_null_candidate_to_the_best_of_two_baselines_on_fresh_seeds_rarely_calls_it_better() -> None:
    """The strongest baseline is picked by its fresh-seed mean among the confirmed references (``confirmation``,
    ``transfer``). That pick favours the baseline, so a candidate as good as both is called better no more often
    than against one fixed baseline (at most alpha/2, one side of the two-sided test), and called worse more
    often: a conservative bar for a claimed discovery."""
    rng = np.random.default_rng(7)
    beats = below = fixed_beats = 0
    for _ in range(SIMS):
        cand, ref1, ref2 = _arms(rng, 3, 5, 400)
        best = max((ref1, ref2), key=lambda m: m.mean())
        verdict = stats.decide([stats.compare("cand", "best", cand, best)])[0].verdict
        beats, below = beats + (verdict == stats.BEATS), below + (verdict == stats.BELOW)
        fixed_beats += stats.decide([stats.compare("cand", "ref1", cand, ref1)])[0].verdict == stats.BEATS
    assert beats / SIMS <= 0.025 + TOLERANCE, f"{beats}/{SIMS} null candidates beat the best of two"
    assert beats <= fixed_beats and below > beats, (beats, fixed_beats, below)


# --- size, power and the minimum detectable effect of the crossed estimator, simulated with exact sampling
# distributions. For Gaussian d = mu + a_s + b_p + e_sp the grand mean and the three mean squares are independent,
# the mean normal and each mean square a scaled chi-squared, so a draw of (mean, MS_seed, MS_prompt, MS_res) is
# exactly a draw of a seeds x prompts matrix's statistics, at a thousandth of the cost (one matrix-level check below).
DRAWS = 10_000
# Three binomial standard errors of a 5% rate over DRAWS: +-0.65 points. A rate above 5% + SIZE_TOL is a real excess.
SIZE_TOL = 3 * math.sqrt(0.05 * 0.95 / DRAWS)
PROMPTS = 500
# Shares of Var(mean d) at 3 seeds and 500 prompts (seed, prompt, residual), modelled on issue 24's account of the
# embedded task: a near-copy baseline (seed noise dominates), AQFL - hinge on 0/1 rewards (residual 41%), AQFL - DPO
# (the prompt term dominates; Satterthwaite df in the hundreds).
SCENARIOS = {"seed-dominated": (0.6, 0.1, 0.3), "residual 41%": (0.3, 0.29, 0.41),
             "prompt-dominated": (0.1, 0.75, 0.15)}


def _components(shares: tuple[float, float, float], sd: float = 0.004) -> tuple[float, float, float]:
    """Per-cell variance components (seed, prompt, residual) giving ``shares`` of Var(mean) = sd^2 at S=3, P=500."""
    var = sd ** 2
    return shares[0] * var * 3, shares[1] * var * PROMPTS, shares[2] * var * 3 * PROMPTS


def _draw(rng: np.random.Generator, seeds: int, comps: tuple[float, float, float], effect: float = 0.0,
          prompts: int = PROMPTS, n: int = DRAWS) -> tuple[np.ndarray, ...]:
    """``n`` draws of (mean, MS_seed, MS_prompt, MS_res) of a crossed seeds x prompts design, and the true SE."""
    va, vb, ve = comps
    df_a, df_b = seeds - 1, prompts - 1
    true_se = math.sqrt(va / seeds + vb / prompts + ve / (seeds * prompts))
    mean = effect + rng.normal(0.0, true_se, n)
    ms_a = (prompts * va + ve) * rng.chisquare(df_a, n) / df_a
    ms_b = (seeds * vb + ve) * rng.chisquare(df_b, n) / df_b
    ms_e = ve * rng.chisquare(df_a * df_b, n) / (df_a * df_b)
    return mean, ms_a, ms_b, ms_e, np.full(n, true_se)


def _rejects(mean: np.ndarray, se: np.ndarray, df: np.ndarray) -> np.ndarray:
    return student_t.two_sided_p(mean / se, df) < stats.ALPHA


def _old_rule(ms_a: np.ndarray, ms_b: np.ndarray, seeds: int, prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """The previous estimator: Var_s(row means)/S + Var_p(column means)/P with df = min(S-1, P-1)."""
    return np.sqrt((ms_a + ms_b) / (seeds * prompts)), np.full_like(ms_a, min(seeds - 1, prompts - 1))


def _new_rule(ms_a: np.ndarray, ms_b: np.ndarray, ms_e: np.ndarray, seeds: int,
              prompts: int) -> tuple[np.ndarray, np.ndarray]:
    var, df = stats.crossed_variance(ms_a, ms_b, ms_e, seeds, prompts)
    return np.sqrt(var), df


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_null_rejection_rate_is_at_most_alpha_and_power_beats_the_old_estimator(scenario: str, seeds: int) -> None:
    """Size <= 5% (+3 Monte-Carlo SE) in every scenario and seed count; with 5+ seeds it is near 5% (the old
    estimator: 0.4-2%); power at an effect of 2.5 true SEs is higher than the old estimator's."""
    comps = _components(SCENARIOS[scenario])
    rng = np.random.default_rng(seeds * 100 + list(SCENARIOS).index(scenario))
    mean, ms_a, ms_b, ms_e, true_se = _draw(rng, seeds, comps)
    se, df = _new_rule(ms_a, ms_b, ms_e, seeds, PROMPTS)
    size = _rejects(mean, se, df).mean()
    assert size <= stats.ALPHA + SIZE_TOL, f"{scenario}, {seeds} seeds: null rejected {size:.2%}"
    if seeds >= 5:
        assert size >= 0.025, f"{scenario}, {seeds} seeds: null rejected only {size:.2%}: needlessly conservative"
    shifted = mean + 2.5 * true_se  # the mean squares do not change when every d[s, p] shifts by a constant
    power_new = _rejects(shifted, se, df).mean()
    power_old = _rejects(shifted, *_old_rule(ms_a, ms_b, seeds, PROMPTS)).mean()
    assert power_new > power_old + 0.02, f"{scenario}, {seeds} seeds: power {power_new:.1%} vs old {power_old:.1%}"


def test_plain_satterthwaite_degrees_of_freedom_would_fail_the_size_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check has teeth: the df at the mean squares' point estimates (a 50% "bound") reject the null ~10% of the
    time at 2 seeds when the seed share is large, because the df jump exactly when the seed term comes out small."""
    comps = _components((0.9, 0.05, 0.05))
    mean, ms_a, ms_b, ms_e, _ = _draw(np.random.default_rng(11), 2, comps)
    monkeypatch.setattr(stats, "BOUND", 0.5)
    size = _rejects(mean, *_new_rule(ms_a, ms_b, ms_e, 2, PROMPTS)).mean()
    assert size > stats.ALPHA + SIZE_TOL, size
    monkeypatch.setattr(stats, "BOUND", 0.2)
    assert _rejects(mean, *_new_rule(ms_a, ms_b, ms_e, 2, PROMPTS)).mean() <= stats.ALPHA + SIZE_TOL


def test_matrix_path_matches_the_mean_squares_and_holds_size() -> None:
    """Real seeds x prompts matrices through ``mean_squares`` (batched) and ``crossed_estimate`` (one at a time)."""
    rng = np.random.default_rng(12)
    seeds, prompts, n = 3, 200, 3000
    va, vb, ve = 0.3 * 3e-4, 0.3 * 3e-4 * prompts / 3, 0.4 * 3e-4 * prompts
    x = (rng.normal(0, math.sqrt(va), (n, seeds, 1)) + rng.normal(0, math.sqrt(vb), (n, 1, prompts))
         + rng.normal(0, math.sqrt(ve), (n, seeds, prompts)))
    mean, ms_a, ms_b, ms_e = stats.mean_squares(x)
    total = ((x - mean[:, None, None]) ** 2).sum(axis=(1, 2))  # ANOVA identity: SS_total = SS_a + SS_b + SS_e
    assert np.allclose(total, ms_a * (seeds - 1) + ms_b * (prompts - 1) + ms_e * (seeds - 1) * (prompts - 1))
    var, df = stats.crossed_variance(ms_a, ms_b, ms_e, seeds, prompts)
    one = stats.crossed_estimate(x[0])
    assert one.mean == pytest.approx(mean[0]) and one.se == pytest.approx(math.sqrt(var[0])) and one.df == df[0]
    tol = 3 * math.sqrt(0.05 * 0.95 / n)
    assert _rejects(mean, np.sqrt(var), df).mean() <= stats.ALPHA + tol
    # the combination is unbiased for the true variance of the mean (within 3 SE); the floor only ever raises it
    truth = va / seeds + vb / prompts + ve / (seeds * prompts)
    unbiased = (ms_a + ms_b - ms_e) / (seeds * prompts)
    assert abs(unbiased.mean() - truth) < 3 * unbiased.std() / math.sqrt(n)
    assert np.all(var >= unbiased) and np.all(var > 0) and np.any(var > unbiased)
    old = (ms_a + ms_b).mean() / (seeds * prompts)
    assert old > truth * 1.2  # the old estimator counts the residual (40% here) twice


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_the_stated_minimum_detectable_effect_is_detected_80_percent_of_the_time(scenario: str, seeds: int) -> None:
    """Among comparisons stating MDE Y, a true effect of Y is detected ~80% of the time: each draw is shifted by its
    own stated MDE (valid: the mean squares, hence se, df and MDE, do not depend on the mean). Conservative df make
    it a little higher with 2-3 seeds (up to ~87%); never lower than 80% - 3 Monte-Carlo SE."""
    comps = _components(SCENARIOS[scenario])
    mean, ms_a, ms_b, ms_e, _ = _draw(np.random.default_rng(seeds * 7 + 1), seeds, comps)
    se, df = _new_rule(ms_a, ms_b, ms_e, seeds, PROMPTS)
    mde = stats.minimum_detectable(se, df)
    power = _rejects(mean + mde, se, df).mean()
    tol = 3 * math.sqrt(0.8 * 0.2 / DRAWS)
    assert 0.8 - tol <= power <= 0.9, f"{scenario}, {seeds} seeds: {power:.1%} of stated-MDE effects detected"


def test_a_fixed_effect_equal_to_the_typical_mde_is_detected_80_percent_of_the_time() -> None:
    """With many df (10 seeds, prompt-dominated) the MDE hardly varies: a fixed effect of its median is detected
    80% +- 3 Monte-Carlo SE of the time."""
    comps = _components(SCENARIOS["prompt-dominated"])
    rng = np.random.default_rng(13)
    _, ms_a, ms_b, ms_e, _ = _draw(rng, 10, comps)
    effect = float(np.median(stats.minimum_detectable(*_new_rule(ms_a, ms_b, ms_e, 10, PROMPTS))))
    mean, ms_a, ms_b, ms_e, _ = _draw(rng, 10, comps, effect=effect)
    power = _rejects(mean, *_new_rule(ms_a, ms_b, ms_e, 10, PROMPTS)).mean()
    assert abs(power - 0.8) <= 3 * math.sqrt(0.8 * 0.2 / DRAWS), power


def test_comparison_states_mde_and_tost_bound_in_its_dict_and_words() -> None:
    rng = np.random.default_rng(14)
    a, b = _confirmation(rng, 5, 400)
    comps = stats.decide([stats.compare("a", "b", a, b), stats.compare("c", "b", b, a)])
    comp = comps[0]
    assert comp.verdict == stats.WITHIN and comp.family == 2
    tc1 = stats.t_critical(2 * stats.ALPHA, comp.df)  # the 90% interval's ends: TOST at alpha
    assert comp.equivalence == pytest.approx(max(abs(comp.delta - tc1 * comp.se), abs(comp.delta + tc1 * comp.se)))
    assert comp.equivalence > abs(comp.delta) and comp.mde_family > comp.mde > 0
    assert comp.mde == pytest.approx((stats.t_critical(0.05, comp.df) + stats.t_critical(0.4, comp.df)) * comp.se)
    stored = comp.as_dict()
    for key in ("delta", "se", "df", "ci", "p", "p_adjusted", "verdict", "mde", "mde_family", "equivalence"):
        assert key in stored
    text = stats.describe(stored, "DPO")
    assert text.endswith(f"within noise of DPO, Holm p={comp.p_adjusted:.3g}: no gain (or loss) above "
                         f"{comp.equivalence:.3f}, MDE {comp.mde_family:.3f} (Holm, 2 tests)")
    old = {k: v for k, v in stored.items() if k not in ("mde", "mde_family", "equivalence", "family")}
    assert stats.describe(old, "DPO").endswith(f"within noise of DPO, Holm p={comp.p_adjusted:.3g}")
    beats = stats.decide([stats.compare("a", "b", a + 0.2, a)])[0]
    assert stats.describe(beats.as_dict()).endswith(f"beats b, Holm p={beats.p_adjusted:.3g}: MDE {beats.mde:.3f}")


def test_vectorised_student_t_matches_the_exact_scalar_route() -> None:
    df = np.array([1.0, 1.7, 2.0, 3.3, 10.0, 71.5, 499.0])
    for alpha in (0.05, 0.4, 0.1):
        crit = student_t.critical(alpha, df)
        exact = [stats.t_two_sided_p(c, d) for c, d in zip(crit, df, strict=True)]
        assert np.allclose(exact, alpha, rtol=1e-5)
    t = np.array([0.3, 2.0, 5.0, 12.0])
    assert np.allclose(student_t.two_sided_p(t, 3.3), [stats.t_two_sided_p(v, 3.3) for v in t], rtol=1e-8)
