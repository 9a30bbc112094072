"""Private cgroups for one child tree (layers ``cgroup-pids`` and ``cgroup-memory``).

A private cgroup (v1, or v2 with the controller delegated) caps the number of tasks of the whole
tree (``Limits.max_processes``: a fork bomb stops there, unlike ``RLIMIT_NPROC``, which does not
bind root) and its total memory; ``SandboxedProcess.kill()`` kills every member, so a process that
left the process group (``setsid``) dies too. Where the machine does not allow it the layer is absent.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

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


class Cgroup:
    """A private cgroup for one child tree (one controller); ``create`` returns None where not allowed."""

    def __init__(self, path: Path, controller: str, version: int):
        self.path = path
        self.controller = controller
        self.version = version

    @classmethod
    def create(cls, controller: str, settings: dict[str, int]) -> Cgroup | None:
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
            stale = Cgroup(entry, "", 0)
            stale.kill_all()
            stale.remove()
