"""``make_executor``: the executor the ``executor`` settings name (local workers, or Ray actors).

Apart from ``executors`` because the Ray executor builds on that module's classes.
"""

from __future__ import annotations

from discopop.config import ExecutorSettings, RayExecutorSettings
from discopop.execution.executors import Executor, LocalExecutor, WorkerSpec, placed_specs
from discopop.execution.ray_executor import RayExecutor


def make_executor(cfg: ExecutorSettings, spec: WorkerSpec) -> Executor:
    """Build the executor the ``executor`` settings name."""
    if cfg.workers == "auto" or int(cfg.workers) < 1:
        raise ValueError(f"executor.workers must be >= 1 (auto is resolved before the run), got {cfg.workers}")
    if isinstance(cfg, RayExecutorSettings):
        return RayExecutor(spec, workers=cfg.workers, address=cfg.address, workers_per_gpu=cfg.workers_per_gpu)
    return LocalExecutor(spec, workers=cfg.workers, specs=placed_specs(spec, cfg, cfg.workers))
