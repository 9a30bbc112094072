"""Embedded tasks built entirely on this machine: no download, no GPU.

A synthetic task is a small formal language with a *verifiable* reward (the answer is right or
it is not; anything outside the language scores zero, so degenerate text cannot buy reward).
Building one mirrors the DPO paper's IMDb recipe at toy scale:

1. a character tokenizer and a tiny GPT-2 are made from a config;
2. the model is SFT-trained on task text in which a share of answers is deliberately wrong, so the
   reference policy is imperfect and there is something for preference optimisation to fix;
3. preference pairs are *sampled from that SFT model* and labelled by the reward
   (chosen = correct, rejected = wrong);
4. held-out prompts are split off first and never appear in SFT or preference data.

Everything is cached under ``cache_dir/<name>-<config hash>`` and reused by later runs. The SFT
stage (steps 1-2, the slow part) is cached on its own under ``cache_dir/<name>-sft-<hash>``, so a task
that changes only its pairs (say ``task.pairs.label_noise``) samples them from the stored SFT model
instead of training it again; the pairs are the same as a build from scratch would give.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from discopop.tasks.pair_variants import maybe_tie, reshape, tie_generator

EOS = "<eos>"
PAD = "<pad>"


class SyntheticLanguage(ABC):
    """A task language: how to enumerate problems, answer them, corrupt answers and score."""

    name: str
    alphabet: str
    max_answer_len: int

    @abstractmethod
    def problems(self, rng: random.Random) -> list[tuple[str, str]]:
        """All (prompt, correct answer) pairs of the task, in a seeded order."""

    @abstractmethod
    def corrupt(self, prompt: str, answer: str, rng: random.Random) -> str:
        """A plausible wrong answer (the SFT data's deliberate noise)."""

    def problem_key(self, prompt: str) -> str:
        """Prompts with the same key are one problem for the held-out split (kept on one side of it)."""
        return prompt

    @abstractmethod
    def answer(self, prompt: str) -> str:
        """The one correct completion of ``prompt`` (without EOS): what the probability score teacher-forces."""

    def reward(self, prompt: str, completion: str) -> float:
        """1.0 for a correct, well-formed completion, 0.0 otherwise (exact match with :meth:`answer`)."""
        return 1.0 if completion == self.answer(prompt) else 0.0

    @abstractmethod
    def systematic_error(self, prompt: str, answer: str) -> str | None:
        """The reference's *habitual* mistake on this prompt, or None where it has none.

        The SFT data gives this wrong answer more often than the right one, so the SFT model's
        greedy answer is wrong on these prompts while correct answers still appear in its samples:
        a bias that preference data can fix, as in real preference tuning.
        """

    def small_sum(self, prompt: str) -> bool:
        """Whether ``prompt`` is in the region ``task.sft.small_sum_share`` over-samples (none, unless a language
        has one: uniform prompts cover it too thinly for the reference to learn it)."""
        return False

    def sft_answer(self, prompt: str, answer: str, rng: random.Random, cfg: dict[str, Any]) -> str:
        """The answer written into the SFT data for ``prompt`` (deliberately noisy)."""
        habitual = self.systematic_error(prompt, answer)
        if habitual is not None and rng.random() < cfg["systematic_error"]:
            return habitual
        if rng.random() < cfg["noise"]:
            return self.corrupt(prompt, answer, rng)
        return answer


class Addition(SyntheticLanguage):
    """Two-digit addition: ``07+35=`` -> ``42``. Prompts are fixed-width so batches need no padding."""

    name = "addition"
    alphabet = "0123456789+="
    max_answer_len = 3

    def problems(self, rng: random.Random) -> list[tuple[str, str]]:
        items = [(f"{a:02d}+{b:02d}=", str(a + b)) for a in range(100) for b in range(100)]
        rng.shuffle(items)
        return items

    def corrupt(self, prompt: str, answer: str, rng: random.Random) -> str:
        value = int(answer)
        wrong = value + rng.choice([-11, -10, -9, -2, -1, 1, 2, 9, 10, 11])
        return str(wrong if wrong >= 0 and wrong != value else value + 1)

    def answer(self, prompt: str) -> str:
        return str(int(prompt[0:2]) + int(prompt[3:5]))

    def problem_key(self, prompt: str) -> str:
        """``a+b`` and ``b+a`` are one problem: a held-out prompt's swapped twin must not be trained on."""
        return "+".join(sorted((prompt[0:2], prompt[3:5])))

    def systematic_error(self, prompt: str, answer: str) -> str | None:
        """Forgetting the carry out of the ones digit (45% of prompts have one)."""
        a, b = int(prompt[0:2]), int(prompt[3:5])
        return str(a + b - 10) if a % 10 + b % 10 >= 10 else None

    def small_sum(self, prompt: str) -> bool:
        """Sums under 20: both operands below 20, 210 of the 10,000 problems (2.1%)."""
        return int(self.answer(prompt)) < 20


class MixedLengthAddition(Addition):
    """Addition of operands with 1 to 4 digits, each count equally likely: ``0007+1234=`` -> ``1241``.

    Prompts stay fixed-width (operands zero-padded to 4 digits) but answers run from 1 to 5 digits, so the
    summed log-ratios a loss sees (beta * rho) differ several-fold from pair to pair, where the two-digit task's
    answers are all 1-3 characters long (``task=addition_mixedlen``, issue 24 item 5). Same habit as
    :class:`Addition`: forgetting the carry out of the ones digit.
    """

    name = "addition_mixedlen"
    max_answer_len = 5
    digits = 4
    per_shape = 1000  # problems drawn per (digits of a, digits of b): 1x1 and 1x2 have fewer, and keep all

    def problems(self, rng: random.Random) -> list[tuple[str, str]]:
        items: list[tuple[str, str]] = []
        for da in range(1, self.digits + 1):
            for db in range(1, self.digits + 1):
                low_a, low_b = (0 if da == 1 else 10 ** (da - 1)), (0 if db == 1 else 10 ** (db - 1))
                size = (10**da - low_a) * (10**db - low_b)
                if size <= self.per_shape:
                    cell = [(a, b) for a in range(low_a, 10**da) for b in range(low_b, 10**db)]
                else:
                    seen: set[tuple[int, int]] = set()
                    while len(seen) < self.per_shape:
                        seen.add((rng.randrange(low_a, 10**da), rng.randrange(low_b, 10**db)))
                    cell = sorted(seen)
                items.extend((f"{a:0{self.digits}d}+{b:0{self.digits}d}=", str(a + b)) for a, b in cell)
        rng.shuffle(items)
        return items

    def _operands(self, prompt: str) -> tuple[int, int]:
        a, b = prompt.rstrip("=").split("+")
        return int(a), int(b)

    def answer(self, prompt: str) -> str:
        return str(sum(self._operands(prompt)))

    def problem_key(self, prompt: str) -> str:
        return "+".join(sorted(prompt.rstrip("=").split("+")))

    def systematic_error(self, prompt: str, answer: str) -> str | None:
        a, b = self._operands(prompt)
        return str(a + b - 10) if a % 10 + b % 10 >= 10 else None


class Sorting(SyntheticLanguage):
    """Sort five digits: ``s31402>`` -> ``01234``. Kept out of discovery; used to test transfer."""

    name = "sorting"
    alphabet = "0123456789s>"
    max_answer_len = 5

    def problems(self, rng: random.Random) -> list[tuple[str, str]]:
        seen: dict[str, str] = {}
        while len(seen) < 20000:
            digits = "".join(rng.choice("0123456789") for _ in range(5))
            seen.setdefault(f"s{digits}>", "".join(sorted(digits)))
        return list(seen.items())

    def corrupt(self, prompt: str, answer: str, rng: random.Random) -> str:
        chars = list(answer)
        for _ in range(10):
            i, j = rng.sample(range(len(chars)), 2)
            if chars[i] != chars[j]:
                chars[i], chars[j] = chars[j], chars[i]
                return "".join(chars)
        return answer[:-1] + str((int(answer[-1]) + 1) % 10)

    def answer(self, prompt: str) -> str:
        return "".join(sorted(prompt[1:6]))

    def systematic_error(self, prompt: str, answer: str) -> str | None:
        """Leaving the last input digit in place when it is smaller than the first one."""
        digits = prompt[1:6]
        if digits[4] >= digits[0]:
            return None
        rest = "".join(sorted(digits[:4]))
        return rest + digits[4] if rest + digits[4] != answer else None


LANGUAGES: dict[str, type[SyntheticLanguage]] = {"addition": Addition, "sorting": Sorting,
                                                  "addition_mixedlen": MixedLengthAddition}


def config_hash(cfg: dict[str, Any]) -> str:
    """Stable hash of the task's build settings (cache key)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def build_tokenizer(alphabet: str):
    """A character-level fast tokenizer, so TRL and ``generate`` treat it like any hub tokenizer."""
    # lazy: tokenizers/transformers/datasets only when a task is built or loaded
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    core = Tokenizer(WordLevel(vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("<eos>|<pad>|."), behavior="isolated")
    core.decoder = decoders.Fuse()  # characters join without spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD)


def encode(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Encode equal-length texts into a [n, len] tensor (task prompts are fixed-width)."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return torch.tensor(ids, dtype=torch.long)


def decode_completions(tokenizer, completion_ids: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Decode generated ids up to the first EOS; a completion with no EOS is malformed (``None``-like "")."""
    eos_id = tokenizer.eos_token_id
    texts: list[str] = []
    lengths = []
    for row in completion_ids.tolist():
        if eos_id in row:
            cut = row.index(eos_id)
            texts.append(tokenizer.decode(row[:cut]))
            lengths.append(cut + 1)
        else:
            texts.append("\x00")  # never a correct answer: it did not finish
            lengths.append(len(row))
    return texts, torch.tensor(lengths)


def sft_prompt_sampler(language: SyntheticLanguage, train: list[tuple[str, str]], small_share: float,
                       rng: random.Random) -> Callable[[], tuple[str, str]]:
    """Draws one SFT (prompt, answer): uniformly over ``train`` when ``small_share`` is 0 (exactly the draws a
    build made before the setting existed), else from the small-sum prompts with probability ``small_share``
    and from the others otherwise, so the share of small sums in the SFT data is ``small_share``."""
    small = [item for item in train if language.small_sum(item[0])] if small_share > 0 else []
    if not small:
        return lambda: rng.choice(train)
    rest = [item for item in train if not language.small_sum(item[0])]
    return lambda: rng.choice(small) if rng.random() < small_share else rng.choice(rest)


def _sft_batches(language: SyntheticLanguage, train: list[tuple[str, str]], tokenizer, cfg, rng):
    """Yield (input_ids, labels) for SFT: fixed width, answers padded after EOS, prompt not trained."""
    width = len(train[0][0]) + language.max_answer_len + 1
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    draw = sft_prompt_sampler(language, train, float(cfg.get("small_sum_share") or 0), rng)
    while True:
        ids, labels = [], []
        for _ in range(cfg["batch_size"]):
            prompt, answer = draw()
            answer = language.sft_answer(prompt, answer, rng, cfg)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos_id]
            row = p + a + [pad_id] * (width - len(p) - len(a))
            ids.append(row)
            labels.append([-100] * len(p) + a + [-100] * (width - len(p) - len(a)))
        yield torch.tensor(ids), torch.tensor(labels)


