"""How many of the evolution proposer's children pass the numeric checks (target: at least 70%).

    python benchmarks/evolution_pass_rate.py [--n 200] [--seed 0] [--per-generation 20]

Starts from the reference losses with made-up fitness values, proposes generation after generation
(children join the history, scored if they pass, with random fitness), and prints the pass rate
overall and per operator. Loads candidates in-process: fine for the proposer's own output.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

import torch

from discopop.contract import checks, losses
from discopop.proposers.base import HistoryEntry
from discopop.proposers.evolution import EvolutionProposer, reference_parents


def check(code: str) -> str | None:
    """None if the loss passes every numeric check, else the one-line reason."""
    try:
        checks.check_loss(losses.load_loss(code))
    except (checks.CheckFailed, losses.LossRejected) as err:
        return str(err)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of proposals to check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the proposer and of the fake fitness")
    parser.add_argument("--per-generation", type=int, default=20, help="proposals asked for per generation")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: a thread pool only slows the checks down
    rng = random.Random(args.seed)
    history = [HistoryEntry(id=i + 1, generation=0, name=p.name, code=p.code, status="scored",
                            fitness=rng.random(), error=None, parent_ids=(), proposer="reference")
               for i, p in enumerate(reference_parents())]
    proposer = EvolutionProposer(seed=args.seed)
    total, passed, reasons = Counter(), Counter(), Counter()
    start, generation = time.perf_counter(), 0
    while sum(total.values()) < args.n:
        generation += 1
        cands = proposer.propose(history, min(args.per_generation, args.n - sum(total.values())), generation)
        if not cands:
            break
        for cand in cands:
            op, error = cand.info["operator"], check(cand.code)
            total[op] += 1
            passed[op] += error is None
            if error is not None:
                reasons[error.split(" (")[0]] += 1
            history.append(HistoryEntry(id=len(history) + 1, generation=generation, name=cand.name, code=cand.code,
                                        status="scored" if error is None else "invalid",
                                        fitness=rng.random() if error is None else None, error=error,
                                        parent_ids=tuple(cand.parent_ids), proposer="evolution"))
    n, ok = sum(total.values()), sum(passed.values())
    print(f"pass rate: {ok}/{n} = {ok / max(n, 1):.3f}  (seed {args.seed}, {generation} generations, "
          f"{time.perf_counter() - start:.1f}s)")
    for op in sorted(total):
        print(f"  {op:<10} {passed[op]}/{total[op]}")
    for reason, count in reasons.most_common(5):
        print(f"  failed x{count}: {reason}")


if __name__ == "__main__":
    main()
