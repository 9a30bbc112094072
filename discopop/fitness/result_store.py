"""Finished fine-tunes kept in SQLite, so the same fine-tune is never paid for twice.

One implementation, two users:

* ``discopop evaluate`` keeps every fine-tune of an evaluation in ``OUT/results.sqlite`` (keyed by
  ``transfer.protocol.task_key``), so an interrupted evaluation resumes where it stopped.
* ``discover`` keeps its *reference* fine-tunes (the baselines' learning-rate climb, their seed race
  and their fresh-seed confirmation) in a store shared by every run, ``<cache_dir>/results.sqlite``
  next to the built tasks, keyed by :func:`settings_key`: a second run on the same settings trains
  no reference again. Candidates are not stored: their code is new in every run.

A row is keyed by (loss code hash, settings key, beta, seed, split, learning rate). Each result is
written in its own transaction (autocommit, WAL journal) as soon as it finishes, so a run killed at
any point leaves a readable store holding every result it had written. A stored failure of the loss
is never retried for the same key (retrying would select lucky seeds); a failure of the machinery
(``JobResult.machinery``: a worker that died or timed out, an oracle that could not start, a judge
that did not answer) says nothing about the loss and is never stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from discopop.archive import Evaluation
from discopop.config import RunSettings, plain
from discopop.execution.executors import Job, JobResult
from discopop.execution.messages import MessageError, TrainReply
from discopop.tasks import cache_root, stable_key

CACHE_NAME = "results.sqlite"

# Training settings that change no computed number, only how fast, how long it may take, or which rates are tried:
# - threads: torch intra-op threads (round-off order at most; a result is as valid on more cores);
# - *_timeout: whether a slow job is given up on; a timeout is a machinery failure, never stored;
# - lr_grid, lr_screen_margin, learning_rate, beta_grid: which rates and betas the protocol tries; the rate and
#   the beta a fine-tune ran at are part of the key itself (``RunKey.learning_rate``, ``RunKey.beta``: the run's
#   defaults where a job names none).
# Everything else (beta, epochs, batch size, precision, device, LoRA, schedule, pairs...) is in the key.
SPEED_ONLY_TRAINING = ("threads", "check_timeout", "train_timeout", "oracle_timeout", "lr_grid", "lr_screen_margin",
                       "learning_rate", "beta_grid")
# Task settings that change no computed number: where the cache is, and how the judge's requests are sent and paid.
SPEED_ONLY_TASK = ("cache_dir",)
SPEED_ONLY_JUDGE = ("api_key_env", "timeout", "max_retries", "backoff_base", "backoff_max", "concurrency",
                    "max_cost_usd", "prices")
# The trusted code a worker computes a fine-tune and its score with, and the libraries it runs on: a change to
# either may change every number, so it is part of the key (a store never serves results of older code).
# Whole packages rather than a list of files: a module added later (a new scorer, a new task) is covered without
# anyone remembering to list it; the price is one recomputation of the references after any edit there.
TRUSTED_PACKAGES = ("fitness", "execution", "tasks", "sandbox")
TRUSTED_MODULES = ("dpo_trainer.py",)
LIBRARIES = ("torch", "transformers", "trl", "peft", "numpy")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    code_hash TEXT NOT NULL, task TEXT NOT NULL, beta REAL NOT NULL, seed INTEGER NOT NULL,
    split TEXT NOT NULL, learning_rate REAL NOT NULL,
    fitness REAL, reward REAL, kl REAL, kl_coef REAL, per_prompt TEXT, per_prompt_kl TEXT,
    error TEXT, seconds REAL, created_at TEXT NOT NULL,
    PRIMARY KEY (code_hash, task, beta, seed, split, learning_rate)
);
"""
# Added after the first version (an older cache gains them empty): the failing stage, and the worker's whole reply
# (the cascade archives more of it than an Evaluation holds: steps, train metrics, timings).
_EXTRA_COLUMNS = (("stage", "TEXT"), ("reply", "TEXT"))


class StoreError(ValueError):
    """The store cannot be opened or read: one line for the user."""


@dataclass(frozen=True)
class RunKey:
    """Everything that decides one fine-tune's result (``task``: the settings key of the task and training)."""

    code_hash: str
    task: str
    beta: float
    seed: int
    split: str
    learning_rate: float


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_version() -> dict[str, Any]:
    """A hash of the trusted worker-side sources, the versions of the libraries they run on and the CPU vector path."""
    root = Path(__file__).resolve().parent.parent
    files = sorted([*(p for pkg in TRUSTED_PACKAGES for p in (root / pkg).rglob("*.py")),
                    *(root / name for name in TRUSTED_MODULES)])
    sources = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {"sources": _digest(sources), "libraries": versions, "cpu": cpu_vector_path()}


