"""``discopop check``: run a loss file through every layer a candidate meets, and say which one stopped it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from discopop.losses import LossRejected, static_check
from discopop.sandbox import Limits, SandboxDied, SandboxedProcess, SandboxTimeout


def check_source(source: str, timeout: float = 30.0, limits: Limits | None = None) -> dict[str, Any]:
    """Static check here (AST only), then load + numeric checks in a one-shot sandboxed worker."""
    try:
        info = static_check(source)
    except LossRejected as err:
        return {"valid": False, "layer": "static", "reason": str(err)}
    proc = SandboxedProcess("discopop.worker", limits or Limits())
    try:
        proc.request({"op": "init", "task": None, "training": None}, timeout=120)
        reply = proc.request({"op": "check", "code": source}, timeout=timeout)
    except SandboxTimeout as err:
        return {"valid": False, "layer": "sandbox", "reason": f"numeric checks {err}"}
    except SandboxDied as err:
        return {"valid": False, "layer": "sandbox", "reason": str(err)}
    finally:
        proc.close()
    if not reply.get("ok"):
        return {"valid": False, "layer": reply.get("stage", "numeric"), "reason": reply.get("error")}
    return {"valid": True, "layer": None, "reason": None, "function": info.function_name,
            "uses_beta": reply["checks"]["uses_beta"]}


def check_file(path: Path, timeout: float = 30.0) -> dict[str, Any]:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return {"valid": False, "layer": "static", "reason": f"cannot read {path}: {err}"}
    return check_source(source, timeout=timeout)
