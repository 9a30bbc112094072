"""Where candidate work runs: a pool of warm sandboxed workers behind a small interface.

The loop only sees :class:`Executor.run` (jobs in, results out as they finish), so a distributed
backend can replace the local pool without touching the loop. Each local worker is a
:class:`~discopop.sandbox.SandboxedProcess` that paid the torch/transformers/TRL import and the
trainer construction once; a worker that times out or dies is killed as a group and replaced,
and its job is reported as failed with the reason. Candidate code runs in neither: each job gets a
loss oracle (``oracle_supply``; fresh per candidate, kept for that candidate's later jobs by
``oracle_keep``) whose socket the worker receives, so the worker's reply (the verdict, the fitness) is
computed by trusted code only. A freed worker takes the job whose candidate's oracle it holds (``_pick``).

``factory.make_executor`` places each local worker (``placed_specs``): a CPU worker sees no GPU; a CUDA worker
is pinned to one GPU with ``CUDA_VISIBLE_DEVICES`` (``discopop.execution.devices``) and runs under
``Limits.uses_cuda`` (no address-space rlimit; the memory cgroup caps it). Its oracles stay CPU-only.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from discopop.config import ExecutorSettings, TaskSettings, TrainingSettings, plain
from discopop.execution.devices import plan_local_workers
from discopop.execution.messages import CheckReply, FailureReply, InitReply, MessageError, TrainReply, parse_reply
from discopop.sandbox import READ_PATHS_VAR, Limits, SandboxDied, SandboxedProcess, SandboxTimeout, clean_text
from discopop.sandbox.oracle_keep import KeptOracles, code_key
from discopop.sandbox.oracle_supply import (
    OracleStartFailed,
    OracleSupply,
    death_grace,
    explain_oracle_death,
    worker_control,
)
from discopop.sandbox.parent import WorkerLink
from discopop.tasks import cache_root

_TRAINING = TrainingSettings()


@dataclass
class Job:
    row_id: int
    code: str
    stage: str  # "check" or "train"
    seed: int = 0
    split: str = "search"  # held-out prompts to score on: "search" or "confirm"
    learning_rate: float | None = None  # None: training.learning_rate; the fair protocol sets each loss's own
    # A short fine-tune (``search.fidelity``): this share of a full run's steps. Never stored (result_store's key
    # lacks it), so such jobs go to the executor directly, never through the reference store.
    step_fraction: float | None = None
    beta: float | None = None  # None: training.beta; set where the protocol's beta axis (training.beta_grid) is on
    # A grid-point job of the tuning protocol: fine-tune also on this many tuning seeds, whose mean chooses the rate
    # (training.tune_seeds; the exact tier only). 0: none, and the message is as before.
    tune_seeds: int = 0


@dataclass
class JobResult:
    job: Job
    ok: bool
    stage: str
    error: str | None = None
    reply: CheckReply | TrainReply | None = None  # the worker's reply to a job that succeeded
    seconds: float = 0.0
    # The machinery failed, not the loss (the worker died or timed out, the oracle could not start, the judge did
    # not answer): says nothing about the loss, so a result store never keeps it (``fitness.result_store``).
    machinery: bool = False
    cached: bool = False  # the result came from a result store: nothing ran now (its timings are an earlier run's)

    @property
    def trained(self) -> TrainReply:
        """The train reply of a successful train job (a programming error to ask another result)."""
        if not isinstance(self.reply, TrainReply):
            raise TypeError(f"job of row {self.job.row_id} has no train reply (ok={self.ok}, stage={self.stage})")
        return self.reply

    @property
    def checked(self) -> CheckReply:
        """The check reply of a successful check job (a programming error to ask another result)."""
        if not isinstance(self.reply, CheckReply):
            raise TypeError(f"job of row {self.job.row_id} has no check reply (ok={self.ok}, stage={self.stage})")
        return self.reply


class Executor(ABC):
    """Runs check/train jobs on candidate code, never in the calling process."""

    @abstractmethod
    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        """Run ``jobs`` and yield each result as it finishes (order not guaranteed)."""

    @abstractmethod
    def close(self) -> None: ...

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Start the workers now, so the first candidate does not pay for it."""

    @property
    def parallelism(self) -> int:
        """Jobs that run at once: the loop evaluates batches this wide."""
        return 1


