"""What a person sees during a run: a rich progress bar and one line per finished candidate."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from discopop.archive import Row
from discopop.report.escape import terminal
from discopop.status import Status

_STYLE = {Status.SCORED: "green", Status.INVALID: "yellow", Status.DUPLICATE: "cyan", Status.TRAIN_FAILED: "red",
          Status.EVAL_FAILED: "red"}


class Display:
    """Progress (generation, candidate, stage, elapsed, ETA) plus a line per finished candidate."""

    def __init__(self, total: int, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True, disable=quiet,
        )
        self.task_id = self.progress.add_task("starting", total=total)
        self.generation = "baselines"
        self._started: dict[int, float] = {}

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.console.print(message)

    def set_generation(self, label: str) -> None:
        self.generation = label

    def stage(self, row: Row, stage: str) -> None:
        self._started.setdefault(row.id, time.perf_counter())
        label = f"{self.generation} · #{row.id} {terminal(row.name[:28])} · {stage}"
        self.progress.update(self.task_id, description=label)

    def finished(self, row: Row, status: str, fitness: float | None, error: str | None) -> None:
        seconds = time.perf_counter() - self._started.pop(row.id, time.perf_counter())
        self.progress.advance(self.task_id)
        style = _STYLE.get(status, "white")
        score = f"{fitness:.3f}" if fitness is not None else "  -  "
        detail = f"  {terminal(error)}" if error else ""  # model-written text: never read as markup
        self.console.print(f"[{style}]{status:>12}[/] {score}  {seconds:5.1f}s  #{row.id} {terminal(row.name)}{detail}",
                           soft_wrap=True)
