"""Composing and validating a run's configuration (hydra compose API), and creating its run directory.

The settings are typed (``discopop.config``: one dataclass per group, registered as hydra schemas);
this module composes them, resolves ``auto``, checks them once and records them. The compose API
(rather than ``@hydra.main``) keeps ``discover`` thin and testable and lets every configuration
mistake become one clear line instead of a traceback. The configs ship inside the package
(``discopop/conf``), so they are found after a non-editable install too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from discopop.config import (
    API_KEY_REFUSED,
    GROUP_KEYS,
    KEY_LIKE,
    ConfigError,
    ExecutorSettings,
    RunSettings,
    TrainingSettings,
    check_group,
    describe,
    register_schemas,
)
from discopop.config.resume import check_resume
from discopop.config.search_path import hydra_session
from discopop.config.user_file import name_the_file, user_overrides

__all__ = ["ConfigError", "RunSettings", "compose", "compose_settings", "create_run_dir", "record_run",
           "resolve_auto", "resolve_run", "usable_cores", "validate"]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SAVED_CONFIG = Path(".hydra") / "config.yaml"
PRIMARY = "config"  # the primary config's name (conf/config.yaml); --config-name picks another
INFO_KINDS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")  # hydra's --info choices


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or ``taskset`` narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def gpus_for_workers(training: TrainingSettings, executor: ExecutorSettings) -> int:
    """GPUs the local workers would train on (0: they train on CPU); torch is imported only on a GPU host."""
    if training.device == "cpu" or executor.name != "local":
        return 0
    if not Path("/dev/nvidiactl").exists():  # no NVIDIA driver: skip importing torch just to learn that
        return 0
    gpus = getattr(executor, "gpus", "auto")
    if isinstance(gpus, list):
        return len(gpus)
    import torch  # lazy: torch takes seconds to import and is asked only on a host with an NVIDIA driver

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_auto(settings: RunSettings) -> None:
    """Replace ``auto`` settings by this machine's numbers, in place, before the config is recorded.

    ``executor.workers: auto`` is one worker per ``training.threads`` cores, or, where workers train on
    GPUs, one per GPU (``executor.workers_per_gpu`` each); ``candidates_per_generation: auto`` is one
    proposal per worker. The run directory keeps the numbers, so ``--resume`` repeats them
    on any machine; to reproduce a run elsewhere, copy its config (or set both explicitly).
    """
    executor = settings.executor
    if executor.workers == "auto":
        threads = max(1, settings.training.threads)
        gpus = gpus_for_workers(settings.training, executor)
        per_gpu = executor.workers_per_gpu if (executor.workers_per_gpu or 0) >= 1 else 1
        executor.workers = gpus * per_gpu if gpus else max(1, usable_cores() // threads)
    if settings.candidates_per_generation == "auto" and isinstance(executor.workers, int):
        settings.candidates_per_generation = executor.workers


def validate(cfg: RunSettings | dict[str, Any]) -> RunSettings:
    """Check every value once (``RunSettings.check``), so mistakes surface here, not deep inside a worker."""
    settings = RunSettings.coerce(cfg)
    settings.check()
    return settings


def refuse_pasted_keys(overrides: list[str]) -> None:
    """An override of ``...api_key`` is refused before anything reads, echoes or saves its value."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.rpartition(".")[2] == "api_key":
            raise ConfigError(API_KEY_REFUSED.format(key=key))


def compose_settings(overrides: list[str], config_file: str | Path | None = None,
                     config_dir: str | Path | None = None, config_name: str | None = None,
                     ) -> tuple[RunSettings, str]:
    """Compose ``config.yaml`` with overrides onto the schemas; return (typed settings, ``auto`` resolved,
    run directory). Nothing is checked beyond the types: ``validate`` does that.

    ``config_file``: a user's settings file (``discover --config``), composed under the overrides;
    ``config_dir`` / ``config_name``: hydra's ``--config-dir`` (a search path for a primary config and group
    files, ``config.search_path``) and ``--config-name`` (the primary config, default ``config``)."""
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    overrides = prepared_overrides(overrides, config_file)
    try:
        with hydra_session(CONF_DIR, config_dir):
            cfg = hydra_compose(config_name or PRIMARY, overrides=overrides, return_hydra_config=True)
        run_dir = str(cfg.hydra.run.dir)
        with open_dict(cfg):
            del cfg["hydra"]
        for group, key, _ in GROUP_KEYS:
            check_group(group, cfg[group][key], OmegaConf.get_type(cfg[group]))
        plain = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        message = _config_hint(_explain(err))
        if config_file is not None:
            message = name_the_file(message, config_file, str(err))
        raise ConfigError(message) from None
    # Through the plain form, as --resume reads a saved config: a key added with `+key=...` is refused here too.
    settings = RunSettings.coerce(plain)
    resolve_auto(settings)
    return settings, run_dir


