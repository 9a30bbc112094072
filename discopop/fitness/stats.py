"""Paired statistics for the fresh-seed confirmation: is a candidate really better than a baseline?

Both arms of a comparison are trained with the *same* fresh seeds (same initial state, pair
subsample and data order per seed) and scored on the *same* held-out prompts, so the unit of
comparison is the difference ``d[s, p]`` of the two arms' scores on seed ``s`` and prompt ``p``.
Its mean is the estimated gain. Its uncertainty has two sources that a claim must survive:
another seed (a different training run), and another sample of prompts (another test set).

The method: a crossed two-way decomposition with a conservative Student t test.

    Var(mean d) ~= Var_s(dbar_s) / S + Var_p(dbar_p) / P

``dbar_s`` are the per-seed means (over prompts) and ``dbar_p`` the per-prompt means (over seeds).
In a crossed random-effects model ``d = mu + a_s + b_p + e_sp`` the right-hand side estimates
``s_a^2/S + s_b^2/P + 2 s_e^2/(S P)``, i.e. the true variance of the mean plus one small extra
``s_e^2/(S P)``: slightly conservative, never negative, and no variance components to fit.
Degrees of freedom: ``min(S - 1, P - 1)`` (the smaller component's, as in Hsu's conservative
version of Welch's test), so three seeds get the t critical value of 2 d.o.f. (4.3), not 2.
Welch-Satterthwaite degrees of freedom were tried and rejected: with 2-3 seeds they are
estimated from the same data as the t statistic, and exactly when the seed term happens to come
out small (large t) they jump from ~S-1 to far more, which in simulation doubled the false-positive
rate (11% at S = 2). A two-level bootstrap was rejected too: over 2-5 seeds it has only a handful
of distinct resamples and understates the spread. ``tests/test_stats.py`` checks the
false-positive rate by simulation.

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

ALPHA = 0.05  # family-wise error rate of one confirmation's comparisons
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
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci else None
        out.update(out.pop("extra"))
        return out


def crossed_estimate(scores: Sequence[Sequence[float]] | np.ndarray) -> Estimate:
    """Mean of a seeds x prompts matrix and its standard error over both seeds and prompts (see module doc)."""
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected a seeds x prompts matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("scores contain non-finite values")
    seeds, prompts = x.shape
    v_seed = float(np.var(x.mean(axis=1), ddof=1)) / seeds if seeds > 1 else math.nan
    v_prompt = float(np.var(x.mean(axis=0), ddof=1)) / prompts if prompts > 1 else 0.0
    var = v_seed + v_prompt
    if seeds < 2:
        return Estimate(float(x.mean()), math.nan, math.nan, seeds, prompts)
    df = float(seeds - 1 if prompts < 2 else min(seeds - 1, prompts - 1))  # conservative: see module doc
    return Estimate(float(x.mean()), math.sqrt(var), df, seeds, prompts)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (possibly fractional) degrees of freedom."""
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return float(mpmath.betainc(df / 2.0, 0.5, 0.0, df / (df + t * t), regularized=True))


@lru_cache(maxsize=256)
def t_critical(alpha: float, df: float) -> float:
    """The ``t`` with ``t_two_sided_p(t, df) == alpha`` (bisection; p falls monotonically in t)."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:
        hi *= 2.0
    for _ in range(80):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > alpha else (lo, mid)
    return (lo + hi) / 2.0


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
    comp.verdict = WITHIN
    return comp


def decide(comparisons: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm-correct all comparisons of one confirmation together and set each verdict.

    Failed comparisons count in the family (as p = 1) and stay failed: the confirmation made them.
    """
    adjusted = holm([c.p if c.verdict != FAILED and c.p is not None else 1.0 for c in comparisons])
    for comp, p_adj in zip(comparisons, adjusted, strict=True):
        if comp.verdict == FAILED:
            continue
        comp.p_adjusted = p_adj
        if p_adj < alpha and comp.delta:
            comp.verdict = BEATS if comp.delta > 0 else BELOW
        else:
            comp.verdict = WITHIN
    return comparisons


def describe(comp: dict[str, Any] | None, baseline_label: str | None = None) -> str:
    """One comparison (as stored, ``Comparison.as_dict``) in words: delta, CI, verdict, adjusted p."""
    if not comp:
        return "—"
    name = baseline_label or comp.get("baseline", "baseline")
    if comp.get("verdict") == FAILED or comp.get("delta") is None:
        return f"failed vs {name}: {comp.get('reason') or 'no result'}"
    lo, hi = comp.get("ci") or (math.nan, math.nan)
    p_adj = comp.get("p_adjusted")
    p_text = f", Holm p={p_adj:.3g}" if p_adj is not None else ""
    return f"{comp['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}] {comp['verdict']} {name}{p_text}"


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
