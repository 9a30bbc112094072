"""Paired statistics for the fresh-seed confirmation: is a candidate really better than a baseline?

Both arms of a comparison are trained with the *same* fresh seeds (same initial state, pair
subsample and data order per seed) and scored on the *same* held-out prompts, so the unit of
comparison is the difference ``d[s, p]`` of the two arms' scores on seed ``s`` and prompt ``p``.
Its mean is the estimated gain. Its uncertainty has two sources that a claim must survive:
another seed (a different training run), and another sample of prompts (another test set).

The method: a crossed two-way random-effects ANOVA, ``d = mu + a_s + b_p + e_sp``, with a Student t test.

    Var(mean d) = s_a^2/S + s_b^2/P + s_e^2/(S P),  estimated by  (MS_seed + MS_prompt - MS_res) / (S P)

from the two-way mean squares (``E MS_seed = P s_a^2 + s_e^2``, ``E MS_prompt = S s_b^2 + s_e^2``,
``E MS_res = s_e^2``): unbiased. (Summing the row- and column-mean variances, as before, counts the
residual twice: 41% of the variance for AQFL - hinge on 0/1 rewards.) Floor: never below
``max(MS_seed, MS_prompt, MS_res) / (S P)``: each expected mean square over ``S P`` is itself a lower
bound of the true variance, so the floor is what the data support and is never negative (it equals
truncating negative variance components at zero).

Degrees of freedom: Satterthwaite's for that combination, but with the seed mean square (and, by
the same rule, the prompt one; the smaller df wins) replaced by its 80% upper confidence bound
``MS * k / chi2_{0.2, k}``, clipped to ``[min(S-1, P-1), (S-1) + (P-1) + (S-1)(P-1)]``. Plain
Satterthwaite df are estimated from the same data as t and jump from ~S-1 to hundreds exactly when
the seed term happens to come out small (large t): 13% false positives at S = 2, 8% at S = 3 in
simulation. With the bound, the df stay near S-1 unless the data rule out a large seed share, and
are in the hundreds only when the prompt term dominates beyond doubt (AQFL - DPO). Simulated over
a grid of (seed, prompt, residual) shares for S = 2..10 and P = 5..500, the size stays <= 5% (a
75% bound already gives 5.9% at S = 2); with the 2 or 3 seeds' one or two df it is conservative
where the seed share cannot be ruled out (a valid test cannot be exact for every share there).
``tests/test_stats.py`` and ``benchmarks/stats_power.py`` measure size, power and the MDE.

Every comparison states its minimum detectable effect at 80% power,
``(t_{1-alpha/2, df} + t_{0.8, df}) * se`` at the comparison's own alpha (``mde``) and at the
stricter alpha/m of Holm's first step over its m comparisons (``mde_family``: what one real effect
must clear), and its TOST equivalence bound at alpha: the larger absolute end of the 1 - 2 alpha
interval, the smallest X for which two one-sided tests would conclude |delta| < X. "Within noise"
without those numbers says nothing.

All comparisons one confirmation makes are corrected together (Holm: family-wise error <= alpha,
uniformly more powerful than Bonferroni). A comparison with a failed or missing seed in either arm
is *failed*, never a smaller sample; fewer than two seeds cannot estimate seed noise and is failed
too. ``verdict`` words and ``describe`` are the one place the leaderboard, report, notebook and
export turn a comparison into words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

import mpmath
import numpy as np

from discopop.fitness import student_t

ALPHA = 0.05  # family-wise error rate of one confirmation's comparisons
POWER = 0.8  # the power at which a comparison's minimum detectable effect is stated
BOUND = 0.2  # the mean squares' df are taken at their (1 - BOUND) upper confidence bound: see the module doc
BEATS, BELOW, WITHIN, FAILED = "beats", "below", "within noise of", "failed"


@dataclass
class Estimate:
    """A mean over (seed, prompt) scores with its crossed standard error and (conservative) degrees of freedom."""

    mean: float
    se: float
    df: float
    seeds: int
    prompts: int


@dataclass
class Comparison:
    """Candidate minus baseline on the same fresh seeds and prompts; the verdict is set by :func:`decide`."""

    candidate: str
    baseline: str
    delta: float | None = None
    se: float | None = None
    df: float | None = None
    ci: tuple[float, float] | None = None  # 1 - alpha, before the multiple-comparison correction
    p: float | None = None
    p_adjusted: float | None = None
    verdict: str = FAILED
    reason: str | None = None  # why it failed
    seeds: int = 0
    prompts: int = 0
    mde: float | None = None  # minimum detectable effect at POWER, two-sided alpha (no multiplicity correction)
    mde_family: float | None = None  # the same at alpha / family: Holm's first step, set by decide()
    family: int | None = None  # comparisons Holm-corrected together (set by decide())
    equivalence: float | None = None  # TOST at alpha: |delta| < equivalence (larger |end| of the 1 - 2 alpha CI)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci else None
        out.update(out.pop("extra"))
        return out


def mean_squares(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, MS_seed, MS_prompt, MS_res) of seeds x prompts matrices (the last two axes; leading axes are a batch).

    A mean square with no degrees of freedom (one seed, or one prompt) is 0.
    """
    x = np.asarray(scores, dtype=float)
    seeds, prompts = x.shape[-2:]
    grand = x.mean(axis=(-2, -1))
    rows, cols = x.mean(axis=-1), x.mean(axis=-2)
    ss_seed = prompts * ((rows - grand[..., None]) ** 2).sum(axis=-1)
    ss_prompt = seeds * ((cols - grand[..., None]) ** 2).sum(axis=-1)
    resid = x - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
    ss_res = (resid ** 2).sum(axis=(-2, -1))
    df_seed, df_prompt = seeds - 1, prompts - 1
    df_res = df_seed * df_prompt
    return (grand, ss_seed / max(df_seed, 1), ss_prompt / max(df_prompt, 1), ss_res / max(df_res, 1))