class WrappingExecutor(Executor):
    """An executor that adds one concern around ``inner`` (progress, a judge, work run ahead) and passes the rest
    through, so each wrapper states only what it adds and none forgets to pass on the device or the warm-up."""

    def __init__(self, inner: Executor):
        self.inner = inner

    def warm_up(self) -> None:
        self.inner.warm_up()

    @property
    def parallelism(self) -> int:
        return self.inner.parallelism

    @property
    def device(self) -> str | None:
        return getattr(self.inner, "device", None)

    def close(self) -> None:
        self.inner.close()


@dataclass
class WorkerSpec:
    """What a worker needs to warm up: the task and training settings (they cross to it as JSON, ``asdict``).

    ``task`` None: a worker without a task (checks only); ``training`` None: the default training settings.
    """

    task: TaskSettings | None
    training: TrainingSettings | None
    kl_coef: float = 0.0
    # The training settings' defaults (declared, with their help, on TrainingSettings); worker_spec sets the run's.
    threads: int = _TRAINING.threads
    limits: Limits = field(default_factory=Limits)
    init_timeout: float = 600.0
    check_timeout: float = _TRAINING.check_timeout
    train_timeout: float = _TRAINING.train_timeout
    oracle_timeout: float = _TRAINING.oracle_timeout
    oracle_module: str = "discopop.sandbox.oracle"  # tests swap in a variant whose static check is fooled
    device: str = "cpu"  # where this worker trains ("cpu" | "cuda"); see discopop.execution.devices
    # CUDA_VISIBLE_DEVICES of a CUDA worker (its one GPU); None: keep this process's (a Ray actor's GPU)
    visible_devices: str | None = None
    # Loss oracles kept for the candidates this worker served last (``sandbox.oracle_keep``); 0: one per job.
    kept_oracles: int = 2
    # One oracle round trip per training step (``remote_loss.RemoteLoss``'s ``fused``); False: two, as before.
    fused_backward: bool = True
    # How oracles start (``executor.oracle_start``): "spawn" or "fork" (``oracle_fork``); None: the module default.
    oracle_start: str | None = None

    def placed(self, device: str, visible_devices: str | None) -> WorkerSpec:
        """This spec on ``device`` (resolved: "cpu" or "cuda"), which also goes into its training settings, so
        ``device=auto`` means the same in the worker as in the plan."""
        training = replace(self.training, device=device) if self.training is not None else None
        return replace(self, device=device, visible_devices=visible_devices, training=training)

    def worker_limits(self) -> Limits:
        """The worker's limits: a CUDA worker drops only the address-space rlimit (see ``Limits.uses_cuda``)."""
        return replace(self.limits, uses_cuda=self.device == "cuda")

    def worker_env(self) -> dict[str, str]:
        if self.device == "cuda" and self.visible_devices is not None:
            return {"CUDA_VISIBLE_DEVICES": self.visible_devices}
        return {}


# The stages a worker may name in a failed reply; anything else (a forged reply) becomes the job's stage.
WORKER_STAGES = ("check", "train", "static", "load", "numeric", "guard", "score", "sandbox", "oracle")


def task_for_worker(task: TaskSettings | None) -> tuple[dict[str, Any] | None, list[str]]:
    """The task settings as a sandboxed worker must receive them (plain, for JSON), and the paths it may read.

    A worker may read only what it is granted, and its HOME is its work dir: the task cache is
    resolved here (``~`` means this process's home) and named, with every local model, tokenizer,
    dataset or reward-model path of a hub task.
    """
    if task is None:
        return None, []
    wire = plain(task)
    cache = cache_root(wire).resolve()
    paths = [str(cache)]
    for key in ("model", "tokenizer", "dataset", "reward_model"):
        value = wire.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            paths.append(str(Path(value).expanduser().resolve()))
    return {**wire, "cache_dir": str(cache)}, paths


