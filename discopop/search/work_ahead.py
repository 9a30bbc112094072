"""Work computed ahead on idle workers: a worker that would wait at a round's barrier runs a job the run will ask
for soon, and the result is handed out when that job is asked for. Two sources, most wanted first: a row's next
round (its climb points or race seeds, decided on copies as soon as its own jobs of the round are in:
``Evaluator.on_ahead`` -> :meth:`SpeculativeExecutor.offer`), then, with ``proposer.lookahead``, the next
generation's checks and first fine-tunes (the loop's ``supplier``).

Why: the cascade runs in rounds (``search.cascade``: every row's screen, then the climb of the rows near the best,
then the race seeds), and a round ends only when its last job does; with two workers and two candidates a round
often holds one job, so one worker waits. The loop knows what the next generation will ask first (its proposals
are made ahead, ``search.loop.Lookahead``), so the waiting worker can run it now.

It never changes a run: a job's result depends only on the job (code, stage, seed, split, rate, beta, step
fraction, tuning seeds), never on which worker ran it or when (``sandbox.oracle_keep``), so a result computed
ahead is the result the job would have had. The cascade still decides everything at the moment it would have,
from the archive as it stands then; a job asked for that was computed ahead is simply not run again, and one
computed ahead but never asked for is wasted work on a worker that would have been idle. A machinery failure
(a worker killed, a timeout) is never handed out: that job runs again when asked for.

Speculative jobs start only while fewer jobs are running than there are workers, so a round's own jobs always
come first; one already running when a round needs its worker delays that round by at most its remainder.
Candidate code runs as in any job: in a sandboxed worker, through its loss oracle. This module is scheduling in
the main process only (here in ``search``, not ``execution``, whose sources key the shared result store).
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from discopop.execution.executors import Executor, Job, JobResult, WrappingExecutor
from discopop.sandbox.oracle_keep import code_key

JobKey = tuple


def job_key(job: Job) -> JobKey:
    """Everything a job's result depends on (the row id is only a label: the same code gives the same result)."""
    return (code_key(job.code), job.stage, job.seed, job.split, job.learning_rate, job.step_fraction, job.beta,
            job.tune_seeds)


@dataclass
class SpeculationStats:
    """What the speculation did: jobs started ahead, how many were asked for later (hits), and how many failed."""

    started: int = 0
    hits: int = 0
    dropped: int = 0  # machinery failures (never handed out) or results evicted unused

    def as_dict(self) -> dict[str, int]:
        return {"started": self.started, "hits": self.hits, "dropped": self.dropped}


class SpeculativeExecutor(WrappingExecutor):
    """``inner`` plus jobs run ahead on idle workers; ``supplier`` (set by the loop) names them, most wanted first.

    ``supplier`` is called in the caller's thread, at each ``run`` and as each result comes back, so it may read
    the archive. ``keep``: results computed ahead held at most (the oldest unused are dropped first).
    """

    def __init__(self, inner: Executor, supplier: Callable[[], list[Job]] | None = None, keep: int = 64):
        super().__init__(inner)
        self.supplier = supplier
        self.keep = keep
        self.stats = SpeculationStats()
        self._ahead: OrderedDict[JobKey, Future] = OrderedDict()  # computed (or running) ahead, not yet asked for
        self._tried: set[JobKey] = set()  # never speculate the same job twice
        self._lock = threading.Lock()
        self._real = 0  # jobs of run() calls handed to inner and not yet returned
        self._spec_running = 0
        self._offered: list[Job] = []  # jobs known to be asked for next (``offer``), run ahead before the supplier's
        self._threads = ThreadPoolExecutor(max_workers=max(1, inner.parallelism),
                                           thread_name_prefix="discopop-ahead")

    def peek(self, job: Job) -> JobResult | None:
        """The result of ``job`` computed ahead, if it is finished (without taking it)."""
        with self._lock:
            fut = self._ahead.get(job_key(job))
        if fut is None or not fut.done():
            return None
        result = fut.result()
        return None if result is None else replace(result, job=job)

    def offer(self, jobs: list[Job]) -> None:
        """Jobs the caller will ask for in its next round (a row's next jobs, known before the round ends): run
        ahead first, in this order. Called in the caller's thread."""
        self._offered.extend(jobs)

    # ---- running ----------------------------------------------------------------------------------------

    def _run_one(self, job: Job) -> JobResult | None:
        try:
            result = next(iter(self.inner.run([job])), None)
        except Exception:  # noqa: BLE001 - work ahead is optional: a failure just means the job runs when asked
            result = None
        finally:
            with self._lock:
                self._spec_running -= 1
        if result is None or result.machinery:
            with self._lock:
                self.stats.dropped += 1
            return None
        return result

    def _fill(self) -> None:
        """Start jobs ahead while fewer jobs than workers are running."""
        spare = self.parallelism - self._real - self._spec_running
        if spare <= 0 or (self.supplier is None and not self._offered):
            return
        offered, self._offered = self._offered, []
        wanted = [*offered, *(self.supplier() if self.supplier is not None else [])]
        for i, job in enumerate(wanted):
            if spare <= 0:
                self._offered = [j for j in wanted[i:len(offered)]] + self._offered  # offered, not started yet
                break
            key = job_key(job)
            with self._lock:
                if key in self._tried:
                    continue
                self._tried.add(key)
                self._spec_running += 1
                self.stats.started += 1
                self._ahead[key] = self._threads.submit(self._run_one, job)
                while len(self._ahead) > self.keep:
                    _, old = self._ahead.popitem(last=False)
                    if old.cancel():  # never started: _run_one will not count it down
                        self._spec_running -= 1
                    self.stats.dropped += 1
            spare -= 1

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        """Each job's result: taken from the work done ahead where there is one, else run now."""
        done: queue.Queue[tuple[Job, JobResult | None, bool]] = queue.Queue()  # (job, result, computed ahead)
        failure: list[BaseException] = []
        todo: list[Job] = []
        asked = {job_key(job) for job in jobs}
        self._offered = [j for j in self._offered if job_key(j) not in asked]  # asked for now: no longer ahead
        for job in jobs:
            with self._lock:
                fut = self._ahead.pop(job_key(job), None)
            if fut is None or fut.cancelled():
                todo.append(job)
                continue
            fut.add_done_callback(lambda f, job=job: done.put((job, None if f.cancelled() else f.result(), True)))

        def real() -> None:
            try:
                for result in self.inner.run(todo):
                    with self._lock:
                        self._real -= 1
                    done.put((result.job, result, False))
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(err)
                done.put((Job(-1, "", "error"), None, False))

        with self._lock:
            self._real += len(todo)
        runner = threading.Thread(target=real, daemon=True, name="discopop-round") if todo else None
        if runner is not None:
            runner.start()
        # No join at the end: a stop (Ctrl-C) must not wait for the round's jobs; the pool's close ends them.
        for _ in range(len(jobs)):
            self._fill()  # here, not after the yield: the caller may have offered jobs meanwhile
            job, result, ahead = done.get()
            if failure:
                raise failure[0]
            if result is None:  # work ahead that failed its machinery: run it now
                result = next(iter(self.inner.run([job])))
            elif ahead:
                with self._lock:
                    self.stats.hits += 1
                result = replace(result, job=job)
            yield result

    def close(self) -> None:
        with self._lock:
            for fut in self._ahead.values():
                fut.cancel()
            self._ahead.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.inner.close()
