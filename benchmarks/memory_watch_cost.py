"""What ``memory-watch`` costs the parent: CPU time of its thread per second of watching one child.

A child Python process holds 256 MiB of touched shared memory and 16 idle threads (a training worker runs ~20)
while a ``MemoryWatch`` samples it under a cap it never reaches. The watch thread's own CPU clock
(``time.thread_time`` at its end) over the wall time gives ms of CPU per s watched, for the default interval and
a 4x faster one, with the tree found by a pids cgroup (where one can be made) and by the ``/proc`` session scan.
Also the cost of one read of each per-process memory source the docstring weighs (status vs smaps_rollup), and
the soft cap's overshoot: what a child filling shared memory at memset speed (numpy, 64 MiB a chunk, up to
2 GiB) held when the default watch killed it at a 256 MiB cap.

    python benchmarks/memory_watch_cost.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from discopop.sandbox.cgroups import Cgroup
from discopop.sandbox.memory_watch import INTERVAL_S, MemoryWatch

CHILD = r"""
import mmap, sys, threading, time
block = mmap.mmap(-1, 256 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
for offset in range(0, 256 << 20, mmap.PAGESIZE):
    block[offset] = 1
for _ in range(16):
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


FILLER = r"""
import mmap, numpy
block = mmap.mmap(-1, 2 << 30, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
view = numpy.frombuffer(block, dtype=numpy.uint8)
for start in range(0, 2 << 30, 64 << 20):
    view[start:start + (64 << 20)] = 1
"""


class _TimedWatch(MemoryWatch):
    """Records its thread's CPU time when the thread ends (only this benchmark wants it)."""

    cpu_seconds = 0.0

    def _run(self) -> None:
        super()._run()
        self.cpu_seconds = time.thread_time()


def watch_cost(pid: int, interval: float, members, seconds: float) -> dict[str, float]:
    watch = _TimedWatch(pid, 1 << 40, lambda: None, lambda: True, members=members, interval=interval)
    started = time.perf_counter()
    time.sleep(seconds)
    watch.stop()
    wall = time.perf_counter() - started
    return {"interval_ms": interval * 1000, "samples": watch.samples, "peak_mib": watch.peak / 2**20,
            "cpu_ms_per_s": 1000 * watch.cpu_seconds / wall,
            "cpu_us_per_sample": 1e6 * watch.cpu_seconds / max(watch.samples, 1)}


def overshoot(cap_mib: int = 256) -> tuple[int, str]:
    """The fast filler's fate under the default watch: its exit status and the watch's verdict."""
    filler = subprocess.Popen([sys.executable, "-c", FILLER], start_new_session=True)
    watch = MemoryWatch(filler.pid, cap_mib << 20, lambda: os.killpg(filler.pid, signal.SIGKILL),
                        lambda: filler.poll() is None)
    try:
        code = filler.wait(timeout=60)
    finally:
        filler.kill()
        watch.stop()
    return code, watch.reason or "not killed"


def read_cost(path: str, reads: int = 2000) -> float:
    """Microseconds of this thread's CPU per read of one /proc file."""
    started = time.thread_time()
    for _ in range(reads):
        with open(path, "rb") as f:
            f.read()
    return 1e6 * (time.thread_time() - started) / reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="watching time per configuration")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    group = Cgroup.create("pids", {"pids.max": 256})
    try:
        assert child.stdout and child.stdout.readline().strip() == "ready"
        if group:
            (group.path / "cgroup.procs").write_text(str(child.pid))
        trees = {"session scan": None, **({"pids cgroup": group.pids} if group else {})}
        rows = []
        for tree, members in trees.items():
            for interval in (INTERVAL_S, INTERVAL_S / 4):
                rows.append({"tree": tree, **watch_cost(child.pid, interval, members, args.seconds)})
                print(f"{tree:12s}  interval {rows[-1]['interval_ms']:4.1f} ms  samples {rows[-1]['samples']:5d}  "
                      f"peak {rows[-1]['peak_mib']:6.1f} MiB  CPU {rows[-1]['cpu_ms_per_s']:6.3f} ms/s  "
                      f"({rows[-1]['cpu_us_per_sample']:5.1f} us/sample)", flush=True)
        reads = {name: read_cost(f"/proc/{child.pid}/{name}") for name in ("status", "smaps_rollup")}
        print("one read: " + ", ".join(f"{name} {us:.1f} us" for name, us in reads.items()))
        fates = [overshoot() for _ in range(3)]
        for code, reason in fates:
            print(f"memset-speed filler: exit {code}, {reason}")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", FILLER], check=True)
        rate = 2 / (time.perf_counter() - started)  # GiB/s, interpreter and numpy start included: a lower bound
        print(f"unwatched, it fills 2 GiB at >= {rate:.2f} GiB/s: at most {rate * INTERVAL_S * 1024:.0f} MiB "
              f"past the cap per {INTERVAL_S * 1000:.0f} ms sample")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            figures = {"rows": rows, "read_us": reads, "overshoot": fates, "fill_gib_per_s": rate,
                       "load": os.getloadavg()}
            args.out.write_text(json.dumps(figures, indent=1))
    finally:
        child.kill()
        child.wait()
        if group:
            group.remove()


if __name__ == "__main__":
    main()
