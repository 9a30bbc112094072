"""One loss oracle serves all of a candidate's jobs (``sandbox.oracle_keep``), never another candidate's, and
a job's result does not depend on which jobs its oracle served before."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from discopop.config.compose import compose_settings
from discopop.execution.executors import Job, LocalExecutor, WarmWorker, WorkerSpec
from discopop.sandbox.oracle_keep import KeptOracles, code_key

REPO = Path(__file__).resolve().parent.parent
DPO = (REPO / "discopop" / "proposals" / "dpo.py").read_text()
HINGE = (REPO / "discopop" / "proposals" / "hinge.py").read_text()
SMALL = ["task.contexts=64", "task.eval_contexts=64", "task.steps=30", "task.batch=32"]

# A loss whose answers depend on how often it was called (a module-level counter; only an oracle whose static
# check is fooled loads it) and one that draws from torch's global RNG (legal: rand_like is allowed).
COUNTER = '''
import torch
import torch.nn.functional as F

_CALLS = [0]


def counting(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    _CALLS[0] += 1
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * (1.0 + 0.05 * _CALLS[0]) * rho)
'''
NOISY = '''
import torch
import torch.nn.functional as F


def noisy(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho * (0.5 + torch.rand_like(rho)))
'''

# Reads CPU autocast (global torch state the state watch does not restore), then turns it on: its first call in a
# job trains the other way round from its later calls, unless every job starts with autocast as a fresh oracle has it.
AUTOCAST = '''
import torch
import torch.nn.functional as F


def leaves_autocast(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                    beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    sign = -1.0 if torch.is_autocast_enabled("cpu") else 1.0
    torch.set_autocast_enabled("cpu", True)
    return -F.logsigmoid(beta * sign * rho)
'''


@pytest.fixture(scope="module")
def spec() -> WorkerSpec:
    cfg, _ = compose_settings(["task=diagnostic", *SMALL])
    return WorkerSpec(task=cfg.task, training=replace(cfg.training, threads=1), kl_coef=cfg.task.kl_coef,
                      check_timeout=60, train_timeout=60, oracle_module="hostile_deep_oracle")


@pytest.fixture(autouse=True)
def fooled_oracle_importable(monkeypatch) -> None:
    """``hostile_deep_oracle`` (the static check switched off, so COUNTER loads) lives in tests/."""
    tests_dir = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))


def kept_pid(worker: WarmWorker, code: str) -> int | None:
    oracle = worker.kept._idle.get(code_key(code))
    return oracle.proc.proc.pid if oracle is not None else None


def train(worker: WarmWorker, code: str, lr: float, seed: int = 0) -> float:
    result = worker.run(Job(0, code, "train", seed, learning_rate=lr))
    assert result.ok, result.error
    return result.trained.fitness


@pytest.fixture(scope="module")
def fresh(spec: WorkerSpec) -> Iterator[WarmWorker]:
    """A worker that gets a fresh oracle for every job (the reference behaviour)."""
    worker = WarmWorker(WorkerSpec(**{**spec.__dict__, "kept_oracles": 0}))
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def keeping(spec: WorkerSpec) -> Iterator[WarmWorker]:
    worker = WarmWorker(spec)
    yield worker
    worker.close()


def test_a_candidate_reuses_its_oracle_and_two_candidates_never_share_one(keeping) -> None:
    worker, reused = keeping, keeping.kept.reused
    assert worker.run(Job(0, DPO, "check")).ok
    dpo_pid = kept_pid(worker, DPO)
    train(worker, DPO, 0.03)
    assert kept_pid(worker, DPO) == dpo_pid and worker.kept.reused == reused + 1
    train(worker, HINGE, 0.03)
    hinge_pid = kept_pid(worker, HINGE)
    assert hinge_pid is not None and hinge_pid != dpo_pid
    train(worker, DPO, 0.1)
    assert kept_pid(worker, DPO) == dpo_pid and worker.kept.reused == reused + 2
    # A third candidate pushes out the least recently used (HINGE): killed, not handed on.
    train(worker, NOISY, 0.03)
    assert kept_pid(worker, HINGE) is None and kept_pid(worker, NOISY) not in (dpo_pid, hinge_pid)


def test_a_failed_job_does_not_keep_its_oracle(keeping) -> None:
    scalar = "import torch\n\n\ndef f(a, b, c, d, beta):\n    return (a - b).sum()\n"
    bad = keeping.run(Job(0, scalar, "train", 0))
    assert (bad.ok, bad.stage) == (False, "train") and code_key(scalar) not in keeping.kept.keys()


@pytest.mark.parametrize("code", [COUNTER, NOISY, AUTOCAST], ids=["module-counter", "global-rng", "autocast"])
def test_a_job_gives_the_same_fitness_whatever_its_oracle_served_before(fresh, keeping, code: str) -> None:
    alone = train(fresh, code, 0.1)
    train(keeping, code, 0.03, seed=1)  # another job of the same candidate first, on the same oracle
    pid, reused = kept_pid(keeping, code), keeping.kept.reused
    after = train(keeping, code, 0.1)
    assert keeping.kept.reused == reused + 1 and kept_pid(keeping, code) == pid
    assert after == alone  # bit-identical


def test_a_freed_worker_takes_the_job_whose_oracle_it_holds(spec) -> None:
    pool = LocalExecutor(spec, workers=2)  # workers start lazily: none is started here
    try:
        first, second = pool.workers
        first.busy_key = code_key(DPO)  # running a DPO job
        todo = [Job(0, DPO, "train", 0), Job(1, HINGE, "train", 0), Job(0, DPO, "train", 1)]
        assert pool._pick(second, todo).code == HINGE  # not DPO: another worker holds its oracle
        first.busy_key = None
        assert pool._pick(first, todo).code == DPO
        second.busy_key = None
        assert [j.seed for j in todo] == [1]
    finally:
        pool.close()


@pytest.mark.slow  # ~30-90 s on 2 shared cores (two pools start); benchmarks/diagnostic_run.py --compare runs it big
def test_the_executor_gives_the_same_results_with_and_without_kept_oracles(spec) -> None:
    jobs = [Job(i, code, "train", 0, learning_rate=lr) for i, code in enumerate((DPO, NOISY)) for lr in (0.03, 0.1)]
    fitness = {}
    for kept, workers in ((2, 2), (0, 1)):
        pool = LocalExecutor(WorkerSpec(**{**spec.__dict__, "kept_oracles": kept}), workers=workers)
        try:
            results = list(pool.run(jobs))
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            fitness[kept] = {(r.job.row_id, r.job.learning_rate): r.trained.fitness for r in results}
            if kept:
                assert sum(w.kept.reused for w in pool.workers) >= 1
        finally:
            pool.close()
    assert fitness[2] == fitness[0]


def test_kept_oracles_of_size_zero_keep_nothing() -> None:
    keep = KeptOracles(0)
    assert keep.take("x") is None and keep.keys() == set()
