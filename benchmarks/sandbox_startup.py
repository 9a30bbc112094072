"""What the OS hardening layers cost: worker start-up and one check job, hardened vs not, side by side.

Each round starts a sandboxed worker (``python -m discopop.execution.worker``: imports torch, puts the
child-side layers on, answers ``init``), runs the numeric checks on the DPO reference loss once,
and closes it (kill + work dir removal), once with the product's ``Limits`` (``os_hardening`` is always on:
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

from discopop.sandbox import Limits, SandboxedProcess

DPO = (Path(__file__).resolve().parent.parent / "discopop" / "proposals" / "dpo.py").read_text()


class _Unhardened(Limits):
    """The baseline: the product's limits without the three OS hardening layers (only this benchmark wants it)."""

    @property
    def os_hardening(self) -> bool:
        return False


def one_round(hardened: bool) -> dict[str, float]:
    started = time.perf_counter()
    proc = SandboxedProcess("discopop.execution.worker", Limits() if hardened else _Unhardened())
    try:
        reply = proc.request({"op": "init", "task": None, "training": None}, timeout=120)
        assert reply["ok"], reply
        ready = time.perf_counter()
        reply = proc.request({"op": "check", "code": DPO}, timeout=60)
        assert reply["ok"], reply
        checked = time.perf_counter()
        layers = set(proc.layers)
    finally:
        proc.close()
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
