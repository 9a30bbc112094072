"""Tasks: a reference policy, preference pairs, held-out prompts and a reward.

``load_task(cfg)`` returns a :class:`Task` whose artifacts live on disk (built once, cached by
config hash). Workers call it too: on a cache hit it only reads files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discopop.tasks import synthetic


@dataclass
class Task:
    """Everything a fine-tune and its scoring need, as paths plus a reward function."""

    name: str
    model_path: Path | str  # a local directory or a hub id
    tokenizer_path: Path | str
    pairs_path: Path
    heldout_prompts: list[str]  # scored during the search
    confirm_prompts: list[str]  # kept back for the fresh-seed confirmation of the winners
    reward: Callable[[str, str], float] | None  # None for a judged task: the main process grades completions
    max_new_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)
    require_eos: bool = True  # exact-answer tasks: a completion that never ends is malformed
    judged: bool = False  # fitness from the LLM judge (task.judge), graded in the main process (discopop.fitness.judge)
    score_batch_size: int = 512  # held-out prompts decoded (and reward-scored) together
    answer: Callable[[str], str] | None = None  # the correct completion of a prompt, where the reward is exact match
    score: str = "probability"  # with ``answer``: probability (of the correct answer) or greedy (0/1 accuracy)

    def rewards(self, prompts: list[str], completions: list[str | None], device: Any = "cpu") -> list[float]:
        """The reward of each completion (0 for a malformed one, None); batched on ``device`` when the reward can."""
        if self.reward is None:
            raise ValueError(f"task {self.name!r} is judged: its rewards come from the judge, not from the worker")
        batch = getattr(self.reward, "batch", None)
        if batch is not None:
            return batch(prompts, completions, device=device, batch_size=self.score_batch_size)
        return [self.reward(p, c) if c is not None else 0.0 for p, c in zip(prompts, completions, strict=True)]

    def prompts(self, split: str) -> list[str]:
        """Held-out prompts of ``split``: "search" (fitness) or "confirm" (winners' re-scoring)."""
        if split not in ("search", "confirm"):
            raise ValueError(f"unknown split {split!r} (allowed: search, confirm)")
        return self.heldout_prompts if split == "search" else self.confirm_prompts


def cache_root(cfg: dict[str, Any]) -> Path:
    root = cfg.get("cache_dir") or os.environ.get("DISCOPOP_CACHE_DIR") or "~/.cache/discopop"
    return Path(root).expanduser()


def build_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that determine a task's artifacts (and nothing else: not the cache path)."""
    return stable_key({k: cfg[k] for k in ("language", "seed", "heldout_prompts", "sft", "pairs")})


def stable_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without ``pairs.label_noise`` when it is 0: clean labels hash as before the setting existed
    (it was absent from the sorting task), so task and result caches built then stay valid."""
    pairs = cfg.get("pairs")
    if isinstance(pairs, dict) and not pairs.get("label_noise"):
        return {**cfg, "pairs": {k: v for k, v in pairs.items() if k != "label_noise"}}
    return cfg


def search_count(cfg: dict[str, Any], heldout: int) -> int:
    """How many held-out prompts score the search; the rest confirm the winners (``task.search_prompts``,
    default half). The search needs enough to rank; the confirmation needs as many as the task allows."""
    wanted = cfg.get("search_prompts")
    count = int(wanted) if wanted else heldout // 2
    if not 1 <= count < heldout:
        raise ValueError(f"task.search_prompts must be in [1, {heldout - 1}] for {heldout} held-out prompts, "
                         f"got {wanted}")
    return count


def load_task(cfg: Any, log: Callable[[str], None] | None = None) -> Task:
    """Load a task (its settings, or their plain form as a worker gets them), building it first on a miss."""
    from discopop.config import plain

    cfg = plain(cfg)
    kind = cfg.get("kind", "synthetic")
    if kind == "hub":
        from discopop.tasks.hub import load_hub_task

        return load_hub_task(cfg)
    if kind != "synthetic":
        raise ValueError(f"task.kind must be 'synthetic' or 'hub', got {kind!r}")
    key = build_key(cfg)
    out_dir = cache_root(cfg) / f"{cfg['language']}-{synthetic.config_hash(key)}"
    done = out_dir / "meta.json"
    if not done.exists():
        if log:
            log(f"building task '{cfg['name']}' into {out_dir} (first run only)")
        started = time.perf_counter()
        tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
        synthetic.build(key, tmp, stage_root=cache_root(cfg))
        synthetic.publish(tmp, out_dir)
        if log:
            log(f"task built in {time.perf_counter() - started:.0f} s")
    language = synthetic.LANGUAGES[cfg["language"]]()
    heldout = json.loads((out_dir / "heldout.json").read_text())
    return Task(
        name=cfg["name"],
        model_path=out_dir / "sft_model",
        tokenizer_path=out_dir / "tokenizer",
        pairs_path=out_dir / "pairs",
        heldout_prompts=heldout[: search_count(cfg, len(heldout))],
        confirm_prompts=heldout[search_count(cfg, len(heldout)):],
        reward=language.reward,
        max_new_tokens=language.max_answer_len + 1,
        meta=json.loads(done.read_text()),
        answer=language.answer,
        score=str(cfg.get("score") or "probability"),  # not in build_key: scoring never rebuilds the task
    )
