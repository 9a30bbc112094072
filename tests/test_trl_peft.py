"""DiscoveredLossDPOTrainer with PEFT LoRA: only the adapter trains, the reference is what TRL says it is
(base model with adapters disabled, or the frozen "ref" copy of a pretrained adapter), and the loss is
exactly ``loss_fn`` of the logged quantities and equal to TRL's own ``loss_type="discopop"`` run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import GPT2LMHeadModel
from trl import DPOConfig, DPOTrainer

from discopop.contract.losses import load_loss
from discopop.dpo_trainer import DiscoveredLossDPOTrainer
from discopop.tasks.tiny import save_tiny, tiny_causal_lm

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"
BETA = 0.1
STEPS = 4
PAIRS = [(1, 2), (13, 7), (40, 41), (9, 9), (25, 30), (77, 11), (5, 60), (33, 33)]


def lora_config() -> LoraConfig:
    # GPT-2 uses Conv1D, hence fan_in_fan_out; no dropout so TRL's run and ours are bit-comparable.
    return LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, object, Dataset]:
    """A tiny GPT-2 saved locally, its character tokenizer, and eight preference pairs."""
    path = tmp_path_factory.mktemp("peft") / "model"
    model, tok = tiny_causal_lm()
    save_tiny(path, model, tok)
    rows = [{"prompt": f"{a:02d}+{b:02d}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in PAIRS]
    return path, tok, Dataset.from_list(rows)


@torch.no_grad()
def pair_logps(model, tok, data: Dataset) -> list[tuple[float, float]]:
    """Summed completion (+EOS) log-probs of each row's chosen and rejected, computed independently of TRL."""
    out = []
    for row in data:
        prompt_len = len(tok(row["prompt"])["input_ids"])
        sides = []
        for completion in (row["chosen"], row["rejected"]):
            ids = torch.tensor([tok(row["prompt"] + completion + tok.eos_token)["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1).gather(1, ids[0, 1:, None])
            sides.append(float(logp[prompt_len - 1:].sum()))
        out.append((sides[0], sides[1]))
    return out


def pretrained_adapter(path: Path):
    """A PeftModel whose adapter is already non-trivial (lora_B != 0), as if loaded from a checkpoint."""
    torch.manual_seed(1)
    model = get_peft_model(GPT2LMHeadModel.from_pretrained(path), lora_config())
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.2)
    return model


def train(base, ours: bool, setup: str):
    path, tok, data = base
    args = DPOConfig(output_dir=str(path.parent / "out"), per_device_train_batch_size=1, max_steps=STEPS,
                     learning_rate=2e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                     beta=BETA, loss_type="discopop", disable_tqdm=True, bf16=False,  # fp32: exact reference check
                     precompute_ref_log_probs=setup == "peft_config+precompute")
    if setup == "pretrained_adapter":
        model = pretrained_adapter(path)
        reference = copy.deepcopy(model)  # the adapter as it was before training
        kwargs = {"model": model}
    else:
        reference = GPT2LMHeadModel.from_pretrained(path)
        kwargs = {"model": GPT2LMHeadModel.from_pretrained(path), "peft_config": lora_config()}
    kwargs.update(args=args, train_dataset=data, processing_class=tok)
    if ours:
        trainer = DiscoveredLossDPOTrainer(loss_fn=str(PROPOSALS / "lrml.py"), **kwargs)
    else:
        trainer = DPOTrainer(**kwargs)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    after = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return logs, before, after, pair_logps(reference, tok, data)


@pytest.mark.parametrize("setup", ["peft_config", "peft_config+precompute", "pretrained_adapter"])
def test_lora_trains_adapter_only_against_the_right_reference(base, setup: str) -> None:
    trl_logs, _, trl_after, _ = train(base, ours=False, setup=setup)
    logs, before, after, reference = train(base, ours=True, setup=setup)

    # Same run as TRL's own loss_type="discopop" (= proposals/lrml.py), adapter and all.
    assert [h["loss"] for h in logs] == pytest.approx([h["loss"] for h in trl_logs], abs=1e-6)
    assert max(float((trl_after[k] - after[k]).abs().max()) for k in after) < 1e-6

    trained = [k for k in after if ".lora_" in k and ".default." in k]
    assert trained and all(not torch.equal(before[k], after[k]) for k in trained), "a LoRA tensor did not move"
    frozen = [k for k in after if k not in trained]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), "a base (or ref-adapter) tensor moved"

    # Batch size 1: each log row holds one pair's four log-probs (ref = logps - rewards / beta),
    # so the logged loss must be exactly loss_fn of them, and the ref pair must be the independent reference's.
    loss_fn = load_loss(PROPOSALS / "lrml.py")
    for h in logs:
        pc, pr = h["logps/chosen"], h["logps/rejected"]
        rc, rr = pc - h["rewards/chosen"] / BETA, pr - h["rewards/rejected"] / BETA
        expected = loss_fn(*(torch.tensor([x], dtype=torch.float64) for x in (pc, pr, rc, rr)), BETA)
        assert h["loss"] == pytest.approx(float(expected), abs=1e-5)
        assert min(abs(rc - c) + abs(rr - r) for c, r in reference) < 1e-4, f"reference log-probs {rc, rr} unknown"
    moved = logs[-1]["rewards/chosen"] / BETA
    assert abs(moved) > 1e-3, "policy never left the reference; the reference check above proved nothing"
