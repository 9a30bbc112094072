"""What the OS hardening layers cost: worker start-up and one check job, hardened vs not, side by side.

Each round starts a sandboxed worker the way the executors do (``WarmWorker``: the worker imports torch,
puts the child-side layers on and answers ``init`` while a standby loss oracle starts beside it), runs one
check job of the DPO reference loss (its numeric checks run in that oracle), and closes both (kill + work dir
removal), once with the product's ``Limits`` (``os_hardening`` is always on:
private /tmp and /dev/shm, Landlock read rules, seccomp) and once with this benchmark's own subclass
``_Unhardened`` (the baseline: those three layers off, every other layer on).
Rounds alternate the order so that machine load drifts hit both sides alike. Medians, and the
hardened/baseline ratio, are printed per phase.

    python benchmarks/sandbox_startup.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from discopop.execution.executors import Job, WarmWorker, WorkerSpec
from discopop.sandbox import Limits

DPO = (Path(__file__).resolve().parent.parent / "discopop" / "proposals" / "dpo.py").read_text()


class _Unhardened(Limits):
    """The baseline: the product's limits without the three OS hardening layers (only this benchmark wants it)."""

    @property
    def os_hardening(self) -> bool:
        return False


def one_round(hardened: bool) -> dict[str, float]:
    started = time.perf_counter()
    # The oracle gets the worker's limits (``replace`` keeps the subclass), so the baseline drops the layers on both.
    worker = WarmWorker(WorkerSpec(task=None, training=None, limits=Limits() if hardened else _Unhardened()))
    try:
        worker.ensure_started()
        ready = time.perf_counter()
        result = worker.run(Job(row_id=0, code=DPO, stage="check"))
        assert result.ok, result.error
        checked = time.perf_counter()
        layers = set(worker.layers)
    finally:
        worker.close()
    closed = time.perf_counter()
    expected = {"private-tmp", "landlock-read", "seccomp"}
    assert (expected <= layers) if hardened else not (expected & layers), sorted(layers)
    return {"start": ready - started, "check": checked - ready, "close": closed - checked, "total": closed - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    one_round(True)  # warm the page cache for both sides (not counted)
    for i in range(args.rounds):
        for hardened in ((True, False) if i % 2 == 0 else (False, True)):
            runs[hardened].append(one_round(hardened))
    print(f"{args.rounds} rounds each, medians in seconds")
    print(f"{'phase':<8}{'hardened':>10}{'baseline':>10}{'ratio':>8}")
    for phase in ("start", "check", "close", "total"):
        on = statistics.median(r[phase] for r in runs[True])
        off = statistics.median(r[phase] for r in runs[False])
        print(f"{phase:<8}{on:>10.3f}{off:>10.3f}{on / off:>8.2f}")


if __name__ == "__main__":
    main()
