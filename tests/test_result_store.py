"""The result store: reference fine-tunes computed once and shared by runs with the same settings.

The loop tests drive whole ``Loop.run`` calls with the scripted executor (``scripted_executor.py``)
and a store passed in; the store itself is tested on its own, including a writer killed with SIGKILL.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from scripted_executor import Script, ScriptedExecutor, ScriptedProposer, candidate
from scripted_executor import config_with as changed

from discopop.config import RunSettings
from discopop.config.compose import compose
from discopop.execution.executors import Job, JobResult
from discopop.execution.messages import TrainReply
from discopop.fitness.result_store import (
    ResultCache,
    RunKey,
    StoredRuns,
    archives_failure,
    settings_key,
    shared_path,
    storable,
)
from discopop.proposers import reference
from discopop.report.display import Display
from discopop.sandbox import oracle_wire
from discopop.search import loop as loop_module
from discopop.search.loop import Loop

GRID = (1e-5, 2e-5, 4e-5)
META = {"sft_heldout_reward": 0.8, "pairs": 64}
REFERENCES = ("dpo", "lrml", "hinge")
# Distinct fitness per reference, rate and seed, so a result served from the wrong key would show.
SCRIPTS = {
    "dpo": Script(fitness={1e-5: 0.50, 2e-5: 0.55, 4e-5: 0.53}, seed_shift={500: 0.004, 1000: -0.01, 1001: 0.02}),
    "lrml": Script(fitness={1e-5: 0.40, 2e-5: 0.45, 4e-5: 0.47}, seed_shift={500: -0.003, 1000: 0.01}),
    "hinge": Script(fitness={1e-5: 0.52, 2e-5: 0.51, 4e-5: 0.49}, seed_shift={500: 0.002, 1001: -0.02}),
}


@pytest.fixture(scope="module")
def base_cfg() -> dict[str, Any]:
    # The seed race (2 seeds) and the confirmation (2 fresh seeds) run too: every kind of reference fine-tune.
    cfg, _ = compose([f"baselines=[{','.join(REFERENCES)}]", f"training.lr_grid=[{','.join(map(str, GRID))}]",
                      "training.lr_screen_margin=0.05", "confirm.seeds=2", "confirm.top_k=1", "confirm.references=2",
                      "wandb.mode=disabled", "selection.max_seeds=2"])
    return cfg


def run(cfg: dict[str, Any], run_dir: Path, store: ResultCache | None, scripts=None,
        executor_cls: type[ScriptedExecutor] = ScriptedExecutor) -> tuple[ScriptedExecutor, str]:
    """One run with a candidate in generation 1; the executor it used and what the run printed."""
    executor = executor_cls({**SCRIPTS, **(scripts or {})}, workers=2)
    out = io.StringIO()
    run_dir.mkdir(parents=True, exist_ok=True)
    proposer = ScriptedProposer({1: [candidate("novel")]})
    loop = Loop(RunSettings.coerce(cfg), run_dir, Display(0, console=Console(file=out, width=300), quiet=True),
                proposer=proposer, executor=executor, task_meta=META, store=store)
    try:
        loop.run(1)
    finally:
        loop.archive.close()
    return executor, out.getvalue()


def reference_jobs(executor: ScriptedExecutor, run_dir: Path) -> list[Job]:
    ids = {r[0] for r in rows(run_dir, "SELECT id FROM candidates WHERE proposer = 'reference'")}
    return [j for j in executor.jobs("train") if j.row_id in ids]


def rows(run_dir: Path, query: str) -> list[tuple]:
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        return conn.execute(query).fetchall()


def reference_results(run_dir: Path) -> dict[str, Any]:
    """What a run decided about its references: status, fitness, chosen rate, race and every evaluation."""
    out = {}
    for row_id, name, status, fitness, metrics in rows(
            run_dir, "SELECT id, name, status, fitness, metrics FROM candidates WHERE proposer = 'reference'"):
        m = json.loads(metrics)
        evals = rows(run_dir, f"SELECT seed, split, learning_rate, fitness, per_prompt, error FROM evaluations "
                              f"WHERE candidate_id = {row_id} ORDER BY id")
        out[name] = (status, fitness, m.get("learning_rate"), m.get("lr_sweep"), m.get("race"),
                     (m.get("confirmation") or {}).get("fitness"), evals)
    return out


def test_a_second_run_trains_no_reference_and_scores_them_identically(base_cfg, tmp_path: Path) -> None:
    store = ResultCache(tmp_path / "results.sqlite")
    first, log1 = run(base_cfg, tmp_path / "a", store)
    jobs1 = reference_jobs(first, tmp_path / "a")
    assert {j.split for j in jobs1} == {"search", "confirm"} and {j.seed for j in jobs1} >= {0, 500, 1000}
    assert store.count() == len(jobs1)  # every reference fine-tune stored, nothing else
    assert "baselines: 0 from the store, 3 trained" in log1

    second, log2 = run(base_cfg, tmp_path / "b", store)
    assert reference_jobs(second, tmp_path / "b") == []
    assert [j for j in second.jobs("train") if j.row_id not in {r[0] for r in rows(
        tmp_path / "b", "SELECT id FROM candidates WHERE proposer = 'reference'")}]  # the candidate still trains
    assert second.jobs("check")  # the cheap numeric checks still run
    assert reference_results(tmp_path / "a") == reference_results(tmp_path / "b")
    assert "baselines: 3 from the store" in log2 and "trained" not in log2.split("baselines:")[1].split("\n")[0]
    metrics = [json.loads(m) for (m,) in rows(tmp_path / "b", "SELECT metrics FROM candidates "
                                                              "WHERE proposer = 'reference'")]
    assert all(m["cached"] is True and m["cached_runs"] >= len(GRID) for m in metrics)
    assert all(m["seconds"]["runs"] == 0 and m["seconds"]["steps"] == 0 for m in metrics)  # nothing ran now
    assert store.count() == len(jobs1)


@pytest.mark.parametrize("change", [{"training__beta": 0.3}, {"task__pairs__label_noise": 0.1}, {"seed": 7},
                                    {"training__epochs": 3}, {"task__kl_coef": 0.01}])
def test_changing_a_setting_in_the_key_trains_the_references_again(base_cfg, tmp_path: Path, change) -> None:
    store = ResultCache(tmp_path / "results.sqlite")
    first, _ = run(base_cfg, tmp_path / "a", store)
    second, _ = run(changed(base_cfg, **change), tmp_path / "b", store)
    trained = {rows(tmp_path / "b", f"SELECT name FROM candidates WHERE id = {j.row_id}")[0][0]
               for j in reference_jobs(second, tmp_path / "b")}
    assert trained == set(REFERENCES)
    assert len(reference_jobs(second, tmp_path / "b")) == len(reference_jobs(first, tmp_path / "a"))


def test_changed_loss_code_trains_only_that_reference_again(base_cfg, tmp_path: Path, monkeypatch) -> None:
    store = ResultCache(tmp_path / "results.sqlite")
    run(base_cfg, tmp_path / "a", store)
    original = reference.reference_candidate

    def edited(name: str, flips=None):
        cand = original(name, flips)
        if name == "hinge":
            cand.code = cand.code.replace("return", "return 1.0 * ", 1) if "return" in cand.code else cand.code
        return cand

    monkeypatch.setattr(loop_module, "reference_candidate", edited)
    second, log = run(base_cfg, tmp_path / "b", store)
    trained = {rows(tmp_path / "b", f"SELECT name FROM candidates WHERE id = {j.row_id}")[0][0]
               for j in reference_jobs(second, tmp_path / "b")}
    assert trained == {"hinge"}
    assert "baselines: 2 from the store, 1 trained" in log


def test_speed_only_settings_share_the_key_and_result_settings_do_not(base_cfg) -> None:
    key = settings_key(base_cfg)
    assert settings_key(changed(base_cfg, training__threads=4, training__train_timeout=60.0,
                                training__lr_screen_margin=0.2, task__cache_dir="/elsewhere")) == key
    for change in ({"training__precision": "bf16"}, {"training__batch_size": 8}, {"training__pair_fraction": 1.0},
                   {"training__lr_scheduler": "linear"}, {"task__search_prompts": 100}, {"task__sft__steps": 10}):
        assert settings_key(changed(base_cfg, **change)) != key, change
    assert settings_key(base_cfg, device="cuda") != settings_key(base_cfg, device="cpu")


def test_another_cpu_vector_path_is_another_key(base_cfg, monkeypatch) -> None:
    """Kinked losses give different third decimals on AVX2 and AVX-512: a store on a shared disk must not hand
    one machine's results to the other."""
    import torch

    keys = {}
    for path in ("AVX2", "AVX512"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda p=path: p)
        keys[path] = settings_key(base_cfg)
    assert keys["AVX2"] != keys["AVX512"]
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert settings_key(base_cfg) == keys["AVX2"]


