"""Tasks: a reference policy, preference pairs, held-out prompts and a reward.

``load_task(cfg)`` returns a :class:`Task` whose artifacts live on disk (built once, cached by
config hash). Workers call it too: on a cache hit it only reads files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from discopop.config import plain
from discopop.tasks import synthetic, worlds
from discopop.tasks.base import Task, cache_root, heldout_parts, search_count
from discopop.tasks.hub import load_hub_task

__all__ = ["Task", "build_key", "cache_root", "label_flip_rate", "load_task", "search_count", "stable_key"]


def build_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that determine a task's artifacts (and nothing else: not the cache path)."""
    return stable_key({k: cfg[k] for k in ("language", "seed", "heldout_prompts", "sft", "pairs")})


# Settings added after caches were built: left out of a key while unset (0, null, empty), so a task or result
# cache built before they existed stays valid (pairs.label_noise was absent from the sorting task).
LATER_TASK_KEYS = ("replicate_prompts", "replicate_contexts", "extra_confirm_contexts", "extra_search_contexts")
LATER_PAIRS_KEYS = ("label_noise", "hard_flip", "ties", "length_bias", "small_sum_share")
LATER_SFT_KEYS = ("small_sum_share",)


def stable_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without the later settings (``LATER_*_KEYS``) that are unset: they hash as before they existed."""
    out = {k: v for k, v in cfg.items() if not (k in LATER_TASK_KEYS and not v)}
    pairs = cfg.get("pairs")
    if isinstance(pairs, dict):
        out["pairs"] = {k: v for k, v in pairs.items() if not (k in LATER_PAIRS_KEYS and not v)}
    sft = cfg.get("sft")
    if isinstance(sft, dict):
        out["sft"] = {k: v for k, v in sft.items() if not (k in LATER_SFT_KEYS and not v)}
    return out


def load_task(cfg: Any, log: Callable[[str], None] | None = None) -> Task:
    """Load a task (its settings, or their plain form as a worker gets them), building it first on a miss."""
    cfg = plain(cfg)
    kind = cfg.get("kind", "synthetic")
    if kind == "hub":
        return load_hub_task(cfg)
    if kind == "diagnostic":
        return worlds.as_task(cfg)  # one world, or a composite (task.preset=a+b)
    if kind != "synthetic":
        raise ValueError(f"task.kind must be 'synthetic', 'hub' or 'diagnostic', got {kind!r}")
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
        heldout_prompts=heldout_parts(cfg, heldout)[0],
        confirm_prompts=heldout_parts(cfg, heldout)[1],
        replicate_prompts=heldout_parts(cfg, heldout)[2],
        reward=language.reward,
        max_new_tokens=language.max_answer_len + 1,
        meta=json.loads(done.read_text()),
        answer=language.answer,
        score=str(cfg.get("score") or "probability"),  # not in build_key: scoring never rebuilds the task
    )


def label_flip_rate(cfg: Any, meta: Mapping[str, Any] | None = None) -> float | None:
    """The task's true label-flip rate where it is known, else None (a Hub task): the rate cDPO, rDPO and AOT are
    told (``proposers.reference.reference_candidate``), in ``discover`` and ``evaluate`` alike.

    An embedded task's is its ``pairs.label_noise`` (its hard-prompt flips, ``pairs.hard_flip``, are not counted);
    the diagnostic tier's is in its task facts (``meta``, else the world is made for them: in memory, ~ms).
    """
    cfg = plain(cfg)
    pairs = cfg.get("pairs")
    if isinstance(pairs, Mapping) and pairs.get("label_noise") is not None:
        return float(pairs["label_noise"])
    if meta is None and cfg.get("kind") == "diagnostic":
        meta = worlds.as_task(cfg).meta
    flips = (meta or {}).get("label_noise")
    return None if flips is None else float(flips)
