"""What every settings dataclass shares: the field helper, the error type and the checks' vocabulary.

Each field is declared once with its default and its help text (``metadata["help"]``), the way
TRL's ``DPOConfig`` documents its arguments; the YAML presets under ``discopop/conf`` hold only
what differs from these defaults.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_*\-]{6,}")  # what an API key looks like: never echoed or saved


class ConfigError(ValueError):
    """A user-facing configuration problem (one line)."""


def setting(default: Any = MISSING, help: str = "") -> Any:  # noqa: A002 - the dataclass-field idiom (TRL's)
    """A dataclass field with its default and its help text; mutable defaults are copied per instance."""
    meta = {"help": help}
    if isinstance(default, list | dict) or is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def from_plain(cls: type[T], value: T | Mapping[str, Any]) -> T:
    """``cls`` from a plain mapping without OmegaConf, as a sandboxed worker receives its settings (JSON).

    Nested settings are built the same way; missing keys take their defaults; keys that are not fields
    are left to the caller (per-job knobs). The values were checked in the main process; tests pass
    partial mappings.
    """
    if isinstance(value, cls):
        return value
    kwargs = {}
    for f in fields(cls):
        if f.name in value:
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            item = value[f.name]
            kwargs[f.name] = from_plain(type(default), item) if is_dataclass(default) and item is not None else item
    return cls(**kwargs)


def from_wire(cls: type[T], value: Any, where: str) -> T:
    """``cls`` from the plain form another process sent (JSON), strictly: a ``ConfigError`` of one line names an
    unknown key, a group that is not a mapping, or a value the dataclass refuses. ``where``: the key, for errors.

    The sending side wrote ``asdict`` of the same dataclass, so anything else is another version of discopop or a
    tampered message: refused at once rather than defaulted.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(value).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}")
    kwargs = {}
    for name, item in value.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        nested = is_dataclass(default) and item is not None
        kwargs[name] = from_wire(type(default), item, f"{where}.{name}") if nested else item
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def help_of(cls: type, name: str) -> str:
    """The help text of field ``name`` of a settings dataclass."""
    return next(f.metadata.get("help", "") for f in fields(cls) if f.name == name)


def require(ok: Any, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_url(value: Any) -> bool:
    """None (the default endpoint) or an http(s) URL with a host."""
    return value is None or (isinstance(value, str) and urlparse(value).scheme in ("http", "https")
                             and bool(urlparse(value).netloc))


def is_env_name(value: Any) -> bool:
    return isinstance(value, str) and ENV_NAME.fullmatch(value) is not None


def check_count(value: Any, key: str, minimum: int) -> None:
    """A count that ``auto`` may have set: an integer >= ``minimum`` once ``auto`` is resolved."""
    require(is_int(value) and value >= minimum, f"{key} must be an integer >= {minimum} or auto, got {value!r}")
