"""TRL integration: a ``DPOTrainer`` that trains with any loss in the discopop contract form.

TRL keeps its losses in a long ``if/elif`` chain inside the private ``DPOTrainer._compute_loss``
and offers no public hook for a custom loss. This module is the *only* place that knows TRL's
internals: it overrides ``_compute_loss`` with the same forward pass (TRL's fused LM head, summed
completion log-probs, precomputed or live reference log-probs) and hands the four log-prob
tensors to ``loss_fn`` (adding the MoE router auxiliary loss as TRL does). The rest is TRL's own and
works unchanged: PEFT (``peft_config=LoraConfig(...)`` or a ``PeftModel``; the reference is the model
with adapters disabled, or TRL's frozen ``"ref"`` copy of a pretrained adapter),
``precompute_ref_log_probs`` and an explicit ``ref_model``. ``tests/test_trl_adapter.py`` pins what is relied on
here and fails with a message naming the change if a TRL release moves it; the supported range is
pinned in ``pyproject.toml``.

Example::

    from discopop.dpo_trainer import DiscoveredLossDPOTrainer
    trainer = DiscoveredLossDPOTrainer(model=model, args=DPOConfig(...), train_dataset=ds,
                                       processing_class=tok, loss_fn="proposals/lrml.py")
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_callback import TrainerState
from trl import DPOConfig, DPOTrainer

from discopop.config.references import known, reference_path
from discopop.contract.inputs import LENGTHS, NLL, REFERENCE, call_loss, declared_inputs, needs_lengths, needs_reference
from discopop.contract.losses import load_loss

# Batch keys TRL's collator adds that are not model inputs (mirrors DPOTrainer._compute_loss).
_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})
# DPOConfig options whose effect lives inside TRL's own loss code and so cannot apply to a
# user-supplied loss; refusing them is better than silently ignoring them.
_UNSUPPORTED = {
    "ld_alpha": None,
    "f_divergence_type": "reverse_kl",
    "use_weighting": False,
}


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; raised only when ``fail_on_nonfinite_loss`` is set."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"non-finite loss at step {step}")


LossFn = Callable[..., torch.Tensor]


def use_torch_log_softmax_kernels() -> None:
    """Make TRL compute per-token log-probs with PyTorch, never with its Triton kernels (process-wide).

    For CUDA logits TRL 1.16 calls Triton kernels that are compiled on first use, and Triton compiles
    by running ``ptxas`` in a subprocess. A sandboxed worker may start no process (seccomp and the
    audit guard refuse it), so on a GPU every fine-tune failed at its first step; TRL's own fallback
    (the same log-softmax in PyTorch) needs no compiler. Called by the worker before it trains.
    """
    # lazy: TRL's kernel modules are patched only by the worker, before it trains
    import trl.kernels.chunked_logprob as chunked
    import trl.trainer.utils as trl_utils

    trl_utils.is_triton_available = lambda *args, **kwargs: False  # selective_log_softmax & co. check it per call
    chunked._TRITON_AVAILABLE = False  # read per call by chunked_logprob._use_triton


def resolve_loss(loss_fn: LossFn | str | Path) -> LossFn:
    """Accept a callable, a reference loss by name (``"lrml"``: ``discopop/proposals/lrml.py``), a loss file path
    (``"lrml.py"`` is the user's own file, not the reference), or loss source text."""
    if callable(loss_fn):
        return loss_fn
    if isinstance(loss_fn, str) and loss_fn in known():
        return load_loss(reference_path(loss_fn))
    return load_loss(loss_fn)


def _ignored_loss_type(config: DPOConfig) -> str | None:
    """Why ``config``'s loss selection will be ignored, or None if it is TRL's default (plain sigmoid)."""
    loss_type = getattr(config, "loss_type", "sigmoid")
    weights = getattr(config, "loss_weights", None)
    if loss_type in ("sigmoid", ["sigmoid"], ("sigmoid",), None) and weights is None:
        return None
    return (f"DPOConfig.loss_type={loss_type!r}" + (f", loss_weights={weights!r}" if weights is not None else "")
            + " is ignored: DiscoveredLossDPOTrainer trains with loss_fn alone")


class DiscoveredLossDPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose per-example loss is ``loss_fn(policy_chosen_logps, policy_rejected_logps,
    reference_chosen_logps, reference_rejected_logps, beta)``; all other arguments are DPOTrainer's.

    A contract-v2 loss (``discopop.contract.inputs``) gets what its signature declares: completion token counts
    (``chosen_lengths``/``rejected_lengths``, from the completion mask), the chosen answer's mean token NLL
    (``chosen_nll``, from the policy's per-token log-probs, differentiable), and no reference log-probs when it
    takes none: then the reference forward is skipped (TRL 1.16's ``DPOConfig`` has no ``reference_free``
    switch; the reference model TRL builds at construction stays unless PEFT or ``precompute_ref_log_probs``).

    ``args.loss_type`` (and ``loss_weights``) is ignored, with a warning (the loss is ``loss_fn``: a callable, a loss
    file or source, or a reference name such as ``"lrml"``); TRL's usual metrics
    (``rewards/*``, ``logps/*``, and ``aux_loss`` for MoE models) are logged as usual. ``peft_config``,
    ``ref_model`` and ``precompute_ref_log_probs`` behave as in ``DPOTrainer``.
    """

    def __init__(self, *args: Any, loss_fn: LossFn | str | Path, fail_on_nonfinite_loss: bool = False,
                 **kwargs: Any):
        config: DPOConfig | None = kwargs.get("args") or (args[2] if len(args) > 2 else None)
        if config is not None:
            for name, neutral in _UNSUPPORTED.items():
                if getattr(config, name, neutral) != neutral:
                    raise ValueError(
                        f"DPOConfig.{name}={getattr(config, name)!r} is not supported with a discovered loss "
                        f"(allowed: {neutral!r}); express it inside loss_fn instead"
                    )
            ignored = _ignored_loss_type(config)
            if ignored:  # a user who set loss_type expects it to act: say it does not
                warnings.warn(ignored, UserWarning, stacklevel=2)
        self.loss_fn = resolve_loss(loss_fn)
        self.fail_on_nonfinite_loss = fail_on_nonfinite_loss
        # Per-example scaled margins beta*rho of every training step of the last train(): where on its
        # curve a loss is actually exercised (the loss-shape regime), not just their mean as TRL logs.
        self.step_margins: list[torch.Tensor] = []
        self.step_losses: list[torch.Tensor] = []  # the mean loss of each training step, for its curve
        super().__init__(*args, **kwargs)

    def reset_for_new_loss(self, loss_fn: LossFn | str | Path, seed: int) -> None:
        """Make the next ``train()`` a fresh run with ``loss_fn``: new optimiser, scheduler, state and metrics.

        The model's weights are the caller's to restore. Reusing one trainer this way skips the
        seconds TRL spends constructing a trainer, which on small models exceed the training itself.
        """
        self.loss_fn = resolve_loss(loss_fn)
        self.optimizer = None
        self.lr_scheduler = None
        self.state = TrainerState()
        for mode in self._metrics.values():
            mode.clear()
        self.step_margins.clear()
        self.step_losses.clear()
        self.args.seed = seed

    def skip_full_gc_between_runs(self) -> None:
        """On CPU, let each ``train()`` drop accelerate's references without accelerate's ``gc.collect()``.

        ``Trainer.train`` starts with ``accelerator.free_memory()``, whose full garbage collection costs
        ~0.2 s on a heap holding torch + transformers: most of the per-candidate overhead when one trainer
        trains many short runs. Reference counting frees the old optimiser either way. On an accelerator
        accelerate's own behaviour (emptying the device cache) is kept.
        """
        acc = self.accelerator
        if acc.device.type != "cpu":
            return

        def free_memory(*objects):
            acc._schedulers, acc._optimizers, acc._models, acc._dataloaders = [], [], [], []
            acc.step = 0
            return [None] * len(objects)

        acc.free_memory = free_memory

    def mean_train_metrics(self) -> dict[str, float]:
        """TRL's logged metrics of the last ``train()``, averaged over its steps."""
        return {k: sum(v) / len(v) for k, v in self._metrics["train"].items() if v}

    def _policy_forward(self, model, inputs: dict[str, torch.Tensor]):
        """Summed completion log-probs of the [chosen; rejected] batch as TRL computes them, plus the MoE
        router loss TRL would add (``None`` for dense models), so MoE runs optimise the same objective."""
        per_token, _, aux_loss = self._policy_token_logps(model, inputs)
        return per_token.sum(dim=1), aux_loss

    def _policy_token_logps(self, model, inputs: dict[str, torch.Tensor]):
        """Per-token completion log-probs of the [chosen; rejected] batch, their (shifted) completion mask, and the
        MoE router loss (``None`` for dense models)."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1
        aux_loss = outputs.aux_loss if self.aux_loss_enabled else None
        return outputs.log_probs[:, -seq_len:], completion_mask[:, -seq_len:], aux_loss

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        declared = declared_inputs(self.loss_fn)
        per_token, token_mask, aux_loss = self._policy_token_logps(model, inputs)
        chosen_logps, rejected_logps = per_token.sum(dim=1).chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        elif needs_reference(declared):
            # With PEFT and no ref_model, TRL's compute_ref_log_probs runs `model` with adapters disabled
            # (or with its frozen "ref" adapter), so the policy doubles as the reference.
            ref_model = self.ref_model if self.ref_model is not None else model
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(ref_model, inputs)
        else:  # reference-free: no reference forward; the logged rewards are beta * policy log-probs, as TRL's CPO's
            ref_chosen_logps, ref_rejected_logps = torch.zeros_like(chosen_logps), torch.zeros_like(rejected_logps)
        available = {"policy_chosen_logps": chosen_logps, "policy_rejected_logps": rejected_logps,
                     REFERENCE[0]: ref_chosen_logps, REFERENCE[1]: ref_rejected_logps}
        if needs_lengths(declared):
            available.update(length_inputs(per_token, token_mask, chosen_logps.dtype))
        per_example = call_loss(self.loss_fn, available, self.beta)
        if not isinstance(per_example, torch.Tensor) or per_example.shape != chosen_logps.shape:
            shape = list(per_example.shape) if isinstance(per_example, torch.Tensor) else type(per_example).__name__
            raise ValueError(f"loss_fn returned {shape}, expected a tensor of shape {list(chosen_logps.shape)}")
        loss = per_example.mean()
        if aux_loss is not None:
            loss = loss + self.router_aux_loss_coef * aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        if self.fail_on_nonfinite_loss and not torch.isfinite(loss):
            raise NonFiniteLoss(self.state.global_step + 1)
        self._log_reward_metrics(mode, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
        if mode == "train":
            self.step_losses.append(loss.detach().float())
        if return_outputs:
            raise ValueError("DiscoveredLossDPOTrainer does not return model outputs from compute_loss")
        return loss

    def _log_reward_metrics(self, mode, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps):
        """TRL's implicit-reward metrics, with TRL's names, so dashboards read the same."""
        gather = self.accelerator.gather
        chosen_rewards = self.beta * (chosen_logps - ref_chosen_logps).detach()
        rejected_rewards = self.beta * (rejected_logps - ref_rejected_logps).detach()
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        if mode == "train":
            self.step_margins.append(gather(chosen_rewards - rejected_rewards).float().cpu())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())


def length_inputs(per_token: torch.Tensor, token_mask: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Contract-v2 inputs from the [chosen; rejected] per-token log-probs and completion mask: token counts (float,
    at least 1, as TRL's length-normalised losses clamp them) and the chosen answer's mean token NLL
    (differentiable)."""
    mask = token_mask.to(per_token.dtype)
    counts = mask.sum(dim=1).clamp(min=1.0)
    chosen_sum = (per_token * mask).sum(dim=1).chunk(2, dim=0)[0]
    chosen_len, rejected_len = counts.chunk(2, dim=0)
    nll = -chosen_sum / chosen_len
    return {LENGTHS[0]: chosen_len.to(dtype), LENGTHS[1]: rejected_len.to(dtype), NLL: nll.to(dtype)}
