"""Tasks from the Hugging Face Hub (or local copies): a policy, a preference dataset and a reward model.

``task=hub task.model=... task.dataset=... task.reward_model=...`` names each by hub id or local
path (``save_pretrained`` / ``save_to_disk`` directories work the same, so the code is tested
offline on tiny local models). Held-out prompts are split off the dataset first, with the run's
seed, and never trained on; the split pairs are written to the cache so TRL's reference
log-prob cache keys stay stable across runs.

The held-out reward comes from a sequence-classification reward model (``task.reward_model``, the
logit ``task.reward_index``) or from an LLM judge (``task.judge``, graded in the main process by
``discopop.fitness.judge``). Either *can* be bought by drifting far from the reference, so hub tasks
penalise KL by default (``kl_coef``).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from discopop.config import HubTaskSettings, from_plain, plain
from discopop.config.task import hub_config_problem
from discopop.tasks.base import Task, cache_root, search_count


class RewardModelScorer:
    """reward(prompt, completion) = one logit of a sequence-classification model on prompt + completion.

    ``index`` picks the logit: 0 for a scalar reward model, the positive class of a classifier
    (``lvwerra/distilbert-imdb``: 1 = POSITIVE). The model loads on first use and moves to the
    device it is asked to score on; ``batch`` scores many completions at once, sorted by length.
    """

    def __init__(self, path: str, max_length: int = 512, index: int = 0):
        self.path = path
        self.max_length = max_length
        self.index = index

    @cached_property
    def _model(self):
        # lazy: transformers/datasets only when a hub task is loaded
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(self.path).eval()
        model.config.pad_token_id = tokenizer.pad_token_id
        if not 0 <= self.index < model.config.num_labels:
            raise ValueError(f"task.reward_index={self.index} is not a logit of {self.path} "
                             f"({model.config.num_labels} labels)")
        return tokenizer, model

    def __call__(self, prompt: str, completion: str | None) -> float:
        return self.batch([prompt], [completion])[0]

    def batch(self, prompts: list[str], completions: list[str | None], device: Any = "cpu",
              batch_size: int = 32) -> list[float]:
        """Rewards of many completions (0 for None), in order; texts of similar length share a padded batch."""
        tokenizer, model = self._model
        model.to(device)
        out = [0.0] * len(prompts)
        todo = [(i, p + c) for i, (p, c) in enumerate(zip(prompts, completions, strict=True)) if c is not None]
        todo.sort(key=lambda item: len(item[1]))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            enc = tokenizer([text for _, text in chunk], return_tensors="pt", padding=True, truncation=True,
                            max_length=self.max_length).to(device)
            with torch.no_grad():
                logits = model(**enc).logits[:, self.index].float().tolist()
            for (i, _), value in zip(chunk, logits, strict=True):
                out[i] = float(value)
        return out


def _load_dataset(name_or_path: str, split: str):
    # lazy: transformers/datasets only when a hub task is loaded
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(name_or_path).expanduser()
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                          or (path / "state.json").exists()):
        data = load_from_disk(str(path))
        return data[split] if isinstance(data, DatasetDict) else data
    return load_dataset(name_or_path, split=split)


def load_hub_task(cfg: HubTaskSettings | dict[str, Any]):
    """Load (and cache the split of) a hub task; see the module docstring."""
    settings = from_plain(HubTaskSettings, cfg)
    cfg = plain(settings)
    problem = hub_config_problem(cfg)
    if problem:
        raise ValueError(problem)
    key = {k: cfg[k] for k in ("model", "dataset", "split", "prompt_column", "chosen_column", "rejected_column",
                               "heldout_prompts", "seed", "max_pairs")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    out_dir = cache_root(cfg) / f"hub-{digest}"
    meta_path = out_dir / "meta.json"
    if not meta_path.exists():
        data = _load_dataset(settings.dataset, settings.split)
        columns = [settings.prompt_column, settings.chosen_column, settings.rejected_column]
        absent = [c for c in columns if c not in data.column_names]
        if absent:
            raise ValueError(f"dataset {cfg['dataset']} lacks column(s) {', '.join(absent)} "
                             f"(has: {', '.join(data.column_names)})")
        data = data.select_columns(columns).rename_columns(dict(zip(columns, ("prompt", "chosen", "rejected"),
                                                                    strict=True)))
        data = data.shuffle(seed=settings.seed)
        prompts = list(dict.fromkeys(data["prompt"]))
        heldout = prompts[: settings.heldout_prompts]
        held = set(heldout)
        train = data.filter(lambda row: row["prompt"] not in held)
        if settings.max_pairs:
            train = train.select(range(min(len(train), settings.max_pairs)))
        if len(train) == 0 or len(heldout) < 2:
            raise ValueError(f"dataset {cfg['dataset']} is too small: {len(train)} training pairs, "
                             f"{len(heldout)} held-out prompts")
        out_dir.mkdir(parents=True, exist_ok=True)
        train.save_to_disk(str(out_dir / "pairs"))
        (out_dir / "heldout.json").write_text(json.dumps(heldout))
        meta_path.write_text(json.dumps({"pairs": len(train), "heldout": len(heldout), "source": key}, indent=2))
    heldout = json.loads((out_dir / "heldout.json").read_text())
    meta = json.loads(meta_path.read_text())
    judged = bool(settings.judge.model)
    model = settings.model
    return Task(
        name=settings.name,
        model_path=Path(model) if Path(model).expanduser().exists() else model,
        tokenizer_path=settings.tokenizer or model,
        pairs_path=out_dir / "pairs",
        heldout_prompts=heldout[: search_count(cfg, len(heldout))],
        confirm_prompts=heldout[search_count(cfg, len(heldout)):],
        reward=None if judged else RewardModelScorer(settings.reward_model, index=settings.reward_index),
        max_new_tokens=settings.max_new_tokens,
        meta=meta,
        require_eos=False,
        judged=judged,
        score_batch_size=settings.score_batch_size,
    )