def cpu_vector_path() -> str:
    """The CPU's vector instruction path torch runs on here (e.g. AVX512, AVX2; ``ATEN_CPU_CAPABILITY`` picks it).

    Why in the key: losses with kinks (a clamp, a hinge, |x|) amplify the last-bit differences between two paths
    into the third decimal of the fitness (docs/results.md, "The search on narrow_support with 128 pairs a
    context"), so a store shared between machines (a cache directory on a network disk) must not hand one
    machine's results to another. Local workers inherit the main process's environment, so this is their path.
    """
    import torch  # lazy: the store is opened after the task, which has imported torch already

    return str(torch.backends.cpu.get_cpu_capability())


def settings_key(cfg: RunSettings | dict[str, Any], device: str | None = None) -> str:
    """The task's name plus a hash of every setting a fine-tune's result depends on (module docstring).

    ``device``: where the workers actually train ("cpu"/"cuda"), when the executor knows it (``auto`` resolved).
    """
    cfg = RunSettings.coerce(cfg)
    task = {k: v for k, v in plain(cfg.task).items() if k not in SPEED_ONLY_TASK}
    if isinstance(task.get("judge"), dict):
        task["judge"] = {k: v for k, v in task["judge"].items() if k not in SPEED_ONLY_JUDGE}
    training = {k: v for k, v in plain(cfg.training).items() if k not in SPEED_ONLY_TRAINING}
    if device:
        training["device"] = device
    blob = {"task": stable_key(task), "training": training, "code": code_version()}
    return f"{cfg.task.name}-{_digest(blob)[:16]}"


def shared_path(cfg: RunSettings | dict[str, Any]) -> Path:
    """The store shared by every run of this machine: next to the task cache."""
    return cache_root(plain(RunSettings.coerce(cfg).task)) / CACHE_NAME


# What the oracle's channel says when a call missed its deadline (``sandbox/oracle_wire.py``). For code that stalls
# it is the loss's fault, but on a loaded machine a sound loss misses it too: such a failure is not kept, or one busy
# afternoon would fail a reference's seed for good (a stored failure is never retried).
DEADLINE_MISSED = "no complete reply within the deadline"


def storable(result: JobResult) -> bool:
    """A result says something about the loss: it succeeded, or the loss failed, not the machinery and not the
    machine's load (a missed oracle deadline)."""
    if result.ok:
        return True
    return not result.machinery and DEADLINE_MISSED not in (result.error or "")


# How many more times a run is tried when the machine, not the loss, failed it (``storable`` is False).
MACHINE_RETRIES = 1


def archives_failure(result: JobResult, trusted_code: bool) -> bool:
    """Whether a failed run, after its ``MACHINE_RETRIES``, is archived as the loss's failure: always when the loss
    failed; when the machine did, only for untrusted code (a candidate that stalls fails its seed), never for a
    reference, whose code is trusted: archiving the machine's failure would fail every comparison with that
    reference for good (a stored failure is never retried), so its seed stays missing and is tried again."""
    return storable(result) or not trusted_code


