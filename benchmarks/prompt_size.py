"""Prompt size of the OpenAI proposer at generation 50 and 200, in every history mode and protocol.

Runs the real ``OpenAIProposer`` against the loopback OpenAI-protocol server of
``tests/openai_server.py`` (real HTTP, no model), so what is measured is exactly what would be
sent. The archive is what a default run has at generation g: the 11 reference losses plus one
candidate per generation, with code from ``discopop/proposals/`` (realistic lengths), every
result the default prompt reflects on (fitness with three seeds' scores and a lower bound,
reward, KL, learning rate, training-loss curve, |beta*rho| used, shape diagnostics), and one in
five a failure with its stage and reason. In the conversation modes the proposer is driven turn
by turn (each answer observed) up to the request that would go out next.

    python benchmarks/prompt_size.py [--budget 6000] [--generations 50,200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from openai_server import FakeOpenAIServer, completion  # noqa: E402

from discopop.proposers.base import HistoryEntry  # noqa: E402
from discopop.proposers.llm import prompting as P  # noqa: E402
from discopop.proposers.llm.parsing import function_name  # noqa: E402
from discopop.proposers.llm.proposer import OpenAIProposer  # noqa: E402

PROPOSALS = sorted((ROOT / "discopop" / "proposals").glob("*.py"))
KEY_ENV = "DISCOPOP_PROMPT_SIZE_KEY"
REFERENCES = 11
# (label, history_mode, protocol, history_token_budget or None for --budget)
SETTINGS = [("archive", "archive", "default", None), ("conversation", "conversation", "default", None),
            ("none", "none", "default", None), ("paper", "conversation", "paper", 120000)]
DIAGNOSTICS = ("d loss/d rho at x=-3,0,+3: -0.953 / -0.5 / -0.0474; raising the chosen log-prob raises the loss "
               "at x = 2, 3")
FAILURES = [("invalid", "static", "static check: line 7: import of 'numpy' is not allowed"),
            ("train_failed", "train", "loss became NaN at step 12"),
            ("invalid", "numeric", "numeric check: the loss is not finite for rho = -40")]


@dataclass(frozen=True)
class SeededEntry(HistoryEntry):
    """A history entry with per-seed fitness, as the archive gives once candidates are re-scored."""

    fitness_seeds: tuple[float, ...] = field(default=())
    fitness_lcb: float | None = None


def history(generation: int, seed: int = 0) -> list[HistoryEntry]:
    """The archive at ``generation``: references at generation 0, then one candidate per generation."""
    rng = random.Random(seed)
    out: list[HistoryEntry] = []
    for i in range(1, REFERENCES + generation + 1):
        code = PROPOSALS[i % len(PROPOSALS)].read_text()
        gen = max(0, i - REFERENCES)
        common = {"id": i, "generation": gen, "name": f"{function_name(code)}_{i}", "code": code,
                  "parent_ids": (), "proposer": "reference" if gen == 0 else "openai",
                  "thought": "mix a logistic and an exponential term, with a margin on rho"}
        if gen and i % 5 == 0:
            status, stage, reason = FAILURES[i % len(FAILURES)]
            out.append(HistoryEntry(status=status, fitness=None, error=reason, stage=stage, **common))
            continue
        f = rng.uniform(0.7, 0.97)
        seeds = tuple(round(f + rng.gauss(0, 0.005), 4) for _ in range(3))
        out.append(SeededEntry(
            status="scored", fitness=f, error=None, fitness_seeds=seeds, fitness_lcb=min(seeds) - 0.004,
            reward=f + 0.01, kl=rng.uniform(0.01, 0.2), learning_rate=rng.choice([1e-5, 2e-5, 4e-5, 8e-5]),
            loss_curve=(0.6931, round(rng.uniform(0.4, 0.6), 4), round(rng.uniform(0.2, 0.4), 4)),
            margin_used=(round(rng.uniform(0.1, 0.6), 3), round(rng.uniform(0.8, 2.0), 3)), diagnostics=DIAGNOSTICS,
            **common))
    return out


def measure(mode: str, generation: int, budget: int) -> dict:
    """Tokens of the request the proposer sends at ``generation`` (``mode``: a label of SETTINGS)."""
    label, history_mode, protocol, own_budget = next(s for s in SETTINGS if s[0] == mode)
    entries = history(generation)
    # Answer n is candidate n of the archive, so the result observed after it is its own.
    evolved = [e for e in entries if e.generation > 0] or entries
    answers = iter([json.dumps({"thought": e.thought, "name": e.name, "code": e.code}) for e in evolved] * 2)
    server = FakeOpenAIServer(responder=lambda body: completion(next(answers)))
    server.start()
    os.environ.setdefault(KEY_ENV, "EMPTY")
    proposer = OpenAIProposer(model="stand-in", base_url=server.url, api_key_env=KEY_ENV, history_mode=history_mode,
                              protocol=protocol, history_token_budget=own_budget or budget, max_repairs=0,
                              max_concurrency=1, prices={"stand-in": {"prompt": 0.0, "completion": 0.0}})
    try:
        if history_mode == "conversation":  # one turn per generation, each answer observed, then the next request
            start = [e for e in entries if e.generation == 0]
            proposer.propose(start, k=1, generation=1)
            for entry in entries[len(start):]:
                proposer.observe(entry)
                proposer.propose([], k=1, generation=entry.generation + 1)
        else:
            proposer.propose(entries, k=1, generation=generation)
    finally:
        proposer.close()
        server.stop()
    sent = server.bodies()[-1]["messages"]
    history_tokens = P.messages_tokens(sent[1:])
    limit = own_budget or budget
    return {"mode": label, "generation": generation, "entries": len(entries), "messages": len(sent),
            "chars": sum(len(m["content"]) for m in sent), "tokens": P.messages_tokens(sent),
            "history_tokens": history_tokens, "budget": limit, "within": history_tokens <= limit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=6000, help="history_token_budget (default 6000)")
    parser.add_argument("--generations", default="50,200", help="comma-separated generations (default 50,200)")
    args = parser.parse_args()
    counter = "tiktoken o200k_base" if P.estimate_tokens("hello world") != len("hello world") // 4 else "chars // 4"
    print(f"history_token_budget={args.budget} (paper preset: its own 120000); tokens counted with {counter}")
    print(f"{'mode':<13}{'gen':>5}{'entries':>8}{'messages':>10}{'chars':>9}{'tokens':>8}{'history tok':>13}"
          f"{'budget':>8}  within")
    for label, *_ in SETTINGS:
        for g in (int(x) for x in args.generations.split(",")):
            r = measure(label, g, args.budget)
            print(f"{r['mode']:<13}{r['generation']:>5}{r['entries']:>8}{r['messages']:>10}{r['chars']:>9}"
                  f"{r['tokens']:>8}{r['history_tokens']:>13}{r['budget']:>8}  {'yes' if r['within'] else 'NO'}")


if __name__ == "__main__":
    main()
