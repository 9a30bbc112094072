"""Rank agreement between a cheap stage and the full protocol: Spearman's rho with a bootstrap interval.

Why: a cheap stage may *reject* candidates only where it ranks losses as the full protocol does, and "as"
needs a number with its uncertainty: over a dozen losses a rho of 0.6 can come from no agreement at all.
The interval resamples the losses (a percentile bootstrap, seeded), so its lower bound is what a filtering
threshold is held to. The measured agreements are stored in a small JSON file with the key of the settings
they were measured under (:func:`agreement_key`); a stage trusts only an entry with its own key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The training settings that change what a full evaluation ranks (not where or how fast it runs).
RANKING_TRAINING_KEYS = ("beta", "lr_grid", "lr_screen_margin", "epochs", "batch_size", "max_pairs", "pair_fraction",
                         "lr_scheduler", "warmup_steps", "max_grad_norm", "lora", "precision")


def ranks(values: Sequence[float]) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 0-based."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    out = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        out[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho (Pearson on average ranks); nan when either side is constant or fewer than 3 pairs."""
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if len(a) < 3:
        return math.nan
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else math.nan


@dataclass(frozen=True)
class Agreement:
    """Spearman's rho of one stage against the full protocol over ``n`` losses, with its bootstrap interval."""

    rho: float
    lower: float
    upper: float
    n: int
    confidence: float


def bootstrap_spearman(cheap: Sequence[float], full: Sequence[float], *, confidence: float = 0.9,
                       resamples: int = 2000, seed: int = 0) -> Agreement:
    """rho and its percentile-bootstrap interval over the losses (resamples where a side is constant are skipped)."""
    cheap_arr, full_arr = np.asarray(cheap, dtype=np.float64), np.asarray(full, dtype=np.float64)
    n = len(cheap_arr)
    rho = spearman(cheap_arr, full_arr)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        value = spearman(cheap_arr[idx], full_arr[idx])
        if math.isfinite(value):
            draws.append(value)
    if not draws:
        return Agreement(rho, math.nan, math.nan, n, confidence)
    tail = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(draws, [tail, 1.0 - tail])
    return Agreement(rho, float(lower), float(upper), n, confidence)


def agreement_key(task: Mapping[str, Any], training: Mapping[str, Any], stage: Mapping[str, Any]) -> str:
    """What an agreement was measured under: the task (less where its cache lives), the training settings that
    change the ranking, and the stage's own settings. Any change means it was not measured for this run."""
    task = {k: v for k, v in task.items() if k != "cache_dir"}
    training = {k: training.get(k) for k in RANKING_TRAINING_KEYS}
    text = json.dumps({"task": task, "training": training, "stage": dict(stage)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_agreements(path: Path, entries: Mapping[str, dict[str, Any]]) -> None:
    """Write (merge) stage -> {key, agreement fields, costs} into the JSON file at ``path`` (atomic replace)."""
    path = Path(path)
    current = load_agreements(path)
    current.update({stage: dict(entry) for stage, entry in entries.items()})
    tmp = path.with_suffix(path.suffix + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({"stages": current}, indent=2, sort_keys=True))
    tmp.replace(path)


def load_agreements(path: Path | None) -> dict[str, dict[str, Any]]:
    """stage -> stored entry; {} when there is no file (an unreadable file is an error, not silence)."""
    if path is None or not Path(path).exists():
        return {}
    data = json.loads(Path(path).read_text())
    return dict(data.get("stages") or {})


def entry(agreement: Agreement, key: str, **extra: Any) -> dict[str, Any]:
    """A stored agreement: its key and numbers, plus what else the benchmark measured (costs)."""
    return {"key": key, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(agreement).items()},
            **extra}
