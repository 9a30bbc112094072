"""How a loss pushes, in words: the one-line summary of ``checks["diagnostics"]`` (see ``checks.diagnose``).

Torch-free, so the CLI, the report, the archive and the LLM prompt can all say the same thing
without loading torch. The diagnostics are facts about the loss, never a verdict: a regularised
loss that pushes back where the policy drifted far is legal and may well be good.
"""

from __future__ import annotations

from typing import Any


def _num(value: Any) -> str:
    return f"{float(value):+.3g}" if isinstance(value, int | float) else "?"


def _spans(xs: list[float]) -> str:
    """[0.5, 1.0, 3.0] -> "x = 0.5, 1, 3" (the probe points where it happens; at most 14 of them)."""
    return "x = " + ", ".join(f"{x:g}" for x in xs)


def wrong_way(diag: dict[str, Any]) -> list[str]:
    """The ways the loss pushes against the preference, each with where (x = beta * rho)."""
    found = []
    at_zero = diag.get("slope_at_0") or {}
    if at_zero.get("wrong_way"):
        found.append(f"wrong way at rho = 0 on {at_zero['wrong_way']}/{at_zero.get('examples', '?')} examples")
    where = diag.get("wrong_way") or {}
    if where.get("chosen_up_raises_loss"):
        found.append(f"raising the chosen log-prob raises the loss at {_spans(where['chosen_up_raises_loss'])}")
    if where.get("rejected_up_lowers_loss"):
        found.append(f"raising the rejected log-prob lowers the loss at {_spans(where['rejected_up_lowers_loss'])}")
    return found


def summarize(diag: dict[str, Any] | None) -> str:
    """One line: beta used, slope at rho = 0 (chosen, rejected), slope at the range's ends, wrong-way pushes."""
    if not diag:
        return "no diagnostics recorded"
    at_zero = diag.get("slope_at_0") or {}
    ends = diag.get("slope_at_ends") or {}
    parts = [
        f"{'uses' if diag.get('uses_beta', True) else 'IGNORES'} beta",
        f"at beta={diag.get('beta', '?')}: slope at rho=0 d/d chosen {_num(at_zero.get('chosen'))}, "
        f"d/d rejected {_num(at_zero.get('rejected'))}",
        "d/d rho at " + ", ".join(f"x={k} {_num(v)}" for k, v in ends.items()),
    ]
    pushes = wrong_way(diag)
    parts.append("; ".join(pushes) if pushes else "never pushes the wrong way for |x| <= 3")
    return "; ".join(parts)


def compact(diag: dict[str, Any] | None) -> str:
    """The diagnostics in a few words for the LLM prompt: slope along rho at x = -3, 0, +3, wrong-way pushes."""
    if not diag:
        return ""
    ends = diag.get("slope_at_ends") or {}
    slopes = [ends.get("-3"), (diag.get("slope_at_0") or {}).get("rho"), ends.get("+3")]
    parts = [] if diag.get("uses_beta", True) else ["ignores beta"]
    parts.append("d loss/d rho at x=-3,0,+3: " + " / ".join(_num(v) for v in slopes))
    pushes = wrong_way(diag)
    parts.append("; ".join(pushes) if pushes else "never pushes the wrong way")
    return "; ".join(parts)
