"""An archive to test the fresh-seed confirmation on (``search.confirmation``, ``search.transfer_confirm``).

Imported from the tests folder (on pytest's path). The fixture is shared by assignment, ``archive =
helper_confirm.archive``, so a test asks for ``archive`` by name as if it were its module's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from discopop.archive import Archive
from discopop.execution.messages import TrainReply
from discopop.proposers.base import Candidate
from discopop.search.confirmation import fresh_seeds

SEEDS = fresh_seeds(0, 3)  # the fresh seeds of a run with seed 0 and three confirmation seeds
PROMPTS = 300  # prompts per confirmation run: enough for paired tests to separate a clear gain


@pytest.fixture()
def archive(tmp_path: Path) -> Iterator[Archive]:
    """A fresh archive, closed after the test."""
    arch = Archive(tmp_path / "archive.sqlite")
    yield arch
    arch.close()


def scored_row(arch: Archive, name: str, fitness: float, proposer: str = "evolution", lr: float | None = None,
               code: str | None = None) -> int:
    """A scored row (a reference in generation 0, anything else in 1) with its learning rate if given; its id."""
    row = arch.add(Candidate(name, code or f"# {name}\n", proposer=proposer), 0 if proposer == "reference" else 1)
    arch.finish(row, "scored", fitness=fitness, metrics={"learning_rate": lr} if lr else {})
    return row


def train_reply(**fields) -> TrainReply:
    """A worker's train reply as a test writes it: the fields it cares about, the rest neutral (one step, KL 0)."""
    per_prompt = list(fields.get("per_prompt", ()))
    base = {"steps": 1, "kl_coef": 0.0, "kl": 0.0, "per_prompt_kl": [0.0] * len(per_prompt)}
    return TrainReply(**{**base, **fields})
