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
from dataclasses import dataclass
from typing import Any

from discopop.config import ExecutorSettings, TrainingSettings
from discopop.config.training import (
    DEVICES,
    PRECISIONS,
    LoraSettings,
    accumulation_steps,
    check_executor,
    check_precision,
    check_training,
    lora_settings,
    resolve_device,
)

# The pure checks live with the settings (``config.training``); they are re-exported here, beside the placement.
__all__ = ["DEVICES", "NO_GPU", "PRECISIONS", "LoraSettings", "WorkerPlacement", "accumulation_steps",
           "check_executor", "check_precision", "check_training", "cuda_device_count", "cuda_failure_reason",
           "gpu_slots", "lora_settings", "plan_local_workers", "resolve_device", "visible_devices"]
# The CUDA_VISIBLE_DEVICES a CPU-only process gets: it sees no GPU, so nothing in it can start a CUDA context.
NO_GPU = ""


def cuda_device_count() -> int:
    """GPUs this process can use through torch (0 for a CPU build of torch or without a visible GPU)."""
    import torch  # lazy: torch-free at import: the main process plans workers without torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_failure_reason() -> str:
    """Why torch cannot use CUDA in this process, in one line ("" when it can, or torch has no CUDA at all).

    A worker whose parent saw a GPU but which sees none was stopped by something in between (its
    sandbox, its environment); torch's own error says what, where a bare "not available" would not.
    """
    import torch  # lazy: torch-free at import: the main process plans workers without torch

    if torch.cuda.is_available() or not torch.backends.cuda.is_built():
        return ""
    try:
        torch.cuda.init()
    except Exception as err:  # noqa: BLE001 - the message is the point
        return " ".join(str(err).split())[:300]
    return ""


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


def plan_local_workers(training: TrainingSettings, executor: ExecutorSettings, workers: int,
                       device_count: int | None = None) -> list[WorkerPlacement]:
    """One placement per local worker: CPU workers see no GPU; CUDA workers are pinned by ``gpu_slots``.

    ``device_count`` defaults to what torch sees here, asked only when the setting needs it.
    """
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
