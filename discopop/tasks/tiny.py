"""Tiny language models built from a config, for tests, benchmarks and offline examples.

Nothing is downloaded: the tokenizer is a character-level one over a given alphabet
(``tasks.synthetic.build_tokenizer``, the one the embedded tasks use) and the model is randomly
initialised from a seed, at whatever size is asked (a 1-layer, 32-wide GPT-2 for a unit test, a
GPT-2-small shape for a GPU benchmark). ``save_tiny`` writes both with ``save_pretrained``, so the
directory loads like any hub model (``from_pretrained``, ``task=hub``, TRL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from discopop.tasks.synthetic import build_tokenizer

DIGITS = "0123456789+="  # the addition task's alphabet


def tiny_tokenizer(alphabet: str = DIGITS):
    """A character-level fast tokenizer with ``<pad>`` and ``<eos>``."""
    return build_tokenizer(alphabet)


def _special_ids(tokenizer) -> dict[str, int]:
    # No BOS token of its own: generation starts from the prompt, and EOS doubles as BOS where a config asks.
    return {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.eos_token_id}


def tiny_causal_lm(alphabet: str = DIGITS, *, width: int = 32, layers: int = 1, heads: int = 2, positions: int = 16,
                   experts: int = 0, seed: int = 0, **config: Any):
    """(model, tokenizer): a GPT-2, or with ``experts`` > 0 a Mixtral mixture-of-experts (top-2 routing, router
    logits on, so a trainer must add the load-balancing loss). ``config`` overrides any field of the HF config."""
    # lazy: transformers only when a tiny model is built (tests, benchmarks)
    from transformers import GPT2Config, GPT2LMHeadModel, MixtralConfig, MixtralForCausalLM

    tokenizer = tiny_tokenizer(alphabet)
    ids = _special_ids(tokenizer)
    torch.manual_seed(seed)
    if experts:
        settings = dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=width, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=heads, num_local_experts=experts,
                        num_experts_per_tok=min(2, experts), max_position_embeddings=positions,
                        output_router_logits=True, **ids)
        return MixtralForCausalLM(MixtralConfig(**{**settings, **config})), tokenizer
    settings = dict(vocab_size=len(tokenizer), n_positions=positions, n_embd=width, n_layer=layers, n_head=heads, **ids)
    return GPT2LMHeadModel(GPT2Config(**{**settings, **config})), tokenizer


def tiny_reward_model(alphabet: str = DIGITS, *, width: int = 32, layers: int = 1, heads: int = 2,
                      positions: int = 16, seed: int = 0, **config: Any):
    """(model, tokenizer): a GPT-2 sequence classifier with one output, the shape of a reward model."""
    # lazy: transformers only when a tiny model is built (tests, benchmarks)
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = tiny_tokenizer(alphabet)
    torch.manual_seed(seed)
    settings = dict(vocab_size=len(tokenizer), n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
                    num_labels=1, **_special_ids(tokenizer))
    return GPT2ForSequenceClassification(GPT2Config(**{**settings, **config})), tokenizer


def save_tiny(path: Path | str, model, tokenizer) -> Path:
    """Save ``model`` and ``tokenizer`` into one directory (``save_pretrained``); return it."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
