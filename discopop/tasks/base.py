"""What every task gives a fine-tune (:class:`Task`) and where built tasks are cached.

Apart from the package's ``__init__`` (which loads tasks) so that a kind of task (``hub``) can build
a ``Task`` without importing the loader that dispatches to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("search", "confirm", "replicate")  # the held-out prompts' parts (Task.prompts)


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
    # kept back from both (``task.replicate_prompts``): what a replication run (``confirm.split=replicate``) scores
    replicate_prompts: list[str] = field(default_factory=list)

    def rewards(self, prompts: list[str], completions: list[str | None], device: Any = "cpu") -> list[float]:
        """The reward of each completion (0 for a malformed one, None); batched on ``device`` when the reward can."""
        if self.reward is None:
            raise ValueError(f"task {self.name!r} is judged: its rewards come from the judge, not from the worker")
        batch = getattr(self.reward, "batch", None)
        if batch is not None:
            return batch(prompts, completions, device=device, batch_size=self.score_batch_size)
        return [self.reward(p, c) if c is not None else 0.0 for p, c in zip(prompts, completions, strict=True)]

    def prompts(self, split: str) -> list[str]:
        """Held-out prompts of ``split``: "search" (fitness), "confirm" (winners' re-scoring) or "replicate" (a
        replication's re-scoring, on prompts neither the search nor the confirmation used)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (allowed: {', '.join(SPLITS)})")
        if split == "replicate" and not self.replicate_prompts:
            raise ValueError("split 'replicate' needs task.replicate_prompts > 0 (none were kept back)")
        return {"search": self.heldout_prompts, "confirm": self.confirm_prompts,
                "replicate": self.replicate_prompts}[split]


def cache_root(cfg: dict[str, Any]) -> Path:
    root = cfg.get("cache_dir") or os.environ.get("DISCOPOP_CACHE_DIR") or "~/.cache/discopop"
    return Path(root).expanduser()


def heldout_parts(cfg: dict[str, Any], heldout: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(search, confirm, replicate) prompts of the held-out list: the first :func:`search_count` score the search,
    the last ``task.replicate_prompts`` (default 0) are kept for replications, the rest confirm the winners.

    Why a third part: a replication (another run seed) that re-scores the confirmation prompts re-uses prompts that
    selected the winner it replicates, so it is not independent of it."""
    search = search_count(cfg, len(heldout))
    keep = int(cfg.get("replicate_prompts") or 0)
    if not 0 <= keep <= len(heldout) - search - 1:
        raise ValueError(f"task.replicate_prompts must be in [0, {len(heldout) - search - 1}] (the confirmation "
                         f"keeps at least one of the {len(heldout) - search} non-search prompts), got {keep}")
    cut = len(heldout) - keep
    return heldout[:search], heldout[search:cut], heldout[cut:]


def search_count(cfg: dict[str, Any], heldout: int) -> int:
    """How many held-out prompts score the search; the rest confirm the winners (``task.search_prompts``,
    default half). The search needs enough to rank; the confirmation needs as many as the task allows."""
    wanted = cfg.get("search_prompts")
    count = int(wanted) if wanted else heldout // 2
    if not 1 <= count < heldout:
        raise ValueError(f"task.search_prompts must be in [1, {heldout - 1}] for {heldout} held-out prompts, "
                         f"got {wanted}")
    return count
