"""Where the inner fine-tune runs: device, precision, LoRA settings, and which GPU each worker gets.

Torch-free at import: the main process validates the config and plans the workers before any
worker starts, and only asks torch how many GPUs it sees when a setting needs that answer
(``device=auto`` or ``cuda``, ``executor.gpus=auto``). Every mistake is one ``ValueError`` line
naming the key, the value and what is allowed (``config.validate`` turns it into a ``ConfigError``).

GPU assignment (``gpu_slots``): worker ``i`` gets the ``i % n``-th of the ``n`` GPUs it may use,
so workers spread over GPUs before they share one; ``executor.workers_per_gpu`` caps how many
share a GPU. A worker is pinned with ``CUDA_VISIBLE_DEVICES`` (it then sees exactly one GPU, as
``cuda:0``). Indices in ``executor.gpus`` count the GPUs this process sees, so under an outer
``CUDA_VISIBLE_DEVICES=2,3`` index 0 is physical GPU 2, and the worker is given ``2``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from discopop.config import ExecutorSettings, LocalExecutorSettings, TrainingSettings, from_plain

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
# The CUDA_VISIBLE_DEVICES a CPU-only process gets: it sees no GPU, so nothing in it can start a CUDA context.
NO_GPU = ""


def cuda_device_count() -> int:
    """GPUs this process can use through torch (0 for a CPU build of torch or without a visible GPU)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(setting: Any, cuda_available: bool, why_not: str = "") -> str:
    """``training.device`` as the fine-tune uses it: "cpu" or "cuda" (auto: CUDA when there is one).

    ``why_not``: torch's own reason CUDA is unusable, when known (a worker whose parent saw a GPU).
    """
    if setting not in DEVICES:
        raise ValueError(f"training.device must be one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "auto":
        return "cuda" if cuda_available else "cpu"
    if setting == "cuda" and not cuda_available:
        reason = f": {why_not}" if why_not else " (torch built without CUDA, or no GPU visible)"
        raise ValueError(f"training.device=cuda but no CUDA GPU is usable here{reason}; "
                         "use training.device=auto or cpu")
    return setting


def cuda_failure_reason() -> str:
    """Why torch cannot use CUDA in this process, in one line ("" when it can, or torch has no CUDA at all).

    A worker whose parent saw a GPU but which sees none was stopped by something in between (its
    sandbox, its environment); torch's own error says what, where a bare "not available" would not.
    """
    import torch

    if torch.cuda.is_available() or not torch.backends.cuda.is_built():
        return ""
    try:
        torch.cuda.init()
    except Exception as err:  # noqa: BLE001 - the message is the point
        return " ".join(str(err).split())[:300]
    return ""


def check_precision(setting: Any, device: str, bf16_supported: bool = True) -> str:
    """``training.precision`` if it can run on ``device``; fp16 needs CUDA, bf16 on CUDA needs a GPU that has it."""
    if setting not in PRECISIONS:
        raise ValueError(f"training.precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting == "fp16" and device != "cuda":
        raise ValueError("training.precision=fp16 needs a CUDA device (mixed fp16 is GPU-only); "
                         "use bf16 or fp32 on CPU")
    if setting == "bf16" and device == "cuda" and not bf16_supported:
        raise ValueError("training.precision=bf16 is not supported by this GPU (needs compute capability >= 8.0); "
                         "use fp16 or fp32")
    return setting


@dataclass(frozen=True)
class LoraSettings:
    """``training.lora``: a LoRA adapter for the inner fine-tune (None in the config: full fine-tune)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = "all-linear"

    def peft_config(self):
        """The peft ``LoraConfig`` (imported here: the main process never needs peft)."""
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          bias="none", task_type="CAUSAL_LM")


def lora_settings(value: Any) -> LoraSettings | None:
    """Parse ``training.lora`` (null, or a mapping with r, alpha, dropout, target_modules)."""
    if value is None or value is False:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"training.lora must be null or a mapping (r, alpha, dropout, target_modules), got {value!r}")
    unknown = sorted(set(value) - {"r", "alpha", "dropout", "target_modules"})
    if unknown:
        raise ValueError(f"training.lora: unknown key(s) {', '.join(unknown)} (allowed: r, alpha, dropout, "
                         "target_modules)")
    defaults = LoraSettings()
    r, alpha = value.get("r", defaults.r), value.get("alpha", defaults.alpha)
    dropout, targets = value.get("dropout", defaults.dropout), value.get("target_modules", defaults.target_modules)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"training.lora.r must be an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise ValueError(f"training.lora.alpha must be > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"training.lora.dropout must be in [0, 1), got {dropout!r}")
    if isinstance(targets, list | tuple) and targets and all(isinstance(t, str) and t for t in targets):
        targets = tuple(targets)
    elif not (isinstance(targets, str) and targets):
        raise ValueError("training.lora.target_modules must be 'all-linear' or a non-empty list of module names, "
                         f"got {targets!r}")
    return LoraSettings(r=r, alpha=float(alpha), dropout=float(dropout), target_modules=targets)


def training_settings(training: TrainingSettings | Mapping[str, Any]) -> TrainingSettings:
    """The training settings, or a plain mapping of them (a worker's JSON, a test's few keys) read as those."""
    return from_plain(TrainingSettings, training)


def executor_settings(executor: ExecutorSettings | Mapping[str, Any]) -> ExecutorSettings:
    """The executor settings, or a plain mapping read as the local executor's."""
    return executor if isinstance(executor, ExecutorSettings) else from_plain(LocalExecutorSettings, executor)


def accumulation_steps(training: TrainingSettings | Mapping[str, Any]) -> int:
    """``training.gradient_accumulation_steps``, which must divide ``training.batch_size`` (pairs per step)."""
    training = training_settings(training)
    steps = training.gradient_accumulation_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"training.gradient_accumulation_steps must be an integer >= 1, got {steps!r}")
    batch = int(training.batch_size)
    if batch % steps:
        raise ValueError(f"training.gradient_accumulation_steps={steps} must divide training.batch_size={batch} "
                         "(the batch is the pairs per optimiser step, split into equal micro-batches)")
    return steps


def check_training(training: TrainingSettings | Mapping[str, Any]) -> None:
    """Validate the device-related training keys that need no GPU to judge (one line per mistake)."""
    training = training_settings(training)
    if training.device not in DEVICES:
        resolve_device(training.device, False)
    if training.precision not in PRECISIONS or training.device == "cpu":
        check_precision(training.precision, "cpu")
    accumulation_steps(training)
    if not isinstance(training.gradient_checkpointing, bool):
        raise ValueError("training.gradient_checkpointing must be true or false, "
                         f"got {training.gradient_checkpointing!r}")
    lora_settings(training.lora)


def check_executor(executor: ExecutorSettings | Mapping[str, Any]) -> None:
    """Validate ``executor.gpus`` and ``executor.workers_per_gpu`` (their shape; counts are checked at start)."""
    executor = executor_settings(executor)
    per_gpu = executor.workers_per_gpu
    if per_gpu is not None and (isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1):
        raise ValueError(f"executor.workers_per_gpu must be an integer >= 1 (or null), got {per_gpu!r}")
    gpus = getattr(executor, "gpus", "auto")  # Ray places its actors itself: no gpus setting
    if gpus == "auto":
        return
    if not isinstance(gpus, list | tuple) or not gpus or any(
            isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"executor.gpus must be 'auto' or a non-empty list of distinct GPU indices, got {gpus!r}")


def visible_devices(env: dict[str, str] | None = None) -> list[str] | None:
    """The outer ``CUDA_VISIBLE_DEVICES`` as a list (None when unset: every GPU is visible, by index)."""
    value = (env if env is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def gpu_slots(gpus: Any, workers: int, workers_per_gpu: int | None, device_count: int,
              outer_visible: list[str] | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each of ``workers`` CUDA workers (one GPU each).

    ``gpus``: "auto" (every GPU this process sees) or indices among them; ``device_count``: how many
    it sees; ``outer_visible``: this process's own ``CUDA_VISIBLE_DEVICES`` list, which the indices
    map through. Raises when the GPUs cannot hold the workers at ``workers_per_gpu`` each (None: no cap,
    the workers spread as evenly as they can).
    """
    if device_count < 1:
        raise ValueError("training.device resolves to cuda but this process sees no GPU")
    chosen = list(range(device_count)) if gpus == "auto" else list(gpus)
    missing = [g for g in chosen if g >= device_count]
    if missing:
        raise ValueError(f"executor.gpus: {missing} not among the {device_count} GPU(s) visible here "
                         f"(indices 0..{device_count - 1})")
    if workers_per_gpu is not None and workers > len(chosen) * workers_per_gpu:
        raise ValueError(f"executor.workers={workers} does not fit on {len(chosen)} GPU(s) at "
                         f"executor.workers_per_gpu={workers_per_gpu}; lower the workers or raise workers_per_gpu")
    names = [outer_visible[g] if outer_visible is not None and g < len(outer_visible) else str(g) for g in chosen]
    return [names[i % len(names)] for i in range(workers)]


@dataclass(frozen=True)
class WorkerPlacement:
    """Where one worker trains: its device and the ``CUDA_VISIBLE_DEVICES`` it is started with."""

    device: str  # "cpu" or "cuda"
    visible_devices: str | None  # None: keep what this process has (a Ray actor's own GPU assignment)


def plan_local_workers(training: TrainingSettings | Mapping[str, Any],
                       executor: ExecutorSettings | Mapping[str, Any], workers: int,
                       device_count: int | None = None) -> list[WorkerPlacement]:
    """One placement per local worker: CPU workers see no GPU; CUDA workers are pinned by ``gpu_slots``.

    ``device_count`` defaults to what torch sees here, asked only when the setting needs it.
    """
    training, executor = training_settings(training), executor_settings(executor)
    if training.device == "cpu":
        check_precision(training.precision, "cpu")
        return [WorkerPlacement("cpu", NO_GPU)] * workers
    count = cuda_device_count() if device_count is None else device_count
    device = resolve_device(training.device, count > 0)
    check_precision(training.precision, device)
    if device == "cpu":
        return [WorkerPlacement("cpu", NO_GPU)] * workers
    check_executor(executor)
    slots = gpu_slots(getattr(executor, "gpus", "auto"), workers, executor.workers_per_gpu, count,
                      visible_devices())
    return [WorkerPlacement("cuda", slot) for slot in slots]
