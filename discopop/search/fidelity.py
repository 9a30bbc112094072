"""Cheap stages before the full fine-tune protocol: a candidate earns the full protocol by passing them.

Why: on a fine-tune task every checked candidate costs at least one full fine-tune (the screen) and often
the climb and the seed race. Two cheaper signals exist:

* ``diagnostic``: the candidate's fitness on diagnostic bandit presets (``tasks.diagnostic``), best of
  ``cascade.diagnostic_lrs`` per preset, averaged over presets. Each fine-tune takes ~0.1-0.3 s and no step
  of the run's task; it runs in its own sandboxed worker per preset, through the loss oracle, as
  ``task=diagnostic`` does (candidate code never runs outside the oracle).
* ``short``: a fine-tune of ``cascade.short_fraction`` of the steps on the run's task at the candidate's
  screen rate, in the run's workers (``Job.step_fraction``).

A stage *filters* only where its rank agreement with the full protocol was measured for this run's settings
(``fitness.rank_agreement``, written by ``benchmarks/stage_agreement.py``) and its lower confidence bound
reaches ``cascade.min_rho_lower``; it then rejects a non-reference candidate whose cheap score is below the
``cut_quantile`` of the earlier rows' scores. Otherwise it only *orders* the work (best cheap score first)
and rejects nothing. A rejected candidate is archived ``eval_failed`` with ``metrics.stage = "fidelity"``:
it has no full-protocol fitness, and its cheap score is not one (a short fine-tune is no lower bound).

Cost: a rejected candidate spends at most ``short_fraction`` (<= 0.25, checked by the settings) of one full
fine-tune's steps, which is the least the full protocol spends on any candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from discopop.archive import Archive, Row
from discopop.config import CascadeSettings, DiagnosticTaskSettings, TaskSettings, TrainingSettings, plain
from discopop.config.cascade import MAX_REJECTED_SHARE
from discopop.execution.executors import Executor, Job, LocalExecutor, WorkerSpec
from discopop.fitness.rank_agreement import agreement_key, load_agreements

ExecutorFactory = Callable[[WorkerSpec], Executor]


@dataclass
class StageResult:
    """One row's result at one cheap stage."""

    score: float | None  # None: the stage's fine-tunes failed (ranks last)
    steps: int = 0  # optimiser steps on the run's task (the diagnostic stage spends none)
    full_steps: int | None = None  # a full fine-tune's steps on the run's task, where the stage learnt it
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"score": None if self.score is None else round(self.score, 6), "steps": self.steps,
                "full_steps": self.full_steps, "seconds": round(self.seconds, 4), **self.detail}


def stage_settings(settings: CascadeSettings, stage: str) -> dict[str, Any]:
    """The settings that define a stage's score (part of its agreement key)."""
    if stage == "diagnostic":
        return {"stage": stage, "presets": list(settings.diagnostic_presets), "lrs": list(settings.diagnostic_lrs),
                "kl_coef": settings.diagnostic_kl_coef}
    return {"stage": stage, "fraction": settings.short_fraction}


def diagnostic_spec(base: WorkerSpec, preset: str, kl_coef: float) -> WorkerSpec:
    """A worker for one diagnostic preset, with the run's limits and beta (the loss is trained as in the run)."""
    training = TrainingSettings(beta=base.training.beta if base.training is not None else TrainingSettings().beta,
                                threads=1)
    task = DiagnosticTaskSettings(preset=preset, kl_coef=kl_coef)
    return replace(base, task=task, training=training, kl_coef=kl_coef, threads=1, device="cpu",
                   visible_devices=None)


