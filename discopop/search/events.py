"""What a run reports, as typed events: the loop says what happened, a display decides what to show.

The loop never prints and never talks to wandb: it hands each event to one ``RunDisplay`` (``show``). The
terminal (``report.display.Display``: rich, through ``report.escape``), wandb (``report.tracking.TrackerDisplay``)
and a test's ``EventLog`` are displays; ``Displays`` hands every event to several. Events are plain frozen
records: they carry untrusted text (names, errors from candidate code) as it is, and every display escapes
it for its own kind of output. Nothing here reaches the archive, so what a display does never changes a run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, TypeVar

from discopop.archive import Row
from discopop.execution.executors import Job, JobResult
from discopop.search.screen_agreement import ScreenAgreement


@dataclass(frozen=True)
class RunStarted:
    """``run`` began: ``resumed_after`` generations were already done (0: a fresh run)."""

    generations: int
    seed: int
    resumed_after: int


@dataclass(frozen=True)
class Note:
    """A progress line (task built, workers starting, baselines from the store); may quote untrusted text."""

    text: str


@dataclass(frozen=True)
class RunWarning:
    """Something the run went on without (no reference store, transfer not confirmed)."""

    text: str


@dataclass(frozen=True)
class PhaseStarted:
    """A phase the progress is counted in: ``references``, ``generation g/G``, ``confirmation``, transfer."""

    label: str


@dataclass(frozen=True)
class PhaseFinished:
    label: str


@dataclass(frozen=True)
class CandidateStage:
    """A candidate entered a stage of the cascade (static, check, train, a cheap stage)."""

    row_id: int
    name: str
    stage: str


@dataclass(frozen=True)
class CandidateFinished:
    """A candidate's outcome, as archived; ``best_fitness``: the best this process has seen so far."""

    row_id: int
    name: str
    generation: int
    status: str
    fitness: float | None
    reward: float | None
    kl: float | None
    error: str | None
    best_fitness: float | None


@dataclass(frozen=True)
class JobsQueued:
    """Jobs handed to the executor (checks and fine-tunes), with how many run at once."""

    jobs: tuple[Job, ...]
    parallelism: int


@dataclass(frozen=True)
class JobReturned:
    result: JobResult


@dataclass(frozen=True)
class GenerationFinished:
    """A generation's rows are decided (repairs included): how many, how many scored, the best of them."""

    generation: int
    candidates: int
    scored: int
    best_fitness: float | None


@dataclass(frozen=True)
class ConfirmationVerdict:
    """One fresh-seed comparison of a confirmed candidate with a baseline (``variant``: a transfer variant)."""

    candidate: str
    baseline: str
    role: str
    verdict: str
    text: str
    variant: str | None = None


@dataclass(frozen=True)
class TransferVerdict:
    """A confirmed candidate's transfer verdicts, in one line (``search.transfer_confirm.transfer_text``)."""

    row_id: int
    name: str
    text: str


@dataclass(frozen=True)
class ScreenMeasured:
    """How the run's rate screen ranked against the full protocol, once its generations are done
    (``search.screen_agreement``); ``min_rho_lower``: the bound a filtering stage is held to."""

    record: ScreenAgreement
    min_rho_lower: float


@dataclass(frozen=True)
class RunStopped:
    """A ``ProposerStop`` ended the run early (budget, key, endpoint); ``--resume`` continues it."""

    reason: str
    run_dir: str


@dataclass(frozen=True)
class ResultsReady:
    """Every archived row, once the confirmation is archived (not after a stop)."""

    rows: tuple[Row, ...]


@dataclass(frozen=True)
class RunFinished:
    """``run`` ended, however: ``stopped`` says why when a stop ended it."""

    seconds: float
    stopped: str | None


Event = (RunStarted | Note | RunWarning | PhaseStarted | PhaseFinished | CandidateStage | CandidateFinished
         | JobsQueued | JobReturned | GenerationFinished | ConfirmationVerdict | TransferVerdict | ScreenMeasured
         | RunStopped | ResultsReady | RunFinished)
E = TypeVar("E")


class RunDisplay(Protocol):
    """Whatever shows a run: it hears every event and decides what (if anything) to show."""

    def show(self, event: Event) -> None: ...


class Displays:
    """Several displays as one: each event goes to each, in the order given."""

    def __init__(self, *members: RunDisplay):
        self.members = members

    def show(self, event: Event) -> None:
        for member in self.members:
            member.show(event)


class EventLog:
    """A display that keeps every event (tests, benchmarks): ``events`` in the order shown."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def show(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one type, in order."""
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]


class JobEvents:
    """The executor's watcher (``execution.observed.JobWatcher``) that turns its calls into events for ``display``."""

    def __init__(self, display: RunDisplay):
        self.display = display

    def jobs_queued(self, jobs: list[Job], parallelism: int) -> None:
        self.display.show(JobsQueued(tuple(jobs), parallelism))

    def job_done(self, result: JobResult) -> None:
        self.display.show(JobReturned(result))