@lru_cache(maxsize=256)
def chi2_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of chi-squared with ``df`` degrees of freedom (bisection on mpmath's gamma CDF)."""
    def cdf(x: float) -> float:
        return float(mpmath.gammainc(df / 2.0, 0, x / 2.0, regularized=True))

    lo, hi = 0.0, float(df) + 10.0 * math.sqrt(2.0 * df) + 10.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2.0


def crossed_variance(ms_seed: np.ndarray | float, ms_prompt: np.ndarray | float, ms_res: np.ndarray | float,
                     seeds: int, prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """Variance of the grand mean and its degrees of freedom from the two-way mean squares (see module doc).

    Elementwise over arrays of mean squares (simulations); needs ``seeds >= 2``.
    """
    if seeds < 2:
        raise ValueError("at least 2 seeds are needed to measure seed noise")
    ms_a, ms_b, ms_e = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(ms_seed, ms_prompt, ms_res))
    cells = seeds * prompts
    df_a = seeds - 1
    if prompts < 2:  # one prompt: the seeds' spread is all there is
        return ms_a / cells, np.full_like(ms_a, float(df_a))
    df_b, df_e = prompts - 1, (seeds - 1) * (prompts - 1)

    def floored(a: np.ndarray, b: np.ndarray, e: np.ndarray) -> np.ndarray:
        return np.maximum(a + b - e, np.maximum(np.maximum(a, b), e))

    def satterthwaite(a: np.ndarray, b: np.ndarray, e: np.ndarray) -> np.ndarray:
        spread = a ** 2 / df_a + b ** 2 / df_b + e ** 2 / df_e
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(spread > 0, floored(a, b, e) ** 2 / spread, float(df_a))

    upper_a = ms_a * df_a / chi2_quantile(BOUND, df_a)
    upper_b = ms_b * df_b / chi2_quantile(BOUND, df_b)
    df = np.minimum(satterthwaite(upper_a, ms_b, ms_e), satterthwaite(ms_a, upper_b, ms_e))
    df = np.clip(df, min(df_a, df_b), df_a + df_b + df_e)
    return floored(ms_a, ms_b, ms_e) / cells, df


def crossed_estimate(scores: Sequence[Sequence[float]] | np.ndarray) -> Estimate:
    """Mean of a seeds x prompts matrix and its standard error over both seeds and prompts (see module doc)."""
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected a seeds x prompts matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("scores contain non-finite values")
    seeds, prompts = x.shape
    if seeds < 2:
        return Estimate(float(x.mean()), math.nan, math.nan, seeds, prompts)
    mean, ms_a, ms_b, ms_e = mean_squares(x)
    var, df = crossed_variance(ms_a, ms_b, ms_e, seeds, prompts)
    return Estimate(float(mean), math.sqrt(float(var)), float(df), seeds, prompts)


def minimum_detectable(se: np.ndarray | float, df: np.ndarray | float, alpha: float = ALPHA,
                       power: float = POWER) -> np.ndarray:
    """The true effect a two-sided t test at ``alpha`` detects with probability ``power``: ``(t_{1-alpha/2} +
    t_{power}) * se`` (elementwise). Calibrated over the comparisons that state it: among those, a true effect
    of their own stated MDE is detected ~``power`` of the time (``tests/test_stats.py``)."""
    return (student_t.critical(alpha, df) + student_t.critical(2.0 * (1.0 - power), df)) * np.asarray(se, float)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (possibly fractional) degrees of freedom."""
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return float(mpmath.betainc(df / 2.0, 0.5, 0.0, df / (df + t * t), regularized=True))


def t_critical(alpha: float, df: float) -> float:
    """The ``t`` with ``t_two_sided_p(t, df) == alpha`` (``student_t.critical``: relative error below 1e-6)."""
    return float(student_t.critical(alpha, df))


@dataclass(frozen=True)
class Pooled:
    """The mean of independent runs' deltas with a Student t interval (df = runs - 1) and two-sided p."""

    mean: float
    low: float
    high: float
    p: float
    runs: int

    def text(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] over {self.runs} runs, p={self.p:.3g}"


_Arm = TypeVar("_Arm")


def strongest_baseline(references: Sequence[_Arm], fresh_mean: Callable[[_Arm], float | None]) -> _Arm:
    """The reference with the best fresh-seed mean (``None``: a failed or missing seed rules it out); the first
    (the search's best) when none has one. One rule for ``discover``'s confirmation and ``discopop evaluate``:
    the pick favours the baseline (its winner's curse), so a candidate's "beats" stays conservative."""
    means = [(m, r) for r in references if (m := fresh_mean(r)) is not None]
    if not means:
        return references[0]
    return max(means, key=lambda pair: pair[0])[1]


def pooled_over_runs(deltas: Sequence[float], alpha: float = ALPHA) -> Pooled | None:
    """Whether a search's output beats a baseline *on average over independent runs* (None below 2 runs).

    Each run's delta must be the fresh-seed gain of a candidate chosen *without* those fresh seeds (the
    search's own pick), so it is unbiased; the best of several fresh-seed means is not. Runs are
    independent, so the run is the unit: a one-sample t test over runs. It answers a different question
    from each run's own verdict: several small gains that no single confirmation can separate from noise
    can still be consistent across runs.
    """
    x = np.asarray([d for d in deltas if d is not None and math.isfinite(d)], dtype=float)
    if len(x) < 2:
        return None
    mean, se, df = float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))), float(len(x) - 1)
    if se == 0.0:
        return Pooled(mean, mean, mean, 0.0 if mean else 1.0, len(x))
    half = t_critical(alpha, df) * se
    return Pooled(mean, mean - half, mean + half, t_two_sided_p(mean / se, df), len(x))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given; monotone in the raw p-values)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def compare(candidate: str, baseline: str, a: Sequence[Sequence[float]] | None,
            b: Sequence[Sequence[float]] | None, alpha: float = ALPHA, failure: str | None = None) -> Comparison:
    """Paired comparison of two seeds x prompts score matrices (rows: the same seeds, columns: the same prompts).

    ``failure`` (or a missing matrix) makes it a failed comparison. The verdict waits for :func:`decide`.
    """
    comp = Comparison(candidate, baseline)
    if failure is None and (a is None or b is None):
        failure = "no scores"
    if failure is None:
        x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if x.shape != y.shape or x.ndim != 2:
            failure = f"score matrices differ in shape ({x.shape} vs {y.shape})"
        elif not (np.isfinite(x).all() and np.isfinite(y).all()):
            failure = "non-finite scores"
        elif x.shape[0] < 2:
            failure = f"{x.shape[0]} fresh seed(s): at least 2 are needed to measure seed noise"
    if failure is not None:
        comp.reason = failure
        return comp
    est = crossed_estimate(x - y)
    comp.delta, comp.se, comp.df, comp.seeds, comp.prompts = est.mean, est.se, est.df, est.seeds, est.prompts
    if est.se > 0:
        comp.p = t_two_sided_p(est.mean / est.se, est.df)
        half = t_critical(alpha, est.df) * est.se
    else:  # identical per-(seed, prompt) differences everywhere: no noise to judge against
        comp.p = 1.0 if est.mean == 0 else 0.0
        half = 0.0
    comp.ci = (est.mean - half, est.mean + half)
    comp.mde = float(minimum_detectable(est.se, est.df, alpha))
    comp.equivalence = abs(est.mean) + t_critical(2.0 * alpha, est.df) * est.se  # TOST: one-sided alpha each way
    comp.verdict = WITHIN
    return comp