def test_a_loss_failure_is_stored_and_never_retried(base_cfg, tmp_path: Path) -> None:
    store = ResultCache(tmp_path / "results.sqlite")
    broken = {"lrml": Script(train_error="NaN loss", train_stage="train")}
    first, _ = run(base_cfg, tmp_path / "a", store, broken)
    assert reference_jobs(first, tmp_path / "a")
    second, _ = run(base_cfg, tmp_path / "b", store, {"lrml": Script(fitness=0.9)})  # would now succeed
    assert reference_jobs(second, tmp_path / "b") == []
    assert rows(tmp_path / "b", "SELECT status, error FROM candidates WHERE name = 'lrml'") == [
        ("train_failed", "NaN loss")]


class CrashingExecutor(ScriptedExecutor):
    """Every reference fine-tune fails as a dead worker would (``machinery``), never the loss's fault."""

    def answer(self, job: Job) -> JobResult:
        result = super().answer(job)
        if job.stage == "train" and job.split == "search" and job.seed == 0:
            return JobResult(job, False, "train", "worker died: killed by signal 9", seconds=0.01, machinery=True)
        return result


def test_a_machinery_crash_is_not_stored_as_the_loss_failing(base_cfg, tmp_path: Path) -> None:
    store = ResultCache(tmp_path / "results.sqlite")
    run(base_cfg, tmp_path / "a", store, executor_cls=CrashingExecutor)
    assert rows(tmp_path / "a", "SELECT DISTINCT status FROM candidates WHERE proposer = 'reference'") == [
        ("train_failed",)]
    assert store.count() == 0
    second, _ = run(base_cfg, tmp_path / "b", store)
    assert {j.row_id for j in reference_jobs(second, tmp_path / "b")}  # trained again, and now they score
    assert rows(tmp_path / "b", "SELECT DISTINCT status FROM candidates WHERE proposer = 'reference'") == [
        ("scored",)]


