"""Parent side of the loss oracle: spawn a fresh oracle for each candidate and hand its socket to the worker.

Wiring, and why. The parent spawns every oracle (the worker is Landlocked, without capabilities,
and its guard refuses process creation; it could not create a cgroup or start a sandbox). Each
oracle is a :class:`~discopop.sandbox.SandboxedProcess` (every layer) that inherits one end of a
unix ``socketpair``; the parent keeps the other end only until the oracle says ``READY`` (sent
before any candidate code runs), then passes it to the worker with ``SCM_RIGHTS`` over a control
socketpair the worker inherited at start, and closes its own copy. From then on the worker talks
to the oracle directly: a training step costs one round trip on a local socket (two where the trainer's gradient
is not the one a forward assumed, ``remote_loss``), with no hop
through the parent (a parent-side relay would add a thread and two copies per call, and would
make the parent parse untrusted bytes). Already-connected sockets keep working under a seccomp
filter that denies ``connect`` on unix sockets.

A fresh oracle per candidate means no state, thread or patched module reaches another candidate; its
start-up (importing torch, 1-2 s) is hidden by keeping standby oracles spawned while the current job
runs. An oracle whose job ended cleanly may be kept for that candidate's next job (``oracle_keep``: keyed
by the exact code, never handed to other code); any other job's oracle is killed, whole tree, right after it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import warnings
from collections import deque

from discopop.config.training import ORACLE_START, ORACLE_STARTS
from discopop.sandbox import Limits, SandboxedProcess
from discopop.sandbox import oracle_wire as wire
from discopop.sandbox.oracle_fork import ForkedOracleProcess, OracleTemplate, TemplateFailed

ORACLE_MODULE = "discopop.sandbox.oracle"
CONTROL_FD_VAR = "DISCOPOP_ORACLE_CONTROL_FD"
# What ``WorkerSpec`` and ``check_in_worker`` use when not told (the run's setting, ``executor.oracle_start``, reaches
# them through ``loop.worker_spec``): the setting's own default, read from the settings (one place). Tests flip it
# (``--oracle-start``, conftest) to run the hostile corpora both ways; the OS corpus spawns unless told
# (``tests/test_hostile_os.py``).
DEFAULT_ORACLE_START = ORACLE_START


class OracleStartFailed(RuntimeError):
    pass


class OracleProcess:
    """One sandboxed oracle plus the end of its socket that will go to the worker."""

    def __init__(self, limits: Limits, module: str = ORACLE_MODULE, env: dict[str, str] | None = None,
                 template: OracleTemplate | None = None):
        """``template``: fork it from that (``oracle_fork``; raises :class:`TemplateFailed`), else spawn it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.forked = template is not None
        try:
            if template is not None:
                self.proc: SandboxedProcess = ForkedOracleProcess(template, env, theirs.fileno())
            else:
                fd_env = {"DISCOPOP_ORACLE_FD": str(theirs.fileno())}
                self.proc = SandboxedProcess(module, limits, env={**(env or {}), **fd_env},
                                             pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock: socket.socket | None = ours
        self.ready = False

    def wait_ready(self, timeout: float) -> None:
        """Read the oracle's ``READY`` frame (exact size, with a deadline) or raise :class:`OracleStartFailed`."""
        if self.ready:
            return
        try:
            request_id, kind, _, _, length = wire.read_header(self.sock, time.monotonic() + timeout)
        except wire.ChannelError as err:
            detail = self.proc.exit_reason() if not self.proc.alive() else str(err)
            raise OracleStartFailed(f"loss oracle failed to start: {detail}") from None
        if (request_id, kind, length) != (wire.READY_ID, wire.READY, 0):
            raise OracleStartFailed("loss oracle failed to start: unexpected first frame")
        self.ready = True

    def hand_to(self, control: socket.socket, keep: bool = False) -> str:
        """Pass our end of the socket to the worker behind ``control``; return its tag.

        The job message carries the tag (``"oracle"``), so the worker takes this socket and no stale one.
        ``keep``: hold on to our copy, so that this oracle can be handed again to a later job of the same
        candidate (``oracle_keep``); the parent never reads from it, it only checks that it is silent.
        """
        tag = os.urandom(16).hex()
        socket.send_fds(control, [tag.encode()], [self.sock.fileno()])
        if not keep:
            self.sock.close()
            self.sock = None
        return tag

    def close(self, grace: float = 0.0) -> str | None:
        """Kill the oracle's tree; return why it had died on its own (waiting up to ``grace`` s for that), if it had."""
        if grace and self.proc.alive():
            try:
                self.proc.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        died = None if self.proc.alive() else self.proc.exit_reason()
        self.proc.kill()
        self.proc.close()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return died


class OracleSupply:
    """Fresh oracles on demand, ``standby`` of them started in advance so their start-up overlaps the jobs.

    One standby is not enough: a candidate's numeric checks take a fraction of a second, less than an
    oracle's start (importing torch), so the fine-tune right after them would wait for the next one.

    ``start="fork"``: oracles are forked from one template per supply (``oracle_fork``), started at the first
    ``prespawn``; standbys are forked once it is ready. If the template cannot start, answer or fork, or a forked
    oracle fails to start, the supply says why in one line (a ``RuntimeWarning``; ``fallback`` keeps it) and
    spawns oracles from then on: a broken template never stops a run.
    """

    def __init__(self, limits: Limits, module: str = ORACLE_MODULE, env: dict[str, str] | None = None,
                 start_timeout: float = 120.0, standby: int = 2, start: str | None = None):
        start = start or DEFAULT_ORACLE_START
        if start not in ORACLE_STARTS:
            raise ValueError(f"oracle start must be one of {', '.join(ORACLE_STARTS)}, got {start!r}")
        self.limits, self.module, self.env = limits, module, env
        self.start_timeout = start_timeout
        self.standby = max(1, standby)
        self.start = start
        self.fallback: str | None = None  # why a fork supply spawns now (None: it forks, or it was told to spawn)
        self._template: OracleTemplate | None = None
        self._standby: deque[OracleProcess] = deque()

    def _ready_template(self, block: bool) -> OracleTemplate | None:
        """The template to fork from (started on first use), or None: spawn, or (not ``block``) not ready yet."""
        if self.start != "fork" or self.fallback:
            return None
        try:
            if self._template is None:
                self._template = OracleTemplate(self.limits, self.module, self.env)
            if self._template.wait_ready(self.start_timeout if block else 0.0):
                return self._template
        except (TemplateFailed, OSError) as err:
            self._fall_back(str(err))
        return None

    def _fall_back(self, reason: str) -> None:
        self.fallback = reason.replace("\n", " ")[:300]
        warnings.warn(f"{self.fallback}; loss oracles are spawned from now on", RuntimeWarning, stacklevel=3)
        forked = [o for o in self._standby if o.forked]
        self._standby = deque(o for o in self._standby if not o.forked)
        for oracle in forked:
            oracle.close()
        if self._template is not None:
            self._template.close()
            self._template = None

    def _new(self, block: bool) -> OracleProcess | None:
        """A new oracle: forked while the template works, spawned otherwise; None if the template is still starting
        and ``block`` is False (the standbys are forked once it is ready)."""
        template = self._ready_template(block)
        if template is not None:
            try:
                return OracleProcess(self.limits, self.module, self.env, template=template)
            except TemplateFailed as err:
                self._fall_back(str(err))
        elif self.start == "fork" and not self.fallback:
            return None
        return OracleProcess(self.limits, self.module, self.env)

    def prespawn(self) -> None:
        while len(self._standby) < self.standby:
            oracle = self._new(block=False)
            if oracle is None:
                return
            self._standby.append(oracle)

    def take(self, refill: bool = True) -> OracleProcess:
        """A ready oracle (the oldest standby); the standbys are topped up before returning (``refill``: a
        one-shot caller, ``discopop check``, asks for none)."""
        if refill:
            self.prespawn()
        oracle = self._standby.popleft() if self._standby else self._new(block=True)
        assert oracle is not None  # _new(block=True) always gives one
        try:
            oracle.wait_ready(self.start_timeout)
        except OracleStartFailed as err:
            oracle.close()
            if not oracle.forked:
                raise
            self._fall_back(f"a forked loss oracle failed to start ({err})")
            oracle = OracleProcess(self.limits, self.module, self.env)
            try:
                oracle.wait_ready(self.start_timeout)
            except BaseException:
                oracle.close()
                raise
        except BaseException:
            oracle.close()
            raise
        if refill:
            self.prespawn()
        return oracle

    def close(self) -> None:
        while self._standby:
            self._standby.popleft().close()
        if self._template is not None:
            self._template.close()
            self._template = None


def worker_control() -> tuple[socket.socket, socket.socket, dict[str, str]]:
    """(parent end, worker end, env) of the control socket a worker receives its oracles on.

    Start the worker with ``pass_fds=(worker_end.fileno(),)`` and ``env``, then close ``worker_end``.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours, theirs, {CONTROL_FD_VAR: str(theirs.fileno())}


DEATH_GRACE = 1.0  # seconds a hung-up oracle is given to exit by itself, so that its exit can say why it died


def hung_up(stage: str, error: str) -> bool:
    """The worker failed a job because the oracle closed the channel (only then is the oracle's death the reason)."""
    return stage == "oracle" and wire.HUNG_UP in error


def death_grace(stage: str | None, error: str | None) -> float:
    """How long to wait for a failed job's oracle to exit by itself before it is killed: :data:`DEATH_GRACE` where
    it hung up (:func:`explain_oracle_death` then says why it died), else none: any other failure keeps its own
    reason, and an oracle still running (a forged or flooding reply, a hang) would only be waited for."""
    return DEATH_GRACE if stage is not None and error is not None and hung_up(stage, error) else 0.0


def explain_oracle_death(stage: str, error: str, died: str | None) -> tuple[str, str]:
    """(stage, error) of a failed job; where the worker failed it because the oracle hung up, why the oracle died
    (stage ``sandbox``).

    Other channel failures keep their own reason (a refused reply is the cause, the oracle's death
    from a broken pipe afterwards is not).
    """
    if died and hung_up(stage, error):
        return "sandbox", f"loss oracle died: {died.removeprefix('worker ')}"
    return stage, error
