"""Child-process isolation for untrusted candidate code: the one seam where it can run.

Layers, outermost first (the static AST check in ``losses.py`` comes before all of them):

* a separate process in its own session/process group, killed as a group (SIGKILL) by the parent
  on a wall-clock timeout: the only timeout that reliably stops a runaway C call or a deadlock;
* resource limits set before ``exec``: address space (catches memory bombs on CPU), file size
  (caps runaway output), core dumps off;
* no network: the child runs under ``unshare --net`` when the OS allows it (root, or user
  namespaces), and the runtime guard below blocks sockets either way;
* a private temporary working directory, removed afterwards;
* a runtime guard (``sys.addaudithook``) installed in the child once its own set-up is done:
  it refuses process creation, socket connections, and file writes outside the work directory.

The same ``SandboxedProcess`` runs the warm training workers (``executors.py``) and the one-shot
``discopop check`` (``checking.py``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


@dataclass
class Limits:
    """Per-process limits; 0 disables a limit (e.g. memory on GPU, where CUDA reserves address space)."""

    memory_mb: int = 6144
    file_size_mb: int = 256
    network: bool = False


class SandboxTimeout(RuntimeError):
    pass


class SandboxDied(RuntimeError):
    pass


@cache
def _unshare_prefix() -> tuple[str, ...]:
    """``unshare --net`` if this machine allows it, else nothing (the audit hook still blocks sockets)."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    try:
        ok = subprocess.run([exe, "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (exe, "--net") if ok else ()


def _apply_limits(limits: Limits) -> None:
    """Runs in the child between fork and exec."""
    os.environ["MALLOC_ARENA_MAX"] = "2"
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.memory_mb:
        size = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if limits.file_size_mb:
        size = limits.file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


class SandboxedProcess:
    """A Python child (``python -m MODULE``) talking length-prefixed JSON over two private pipes."""

    def __init__(self, module: str, limits: Limits, env: dict[str, str] | None = None):
        self.limits = limits
        self.workdir = Path(tempfile.mkdtemp(prefix="discopop-sandbox-"))
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        child_env = {**os.environ, **(env or {}), "DISCOPOP_SANDBOX_DIR": str(self.workdir),
                     "DISCOPOP_FDS": f"{to_child_r},{from_child_w}", "TOKENIZERS_PARALLELISM": "false",
                     "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        prefix = () if limits.network else _unshare_prefix()
        self.log_path = self.workdir / "output.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", module],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=child_env,
                pass_fds=(to_child_r, from_child_w), start_new_session=True,
                preexec_fn=lambda: _apply_limits(limits),  # noqa: PLW1509 - limits must precede exec
            )
        finally:
            log.close()
            os.close(to_child_r)
            os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False, writable=True)
        self._recv = Connection(from_child_r, readable=True, writable=False)

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one message and wait for the reply; kill the whole group on timeout or death."""
        try:
            self._send.send_bytes(json.dumps(message).encode())
            if not self._recv.poll(timeout):
                self.kill()
                raise SandboxTimeout(f"timed out after {timeout:.0f} s")
            return json.loads(self._recv.recv_bytes())
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as err:
            if isinstance(err, SandboxTimeout):
                raise
            raise SandboxDied(self._death_reason()) from None

    def _death_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        if code < 0:
            name = signal.Signals(-code).name
            hint = {"SIGKILL": " (killed: memory limit or external kill)", "SIGXFSZ": " (output size limit)",
                    "SIGSEGV": " (crashed)"}.get(name, "")
            return f"worker died with {name}{hint}"
        tail = self.output_tail(300).strip().splitlines()
        last = tail[-1] if tail else ""
        return f"worker exited with status {code}" + (f": {last}" if last else "")

    def output_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` bytes of the child's stdout/stderr (captured to a size-capped file)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the child's whole process group (it started its own session)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        if self.alive():
            try:
                self._send.send_bytes(json.dumps({"op": "exit"}).encode())
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for conn in (self._send, self._recv):
            conn.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---- child side -------------------------------------------------------------------------------


def child_connections() -> tuple[Connection, Connection]:
    """In the child: the (receive, send) connections the parent opened."""
    recv_fd, send_fd = (int(x) for x in os.environ["DISCOPOP_FDS"].split(","))
    return Connection(recv_fd, readable=True, writable=False), Connection(send_fd, readable=False, writable=True)


_BLOCKED_EVENTS = {
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
    "ctypes.dlopen", "ctypes.call_function", "os.chown", "os.link", "os.symlink",
}  # fmt: skip
# File-system events allowed only on paths inside the work directory.
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.rename", "os.replace", "shutil.rmtree", "os.chmod", "os.truncate",
                "os.mkdir", "shutil.move", "shutil.copyfile"}


def install_guard(workdir: str) -> None:
    """Refuse process creation, networking and writes outside ``workdir`` for the rest of the process.

    Audit hooks cannot be removed once added. Python-level guards alone are bypassable, which is
    why the OS layers (process group kill, rlimits, network namespace) sit around this one.
    """
    root = os.path.realpath(workdir)

    def inside(path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event in _BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: '{event}' is not allowed")
        if event in _PATH_EVENTS:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    raise PermissionError(f"sandbox: '{event}' on {os.fsdecode(arg)} is not allowed")
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 else "r"
            flags = args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            )
            if writing and not inside(args[0]):
                raise PermissionError(f"sandbox: writing to {os.fsdecode(args[0])} is not allowed")

    sys.addaudithook(hook)
