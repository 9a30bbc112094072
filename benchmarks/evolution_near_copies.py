"""Share of the evolution proposer's children that are behaviour near-copies of their parent (goal: at most 20%).

    python benchmarks/evolution_near_copies.py [--n 200] [--seed 0] [--baseline-ref REF]

A child is a near-copy when the direction of its policy gradient on a probe (pairs with rho spread over
[-3, 3], the chosen and rejected drifts split unevenly) has cosine > 0.999 with its parent's: Adam ignores a
positive scale, so such a child trains like its parent. Crossover and piecewise children are compared with
their closer parent. Measured at beta 0.1 (the issue's figure) and 0.5, per operator and overall, and also
against every earlier loss (references and earlier children). Only children that pass the numeric checks
count (the others are never trained).

The same run is made with the proposer as it was at ``--baseline-ref`` (default: where this branch left
main), loaded from git into a temporary module, so the two figures come side by side. Loads candidates
in-process with ``load_loss``: fine for the proposer's own output, never for a language model's.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import torch

from discopop.contract import checks, losses
from discopop.proposers import evolution
from discopop.proposers.base import HistoryEntry
from discopop.proposers.reference import PROPOSALS_DIR

NEAR = 0.999
BETAS = (0.1, 0.5)
PROBE_POINTS = 61
SINGLE_MODULE = "discopop/proposers/evolution.py"  # the proposer before it became a package
PACKAGE = "discopop/proposers/evolution"


def probe(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Pairs whose rho runs over [-3, 3], with uneven, shifted chosen/rejected drifts (so side-aware losses show)."""
    gen = torch.Generator().manual_seed(seed)
    rho = torch.linspace(-3.0, 3.0, PROBE_POINTS, dtype=torch.float64)
    ref_c, ref_r = -20.0 - 40.0 * torch.rand(PROBE_POINTS, generator=gen, dtype=torch.float64), \
        -20.0 - 40.0 * torch.rand(PROBE_POINTS, generator=gen, dtype=torch.float64)
    split = 0.2 + 0.6 * torch.rand(PROBE_POINTS, generator=gen, dtype=torch.float64)
    shift = 2.0 * torch.rand(PROBE_POINTS, generator=gen, dtype=torch.float64) - 1.0
    return ref_c + split * rho + shift, ref_r - (1.0 - split) * rho + shift, ref_c, ref_r


def direction(code: str, beta: float) -> torch.Tensor | None:
    """Unit policy gradient of the batch-mean loss on the probe; None if it does not load or is degenerate."""
    try:
        fn = losses.load_loss(code)
        pc, pr, rc, rr = (t.clone().requires_grad_(i < 2) for i, t in enumerate(probe()))
        grads = torch.autograd.grad(fn(pc, pr, rc, rr, beta).mean(), (pc, pr))
    except Exception:  # noqa: BLE001 - a loss that fails here simply has no direction
        return None
    flat = torch.cat(grads)
    norm = flat.norm()
    return flat / norm if torch.isfinite(norm) and norm > 0 else None


def passes(code: str) -> bool:
    try:
        checks.check_loss(losses.load_loss(code))
    except (checks.CheckFailed, losses.LossRejected):
        return False
    return True


