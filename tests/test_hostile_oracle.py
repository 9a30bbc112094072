"""Candidate code that reaches arbitrary Python *in the loss oracle* cannot change any verdict or fitness
but its own honest one (``tests/hostile/oracle/``, each file with its ``EXPECTED.json`` entry).

The oracle's static check is fooled (``hostile_deep_oracle``), so every file's code really runs
there: it forges verdicts on the reply channel, floods it, half-replies and hangs, replies without
a body, leaves a thread answering later requests, patches torch (and restores it), changes global
torch state. Each must end with the candidate failed at the layer named (``layer: null``: judged
valid on its own values), in bounded time and memory, with no process left behind; and on one warm
executor an honest DPO candidate trained right after each hostile one gets exactly the fitness it
gets with no hostile candidate before it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TINY_TASK, startup_margin
from test_hostile import TOKEN_VAR, KeptWorkers, SharedTemplate, processes_tagged, shared_template

from discopop.cli.check import check_in_worker
from discopop.config import TrainingSettings, task_settings
from discopop.config.compose import compose
from discopop.execution.executors import Job, LocalExecutor, WorkerSpec
from discopop.tasks import load_task

TESTS = Path(__file__).resolve().parent
CORPUS = TESTS / "hostile" / "oracle"
EXPECTED: dict[str, dict] = json.loads((CORPUS / "EXPECTED.json").read_text())
FILES = sorted(p.name for p in CORPUS.glob("*.py"))
CHECK_TIMEOUT = 20.0  # > the worker's 10 s per oracle call, so a hanging oracle is the worker's verdict
STARTUP_MARGIN = startup_margin(30.0)  # worker + oracle import torch before the checks start
DPO = (TESTS.parent / "discopop" / "proposals" / "dpo.py").read_text()
MB = 1024 * 1024


def peak_rss(pid: int | str = "self") -> int:
    """Peak resident memory of a process, bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def deep_path() -> str:
    return os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="module")
def deep_template(deep_path) -> Iterator[SharedTemplate]:
    """The fooled oracles' template every check forks from (``test_hostile.shared_template``)."""
    shared = shared_template("hostile_deep_oracle", {"PYTHONPATH": deep_path})
    yield shared
    if shared.template is not None:
        shared.template.close()


@pytest.fixture(scope="module")
def kept() -> Iterator[KeptWorkers]:
    """The checks' kept workers, one per thread (``checked`` closes them once it is done)."""
    with KeptWorkers(2) as workers:
        yield workers


@pytest.fixture(scope="module")
def checked(deep_path, deep_template, kept) -> dict[str, tuple[dict, float, list[int]]]:
    """Each file through ``discopop check``'s path (``check_in_worker``), each thread's checks in one kept worker
    (``test_hostile.KeptWorkers``): (verdict, seconds, stray pids)."""

    def run(name: str):
        token = uuid.uuid4().hex
        with kept.use(name) as worker:
            started = time.perf_counter()
            verdict = check_in_worker((CORPUS / name).read_text(), CHECK_TIMEOUT,
                                      env={TOKEN_VAR: token, "PYTHONPATH": deep_path},
                                      oracle_module="hostile_deep_oracle", template=deep_template.template,
                                      worker=worker)
            seconds = time.perf_counter() - started
        return verdict, seconds, token

    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(zip(FILES, pool.map(run, FILES), strict=True))
    kept.close()
    return {name: (verdict, seconds, processes_tagged(token)) for name, (verdict, seconds, token) in outcomes.items()}


def test_corpus_is_complete() -> None:
    assert set(FILES) == set(EXPECTED) and len(FILES) >= 8
    assert {e["layer"] for e in EXPECTED.values()} <= {None, "numeric", "guard", "oracle", "sandbox"}


