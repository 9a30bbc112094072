"""Child-process isolation for untrusted candidate code: the one seam where it can run.

Layers, outermost first (the static AST check in ``losses.py`` comes before all of them). Each OS
layer is used where the machine allows it and skipped silently where it does not;
``SandboxedProcess.layers`` names the ones that are active for a given child, e.g. on a root Linux
box with cgroup v1 and Landlock (Debian 12, kernel 6.x) all of them are::

    process-group env-allowlist rlimit-core rlimit-as rlimit-fsize netns cgroup-pids cgroup-memory
    output-cap parent-death-signal no-new-privs private-tmp landlock-fs landlock-read landlock-net
    landlock-signals no-capabilities seccomp audit-guard state-watch

Parent side (set up here before/at ``exec``):

* ``process-group``: a separate process in its own session, killed with SIGKILL by the parent on a
  wall-clock timeout: the only timeout that reliably stops a runaway C call or a deadlock;
* ``env-allowlist``: the child's environment is built from named settings only (``sandbox_env``):
  no API key, token or password of the parent reaches it; ``HOME`` and ``TMPDIR`` are its work dir;
* ``rlimit-*``: address space (a memory bomb on CPU becomes a ``MemoryError``), file size, no
  core dumps;
* ``netns``: the child runs under ``unshare --net`` (an empty network namespace) when allowed;
* ``cgroup-pids`` / ``cgroup-memory``: a private cgroup (v1, or v2 with the controller delegated)
  caps the number of tasks of the whole tree (``Limits.max_processes``: a fork bomb stops there,
  unlike ``RLIMIT_NPROC``, which does not bind root) and its total memory; ``kill()`` kills every
  member, so a process that left the process group (``setsid``) dies too;
* ``output-cap``: stdout/stderr go through a pipe into a bounded in-memory tail; a child writing
  more than ``Limits.output_mb`` during one request is killed (nothing floods the disk or memory).

Everything the child sends back is untrusted text: every string of a reply, and the output tail
quoted in error messages, is stripped of control characters and escape sequences and capped
(``clean_text``); a reply over ``REPLY_LIMIT`` or not a JSON object kills the child. ``close``
removes the work dir with ``remove_tree`` (no recursion, never follows a symlink, any depth).

Child side (``lock_down``, called by the worker first thing, while it still has a single thread):

* ``parent-death-signal``: the child gets SIGKILL if its parent dies, even while busy;
* ``private-tmp``: a private mount namespace with fresh size-capped tmpfs on /tmp and /dev/shm
  (``Limits.tmpfs_mb``): nothing written there is seen by the host or outlives the child; the
  work dir and any readable path below them are bind-mounted back (needs root);
* ``landlock-*``: Landlock (Linux >= 5.13; root-proof, irreversible, inherited by children)
  forbids writing, creating or deleting files anywhere but the work directory (and a few device
  files), reading anything but the child's Python, import path, task cache, work dir and a short
  list of system files (``landlock-read``: not /etc/shadow, not the user's home), TCP
  bind/connect (kernel ABI >= 4) and signals and abstract unix sockets outside the sandbox
  (ABI >= 6). This holds even against code that slips past the Python-level guard, e.g. torch's
  C++ file writer behind ``torch.save``;
* ``no-capabilities``: a root child drops every capability (it cannot raise its own rlimits);

and ``seal``, once the worker's own set-up is done (it may still start threads afterwards):

* ``seccomp``: a BPF filter on every thread (x86-64) refuses with EPERM ``execve``, ``fork``,
  ``vfork``, ``clone`` without ``CLONE_THREAD``, AF_UNIX sockets, ``connect``, ``ptrace``,
  mounts, namespaces, BPF, io_uring, kernel modules and keys (``clone3`` gets ENOSYS so glibc
  falls back to ``clone``): ``_posixsubprocess.fork_exec``, ``os.execv`` and a host unix socket
  are out of reach even for C code. Pipes and connected sockets inherited from the parent work;
* ``audit-guard``: a ``sys.addaudithook`` hook refuses process creation, sockets, signals,
  ctypes, rlimit changes and Python-level writes outside the work directory, and records each
  refusal so the worker can name it;
* ``state-watch`` (in ``worker.py``): global torch state and the namespaces the checks rely on
  are compared with a snapshot after every job.

Python-level guards alone are bypassable; that is why the OS layers sit around them. Where an OS
layer is missing (no root, no Landlock, no cgroups) the remaining ones still apply.
``Limits.os_hardening=False`` turns off private-tmp, landlock-read and seccomp for one benchmark
(``benchmarks/sandbox_startup.py``) and nothing else.

The same ``SandboxedProcess`` runs the warm training workers (``executors.py``) and the one-shot
``discopop check`` (``checking.py``).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


@dataclass
class Limits:
    """Per-process limits; 0 disables a limit (e.g. memory on GPU, where CUDA reserves address space)."""

    memory_mb: int = 6144  # address space per process (RLIMIT_AS) and memory of the whole tree (cgroup)
    file_size_mb: int = 256  # largest file the child may write (RLIMIT_FSIZE)
    network: bool = False  # True: no network namespace, no Landlock TCP rule
    # Tasks (processes + threads) of the whole tree, via a pids cgroup. A training worker runs ~20
    # threads (torch, tokenizers, CUDA on GPU); 256 leaves room and still stops a fork bomb early.
    max_processes: int = 256
    # stdout+stderr bytes per request before the child is killed; a fine-tune logs a few KB.
    output_mb: int = 8
    # Size of the child's private /tmp and /dev/shm (each a fresh tmpfs, gone when the child is).
    # Nothing in a worker writes there (TMPDIR is the work dir); 64 MB is room for a stray library.
    tmpfs_mb: int = 64
    # BENCHMARK SWITCH: False turns off the private mounts, the Landlock read rules and seccomp,
    # only so that benchmarks/sandbox_startup.py can measure what they cost. Never off in a run.
    os_hardening: bool = True


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


# ---- what crosses from the child to the parent --------------------------------------------------

TEXT_LIMIT = 2000  # characters kept of any one string a sandboxed process sends back
REPLY_LIMIT = 16 * 1024 * 1024  # bytes of one reply; a bigger one means the child is misbehaving
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def clean_text(text: object, limit: int = TEXT_LIMIT) -> str:
    """``text`` made safe to archive or print: ANSI escapes and control/format characters removed
    (newlines and tabs kept), at most ``limit`` characters (the cut is marked).

    Everything a sandboxed process says is untrusted: a raw escape sequence rewrites a terminal, a
    NUL or bidi override hides text in a report, a megabyte message fills the archive.
    """
    text = str(text)
    total = len(text)
    text = _ANSI.sub("", text[: limit * 8])  # bounded work on a megabyte message; the rest is cut anyway
    kept = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co"))
    if len(kept) > limit or total > limit * 8:
        kept = kept[:limit] + f" [... cut, {total:,} characters in all]"
    return kept


def clean_reply(value: Any) -> Any:
    """``clean_text`` on every string (keys included) of a decoded JSON reply; numbers pass unchanged."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k, 200): clean_reply(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_reply(v) for v in value]
    return value