def decide(comparisons: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm-correct all comparisons of one confirmation together and set each verdict.

    Failed comparisons count in the family (as p = 1) and stay failed: the confirmation made them. Each
    comparison's ``mde_family`` is its MDE at alpha / m, the bar Holm's first step sets for one real effect.
    """
    adjusted = holm([c.p if c.verdict != FAILED and c.p is not None else 1.0 for c in comparisons])
    for comp, p_adj in zip(comparisons, adjusted, strict=True):
        if comp.verdict == FAILED:
            continue
        comp.p_adjusted = p_adj
        comp.family = len(comparisons)
        if comp.se is not None and comp.df is not None:
            comp.mde_family = float(minimum_detectable(comp.se, comp.df, alpha / len(comparisons)))
        if p_adj < alpha and comp.delta:
            comp.verdict = BEATS if comp.delta > 0 else BELOW
        else:
            comp.verdict = WITHIN
    return comparisons


def resolution_text(comp: dict[str, Any]) -> str:
    """What a stored comparison could have seen: ``"no gain (or loss) above X, MDE Y"`` for a within-noise
    verdict (X: the TOST equivalence bound), ``"MDE Y"`` otherwise; "" for one stored before they existed."""
    mde = comp.get("mde_family") if comp.get("mde_family") is not None else comp.get("mde")
    if mde is None:
        return ""
    family = comp.get("family") or 1
    mde_text = f"MDE {mde:.3f}" + (f" (Holm, {family} tests)" if family > 1 and comp.get("mde_family") else "")
    bound = comp.get("equivalence")
    if comp.get("verdict") == WITHIN and bound is not None:
        return f"no gain (or loss) above {bound:.3f}, {mde_text}"
    return mde_text


def describe(comp: dict[str, Any] | None, baseline_label: str | None = None) -> str:
    """One comparison (as stored, ``Comparison.as_dict``) in words: delta, CI, verdict, what it could have detected
    (equivalence bound and MDE, see :func:`resolution_text`), adjusted p."""
    if not comp:
        return "—"
    name = baseline_label or comp.get("baseline", "baseline")
    if comp.get("verdict") == FAILED or comp.get("delta") is None:
        return f"failed vs {name}: {comp.get('reason') or 'no result'}"
    lo, hi = comp.get("ci") or (math.nan, math.nan)
    p_adj = comp.get("p_adjusted")
    p_text = f", Holm p={p_adj:.3g}" if p_adj is not None else ""
    resolution = resolution_text(comp)
    resolution = f": {resolution}" if resolution else ""
    return f"{comp['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}] {comp['verdict']} {name}{p_text}{resolution}"


def mean_pm(estimate: dict[str, Any] | None) -> str:
    """``mean ± se (n=S)`` of one arm's fresh-seed fitness, as stored in ``metrics["confirmation"]``."""
    if not estimate or estimate.get("mean") is None:
        return "—"
    se = estimate.get("se")
    n = len(estimate.get("seeds") or [])
    spread = f" ± {se:.3f}" if se is not None and math.isfinite(se) else ""
    return f"{estimate['mean']:.3f}{spread} (n={n})"


def confirmation_cells(conf: dict[str, Any] | None) -> tuple[str, str, str]:
    """(fresh-seed mean ± SE, verdict vs DPO, verdict vs the strongest baseline) of a row's stored
    ``metrics["confirmation"]``, in words; empty strings where there is nothing to say."""
    if not isinstance(conf, dict):
        return "", "", ""
    if "vs_dpo" not in conf:  # a baseline row, or a confirmation written before paired statistics
        return mean_pm(conf), "", ""
    vs_best = conf.get("vs_best")
    best_text = describe(vs_best) if vs_best else "DPO is the strongest baseline"
    return mean_pm(conf), describe(conf["vs_dpo"], "DPO"), best_text
