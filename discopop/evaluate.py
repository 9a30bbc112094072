"""The evaluation cascade for archived candidates, cheap to costly, first failure stops:

1. static check (AST only, in this process: nothing is executed);
2. duplicate by normalised code hash;
3. numeric checks in a sandboxed worker (returns a probe fingerprint);
4. duplicate by values on the fixed probe inputs;
5. short DPO fine-tune + held-out scoring in a sandboxed worker.

Each outcome is written to the archive as soon as it is known.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from discopop.archive import Archive, Evaluation, Row
from discopop.executors import Executor, Job, JobResult
from discopop.losses import LossRejected, code_hash, static_check

# Two losses whose outputs on the probe inputs agree this closely are the same function for
# training purposes (float32 round-off on values of order 1 is ~1e-7).
PROBE_TOL = 1e-5


@dataclass
class Outcome:
    row_id: int
    status: str
    fitness: float | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def _same_probe(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= PROBE_TOL * (1.0 + abs(y)) for x, y in zip(a, b, strict=True))


class Evaluator:
    """Runs the cascade for a batch of archived ``proposed`` rows through an executor."""

    def __init__(self, archive: Archive, executor: Executor, seed: int,
                 on_stage: Callable[[Row, str], None] | None = None):
        self.archive = archive
        self.executor = executor
        self.seed = seed
        self.on_stage = on_stage or (lambda row, stage: None)

    def _finish(self, row: Row, status: str, *, fitness=None, error=None, stage=None, seconds=None,
                extra=None, evaluation: Evaluation | None = None) -> Outcome:
        """Archive the row's fate, with its training evaluation (if any) in the same transaction."""
        metrics: dict[str, Any] = dict(extra or {})
        if stage:
            metrics["stage"] = stage
        if seconds:
            metrics["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
        self.archive.finish(row.id, status, fitness=fitness, error=error, metrics=metrics,
                            evaluations=[evaluation] if evaluation else [])
        return Outcome(row.id, status, fitness, error, metrics)

    def _known_probes(self, exclude: int) -> list[tuple[int, str, list[float]]]:
        found = []
        for r in self.archive.rows("status = 'scored' AND id != ?", (exclude,)):
            probe = r.metrics.get("checks", {}).get("probe")
            if probe:
                found.append((r.id, r.name, probe))
        return found

    def evaluate(self, rows: list[Row]) -> Iterator[Outcome]:
        """Evaluate rows (each ``proposed``); yield each outcome as soon as it is archived."""
        started: dict[int, float] = {}
        seconds: dict[int, dict[str, float]] = {}
        checks_of: dict[int, dict[str, Any]] = {}
        to_check: list[Row] = []
        for row in rows:
            started[row.id] = time.perf_counter()
            seconds[row.id] = {}
            self.on_stage(row, "static")
            try:
                static_check(row.code)
            except LossRejected as err:
                yield (self._finish(row, "invalid", error=f"static check: {err}", stage="static"))
                continue
            twin = self.archive.find_hash(code_hash(row.code))
            if twin is not None and twin.id != row.id:
                yield (self._finish(row, "duplicate", error=f"same code as #{twin.id} ({twin.name})",
                                             stage="static"))
                continue
            to_check.append(row)
        by_id = {row.id: row for row in rows}
        for row in to_check:
            self.on_stage(row, "check")
        train_jobs: list[Job] = []
        for result in self.executor.run([Job(r.id, r.code, "check", self.seed) for r in to_check]):
            row = by_id[result.job.row_id]
            seconds[row.id]["check"] = result.seconds
            if not result.ok:
                status = "invalid"
                yield (self._finish(row, status, error=f"{result.stage} check: {result.error}",
                                             stage=result.stage, seconds=self._total(seconds, started, row.id)))
                continue
            checks_of[row.id] = result.data["checks"]
            twin = next((k for k in self._known_probes(row.id) if _same_probe(result.data["checks"]["probe"], k[2])),
                        None)
            if twin is not None:
                yield (self._finish(row, "duplicate", error=f"same values as #{twin[0]} ({twin[1]}) on probe "
                                             "inputs", stage="numeric", seconds=self._total(seconds, started, row.id),
                                             extra={"checks": checks_of[row.id]}))
                continue
            self.on_stage(row, "train")
            train_jobs.append(Job(row.id, row.code, "train", self.seed))
        for result in self.executor.run(train_jobs):
            row = by_id[result.job.row_id]
            yield self._record_training(row, result, seconds, started, checks_of[row.id])

    @staticmethod
    def _total(seconds, started, row_id) -> dict[str, float]:
        out = dict(seconds[row_id])
        out["total"] = time.perf_counter() - started[row_id]
        return out

    def _record_training(self, row: Row, result: JobResult, seconds, started, checks: dict) -> Outcome:
        data = result.data
        job = result.job
        if not result.ok:
            status = "eval_failed" if result.stage == "score" else "train_failed"
            failed = Evaluation(row.id, job.seed, job.split, job.learning_rate, error=result.error or status)
            return self._finish(row, status, error=result.error, stage=result.stage,
                                seconds={**self._total(seconds, started, row.id), "train": result.seconds},
                                extra={"checks": checks}, evaluation=failed)
        secs = self._total(seconds, started, row.id)
        secs.update(train=data["train_seconds"], score=data["score_seconds"], steps=data["step_seconds"])
        secs["overhead"] = secs["total"] - data["step_seconds"] - data["score_seconds"]
        metrics = {"reward": data["reward"], "kl": data["kl"], "fitness": data["fitness"], "steps": data["steps"],
                   "final_loss": data["final_loss"], "train": data["train_metrics"], "checks": checks}
        evaluation = Evaluation.from_reply(row.id, job.seed, job.split, data)
        if not math.isfinite(data["fitness"]):
            evaluation.error = "non-finite fitness"
            return self._finish(row, "eval_failed", error="non-finite fitness", stage="score", seconds=secs,
                                extra=metrics, evaluation=evaluation)
        return self._finish(row, "scored", fitness=data["fitness"], seconds=secs, extra=metrics,
                            evaluation=evaluation)
