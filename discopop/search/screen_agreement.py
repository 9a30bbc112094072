"""How well the run's rate screen ranked its candidates: the screen against the full protocol, on this run's task.

Why: a candidate's first fine-tune is a *screen* at one rate (``fitness/tuning.py``), and only a screen within
``training.lr_screen_margin`` of the run's best earns the climb over the rate grid and the seed race. The screen is
therefore a filtering stage, and the cascade's rule is that a stage filters only where it ranks losses as the full
protocol does (``fitness/rank_agreement.py``). The margin is one number for every task, while how well one fine-tune
at the parent's rate predicts the tuned result depends on the task (on the embedded one it does well: Spearman 0.89,
``docs/results.md`` §0). Every climbed row holds both numbers, its screen value and its fitness, so each run can say
how well its own screen ranked, at no cost, and warn where that is not shown.

Measured over the rows that passed the screen (references always do), so the interval describes the screen among
rows near the best, where its decisions are made; a range cut this way usually lowers rho rather than raising it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from discopop.archive import Evaluation, Row
from discopop.fitness.rank_agreement import Agreement, bootstrap_spearman
from discopop.status import Status

SEARCH_SPLIT = "search"
MIN_ROWS = 8  # fewer climbed rows than this: no interval worth printing
REFERENCE = "reference"


@dataclass(frozen=True)
class ScreenAgreement:
    """The run's screen: how many candidates it judged and stopped, and its agreement over the climbed rows."""

    screened: int  # evolved rows that got a screen value
    stopped: int  # of them, the rows the screen stopped (``lr_tuned: false``)
    agreement: Agreement | None  # screen value vs fitness over the climbed rows (None: fewer than ``MIN_ROWS``)

    def shown(self, min_rho_lower: float) -> bool:
        """Whether the agreement is measured and its lower bound reaches ``min_rho_lower``."""
        a = self.agreement
        return a is not None and math.isfinite(a.lower) and a.lower >= min_rho_lower

    def summary(self) -> dict[str, float | int | None]:
        """The numbers, under the keys a tracker keeps them (wandb's run summary)."""
        a = self.agreement
        return {"screen/screened": self.screened, "screen/stopped": self.stopped,
                "screen/rows": a.n if a else None, "screen/rho": a.rho if a else None,
                "screen/rho_lower": a.lower if a else None, "screen/rho_upper": a.upper if a else None}

    def describe(self, min_rho_lower: float) -> str:
        """One line for the end of a run; a warning where the lower bound is below ``min_rho_lower``."""
        head = f"rate screen: {self.stopped} of {self.screened} candidate(s) stopped at their screen (one fine-tune)"
        a = self.agreement
        if a is None:
            return head
        text = (f"{head}; over the {a.n} rows that climbed, screen vs full protocol: Spearman {a.rho:+.2f} "
                f"[{a.lower:+.2f}, {a.upper:+.2f}] ({a.confidence:.0%} bootstrap)")
        if not self.shown(min_rho_lower):
            text += (f" - its lower bound is below {min_rho_lower:g}: on this task one fine-tune at the parent's "
                     "rate is not shown to rank as the tuned result does (training.lr_screen_margin=null tunes "
                     "every candidate)")
        return text


def screen_value(row: Row, first: Evaluation) -> float | None:
    """The value the screening rule judged ``row`` on: its sweep's entry at the rate of its first search run.

    None where that is not known: with the beta axis on (``training.beta_grid``) the sweep holds the chosen beta's
    rates, and an evaluation does not record the beta its screen ran at."""
    if first.learning_rate is None or len(row.metrics.get("beta_sweep") or {}) > 1:
        return None
    sweep = row.metrics.get("lr_sweep") or {}
    for rate, value in sweep.items():
        try:
            if math.isclose(float(rate), first.learning_rate, rel_tol=1e-9) and value is not None:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def screen_agreement(rows: Iterable[Row], evaluations: Iterable[Evaluation], *,
                     seed: int = 0) -> ScreenAgreement:
    """The screen's record in a run, from its archived rows and their evaluations (in archive order)."""
    first: dict[int, Evaluation] = {}
    for evaluation in evaluations:
        if evaluation.split == SEARCH_SPLIT and evaluation.ok:
            first.setdefault(evaluation.candidate_id, evaluation)
    screened = stopped = 0
    cheap: list[float] = []
    full: list[float] = []
    for row in rows:
        if row.status != Status.SCORED or row.fitness is None or row.id not in first:
            continue
        value = screen_value(row, first[row.id])
        if value is None:
            continue
        tuned = bool(row.metrics.get("lr_tuned", True))
        if row.proposer != REFERENCE:
            screened += 1
            stopped += not tuned
        if tuned and len(row.metrics.get("lr_sweep") or {}) > 1:
            cheap.append(value)
            full.append(float(row.fitness))
    agreement = bootstrap_spearman(cheap, full, seed=seed) if len(cheap) >= MIN_ROWS else None
    return ScreenAgreement(screened, stopped, agreement)
