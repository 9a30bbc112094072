"""``training``: the short DPO fine-tune every candidate gets, and ``executor``: where it runs.

The training numbers were measured on the embedded task with ``python benchmarks/task_calibration.py``
(2 CPU cores). Each loss is judged at its own best learning rate on ``lr_grid`` (``discopop/fitness/tuning.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from discopop.config.base import ConfigError, check_count, is_number, require, setting
from discopop.sandbox import Limits

_LIMITS = Limits()  # the sandbox's own defaults (6144 MB, 256 MB) are the executor's: declared once, there
LR_GRID = [5.0e-6, 1.0e-5, 2.0e-5, 4.0e-5, 8.0e-5, 1.6e-4]


@dataclass
class TrainingSettings:
    """The same seed, data order and initial weights for every candidate; only the loss differs."""

    beta: float = setting(0.5, "KL strength passed to the loss. Sequences here are 2-4 tokens, so log-ratios drift "
                               "by ~1 nat; at 0.5 the scaled margin |beta*rho| reaches ~0.3-1 by the end of training, "
                               "where sigmoid, hinge and squared losses differ in shape (at 0.1 every loss acts like "
                               "its slope at zero).")
    learning_rate: float = setting(1.0e-5, "Used only where no grid applies (e.g. DiscoveredLossDPOTrainer examples).")
    lr_grid: list[float] | None = setting(LR_GRID, "Learning rates each loss may be judged at: factor-2 steps "
                                                   "spanning the reference losses' optima (PADLL peaks at 5e-6, LRML "
                                                   "and AQL at 8e-5). null: learning_rate only.")
    lr_screen_margin: float | None = setting(0.05, "A candidate whose screening run is more than this below the "
                                                   "run's best is not tuned further (its fitness is the screen, a "
                                                   "lower bound); null: tune every candidate.")
    epochs: int = setting(2, "Passes over the preference pairs.")
    batch_size: int = setting(32, "Preference pairs per optimiser step.")
    gradient_accumulation_steps: int = setting(1, "Split each step's batch into this many micro-batches (must divide "
                                                  "batch_size): same optimisation, less activation memory.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward: less memory, ~30% more "
                                                  "compute.")
    device: str = setting("auto", "auto | cpu | cuda (auto: CUDA when a worker sees a GPU; executor.gpus pins "
                                  "workers).")
    precision: str = setting("fp32", "fp32 | bf16 | fp16: mixed precision of the fine-tune (fp16 needs CUDA; bf16 "
                                     "works on CPU).")
    lora: Any = setting(None, "null: full fine-tune. A LoRA adapter instead (peft), e.g. "
                                                "training.lora='{r: 16, alpha: 32, dropout: 0.0, target_modules: "
                                                "all-linear}'. The reference is the base model with the adapter "
                                                "disabled; base weights stay frozen.")
    lr_scheduler: str = setting("constant", "Learning-rate schedule of the fine-tune (a transformers scheduler name).")
    warmup_steps: int = setting(0, "Scheduler warm-up steps.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.")
    max_pairs: int | None = setting(None, "Use only the first N pairs (null: all).")
    pair_fraction: float = setting(0.85, "Each run trains on this share of the pairs, drawn from its seed (with the "
                                         "data order): a fresh seed then varies the data seen, not just its order; "
                                         "1.0 = all pairs, order only.")
    threads: int = setting(1, "Torch threads per worker (2 workers x 1 thread beat 1 x 2 on 2 cores).")
    check_timeout: float = setting(30.0, "Seconds for the numeric checks of one candidate (kills the worker group).")
    train_timeout: float = setting(600.0, "Seconds for one fine-tune + scoring.")
    oracle_timeout: float = setting(10.0, "Seconds the worker waits for one answer of the loss oracle (a call takes "
                                          "ms).")

    def check(self) -> None:
        for key in ("beta", "learning_rate", "epochs", "batch_size", "check_timeout", "train_timeout",
                    "oracle_timeout"):
            require(getattr(self, key) > 0, f"training.{key} must be > 0, got {getattr(self, key)}")
        grid = self.lr_grid
        require(grid is None or (len(grid) > 0 and all(is_number(v) and v > 0 for v in grid)),
                f"training.lr_grid must be a non-empty list of learning rates > 0 (or null), got {grid!r}")
        margin = self.lr_screen_margin
        require(margin is None or margin >= 0,
                "training.lr_screen_margin must be a fitness margin >= 0 (or null: tune every candidate), "
                f"got {margin!r}")
        require(0.0 < self.pair_fraction <= 1.0, f"training.pair_fraction must be in (0, 1], got {self.pair_fraction}")
        require(self.threads >= 1, f"training.threads must be >= 1, got {self.threads}")
        from discopop.execution.devices import check_training

        try:
            check_training(self)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class ExecutorSettings:
    """What every executor shares: how many workers, and each sandboxed worker's limits."""

    name: str = setting("local", "The executor to build: local or ray.")
    workers: Any = setting("auto", "Parallel jobs (grid points, confirmation seeds), each using training.threads "
                                   "threads; auto = this machine's cores / training.threads, or on GPUs one per GPU "
                                   "(x workers_per_gpu). The run records the number.")
    workers_per_gpu: int | None = setting(None, "At most this many workers share one GPU (each pinned with "
                                                "CUDA_VISIBLE_DEVICES); null: no cap, as evenly as possible.")
    memory_mb: int = setting(_LIMITS.memory_mb, "Memory cap per worker: cgroup memory, plus a per-process rlimit: "
                                                "address space on CPU workers, data segment (private writable "
                                                "memory) on CUDA workers, whose driver reserves far more address "
                                                "space than it uses.")
    file_mb: int = setting(_LIMITS.file_size_mb, "Largest file a worker may write (caps runaway output).")

    def check(self) -> None:
        check_count(self.workers, "executor.workers", 1)
        require(self.memory_mb >= 1 and self.file_mb >= 1,
                f"executor.memory_mb and executor.file_mb must be >= 1, got {self.memory_mb}, {self.file_mb}")
        from discopop.execution.devices import check_executor

        try:
            check_executor(self)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class LocalExecutorSettings(ExecutorSettings):
    """Warm sandboxed worker processes on this machine."""

    gpus: Any = setting("auto", "CUDA workers only: auto (every GPU visible) or indices, e.g. [0,1]; workers spread "
                                "over them.")


@dataclass
class RayExecutorSettings(ExecutorSettings):
    """Warm sandboxed workers on a Ray cluster (pip install 'discopop[ray]'); each actor owns one worker process."""

    name: str = setting("ray", "The executor to build: local or ray.")
    workers: Any = setting(2, "Ray actors, each owning one sandboxed worker process with training.threads CPUs.")
    address: str | None = setting(None, 'null: start a local Ray instance; "auto" or "ray://host:10001": join a '
                                        "cluster.")
    workers_per_gpu: int | None = setting(None, "With CUDA training each actor asks Ray for 1/workers_per_gpu GPU "
                                                "(null: a whole GPU).")
