"""What a person sees during a run: progress counted in fine-tunes, and one line per finished candidate.

The terminal display of the loop's events (``search.events``, through ``show``): every line it prints
passes untrusted text (names, errors from candidate code, server messages) through ``report.escape``.

A run's time goes into fine-tunes (a candidate costs one to a dozen: the learning-rate screen, its climb,
the seed race; the confirmation more), so the progress counts those, not candidates. The loop says which
phase it is in (``PhaseStarted``) and what finished (``CandidateFinished``); the executor says which jobs
were queued and which returned (``JobsQueued``, ``JobReturned``). From these the display keeps:

- fine-tunes done, and the total expected: those queued so far plus, for the candidates not yet started,
  the fine-tunes per candidate measured so far (a prior of ``PRIOR_PER_CANDIDATE`` before any), plus the
  confirmation's;
- the jobs running now: with W workers the first W unfinished jobs in queue order (workers take jobs in
  that order), one line each;
- an ETA: the fine-tunes left divided by the rate measured since the first fine-tune finished.

On a terminal this is a live rich display; without one (a log file, CI), a plain line every ``interval``
seconds, so a long fine-tune never leaves the log silent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from discopop.archive import Row
from discopop.execution.executors import Job, JobResult
from discopop.report.escape import clean, terminal
from discopop.search.events import (
    CandidateFinished,
    CandidateStage,
    Event,
    JobReturned,
    JobsQueued,
    Note,
    PhaseStarted,
    RunStopped,
    RunWarning,
    ScreenMeasured,
    TransferVerdict,
)
from discopop.status import Status

_STYLE = {Status.SCORED: "green", Status.INVALID: "yellow", Status.DUPLICATE: "cyan", Status.TRAIN_FAILED: "red",
          Status.EVAL_FAILED: "red"}
PRIOR_PER_CANDIDATE = 4.0  # fine-tunes a candidate costs before any is measured: a screen, a short climb, a seed
PLAIN_INTERVAL = 30.0  # seconds between plain progress lines when the output is not a terminal


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Display:
    """Progress in fine-tunes (phase, running jobs, elapsed, ETA) plus a line per finished candidate.

    ``total``: candidates the run will evaluate (references included); ``confirm_fine_tunes``: what the
    confirmation will run; ``clock``: for tests.
    """

    def __init__(self, total: int, console: Console | None = None, quiet: bool = False, *,
                 confirm_fine_tunes: int = 0, interval: float = PLAIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self.generation = "starting"  # the task build and the workers' start, until the loop names a phase
        self.candidates_total = total
        self.confirm_fine_tunes = confirm_fine_tunes
        self.interval = interval
        self.clock = clock
        self.started_at = clock()
        self._started: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.RLock()
        self._queue: list[Job] = []  # unfinished jobs, in the order they were queued
        self._parallelism = 1
        self.fine_tunes_done = 0
        self.fine_tunes_queued = 0
        self._first_done_at: float | None = None
        self._done_before_rate = 0
        self._candidates_done = 0
        self._candidate_fine_tunes = 0  # fine-tunes of candidates already finished (the per-candidate rate)
        self._open_fine_tunes: dict[int, int] = {}  # row id -> fine-tunes queued for it so far
        self._confirming = False
        self._live: Live | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Display:
        if self.quiet:
            return self
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=True,
                              get_renderable=self._renderable)
            self._live.start()
        elif self.interval > 0:
            self._ticker = threading.Thread(target=self._tick, name="discopop-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._live is not None:
            self._live.stop()
        if self._ticker is not None:
            self._ticker.join(timeout=5)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.console.print(self.status_line(), soft_wrap=True, markup=False, highlight=False)

    # -- events from the loop --------------------------------------------------------------------------------
    def show(self, event: Event) -> None:
        """Show one event of the loop; events with nothing to say on a terminal are skipped."""
        match event:
            case Note(text):
                self.log(text)
            case RunWarning(text):
                self.console.print(f"[yellow]{terminal(text)}[/]", soft_wrap=True)
            case PhaseStarted(label):
                self.set_generation(label)
            case CandidateStage():
                self._stage(event.row_id, event.name)
            case CandidateFinished():
                self._finished(event.row_id, event.name, event.status, event.fitness, event.error)
            case JobsQueued(jobs, parallelism):
                self.jobs_queued(list(jobs), parallelism)
            case JobReturned(result):
                self.job_done(result)
            case TransferVerdict():
                self.log(f"transfer #{event.row_id} {event.name}: {event.text}")
            case ScreenMeasured(record, bound):  # numbers and fixed text only; yellow where not shown
                line = record.describe(bound)
                if record.agreement is not None and not record.shown(bound):
                    self.console.print(f"[yellow]{terminal(line)}[/]", soft_wrap=True)
                else:
                    self.log(line)
            case RunStopped(reason, run_dir):
                # One line however narrow the console (soft_wrap), escaped so server text cannot become markup.
                self.console.print(f"[yellow]run stopped: {terminal(reason)}[/]; fix the cause, then continue "
                                   f"with: discover --resume {terminal(run_dir)}", soft_wrap=True)

    def log(self, message: str) -> None:
        """A progress line: shown as text, never read as markup (it may quote a name or an error)."""
        self.console.print(terminal(message))

    def set_generation(self, label: str) -> None:
        with self._lock:
            self.generation = label
            self._confirming = label.startswith("confirm")

    def stage(self, row: Row, stage: str) -> None:
        self._stage(row.id, row.name)

    def _stage(self, row_id: int, name: str) -> None:
        with self._lock:
            self._started.setdefault(row_id, self.clock())
            self._names[row_id] = name

    def finished(self, row: Row, status: str, fitness: float | None, error: str | None) -> None:
        self._finished(row.id, row.name, status, fitness, error)

    def _finished(self, row_id: int, name: str, status: str, fitness: float | None, error: str | None) -> None:
        with self._lock:
            seconds = self.clock() - self._started.pop(row_id, self.clock())
            self._candidates_done += 1
            self._candidate_fine_tunes += self._open_fine_tunes.pop(row_id, 0)
        style = _STYLE.get(status, "white")
        score = f"{fitness:.3f}" if fitness is not None else "  -  "
        detail = f"  {terminal(error)}" if error else ""  # model-written text: never read as markup
        self.console.print(f"[{style}]{status:>12}[/] {score}  {seconds:5.1f}s  #{row_id} {terminal(name)}{detail}",
                           soft_wrap=True)

    # -- events from the executor (execution.observed) -------------------------------------------------------
    def jobs_queued(self, jobs: list[Job], parallelism: int) -> None:
        with self._lock:
            self._parallelism = max(1, parallelism)
            self._queue += jobs
            for job in jobs:
                if job.stage == "train":
                    self.fine_tunes_queued += 1
                    if not self._confirming:
                        self._open_fine_tunes[job.row_id] = self._open_fine_tunes.get(job.row_id, 0) + 1

    def job_done(self, result: JobResult) -> None:
        with self._lock:
            if result.job in self._queue:
                self._queue.remove(result.job)
            if result.job.stage == "train":
                self.fine_tunes_done += 1
                if self._first_done_at is None:
                    self._first_done_at = self.clock()
                    self._done_before_rate = self.fine_tunes_done

    # -- what is shown ---------------------------------------------------------------------------------------
    def per_candidate(self) -> float:
        """Fine-tunes a candidate has cost in this run (finished candidates), or the prior."""
        if self._candidates_done and self._candidate_fine_tunes:
            return self._candidate_fine_tunes / self._candidates_done
        return PRIOR_PER_CANDIDATE

    def expected_total(self) -> int:
        """Fine-tunes queued so far plus those expected for the candidates not yet started and the confirmation."""
        with self._lock:
            unstarted = max(0, self.candidates_total - self._candidates_done - len(self._open_fine_tunes))
            confirm_left = 0 if self._confirming else self.confirm_fine_tunes
            return max(self.fine_tunes_done, self.fine_tunes_queued + round(unstarted * self.per_candidate())
                       + confirm_left)

    def eta(self) -> float | None:
        """Seconds left at the rate measured since the first fine-tune finished; None before it is measurable."""
        with self._lock:
            if self._first_done_at is None:
                return None
            elapsed = self.clock() - self._first_done_at
            measured = self.fine_tunes_done - self._done_before_rate
            if measured <= 0 or elapsed <= 0:
                return None
            return (self.expected_total() - self.fine_tunes_done) * elapsed / measured

    def running(self) -> list[str]:
        """One label per job running now: the first ``parallelism`` unfinished jobs in queue order."""
        with self._lock:
            jobs = self._queue[: self._parallelism]
            labels = []
            for job in jobs:
                what = "checks" if job.stage == "check" else (
                    f"fine-tune lr {job.learning_rate:g}" if job.learning_rate is not None else "fine-tune")
                split = " (confirm prompts)" if job.split == "confirm" else ""
                name = self._names.get(job.row_id)
                labels.append(f"#{job.row_id}{' ' + name[:28] if name else ''}: {what}, seed {job.seed}{split}")
            return labels

    def status_line(self) -> str:
        """One plain line: phase, fine-tunes done of expected, jobs running, elapsed, ETA (untrusted names cleaned)."""
        running = self.running()
        jobs = f"; running {len(running)}: " + " | ".join(running) if running else ""
        return clean(f"[{self.generation}] fine-tunes {self.fine_tunes_done}/~{self.expected_total()}"
                              f", elapsed {_clock(self.clock() - self.started_at)}, ETA {_clock(self.eta())}{jobs}")

    def _renderable(self) -> Group:
        done, total = self.fine_tunes_done, max(1, self.expected_total())
        width = 24
        filled = min(width, int(width * done / total))
        elapsed = _clock(self.clock() - self.started_at)
        head = Text.assemble((f"{self.generation}  ", "bold"), ("━" * filled, "magenta"),
                             ("━" * (width - filled), "grey37"),
                             f"  fine-tunes {done}/~{total}  elapsed {elapsed}  ETA {_clock(self.eta())}")
        lines = [Text(f"  {clean(label)}", overflow="ellipsis", no_wrap=True) for label in self.running()]
        return Group(head, *lines)

