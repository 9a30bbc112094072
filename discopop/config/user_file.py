"""A user's own settings file (``discover --config my.yaml``), kept outside the package.

TRL users keep their settings in a YAML file; hydra users expect a file merged like one of hydra's.
The file holds the same keys as the saved ``.hydra/config.yaml`` (``training: {beta: 0.1}``,
``seed: 3``); a group given a string (``task: diagnostic``) picks that preset, as ``task=diagnostic``
would. The file is composed *before* the command line: it changes the package's defaults, and
an override given on the command line still wins, as in hydra. Every mistake (no such file, not
YAML, an unknown key, a pasted API key) is one ``ConfigError`` line that names the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from discopop.config import API_KEY_REFUSED, GROUP_KEYS, ConfigError

USER_GROUP = "user_config"  # the ConfigStore group the file is stored under (package _global_)
USER_OVERRIDE = f"+{USER_GROUP}=file"
GROUPS = tuple(g for g, _, _ in GROUP_KEYS) + ("training",)


def _keys(value: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a nested mapping (to find a pasted ``api_key`` at any depth)."""
    if not isinstance(value, Mapping):
        return []
    out = []
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        out += [dotted, *_keys(item, dotted + ".")]
    return out


def read_user_config(path: str | Path) -> tuple[list[str], dict[str, Any]]:
    """(group choices as overrides, e.g. ``["task=diagnostic"]``; the remaining values) of a settings file."""
    path = Path(path)
    where = f"--config {path}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML{at} ({getattr(err, 'problem', None) or 'parse error'})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"{where}: expected a mapping of settings (e.g. 'training: {{beta: 0.1}}'), "
                          f"got {type(data).__name__}")
    for key in _keys(data):
        if key.rpartition(".")[2] == "api_key":
            raise ConfigError(f"{where}: " + API_KEY_REFUSED.format(key=key))
    if "hydra" in data:
        raise ConfigError(f"{where}: 'hydra' settings (the run directory) go on the command line "
                          "(hydra.run.dir=PATH), not in a settings file")
    choices: list[str] = []
    for entry in data.pop("defaults", None) or []:  # hydra's form: defaults: [{task: diagnostic}]
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise ConfigError(f"{where}: each 'defaults' entry must be one 'group: option', got {entry!r}")
        choices += [f"{group}={option}" for group, option in entry.items()]
    for group in GROUPS:
        if isinstance(data.get(group), str):
            choices.append(f"{group}={data.pop(group)}")
    for choice in choices:
        if choice.split("=", 1)[0] not in GROUPS:
            raise ConfigError(f"{where}: {choice.split('=', 1)[0]!r} is not a config group "
                              f"(groups: {', '.join(sorted(GROUPS))})")
    return choices, data


def user_overrides(path: str | Path, overrides: list[str]) -> list[str]:
    """The overrides that compose ``path`` under the command line's ``overrides`` (which win).

    The file's values are stored in hydra's ConfigStore and appended to the defaults list, so they merge
    after the presets; its group choices come first, unless the command line picks that group itself.
    """
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from hydra.core.config_store import ConfigStore

    choices, values = read_user_config(path)
    chosen = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    ConfigStore.instance().store(group=USER_GROUP, name="file", package="_global_", node=values)
    return [*(c for c in choices if c.split("=", 1)[0] not in chosen), USER_OVERRIDE, *overrides]


def name_the_file(message: str, path: str | Path, raw: str) -> str:
    """Hydra names the stored node ``user_config/file``; the user knows it by its path. ``raw``: hydra's whole
    error text, which says whether the file (rather than a command-line override) was at fault."""
    if f"{USER_GROUP}/file" not in raw:
        return message
    message = message.replace(f"In '{USER_GROUP}/file': ", "").replace(f"'{USER_GROUP}/file'", str(path))
    return f"--config {path}: {message}"
