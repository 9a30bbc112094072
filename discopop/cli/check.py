"""``discopop check``: run a loss file through every layer a candidate meets, and say which one stopped it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from discopop.contract.diagnostics import summarize
from discopop.contract.losses import LossRejected, decode_source, normalise_loss, signature_inputs, static_check
from discopop.execution.messages import CheckReply, FailureReply, MessageError, Reply, parse_reply
from discopop.sandbox import Limits, SandboxDied, SandboxedProcess, SandboxTimeout
from discopop.sandbox.parent import WorkerLink

if TYPE_CHECKING:
    from discopop.sandbox.oracle_fork import OracleTemplate

WORKER_MODULE = "discopop.execution.worker"
INIT_TIMEOUT = 120.0  # seconds for a check worker's start (importing torch), not counted in a check's timeout


class CheckWorker(WorkerLink):
    """A sandboxed worker for checks, with the control socket its oracles are handed over on.

    ``check_in_worker`` starts a one-shot one per check (``discopop check``). A caller checking many files (the
    hostile corpora) keeps one and passes it (``worker=``): it is started on first use and again after a check
    killed it (a timeout, a reply it could not read), so that caller pays one worker start (a torch import) per
    worker, not one per file, as a run's warm workers do. Candidate code never runs in it: each check's oracle,
    a process of its own, runs the candidate. One check at a time.
    """

    def __init__(self, limits: Limits | None = None, env: dict[str, str] | None = None,
                 module: str = WORKER_MODULE):
        """``env``: extra environment variables for the worker process (tests tag it); ``module``: its entry."""
        self.limits = limits or Limits()
        self.env = dict(env or {})
        self.module = module
        self.proc: SandboxedProcess | None = None
        self.control: socket.socket | None = None  # where each check's oracle is handed over
        self.ready = False  # its ``init`` was answered
        self.starts = 0

    def start(self) -> bool:
        """Start the worker process unless a ready one is alive; True if it was started now (its ``init`` is owed:
        :meth:`init`)."""
        if self.alive():
            return False
        self.close()
        # lazy: the oracle supply imports torch (the oracle's wire format): only a file past the static check pays it
        from discopop.sandbox.oracle_supply import worker_control

        control, theirs, control_env = worker_control()
        try:
            self.proc = SandboxedProcess(self.module, self.limits, env={**self.env, **control_env},
                                         pass_fds=(theirs.fileno(),))
        except BaseException:
            control.close()
            raise
        finally:
            theirs.close()
        self.control = control
        self.starts += 1
        return True

    def init(self) -> FailureReply | None:
        """Ask the started worker's ``init`` (no task, no training settings); its failure, or None once ready.
        Raises what ``SandboxedProcess.request`` and ``parse_reply`` raise (the worker is then no longer used)."""
        assert self.proc is not None, "start() first"
        started = parse_reply("init", self.proc.request({"op": "init", "task": None, "training": None},
                                                        timeout=INIT_TIMEOUT))
        if isinstance(started, FailureReply):
            return started
        self.ready = True
        return None

    def alive(self) -> bool:
        """A ready worker process is running (a check that timed out killed it)."""
        return self.proc is not None and self.ready and self.proc.alive()

    def close(self) -> None:
        """Stop the worker (if any) and close its control socket; a later :meth:`start` starts a fresh one."""
        self.ready = False
        self.close_link()


def check_source(source: str, timeout: float = 30.0, limits: Limits | None = None,
                 env: dict[str, str] | None = None, beta: float | None = None,
                 template: OracleTemplate | None = None, worker: CheckWorker | None = None) -> dict[str, Any]:
    """Static check here (AST only), then load + numeric checks in a one-shot sandboxed worker.

    ``layer`` names what stopped the loss: ``static`` (AST), ``load`` (its module failed to run),
    ``numeric`` (a check failed or the loss raised), ``guard`` (the oracle's runtime guard refused
    an action, or the loss changed global/shared state there), ``oracle`` (the loss oracle broke the
    channel: malformed, oversized, late or unexpected replies) or ``sandbox`` (the worker or the
    oracle was killed: timeout, output flood, memory, or it died). ``timeout`` bounds the checks, not the worker's
    start (importing torch). ``env`` adds environment variables for the worker (tests tag it).
    ``beta`` is the training beta the diagnostics are measured at (None: ``checks.DEFAULT_BETA``, the default
    config's ``training.beta``).
    A valid verdict carries ``uses_beta``, ``diagnostics`` (how the loss pushes: recorded, never a
    rejection), ``summary`` (the diagnostics in one line) and ``trl``/``trl_config``: TRL's own ``loss_type``
    combination with the same gradients at that beta, or None (``report/trl_options.py``). A loss in the original
    DiscoPOP method form is checked as rewritten to the contract form, and ``normalised`` shows that text.
    ``template``: fork the oracle from this running template of the caller's (``check_in_worker``), not spawn it.
    ``worker``: run the checks in this kept worker of the caller's (``check_in_worker``), not in a one-shot one.
    """
    try:
        info = static_check(source)  # parsed under contract.syntax's process-wide lock (CPython 3.11 ast)
        normalised = normalise_loss(source)
    except LossRejected as err:
        return {"valid": False, "layer": "static", "reason": str(err)}
    # One oracle only: a template would cost what a spawned oracle costs before its first fork, so spawn it (unless
    # the caller keeps one running for many checks).
    verdict = check_in_worker(source, timeout, limits, env, beta=beta, oracle_start="spawn", template=template,
                              worker=worker)
    if verdict["valid"]:
        verdict["function"] = info.function_name
    if normalised != source:
        verdict["normalised"] = normalised
    return verdict


def check_in_worker(source: str, timeout: float = 30.0, limits: Limits | None = None,
                    env: dict[str, str] | None = None, module: str = WORKER_MODULE,
                    oracle_module: str | None = None, beta: float | None = None,
                    oracle_start: str | None = None, template: OracleTemplate | None = None,
                    worker: CheckWorker | None = None) -> dict[str, Any]:
    """Load + numeric checks in a one-shot sandboxed worker fed a one-shot loss oracle.

    ``module`` / ``oracle_module`` let tests swap in variants (e.g. an oracle whose static check is fooled; None:
    ``oracle_supply.ORACLE_MODULE``).
    ``oracle_start`` "fork": the oracle is forked from a template of its own (``oracle_fork``; no faster for one
    check, there so that the hostile corpora run through that path too); None: ``oracle_supply``'s default.
    ``template``: a running template of the caller's (its module, limits and environment; left running) to fork the
    oracle from instead, whatever ``oracle_start`` says: a run's worker forks every candidate's oracle from one, and
    so do the hostile corpora, whose checks would otherwise each start a template (a torch import) for one fork.
    ``worker``: a :class:`CheckWorker` of the caller's to run the checks in (started here if it is not running; left
    running, unless the check killed it), instead of a one-shot worker of ``module`` with ``limits`` and ``env``
    (``env`` then goes to the oracle only).
    """
    # lazy: these import torch (the oracle's wire format, TRL's options): only a file past the static check pays it
    from discopop.report.trl_options import match_trl
    from discopop.sandbox import oracle_supply
    from discopop.sandbox.oracle_supply import (
        OracleProcess,
        OracleStartFailed,
        OracleSupply,
        death_grace,
        explain_oracle_death,
    )

    oracle_module = oracle_module or oracle_supply.ORACLE_MODULE
    limits = limits or Limits()
    one_shot = worker is None
    worker = worker or CheckWorker(limits, env, module)
    forking = template is None and (oracle_start or oracle_supply.DEFAULT_ORACLE_START) == "fork"
    supply = OracleSupply(limits, oracle_module, env, standby=1, start="fork") if forking else None
    oracle = None if supply else OracleProcess(limits, oracle_module, env, template=template)
    reply: Reply | None = None
    try:
        if supply:
            supply.prespawn()  # the template imports torch while the worker starts
        fresh = worker.start()
    except BaseException:
        if oracle:
            oracle.close()
        if supply:
            supply.close()
        if one_shot:
            worker.close()
        raise
    try:
        failed = worker.init() if fresh else None
        if failed is not None:
            return {"valid": False, "layer": "sandbox", "reason": f"worker failed to start: {failed.error}"}
        assert worker.proc is not None and worker.control is not None  # started above
        oracle = oracle or supply.take(refill=False)
        oracle.wait_ready(120)
        tag = oracle.hand_to(worker.control)
        reply = parse_reply("check", worker.proc.request(
            {"op": "check", "code": source, "oracle": tag, "beta": beta}, timeout=timeout))
    except MessageError as err:  # a worker of another version: the machinery, not the loss
        return {"valid": False, "layer": "sandbox", "reason": str(err)}
    except OracleStartFailed as err:
        return {"valid": False, "layer": "sandbox", "reason": str(err)}
    except SandboxTimeout as err:
        return {"valid": False, "layer": "sandbox", "reason": f"numeric checks {err}"}
    except SandboxDied as err:
        return {"valid": False, "layer": "sandbox", "reason": str(err)}
    finally:
        failed = reply if isinstance(reply, FailureReply) else None
        died = None if oracle is None else oracle.close(grace=death_grace(failed and failed.stage,
                                                                          failed and failed.error))
        if one_shot or not worker.alive():  # a kept worker stays for the next check, unless this one killed it
            worker.close()
        if supply:
            supply.close()
    if isinstance(reply, FailureReply):
        stage, error = explain_oracle_death(reply.stage, reply.error, died)
        return {"valid": False, "layer": stage, "reason": error}
    assert isinstance(reply, CheckReply)  # parse_reply("check", ...) gives nothing else
    checks = reply.checks
    diagnostics = checks.get("diagnostics") or {}
    options = match_trl(checks, signature_inputs(source))
    return {"valid": True, "layer": None, "reason": None, "uses_beta": checks["uses_beta"],
            "diagnostics": diagnostics, "summary": summarize(diagnostics),
            "trl": None if options is None else options.as_dict(),
            "trl_config": None if options is None else options.config_text()}


def check_file(path: Path, timeout: float = 30.0, beta: float | None = None) -> dict[str, Any]:
    """Check the file as ``import`` would read it: its bytes, with its BOM and coding cookie (a cookie other than
    utf-8 is refused), not as utf-8 text, which could differ from what Python runs."""
    try:
        source = decode_source(path.read_bytes(), str(path))
    except OSError as err:
        return {"valid": False, "layer": "static", "reason": f"cannot read {path}: {err}"}
    except LossRejected as err:
        return {"valid": False, "layer": "static", "reason": str(err)}
    return check_source(source, timeout=timeout, beta=beta)
