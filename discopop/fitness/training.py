"""The short DPO fine-tune of one candidate, through TRL (``DiscoveredLossDPOTrainer``).

A :class:`FineTuner` lives in a worker process for the whole run and trains many candidates.
Building a TRL trainer costs seconds (more than a whole candidate's training on the embedded
task), and tokenising the pairs and computing reference log-probs is the same for every
candidate, so all of that happens once in ``__init__``. Per candidate, ``run`` only restores the
initial weights, swaps the loss, drops the optimiser/scheduler so ``train()`` makes fresh ones,
reseeds, and trains. Every candidate of a run thus sees the same initial weights, data order
and seed (common random numbers), which makes fitness differences mean something.

A run trains on a seeded subsample of the preference pairs (``training.pair_fraction``), drawn from
the run's seed like the data order. Otherwise a fresh seed would only reshuffle the same pairs, and
seed-to-seed spread would understate how much a result depends on the data it happened to see;
with it, the search seed is as much a sample as a confirmation seed. The subsample has a fixed
size, so every run takes the same number of steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
from trl import DPOConfig

from discopop.config import TrainingSettings
from discopop.dpo_trainer import DiscoveredLossDPOTrainer, LossFn
from discopop.execution.devices import (
    accumulation_steps,
    check_precision,
    cuda_failure_reason,
    lora_settings,
    resolve_device,
)
from discopop.execution.malloc import keep_freed_memory
from discopop.fitness.scoring import Score, ScoringInputs, prepare_scoring, score_policy
from discopop.tasks import Task


class _StepTimer(TrainerCallback):
    """Wall time spent inside optimisation steps (forward, backward, optimiser), for overhead accounting."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start


class _ReplayLoader:
    """Collated batches of one seed's epoch, replayed for every candidate trained with that seed.

    With common random numbers every candidate sees the same batches in the same order, so
    collating (padding, tensor building) them again per candidate is pure overhead.
    """

    def __init__(self, batches: list, dataset) -> None:
        self.batches = batches
        self.dataset = dataset

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to reshuffle: the order is the seed's, fixed when the batches were collated."""


# Weight dtypes of the frozen base model of a LoRA fine-tune, by training.precision (fp32: float32).
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Seeds whose collated epochs are kept (search seed + fresh confirmation seeds); each is a few MB at most.
MAX_CACHED_SEEDS = 8


@dataclass
class TrainResult:
    score: Score
    steps: int
    final_loss: float
    train_seconds: float
    step_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    peak_gpu_mb: float | None = None  # peak CUDA memory allocated during the run (None on CPU)
    full_steps: int = 0  # the optimiser steps of a full run (``steps`` is fewer for a short one)


def _pair_fraction(value: Any) -> float:
    fraction = float(value)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"training.pair_fraction must be in (0, 1], got {value!r}")
    return fraction


def _placeholder_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                      reference_rejected_logps, beta):
    """Stands in until the first candidate arrives; never trained with."""
    raise RuntimeError("FineTuner.run was not given a loss")


MARGIN_QUANTILES = (0.1, 0.5, 0.9)


def final_margin_quantiles(step_margins: list[torch.Tensor], epoch_size: int) -> dict[str, float]:
    """Quantiles of |beta*rho| over the last epoch's examples: the part of its curve a loss ended up using.

    Losses differ in shape away from rho = 0; if training never leaves |beta*rho| << 1, only their
    slopes at zero are compared. Measured on the training batches as they were seen (no extra pass).
    """
    if not step_margins:
        return {}
    last = torch.cat(step_margins)[-max(1, epoch_size):].abs()
    return {f"margin_abs_q{int(q * 100)}": round(float(torch.quantile(last, q)), 4) for q in MARGIN_QUANTILES}


