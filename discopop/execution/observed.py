"""An executor that reports each job as it is queued and as it finishes, to whoever shows progress.

Every fine-tune of a run (references, candidates' screens, climbs and race seeds, the confirmation) passes
through the run's executor, so wrapping it here is the one seam where all of them can be counted; the
cascade and the confirmation stay unaware of any display. A result the result store supplies never
reaches an executor, so it is (rightly) not counted as work done.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from discopop.execution.executors import Executor, Job, JobResult, WrappingExecutor


class JobWatcher(Protocol):
    """What wants to hear of jobs (``report.display.Display``)."""

    def jobs_queued(self, jobs: list[Job], parallelism: int) -> None: ...

    def job_done(self, result: JobResult) -> None: ...


class ObservedExecutor(WrappingExecutor):
    """``inner`` with every ``run`` announced to ``watcher``: the jobs when queued, each result when it returns."""

    def __init__(self, inner: Executor, watcher: JobWatcher):
        super().__init__(inner)
        self.watcher = watcher

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        self.watcher.jobs_queued(list(jobs), self.inner.parallelism)
        for result in self.inner.run(jobs):
            self.watcher.job_done(result)
            yield result
