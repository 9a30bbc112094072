"""Composing and validating a run's configuration (hydra compose API), and creating its run directory.

The compose API (rather than ``@hydra.main``) keeps ``discover`` thin and testable and lets every
configuration mistake become one clear line instead of a traceback. The configs ship inside the
package (``discopop/conf``), so they are found after a non-editable install too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent / "conf"
SAVED_CONFIG = Path(".hydra") / "config.yaml"


class ConfigError(ValueError):
    """A user-facing configuration problem (one line)."""


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or ``taskset`` narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def gpus_for_workers(training: dict[str, Any], executor: dict[str, Any]) -> int:
    """GPUs the local workers would train on (0: they train on CPU); torch is imported only on a GPU host."""
    if training.get("device", "auto") == "cpu" or executor.get("name", "local") != "local":
        return 0
    if not Path("/dev/nvidiactl").exists():  # no NVIDIA driver: skip importing torch just to learn that
        return 0
    from discopop.devices import cuda_device_count

    gpus = executor.get("gpus", "auto")
    return len(gpus) if isinstance(gpus, list) else cuda_device_count()


def resolve_auto(cfg: dict[str, Any]) -> None:
    """Replace ``auto`` settings by this machine's numbers, in place, before the config is recorded.

    ``executor.workers: auto`` is one worker per ``training.threads`` cores, or, where workers train on
    GPUs, one per GPU (``executor.workers_per_gpu`` each); ``candidates_per_generation: auto`` is one
    proposal per worker. The run directory keeps the numbers, so ``--resume`` repeats them
    on any machine; to reproduce a run elsewhere, copy its config (or set both explicitly).
    """
    executor = cfg.get("executor") or {}
    if executor.get("workers") == "auto":
        threads = cfg.get("training", {}).get("threads", 1)
        threads = threads if isinstance(threads, int) and threads >= 1 else 1
        gpus = gpus_for_workers(cfg.get("training", {}), executor)
        per_gpu = executor.get("workers_per_gpu")
        per_gpu = per_gpu if isinstance(per_gpu, int) and per_gpu >= 1 else 1
        executor["workers"] = gpus * per_gpu if gpus else max(1, usable_cores() // threads)
    if cfg.get("candidates_per_generation") == "auto" and isinstance(executor.get("workers"), int):
        cfg["candidates_per_generation"] = executor["workers"]


def _count(value: Any, key: str, minimum: int) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
             f"{key} must be an integer >= {minimum} or auto, got {value!r}")


def validate(cfg: dict[str, Any]) -> None:
    """Check values whose mistakes would otherwise surface late, deep inside a worker."""
    from discopop.proposers.reference import available
    from discopop.seed_race import RacePolicy
    from discopop.tasks.synthetic import LANGUAGES

    _require(int(cfg["generations"]) >= 0, f"generations must be >= 0, got {cfg['generations']}")
    _count(cfg["executor"].get("workers", 1), "executor.workers", 1)
    _count(cfg["candidates_per_generation"], "candidates_per_generation", 1)
    unknown = [n for n in cfg["baselines"] if n not in available()]
    _require(not unknown, f"unknown baseline(s) {', '.join(unknown)} (available: {', '.join(available())})")
    _require("dpo" in cfg["baselines"], "baselines must include dpo (the fresh-seed confirmation compares to it)")
    t = cfg["training"]
    for key in ("beta", "learning_rate", "epochs", "batch_size", "check_timeout", "train_timeout", "oracle_timeout"):
        _require(float(t[key]) > 0, f"training.{key} must be > 0, got {t[key]}")
    grid = t.get("lr_grid")
    _require(grid is None or (isinstance(grid, list) and len(grid) > 0 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in grid)),
        f"training.lr_grid must be a non-empty list of learning rates > 0 (or null), got {grid!r}")
    margin = t.get("lr_screen_margin")
    _require(margin is None or (isinstance(margin, int | float) and not isinstance(margin, bool) and margin >= 0),
             f"training.lr_screen_margin must be a fitness margin >= 0 (or null: tune every candidate), got {margin!r}")
    fraction = float(t.get("pair_fraction", 1.0))
    _require(0.0 < fraction <= 1.0, f"training.pair_fraction must be in (0, 1], got {t.get('pair_fraction')}")
    task = cfg["task"]
    _require(task.get("kind", "synthetic") in ("synthetic", "hub"),
             f"task.kind must be 'synthetic' or 'hub', got {task.get('kind')!r}")
    if task.get("kind") == "hub":
        from discopop.tasks.hub import hub_config_problem

        problem = hub_config_problem(task)
        _require(problem is None, problem or "")
    if task.get("judge"):
        from discopop.judge import judge_config_problem

        problem = judge_config_problem(task["judge"])  # before anything is written: a pasted key is refused
        _require(problem is None, problem or "")
    if task.get("kind", "synthetic") == "synthetic":
        _require(task["language"] in LANGUAGES,
                 f"task.language must be one of {', '.join(LANGUAGES)}, got {task['language']!r}")
    from discopop.devices import check_executor, check_training

    try:
        check_training(t)
        check_executor(cfg["executor"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _require(int(cfg["confirm"]["seeds"]) >= 0 and int(cfg["confirm"]["top_k"]) >= 0,
             "confirm.seeds and confirm.top_k must be >= 0")
    try:
        RacePolicy.from_config(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    proposer = cfg["proposer"]
    if proposer.get("name") == "evolution":
        _require(proposer.get("history_mode", "feedback") in ("feedback", "none"),
                 f"proposer.history_mode must be feedback or none, got {proposer.get('history_mode')!r}")
        _require(proposer.get("population", "cells") in ("cells", "flat"),
                 f"proposer.population must be cells or flat, got {proposer.get('population')!r}")
    if proposer.get("name") == "openai":
        # Checked before anything is written: a key pasted here by mistake must not reach the run directory.
        _require("api_key" not in proposer, "proposer.api_key is not a setting: put the key in an environment "
                 "variable and name it with proposer.api_key_env (the value given was not saved)")
        env_name = str(proposer.get("api_key_env") or "")
        _require(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name) is not None,
                 "proposer.api_key_env must be the NAME of an environment variable holding the key "
                 "(the value given is not a variable name and was not saved)")
    _require(cfg["wandb"]["mode"] in ("offline", "online", "disabled"),
             f"wandb.mode must be offline, online or disabled, got {cfg['wandb']['mode']!r}")


def compose(overrides: list[str]) -> tuple[dict[str, Any], str]:
    """Compose ``config.yaml`` with overrides; return (config as a plain dict, ``auto`` resolved, run directory)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
        run_dir = str(cfg.hydra.run.dir)
        with open_dict(cfg):
            del cfg["hydra"]
        plain = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_config_hint(_first_line(err))) from None
    finally:
        GlobalHydra.instance().clear()
    resolve_auto(plain)
    return plain, run_dir


