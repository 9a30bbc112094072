"""Entry point of a sandboxed worker process (``python -m discopop.execution.worker``); never imported by the loop.

A worker imports torch/transformers/TRL, loads the task and builds its ``FineTuner`` once (the
expensive part), seals itself (``sandbox.seal``: seccomp and the runtime guard), and then serves
requests until told to exit:

* ``{"op": "init", "task": {...}, "training": {...}, "kl_coef": x}`` -> :class:`~discopop.execution.messages.InitReply`
  (the child-side isolation layers that are active, and where the fine-tune runs: CUDA initialises here, before
  ``seal``)
* ``{"op": "check", "code": src, "beta": b}`` -> :class:`~discopop.execution.messages.CheckReply` (``beta``,
  optional: the training beta the fingerprint and diagnostics are measured at; default the init message's
  ``training.beta``, else ``checks.DEFAULT_BETA``, the default config's)
* ``{"op": "train", "code": src, "seed": n, "split": s, "learning_rate": lr[, "beta": b]}`` (optional
  ``step_fraction``: a short fine-tune of that share of the steps; ``full_steps`` in the reply is a full run's)
  -> :class:`~discopop.execution.messages.TrainReply` (a judged task's carries ``completions``; its reward is left
  to the main process's judge)

Any request may instead get a :class:`~discopop.execution.messages.FailureReply` (the stage and one line). Every
reply is sent as its ``to_wire()`` (versioned; the executor parses it with ``messages.parse_reply``). A reply with
``"sandbox_exit": true`` is the worker's last (``SandboxedProcess`` waits for it to end).

Candidate code never runs here. The parent hands each check/train job a loss oracle (``discopop.sandbox.oracle``,
a separate sandboxed process that loads the candidate; one per candidate, ``sandbox.oracle_keep``) over the control
socket
in ``DISCOPOP_ORACLE_CONTROL_FD``; the job's loss is a :class:`~discopop.sandbox.remote_loss.RemoteLoss` on
it, so the checks, the fine-tune and the score below are computed by trusted code and the reply is
this process's own. A broken oracle channel fails the job at stage ``oracle``; what the oracle says
stopped its candidate (static check, load error, its runtime guard or state watch) keeps its stage
(``static``, ``load``, ``guard``). ``init`` may carry ``oracle_timeout`` (seconds per oracle call);
``init`` may also carry ``fused_backward`` (false: two oracle round trips per training step, as before);
``check``/``train`` carry ``oracle``: the tag the parent sent that job's oracle socket with.

The worker still puts the child-side OS layers on itself first (``sandbox.lock_down``), installs
the runtime guard after set-up and audits global state after every job (defence in depth: with the
oracle in place nothing here should trip them).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from discopop.execution.messages import CheckReply, FailureReply, InitReply, Reply, TrainReply
from discopop.sandbox.state_watch import StateWatch
from discopop.text import error_line


class Worker:
    def __init__(self, layers: list[str] | None = None, control: socket.socket | None = None) -> None:
        self.fine_tuner = None
        self.threads = 1
        self.layers = list(layers or [])
        self.watch: StateWatch | None = None
        self.control = control  # where the parent hands over each job's loss oracle (SCM_RIGHTS)
        self.oracle_timeout = 10.0
        self.fused_backward = True  # one oracle round trip per training step (RemoteLoss's ``fused``)
        self.beta: float | None = None  # the training beta, from the init message's training config

    def init(self, msg: dict[str, Any]) -> InitReply:
        started = time.perf_counter()
        import torch  # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox

        # The settings crossed as JSON (``WorkerSpec``): typed again at once, a bad value failing init in one line.
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.config import (
            ConfigError,
            DiagnosticTaskSettings,
            TrainingSettings,
            task_from_wire,
            training_from_wire,
        )

        try:
            training = training_from_wire(msg["training"]) if msg.get("training") is not None else TrainingSettings()
            task = task_from_wire(msg["task"]) if msg.get("task") is not None else None
        except ConfigError as err:
            raise _Failure("init", str(err)) from None
        self.threads = int(msg.get("threads", 1))
        self.oracle_timeout = float(msg.get("oracle_timeout", self.oracle_timeout))
        self.fused_backward = bool(msg.get("fused_backward", True))
        if msg.get("training") is not None:
            self.beta = float(training.beta)
        torch.set_num_threads(self.threads)
        if isinstance(task, DiagnosticTaskSettings):  # the fast tier: no model, no TRL
            from discopop.fitness.diagnostic_tune import DiagnosticTuner  # lazy: inside the sandbox, as FineTuner

            self.fine_tuner = DiagnosticTuner(task, training, float(msg.get("kl_coef", 0.0)))
        elif task is not None:
            import datasets  # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox

            from discopop.dpo_trainer import use_torch_log_softmax_kernels
            from discopop.fitness.training import FineTuner
            from discopop.tasks import load_task

            use_torch_log_softmax_kernels()  # Triton would compile with a subprocess, which the sandbox refuses

            # Tokenised copies go to a temporary dir (TMPDIR = the work dir), not next to the cached
            # task: Landlock lets a worker write only inside its work directory.
            datasets.disable_caching()
            self.fine_tuner = FineTuner(load_task(task), training, Path(os.environ["DISCOPOP_SANDBOX_DIR"]),
                                        kl_coef=float(msg.get("kl_coef", 0.0)))
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.contract import checks, losses  # noqa: F401 - imported before the guard closes the door
        from discopop.sandbox import (
            remote_loss,  # noqa: F401 - imported before the guard closes the door
            seal,
        )

        sealed = seal(os.environ["DISCOPOP_SANDBOX_DIR"])  # seccomp + the audit guard
        self.watch = StateWatch(self.threads)
        tuner = self.fine_tuner
        return InitReply(seconds=time.perf_counter() - started, sandbox_layers=(*self.layers, *sealed, "state-watch"),
                         device=tuner.device if tuner else "cpu", precision=tuner.precision if tuner else None,
                         lora=bool(tuner and tuner.lora))

    @contextmanager
    def _remote_loss(self, code: str, nonce: str) -> Iterator[Any]:
        """The job's loss: a :class:`RemoteLoss` on the oracle the parent just handed over, loaded with ``code``.

        Whatever the checks or the trainer made of an exception, a link the oracle broke (or whose
        guard it tripped) turns the job into that failure; the link is closed after the job.
        """
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.contract.losses import signature_inputs
        from discopop.sandbox.remote_loss import OracleBroken, OracleLink, OracleRefused, RemoteLoss

        if self.control is None:
            raise _Failure("oracle", "this worker has no oracle channel (start it through the executor)")
        fd = self._receive_oracle(nonce)
        link = OracleLink(socket.socket(fileno=fd), self.oracle_timeout)
        try:
            try:
                link.load(code)
                # the inputs it declares, read here from the code's signature (executing nothing), not from the oracle
                yield RemoteLoss(link, fused=self.fused_backward, inputs=signature_inputs(code))
            except OracleRefused as err:
                raise _Failure(err.stage, str(err)) from None
            except OracleBroken:
                pass
            except _Failure:
                if link.failure is None:
                    raise
            if link.failure is not None:
                raise _Failure(*link.failure)
        finally:
            link.close()

    def _receive_oracle(self, nonce: str) -> int:
        """The oracle socket the parent sent for this job (tagged ``nonce``); stale ones are closed.

        A job that failed before taking its oracle leaves that oracle's socket queued; without the
        tag the next job would take it and every later job would be one oracle behind.
        """
        self.control.settimeout(10.0)
        while True:
            try:
                tag, fds, _, _ = socket.recv_fds(self.control, 64, 4)
            except (OSError, TimeoutError) as err:
                raise _Failure("oracle", f"no loss oracle was handed over: {error_line(err)}") from None
            if not tag:
                raise _Failure("oracle", "the control channel closed")
            if tag.decode(errors="replace") == nonce and len(fds) == 1:
                return fds[0]
            for fd in fds:
                os.close(fd)

    def check(self, msg: dict[str, Any]) -> CheckReply:
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.contract.checks import DEFAULT_BETA, CheckFailed, check_loss

        beta = msg.get("beta")
        beta = float(beta if beta is not None else self.beta if self.beta is not None else DEFAULT_BETA)
        with self._remote_loss(msg["code"], msg.get("oracle", "")) as fn:
            try:
                report = check_loss(fn, seed=int(msg.get("seed", 0)), beta=beta, scale_refs=self._task_refs())
            except CheckFailed as err:
                raise _Failure("numeric", str(err)) from None
            except BaseException as err:  # noqa: BLE001
                raise _Failure("numeric", f"raised {error_line(err)}") from None
        return CheckReply(checks=report.as_dict())

    def train(self, msg: dict[str, Any]) -> TrainReply:
        if self.fine_tuner is None:
            raise _Failure("train", "worker was started without a task")
        if getattr(self.fine_tuner, "exact", False):
            return self._train_exact(msg)
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.dpo_trainer import NonFiniteLoss
        from discopop.sandbox.remote_loss import CandidateError

        if msg.get("tune_seeds"):  # the config refuses it (RunSettings.check); a job that names it anyway fails
            raise _Failure("train", "tune_seeds is for the exact tier (task=diagnostic) only")

        with self._remote_loss(msg["code"], msg.get("oracle", "")) as fn:
            before = self._probe(fn, msg.get("beta"), seed=int(msg["seed"]))
            try:
                result = self.fine_tuner.run(fn, seed=int(msg["seed"]), split=msg.get("split", "search"),
                                             learning_rate=msg.get("learning_rate"), beta=msg.get("beta"),
                                             step_fraction=msg.get("step_fraction"))
            except (NonFiniteLoss, CandidateError) as err:
                raise _Failure("train", str(err)) from None
            except BaseException as err:  # noqa: BLE001
                raise _Failure("train", error_line(err)) from None
            behaviour = self._behaviour_drift(fn, before, msg.get("beta"), int(msg["seed"]))
        score = result.score
        if not all(map(math.isfinite, (score.fitness, score.reward, score.kl))):
            raise _Failure("score", f"non-finite score (reward={score.reward}, kl={score.kl})")
        return TrainReply(
            fitness=score.fitness, reward=score.reward, kl=score.kl, greedy=score.greedy,
            steps=result.steps, full_steps=result.full_steps,
            final_loss=result.final_loss, train_seconds=result.train_seconds,
            step_seconds=result.step_seconds, score_seconds=score.seconds, train_metrics=result.metrics,
            # per prompt of the scored split, in task.prompts(split) order: for paired comparisons (fitness.stats)
            per_prompt=score.per_prompt, per_prompt_kl=[round(k, 6) for k in score.per_prompt_kl],
            # each prompt's greedy reward beside the score the fitness uses (how much signal each carries:
            # benchmarks/task_calibration.py); empty on a judged task
            per_prompt_greedy=score.per_prompt_greedy,
            kl_coef=self.fine_tuner.kl_coef, learning_rate=self.fine_tuner.trainer.args.learning_rate,
            completions=score.completions,  # a judged task: graded by the main process (fitness.judge)
            peak_gpu_mb=result.peak_gpu_mb,  # None on CPU
            behaviour=behaviour,
            # the beta of a job that named one (the protocol's beta axis); None: the run's training.beta
            beta=float(msg["beta"]) if msg.get("beta") is not None else None,
        )

    def _train_exact(self, msg: dict[str, Any]) -> TrainReply:
        """``train`` on the diagnostic tier: its tuner scores exactly and replies in ``train``'s fields itself."""
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.fitness.diagnostic_tune import DiagnosticFailure
        from discopop.sandbox.remote_loss import CandidateError

        with self._remote_loss(msg["code"], msg.get("oracle", "")) as fn:
            before = self._probe(fn, msg.get("beta"), seed=int(msg["seed"]))
            try:
                reply = self.fine_tuner.run(fn, seed=int(msg["seed"]), split=msg.get("split", "search"),
                                            learning_rate=msg.get("learning_rate"), beta=msg.get("beta"),
                                            tune_seeds=int(msg.get("tune_seeds") or 0))
            except (DiagnosticFailure, CandidateError) as err:
                raise _Failure("train", str(err)) from None
            except BaseException as err:  # noqa: BLE001
                raise _Failure("train", error_line(err)) from None
            behaviour = self._behaviour_drift(fn, before, msg.get("beta"), int(msg["seed"]))
        if not all(map(math.isfinite, (reply["fitness"], reply["reward"], reply["kl"],
                                       reply.get("tune_fitness", 0.0)))):
            raise _Failure("score", f"non-finite score (reward={reply['reward']}, kl={reply['kl']}, "
                                    f"tuning seeds {reply.get('tune_fitness')})")
        return TrainReply(**reply, behaviour=behaviour)

    def _training_beta(self, job_beta: float | None = None) -> float:
        """The beta a train job trains at: its own (the protocol's beta axis), else the run's."""
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.contract.checks import DEFAULT_BETA

        beta = job_beta if job_beta is not None else getattr(self.fine_tuner, "beta", None)
        return float(beta if beta is not None else self.beta if self.beta is not None else DEFAULT_BETA)

    def _task_refs(self) -> Any:
        """The reference log-probs of the task's training pairs (chosen, rejected), or None without a task.

        The drawn check inputs are drawn at their scale (``checks.reference_scale``), so a loss meets in the checks
        the magnitudes training feeds it.
        """
        if self.fine_tuner is None:
            return None
        try:
            return self.fine_tuner.reference_logps()
        except Exception:  # noqa: BLE001 - a task without precomputed reference log-probs: the default scale
            return None

    def _probe(self, fn: Any, job_beta: float | None, refs: Any = None, seed: int = 0) -> list[float] | None:
        """The behaviour fingerprint of the job's loss, now, at the job's beta (``checks.probe_fingerprint``), on
        inputs drawn from the job's seed (the same for a job's probes, so only the loss can make them differ)."""
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.contract.checks import probe_fingerprint

        return probe_fingerprint(fn, self._training_beta(job_beta), refs, seed, scale_refs=self._task_refs())

    def _behaviour_drift(self, fn: Any, before: list[float] | None, job_beta: float | None,
                         seed: int = 0) -> dict[str, Any]:
        """How far the loss's behaviour moved during training and on the training pairs' own reference log-probs.

        1 - cosine between fingerprints (0: the shape the checks archived is the shape that trained); None where
        the loss failed the probe or the task has no reference log-probs to offer.
        """
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.contract.checks import fingerprint_distance

        after = self._probe(fn, job_beta, seed=seed)
        refs = self._task_refs()
        on_refs = self._probe(fn, job_beta, refs, seed) if refs is not None else None
        return {"during_training": fingerprint_distance(before, after),
                "on_training_refs": fingerprint_distance(after, on_refs)}

    def reset_globals(self) -> None:
        """Undo global torch state a candidate might have changed (defence in depth)."""
        if self.watch is not None:
            self.watch.reset()
            return
        import torch  # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox

        torch.set_grad_enabled(True)
        torch.set_default_dtype(torch.float32)
        torch.set_num_threads(self.threads)

    def audit(self, reply: Reply) -> tuple[Reply, bool]:
        """After a check/train job: turn any trace the candidate left into a ``guard`` failure.

        Returns the reply to send and whether the process must exit (a patched namespace cannot be trusted to be
        undone).
        """
        # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
        from discopop.sandbox import guard_violations

        refused = guard_violations()
        if self.watch is None:
            return reply, False
        state = self.watch.changed_state()
        self.watch.reset()  # first: some global setters rebind attributes (set_default_dtype: torch.Storage)
        patched = self.watch.patched()
        problem = None
        if patched:
            problem = f"changed shared state: {', '.join(patched[:5])} (worker restarted)"
        elif refused:
            problem = f"refused by the runtime guard: {refused[0]}" + (
                f" (and {len(refused) - 1} more)" if len(refused) > 1 else "")
        elif state:
            problem = f"changed torch global state: {'; '.join(state)}"
        if problem:
            earlier = reply.error if isinstance(reply, FailureReply) else None
            earlier = None if earlier and "sandbox: " in earlier else earlier  # the refusal itself
            reply = FailureReply("guard", problem + (f"; then {earlier}" if earlier else ""))
        return reply, bool(patched)