def train_sft(language, train, tokenizer, cfg: dict[str, Any], seed: int):
    """Plain-torch SFT of a tiny GPT-2 (task construction, not a candidate: no TRL overhead needed)."""
    # lazy: tokenizers/transformers/datasets only when a task is built or loaded
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_embd=cfg["n_embd"], n_layer=cfg["n_layer"],
        n_head=cfg["n_head"], bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    steps, warmup = cfg["steps"], max(1, cfg["steps"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    batches = _sft_batches(language, train, tokenizer, cfg, random.Random(seed))
    model.train()
    for _ in range(steps):
        ids, labels = next(batches)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return model


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, sample: bool,
             seed: int = 0, batch_size: int = 512) -> list[str]:
    """Greedy or sampled completions for fixed-width prompts, decoded up to EOS."""
    out: list[str] = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(prompts), batch_size):
        ids = encode(tokenizer, prompts[start:start + batch_size])
        completion = decode_loop(model, ids, max_new_tokens, tokenizer.eos_token_id, sample, gen)
        texts, _ = decode_completions(tokenizer, completion)
        out.extend(texts)
    return out


def decode_loop(model, ids: torch.Tensor, max_new_tokens: int, eos_id: int, sample: bool,
                gen: torch.Generator, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token-by-token decoding with the KV cache; faster than ``generate`` for short answers.

    ``attention_mask`` (1 = token, 0 = padding) is for left-padded batches of prompts of different
    lengths: padding is masked and positions count real tokens only, so a padded row decodes as it
    would alone. Without it the batch is taken as unpadded and the model is called exactly as before.
    """
    past = None
    inputs = ids
    steps = []
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    mask = attention_mask
    positions = (mask.long().cumsum(1) - 1).clamp(min=0) if mask is not None else None
    for _ in range(max_new_tokens):
        if mask is None:
            out = model(input_ids=inputs, past_key_values=past, use_cache=True)
        else:
            out = model(input_ids=inputs, attention_mask=mask, position_ids=positions, past_key_values=past,
                        use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()
        if sample:
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(1)
        else:
            nxt = logits.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        steps.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        inputs = nxt.unsqueeze(1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
    return torch.stack(steps, dim=1)


def sample_pairs(model, tokenizer, language, train, cfg: dict[str, Any], seed: int) -> list[dict[str, str]]:
    """Sample completions from the SFT model and pair a correct with a wrong one per prompt."""
    rng = random.Random(seed)
    prompts = pair_prompts(language, train, cfg, rng)
    k = cfg["samples_per_prompt"]
    repeated = [p for p in prompts for _ in range(k)]
    texts = generate(model, tokenizer, repeated, language.max_answer_len + 1, sample=True, seed=seed)
    pairs = []
    ties = tie_generator(cfg, seed)  # the pair variants (tasks.pair_variants): None and unused when off
    for i, prompt in enumerate(prompts):
        group = texts[i * k:(i + 1) * k]
        good = [t for t in group if language.reward(prompt, t) == 1.0]
        bad = [t for t in group if language.reward(prompt, t) == 0.0 and t != "\x00" and t]
        if good and bad:
            pair = {"prompt": prompt, "chosen": good[0], "rejected": bad[0]}
            pairs.append(maybe_tie(pair, bad, float(cfg.get("ties") or 0), ties))
        if len(pairs) >= cfg["max_pairs"]:
            break
    flipped = flip_labels(pairs, float(cfg.get("label_noise", 0.0)), random.Random(seed + 1))
    return reshape(flipped, language, cfg, seed)


def pair_prompts(language: SyntheticLanguage, train: list[tuple[str, str]], cfg: dict[str, Any],
                 rng: random.Random) -> list[str]:
    """The training prompts pairs are sampled on: ``cfg["prompts"]`` drawn without replacement, uniformly (as
    before ``small_sum_share`` existed) or, with it set, that share of them from the small-sum prompts (as many
    as there are, at most) and the rest from the others, in seeded random order."""
    count = min(len(train), int(cfg["prompts"]))
    share = float(cfg.get("small_sum_share") or 0)
    if share <= 0:
        return [p for p, _ in rng.sample(train, count)]
    small = [item for item in train if language.small_sum(item[0])]
    rest = [item for item in train if not language.small_sum(item[0])]
    picked = rng.sample(small, min(len(small), round(share * count)))
    picked += rng.sample(rest, min(len(rest), count - len(picked)))
    rng.shuffle(picked)
    return [p for p, _ in picked]


def flip_labels(pairs: list[dict[str, str]], rate: float, rng: random.Random) -> list[dict[str, str]]:
    """Swap chosen and rejected in a seeded ``rate`` of the pairs, as disagreeing annotators do.

    Real preference data is noisy (human agreement is often 60-75%); how a loss treats pairs it
    cannot fit is one of the things that separates loss shapes, and a task with clean labels hides it.
    """
    if rate <= 0:
        return pairs
    return [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} if rng.random() < rate else p for p in pairs]


def split_heldout(language: SyntheticLanguage, problems: list[tuple[str, str]],
                  n_heldout: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split off about ``n_heldout`` prompts by whole problems (``problem_key``), in the seeded order.

    Every prompt of a problem lands on the same side, so no held-out prompt has a twin (``b+a``
    for ``a+b``) among the SFT data or the preference pairs. The held-out list keeps twins
    adjacent, so cutting it into search/confirm halves at an even index rarely splits a problem.
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for item in problems:
        groups.setdefault(language.problem_key(item[0]), []).append(item)
    heldout: list[tuple[str, str]] = []
    train: list[tuple[str, str]] = []
    for members in groups.values():  # dicts keep first-seen order: the seeded shuffle decides
        (heldout if len(heldout) < n_heldout else train).extend(members)
    return heldout, train


def sft_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The build settings the SFT model depends on (not the pairs): the key of the SFT stage's cache."""
    return {k: cfg[k] for k in ("language", "seed", "heldout_prompts", "sft")}


def sft_stage(language: SyntheticLanguage, train: list[tuple[str, str]], tokenizer, cfg: dict[str, Any],
              stage_root: Path | None) -> tuple[Any, float, bool]:
    """The SFT model, its training seconds and whether it came from the stage cache under ``stage_root``.

    The model is saved in fp32 and pair sampling draws from its own seeded generator, so a stored
    model gives exactly the pairs the in-memory one would.
    """
    # lazy: tokenizers/transformers/datasets only when a task is built or loaded
    from transformers import GPT2LMHeadModel

    stage = stage_root / f"{language.name}-sft-{config_hash(sft_key(cfg))}" if stage_root is not None else None
    if stage is not None and (stage / "meta.json").exists():
        model = GPT2LMHeadModel.from_pretrained(stage / "sft_model").eval()
        return model, float(json.loads((stage / "meta.json").read_text())["sft_seconds"]), True
    started = time.perf_counter()
    model = train_sft(language, train, tokenizer, cfg["sft"], int(cfg["seed"]))
    seconds = round(time.perf_counter() - started, 1)
    if stage is not None:
        tmp = stage.with_name(f"{stage.name}.tmp{os.getpid()}")
        model.save_pretrained(tmp / "sft_model")
        (tmp / "meta.json").write_text(json.dumps({"sft_seconds": seconds, **sft_key(cfg)}, indent=2))
        publish(tmp, stage)
    return model, seconds, False


def publish(tmp: Path, final: Path) -> None:
    """Move a finished cache entry into place, last, so a crash never leaves one that looks complete.

    If another process published the same entry first, its copy is kept and ours is dropped.
    """
    try:
        tmp.rename(final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def build(cfg: dict[str, Any], out_dir: Path, stage_root: Path | None = None) -> dict[str, Any]:
    """Build every artifact of a synthetic task into ``out_dir``; return the build metadata.

    With ``stage_root`` the SFT model is taken from (or stored in) the SFT stage cache there.
    """
    from datasets import Dataset  # lazy: tokenizers/transformers/datasets only when a task is built or loaded

    started = time.perf_counter()
    language = LANGUAGES[cfg["language"]]()
    seed = int(cfg["seed"])
    problems = language.problems(random.Random(seed))
    heldout, train = split_heldout(language, problems, int(cfg["heldout_prompts"]))
    tokenizer = build_tokenizer(language.alphabet)
    model, sft_seconds, sft_reused = sft_stage(language, train, tokenizer, cfg, stage_root)
    pairs = sample_pairs(model, tokenizer, language, train, cfg["pairs"], seed)
    heldout_prompts = [p for p, _ in heldout]
    greedy = generate(model, tokenizer, heldout_prompts, language.max_answer_len + 1, sample=False)
    sft_reward = sum(language.reward(p, t) for p, t in zip(heldout_prompts, greedy, strict=True)) / len(greedy)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    model.save_pretrained(out_dir / "sft_model")
    Dataset.from_list(pairs).save_to_disk(str(out_dir / "pairs"))
    (out_dir / "heldout.json").write_text(json.dumps(heldout_prompts))
    meta = {
        "language": language.name, "pairs": len(pairs), "heldout": len(heldout_prompts),
        "sft_heldout_reward": sft_reward, "sft_seconds": round(sft_seconds, 1), "sft_reused": sft_reused,
        "build_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
