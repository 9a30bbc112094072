"""``discopop check``: run a loss file through every layer a candidate meets, and say which one stopped it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from discopop.contract.diagnostics import summarize
from discopop.contract.losses import LossRejected, decode_source, normalise_loss, signature_inputs, static_check
from discopop.execution.messages import CheckReply, FailureReply, MessageError, Reply, parse_reply
from discopop.sandbox import Limits, SandboxDied, SandboxedProcess, SandboxTimeout

if TYPE_CHECKING:
    from discopop.sandbox.oracle_fork import OracleTemplate


def check_source(source: str, timeout: float = 30.0, limits: Limits | None = None,
                 env: dict[str, str] | None = None, beta: float | None = None,
                 template: OracleTemplate | None = None) -> dict[str, Any]:
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
    """
    try:
        info = static_check(source)  # parsed under contract.syntax's process-wide lock (CPython 3.11 ast)
        normalised = normalise_loss(source)
    except LossRejected as err:
        return {"valid": False, "layer": "static", "reason": str(err)}
    # One oracle only: a template would cost what a spawned oracle costs before its first fork, so spawn it (unless
    # the caller keeps one running for many checks).
    verdict = check_in_worker(source, timeout, limits, env, beta=beta, oracle_start="spawn", template=template)
    if verdict["valid"]:
        verdict["function"] = info.function_name
    if normalised != source:
        verdict["normalised"] = normalised
    return verdict


def check_in_worker(source: str, timeout: float = 30.0, limits: Limits | None = None,
                    env: dict[str, str] | None = None, module: str = "discopop.execution.worker",
                    oracle_module: str | None = None, beta: float | None = None,
                    oracle_start: str | None = None, template: OracleTemplate | None = None) -> dict[str, Any]:
    """Load + numeric checks in a one-shot sandboxed worker fed a one-shot loss oracle.

    ``module`` / ``oracle_module`` let tests swap in variants (e.g. an oracle whose static check is fooled; None:
    ``oracle_supply.ORACLE_MODULE``).
    ``oracle_start`` "fork": the oracle is forked from a template of its own (``oracle_fork``; no faster for one
    check, there so that the hostile corpora run through that path too); None: ``oracle_supply``'s default.
    ``template``: a running template of the caller's (its module, limits and environment; left running) to fork the
    oracle from instead, whatever ``oracle_start`` says: a run's worker forks every candidate's oracle from one, and
    so do the hostile corpora, whose checks would otherwise each start a template (a torch import) for one fork.
    """
    # lazy: these import torch (the oracle's wire format, TRL's options): only a file past the static check pays it
    from discopop.report.trl_options import match_trl
    from discopop.sandbox import oracle_supply
    from discopop.sandbox.oracle_supply import (
        OracleProcess,
        OracleStartFailed,
        OracleSupply,
        explain_oracle_death,
        worker_control,
    )

    oracle_module = oracle_module or oracle_supply.ORACLE_MODULE
    limits = limits or Limits()
    control, theirs, control_env = worker_control()
    forking = template is None and (oracle_start or oracle_supply.DEFAULT_ORACLE_START) == "fork"
    supply = OracleSupply(limits, oracle_module, env, standby=1, start="fork") if forking else None
    oracle = None if supply else OracleProcess(limits, oracle_module, env, template=template)
    reply: Reply | None = None
    try:
        if supply:
            supply.prespawn()  # the template imports torch while the worker starts
        proc = SandboxedProcess(module, limits, env={**(env or {}), **control_env}, pass_fds=(theirs.fileno(),))
    except BaseException:
        if oracle:
            oracle.close()
        if supply:
            supply.close()
        control.close()
        raise
    finally:
        theirs.close()
    try:
        started = parse_reply("init", proc.request({"op": "init", "task": None, "training": None}, timeout=120))
        if isinstance(started, FailureReply):
            return {"valid": False, "layer": "sandbox", "reason": f"worker failed to start: {started.error}"}
        oracle = oracle or supply.take(refill=False)
        oracle.wait_ready(120)
        tag = oracle.hand_to(control)
        reply = parse_reply("check", proc.request({"op": "check", "code": source, "oracle": tag, "beta": beta},
                                                  timeout=timeout))
    except MessageError as err:  # a worker of another version: the machinery, not the loss
        return {"valid": False, "layer": "sandbox", "reason": str(err)}
    except OracleStartFailed as err:
        return {"valid": False, "layer": "sandbox", "reason": str(err)}
    except SandboxTimeout as err:
        return {"valid": False, "layer": "sandbox", "reason": f"numeric checks {err}"}
    except SandboxDied as err:
        return {"valid": False, "layer": "sandbox", "reason": str(err)}
    finally:
        died = None if oracle is None else oracle.close(
            grace=1.0 if isinstance(reply, FailureReply) and reply.stage == "oracle" else 0.0)
        proc.close()
        control.close()
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