class ResultCache:
    """Fine-tune results, one SQLite row each, written as soon as each finishes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(_SCHEMA)
            have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
            for name, kind in _EXTRA_COLUMNS:
                if name not in have:
                    self.conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        except (sqlite3.DatabaseError, OSError) as err:
            raise StoreError(f"cannot open the result cache {self.path}: {err}") from None

    @staticmethod
    def _params(key: RunKey) -> tuple:
        return (key.code_hash, key.task, float(key.beta), int(key.seed), key.split, float(key.learning_rate))

    def _row(self, key: RunKey) -> dict[str, Any] | None:
        cur = self.conn.execute(
            "SELECT * FROM runs WHERE code_hash=? AND task=? AND beta=? AND seed=? AND split=? AND learning_rate=?",
            self._params(key))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def get(self, key: RunKey) -> Evaluation | None:
        r = self._row(key)
        if r is None:
            return None
        return Evaluation(0, r["seed"], r["split"], r["learning_rate"], r["fitness"], r["reward"], r["kl"],
                          r["kl_coef"] or 0.0, json.loads(r["per_prompt"] or "[]"),
                          json.loads(r["per_prompt_kl"] or "[]"), r["error"])

    def get_result(self, key: RunKey, job: Job) -> JobResult | None:
        """``job``'s stored result as the executor returned it (``seconds`` 0: nothing ran now; the reply is marked
        ``cached``); None when not stored, or stored without its reply (by an older version)."""
        r = self._row(key)
        if r is None or not r.get("reply"):
            return None
        reply = json.loads(r["reply"])
        if reply.get("ok"):
            trained = _stored_reply(reply)
            if trained is None or (job.tune_seeds and trained.tune_fitness is None):  # cannot choose a rate as asked
                return None
            return JobResult(job, True, reply["stage"], reply=trained, cached=True)
        return JobResult(job, False, reply["stage"], reply["error"], cached=True)

    def put(self, key: RunKey, result: JobResult) -> Evaluation:
        """Store one finished fine-tune (or the loss's failure) and return it as an ``Evaluation``.

        A failure of the machinery (``storable``) is returned but not stored: the next run tries it again.
        """
        if result.ok:
            ev = Evaluation.from_reply(0, key.seed, key.split, result.trained)
            ev.learning_rate = key.learning_rate
        else:
            ev = Evaluation(0, key.seed, key.split, key.learning_rate, error=f"{result.stage}: {result.error}")
        if not storable(result):
            return ev
        reply = {"ok": result.ok, "stage": result.stage, "error": result.error,
                 "data": result.trained.to_wire() if result.ok else {}}
        self.conn.execute(
            "INSERT OR REPLACE INTO runs (code_hash, task, beta, seed, split, learning_rate, fitness, reward, kl,"
            " kl_coef, per_prompt, per_prompt_kl, error, seconds, created_at, stage, reply)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (*self._params(key), ev.fitness, ev.reward, ev.kl, ev.kl_coef, json.dumps(ev.per_prompt),
             json.dumps(ev.per_prompt_kl), ev.error, round(result.seconds, 3),
             datetime.now(timezone.utc).isoformat(timespec="seconds"), result.stage,
             json.dumps(reply, default=str)))
        return ev

    def reply_data(self, key: RunKey) -> TrainReply | None:
        """The worker's whole stored reply for ``key`` (fields an ``Evaluation`` does not keep, such as
        ``per_prompt_greedy``); None when not stored, stored without its reply (or by another version), or a
        failure."""
        r = self._row(key)
        if r is None or not r.get("reply"):
            return None
        reply = json.loads(r["reply"])
        return _stored_reply(reply) if reply.get("ok") else None

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def _stored_reply(stored: dict[str, Any]) -> TrainReply | None:
    """The train reply a stored success keeps (``put``'s ``data``); None if another version wrote it (the run is
    then done again rather than misread). Replies stored before they were versioned have version 1's fields."""
    data = stored.get("data")
    if isinstance(data, dict) and "version" not in data:
        data = {**data, "version": 1}
    try:
        return TrainReply.from_wire(data)
    except MessageError:
        return None


@dataclass
class StoredRuns:
    """The shared store as one discovery run sees it: its settings key, beta and default learning rate.

    ``hits`` and ``stored`` count what this run read and wrote (the progress line reports them). The store
    only saves work: if it cannot be read or written (disk full, locked too long) the run goes on without it
    and ``error`` says why.
    """

    cache: ResultCache
    task: str
    beta: float
    default_lr: float
    hits: int = 0
    stored: int = 0
    error: str | None = None

    @classmethod
    def for_run(cls, cfg: RunSettings | dict[str, Any], cache: ResultCache, device: str | None = None) -> StoredRuns:
        cfg = RunSettings.coerce(cfg)
        return cls(cache, settings_key(cfg, device), float(cfg.training.beta), float(cfg.training.learning_rate))

    def key(self, job: Job, code_hash: str) -> RunKey:
        lr = job.learning_rate if job.learning_rate is not None else self.default_lr
        beta = job.beta if job.beta is not None else self.beta
        return RunKey(code_hash, self.task, float(beta), job.seed, job.split, float(lr))

    def lookup(self, job: Job, code_hash: str) -> JobResult | None:
        if self.error is not None:
            return None
        try:
            found = self.cache.get_result(self.key(job, code_hash), job)
        except (sqlite3.Error, ValueError) as err:
            self.error = f"cannot read {self.cache.path}: {err}"
            return None
        self.hits += found is not None
        return found

    def save(self, result: JobResult, code_hash: str) -> None:
        if self.error is not None or not storable(result) or result.cached:
            return
        try:
            self.cache.put(self.key(result.job, code_hash), result)
        except sqlite3.Error as err:
            self.error = f"cannot write {self.cache.path}: {err}"
            return
        self.stored += 1

    def close(self) -> None:
        self.cache.close()
