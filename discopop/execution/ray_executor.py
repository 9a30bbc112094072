"""A Ray backend for the executor seam: warm sandboxed workers spread over a Ray cluster.

Each Ray actor owns one :class:`~discopop.execution.executors.WarmWorker`, i.e. one sandboxed child
process on the actor's node; candidate code runs in that child, never in the actor or the
driver. ``executor=ray executor.address=auto`` joins a running cluster (``ray start --head`` on
the head node, ``ray start --address=...`` on the others); with no address a local Ray instance
is started, which is only useful for testing the backend on one machine.

GPUs: with ``training.device=cuda`` (or ``auto`` on a cluster that has GPUs) each actor asks Ray for
``1 / executor.workers_per_gpu`` of a GPU (so 2 per GPU ask 0.5 each); Ray sets the actor's
``CUDA_VISIBLE_DEVICES`` and the sandboxed worker inherits it. Every node needs discopop and the
task's files (cache, local model paths) at the same paths as the driver.
"""

from __future__ import annotations

from collections.abc import Iterator

from discopop.config import RayExecutorSettings, TrainingSettings
from discopop.execution.devices import check_executor, check_precision, resolve_device
from discopop.execution.executors import Executor, Job, JobResult, WarmWorker, WorkerSpec


def actor_gpus(training: TrainingSettings, workers_per_gpu: int | None,
               cluster_gpus: float) -> tuple[str, float]:
    """(device, num_gpus per actor) for ``training.device`` on a cluster with ``cluster_gpus`` GPUs in all
    (``workers_per_gpu`` None: a whole GPU per actor)."""
    check_executor(RayExecutorSettings(workers_per_gpu=workers_per_gpu))
    workers_per_gpu = workers_per_gpu or 1
    device = "cpu" if training.device == "cpu" else resolve_device(training.device, cluster_gpus > 0)
    check_precision(training.precision, device)
    return device, (1.0 / workers_per_gpu if device == "cuda" else 0.0)


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
    """``workers`` Ray actors, each with ``spec.threads`` CPUs (and its share of a GPU) for its sandboxed worker."""

    def __init__(self, spec: WorkerSpec, workers: int = 1, address: str | None = None,
                 workers_per_gpu: int | None = None):
        try:
            import ray  # lazy: ray is optional (discopop[ray])
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
        try:
            self.device, gpus = actor_gpus(spec.training or TrainingSettings(), workers_per_gpu,
                                           float(ray.cluster_resources().get("GPU", 0)))
        except ValueError:
            self.close()
            raise
        # Ray pins each GPU actor with CUDA_VISIBLE_DEVICES; the worker keeps it (visible_devices=None).
        spec = spec.placed(self.device, None)
        actor = ray.remote(num_cpus=spec.threads, num_gpus=gpus)(_WorkerActor)
        self.num_gpus = gpus
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
        actors = getattr(self, "actors", [])
        try:
            self._ray.get([a.close.remote() for a in actors], timeout=30)
        except Exception:  # noqa: BLE001 - closing must not mask the run's own outcome
            pass
        for a in actors:
            self._ray.kill(a)
        if self._started_ray:
            self._ray.shutdown()