def prepared_overrides(overrides: list[str], config_file: str | Path | None) -> list[str]:
    """The overrides hydra composes: pasted keys refused, schemas registered, a ``--config`` file added."""
    refuse_pasted_keys(overrides)
    register_schemas()
    return user_overrides(config_file, overrides) if config_file is not None else list(overrides)


def hydra_info(kind: str, overrides: list[str], config_file: str | Path | None = None,
               config_dir: str | Path | None = None, config_name: str | None = None) -> None:
    """hydra's ``--info [KIND]`` for this composition, printed by hydra itself (search path, defaults list, config,
    plugins): what a hydra user reads to learn where each file came from."""
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = prepared_overrides(overrides, config_file)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with hydra_session(CONF_DIR, config_dir) as hydra:
            hydra.show_info(kind, config_name=config_name or PRIMARY, overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_config_hint(_explain(err))) from None
    finally:  # show_info adds a stdout handler to the root logger at DEBUG: the caller's logging is left as it was
        root.handlers[:] = handlers
        root.setLevel(level)


def compose(overrides: list[str]) -> tuple[dict[str, Any], str]:
    """``compose_settings`` as a plain dict (every key present), for scripts that index the config."""
    settings, run_dir = compose_settings(overrides)
    return settings.to_dict(), run_dir


def _explain(err: Exception) -> str:
    """One line: hydra wraps the OmegaConf error that names the key and the problem; prefer that one."""
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from omegaconf.errors import OmegaConfBaseException

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            return _redact(describe(cause))
        cause = cause.__cause__ or cause.__context__
    return _redact(_first_line(err))


def _redact(message: str) -> str:
    """A value that looks like an API key never reaches the terminal (or a log) from a config error."""
    return KEY_LIKE.sub("***", message)


def _config_hint(message: str) -> str:
    groups = ", ".join(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()))
    if "Could not find" in message or "In 'config'" in message:
        options = {g: sorted(f.stem for f in (CONF_DIR / g).glob("*.yaml")) for g in groups.split(", ")}
        listing = "; ".join(f"{g}: {', '.join(v)}" for g, v in options.items())
        return f"{message} (config groups and options: {listing})"
    return message


def _load_saved(run_dir: Path, overrides: list[str]) -> RunSettings:
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    saved = run_dir / SAVED_CONFIG
    if not run_dir.is_dir():
        raise ConfigError(f"--resume: run directory not found: {run_dir}")
    if not (run_dir / "archive.sqlite").is_file() or not saved.is_file():
        raise ConfigError(f"--resume: {run_dir} is not a discopop run directory (no archive.sqlite and "
                          f"{SAVED_CONFIG})")
    try:
        refuse_pasted_keys(overrides)
        cfg = OmegaConf.load(saved)
        recorded = RunSettings.coerce(OmegaConf.to_container(cfg, resolve=True))
        OmegaConf.set_struct(cfg, True)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        settings = RunSettings.coerce(OmegaConf.to_container(cfg, resolve=True))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"--resume: {_explain(err)}") from None
    # Both through coerce, so a record older than a new key compares at that key's default on both sides.
    check_resume(recorded.to_dict(), settings.to_dict(), str(run_dir))
    return settings


def resolve_run(generations: int | None, resume: str | None, overrides: list[str],
                config_file: str | None = None, config_dir: str | None = None,
                config_name: str | None = None) -> tuple[RunSettings, Path]:
    """The validated settings and run directory of a new or resumed run; nothing is written yet."""
    if resume is not None:
        given = [flag for flag, value in (("--config", config_file), ("--config-dir", config_dir),
                                          ("--config-name", config_name)) if value is not None]
        if given:
            raise ConfigError(f"{'/'.join(given)} sets up a new run; a resumed run keeps its recorded settings (pass "
                              "the overrides --resume accepts, such as proposer.max_calls=N, on the command line)")
    if resume is not None:
        run_dir = Path(resume)
        settings = _load_saved(run_dir, overrides)
        if generations is not None:
            settings.generations = generations
    else:
        if generations is not None:
            overrides = [*overrides, f"generations={generations}"]
        settings, run_text = compose_settings(overrides, config_file, config_dir, config_name)
        run_dir = Path(run_text)
        if (run_dir / "archive.sqlite").exists():  # a run directory holds one configuration (config/resume.py)
            raise ConfigError(f"{run_dir} already holds a run (archive.sqlite): continue it with discover --resume "
                              f"{run_dir}, or start a new run in another directory (hydra.run.dir=NEW_DIR)")
    resolve_auto(settings)
    settings.check()
    return settings, run_dir


def create_run_dir(run_dir: Path) -> None:
    try:
        (run_dir / SAVED_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write the run directory {run_dir}: {err.strerror or err}") from None


def record_run(settings: RunSettings, run_dir: Path, overrides: list[str], resumed: bool) -> None:
    """Save the resolved config (and, for a new run, its overrides) in the run directory.

    Call it only while holding the run directory's lock, so a refused second process cannot
    overwrite the running one's record.
    """
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from omegaconf import OmegaConf

    try:
        (run_dir / SAVED_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(RunSettings.coerce(settings).to_dict())))
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
