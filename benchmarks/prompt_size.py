"""Prompt size of the OpenAI proposer at 10 and 200 archived candidates, in both history modes.

Runs the real ``OpenAIProposer`` request path with a stand-in client (no network), so what is
measured is exactly what would be sent. Histories are built from the reference losses in
``discopop/proposals/`` (realistic code lengths), one in five a failure with an error line.

    python benchmarks/prompt_size.py [--budget 6000]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from types import SimpleNamespace

from discopop.proposers import prompting as P
from discopop.proposers.base import HistoryEntry
from discopop.proposers.openai import OpenAIProposer
from discopop.proposers.parsing import function_name

PROPOSALS = sorted((Path(__file__).resolve().parent.parent / "discopop" / "proposals").glob("*.py"))


class _StandInClient:
    """Answers every request with the next proposal and records the messages it was sent."""

    def __init__(self, answers: list[str]):
        self.answers, self.sent = answers, []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, **kwargs):
        self.sent.append(kwargs["messages"])
        message = SimpleNamespace(content=self.answers[(len(self.sent) - 1) % len(self.answers)])
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")],
                               usage=SimpleNamespace(prompt_tokens=0, completion_tokens=0))

    def close(self) -> None:
        pass


def history(n: int, seed: int = 0) -> list[HistoryEntry]:
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        code = PROPOSALS[i % len(PROPOSALS)].read_text()
        failed = i % 5 == 0
        out.append(HistoryEntry(id=i, generation=i, name=f"{function_name(code)}_{i}", code=code,
                                status="invalid" if failed else "scored",
                                fitness=None if failed else rng.uniform(0.2, 0.8),
                                error="line 7: import of 'numpy' is not allowed" if failed else None,
                                parent_ids=(), proposer="openai", thought="mix a logistic and an exponential term"))
    return out


def measure(mode: str, n: int, budget: int) -> dict:
    entries = history(n)
    answers = [json.dumps({"thought": e.thought, "name": e.name, "code": e.code}) for e in entries] or ["{}"]
    proposer = OpenAIProposer(model="stand-in", base_url="http://127.0.0.1:9/v1", history_mode=mode,
                              history_token_budget=budget, prices={"stand-in": {"prompt": 0.0, "completion": 0.0}})
    client = proposer._clients[0] = _StandInClient(answers + ["{}"])
    if mode == "archive":
        proposer.propose(entries, k=1, generation=n)
    else:  # n turns, each answered and fed back, then the request that would go out next
        for entry in entries:
            proposer.propose([], k=1, generation=entry.generation)
            proposer.observe(entry)
        proposer.propose([], k=1, generation=n + 1)
    sent = client.sent[-1]
    chars = sum(len(m["content"]) for m in sent)
    return {"mode": mode, "entries": n, "messages": len(sent), "chars": chars,
            "tokens": P.messages_tokens(sent), "history_tokens": P.messages_tokens(sent[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=6000, help="history_token_budget (default 6000)")
    args = parser.parse_args()
    print(f"history_token_budget={args.budget}; tokens estimated as chars // 4 unless tiktoken is installed")
    print(f"{'mode':<13}{'entries':>8}{'messages':>10}{'chars':>9}{'tokens':>8}{'history tok':>13}")
    for mode in ("archive", "conversation"):
        for n in (10, 200):
            r = measure(mode, n, args.budget)
            print(f"{r['mode']:<13}{r['entries']:>8}{r['messages']:>10}{r['chars']:>9}{r['tokens']:>8}"
                  f"{r['history_tokens']:>13}")


if __name__ == "__main__":
    main()
