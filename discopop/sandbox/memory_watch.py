"""``memory-watch``: a sampled cap on a child tree's resident memory, where no kernel cap covers it all.

Why it exists: a CUDA worker's per-process memory cap is ``rlimit-data`` (``limits.py`` says why not
``rlimit-as``), and RLIMIT_DATA does not count shared anonymous mappings (``MAP_SHARED|MAP_ANONYMOUS``,
``/dev/shm``, SysV segments) nor, likely, CUDA's pinned host memory. ``cgroup-memory`` bounds those, but
GPU machines often delegate no memory cgroup. There this layer stands in: a daemon thread in the parent reads
the tree's resident memory every ``INTERVAL_S`` and, once it passes the cap, SIGKILLs every member it saw and
the child's process group; the job fails with one line (``SandboxedProcess`` reports ``reason``) and the
executor starts a fresh worker for the next job.

When it is on (``watch_needed``): a memory cap is set, the child's per-process cap is ``rlimit-data`` and it has
no ``cgroup-memory``. Not as a belt-and-braces layer everywhere, because it would add nothing there: a memory
cgroup is a hard, synchronous cap on everything this watch counts (and more); an ``rlimit-as`` child (a CPU
worker, every loss oracle) cannot map a byte past its cap, shared and pinned mappings included, and once sealed
it cannot fork, so its resident memory never reaches a cap equal to that limit. It would cost a thread and a
few ``/proc`` reads per child (and a template's forked oracles would count towards the template's tree).

What counts: ``RssAnon + RssShmem`` of ``/proc/PID/status``, summed over the tree. ``RssShmem`` is the gap
(resident shared-memory pages); ``RssAnon`` makes the cap one figure for the whole tree, as the cgroup's is.
``RssFile`` is left out: file pages are reclaimable page cache shared with every process that maps the same
file, and a CUDA worker maps gigabytes of cuBLAS/cuDNN code, so counting them would kill healthy workers and
bound nothing a runaway grows. The status counters are kept per process by the kernel (one small read, ~15 us
in a hot loop), where ``smaps_rollup`` walks the page tables of every mapping (2-7 ms for a child holding
256 MiB, and a CUDA worker's mappings are far larger). A shared page mapped by two members counts twice: an
error towards the cap, never past it.

Which tree: the members of the child's pids cgroup where it has one (a process that left the session is still
there), else every process in the child's session or descended from it, found by scanning ``/proc``
(``/proc/PID/task/TID/children`` needs a kernel option that kernels may lack); either list is renewed every
``REFRESH_S``, not every sample: a sealed worker cannot fork, so its tree is itself and the renewal only guards
the set-up before ``seal``.

It is a soft cap: a tree may overshoot by what it touches in one interval (a few GB/s per thread: a few
hundred MB at 50 ms) before it dies, and reserved but untouched pages do not count, rightly (they cost nothing).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

# 50 ms: a runaway touching pages at ~2-4 GB/s gets ~100-200 MB past the cap before it is killed (a numpy filler
# at 0.46 GiB/s was caught 7-14 MiB past a 256 MiB cap), and watching one worker costs ~5-7 ms of the parent's CPU
# per second, ~0.2-0.4 ms a sample, mostly the wake-up (benchmarks/memory_watch_cost.py, docs/results.md §0).
INTERVAL_S = 0.05
REFRESH_S = 1.0  # how often the tree's members are listed again (a sealed worker's never change)
_MIB = 1024 * 1024


def watch_needed(memory_mb: int, uses_cuda: bool, has_memory_cgroup: bool) -> bool:
    """Whether a child needs the watch: a cap is set, only RLIMIT_DATA holds it per process, and no cgroup does."""
    return bool(memory_mb) and uses_cuda and not has_memory_cgroup


def resident_bytes(pid: int) -> int | None:
    """``RssAnon + RssShmem`` of one process in bytes; 0 for a zombie (no memory left), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith((b"RssAnon:", b"RssShmem:")):
            total += int(line.split()[1]) * 1024  # the kernel writes kB
    return total


def session_tree(root: int) -> list[int]:
    """``root``, every process in its session and every descendant of it, from one scan of ``/proc``."""
    children: dict[int, list[int]] = {}
    members = {root}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # the name in parentheses may hold spaces
        pid, ppid, sid = int(name), int(fields[1]), int(fields[3])
        children.setdefault(ppid, []).append(pid)
        if sid == root:
            members.add(pid)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    return sorted(members)


class MemoryWatch:
    """Samples one child tree every ``interval`` seconds in a daemon thread; kills it past ``cap_bytes``.

    ``members`` lists the tree (e.g. a pids cgroup's members), else ``session_tree`` does; either is asked again
    every ``REFRESH_S`` (a cgroup v1 ``cgroup.procs`` read costs more than the sample itself). ``alive`` says
    whether the root still runs (the watch ends when it does not), ``kill`` ends its process group. After a kill
    ``reason`` holds the one-line verdict; ``peak`` is the largest sample.
    """

    def __init__(self, root: int, cap_bytes: int, kill: Callable[[], None], alive: Callable[[], bool],
                 members: Callable[[], list[int]] | None = None, interval: float = INTERVAL_S,
                 what: str = "worker") -> None:
        self.root, self.cap_bytes, self.interval, self.what = root, cap_bytes, interval, what
        self._kill, self._alive, self._members = kill, alive, members
        self._tree: list[int] = [root]
        self._scanned = float("-inf")
        self.reason: str | None = None
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discopop-memory-watch", daemon=True)
        self._thread.start()

    def tree(self) -> list[int]:
        """The pids counted now: the cgroup's members or the session's, as last listed (listed again when due)."""
        now = time.monotonic()
        if now - self._scanned >= REFRESH_S:
            found = self._members() if self._members is not None else session_tree(self.root)
            self._tree, self._scanned = found or [self.root], now
        return self._tree

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)  # half the CPU of an Event.wait with a timeout (benchmarks/memory_watch_cost.py)
            if self._stop.is_set() or not self._alive():
                return
            pids = self.tree()
            used = sum(resident_bytes(pid) or 0 for pid in pids)
            self.samples += 1
            self.peak = max(self.peak, used)
            if used > self.cap_bytes:
                self.reason = (f"memory-watch: {self.what} tree used {used // _MIB:,} MiB > cap "
                               f"{self.cap_bytes // _MIB:,} MiB (resident anonymous + shared memory)")
                for pid in pids:  # members that left the process group die too
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                self._kill()
                return

    def stop(self) -> None:
        """End the thread (the child is being closed); waits out its sleep, so no sample follows the close."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(self.interval + 1.0)
