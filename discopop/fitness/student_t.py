"""Student t tail probabilities and critical values for whole arrays of (fractional) degrees of freedom.

The confirmation's degrees of freedom are fractional and change with every comparison (Satterthwaite,
``discopop.fitness.stats``), so a critical value cannot be looked up once per seed count, and the scalar
``mpmath`` route costs ~0.1 s each: far too slow for the simulations that check the test's size and
power (tens of thousands of comparisons). Here, in numpy:

* ``two_sided_p``: ``P(|T| >= |t|)`` through the regularised incomplete beta function (continued
  fraction, modified Lentz), accurate to ~1e-10;
* ``critical``: the two-sided critical value, interpolated linearly in ``1 / df`` between exact
  values on a fine grid (bisection on ``two_sided_p``), relative error below 1e-6 for ``df >= 1``:
  the critical value is a smooth function of ``1 / df`` from the normal's (``1/df = 0``) to Cauchy's.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

_LGAMMA = np.vectorize(math.lgamma, otypes=[float])
_GRID = 1024  # nodes in 1/df over [0, 1]


def _continued_fraction(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The continued fraction of the incomplete beta function (converges fast for x < (a+1)/(a+b+2))."""
    tiny = 1e-300

    def guard(v: np.ndarray) -> np.ndarray:
        return np.where(np.abs(v) < tiny, tiny, v)

    c = np.ones_like(x)
    d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d.copy()
    for m in range(1, 400):
        for aa in (m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))):
            d = 1.0 / guard(1.0 + aa * d)
            c = guard(1.0 + aa / c)
            h = h * d * c
        if np.all(np.abs(d * c - 1.0) < 1e-15):
            break
    return h


def betainc(a: np.ndarray | float, b: np.ndarray | float, x: np.ndarray | float) -> np.ndarray:
    """Regularised incomplete beta function ``I_x(a, b)``, elementwise."""
    a, b, x = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(a, b, x))
    x = np.clip(x, 0.0, 1.0)
    inner = (x > 0.0) & (x < 1.0)
    xs = np.where(inner, x, 0.5)
    log_front = _LGAMMA(a + b) - _LGAMMA(a) - _LGAMMA(b) + a * np.log(xs) + b * np.log1p(-xs)
    front = np.exp(log_front)
    direct = xs < (a + 1.0) / (a + b + 2.0)
    value = np.where(direct, front * _continued_fraction(a, b, np.where(direct, xs, 0.0)) / a,
                     1.0 - front * _continued_fraction(b, a, np.where(direct, 0.0, 1.0 - xs)) / b)
    return np.where(inner, value, np.where(x >= 1.0, 1.0, 0.0))


def two_sided_p(t: np.ndarray | float, df: np.ndarray | float) -> np.ndarray:
    """``P(|T| >= |t|)`` for Student's t with ``df`` degrees of freedom (``inf``: the normal)."""
    t, df = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(t, df))
    finite = np.isfinite(df)
    dfs = np.where(finite, df, 1.0)
    p = betainc(dfs / 2.0, 0.5, dfs / (dfs + t * t))
    normal = np.vectorize(lambda v: math.erfc(abs(v) / math.sqrt(2.0)), otypes=[float])(t)
    return np.where(finite, p, normal)


def _bisect(alpha: float, df: np.ndarray) -> np.ndarray:
    """Exact critical values by bisection on x = df / (df + t^2), where the p-value rises with x."""
    lo, hi = np.zeros_like(df), np.ones_like(df)
    for _ in range(64):
        mid = (lo + hi) / 2.0
        above = betainc(df / 2.0, 0.5, mid) > alpha
        lo, hi = np.where(above, lo, mid), np.where(above, mid, hi)
    x = (lo + hi) / 2.0
    return np.sqrt(df * (1.0 - x) / x)


@lru_cache(maxsize=32)
def _nodes(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    inverse = np.linspace(0.0, 1.0, _GRID + 1)
    values = np.empty_like(inverse)
    values[0] = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    values[1:] = _bisect(alpha, 1.0 / inverse[1:])
    return inverse, values


def critical(alpha: float, df: np.ndarray | float) -> np.ndarray:
    """The two-sided critical value ``t`` with ``P(|T| >= t) = alpha``, elementwise in ``df`` (> 0)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    df = np.asarray(df, dtype=float)
    if np.any(~(df > 0)):
        raise ValueError("degrees of freedom must be positive")
    inverse, values = _nodes(float(alpha))
    out = np.interp(1.0 / df, inverse, values)
    small = df < 1.0  # beyond the grid (heavier tails than Cauchy): exact
    if np.any(small):
        out = np.array(out, copy=True)
        out[small] = _bisect(alpha, df[small])
    return out
