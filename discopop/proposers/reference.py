"""The reference losses shipped in ``proposals/`` (DPO, SLiC, IPO, LRML, ...), as candidates.

They are scored first in every run as baselines (archive rows with proposer ``reference``), and
the ``reference`` proposer replays them, which is handy for smoke tests and benchmarks.
"""

from __future__ import annotations

from discopop.config.references import PROPOSALS_DIR, available
from discopop.proposers.base import Candidate, HistoryEntry, Proposer

__all__ = ["PROPOSALS_DIR", "ReferenceProposer", "available", "reference_candidate"]


def reference_candidate(name: str) -> Candidate:
    path = PROPOSALS_DIR / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"unknown reference loss '{name}' (available: {', '.join(available())})")
    source = path.read_text()
    doc = source.split('"""')[1].strip().splitlines()[0] if source.startswith('"""') else name
    return Candidate(name=name, code=source, thought=doc, proposer="reference")


class ReferenceProposer(Proposer):
    """Proposes the reference losses one after another (then nothing)."""

    name = "reference"

    def __init__(self, names: list[str] | None = None):
        self.names = list(names or available())

    def propose(self, history: list[HistoryEntry], k: int, generation: int) -> list[Candidate]:
        tried = {h.name for h in history if h.proposer == "reference"}
        todo = [n for n in self.names if n not in tried][:k]
        return [reference_candidate(n) for n in todo]