@pytest.mark.parametrize("name", FILES)
def test_hostile_oracle_candidate_gets_only_its_own_verdict(name: str, checked) -> None:
    expected = EXPECTED[name]
    verdict, seconds, strays = checked[name]
    if expected["layer"] is None:
        assert verdict["valid"] is True, verdict
    else:
        assert verdict["valid"] is False, verdict
        assert verdict["layer"] == expected["layer"], verdict
        assert expected["reason"] in verdict["reason"], verdict
    assert seconds <= CHECK_TIMEOUT + STARTUP_MARGIN, f"took {seconds:.1f} s"
    assert not strays, f"processes left running: {strays}"


def test_no_oracle_forked_from_the_shared_template_outlived_its_check(checked, deep_template) -> None:
    assert deep_template.template is None or deep_template.template.forks == len(FILES)
    assert not deep_template.strays(), f"processes left running: {deep_template.strays()}"


def test_the_kept_workers_were_restarted_only_after_a_kill(checked, kept: KeptWorkers) -> None:
    assert not kept.faults({name: verdict["layer"] for name, (verdict, _, _) in checked.items()})
    assert 1 <= kept.starts < len(FILES) and not kept.strays, (kept.starts, kept.strays)


def test_this_process_never_read_a_flood(checked) -> None:
    assert peak_rss() < 1500 * MB, f"the test process peaked at {peak_rss() // MB} MB"


# The shared tiny task's SFT model (``tiny_task``: taken from the SFT stage cache, not trained again) with more
# prompts to sample pairs from: 16 pairs kept, one training step of 16 per fine-tune.
TRAINABLE_TASK = [*TINY_TASK, "task.pairs.prompts=600", "task.pairs.max_pairs=16"]


@pytest.fixture(scope="module")
def executor(cache_dir, deep_path, tiny_task):
    """One warm worker (a tiny trainable task), fed fooled-static oracles; tagged so strays can be found."""
    cfg, _ = compose(TRAINABLE_TASK)
    meta = load_task(cfg["task"]).meta
    assert meta["sft_reused"] and meta["pairs"] == 16, meta  # one step of 16, on the shared SFT model
    token = uuid.uuid4().hex
    os.environ[TOKEN_VAR] = token
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = deep_path
    training = TrainingSettings(**{**cfg["training"], "batch_size": 16, "threads": 1})
    spec = WorkerSpec(task=task_settings(cfg["task"]), training=training, check_timeout=CHECK_TIMEOUT,
                      train_timeout=300, oracle_timeout=5.0, oracle_module="hostile_deep_oracle")
    pool = LocalExecutor(spec, workers=1)
    try:
        yield pool, token
    finally:
        pool.close()
        del os.environ[TOKEN_VAR]
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


def train(pool: LocalExecutor, code: str):
    (result,) = pool.run([Job(0, code, "train", seed=0)])
    return result


def test_honest_fitness_is_unchanged_after_each_hostile_candidate(executor) -> None:
    pool, token = executor
    baseline = train(pool, DPO)
    assert baseline.ok, baseline.error
    for name in FILES:
        started = time.perf_counter()
        hostile = train(pool, (CORPUS / name).read_text())
        layer = EXPECTED[name]["layer"]
        if layer in ("oracle", "guard"):
            assert (hostile.ok, hostile.stage) == (False, layer), (name, hostile.stage, hostile.error)
        elif layer is not None:
            assert not hostile.ok, (name, hostile.reply)
        assert time.perf_counter() - started < 300, name
        honest = train(pool, DPO)
        assert honest.ok, (name, honest.error)
        assert honest.trained.fitness == baseline.trained.fitness, name
        assert honest.trained.final_loss == baseline.trained.final_loss, name
    worker = pool.workers[0]
    assert worker.starts == 1, "candidate code never reaches the worker: it is never restarted"
    assert peak_rss(worker.proc.proc.pid) < 1500 * MB, "the worker read a flood"
    pool.close()
    strays = [pid for pid in processes_tagged(token) if pid != os.getpid()]
    assert not strays, f"processes left running: {strays}"
