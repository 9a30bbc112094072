"""Which settings a ``--resume`` may change: the rule that keeps one run directory one measurement.

Every row of a run's archive is ranked against every other, so every row must have been measured
the same way: the same task, training, scoring, baselines, seed and selection (the seed race decides
how many seeds make a fitness). A setting that changes any of that is *measured*, and a resumed
run must keep the value its ``.hydra/config.yaml`` recorded; a new value needs a new run directory.

The rest only changes what is proposed next, where and how fast the fine-tunes run, or what is
logged: the proposer (its model, budget, prompts; a loss is measured the same whoever wrote it),
the executor (workers, GPUs, memory caps), the time limits (a limit decides whether a slow
fine-tune is given up on, never the fitness of one that finishes), wandb, how many generations and
proposals per generation, the confirmation (it is recomputed from the archive at the end of every
run, for every confirmed row at once, with the settings of that run), where built tasks are cached,
and the judge's network settings (its model, endpoint and template stay measured). Those may
change on ``--resume``: a user moving a run to a bigger machine, raising a budget or swapping the
proposer model must not have to start over.

Anything not listed in :data:`RESUMABLE` is measured, so a setting added later is protected until
someone decides otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from discopop.config.base import KEY_LIKE, ConfigError

# Dotted keys (a key covers everything below it) that --resume may change; everything else is measured.
RESUMABLE: tuple[str, ...] = (
    "generations", "candidates_per_generation", "proposer", "executor", "wandb", "confirm",
    "selection.reference_store", "task.cache_dir", "training.check_timeout", "training.train_timeout",
    "training.oracle_timeout",
    *(f"task.judge.{k}" for k in ("api_key_env", "timeout", "max_retries", "backoff_base", "backoff_max",
                                  "concurrency", "max_cost_usd", "prices")),
)
MAX_SHOWN_CHARS = 60


def is_measured(key: str) -> bool:
    """Whether the dotted ``key`` decides how a loss is measured (and so must not change on ``--resume``)."""
    return not any(key == free or key.startswith(free + ".") for free in RESUMABLE)


def changed_keys(saved: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two plain configs (a mapping compared key by key)."""
    out: list[str] = []
    for key in sorted(set(saved) | set(new), key=str):
        dotted = f"{prefix}{key}"
        old, value = saved.get(key), new.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out += changed_keys(old, value, dotted + ".")
        elif old != value:
            out.append(dotted)
    return out


def _shown(value: Any) -> str:
    text = KEY_LIKE.sub("***", repr(value))
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, Mapping) else None
    return config


def check_resume(saved: Mapping[str, Any], new: Mapping[str, Any], run_dir: str) -> None:
    """Refuse (one ``ConfigError`` line) a resumed config that changes a measured setting of the saved one."""
    measured = [k for k in changed_keys(saved, new) if is_measured(k)]
    if not measured:
        return
    changes = ", ".join(f"{k} ({_shown(_get(saved, k))} -> {_shown(_get(new, k))})" for k in measured)
    raise ConfigError(f"--resume: {changes} would change how losses are measured, and {run_dir} ranks every row "
                      f"against the others; start a new run (hydra.run.dir=NEW_DIR) for it. --resume may change "
                      f"only: {allowed_text()}")


def allowed_text() -> str:
    """:data:`RESUMABLE` for an error line: groups as ``proposer.*``, siblings as ``training.{a,b}``."""
    parts: dict[str, list[str]] = {}
    for key in RESUMABLE:
        parent, _, leaf = key.rpartition(".")
        parts.setdefault(parent, []).append(leaf)
    shown = []
    for parent, leaves in parts.items():
        if not parent:
            shown += [f"{k}.*" if k not in ("generations", "candidates_per_generation") else k for k in leaves]
        else:
            shown.append(f"{parent}.{leaves[0]}" if len(leaves) == 1 else f"{parent}.{{{','.join(leaves)}}}")
    return ", ".join(shown)