class WarmWorker(WorkerLink):
    """One sandboxed worker process, restarted after a timeout or a crash, fed a loss oracle per candidate."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.proc: SandboxedProcess | None = None
        self.control: socket.socket | None = None  # hands each job's oracle to the worker
        # Oracles always get the base limits: CPU-only (no GPU visible), every layer including rlimit-as.
        self.oracles = OracleSupply(replace(spec.limits, uses_cuda=False), spec.oracle_module,
                                    start=spec.oracle_start)
        self.kept = KeptOracles(spec.kept_oracles)  # one oracle per candidate, not per job
        self.busy_key: str | None = None  # the code key of the job running now (the executor's scheduling hint)
        self.starts = 0
        self.init_seconds = 0.0
        self.info: dict[str, Any] = {}  # the last init reply: device, precision, lora, seconds
        self.layers: list[str] = []  # sandbox layers of the current worker process, once started
        self.missing_layers: dict[str, str] = {}  # layer -> why it could not be applied

    def ensure_started(self) -> SandboxedProcess:
        """The live worker process, started (or restarted after a crash or timeout) if needed."""
        if self.proc is not None and self.proc.alive():
            return self.proc
        self.close_link()
        started = time.perf_counter()
        self.oracles.prespawn()  # imports torch while the worker does
        task, readable = task_for_worker(self.spec.task)
        self.control, theirs, env = worker_control()
        try:
            env = {**env, **self.spec.worker_env(), READ_PATHS_VAR: os.pathsep.join(readable)}
            self.proc = SandboxedProcess("discopop.execution.worker", self.spec.worker_limits(), env=env,
                                         pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.starts += 1
        try:
            reply = parse_reply("init", self.proc.request(
                {"op": "init", "task": task, "training": plain(self.spec.training), "kl_coef": self.spec.kl_coef,
                 "threads": self.spec.threads, "oracle_timeout": self.spec.oracle_timeout,
                 "fused_backward": self.spec.fused_backward}, timeout=self.spec.init_timeout))
        except (SandboxTimeout, SandboxDied) as err:
            tail = self.proc.output_tail(800)
            raise RuntimeError(f"worker failed to start: {err}\n{tail}") from None
        except MessageError as err:
            self.proc.close()
            raise RuntimeError(f"worker failed to start: {err}") from None
        if isinstance(reply, FailureReply):
            raise RuntimeError(f"worker failed to start: {reply.error}\n{reply.traceback or ''}")
        assert isinstance(reply, InitReply)  # parse_reply("init", ...) gives nothing else
        self.init_seconds += time.perf_counter() - started
        self.info = {"device": reply.device, "precision": reply.precision, "lora": reply.lora,
                     "seconds": reply.seconds}
        self.layers, self.missing_layers = list(self.proc.layers), self.proc.missing_layers()
        return self.proc

    def holds(self) -> set[str]:
        """Code keys whose oracle this worker holds (kept, or serving the job running now)."""
        return self.kept.keys() | ({self.busy_key} if self.busy_key else set())

    def run(self, job: Job) -> JobResult:
        proc = self.ensure_started()
        timeout = self.spec.check_timeout if job.stage == "check" else self.spec.train_timeout
        key = code_key(job.code)
        self.busy_key = key
        try:
            oracle = self.kept.take(key) or self.oracles.take()
        except OracleStartFailed as err:
            self.busy_key = None
            return JobResult(job, False, "sandbox", str(err), machinery=True)
        started = time.perf_counter()
        reply = None
        died: str | None = None
        try:
            tag = oracle.hand_to(self.control, keep=self.kept.size > 0)
            reply = parse_reply(job.stage, proc.request(
                {"op": job.stage, "code": job.code, "seed": job.seed, "split": job.split,
                 "learning_rate": job.learning_rate, "oracle": tag,
                 **({"beta": job.beta} if job.beta is not None else {}),
                 **({"step_fraction": job.step_fraction} if job.step_fraction is not None else {}),
                 **({"tune_seeds": job.tune_seeds} if job.tune_seeds else {})},
                timeout=timeout))
        except SandboxTimeout as err:
            return JobResult(job, False, job.stage, f"{job.stage} {err}", seconds=time.perf_counter() - started,
                             machinery=True)
        except (SandboxDied, OSError) as err:
            return JobResult(job, False, job.stage, clean_text(err), seconds=time.perf_counter() - started,
                             machinery=True)
        except MessageError as err:  # another version, or a malformed reply: the worker's fault, not the loss's
            return JobResult(job, False, job.stage, clean_text(err), seconds=time.perf_counter() - started,
                             machinery=True)
        finally:
            self.busy_key = None
            if isinstance(reply, CheckReply | TrainReply):
                self.kept.keep(key, oracle)  # this candidate's next job may use it (killed if not keepable)
            else:
                # A job the oracle failed by hanging up: give its exit a moment to be seen, to say why.
                failed = reply if isinstance(reply, FailureReply) else None
                died = oracle.close(grace=death_grace(failed and failed.stage, failed and failed.error))
        elapsed = time.perf_counter() - started
        if isinstance(reply, FailureReply):  # the reply is cleaned already (SandboxedProcess.request)
            stage, error = explain_oracle_death(reply.stage, reply.error, died)
            stage = stage if stage in WORKER_STAGES else job.stage  # the stage is a name
            return JobResult(job, False, stage, clean_text(error or "failed without a reason"), seconds=elapsed)
        return JobResult(job, True, job.stage, None, reply=reply, seconds=elapsed)

    def close(self) -> None:
        self.close_link()
        self.kept.close()
        self.oracles.close()


class LocalExecutor(Executor):
    """``workers`` warm sandboxed processes on this machine.

    ``specs`` (one per worker) place each on its own device (``make_executor`` pins CUDA workers to
    GPUs); otherwise all ``workers`` share ``spec``.
    """

    def __init__(self, spec: WorkerSpec, workers: int = 1, specs: list[WorkerSpec] | None = None):
        if workers < 1:
            raise ValueError(f"executor.workers must be >= 1, got {workers}")
        specs = specs or [spec] * workers
        self.workers = [WarmWorker(s) for s in specs]
        self._idle: queue.Queue[WarmWorker] = queue.Queue()
        for w in self.workers:
            self._idle.put(w)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="discopop-worker")
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Start every worker now (in parallel) so the first candidate does not pay for it."""
        list(self._pool.map(lambda w: w.ensure_started(), self.workers))

    def _pick(self, worker: WarmWorker, todo: list[Job]) -> Job:
        """The job a freed worker runs next: one whose candidate's oracle it holds, else one whose candidate no
        other worker holds, else the first; so a candidate's jobs follow its oracle (results do not depend on
        which worker or in which order: ``sandbox.oracle_keep``)."""
        with self._lock:
            here = worker.holds()
            elsewhere = set().union(*(w.holds() for w in self.workers if w is not worker))
            keys = [code_key(job.code) for job in todo]
            index = next((i for i, k in enumerate(keys) if k in here), None)
            if index is None:
                index = next((i for i, k in enumerate(keys) if k not in elsewhere), 0)
            worker.busy_key = keys[index]
            return todo.pop(index)

    def _run_next(self, todo: list[Job]) -> JobResult:
        worker = self._idle.get()
        try:
            return worker.run(self._pick(worker, todo))
        finally:
            self._idle.put(worker)

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        todo = list(jobs)  # each task takes one job from here once it has a worker (``_pick``)
        pending = {self._pool.submit(self._run_next, todo) for _ in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()

    @property
    def parallelism(self) -> int:
        return len(self.workers)

    @property
    def device(self) -> str | None:
        """Where the workers train ("cpu" or "cuda", ``auto`` resolved); None if they differ."""
        devices = {w.spec.device for w in self.workers}
        return devices.pop() if len(devices) == 1 else None

    @property
    def restarts(self) -> int:
        return sum(max(0, w.starts - 1) for w in self.workers)

    def sandbox_report(self) -> list[dict[str, Any]]:
        """Per started worker: its device, GPU, active sandbox layers and the layers it lacks (with reasons)."""
        return [{"device": w.spec.device, "visible_devices": w.spec.visible_devices, **w.info, "layers": w.layers,
                 "missing_layers": w.missing_layers} for w in self.workers if w.starts]

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def placed_specs(spec: WorkerSpec, executor: ExecutorSettings, workers: int,
                 device_count: int | None = None) -> list[WorkerSpec]:
    """One spec per local worker, each with its resolved device and GPU (``devices.plan_local_workers``)."""
    placements = plan_local_workers(spec.training or _TRAINING, executor, workers, device_count)
    return [spec.placed(p.device, p.visible_devices) for p in placements]
