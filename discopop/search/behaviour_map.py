"""A behaviour map of losses (MAP-Elites cells): distinct gradient shapes survive, not only the best one.

A loss is placed by four features of how it pushes, all read from the diagnostics the sandboxed
checks archived at the training beta (``checks.diagnose``), so nothing runs here. Each is a ratio to
the largest of the three slopes along rho, so a positive scale of the loss (which Adam ignores)
never moves a loss to another cell:

- ``left``: the slope at x = beta * rho = -3, where the policy prefers the rejected answer. Near -1
  the loss pushes hardest on its worst mistakes (DPO, hinge); near 0 it gives up on them (robust
  losses); positive pushes the wrong way.
- ``zero``: the slope at rho = 0, where training starts: steep (hinge, a sigmoid peak) or flat.
  Against ``left`` and ``right`` it is the profile's curvature.
- ``right``: the slope at x = +3, beyond any sensible margin: still pushing (linear, exponential),
  saturated (logistic) or pushing back (IPO's squared loss, regularised losses). With ``left`` it
  is the profile's symmetry.
- ``side``: the share of the push at rho = 0 on the chosen log-prob, |d/d chosen| / (|d/d chosen| +
  |d/d rejected|): 0.5 for any loss of rho alone, else the loss treats the two answers differently.

Each feature is cut into three or four bins (``EDGES``), so there are 144 cells. The evolution proposer
draws parents among the cells' elites (best lower confidence bound per cell), and
``diverse_top_k`` gives an LLM prompt the best loss of each of the k best cells.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from discopop.status import Status

FEATURES = ("left", "zero", "right", "side")
# Bin edges per feature. Slopes are ratios in [-1, 1] (negative: the right way). On the references at
# beta 0.5 the 11 references fall in 9 cells: DPO and AQFL (hard, moderate, fading), PFL (hard, moderate,
# stops), hinge (hard, steep, stops), PADLL and DBAQL (hard, steep, fading), IPO (hard, flat, back),
# KTO-pair (some, steep, pushing), LRML (hard, wrong way, fading), AQL (hard, wrong way, stops), ...
EDGES: dict[str, tuple[float, ...]] = {
    "left": (-0.67, -0.2),          # pushes hard on the worst mistakes | some | little, none or the wrong way
    "zero": (-0.67, -0.33, 0.1),    # steep at rho = 0 | moderate | flat | the wrong way
    "right": (-0.2, -0.03, 0.03),   # still pushing beyond the margin | fading | stops | pushes back
    "side": (0.4, 0.6),             # led by the rejected side | balanced | led by the chosen side
}
WORDS: dict[str, tuple[str, ...]] = {
    "left": ("hard", "some", "none"), "zero": ("steep", "moderate", "flat", "wrong way"),
    "right": ("pushing", "fading", "stops", "back"), "side": ("rejected", "balanced", "chosen"),
}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def features(diagnostics: Mapping[str, Any] | None) -> dict[str, float] | None:
    """The four scale-free features of archived diagnostics; None if they are missing or degenerate."""
    if not isinstance(diagnostics, Mapping):
        return None
    at_zero = diagnostics.get("slope_at_0") or {}
    ends = diagnostics.get("slope_at_ends") or {}
    if not isinstance(at_zero, Mapping) or not isinstance(ends, Mapping) or len(ends) != 2:
        return None
    low, high = sorted(ends, key=lambda k: float(k) if _is_number_text(k) else math.inf)
    slopes = [_number(ends.get(low)), _number(at_zero.get("rho")), _number(ends.get(high))]
    chosen, rejected = _number(at_zero.get("chosen")), _number(at_zero.get("rejected"))
    if any(v is None for v in (*slopes, chosen, rejected)):
        return None
    scale = max(abs(v) for v in slopes)
    if scale == 0.0:
        return None
    push = abs(chosen) + abs(rejected)
    return {"left": slopes[0] / scale, "zero": slopes[1] / scale, "right": slopes[2] / scale,
            "side": abs(chosen) / push if push > 0 else 0.5}


def _is_number_text(text: Any) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def cell(diagnostics: Mapping[str, Any] | None) -> tuple[int, ...] | None:
    """The MAP-Elites cell (one bin index per feature) of archived diagnostics; None if not measurable."""
    found = features(diagnostics)
    if found is None:
        return None
    return tuple(bisect_right(EDGES[name], found[name]) for name in FEATURES)


def describe(cell_index: tuple[int, ...] | None) -> str:
    """A cell in words, e.g. 'left hard, zero moderate, right fading, side balanced'."""
    if not cell_index:
        return "unmeasured"
    return ", ".join(f"{name} {WORDS[name][i]}" for name, i in zip(FEATURES, cell_index, strict=True))


Entry = TypeVar("Entry")  # anything with ``id``, ``status``, ``behaviour_cell`` and ``selection_fitness``


def _rank(entry: Any) -> tuple[float, int]:
    value = entry.selection_fitness
    return (value if value is not None and math.isfinite(value) else -math.inf, -entry.id)


def elites(history: Iterable[Entry]) -> list[Entry]:
    """The best scored entry of each cell by selection fitness (ties: the earlier one), in id order.

    An entry without a cell (no diagnostics archived) is its own niche: it is kept, never merged.
    """
    best: dict[Any, Entry] = {}
    for entry in history:
        if entry.status != Status.SCORED or entry.fitness is None:
            continue
        key = entry.behaviour_cell if entry.behaviour_cell is not None else ("row", entry.id)
        if key not in best or _rank(entry) > _rank(best[key]):
            best[key] = entry
    return sorted(best.values(), key=lambda e: e.id)


def diverse_top_k(history: Iterable[Entry], k: int) -> list[Entry]:
    """The k best losses with at most one per behaviour cell, best first: what a prompt's "best so far" shows."""
    return sorted(elites(history), key=_rank, reverse=True)[:max(k, 0)]
