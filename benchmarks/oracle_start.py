"""What one loss oracle start costs, spawned (a fresh interpreter importing torch) vs forked from the template
(``executor.oracle_start``), side by side in one invocation.

Each round starts ``--starts`` oracles one after another with each method (rounds alternate the order, so load
drifts hit both alike) and, per start, measures the wall time from the request to ``READY`` and the CPU-seconds
it cost: the oracle's own (``/proc/PID/stat`` at ``READY``: everything it ran, the interpreter start, the
imports, ``lock_down``, ``Oracle()``, ``seal``), this process's (creating the work dir, cgroups, the request) and,
for a fork, the template's (the fork itself). Then, as a train job's first requests: DPO is loaded and two
forwards of a batch of 32 that carry their gradient are timed, the first and the second (the first once paid
~0.3-0.8 s for a lazy import inside ``torch.autograd.grad``, on every candidate's critical path). The template's
one-off start is reported on its own line (one per worker per run). Medians per start, and the spawn/fork ratios.

    python benchmarks/oracle_start.py --rounds 3 --starts 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from discopop.proposers.reference import reference_candidate
from discopop.sandbox import Limits
from discopop.sandbox.oracle_fork import OracleTemplate
from discopop.sandbox.oracle_supply import ORACLE_MODULE, OracleProcess
from discopop.sandbox.remote_loss import OracleLink

TICK = os.sysconf("SC_CLK_TCK")
DPO = reference_candidate("dpo").code


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (its own threads, not its children)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def answer_seconds(link: OracleLink) -> float:
    """Wall seconds of one forward that carries its gradient (batch 32, the default training batch)."""
    inputs = tuple((-torch.rand(32) * 10).requires_grad_() for _ in range(4))
    started = time.perf_counter()
    link.forward_with_grads(inputs, 0.1, 1 / 32)
    return time.perf_counter() - started


def one_start(limits: Limits, template: OracleTemplate | None) -> dict[str, float]:
    template_cpu = cpu_seconds(template.proc.proc.pid) if template else 0.0
    mine, started = time.process_time(), time.perf_counter()
    oracle = OracleProcess(limits, ORACLE_MODULE, template=template)
    try:
        oracle.wait_ready(300)
        wall = time.perf_counter() - started
        own = cpu_seconds(oracle.proc.proc.pid)
        parent = time.process_time() - mine
        fork = cpu_seconds(template.proc.proc.pid) - template_cpu if template else 0.0
        link = OracleLink(oracle.sock, call_timeout=300)
        link.load(DPO)
        first, second = answer_seconds(link), answer_seconds(link)
    finally:
        oracle.close()
    return {"wall": wall, "oracle_cpu": own, "parent_cpu": parent, "template_cpu": fork,
            "cpu": own + parent + fork, "first_ms": first * 1e3, "second_ms": second * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--starts", type=int, default=5, help="oracle starts per method per round")
    args = parser.parse_args()
    limits = Limits()
    runs: dict[str, list[dict[str, float]]] = {"spawn": [], "fork": []}
    template_starts: list[tuple[float, float]] = []
    for round_ in range(args.rounds):
        for method in (("spawn", "fork") if round_ % 2 == 0 else ("fork", "spawn")):
            template = None
            if method == "fork":
                started = time.perf_counter()
                template = OracleTemplate(limits, ORACLE_MODULE)
                template.wait_ready(300)
                template_starts.append((time.perf_counter() - started, cpu_seconds(template.proc.proc.pid)))
            try:
                runs[method] += [one_start(limits, template) for _ in range(args.starts)]
            finally:
                if template:
                    template.close()
    print(f"{args.rounds} rounds x {args.starts} starts per method; medians per oracle start (load "
          f"{os.getloadavg()[0]:.1f} at the end; absolute times are under that load, compare the ratios)")
    print(f"{'':8}{'wall s':>10}{'CPU s':>10}{'oracle':>10}{'parent':>10}{'template':>10}"
          f"{'1st answer ms':>15}{'2nd ms':>8}")
    med = {m: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for m, rows in runs.items()}
    for method, m in med.items():
        print(f"{method:8}{m['wall']:10.3f}{m['cpu']:10.3f}{m['oracle_cpu']:10.3f}{m['parent_cpu']:10.3f}"
              f"{m['template_cpu']:10.3f}{m['first_ms']:15.1f}{m['second_ms']:8.1f}")
    print(f"spawn/fork ratio: wall {med['spawn']['wall'] / med['fork']['wall']:.1f}x, "
          f"CPU {med['spawn']['cpu'] / med['fork']['cpu']:.1f}x")
    walls, cpus = zip(*template_starts, strict=True)
    print(f"template start (once per worker): wall {statistics.median(walls):.3f} s, "
          f"CPU {statistics.median(cpus):.3f} s (median of {len(template_starts)})")


if __name__ == "__main__":
    main()
