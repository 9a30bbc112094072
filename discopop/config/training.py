"""``training``: the short DPO fine-tune every candidate gets, and ``executor``: where it runs.

The training numbers were measured on the embedded task with the grid-per-seed predecessor of
``benchmarks/task_calibration.py`` (docs/results.md §4; 2 CPU cores). Each loss is judged at its own best
learning rate on ``lr_grid`` (``discopop/fitness/tuning.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from discopop.config.base import ConfigError, check_count, from_wire, is_number, require, setting

# A sandboxed worker's default limits (``sandbox.Limits``), which are also the executor's: declared once, here.
SANDBOX_MEMORY_MB = 6144
SANDBOX_FILE_MB = 256
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_GRID = [5.0e-6, 1.0e-5, 2.0e-5, 4.0e-5, 8.0e-5, 1.6e-4]
# How loss oracles start (``executor.oracle_start``), declared once here: the sandbox's oracle supply reads both
# (``sandbox.oracle_supply``), so its default for callers not given the run's setting is this one too.
ORACLE_STARTS = ("spawn", "fork")  # a fresh interpreter, or a fork of the pre-imported template
ORACLE_START = "fork"


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
    beta_grid: list[float] | None = setting(None, "Multipliers of beta each loss may also be judged at, e.g. "
                                                  "[0.5, 1, 2]: the climb then runs over (learning rate, beta) "
                                                  "for references and candidates alike, so a reference's beta is "
                                                  "tuned as evolution tunes a candidate's constants. null: beta "
                                                  "only (1.5-2x the fine-tunes of a tuned row when on).")
    lr_screen_margin: float | None = setting(0.05, "A candidate whose screening run is more than this below the "
                                                   "run's best is not tuned further (its fitness is the screen, a "
                                                   "lower bound); null: tune every candidate.")
    tune_seeds: int | None = setting(None, "Seeds besides the ranking one that choose each row's learning rate: "
                                           "every grid-point job also fine-tunes on this many tuning seeds (seed + "
                                           "2000 + i) and their mean chooses the rate, so the seed that ranks the "
                                           "row chose nothing (fitness/tuning.py). task=diagnostic only (there a "
                                           "fine-tune is cheap and the seed is most of the noise; "
                                           "conf/training/diagnostic.yaml sets it); null or 0: the rate is chosen "
                                           "on the even search prompts of the ranking seed, as before.")
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
        betas = self.beta_grid
        require(betas is None or (len(betas) > 0 and all(is_number(v) and v > 0 for v in betas)),
                f"training.beta_grid must be a non-empty list of beta multipliers > 0 (or null), got {betas!r}")
        margin = self.lr_screen_margin
        require(margin is None or margin >= 0,
                "training.lr_screen_margin must be a fitness margin >= 0 (or null: tune every candidate), "
                f"got {margin!r}")
        require(0.0 < self.pair_fraction <= 1.0, f"training.pair_fraction must be in (0, 1], got {self.pair_fraction}")
        require(self.threads >= 1, f"training.threads must be >= 1, got {self.threads}")
        require(self.tune_seeds is None or (isinstance(self.tune_seeds, int) and self.tune_seeds >= 0),
                f"training.tune_seeds must be an integer >= 0 (or null), got {self.tune_seeds!r}")
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
    memory_mb: int = setting(SANDBOX_MEMORY_MB, "Memory cap per worker: cgroup memory, plus a per-process rlimit: "
                                                "address space on CPU workers, data segment (private writable "
                                                "memory) on CUDA workers, whose driver reserves far more address "
                                                "space than it uses.")
    file_mb: int = setting(SANDBOX_FILE_MB, "Largest file a worker may write (caps runaway output).")
    kept_oracles: int = setting(2, "Loss oracles each worker keeps for the candidates it served last, so that one "
                                   "oracle serves all of a candidate's jobs (never another candidate's); 0: a fresh "
                                   "oracle per job. Results are the same either way.")
    fused_backward: bool = setting(True, "A loss oracle answers each training forward with the loss and the gradient "
                                         "the batch mean's backward needs (one round trip per step); the backward "
                                         "checks the trainer's gradient is that one, else asks again. false: two "
                                         "round trips per step. Results are bit for bit the same either way.")
    oracle_start: str = setting(ORACLE_START, "How loss oracles start: fork (from one sandboxed template per worker "
                                              "that imported torch once; each child still puts every child-side layer "
                                              "on itself, in its own session, work dir, output pipe and cgroups) or "
                                              "spawn (a fresh interpreter each, importing torch: ~2 CPU-s). fork falls "
                                              "back to spawn, with a one-line warning, if the template fails. Results "
                                              "are the same either way; spawn gives each oracle its own address-space "
                                              "layout and hash seed (forked children share the template's).")

    def check(self) -> None:
        check_count(self.workers, "executor.workers", 1)
        require(self.oracle_start in ORACLE_STARTS,
                f"executor.oracle_start must be {' or '.join(ORACLE_STARTS)}, got {self.oracle_start!r}")
        require(isinstance(self.fused_backward, bool),
                f"executor.fused_backward must be true or false, got {self.fused_backward!r}")
        require(isinstance(self.kept_oracles, int) and self.kept_oracles >= 0,
                f"executor.kept_oracles must be an integer >= 0, got {self.kept_oracles!r}")
        require(self.memory_mb >= 1 and self.file_mb >= 1,
                f"executor.memory_mb and executor.file_mb must be >= 1, got {self.memory_mb}, {self.file_mb}")
        try:
            check_executor(self)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class LocalExecutorSettings(ExecutorSettings):
    """Warm sandboxed worker processes on this machine."""

    gpus: Any = setting("auto", "CUDA workers only: auto (every GPU visible) or indices, e.g. [0,1]; workers spread "
                                "over them.")
    work_ahead: bool = setting(True, "A worker that would wait at the end of a round of the cascade runs a job the "
                                     "next generation will ask for (its checks, then its screen or short stage), and "
                                     "the result is used when asked for (search/work_ahead.py). Results are the "
                                     "same either way: a job's result depends only on the job.")


@dataclass
class RayExecutorSettings(ExecutorSettings):
    """Warm sandboxed workers on a Ray cluster (pip install 'discopop[ray]'); each actor owns one worker process."""

    name: str = setting("ray", "The executor to build: local or ray.")
    workers: Any = setting(2, "Ray actors, each owning one sandboxed worker process with training.threads CPUs.")
    address: str | None = setting(None, 'null: start a local Ray instance; "auto" or "ray://host:10001": join a '
                                        "cluster.")
    workers_per_gpu: int | None = setting(None, "With CUDA training each actor asks Ray for 1/workers_per_gpu GPU "
                                                "(null: a whole GPU).")


# ---- the device-related values, checked without a GPU (``execution.devices`` plans the workers) ----------


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
        from peft import LoraConfig  # lazy: peft is optional and only a LoRA worker needs it

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


def training_from_wire(value: Any) -> TrainingSettings:
    """The training settings a sandboxed worker received as JSON (``asdict`` of them), read back at once and checked:
    a bad value is a ``ConfigError`` of one line, before the worker builds anything."""
    settings = from_wire(TrainingSettings, value, "training")
    try:
        settings.check()  # a ConfigError already says which key and value
    except TypeError as err:  # a value of the wrong type where a number is compared
        raise ConfigError(f"training: {str(err).splitlines()[0]}") from None
    return settings


def accumulation_steps(training: TrainingSettings) -> int:
    """``training.gradient_accumulation_steps``, which must divide ``training.batch_size`` (pairs per step)."""
    steps = training.gradient_accumulation_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"training.gradient_accumulation_steps must be an integer >= 1, got {steps!r}")
    batch = int(training.batch_size)
    if batch % steps:
        raise ValueError(f"training.gradient_accumulation_steps={steps} must divide training.batch_size={batch} "
                         "(the batch is the pairs per optimiser step, split into equal micro-batches)")
    return steps


def check_training(training: TrainingSettings) -> None:
    """Validate the device-related training keys that need no GPU to judge (one line per mistake)."""
    if training.device not in DEVICES:
        resolve_device(training.device, False)
    if training.precision not in PRECISIONS or training.device == "cpu":
        check_precision(training.precision, "cpu")
    accumulation_steps(training)
    if not isinstance(training.gradient_checkpointing, bool):
        raise ValueError("training.gradient_checkpointing must be true or false, "
                         f"got {training.gradient_checkpointing!r}")
    lora_settings(training.lora)


def check_executor(executor: ExecutorSettings) -> None:
    """Validate ``executor.gpus`` and ``executor.workers_per_gpu`` (their shape; counts are checked at start)."""
    per_gpu = executor.workers_per_gpu
    if per_gpu is not None and (isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1):
        raise ValueError(f"executor.workers_per_gpu must be an integer >= 1 (or null), got {per_gpu!r}")
    gpus = getattr(executor, "gpus", "auto")  # Ray places its actors itself: no gpus setting
    if gpus == "auto":
        return
    if not isinstance(gpus, list | tuple) or not gpus or any(
            isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"executor.gpus must be 'auto' or a non-empty list of distinct GPU indices, got {gpus!r}")
