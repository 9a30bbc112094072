"""The proposer seam: whatever writes new loss code (an LLM, an evolutionary program, a file list).

The loop hands a proposer the run's history (every archived candidate so far, as plain records)
and asks for ``k`` new candidates. Lineage is data: each candidate names the archive ids of its
parents. A proposer never runs candidate code; checking and training happen elsewhere. The optional
hooks (``observe``, ``set_facts``, ``state``/``load_state``, ``max_repairs``) have no-op defaults
here, so the loop calls them plainly and a new proposer overrides only what it uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from discopop.proposers.stop import ProposerStop as ProposerStop  # re-exported: the seam's error

if TYPE_CHECKING:
    from discopop.proposers.llm.facts import FitnessFacts
    from discopop.proposers.llm.metering import Meter


@dataclass
class Candidate:
    """A proposed loss, before it is checked or trained."""

    name: str
    code: str
    thought: str = ""
    parent_ids: list[int] = field(default_factory=list)
    proposer: str = ""
    # Proposer-specific facts worth archiving (model used, tokens, the mutation applied, ...).
    info: dict[str, Any] = field(default_factory=dict)
    # A proposal that could not even be turned into code (e.g. unparseable LLM answer): the loop
    # records it as ``invalid`` with this reason instead of checking it.
    error: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One archived candidate as a proposer sees it."""

    id: int
    generation: int
    name: str
    code: str
    status: str
    fitness: float | None
    error: str | None
    parent_ids: tuple[int, ...]
    proposer: str
    thought: str = ""
    # How the loss pushes, in a few words (``diagnostics.compact`` of its checks); "" if not measured.
    diagnostics: str = ""
    # What training measured, for the LLM's reflection (None / empty where not recorded).
    reward: float | None = None
    kl: float | None = None
    learning_rate: float | None = None  # the rate its fitness was reached at
    loss_curve: tuple[float, ...] = ()  # mean training loss over the first, middle and last third of the steps
    margin_used: tuple[float, ...] = ()  # |beta*rho| median and 90% quantile over the last epoch's examples
    stage: str = ""  # failures: the stage that failed (static, numeric, train, score, ...)
    # Noise-aware selection (``seed_race``): mean search fitness over its seeds at the chosen learning rate,
    # its lower confidence bound, and its score on each seed (empty for a row that is not scored).
    fitness_mean: float | None = None
    fitness_lcb: float | None = None
    fitness_seeds: tuple[float, ...] = ()
    # The behaviour cell of its gradient profile (``behaviour_map.cell``); None if not measured.
    behaviour_cell: tuple[int, ...] | None = None

    @property
    def selection_fitness(self) -> float | None:
        """What selection ranks by: the lower confidence bound when known, else the one search fitness."""
        return self.fitness_lcb if self.fitness_lcb is not None else self.fitness


class Proposer(ABC):
    """Writes new candidate losses from the history of a run."""

    name: str = "proposer"
    max_repairs: int = 0  # repair attempts the loop may ask for per failed candidate
    # 1: the loop asks for generation g+1 on a background thread while g is evaluated, from the history as it
    # stood before g's evaluation (worth it where proposing is slow, e.g. an LLM request); 0: in lock step.
    lookahead: int = 0

    @property
    def meter(self) -> Meter | None:
        """The run's token and dollar meter if this proposer spends money (an LLM judge counts into it too)."""
        return None

    @abstractmethod
    def propose(self, history: list[HistoryEntry], k: int, generation: int) -> list[Candidate]:
        """Return up to ``k`` new candidates for ``generation``."""

    def repair(self, failed: Candidate, failed_id: int, error: str, attempt: int) -> Candidate | None:
        """Offer a fixed version of a candidate that failed parsing or checks (``None``: no repair)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP clients, ...)."""

    def observe(self, entry: HistoryEntry) -> None:  # noqa: B027 - optional hook
        """Learn from one of this proposer's candidates once its outcome is archived."""

    def set_facts(self, facts: FitnessFacts) -> None:  # noqa: B027 - optional hook
        """Be told, before the first proposal, what the run's fitness is (task, protocol, noise)."""

    def state(self) -> dict[str, Any] | None:
        """What ``load_state`` needs to continue after ``--resume`` (None: nothing to save)."""
        return None

    def load_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Continue from a saved ``state()``."""