def test_switched_off_or_a_stand_in_executor_uses_no_store(base_cfg, tmp_path: Path, monkeypatch) -> None:
    store = ResultCache(tmp_path / "results.sqlite")
    off = changed(base_cfg, selection__reference_store=False)
    run(off, tmp_path / "a", store)
    assert store.count() == 0
    # No store passed and a stand-in executor: nothing may reach the store shared by real runs.
    monkeypatch.setenv("DISCOPOP_CACHE_DIR", str(tmp_path / "cache"))
    run(base_cfg, tmp_path / "b", None)
    assert not shared_path(base_cfg).exists()
    assert shared_path(base_cfg) == tmp_path / "cache" / "results.sqlite"


def test_resume_after_a_stored_run_keeps_the_references(base_cfg, tmp_path: Path) -> None:
    store = ResultCache(tmp_path / "results.sqlite")
    run(base_cfg, tmp_path / "a", store)
    before = reference_results(tmp_path / "a")
    again, _ = run(base_cfg, tmp_path / "a", store)  # --resume of a finished run: nothing to redo
    assert reference_jobs(again, tmp_path / "a") == []
    assert reference_results(tmp_path / "a") == before


def test_store_round_trip_keeps_the_whole_reply(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "results.sqlite")
    stored = StoredRuns(cache, "addition-abc", 0.5, 1e-5)
    job = Job(3, "code", "train", 500, learning_rate=2e-5)
    data = TrainReply(fitness=0.7, reward=0.7, kl=0.1, kl_coef=0.0, per_prompt=[0.6, 0.8], per_prompt_kl=[0.1, 0.1],
                      learning_rate=2e-5, steps=4, train_metrics={"loss_end": 0.3}, per_prompt_greedy=[1.0, 0.0])
    assert stored.lookup(job, "h") is None
    stored.save(JobResult(job, True, "train", reply=data, seconds=1.5), "h")
    found = stored.lookup(Job(9, "code", "train", 500, learning_rate=2e-5), "h")
    assert found.ok and found.job.row_id == 9 and found.seconds == 0.0
    assert found.reply == data and found.cached
    assert stored.lookup(Job(9, "code", "train", 501, learning_rate=2e-5), "h") is None  # another seed
    assert stored.lookup(Job(9, "code", "train", 500, split="confirm", learning_rate=2e-5), "h") is None
    assert stored.lookup(job, "other-code") is None
    # A job with no rate runs at the default: the same key as naming it.
    stored.save(JobResult(Job(1, "c", "train", 0), False, "score", "non-finite fitness"), "h")
    again = stored.lookup(Job(2, "c", "train", 0, learning_rate=1e-5), "h")
    assert not again.ok and again.stage == "score" and again.error == "non-finite fitness" and again.cached
    # The evaluate command's view of the same rows.
    ev = cache.get(RunKey("h", "addition-abc", 0.5, 500, "search", 2e-5))
    assert ev.fitness == 0.7 and ev.per_prompt == [0.6, 0.8]
    # ... and the reply's fields an Evaluation does not keep (task_calibration reads per_prompt_greedy there)
    assert cache.reply_data(RunKey("h", "addition-abc", 0.5, 500, "search", 2e-5)) == data
    assert cache.reply_data(RunKey("h", "addition-abc", 0.5, 0, "search", 1e-5)) is None  # a stored failure
    assert cache.reply_data(RunKey("h", "addition-abc", 0.5, 7, "search", 1e-5)) is None  # not stored