# ---- the child's environment: an allow-list ----------------------------------------------------

# Variables a sandboxed process may inherit from its parent; nothing else reaches it (API keys,
# tokens, cloud credentials, the user's shell set-up). Values here are settings, never secrets.
_ENV_ALLOWED = {
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "TZ",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF", "WANDB_MODE",
    "DISCOPOP_CACHE_DIR",
    # Not a secret: tests/test_hostile.py tags each sandboxed process with it to find strays in /proc.
    "DISCOPOP_TEST_TOKEN",
}  # fmt: skip
_ENV_ALLOWED_PREFIXES = ("DISCOPOP_SANDBOX_",)
# A name that looks like it holds a secret never passes, even under an allowed prefix or from ``env=``.
_SECRET_NAME = re.compile(r"KEY|TOKEN(?!IZERS_)|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)
READ_PATHS_VAR = "DISCOPOP_SANDBOX_READ"  # os.pathsep-separated extra paths the child may read


def _looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and name != "DISCOPOP_TEST_TOKEN"


def _outside_interpreter(path: str) -> bool:
    """Whether a real path lies outside this interpreter's own directories (stdlib, site-packages)."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    return not any(path == p or path.startswith(p + os.sep) for p in prefixes)


def _child_import_path(extra: str | None) -> str:
    """PYTHONPATH for the child: ``extra`` first, then where this ``discopop`` and the parent's own
    additions to ``sys.path`` live. The interpreter's own directories (stdlib, site-packages) are
    left out: the child finds them itself, and listed here they would come before the stdlib."""
    package_root = str(Path(__file__).resolve().parent.parent)
    entries = [*(extra or "").split(os.pathsep), *([package_root] if _outside_interpreter(package_root) else []),
               *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and _outside_interpreter(real):
            entries.append(real)
    return os.pathsep.join(dict.fromkeys(e for e in entries if e))


def _huggingface_caches() -> dict[str, str]:
    """The parent's hub and datasets caches (read-only in the child; never ``HF_HOME``: its token lives there)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return {"HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"),
            "HF_DATASETS_CACHE": os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets")}


def sandbox_env(workdir: Path, limits: Limits, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The complete environment of a sandboxed child: allow-listed parent variables, ``extra`` (the
    caller's, checked) and the sandbox's own settings. ``HOME`` and ``TMPDIR`` are the work dir."""
    extra = dict(extra or {})
    refused = sorted(name for name in extra if _looks_secret(name))
    if refused:
        raise ValueError(f"sandbox env: {', '.join(refused)} look(s) like a secret; a sandboxed process may not get it")
    env = {name: value for name, value in os.environ.items()
           if (name in _ENV_ALLOWED or name.startswith(_ENV_ALLOWED_PREFIXES)) and not _looks_secret(name)}
    task_cache = os.environ.get("DISCOPOP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "discopop")
    env.update(DISCOPOP_CACHE_DIR=task_cache, **_huggingface_caches())
    env.update(extra)
    env.update({
        "PYTHONPATH": _child_import_path(extra.get("PYTHONPATH")), "HOME": str(workdir), "TMPDIR": str(workdir),
        "HF_HOME": str(workdir / ".huggingface"), "DISCOPOP_SANDBOX_DIR": str(workdir),
        "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "MALLOC_ARENA_MAX": "2",  # fewer malloc arenas: less address space under RLIMIT_AS
        "DISCOPOP_SANDBOX_NETWORK": "1" if limits.network else "0", "DISCOPOP_SANDBOX_PARENT": str(os.getpid()),
        "DISCOPOP_SANDBOX_TMPFS_MB": str(limits.tmpfs_mb),
        "DISCOPOP_SANDBOX_HARDEN": "1" if limits.os_hardening else "0",
    })
    return env


# ---- removing a work dir, whatever is in it ----------------------------------------------------


def remove_tree(root: Path | str) -> None:
    """Delete ``root`` and everything below it: no recursion (any depth), one open directory at a
    time (any width), symlinks removed and never followed, unreadable or read-only dirs opened up.

    ``shutil.rmtree`` recurses once per level (a 1,500-deep chain raises RecursionError and leaves
    the rest behind) and gives up on a directory it cannot list. Run it only once nothing else
    writes below ``root`` (the sandbox's processes are dead): it walks back up through ``..``.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags)
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.ELOOP):  # a file, or a symlink: remove the entry itself
            os.unlink(root)
            return
        raise
    stack: list[tuple[str, list[str]]] = []  # (name in its parent, entries of the parent still to remove)
    try:
        pending = os.listdir(fd)
        while True:
            if pending:
                name = pending.pop()
                try:
                    os.unlink(name, dir_fd=fd)  # files, symlinks, sockets, fifos: the entry itself
                    continue
                except FileNotFoundError:
                    continue
                except (IsADirectoryError, PermissionError):
                    pass  # Linux answers EISDIR for a directory (EPERM on some file systems)
                try:
                    child = os.open(name, flags, dir_fd=fd)
                except PermissionError:  # an unreadable directory: a non-root parent opens it up first
                    os.chmod(name, 0o700, dir_fd=fd)
                    child = os.open(name, flags, dir_fd=fd)
                try:
                    os.fchmod(child, 0o700)  # a read-only directory: its entries could not be unlinked
                except OSError:
                    pass
                stack.append((name, pending))
                os.close(fd)
                fd, pending = child, []
                pending = os.listdir(fd)
                continue
            if not stack:
                break
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            name, pending = stack.pop()
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(root)


# ---- cgroups -----------------------------------------------------------------------------------

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_cgroup_names = itertools.count()


def _own_cgroup_dir(controller: str) -> tuple[Path, int] | None:
    """This process's cgroup directory holding ``controller`` and the cgroup version, if mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controller in controllers.split(","):  # v1 hierarchy with this controller
            base = _CGROUP_ROOT / controller / rel.lstrip("/")
            if (base / "cgroup.procs").is_file():
                return base, 1
    if (_CGROUP_ROOT / "cgroup.controllers").is_file():  # pure v2
        rel = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
        if rel is not None:
            return _CGROUP_ROOT / rel.lstrip("/"), 2
    return None


class _Cgroup:
    """A private cgroup for one child tree (one controller); ``create`` returns None where not allowed."""

    def __init__(self, path: Path, controller: str, version: int):
        self.path = path
        self.controller = controller
        self.version = version

    @classmethod
    def create(cls, controller: str, settings: dict[str, int]) -> _Cgroup | None:
        found = _own_cgroup_dir(controller)
        if found is None:
            return None
        base, version = found
        _reap_stale(base)
        path = base / f"discopop-{os.getpid()}-{next(_cgroup_names)}"
        try:
            path.mkdir()
        except OSError:
            return None
        group = cls(path, controller, version)
        try:
            for name, value in settings.items():
                (path / name).write_text(str(value))
        except OSError:
            group.remove()
            return None
        return group

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def counter(self, file: str, key: str) -> int:
        """A ``key value`` line of a cgroup stats file (``pids.events``, ``memory.events``, ...)."""
        try:
            for line in (self.path / file).read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self) -> None:
        """SIGKILL every member until none is left (forks racing the kill are caught next round)."""
        for _ in range(200):
            members = self.pids()
            if not members:
                return
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.005)

    def remove(self) -> None:
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY while the last members are being torn down
                self.kill_all()
                time.sleep(0.01)


_reaped: set[Path] = set()


def _reap_stale(base: Path) -> None:
    """Kill and remove cgroups left behind by discopop processes that died without cleaning up."""
    if base in _reaped:
        return
    _reaped.add(base)
    try:
        entries = list(base.glob("discopop-*-*"))
    except OSError:
        return
    for entry in entries:
        try:
            owner = int(entry.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            stale = _Cgroup(entry, "", 0)
            stale.kill_all()
            stale.remove()


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
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if limits.file_size_mb:
        size = limits.file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


class SandboxedProcess:
    """A Python child (``python -m MODULE``) talking length-prefixed JSON over two private pipes.

    ``layers`` lists the isolation layers active for this child: the parent-side ones at start,
    plus any a reply reports under ``"sandbox_layers"`` (the worker's ``init`` reply does).
    """

    def __init__(self, module: str, limits: Limits, env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = ()):
        """``pass_fds``: extra descriptors the child inherits (an oracle socket); the caller closes its copies."""
        self.limits = limits
        self.workdir = Path(tempfile.mkdtemp(prefix="discopop-sandbox-"))
        self._busy = False
        self._cgroups: list[_Cgroup] = []
        if limits.max_processes:
            group = _Cgroup.create("pids", {"pids.max": limits.max_processes})
            if group:
                self._cgroups.append(group)
        if limits.memory_mb:
            size = limits.memory_mb * 1024 * 1024
            group = _Cgroup.create("memory", {"memory.limit_in_bytes": size})
            group = group or _Cgroup.create("memory", {"memory.max": size})
            if group:
                self._cgroups.append(group)
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
        self.layers = ["process-group", "env-allowlist", "rlimit-core"]
        self.layers += ["rlimit-as"] if limits.memory_mb else []
        self.layers += ["rlimit-fsize"] if limits.file_size_mb else []
        self.layers += ["netns"] if prefix else []
        self.layers += [f"cgroup-{g.controller}" for g in self._cgroups]
        self.layers += ["output-cap"] if limits.output_mb else []

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
        self._remove_cgroups()
        for conn in (self._send, self._recv):
            conn.close()
        self._output.join(1.0)
        try:
            remove_tree(self.workdir)
        except OSError as err:  # never expected (the tree is dead); say so rather than fail the caller
            warnings.warn(f"sandbox: could not remove {self.workdir}: {err}", RuntimeWarning, stacklevel=2)


# ---- child side -------------------------------------------------------------------------------


def child_connections() -> tuple[Connection, Connection]:
    """In the child: the (receive, send) connections the parent opened."""
    recv_fd, send_fd = (int(x) for x in os.environ["DISCOPOP_FDS"].split(","))
    return Connection(recv_fd, readable=True, writable=False), Connection(send_fd, readable=False, writable=True)


# Landlock (include/uapi/linux/landlock.h).
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_LL_TRUNCATE, _LL_REFER = 1 << 14, 1 << 13
_LL_DIR_WRITES = sum(1 << b for b in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
_LL_READS = _LL_EXECUTE | _LL_READ_FILE | _LL_READ_DIR
_LL_FILE_RIGHTS = _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | _LL_TRUNCATE  # what a rule on a file may grant
_LL_NET_BIND, _LL_NET_CONNECT = 1 << 0, 1 << 1
_LL_SCOPE_ABSTRACT_UNIX, _LL_SCOPE_SIGNAL = 1 << 0, 1 << 1
_SYS_LANDLOCK_CREATE, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT = 444, 445, 446  # same on x86-64/arm64
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 1, 38, 24
# Device files a worker may open for writing (GPU drivers open theirs read-write).
_WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random", "/dev/shm",
                     "/dev/dri", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
# What a worker reads besides its Python (``sys.prefix``, ``sys.path``), its work dir and task cache:
# shared libraries, the loader's cache, time zone, user names (``getpass``), CPU topology (OpenMP,
# torch), GPU discovery (CUDA, NVML). Not /etc as a whole (/etc/shadow), not /home or /root.
_READABLE_SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/ld.so.conf",
                    "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone", "/etc/passwd", "/etc/group",
                    "/etc/nsswitch.conf", "/etc/os-release", "/etc/mime.types", "/etc/ssl/certs",
                    "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys/vm/overcommit_memory",
                    "/proc/driver/nvidia", "/sys/devices", "/sys/bus", "/sys/class", "/sys/module/nvidia",
                    "/sys/fs/cgroup")
# Mount namespace (sched.h, sys/mount.h).
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 0x1000, 0x4000, 1 << 18
_MNT_DETACH = 2


def _harden() -> bool:
    """False only under the benchmark switch ``Limits.os_hardening``."""
    return os.environ.get("DISCOPOP_SANDBOX_HARDEN", "1") != "0"


def lock_down(workdir: str, network: bool = False) -> list[str]:
    """Put the child-side OS layers on this process (and its future children); return the active ones.

    Call it while the process still has one thread: Landlock restricts the calling thread and the
    threads it creates afterwards, not threads that already exist. Every layer is optional: a
    kernel or libc without it is skipped silently (the other layers still hold).

    The parent-death signal fires when the *thread* that started this process exits, so start
    sandboxes from long-lived threads: the main thread (``discopop check``, a Ray actor's methods)
    or a thread pool's workers (``LocalExecutor``), which live until the executor is closed.
    """
    if sys.platform != "linux":
        return []
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return []
    libc.syscall.restype = ctypes.c_long
    layers: list[str] = []
    parent = int(os.environ.get("DISCOPOP_SANDBOX_PARENT", "0"))
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
        layers.append("parent-death-signal")
        if parent and os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        layers.append("no-new-privs")
    readable = _readable_paths(workdir) if _harden() else {}
    if _harden():
        layers += _private_tmp(libc, [workdir, *readable], int(os.environ.get("DISCOPOP_SANDBOX_TMPFS_MB", "64")))
    layers += _landlock(libc, workdir, network, readable, private_shm="private-tmp" in layers)
    if _drop_capabilities(libc):
        layers.append("no-capabilities")
    return layers


def _readable_paths(workdir: str) -> dict[str, int]:
    """What this process may read, as {path: Landlock rights}: its Python, its import path, the task
    cache, the paths its parent named (``READ_PATHS_VAR``), the hub caches, its /proc entry, system files.

    A project directory on the import path (a repository root, say) is listable, but only its
    packages and modules are readable: a ``.env`` or key file next to them stays closed.
    """
    whole = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
             os.environ.get("DISCOPOP_CACHE_DIR", ""), os.environ.get("HF_HUB_CACHE", ""),
             os.environ.get("HF_DATASETS_CACHE", ""), *os.environ.get(READ_PATHS_VAR, "").split(os.pathsep),
             f"/proc/{os.getpid()}", *_READABLE_SYSTEM]
    work = os.path.realpath(workdir)
    rules: dict[str, int] = {}
    for entry in sys.path:
        real = os.path.realpath(entry) if entry and os.path.isabs(entry) else ""
        if not real or real == work or not os.path.exists(real):
            continue
        if not _outside_interpreter(real) or not os.path.isdir(real):
            whole.append(real)
            continue
        rules[real] = _LL_READ_DIR
        try:
            children = list(os.scandir(real))
        except OSError:
            children = []
        for child in children:
            path = os.path.realpath(child.path)
            if child.is_dir() and (child.name == "__pycache__" or os.path.exists(os.path.join(path, "__init__.py"))):
                rules[path] = _LL_READS
            elif child.is_file() and child.name.endswith((".py", ".pyc", ".so", ".pth")):
                rules[path] = _LL_READ_FILE | _LL_EXECUTE
    for path in whole:
        real = os.path.realpath(path) if path and os.path.isabs(path) else ""
        if real and real != work and os.path.exists(real):
            rules[real] = _LL_READS
    return rules


def _private_tmp(libc, keep: list[str], size_mb: int) -> list[str]:
    """A private mount namespace with a fresh size-capped tmpfs on /tmp and /dev/shm.

    What the child writes there is invisible to the host and freed with the child; what it must
    still see below them (its work dir, a task cache under /tmp) is bind-mounted back at the same
    path. Needs CAP_SYS_ADMIN (root): elsewhere the layer is absent and Landlock still keeps the
    child's writes in its work dir.
    """
    if libc.unshare(_CLONE_NEWNS) != 0:
        return []
    # Nothing mounted from here on may propagate back to the host's namespace.
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return []
    done = []
    for target in ("/tmp", "/dev/shm"):
        real = os.path.realpath(target)
        inside = sorted(p for p in keep if p.startswith(real + os.sep))
        inside = [p for i, p in enumerate(inside) if not any(p.startswith(q + os.sep) for q in inside[:i])]
        if os.path.isdir(real) and _mount_fresh_tmpfs(libc, real, inside, size_mb):
            done.append(target)
    return ["private-tmp"] if done == ["/tmp", "/dev/shm"] else []


def _mount_fresh_tmpfs(libc, target: str, keep: list[str], size_mb: int) -> bool:
    fds = []
    try:
        for path in keep:
            fds.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
    except OSError:
        for _, fd in fds:
            os.close(fd)
        return False
    options = f"size={size_mb}m,nr_inodes=65536,mode=1777".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    ok = libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options) == 0
    try:
        for path, fd in fds:
            if not ok:
                break
            source = f"/proc/self/fd/{fd}"
            if os.path.isdir(source):
                os.makedirs(path, mode=0o700, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                open(path, "ab").close()  # noqa: SIM115 - a mount point for the file
            if libc.mount(source.encode(), path.encode(), None, _MS_BIND | _MS_REC, None) != 0:
                libc.umount2(target.encode(), _MNT_DETACH)  # never leave the work dir hidden
                ok = False
    finally:
        for _, fd in fds:
            os.close(fd)
    return ok


def _landlock(libc, workdir: str, network: bool, readable: dict[str, int], private_shm: bool) -> list[str]:
    """Writes only in the work dir and device files (/dev/shm only when it is the child's own);
    reads only in ``readable`` and the work dir (all reads stay free when ``readable`` is empty);
    no TCP; no signals or abstract sockets outside."""
    import ctypes

    abi = libc.syscall(_SYS_LANDLOCK_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return []

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    fs = _LL_WRITE_FILE | _LL_DIR_WRITES | (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0)
    fs |= _LL_READS if readable else 0
    net = (_LL_NET_BIND | _LL_NET_CONNECT) if abi >= 4 and not network else 0
    scoped = (_LL_SCOPE_ABSTRACT_UNIX | _LL_SCOPE_SIGNAL) if abi >= 6 else 0
    attr = RulesetAttr(fs, net, scoped)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return []

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            rights &= fs if os.path.isdir(path) else fs & _LL_FILE_RIGHTS
            rule = PathBeneath(rights, fd)
            libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                         ctypes.c_uint32(0))
        finally:
            os.close(fd)

    try:
        allow(workdir, fs)
        devices = [*_WRITABLE_DEVICES, *(f"/dev/{n}" for n in os.listdir("/dev") if n.startswith("nvidia"))]
        devices = [d for d in devices if private_shm or d != "/dev/shm"]  # the host's: files there outlive us
        for path in devices:
            allow(path, fs if os.path.isdir(path) else _LL_FILE_RIGHTS & ~_LL_EXECUTE)
        for path, rights in readable.items():
            allow(path, rights)
        if libc.syscall(_SYS_LANDLOCK_RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return []
    finally:
        os.close(ruleset)
    return (["landlock-fs"] + (["landlock-read"] if readable else []) + (["landlock-net"] if net else [])
            + (["landlock-signals"] if scoped else []))


def _drop_capabilities(libc) -> bool:
    """Empty the bounding, effective, permitted and inheritable capability sets (a root child stays uid 0)."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, current = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), current) != 0 or not any(d.permitted for d in current):
        return False
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    return libc.capset(ctypes.byref(header), (Data * 2)()) == 0


# ---- seccomp: system calls a set-up worker never needs ---------------------------------------

# x86-64 numbers (arch/x86/entry/syscalls/syscall_64.tbl). Other architectures: the layer is absent.
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000  # the x32 ABI's syscall numbers: none is allowed
_SYS = {
    "socket": 41, "connect": 42, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "ptrace": 101,
    "syslog": 103, "uselib": 134, "vhangup": 153, "pivot_root": 155, "adjtimex": 159, "chroot": 161,
    "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "execveat": 322, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "clone3": 435,
    "pidfd_getfd": 438, "mount_setattr": 442,
}  # fmt: skip
# Refused outright (EPERM): new programs and processes, other processes' memory, mounts and
# namespaces, kernel modules/keys/BPF, io_uring (its operations bypass seccomp), and ``connect``
# on any socket (an inherited, already-connected socket or pipe keeps working for read/write).
_DENIED_SYSCALLS = sorted(set(_SYS) - {"socket", "clone", "clone3"})
_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC = 317, 1, 1
_CLONE_THREAD, _AF_UNIX = 0x00010000, 1
_RET_ALLOW = 0x7FFF0000
_RET_EPERM = 0x00050000 | errno.EPERM
_RET_ENOSYS = 0x00050000 | errno.ENOSYS


def _seccomp_program() -> list[tuple[int, int, int, int]]:
    """The BPF filter as (code, jt, jf, k) rows; jumps are relative, to the next row by default."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    nr, arch, arg0 = 0, 4, 16  # offsets in struct seccomp_data (arg0: its low 32 bits, little-endian)
    rows = [(ld, 0, 0, arch), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, _RET_EPERM),  # i386/x32 entry points
            (ld, 0, 0, nr), (jge, 0, 1, _X32_BIT), (ret, 0, 0, _RET_EPERM)]
    for name in _DENIED_SYSCALLS:
        rows += [(jeq, 0, 1, _SYS[name]), (ret, 0, 0, _RET_EPERM)]
    # clone3 cannot be inspected (its flags are behind a pointer): ENOSYS makes glibc fall back to clone.
    rows += [(jeq, 0, 1, _SYS["clone3"]), (ret, 0, 0, _RET_ENOSYS)]
    # clone: threads (CLONE_THREAD) only; fork, vfork and posix_spawn all arrive here without it.
    rows += [(jeq, 0, 4, _SYS["clone"]), (ld, 0, 0, arg0), (jset, 0, 1, _CLONE_THREAD),
             (ret, 0, 0, _RET_ALLOW), (ret, 0, 0, _RET_EPERM)]
    # socket: no AF_UNIX (pathname and abstract sockets of the host); others meet the empty netns.
    rows += [(jeq, 0, 4, _SYS["socket"]), (ld, 0, 0, arg0), (jeq, 0, 1, _AF_UNIX),
             (ret, 0, 0, _RET_EPERM), (ret, 0, 0, _RET_ALLOW)]
    return [*rows, (ret, 0, 0, _RET_ALLOW)]


def _install_seccomp() -> bool:
    """Load the filter on every thread of this process (TSYNC); False where it cannot be done."""
    import ctypes
    import platform

    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    rows = _seccomp_program()
    program = (SockFilter * len(rows))(*(SockFilter(*row) for row in rows))
    fprog = SockFprog(len(rows), program)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # required for an unprivileged filter
        return False
    return libc.syscall(_SYS_SECCOMP, ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
                        ctypes.c_uint(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog)) == 0


def seal(workdir: str) -> list[str]:
    """Close the last doors once the process's own set-up is done; return the layers put on.

    ``seccomp`` (system calls the set-up needed but a loss never does: process creation, exec,
    AF_UNIX sockets, connect, ptrace, mounts, namespaces, ...; denied with EPERM, so the candidate's
    error is reported) and the ``audit-guard`` (``install_guard``). Both are irreversible.
    """
    layers = ["seccomp"] if _harden() and _install_seccomp() else []
    install_guard(workdir)
    return [*layers, "audit-guard"]


_BLOCKED_EVENTS = {
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "signal.pthread_kill", "socket.connect", "socket.bind", "socket.sendto",
    "socket.sendmsg", "socket.getaddrinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
    "ctypes.cdata", "os.chown", "os.link", "os.symlink", "resource.setrlimit", "resource.prlimit",
    "sys.addaudithook", "sys.settrace", "sys.setprofile", "sqlite3.connect", "sqlite3.enable_load_extension",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
}  # fmt: skip
# File-system events allowed only on paths inside the work directory.
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.rename", "os.replace", "shutil.rmtree", "os.chmod", "os.truncate",
                "os.mkdir", "shutil.move", "shutil.copyfile", "shutil.copytree", "os.utime", "os.setxattr",
                "os.removexattr"}
_violations: list[str] = []


def guard_violations(clear: bool = True) -> list[str]:
    """What the runtime guard refused since the last call (the worker names it in its reply)."""
    found = list(_violations)
    if clear:
        _violations.clear()
    return found


def install_guard(workdir: str) -> None:
    """Refuse process creation, networking, signals and writes outside ``workdir`` for the rest of the process.

    Audit hooks cannot be removed once added. Python-level guards alone are bypassable, which is
    why the OS layers (process group kill, rlimits, network namespace, cgroups, Landlock) sit
    around this one.
    """
    root = os.path.realpath(workdir)

    def inside(path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def refuse(message: str) -> None:
        if len(_violations) < 100:
            _violations.append(message)
        raise PermissionError(f"sandbox: {message}")

    def hook(event: str, args: tuple) -> None:
        if event in _BLOCKED_EVENTS:
            refuse(f"'{event}' is not allowed")
        if event in _PATH_EVENTS:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    refuse(f"'{event}' on {os.fsdecode(arg)} is not allowed")
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 else "r"
            flags = args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            )
            if writing and not inside(args[0]):
                refuse(f"writing to {os.fsdecode(args[0])} is not allowed")

    sys.addaudithook(hook)
