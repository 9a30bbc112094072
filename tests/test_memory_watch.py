"""``memory-watch`` (``discopop/sandbox/memory_watch.py``) ends a tree whose shared memory passes the cap, where
RLIMIT_DATA (a CUDA worker's per-process cap) lets it through and no memory cgroup is in the way.

Real child processes allocate ``MAP_SHARED|MAP_ANONYMOUS`` memory page by page (candidate code cannot import
``mmap``, so the hostile corpora are not the route). Each test runs in about a second.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from discopop.sandbox import Limits, SandboxDied, SandboxedProcess, memory_watch, parent
from discopop.sandbox.memory_watch import MemoryWatch, resident_bytes, session_tree

MIB = 1024 * 1024
CAP_MB = 64
REASON = re.compile(r"^memory-watch: worker tree used ([\d,]+) MiB > cap 64 MiB "
                    r"\(resident anonymous \+ shared memory\)$")

# argv: MiB of shared memory to touch, "tree" to start a grandchild that touches as much, seconds to hold it.
CHILD = r"""
import mmap, subprocess, sys, time
mb, tree, hold = int(sys.argv[1]), sys.argv[2] == "tree", float(sys.argv[3])
if tree:
    subprocess.Popen([sys.executable, __file__, sys.argv[1], "leaf", sys.argv[3]])
block = mmap.mmap(-1, mb << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
for offset in range(0, mb << 20, mmap.PAGESIZE):
    block[offset] = 1
print("allocated", flush=True)
time.sleep(hold)
print("done", flush=True)
"""


def _data_limit() -> None:
    """The CUDA worker's per-process cap, at the watch's cap: it does not count shared mappings."""
    resource.setrlimit(resource.RLIMIT_DATA, (CAP_MB * MIB, CAP_MB * MIB))


def start(tmp_path: Path, mb: int, hold: float, tree: bool = False) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), str(mb), "tree" if tree else "one", str(hold)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_data_limit)  # noqa: PLW1509 - the limit must precede exec


def watch(proc: subprocess.Popen) -> MemoryWatch:
    return MemoryWatch(proc.pid, CAP_MB * MIB, lambda: os.killpg(proc.pid, signal.SIGKILL),
                       lambda: proc.poll() is None, interval=0.02)


def test_rlimit_data_lets_shared_memory_through_and_the_watch_ends_it(tmp_path: Path) -> None:
    unwatched = start(tmp_path, 3 * CAP_MB, hold=0)
    out, _ = unwatched.communicate(timeout=30)
    assert unwatched.returncode == 0 and out.split() == ["allocated", "done"]  # RLIMIT_DATA did not stop it

    proc = start(tmp_path, 3 * CAP_MB, hold=10)
    watcher = watch(proc)
    started = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=8)
    finally:
        proc.kill()
        watcher.stop()
    assert proc.returncode == -signal.SIGKILL and "done" not in out and time.monotonic() - started < 8
    found = REASON.match(watcher.reason or "")
    assert found, watcher.reason
    assert CAP_MB < int(found[1].replace(",", "")) <= 3 * CAP_MB + 64  # what it held when caught


def test_a_child_under_the_cap_is_left_alone_and_its_shared_memory_is_counted(tmp_path: Path) -> None:
    proc = start(tmp_path, CAP_MB // 2, hold=0.5)
    watcher = watch(proc)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        watcher.stop()
    assert proc.returncode == 0 and out.split() == ["allocated", "done"] and watcher.reason is None
    assert watcher.samples >= 5 and watcher.peak >= CAP_MB // 2 * MIB  # the shared block was seen
    assert resident_bytes(proc.pid) is None  # reaped: gone, not counted as 0 of a live process


def test_the_watch_sums_the_whole_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Child and grandchild each hold 40 MiB (each under the 64 MiB cap), together over it; the grandchild starts
    after the watch's first scan, so the rescan must find it."""
    monkeypatch.setattr(memory_watch, "REFRESH_S", 0.1)
    proc = start(tmp_path, 40, hold=10, tree=True)
    watcher = watch(proc)
    try:
        deadline = time.monotonic() + 5
        while watcher.reason is None and time.monotonic() < deadline:
            time.sleep(0.02)
            tree = session_tree(proc.pid)
            if len(tree) == 2:
                alone = [resident_bytes(pid) or 0 for pid in tree]
                assert all(used < CAP_MB * MIB for used in alone)  # neither would trip it alone
        out, _ = proc.communicate(timeout=5)
    finally:
        proc.kill()
        watcher.stop()
    assert proc.returncode == -signal.SIGKILL and "done" not in out
    assert REASON.match(watcher.reason or ""), watcher.reason
    time.sleep(0.2)
    assert [pid for pid in session_tree(proc.pid) if resident_bytes(pid)] == []  # the grandchild died too


PROBE = r"""
import json, mmap, os, time
from discopop.sandbox import child_connections, lock_down
layers = lock_down(os.environ["DISCOPOP_SANDBOX_DIR"])
recv, send = child_connections()
held = []
while True:
    request = json.loads(recv.recv_bytes())
    size = request["mb"] << 20
    held.append(mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS))
    for offset in range(0, size, mmap.PAGESIZE):
        held[-1][offset] = 1
    time.sleep(request["hold"])
    send.send_bytes(json.dumps({"ok": True, "sandbox_layers": layers}).encode())
"""


def test_a_cuda_style_sandboxed_child_without_a_memory_cgroup_gets_the_watch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``SandboxedProcess`` as a CUDA worker is started (rlimit-data), on a machine whose memory cgroup is
    taken away if it has one: the layer is reported, a request under the cap is answered, one past it fails with the
    watch's one line."""
    make_cgroups = parent.make_cgroups

    def no_memory_cgroup(limits: Limits) -> list:
        groups = make_cgroups(limits)
        for group in [g for g in groups if g.controller == "memory"]:
            group.remove()
        return [g for g in groups if g.controller != "memory"]

    monkeypatch.setattr(parent, "make_cgroups", no_memory_cgroup)
    (tmp_path / "memory_probe.py").write_text(PROBE)
    proc = SandboxedProcess("memory_probe", Limits(memory_mb=CAP_MB, uses_cuda=True),
                            env={"PYTHONPATH": str(tmp_path)})
    try:
        assert "rlimit-data" in proc.layers and "memory-watch" in proc.layers and "cgroup-memory" not in proc.layers
        assert "memory-watch" in proc.missing_layers()["cgroup-memory"]  # the gap it stands in for, named
        assert proc.request({"mb": 16, "hold": 0.2}, timeout=30)["ok"] and proc.alive()
        with pytest.raises(SandboxDied) as died:
            proc.request({"mb": 3 * CAP_MB, "hold": 10}, timeout=30)
        assert REASON.match(str(died.value)), died.value
    finally:
        proc.close()
    cpu = SandboxedProcess("memory_probe", Limits(memory_mb=CAP_MB), env={"PYTHONPATH": str(tmp_path)})
    try:
        assert "memory-watch" not in cpu.layers  # rlimit-as counts shared mappings: no watch needed
    finally:
        cpu.close()
