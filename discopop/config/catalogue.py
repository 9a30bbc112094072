"""Every setting with its default and help text, for ``discopop settings``.

The help lives on the dataclass fields (``setting(default, help)``); this walks them, so the listing can
never drift from what ``discover`` accepts. A group with several schemas (``task``: synthetic, hub,
diagnostic) is listed once per schema, with the presets (``conf/<group>/*.yaml``) built on each.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from discopop.config import GROUP_KEYS, RunSettings

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass(frozen=True)
class Entry:
    """One setting: its dotted key (as an override writes it), default (as YAML would), help text."""

    key: str
    default: str
    help: str
    section: str


def _default(f: Any) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def _show(value: Any) -> str:
    """A default as the user would write it in an override (``null``, ``true``, ``[1, 2]``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str).replace("NaN", "nan")


def _walk(cls: type, prefix: str, section: str) -> list[Entry]:
    out: list[Entry] = []
    for f in fields(cls):
        value = _default(f)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out += _walk(type(value), key + ".", f.name if section == "run" else section)
        else:
            out.append(Entry(key, "(required)" if value == "???" else _show(value), f.metadata.get("help", ""),
                             section))
    return out


def presets(group: str, schema_name: str) -> list[str]:
    """The presets of ``group`` (``conf/<group>/*.yaml``) whose defaults list names ``schema_name``."""
    names = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        try:
            defaults = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("defaults") or []
        except (OSError, yaml.YAMLError):
            continue
        if any(isinstance(d, str) and d.split("@")[0].rpartition("/")[2] == schema_name for d in defaults):
            names.append(path.stem)
    return names


def entries() -> list[Entry]:
    """Every setting of a run: the top-level ones, then each group's, schema by schema."""
    group_names = {g for g, _, _ in GROUP_KEYS}
    out = [e for e in _walk(RunSettings, "", "run") if e.key.split(".")[0] not in group_names]
    for group, _, schemas in GROUP_KEYS:
        for kind, cls in schemas.items():
            chosen = presets(group, f"{kind}_schema")
            section = f"{group} ({kind} schema" + (f"; {group}={'|'.join(chosen)}" if chosen else "") + ")"
            out += _walk(cls, f"{group}.", section)
    return out


def matching(prefix: str | None = None) -> list[Entry]:
    """The entries whose key starts with ``prefix`` (all of them without one)."""
    return [e for e in entries() if not prefix or e.key == prefix or e.key.startswith(prefix.rstrip(".") + ".")]