def git_show(ref: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{ref}:{path}"], check=True, capture_output=True, text=True).stdout


def load_baseline(ref: str) -> ModuleType:
    """The proposer as it was at ``ref``, imported from a temporary folder as the package ``evolution_baseline``.

    Before the split the proposer was the single module ``evolution.py``; after it, a package whose modules
    import each other by absolute name, so those names are pointed at the temporary copy.
    """
    single = subprocess.run(["git", "cat-file", "-e", f"{ref}:{SINGLE_MODULE}"], capture_output=True).returncode == 0
    if single:
        files = {"__init__.py": git_show(ref, SINGLE_MODULE)}
    else:
        listing = subprocess.run(["git", "ls-tree", "--name-only", f"{ref}:{PACKAGE}"], check=True,
                                 capture_output=True, text=True).stdout.split()
        files = {name: git_show(ref, f"{PACKAGE}/{name}").replace(PACKAGE.replace("/", "."), "evolution_baseline")
                 for name in listing if name.endswith(".py")}
    folder = Path(tempfile.mkdtemp()) / "evolution_baseline"
    folder.mkdir()
    for name, source in files.items():
        (folder / name).write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("evolution_baseline", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if single:
        module.PROPOSALS_DIR = PROPOSALS_DIR  # its own path points into the temporary folder
    return module


def measure(module: ModuleType, n: int, seed: int, per_generation: int) -> dict:
    """Propose ``n`` children generation by generation; count near-copies per operator and beta."""
    rng = random.Random(seed)
    refs = module.reference_parents()
    history = [HistoryEntry(id=i + 1, generation=0, name=p.name, code=p.code, status="scored", fitness=rng.random(),
                            error=None, parent_ids=(), proposer="reference") for i, p in enumerate(refs)]
    dirs = {beta: {e.name: direction(e.code, beta) for e in history} for beta in BETAS}
    proposer = module.EvolutionProposer(seed=seed)
    trained, near_parent, near_any, proposed = Counter(), Counter(), Counter(), 0
    generation = 0
    while proposed < n:
        generation += 1
        cands = proposer.propose(history, min(per_generation, n - proposed), generation)
        if not cands:
            break
        for cand in cands:
            proposed += 1
            op, ok = cand.info["operator"], passes(cand.code)
            history.append(HistoryEntry(id=len(history) + 1, generation=generation, name=cand.name, code=cand.code,
                                        status="scored" if ok else "invalid", fitness=rng.random() if ok else None,
                                        error=None, parent_ids=tuple(cand.parent_ids), proposer="evolution"))
            if not ok:
                continue
            trained[op] += 1
            for beta in BETAS:
                mine = direction(cand.code, beta)
                earlier = [d for d in dirs[beta].values() if d is not None]
                parents = [dirs[beta].get(p) for p in cand.info["parents"]]
                if mine is not None:
                    near_parent[beta, op] += max((float(mine @ d) for d in parents if d is not None),
                                                 default=0.0) > NEAR
                    near_any[beta, op] += max((float(mine @ d) for d in earlier), default=0.0) > NEAR
                dirs[beta][cand.name] = mine
    return {"trained": trained, "parent": near_parent, "any": near_any, "proposed": proposed}


def report(label: str, result: dict) -> None:
    trained = result["trained"]
    total = sum(trained.values())
    print(f"{label}: {total}/{result['proposed']} children pass the checks (are trained)")
    for beta in BETAS:
        near = sum(result["parent"][beta, op] for op in trained)
        near_any = sum(result["any"][beta, op] for op in trained)
        print(f"  beta {beta}: near-copy of parent {near}/{total} = {near / max(total, 1):.0%}; "
              f"of some earlier loss {near_any}/{total} = {near_any / max(total, 1):.0%}")
    for op in sorted(trained):
        shares = ", ".join(f"beta {b}: {result['parent'][b, op] / trained[op]:.0%}" for b in BETAS)
        print(f"    {op:<10} n={trained[op]:<4} near-copy of parent {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="children to propose per proposer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the proposers and of the fake fitness")
    parser.add_argument("--per-generation", type=int, default=20, help="children asked for per generation")
    parser.add_argument("--baseline-ref", default=None,
                        help="git revision of the proposer to compare with (default: merge-base of HEAD and main)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: a thread pool only slows things down
    ref = args.baseline_ref or subprocess.run(["git", "merge-base", "HEAD", "main"], check=True, capture_output=True,
                                              text=True).stdout.strip()
    for label, module in ((f"baseline ({ref[:10]})", load_baseline(ref)), ("this tree", evolution)):
        start = time.perf_counter()
        report(label, measure(module, args.n, args.seed, args.per_generation))
        print(f"  ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
