"""The reference losses shipped in ``proposals/`` (DPO, SLiC, IPO, LRML, ...), as candidates.

They are scored first in every run as baselines (archive rows with proposer ``reference``), and
the ``reference`` proposer replays them, which is handy for smoke tests and benchmarks.
"""

from __future__ import annotations

import re

from discopop.config.references import PROPOSALS_DIR, available
from discopop.proposers.base import Candidate, HistoryEntry, Proposer

__all__ = ["PROPOSALS_DIR", "ReferenceProposer", "available", "reference_candidate"]


# The references whose one constant is the label-flip rate they assume (cDPO's smoothing, rDPO's flip rate).
NOISE_CONSTANTS = {"cdpo": "LABEL_SMOOTHING", "rdpo": "FLIP_RATE"}


def reference_candidate(name: str, flip_rate: float | None = None) -> Candidate:
    """A reference loss as a candidate. ``flip_rate``: the task's true label-flip rate, where it is known.

    cDPO and rDPO are designed for a *known* flip rate; run at their textbook 0.1 on a task that flips
    25% or 40% of labels they are mis-tuned baselines, and a discovery that "beats" them would only
    have beaten the wrong constant. So they run at the task's rate (at 0 both are DPO exactly). The
    rewritten constant is in the code the archive keeps, so the row says what was scored.
    """
    path = PROPOSALS_DIR / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"unknown reference loss '{name}' (available: {', '.join(available())})")
    source = path.read_text()
    constant = NOISE_CONSTANTS.get(name)
    if constant is not None and flip_rate is not None:
        if not 0.0 <= flip_rate < 0.5:
            raise ValueError(f"{name} needs a label-flip rate in [0, 0.5), got {flip_rate}")
        source, count = re.subn(rf"^{constant} = [0-9.eE+-]+$", f"{constant} = {flip_rate!r}  # the task's flip rate",
                                source, flags=re.M)
        if count != 1:
            raise ValueError(f"{name}: expected one '{constant} = <number>' line to set the flip rate")
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
