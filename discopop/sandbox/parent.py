"""Parent side of the sandbox: ``SandboxedProcess`` starts a Python child and talks to it over
two private pipes. The layers set up here, before or at ``exec``:

* ``process-group``: a separate process in its own session, killed with SIGKILL by the parent on a
  wall-clock timeout: the only timeout that reliably stops a runaway C call or a deadlock;
* ``rlimit-*``: address space (a memory bomb on CPU becomes a ``MemoryError``); for a CUDA child the
  data segment instead (``rlimit-data``: private writable memory, which CUDA's huge address-space
  reservations are not), file size, no core dumps;
* ``netns``: the child runs under ``unshare --net`` (an empty network namespace) when allowed;
* ``output-cap``: stdout/stderr go through a pipe into a bounded in-memory tail; a child writing
  more than ``Limits.output_mb`` during one request is killed (nothing floods the disk or memory).

plus ``env-allowlist`` (``boundary.py``), ``cgroup-pids`` / ``cgroup-memory`` (``cgroups.py``) and, for a CUDA
child without ``cgroup-memory``, ``memory-watch`` (``memory_watch.py``: the parent samples the tree's resident
anonymous and shared memory and kills it past the cap).
A reply over ``REPLY_LIMIT`` or not a JSON object kills the child; ``close`` removes the work dir.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from discopop.sandbox.boundary import REPLY_LIMIT, clean_reply, clean_text, remove_tree, sandbox_env
from discopop.sandbox.cgroups import Cgroup
from discopop.sandbox.limits import Limits
from discopop.sandbox.memory_watch import MemoryWatch, watch_needed


class SandboxTimeout(RuntimeError):
    pass


class SandboxDied(RuntimeError):
    pass


@cache
def _unshare_prefix() -> tuple[str, ...]:
    """``unshare --net`` if this machine allows it, else nothing (Landlock and the guard still block TCP)."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    try:
        ok = subprocess.run([exe, "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (exe, "--net") if ok else ()


# ---- output capture ----------------------------------------------------------------------------


class _OutputTail:
    """Reads the child's stdout/stderr pipe in a thread; keeps the last bytes, counts the rest."""

    KEEP = 64 * 1024

    def __init__(self, fd: int, limit: int, on_overflow):
        self._fd = fd
        self._limit = limit
        self._on_overflow = on_overflow
        self._tail = bytearray()
        self._lock = threading.Lock()
        self.since_reset = 0
        self.overflowed = False
        self._thread = threading.Thread(target=self._pump, name="discopop-sandbox-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            with self._lock:
                self._tail += chunk
                if len(self._tail) > self.KEEP:
                    del self._tail[: len(self._tail) - self.KEEP]
                self.since_reset += len(chunk)
                overflow = self._limit and self.since_reset > self._limit and not self.overflowed
                if overflow:
                    self.overflowed = True
            if overflow:
                self._on_overflow()
        os.close(self._fd)

    def reset(self) -> None:
        with self._lock:
            self.since_reset = 0

    def tail(self, limit: int) -> str:
        with self._lock:
            return bytes(self._tail[-limit:]).decode(errors="replace")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


OutputTail = _OutputTail  # the output cap's reader, shared with a forked oracle's (oracle_fork)


# ---- which layers a child should have ------------------------------------------------------------

# Child-side layers every sandboxed worker or oracle puts on itself (lockdown.py, guard.py, worker.py).
CHILD_LAYERS = ("parent-death-signal", "no-new-privs", "private-tmp", "landlock-fs", "landlock-read", "landlock-net",
                "landlock-signals", "no-capabilities", "seccomp", "audit-guard")
_WHY_MISSING = {
    "netns": "unshare --net is not permitted here (Landlock and the guard still block TCP)",
    "cgroup-pids": "no writable pids cgroup (needs root or a delegated cgroup v2 subtree)",
    "cgroup-memory": "no writable memory cgroup (needs root or a delegated cgroup v2 subtree)",
    "private-tmp": "needs root for a private mount namespace",
    "landlock-fs": "the kernel has no Landlock (Linux >= 5.13)",
    "landlock-read": "the kernel has no Landlock (Linux >= 5.13)",
    "landlock-net": "the kernel's Landlock ABI has no network rules (ABI >= 4, Linux >= 6.7)",
    "landlock-signals": "the kernel's Landlock ABI has no scopes (ABI >= 6, Linux >= 6.12)",
    "no-capabilities": "the process holds no capabilities to drop",
    "seccomp": "put on by seal() once set-up is done (not yet sealed), and only on x86-64 Linux",
    "audit-guard": "put on by seal() once set-up is done (not yet sealed)",
}


def expected_layers(limits: Limits) -> list[str]:
    """Every layer a child with ``limits`` would have on a machine that allows them all."""
    hardened = ("private-tmp", "landlock-read", "seccomp")
    layers = ["process-group", "env-allowlist", "rlimit-core"]
    layers += [_memory_rlimit(limits)] if limits.memory_mb else []
    layers += ["rlimit-fsize"] if limits.file_size_mb else []
    layers += [] if limits.network else ["netns"]
    layers += ["cgroup-pids"] if limits.max_processes else []
    layers += ["cgroup-memory"] if limits.memory_mb else []
    layers += ["output-cap"] if limits.output_mb else []
    child = [c for c in CHILD_LAYERS if limits.os_hardening or c not in hardened]
    return layers + [c for c in child if not (limits.network and c == "landlock-net")]


def missing_layer_reasons(limits: Limits) -> dict[str, str]:
    """Why a layer may be absent (a CUDA child's per-process cap is ``rlimit-data``, not ``rlimit-as``)."""
    reasons = dict(_WHY_MISSING)
    if limits.uses_cuda and limits.memory_mb:
        reasons["cgroup-memory"] += (": rlimit-data still caps this CUDA worker's private memory, but not shared "
                                     "or pinned mappings; memory-watch samples its tree's resident memory instead "
                                     "(a soft cap)")
    return reasons


def _memory_rlimit(limits: Limits) -> str:
    """The per-process memory layer: address space, or for CUDA (whose reservations dwarf its use) data."""
    return "rlimit-data" if limits.uses_cuda else "rlimit-as"


# ---- the parent side ---------------------------------------------------------------------------


def _apply_limits(limits: Limits, cgroup_procs: tuple[str, ...]) -> None:
    """Runs in the child between fork and exec: only syscalls, no imports (the parent has threads)."""
    pid = str(os.getpid()).encode()
    for procs in cgroup_procs:
        try:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        except OSError:
            pass  # the parent notices the child is not a member and drops that layer
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.memory_mb:
        size = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA if limits.uses_cuda else resource.RLIMIT_AS, (size, size))
    if limits.file_size_mb:
        size = limits.file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def make_cgroups(limits: Limits) -> list[Cgroup]:
    """The private pids and memory cgroups one child gets (those this machine lets us create)."""
    groups: list[Cgroup] = []
    if limits.max_processes:
        group = Cgroup.create("pids", {"pids.max": limits.max_processes})
        if group:
            groups.append(group)
    if limits.memory_mb:
        size = limits.memory_mb * 1024 * 1024
        group = Cgroup.create("memory", {"memory.limit_in_bytes": size})
        group = group or Cgroup.create("memory", {"memory.max": size})
        if group:
            groups.append(group)
    return groups


class SandboxedProcess:
    """A Python child (``python -m MODULE``) talking length-prefixed JSON over two private pipes.

    ``layers`` lists the isolation layers active for this child: the parent-side ones at start,
    plus any a reply reports under ``"sandbox_layers"`` (the worker's ``init`` reply does).
    """

    _watch: MemoryWatch | None = None  # memory-watch, where needed; a forked oracle (oracle_fork) never has one

    def __init__(self, module: str, limits: Limits, env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = ()):
        """``pass_fds``: extra descriptors the child inherits (an oracle socket); the caller closes its copies."""
        self.limits = limits
        self.workdir = Path(tempfile.mkdtemp(prefix="discopop-sandbox-"))
        self._busy = False
        self._cgroups: list[Cgroup] = make_cgroups(limits)
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            child_env = {**sandbox_env(self.workdir, limits, env), "DISCOPOP_FDS": f"{to_child_r},{from_child_w}"}
        except ValueError:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w, out_r, out_w):
                os.close(fd)
            self._remove_cgroups()
            remove_tree(self.workdir)
            raise
        prefix = () if limits.network else _unshare_prefix()
        procs = tuple(str(g.path / "cgroup.procs") for g in self._cgroups)
        try:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", module],
                stdin=subprocess.DEVNULL, stdout=out_w, stderr=subprocess.STDOUT, cwd=self.workdir, env=child_env,
                pass_fds=(to_child_r, from_child_w, *pass_fds), start_new_session=True,
                preexec_fn=lambda: _apply_limits(limits, procs),  # noqa: PLW1509 - limits must precede exec
            )
        except BaseException:
            for fd in (to_child_w, from_child_r, out_r):
                os.close(fd)
            self._remove_cgroups()
            raise
        finally:
            for fd in (to_child_r, from_child_w, out_w):
                os.close(fd)
        self._output = _OutputTail(out_r, limits.output_mb * 1024 * 1024, self._kill_group)
        self._send = Connection(to_child_w, readable=False, writable=True)
        self._recv = Connection(from_child_r, readable=True, writable=False)
        joined = [g for g in self._cgroups if self.proc.pid in g.pids()]
        for group in set(self._cgroups) - set(joined):
            group.remove()
        self._cgroups = joined
        groups = {g.controller: g for g in joined}
        if watch_needed(limits.memory_mb, limits.uses_cuda, "memory" in groups):
            self._watch = MemoryWatch(self.proc.pid, limits.memory_mb * 1024 * 1024, self._kill_group, self.alive,
                                      members=groups["pids"].pids if "pids" in groups else None)
        self.layers = ["process-group", "env-allowlist", "rlimit-core"]
        self.layers += [_memory_rlimit(limits)] if limits.memory_mb else []
        self.layers += ["rlimit-fsize"] if limits.file_size_mb else []
        self.layers += ["netns"] if prefix else []
        self.layers += [f"cgroup-{g.controller}" for g in self._cgroups]
        self.layers += ["memory-watch"] if self._watch else []
        self.layers += ["output-cap"] if limits.output_mb else []

    def missing_layers(self) -> dict[str, str]:
        """The layers this child was meant to have but does not, each with the reason (empty: all applied).

        Parent-side layers are known at start; the child-side ones once the child has reported its own
        (the worker's ``init`` reply): ask after that. A limit set to 0 in ``Limits`` is a choice, not a gap.
        """
        expected = expected_layers(self.limits)
        reasons = missing_layer_reasons(self.limits)
        return {layer: reasons.get(layer, "not available on this machine")
                for layer in expected if layer not in self.layers}

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one message and wait for the reply; kill the whole tree on timeout or death."""
        self._output.reset()
        self._busy = True
        try:
            self._send.send_bytes(json.dumps(message).encode())
            if not self._recv.poll(timeout):
                self.kill()
                raise SandboxTimeout(f"timed out after {timeout:.0f} s")
            raw = self._recv.recv_bytes(REPLY_LIMIT)
        except OSError as err:
            if not self.alive() or not str(err).startswith("bad message length"):
                raise SandboxDied(self._death_reason()) from None
            self.kill()
            raise SandboxDied(f"reply larger than {REPLY_LIMIT // 2**20} MB (worker killed)") from None
        except EOFError:
            raise SandboxDied(self._death_reason()) from None
        finally:
            self._busy = False
        try:
            reply = clean_reply(json.loads(raw))
        except (ValueError, RecursionError):  # not JSON, or nested deeper than any reply of ours
            reply = None
        if not isinstance(reply, dict):
            self.kill()
            raise SandboxDied("unreadable reply: not a JSON object (worker killed)")
        for layer in reply.pop("sandbox_layers", None) or ():
            if layer not in self.layers:
                self.layers.append(layer)
        if reply.pop("sandbox_exit", False):  # the child stops after this reply: let alive() say so at once
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        return reply

    def exit_reason(self) -> str:
        """Why the child is gone (waits briefly for it): a timeout kill, a limit, a signal or its exit status."""
        return self._death_reason()

    def _death_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        self._output.join(1.0)
        if self._watch and self._watch.reason:
            return self._watch.reason
        if self._output.overflowed:
            return f"output limit: wrote more than {self.limits.output_mb} MB to stdout/stderr in one request"
        group = {g.controller: g for g in self._cgroups}
        extra = ""
        if "pids" in group and group["pids"].counter("pids.events", "max"):
            extra = f" (hit the limit of {self.limits.max_processes} processes)"
        if code < 0:
            name = signal.Signals(-code).name
            hint = {"SIGKILL": " (killed: memory limit or external kill)", "SIGXFSZ": " (output size limit)",
                    "SIGSEGV": " (crashed)"}.get(name, "")
            memory = group.get("memory")
            if name == "SIGKILL" and memory and (memory.counter("memory.oom_control", "oom_kill")
                                                 or memory.counter("memory.events", "oom_kill")):
                hint = f" (killed by the memory limit of {self.limits.memory_mb} MB)"
            return f"worker died with {name}{hint}{extra}"
        tail = self.output_tail(300).strip().splitlines()
        last = tail[-1] if tail else ""
        return f"worker exited with status {code}" + (f": {last}" if last else "") + extra

    def output_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` bytes the child wrote to stdout/stderr (at most 64 KB are kept), cleaned
        of control characters and escape sequences (it ends up in error messages)."""
        return clean_text(self._output.tail(limit), limit)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for group in self._cgroups:
            group.kill_all()

    def kill(self) -> None:
        """SIGKILL the child's process group and every member of its cgroups, then reap the child."""
        self._kill_group()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _remove_cgroups(self) -> None:
        for group in self._cgroups:
            group.remove()
        self._cgroups = []

    def close(self) -> None:
        """Ask an idle child to exit (a busy one is killed at once), kill what is left, clean up."""
        if self.alive() and not self._busy:
            try:
                self._send.send_bytes(json.dumps({"op": "exit"}).encode())
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        if self._watch:
            self._watch.stop()
        self._remove_cgroups()
        for conn in (self._send, self._recv):
            conn.close()
        self._output.join(1.0)
        try:
            remove_tree(self.workdir)
        except OSError as err:  # never expected (the tree is dead); say so rather than fail the caller
            warnings.warn(f"sandbox: could not remove {self.workdir}: {err}", RuntimeWarning, stacklevel=2)


# ---- the child's end of the pipes -------------------------------------------------------------


class WorkerLink:
    """A worker process and the parent's end of the socket its loss oracles are handed over on
    (``oracle_supply.worker_control``): what a run's warm worker (``executors.WarmWorker``) and a check's worker
    (``cli.check.CheckWorker``) both hold, and close the same way. Torch-free, as ``discopop check`` must be until
    a file passes the static check."""

    proc: SandboxedProcess | None = None
    control: socket.socket | None = None

    def close_link(self) -> None:
        """Stop the worker (if any) and close its control socket; the next start makes a fresh pair."""
        if self.proc is not None:
            self.proc.close()
            self.proc = None
        if self.control is not None:
            self.control.close()
            self.control = None


def child_connections() -> tuple[Connection, Connection]:
    """In the child: the (receive, send) connections the parent opened."""
    recv_fd, send_fd = (int(x) for x in os.environ["DISCOPOP_FDS"].split(","))
    return Connection(recv_fd, readable=True, writable=False), Connection(send_fd, readable=False, writable=True)