def test_an_older_cache_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as conn:  # the evaluate cache as the first version wrote it
        conn.execute("CREATE TABLE runs (code_hash TEXT NOT NULL, task TEXT NOT NULL, beta REAL NOT NULL, seed "
                     "INTEGER NOT NULL, split TEXT NOT NULL, learning_rate REAL NOT NULL, fitness REAL, reward REAL, "
                     "kl REAL, kl_coef REAL, per_prompt TEXT, per_prompt_kl TEXT, error TEXT, seconds REAL, "
                     "created_at TEXT NOT NULL, PRIMARY KEY (code_hash, task, beta, seed, split, learning_rate))")
        conn.execute("INSERT INTO runs VALUES ('h','t',0.5,0,'search',1e-5,0.4,0.4,0,0,'[0.4]','[0]',NULL,1,'x')")
    cache = ResultCache(path)
    key = RunKey("h", "t", 0.5, 0, "search", 1e-5)
    assert cache.get(key).fitness == 0.4
    assert cache.get_result(key, Job(1, "c", "train", 0, learning_rate=1e-5)) is None  # no reply: run it again
    assert cache.reply_data(key) is None


WRITER = """
import sys
from discopop.execution.executors import Job, JobResult
from discopop.execution.messages import TrainReply
from discopop.fitness.result_store import ResultCache, RunKey
cache = ResultCache(sys.argv[1])
i = 0
while True:
    data = TrainReply(fitness=i / 1000, reward=0.5, kl=0.0, steps=4, per_prompt=[0.5] * 200,
                      per_prompt_kl=[0.0] * 200, kl_coef=0.0)
    cache.put(RunKey("h", "t", 0.5, i, "search", 1e-5), JobResult(Job(0, "", "train", i), True, "train", reply=data))
    print(i, flush=True)
    i += 1
"""


def test_a_writer_killed_mid_run_leaves_a_readable_store_with_every_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    committed = []
    try:
        for line in proc.stdout:
            committed.append(int(line))
            if len(committed) >= 200:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and len(committed) == 200
    cache = ResultCache(path)  # opens (recovering the WAL) where the writer died
    assert cache.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for i in committed:
        assert cache.get(RunKey("h", "t", 0.5, i, "search", 1e-5)).fitness == i / 1000
    assert cache.count() >= len(committed)


class FullDiskCache(ResultCache):
    def put(self, key, result):
        raise sqlite3.OperationalError("database or disk is full")


def test_a_store_that_cannot_be_written_only_costs_the_saving(base_cfg, tmp_path: Path) -> None:
    plain_executor, _ = run(base_cfg, tmp_path / "a", None)
    executor, log = run(base_cfg, tmp_path / "b", FullDiskCache(tmp_path / "results.sqlite"))
    assert reference_results(tmp_path / "a") == reference_results(tmp_path / "b")
    assert len(reference_jobs(executor, tmp_path / "b")) == len(reference_jobs(plain_executor, tmp_path / "a"))
    assert "store given up: cannot write" in log and "disk is full" in log


def test_a_missed_oracle_deadline_is_not_stored_but_a_loss_failure_is() -> None:
    """Under load a sound reference misses the oracle's call deadline: kept, it would fail that seed for good."""
    left, right = socket.socketpair()
    with left, right, pytest.raises(oracle_wire.ChannelError) as missed:  # the real message of a missed deadline
        oracle_wire.read_exact(left, 8, time.monotonic() - 1)
    job = Job(1, "code", "train", 0, learning_rate=1e-5)
    assert not storable(JobResult(job, False, "oracle", f"oracle: {missed.value}"))
    assert storable(JobResult(job, False, "train", "NaN loss"))  # the loss's own failure is kept
    assert storable(JobResult(job, True, "train", None))


def test_a_machine_failure_is_archived_for_a_candidate_but_never_for_a_reference() -> None:
    job = Job(1, "code", "train", 0, learning_rate=1e-5)
    died = JobResult(job, False, "train", "worker died: killed by signal 9", machinery=True)
    own = JobResult(job, False, "train", "NaN loss")
    assert archives_failure(died, trusted_code=False) and not archives_failure(died, trusted_code=True)
    assert archives_failure(own, trusted_code=True) and archives_failure(own, trusted_code=False)
