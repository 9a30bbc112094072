"""A Ray backend for the executor seam: warm sandboxed workers spread over a Ray cluster.

Each Ray actor owns one :class:`~discopop.executors.WarmWorker`, i.e. one sandboxed child
process on the actor's node; candidate code runs in that child, never in the actor or the
driver. ``executor=ray executor.address=auto`` joins a running cluster (``ray start --head`` on
the head node, ``ray start --address=...`` on the others); with no address a local Ray instance
is started, which is only useful for testing the backend on one machine.
"""

from __future__ import annotations

from collections.abc import Iterator

from discopop.executors import Executor, Job, JobResult, WarmWorker, WorkerSpec


class _WorkerActor:
    """Ray actor body: one warm worker, restarted by WarmWorker itself after a timeout or crash."""

    def __init__(self, spec: WorkerSpec):
        self.worker = WarmWorker(spec)

    def warm_up(self) -> float:
        self.worker.ensure_started()
        return self.worker.init_seconds

    def run(self, job: Job) -> JobResult:
        return self.worker.run(job)

    def close(self) -> None:
        self.worker.close()


class RayExecutor(Executor):
    """``workers`` Ray actors, each with ``spec.threads`` CPUs reserved for its sandboxed worker."""

    def __init__(self, spec: WorkerSpec, workers: int = 1, address: str | None = None):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise ValueError("executor=ray needs Ray: pip install 'discopop[ray]'") from None
        if workers < 1:
            raise ValueError(f"executor.workers must be >= 1, got {workers}")
        self._ray = ray
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        actor = ray.remote(num_cpus=spec.threads)(_WorkerActor)
        self.actors = [actor.remote(spec) for _ in range(workers)]
        self._pool = ActorPool(self.actors)

    @property
    def parallelism(self) -> int:
        return len(self.actors)

    def warm_up(self) -> None:
        self._ray.get([a.warm_up.remote() for a in self.actors])

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        yield from self._pool.map_unordered(lambda actor, job: actor.run.remote(job), jobs)

    def close(self) -> None:
        try:
            self._ray.get([a.close.remote() for a in self.actors], timeout=30)
        except Exception:  # noqa: BLE001 - closing must not mask the run's own outcome
            pass
        for a in self.actors:
            self._ray.kill(a)
        if self._started_ray:
            self._ray.shutdown()