def _config_hint(message: str) -> str:
    groups = ", ".join(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()))
    if "Could not find" in message or "In 'config'" in message:
        options = {g: sorted(f.stem for f in (CONF_DIR / g).glob("*.yaml")) for g in groups.split(", ")}
        listing = "; ".join(f"{g}: {', '.join(v)}" for g, v in options.items())
        return f"{message} (config groups and options: {listing})"
    return message


def _load_saved(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    saved = run_dir / SAVED_CONFIG
    if not run_dir.is_dir():
        raise ConfigError(f"--resume: run directory not found: {run_dir}")
    if not (run_dir / "archive.sqlite").is_file() or not saved.is_file():
        raise ConfigError(f"--resume: {run_dir} is not a discopop run directory (no archive.sqlite and "
                          f"{SAVED_CONFIG})")
    try:
        cfg = OmegaConf.load(saved)
        OmegaConf.set_struct(cfg, True)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_container(cfg, resolve=True)
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"--resume: {_first_line(err)}") from None


def resolve_run(generations: int | None, resume: str | None, overrides: list[str]) -> tuple[dict[str, Any], Path]:
    """The validated config and run directory of a new or resumed run; nothing is written yet."""
    if resume is not None:
        run_dir = Path(resume)
        cfg = _load_saved(run_dir, overrides)
        if generations is not None:
            cfg["generations"] = generations
    else:
        if generations is not None:
            overrides = [*overrides, f"generations={generations}"]
        cfg, run_text = compose(overrides)
        run_dir = Path(run_text)
    try:
        resolve_auto(cfg)
        validate(cfg)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"invalid configuration: missing or malformed {err}") from None
    return cfg, run_dir


def create_run_dir(run_dir: Path) -> None:
    try:
        (run_dir / SAVED_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write the run directory {run_dir}: {err.strerror or err}") from None


def record_run(cfg: dict[str, Any], run_dir: Path, overrides: list[str], resumed: bool) -> None:
    """Save the resolved config (and, for a new run, its overrides) in the run directory.

    Call it only while holding the run directory's lock, so a refused second process cannot
    overwrite the running one's record.
    """
    from omegaconf import OmegaConf

    try:
        (run_dir / SAVED_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
        if not resumed:
            (run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    except OSError as err:
        raise ConfigError(f"cannot write the run directory {run_dir}: {err.strerror or err}") from None
    _link_latest(run_dir)


def _link_latest(run_dir: Path) -> None:
    """Point ``runs/latest`` at the newest run under ``runs/`` (the notebook's default RUN_DIR)."""
    if run_dir.parent.name != "runs":
        return
    link = run_dir.parent / "latest"
    try:
        if link.is_symlink() or not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(run_dir.name)
    except OSError:
        pass