class _Failure(Exception):
    def __init__(self, stage: str, error: str):
        self.stage = stage
        self.error = error


def main() -> None:
    # lazy: the worker imports nothing heavy before lock_down; then only inside its sandbox
    from discopop.sandbox import child_connections, lock_down

    # First thing, while this process has a single thread (see lock_down).
    layers = lock_down(os.environ["DISCOPOP_SANDBOX_DIR"], network=os.environ.get("DISCOPOP_SANDBOX_NETWORK") == "1")
    recv, send = child_connections()
    control_fd = os.environ.get("DISCOPOP_ORACLE_CONTROL_FD")
    worker = Worker(layers, socket.socket(fileno=int(control_fd)) if control_fd else None)
    handlers = {"init": worker.init, "check": worker.check, "train": worker.train}
    while True:
        try:
            msg = json.loads(recv.recv_bytes())
        except EOFError:
            return
        if msg.get("op") == "exit":
            return
        started = time.perf_counter()
        reply: Reply
        try:
            reply = handlers[msg["op"]](msg)
        except _Failure as fail:
            reply = FailureReply(fail.stage, fail.error)
        except BaseException as err:  # noqa: BLE001 - report, never die silently
            reply = FailureReply(str(msg.get("op", "?")), error_line(err), traceback.format_exc(limit=3)[-1500:])
        must_exit = False
        if msg.get("op") in ("check", "train"):
            try:
                reply, must_exit = worker.audit(reply)
            except BaseException as err:  # noqa: BLE001 - a broken audit is itself a reason to stop
                reply = FailureReply("guard", f"state check failed: {error_line(err)}")
                must_exit = True
        try:
            worker.reset_globals()
        except BaseException:  # noqa: BLE001
            must_exit = True
        wire = replace(reply, seconds=time.perf_counter() - started).to_wire()
        if must_exit:
            wire["sandbox_exit"] = True  # the sandbox's envelope, not the reply's
        send.send_bytes(json.dumps(wire).encode())
        if must_exit:
            return


def leave() -> None:
    """End the process without the interpreter's teardown: nothing of a worker outlives it (the parent removes its
    work dir), and tearing down torch, transformers and TRL cost ~1.3 CPU-s and as long a wait for the parent at
    each worker's close (docs/results.md, "The suite's time, seventh stop")."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
    leave()