class Fidelity:
    """Runs the cheap stages for a batch of checked rows and decides, per stage, who goes on (and in what order)."""

    def __init__(self, settings: CascadeSettings, *, task: TaskSettings, training: TrainingSettings,
                 seed: int, executor: Executor, base_spec: WorkerSpec,
                 make_executor: ExecutorFactory | None = None):
        self.settings = settings
        self.seed = seed
        self.executor = executor  # the run's workers: the short stage
        self.base_spec = base_spec
        self.make_executor = make_executor or (lambda spec: LocalExecutor(spec, workers=1))
        self._diagnostic: dict[str, Executor] = {}
        stored = load_agreements(Path(settings.agreement)) if settings.agreement else {}
        self.keys = {s: agreement_key(plain(task), plain(training), stage_settings(settings, s))
                     for s in settings.stages}
        self.agreement: dict[str, dict[str, Any] | None] = {
            s: (stored.get(s) if (stored.get(s) or {}).get("key") == self.keys[s] else None) for s in settings.stages}
        self.filters = {s: self._shown(self.agreement[s]) for s in settings.stages}

    def _shown(self, entry: dict[str, Any] | None) -> bool:
        lower = None if entry is None else entry.get("lower")
        return isinstance(lower, int | float) and math.isfinite(lower) and lower >= self.settings.min_rho_lower

    @property
    def stages(self) -> list[str]:
        return list(self.settings.stages)

    # ---- scoring ----------------------------------------------------------------------------------------

    def score(self, stage: str, rows: list[Row], rate_of: Callable[[Row], float]) -> dict[int, StageResult]:
        """Each row's result at ``stage`` (every fine-tune in a sandboxed worker, through the loss oracle)."""
        if stage == "diagnostic":
            return self.diagnostic_scores({r.id: r.code for r in rows})
        if stage == "short":
            return self.short_scores({r.id: (r.code, rate_of(r)) for r in rows})
        raise ValueError(f"unknown cheap stage {stage!r}")

    def _diagnostic_executor(self, preset: str) -> Executor:
        if preset not in self._diagnostic:
            self._diagnostic[preset] = self.make_executor(
                diagnostic_spec(self.base_spec, preset, self.settings.diagnostic_kl_coef))
        return self._diagnostic[preset]

    def diagnostic_scores(self, codes: Mapping[int, str]) -> dict[int, StageResult]:
        """Mean over presets of the best fitness over the diagnostic rates; a failed fine-tune counts as no score."""
        per_preset: dict[int, dict[str, float | None]] = {i: {} for i in codes}
        seconds = dict.fromkeys(codes, 0.0)
        for preset in self.settings.diagnostic_presets:
            jobs = [Job(i, code, "train", self.seed, learning_rate=float(lr))
                    for i, code in codes.items() for lr in self.settings.diagnostic_lrs]
            best: dict[int, float | None] = {}
            failed: set[int] = set()
            for result in self._diagnostic_executor(preset).run(jobs):
                row_id = result.job.row_id
                seconds[row_id] += result.seconds
                value = float(result.trained.fitness) if result.ok else math.nan
                if not math.isfinite(value):
                    failed.add(row_id)
                    continue
                best[row_id] = max(value, best.get(row_id, -math.inf))
            for i in codes:  # a loss that fails at any rate of a preset gets no score there
                per_preset[i][preset] = None if i in failed else best.get(i)
        out = {}
        for i, scores in per_preset.items():
            values = list(scores.values())
            score = None if any(v is None for v in values) else float(np.mean(values))
            out[i] = StageResult(score, 0, None, seconds[i],
                                 {"presets": {k: None if v is None else round(v, 6) for k, v in scores.items()}})
        return out

    def short_scores(self, jobs_of: Mapping[int, tuple[str, float]]) -> dict[int, StageResult]:
        """A short fine-tune per row at its rate, straight through the run's executor (never the result store)."""
        fraction = self.settings.short_fraction
        jobs = [Job(i, code, "train", self.seed, learning_rate=rate, step_fraction=fraction)
                for i, (code, rate) in jobs_of.items()]
        out = {}
        for result in self.executor.run(jobs):
            reply = result.trained if result.ok else None
            value = reply.fitness if reply is not None else None
            score = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
            out[result.job.row_id] = StageResult(
                score, reply.steps if reply is not None else 0, reply.full_steps if reply is not None else None,
                result.seconds,
                {"learning_rate": result.job.learning_rate,
                 **({} if result.ok else {"error": f"{result.stage}: {result.error}"})})
        return out

    # ---- deciding ---------------------------------------------------------------------------------------

    def cut(self, stage: str, archive: Archive) -> float | None:
        """The score below which a filtering stage rejects: a quantile of the finished rows' scores there."""
        if not self.filters.get(stage):
            return None
        scores = []
        for row in archive.finished_rows():
            value = ((row.metrics.get("fidelity") or {}).get(stage) or {}).get("score")
            if isinstance(value, int | float) and math.isfinite(value):
                scores.append(float(value))
        if len(scores) < self.settings.min_history:
            return None
        return float(np.quantile(scores, self.settings.cut_quantile))

    def decide(self, stage: str, rows: list[Row], results: Mapping[int, StageResult],
               cut: float | None) -> tuple[list[Row], dict[int, str]]:
        """(rows that go on, best cheap score first; row id -> why rejected). Only a filtering stage with a cut
        rejects, and never a reference."""
        rejected: dict[int, str] = {}
        kept = []
        for row in rows:
            score = results[row.id].score if row.id in results else None
            if (cut is not None and row.proposer != "reference" and (score is None or score < cut)
                    and self.within_budget(results.get(row.id))):
                shown = self.agreement[stage] or {}
                what = "no score" if score is None else f"score {score:.4g} < cut {cut:.4g}"
                rejected[row.id] = (f"{stage} stage: {what} (the {self.settings.cut_quantile:g} quantile of earlier "
                                    f"rows; agreement with the full protocol rho {shown.get('rho')}, lower bound "
                                    f"{shown.get('lower')})")
            else:
                kept.append(row)

        def order(row: Row) -> tuple[float, int]:
            score = results[row.id].score if row.id in results else None
            return (-score if score is not None else math.inf, row.id)

        return sorted(kept, key=order), rejected

    @staticmethod
    def within_budget(result: StageResult | None) -> bool:
        """A candidate may be rejected only if it spent <= MAX_REJECTED_SHARE of a full fine-tune's steps (a task
        too small for that, e.g. 1 step of 2, leaves the stage ordering only)."""
        if result is None or result.steps == 0:
            return True
        return bool(result.full_steps) and result.steps <= MAX_REJECTED_SHARE * result.full_steps

    def summary(self) -> dict[str, Any]:
        """What the run records: per stage, whether it filters and the agreement it was shown (or not)."""
        return {s: {"filters": self.filters[s], "key": self.keys[s],
                    "agreement": {k: v for k, v in (self.agreement[s] or {}).items() if k != "key"} or None}
                for s in self.stages}

    def close(self) -> None:
        for executor in self._diagnostic.values():
            executor.close()
        self._diagnostic.clear()
