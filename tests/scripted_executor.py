"""Test stand-ins for the two seams of the loop: a scripted executor and a scripted proposer.

``ScriptedExecutor`` is a real :class:`~discopop.execution.executors.Executor`: the loop, the evaluation
cascade, the repair queue, ``--resume`` and the confirmation drive it exactly as they drive the
warm sandboxed pool, but it answers each check or train job from a script, in this process, in
microseconds, and starts no worker. It never executes candidate code: it reads only the name of
the loss function (``def NAME(``) to look up that loss's :class:`Script`.

What a script can say, per loss: the checks fail (with a reason, at a stage); the loss behaves
like another one (the same fingerprint, so the cascade calls it a behaviour duplicate); its
fitness, as one number or per learning rate, shifted per seed; its fine-tunes fail (all of them,
or at some rates) at a stage. ``order`` replays a round's results in another order than
submitted (as finishing workers would), and ``interrupt_after`` raises ``KeyboardInterrupt``
as the n-th job would finish (Ctrl-C mid-run). Every round (one ``run`` call) is kept in
``rounds``, so a test can see which jobs shared the workers.

``ScriptedProposer`` hands out, per generation, the candidates a test lists (first ``k``), and a
repair per failed candidate's name; it can stop the run (``ProposerStop``) at a given call. It logs
every call in order (``calls``), with the history each proposal saw, and counts calls that ran
while another was still running (``overlapping_calls``: the loop must never do that).
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from discopop.execution.executors import Executor, Job, JobResult
from discopop.execution.messages import CheckReply, TrainReply
from discopop.proposers.base import Candidate, HistoryEntry, Proposer, ProposerStop

LOSS_NAME = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)
RHO = "(policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)"
SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
FINGERPRINT_SIZE = 16


def loss_code(name: str, expr: str | None = None) -> str:
    """Valid contract-form code for a loss called ``name`` (passes the static check; never executed here).

    The default body scales DPO by a factor taken from the name, so two names never share a code hash.
    """
    expr = expr or f"-F.logsigmoid(beta * rho) * {1 + zlib.crc32(name.encode()) % 9973 / 10000}"
    return (f"import torch.nn.functional as F\n\n\ndef {name}({SIG}):\n"
            f"    rho = {RHO}\n"
            f"    return {expr}\n")


def loss_name(code: str) -> str:
    """The name of the first function in ``code`` (the script's key); "" when there is none."""
    found = LOSS_NAME.search(code)
    return found.group(1) if found else ""


@dataclass
class Script:
    """How the scripted worker answers the jobs of one loss."""

    fitness: float | Mapping[float, float] = 0.5  # one number, or per learning rate (others: the lowest - 0.05)
    seed_shift: Mapping[int, float] = field(default_factory=dict)  # added to the fitness of a run with this seed
    check_error: str | None = None  # the numeric checks fail with this reason...
    check_stage: str = "numeric"  # ...at this stage
    train_error: str | None = None  # every fine-tune fails with this reason...
    train_stage: str = "train"  # ...at this stage ("score" makes the candidate eval_failed)
    fail_rates: tuple[float, ...] = ()  # only the fine-tunes at these rates fail (train_error or "diverged")
    behaves_like: str | None = None  # the fingerprint of this other loss: a behaviour duplicate of it

    def fitness_at(self, lr: float | None, seed: int) -> float:
        if isinstance(self.fitness, Mapping):
            known = {float(k): float(v) for k, v in self.fitness.items()}
            match = next((v for k, v in known.items() if lr is not None and math.isclose(k, lr)), None)
            value = match if match is not None else min(known.values()) - 0.05
        else:
            value = float(self.fitness)
        return value + float(self.seed_shift.get(seed, 0.0))


def fingerprint(name: str) -> list[float]:
    """A unit vector that depends only on ``name``: distinct losses never share one by chance."""
    rng = random.Random(f"fingerprint:{name}")
    vec = [rng.gauss(0.0, 1.0) for _ in range(FINGERPRINT_SIZE)]
    norm = math.sqrt(sum(v * v for v in vec))
    return [round(v / norm, 7) for v in vec]


class ScriptedExecutor(Executor):
    """Answers jobs from ``scripts`` (loss name -> :class:`Script`; ``default`` for every other loss)."""

    def __init__(self, scripts: Mapping[str, Script] | None = None, *, default: Script | Callable[[str], Script]
                 | None = None, workers: int = 1, beta: float = 0.5, prompts: Mapping[str, int] | None = None,
                 order: str | int = "submitted", interrupt_after: int | None = None):
        self.scripts = dict(scripts or {})
        self.default = default if default is not None else Script()
        self.workers = workers
        self.beta = beta
        self.prompts = dict(prompts or {"search": 8, "confirm": 12})
        self.order = order  # "submitted", "reversed" or an int: a seeded shuffle of each round's results
        self.interrupt_after = interrupt_after
        self.rounds: list[list[Job]] = []
        self.answered = 0
        self.warmed = 0
        self.closed = 0

    def script_of(self, name: str) -> Script:
        if name in self.scripts:
            return self.scripts[name]
        return self.default(name) if callable(self.default) else self.default

    def behaviour_of(self, name: str) -> str:
        """The loss whose behaviour ``name`` has, following ``behaves_like`` links."""
        seen = {name}
        while (target := self.script_of(name).behaves_like) is not None and target not in seen:
            seen.add(target)
            name = target
        return name

    @property
    def parallelism(self) -> int:
        return self.workers

    def warm_up(self) -> None:
        self.warmed += 1

    def close(self) -> None:
        self.closed += 1

    def jobs(self, stage: str | None = None) -> list[Job]:
        """Every job run so far, in submission order (optionally of one stage)."""
        return [job for jobs in self.rounds for job in jobs if stage is None or job.stage == stage]

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        self.rounds.append(list(jobs))
        ordered = list(jobs)
        if self.order == "reversed":
            ordered.reverse()
        elif isinstance(self.order, int):
            random.Random(self.order + len(self.rounds)).shuffle(ordered)
        for job in ordered:
            if self.interrupt_after is not None and self.answered >= self.interrupt_after:
                raise KeyboardInterrupt
            self.answered += 1
            yield self.answer(job)

    def answer(self, job: Job) -> JobResult:
        name = loss_name(job.code)
        script = self.script_of(name)
        if job.stage == "check":
            if script.check_error is not None:
                return JobResult(job, False, script.check_stage, script.check_error, seconds=0.001)
            checks = {"beta": self.beta, "uses_beta": True, "probe": {}, "curve": {},
                      "fingerprint": fingerprint(self.behaviour_of(name)), "diagnostics": None}
            return JobResult(job, True, "check", reply=CheckReply(checks), seconds=0.001)
        at_failing_rate = job.learning_rate is not None and any(math.isclose(job.learning_rate, r)
                                                                for r in script.fail_rates)
        if (script.train_error is not None and not script.fail_rates) or at_failing_rate:
            return JobResult(job, False, script.train_stage, script.train_error or "diverged", seconds=0.002)
        fitness = script.fitness_at(job.learning_rate, job.seed)
        count = self.prompts[job.split]
        rng = random.Random(f"{name}:{job.seed}:{job.split}:{job.learning_rate}")
        # Noise in +/- pairs on neighbouring even/odd prompts: the mean of all prompts, and of each half that
        # tuning.split_fitness takes, is exactly ``fitness`` (kl_coef is 0); an odd count repeats ``fitness``.
        spread = [rng.uniform(-0.02, 0.02) for _ in range(count // 4)]
        per_prompt = [fitness + x for s in spread for x in (s, s, -s, -s)] + [fitness] * (count % 4)
        return JobResult(job, True, "train", reply=TrainReply(
            fitness=fitness, reward=fitness, kl=0.0, kl_coef=0.0, steps=4, final_loss=0.6,
            train_seconds=0.002, step_seconds=0.0015, score_seconds=0.0005,
            # a training-loss curve that falls further the fitter the loss (what the worker's metrics carry)
            train_metrics={"loss_start": 0.6931, "loss_mid": round(0.6931 - fitness / 4, 5),
                           "loss_end": round(0.6931 - fitness / 2, 5)},
            per_prompt=per_prompt, per_prompt_kl=[0.0] * count, learning_rate=job.learning_rate,
        ), seconds=0.002)


def scored(fitness: float) -> TrainReply:
    """A train reply with only a fitness (no per-prompt scores: both halves of ``tuning.split_fitness`` are it)."""
    return TrainReply(fitness=fitness, reward=fitness, kl=0.0, steps=4, per_prompt=(), per_prompt_kl=(), kl_coef=0.0)


class ScriptedProposer(Proposer):
    """Hands out the candidates listed per generation and the repairs listed per failed name.

    ``stop_at`` names calls that raise ``ProposerStop`` instead: ``("propose", generation)`` or
    ``("repair", failed_name)``. ``asked`` records every propose and repair call, ``calls`` those and
    every observe, in order; ``seen[generation]`` is the history its proposal saw, as (id, status).
    """

    name = "scripted"

    def __init__(self, generations: Mapping[int, list[Candidate]] | None = None,
                 repairs: Mapping[str, Candidate] | None = None, *, max_repairs: int = 0,
                 stop_at: set[tuple[str, Any]] | None = None, lookahead: int = 0):
        self.generations = dict(generations or {})
        self.repairs = dict(repairs or {})
        self.max_repairs = max_repairs
        self.lookahead = lookahead
        self.stop_at = set(stop_at or ())
        self.asked: list[tuple[Any, ...]] = []
        self.observed: list[int] = []
        self.calls: list[tuple[Any, ...]] = []
        self.seen: dict[int, list[tuple[int, str]]] = {}
        self.overlapping_calls = 0
        self._busy = threading.Lock()

    def _check_idle(self) -> None:
        """Count a call made while a proposal is still running (on another thread)."""
        if self._busy.acquire(blocking=False):
            self._busy.release()
        else:
            self.overlapping_calls += 1

    def _call(self, *call: Any) -> None:
        self._check_idle()
        self.calls.append(call)

    def propose(self, history: list[HistoryEntry], k: int, generation: int) -> list[Candidate]:
        self._call("propose", generation)
        with self._busy:
            self.asked.append(("propose", generation, k, len(history)))
            self.seen[generation] = [(e.id, e.status) for e in history]
            self.proposing(generation)
            if ("propose", generation) in self.stop_at:
                raise ProposerStop(f"scripted stop at generation {generation}")
            return [self._own(c) for c in self.generations.get(generation, [])[:k]]

    def proposing(self, generation: int) -> None:
        """A hook for tests: runs inside propose(), e.g. to wait for an event."""

    def repair(self, failed: Candidate, failed_id: int, error: str, attempt: int) -> Candidate | None:
        self._call("repair", failed.name)
        self.asked.append(("repair", failed.name, attempt, error))
        if ("repair", failed.name) in self.stop_at:
            raise ProposerStop(f"scripted stop at the repair of {failed.name}")
        fixed = self.repairs.get(failed.name)
        return self._own(fixed) if fixed is not None else None

    def observe(self, entry: HistoryEntry) -> None:
        self._call("observe", entry.id)
        self.observed.append(entry.id)

    def close(self) -> None:
        """Closing it while a proposal is running would be a race too: count it."""
        self._check_idle()

    def state(self) -> None:
        """Nothing to save; but saving it while a proposal is running would be a race: count it."""
        self._check_idle()
        return None

    def _own(self, cand: Candidate) -> Candidate:
        return Candidate(cand.name, cand.code, cand.thought, list(cand.parent_ids), self.name, dict(cand.info),
                         cand.error)


def candidate(name: str, expr: str | None = None, **kwargs: Any) -> Candidate:
    """A valid candidate called ``name`` (the code differs per name, so no two are code duplicates)."""
    return Candidate(name=name, code=loss_code(name, expr), **kwargs)


def config_with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of a plain config with ``a__b=value`` changes (``__`` separates the keys of a path)."""
    cfg = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        node = cfg
        for part in path:
            node = node[part]
        node[key] = value
    return cfg
