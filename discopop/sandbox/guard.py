"""The innermost layers: ``seal`` (seccomp, then the guard) and the runtime guard itself:

* ``audit-guard``: a ``sys.addaudithook`` hook refuses process creation, sockets, signals,
  ctypes, rlimit changes and Python-level writes outside the work directory, and records each
  refusal so the worker can name it (``guard_violations``).

Python-level guards alone are bypassable; that is why the OS layers sit around this one.
"""

from __future__ import annotations

import os
import sys

from discopop.sandbox.lockdown import hardening_on
from discopop.sandbox.seccomp import install_seccomp

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
            # Name the program for a process start: the one line then says which library tried it.
            what = f" ({os.fsdecode(args[0])[:120]!s})" if event == "subprocess.Popen" and args and args[0] else ""
            refuse(f"'{event}'{what} is not allowed")
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


def seal(workdir: str) -> list[str]:
    """Close the last doors once the process's own set-up is done; return the layers put on.

    ``seccomp`` (system calls the set-up needed but a loss never does: process creation, exec,
    AF_UNIX sockets, connect, ptrace, mounts, namespaces, ...; denied with EPERM, so the candidate's
    error is reported) and the ``audit-guard`` (``install_guard``). Both are irreversible.
    """
    layers = ["seccomp"] if hardening_on() and install_seccomp() else []
    install_guard(workdir)
    return [*layers, "audit-guard"]