def loss_curve(step_losses: list[torch.Tensor]) -> dict[str, float]:
    """Mean training loss over the first, middle and last third of the steps: how training went, in 3 numbers.

    Kept compact for the LLM proposer's reflection (a loss's scale is arbitrary; its trend is not).
    Runs of fewer than 3 steps use single steps (one step: the same number three times).
    """
    if not step_losses:
        return {}
    values = torch.stack(step_losses).detach().cpu().double().flatten()
    n, k = len(values), max(1, len(values) // 3)
    middle = (n - k) // 2
    parts = {"loss_start": values[:k], "loss_mid": values[middle:middle + k], "loss_end": values[n - k:]}
    return {key: round(float(part.mean()), 5) for key, part in parts.items()}


class AdapterDisabled:
    """The reference of a LoRA fine-tune: the policy's own base model with its adapters switched off.

    No second copy of the weights exists; each call runs the peft model under ``disable_adapter()``.
    Scoring calls it like a model (``reference(input_ids=...)``) for the KL estimate.
    """

    def __init__(self, peft_model) -> None:
        self.peft_model = peft_model

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def eval(self) -> AdapterDisabled:
        """Mode follows the policy's (scoring puts it in eval mode)."""
        return self

    def parameters(self):
        return self.peft_model.parameters()


# The seed of the trainer's own set-up (a LoRA adapter's random initialisation): the same in every worker of a run, so
# every candidate starts from the same adapter; each run then reseeds with its own seed.
ADAPTER_INIT_SEED = 0


class FineTuner:
    """One warm TRL trainer over a task's pairs, reused for every candidate.

    Device and precision come from ``training.device`` (auto: CUDA when the worker sees a GPU) and
    ``training.precision`` (mixed precision through the trainer; fp32 master weights for whatever is
    trained). ``training.batch_size`` is the pairs per optimiser step, split into
    ``training.gradient_accumulation_steps`` micro-batches. With ``training.lora`` only a LoRA adapter
    is trained: the frozen base weights load in the training precision, the reference is the base model
    with adapters disabled (:class:`AdapterDisabled`, no second copy), and a candidate's starting point
    is restored by copying back the adapter's initial weights (kilobytes to megabytes, not the model).
    Without LoRA the reference model's weights are the initial weights, and ``run`` copies them back.
    """

    def __init__(self, task: Task, training: TrainingSettings, workdir: Path, kl_coef: float = 0.0):
        self.training = training
        # Freed activation memory stays in the heap: ~10% of a CPU fine-tune's time was page faults (same results).
        self.malloc_tuned = keep_freed_memory()
        torch.set_num_threads(training.threads)
        self.task = task
        self.kl_coef = kl_coef
        cuda_ok = torch.cuda.is_available()
        why_not = cuda_failure_reason() if training.device == "cuda" and not cuda_ok else ""
        self.device = resolve_device(training.device, cuda_ok, why_not)
        bf16_ok = torch.cuda.is_bf16_supported() if self.device == "cuda" else True
        self.precision = check_precision(training.precision, self.device, bf16_ok)
        self.lora = lora_settings(training.lora)
        accumulation = accumulation_steps(training)
        self.tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Trained weights stay fp32 (the trainer's autocast does the mixed precision); a LoRA run's frozen
        # base weights load in the training precision: half the memory, and nothing updates them.
        base_dtype = HALF_DTYPES.get(self.precision, torch.float32) if self.lora else torch.float32
        model = AutoModelForCausalLM.from_pretrained(task.model_path, dtype=base_dtype)
        pairs = load_from_disk(str(task.pairs_path))
        if training.max_pairs:
            pairs = pairs.select(range(min(len(pairs), int(training.max_pairs))))
        self.args = DPOConfig(
            output_dir=str(workdir / "trainer"),
            beta=float(training.beta),
            learning_rate=float(training.learning_rate),
            num_train_epochs=float(training.epochs),
            per_device_train_batch_size=int(training.batch_size) // accumulation,
            gradient_accumulation_steps=accumulation,
            lr_scheduler_type=training.lr_scheduler,
            warmup_steps=int(training.warmup_steps),
            max_grad_norm=float(training.max_grad_norm),
            precompute_ref_log_probs=True,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=self.device == "cpu",
            seed=ADAPTER_INIT_SEED,
            dataloader_num_workers=0,
            gradient_checkpointing=bool(training.gradient_checkpointing),
            bf16=self.precision == "bf16",
            fp16=self.precision == "fp16",
        )
        self.timer = _StepTimer()
        set_seed(self.args.seed)  # the adapter's random initialisation: the same in every worker of a run
        self.trainer = DiscoveredLossDPOTrainer(
            model=model, args=self.args, train_dataset=pairs, processing_class=self.tokenizer,
            loss_fn=_placeholder_loss, callbacks=[self.timer], fail_on_nonfinite_loss=True,
            peft_config=self.lora.peft_config() if self.lora else None,
        )
        self.model = self.trainer.model  # the PeftModel when training an adapter
        if self.lora:
            self.reference = AdapterDisabled(self.model)
            self._trained = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
            self.initial_state = {name: p.detach().clone() for name, p in self._trained}
        else:
            self.reference = AutoModelForCausalLM.from_pretrained(task.model_path, dtype=torch.float32)
            self.reference = self.reference.to(self.model.device).eval().requires_grad_(False)
            self.initial_state = self.reference.state_dict()  # never trained: it doubles as the starting point
        self.all_pairs = self.trainer.train_dataset  # tokenised, reference log-probs precomputed: subsampled per run
        self._reference_logps: tuple[torch.Tensor, torch.Tensor] | None = None  # for the behaviour probe (worker)
        self.pair_fraction = _pair_fraction(training.pair_fraction)
        self._epochs: dict[int, _ReplayLoader] = {}
        self._build_loader = self.trainer.get_train_dataloader
        self._scoring: dict[str, ScoringInputs] = {}  # per split: its prompts and answers tokenised once
        self.reuse_between_runs()

    def reuse_between_runs(self) -> None:
        """Replay each seed's collated batches and skip the full gc between runs: the same batches, less overhead.

        A seam for ``benchmarks/reuse_speedup.py``, whose subclass leaves this out to measure what it saves."""
        self.trainer.skip_full_gc_between_runs()
        self.trainer.get_train_dataloader = self._replayed_loader

    def reference_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference log-probs of the training pairs (chosen, rejected), as training feeds them to the loss."""
        if self._reference_logps is None:
            self._reference_logps = (torch.tensor(self.all_pairs["ref_chosen_logps"], dtype=torch.float32),
                                     torch.tensor(self.all_pairs["ref_rejected_logps"], dtype=torch.float32))
        return self._reference_logps

    def restore_initial_weights(self) -> None:
        """Put the trained weights back where every candidate starts: the adapter's, or the whole model's."""
        if self.lora:
            with torch.no_grad():
                for name, param in self._trained:
                    param.copy_(self.initial_state[name])
        else:
            self.model.load_state_dict(self.initial_state)

    def pair_subsample(self, seed: int) -> list[int]:
        """Indices of the pairs a run with ``seed`` trains on: a fixed-size sample drawn from the seed."""
        total = len(self.all_pairs)
        keep = max(1, round(self.pair_fraction * total))
        if keep >= total:
            return list(range(total))
        gen = torch.Generator().manual_seed(int(seed))
        return sorted(torch.randperm(total, generator=gen)[:keep].tolist())

    def _replayed_loader(self) -> _ReplayLoader:
        seed = self.trainer.args.seed
        if seed not in self._epochs:
            if len(self._epochs) >= MAX_CACHED_SEEDS:
                self._epochs.pop(next(iter(self._epochs)))
            loader = self._build_loader()  # seeded by set_seed(seed) in run(), as without replay
            self._epochs[seed] = _ReplayLoader(list(loader), self.trainer.train_dataset)
        return self._epochs[seed]

    def scoring_inputs(self, split: str) -> ScoringInputs:
        """``split``'s prompts and answers tokenised and batched for scoring: built at the split's first score, then
        reused (they are the same for every candidate; tokenising them was ~5% of a scoring pass)."""
        if split not in self._scoring:
            device = next(self.model.parameters()).device
            self._scoring[split] = prepare_scoring(self.tokenizer, self.task, split, device=device)
        return self._scoring[split]

    def full_steps(self) -> int:
        """Optimiser steps of a full run: batches of the (fixed-size) pair subsample per epoch, times epochs."""
        keep = len(self.pair_subsample(0))
        batches = math.ceil(keep / int(self.args.per_device_train_batch_size))
        per_epoch = max(batches // int(self.args.gradient_accumulation_steps), 1)
        return math.ceil(per_epoch * float(self.args.num_train_epochs))

    def run(self, loss_fn: LossFn, seed: int, split: str = "search", learning_rate: float | None = None,
            beta: float | None = None, step_fraction: float | None = None) -> TrainResult:
        """Train from the initial weights with ``loss_fn`` and seed ``seed``; score on held-out ``split``.

        ``learning_rate`` overrides ``training.learning_rate`` for this run (each loss is compared at its own);
        ``beta`` overrides ``training.beta`` likewise (the protocol's beta axis, ``training.beta_grid``);
        ``step_fraction``: stop after that share of a full run's steps (a cheap stage, ``search.fidelity``).
        """
        started = time.perf_counter()
        self.restore_initial_weights()
        self.model.train()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = self.trainer
        trainer.reset_for_new_loss(loss_fn, seed)
        trainer.train_dataset = self.all_pairs.select(self.pair_subsample(seed))  # replay cache key: the seed
        default_lr = self.training.learning_rate
        trainer.args.learning_rate = float(learning_rate if learning_rate is not None else default_lr)
        full = self.full_steps()
        trainer.args.max_steps = -1 if step_fraction is None else max(1, math.floor(float(step_fraction) * full))
        trainer.beta = float(beta if beta is not None else self.training.beta)  # the loss's beta and TRL's logs
        set_seed(seed)
        self.timer.seconds = 0.0
        output = trainer.train()
        train_seconds = time.perf_counter() - started
        metrics = trainer.mean_train_metrics()
        metrics.update(final_margin_quantiles(trainer.step_margins, len(trainer.train_dataset)))
        metrics.update(loss_curve(trainer.step_losses))
        score_started = time.perf_counter()
        score = score_policy(self.model, self.reference, self.tokenizer, self.task, seed=seed,
                             kl_coef=self.kl_coef, split=split, prepared=self.scoring_inputs(split))
        score.seconds = time.perf_counter() - score_started
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.device == "cuda" else None
        return TrainResult(
            score=score, steps=output.global_step, final_loss=float(output.training_loss),
            train_seconds=train_seconds, step_seconds=self.timer.seconds, metrics=metrics, peak_gpu_mb=peak,
            full_steps=full,
        )
