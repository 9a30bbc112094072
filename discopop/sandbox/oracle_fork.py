"""Parent side of the oracle template (``executor.oracle_start=fork``): oracles forked from a pre-imported process.

``OracleTemplate`` starts ``python -m discopop.sandbox.oracle_template`` as a :class:`SandboxedProcess` (every
parent-side layer an oracle gets) and asks it for children over a unix seqpacket socket; ``ForkedOracleProcess``
is one child, with the interface of a :class:`SandboxedProcess` (``alive``, ``kill``, ``exit_reason``,
``missing_layers``, ``close``), so ``OracleProcess`` and ``oracle_keep`` treat both kinds alike.

What each child gets of its own, as a spawned oracle does (``oracle_template`` has the child's side):

* a work dir and the environment ``sandbox_env`` builds for it (HOME, TMPDIR, the allow-list);
* its oracle socket and the write end of its own output pipe, passed as descriptors with the request (the
  output cap reads the other end here, per child); the child closes everything else first;
* its own session and process group (``setsid``), and its own pids and memory cgroups where this machine lets
  us make them: the parent creates them and moves the child in while it is blocked on its gate, before it runs
  anything (``missing_layers`` names a cgroup layer it could not get, as for a spawned oracle);
* the rlimits and network namespace it inherits from the template (set on the template exactly as on a spawned
  oracle), and every child-side layer, put on by the child itself (``oracle.start``).

Killing and waiting without a pid-reuse race: a pidfd is opened while the child is still blocked on its gate
(and the template never reaps a child unless asked, so its pid stays reserved); signals go through the pidfd, and
exit is seen on it; the exit code comes from the template (``reap``), so ``exit_reason`` reads as for a spawned
oracle ("worker died with SIGKILL (killed: memory ...)", a timeout, the output cap).

What differs from a spawned oracle: children share the template's address-space layout (no fresh ASLR per
child) and its string-hash seed. Neither is a channel between candidates (each child is its own process, and
Landlock, seccomp and the capability drop keep it from reaching another one), but both are weaker than a fresh
exec; that is one reason ``spawn`` stays the default.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from discopop.sandbox.boundary import remove_tree, sandbox_env
from discopop.sandbox.limits import Limits
from discopop.sandbox.oracle_template import CONTROL_VAR, GO, MESSAGE_LIMIT, MODULE_VAR
from discopop.sandbox.parent import OutputTail, SandboxedProcess, make_cgroups

TEMPLATE_MODULE = "discopop.sandbox.oracle_template"
REQUEST_TIMEOUT = 30.0  # a fork or a reap answered later than this: the template is taken for broken


class TemplateFailed(RuntimeError):
    """The template could not start, answer or fork: the caller falls back to spawning oracles."""


class OracleTemplate:
    """One sandboxed template process and its control socket (requests are serialised under a lock)."""

    def __init__(self, limits: Limits, module: str, env: dict[str, str] | None = None):
        self.limits, self.module = limits, module
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # No BLAS thread pool in the template (numpy's OpenBLAS starts one at import): it must fork single-threaded.
        extra = {**(env or {}), MODULE_VAR: module, CONTROL_VAR: str(theirs.fileno()), "OPENBLAS_NUM_THREADS": "1"}
        try:
            self.proc = SandboxedProcess(TEMPLATE_MODULE, limits, env=extra, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        self.ready = False
        self.failed: str | None = None
        self.forks = 0
        self._lock = threading.Lock()

    def wait_ready(self, timeout: float) -> bool:
        """True once the template has imported everything (False: not yet, within ``timeout``); raises
        :class:`TemplateFailed` if it died or said something else."""
        if self.ready:
            return True
        if self.failed:
            raise TemplateFailed(self.failed)
        with self._lock:
            readable, _, _ = select.select([self.control], [], [], timeout)
            if not readable:
                if timeout and timeout > 0:
                    self._fail(f"not ready after {timeout:.0f} s")
                return False
            reply = self._receive()
            if reply.get("ready") is not True or reply.get("threads") != 1:
                self._fail(f"unexpected start: {json.dumps(reply)[:200]}")
            self.ready = True
        return True

    def fork(self, env: dict[str, str], workdir: str, fds: tuple[int, int, int]) -> ForkedChild:
        """A child blocked on its gate (``fds``: its oracle socket, output pipe, gate read end), with its pidfd."""
        reply = self._call({"op": "fork", "env": env, "workdir": workdir}, fds)
        pid = reply.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise TemplateFailed(f"could not fork: {str(reply.get('error'))[:200]}")
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as err:  # the pid is still reserved (not reaped): a plain kill cannot hit another process
            os.kill(pid, signal.SIGKILL)
            self.reap(pid)
            raise TemplateFailed(f"pidfd_open failed: {err}") from None
        self.forks += 1
        return ForkedChild(pid, pidfd, self)

    def reap(self, pid: int) -> int | None:
        """The exit code of a dead child (Popen's convention: -N for signal N), None if it still runs."""
        reply = self._call({"op": "reap", "pid": pid})
        code = reply.get("code")
        if "error" in reply or not (code is None or isinstance(code, int)):
            raise TemplateFailed(f"could not reap {pid}: {str(reply.get('error'))[:200]}")
        return code

    def _call(self, request: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
        if not self.ready:
            raise TemplateFailed("not ready")
        with self._lock:
            if self.failed:
                raise TemplateFailed(self.failed)
            try:
                socket.send_fds(self.control, [json.dumps(request).encode()], list(fds))
            except OSError as err:
                self._fail(f"request failed: {err}")
            readable, _, _ = select.select([self.control], [], [], REQUEST_TIMEOUT)
            if not readable:
                self._fail(f"no answer within {REQUEST_TIMEOUT:.0f} s")
            return self._receive()

    def _receive(self) -> dict[str, Any]:
        """One reply (under the lock, once the socket is readable)."""
        try:
            data = self.control.recv(MESSAGE_LIMIT)
        except OSError as err:
            self._fail(f"control socket: {err}")
        try:
            reply = json.loads(data) if data else None
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self._fail("hung up" if not data else "unreadable reply")
        return reply

    def _fail(self, reason: str) -> None:
        """Kill the template (its children die with it) and raise :class:`TemplateFailed` with one line."""
        if not self.proc.alive():
            reason = f"{reason} ({self.proc.exit_reason().removeprefix('worker ')})"
        self.failed = f"oracle template failed: {reason}"
        self.proc.kill()
        raise TemplateFailed(self.failed)

    def alive(self) -> bool:
        return self.failed is None and self.proc.alive()

    def close(self) -> None:
        """Kill the template; its children die with it (parent-death signal)."""
        self.control.close()
        self.proc.kill()
        self.proc.close()


class ForkedChild:
    """The ``subprocess.Popen`` subset ``SandboxedProcess`` uses (``pid``, ``poll``, ``wait``), for a child of the
    template: exit seen on the pidfd, exit code from the template."""

    def __init__(self, pid: int, pidfd: int, template: OracleTemplate):
        self.pid, self.pidfd, self.template = pid, pidfd, template
        self.returncode: int | None = None
        self.status_lost: str | None = None  # why the exit code is a guess (the template was gone)
        self._lock = threading.Lock()

    def _exited(self, timeout: float | None) -> bool:
        if self.pidfd < 0:
            return True
        readable, _, _ = select.select([self.pidfd], [], [], timeout)
        return bool(readable)

    def _reap(self) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            code = None
            try:
                for _ in range(200):  # a pidfd can be readable a moment before the zombie can be waited for
                    code = self.template.reap(self.pid)
                    if code is not None:
                        break
                    select.select([], [], [], 0.005)
            except TemplateFailed as err:
                self.status_lost = str(err)
            # Without the template's word the child died with it: the parent-death signal is SIGKILL.
            self.returncode = code if code is not None else -signal.SIGKILL

    def poll(self) -> int | None:
        if self.returncode is None and self._exited(0):
            self._reap()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._exited(timeout):
                raise subprocess.TimeoutExpired(f"forked oracle {self.pid}", timeout or 0)
            self._reap()
        return self.returncode

    def kill_tree(self) -> None:
        """SIGKILL through the pidfd and to the child's process group, only while its pid is still reserved."""
        with self._lock:
            if self.returncode is not None:
                return
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
            try:
                os.killpg(self.pid, signal.SIGKILL)  # its group is its own (setsid) once past the gate
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class ForkedOracleProcess(SandboxedProcess):
    """One oracle forked from ``template``, talking only over the socket ``sock_fd`` (the caller closes its copy)."""

    def __init__(self, template: OracleTemplate, env: dict[str, str] | None, sock_fd: int):
        limits = template.limits
        self.limits = limits
        self.workdir = Path(tempfile.mkdtemp(prefix="discopop-sandbox-"))
        self._busy = False
        try:
            child_env = sandbox_env(self.workdir, limits, env)
        except ValueError:
            remove_tree(self.workdir)
            raise
        self._cgroups = make_cgroups(limits)
        out_r, out_w = os.pipe()
        gate_r, gate_w = os.pipe()
        try:
            self.proc: ForkedChild = template.fork(child_env, str(self.workdir), (sock_fd, out_w, gate_r))
        except BaseException:
            os.close(out_r)
            os.close(gate_w)
            self._remove_cgroups()
            remove_tree(self.workdir)
            raise
        finally:
            os.close(out_w)
            os.close(gate_r)
        # The child is blocked on its gate: into its own cgroups before it runs anything.
        for group in self._cgroups:
            try:
                (group.path / "cgroup.procs").write_text(str(self.proc.pid))
            except OSError:
                pass  # not a member: that layer is dropped and missing_layers says so
        joined = [g for g in self._cgroups if self.proc.pid in g.pids()]
        for group in set(self._cgroups) - set(joined):
            group.remove()
        self._cgroups = joined
        # A child left in the template's cgroups would share their caps with its siblings (one candidate's memory
        # could get another's oracle OOM-killed): where the template has a cgroup layer, each child must have its own.
        lacking = {layer for layer in template.proc.layers if layer.startswith("cgroup-")} - set(self._layer_names())
        if lacking:
            os.close(gate_w)  # EOF on the gate: the child exits without running anything
            os.close(out_r)
            self.proc.kill_tree()
            self.proc.wait(timeout=10)
            self.proc.close()
            self._remove_cgroups()
            remove_tree(self.workdir)
            raise TemplateFailed(f"a forked oracle could not get its own {', '.join(sorted(lacking))}")
        self._output = OutputTail(out_r, limits.output_mb * 1024 * 1024, self._kill_group)
        try:
            os.write(gate_w, GO)
        except OSError:
            pass  # it died already: alive() and exit_reason() say so
        finally:
            os.close(gate_w)
        inherited = [layer for layer in template.proc.layers if not layer.startswith("cgroup-")]
        self.layers = inherited + self._layer_names()

    def _layer_names(self) -> list[str]:
        return [f"cgroup-{g.controller}" for g in self._cgroups]

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise NotImplementedError("a forked oracle talks over its socket only")

    def _kill_group(self) -> None:
        self.proc.kill_tree()
        for group in self._cgroups:
            group.kill_all()

    def close(self) -> None:
        """Kill the child (whole tree), reap it, remove its cgroups and work dir."""
        self.kill()
        self._remove_cgroups()
        self._output.join(1.0)
        self.proc.close()
        try:
            remove_tree(self.workdir)
        except OSError as err:  # never expected (the tree is dead); say so rather than fail the caller
            warnings.warn(f"sandbox: could not remove {self.workdir}: {err}", RuntimeWarning, stacklevel=2)
