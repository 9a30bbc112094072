"""``discopop export``: a discovered loss as a standalone file, with its provenance in the docstring."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from discopop.archive import Archive
from discopop.fitness import stats
from discopop.status import Status


def lineage(archive: Archive, row_id: int) -> list[str]:
    """Ancestor names, nearest first (breadth-first over parent ids)."""
    names, seen, frontier = [], {row_id}, list(archive.get(row_id).parent_ids)
    while frontier:
        pid = frontier.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        parent = archive.get(pid)
        if parent is not None:
            names.append(f"{parent.name} (#{parent.id})")
            frontier.extend(parent.parent_ids)
    return names


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def confirmation_text(conf: dict[str, Any] | None) -> str:
    """The fresh-seed confirmation in one line: per-seed fitness, mean ± SE, and the paired verdicts against
    DPO and the strongest baseline (``stats.describe``), so a reader of the file can weigh the claim."""
    if not conf:
        return "not confirmed on fresh seeds"
    values = ", ".join("failed" if v is None else f"{v:.4f}" for v in conf.get("fitness", []))
    text = f"fresh seeds {conf.get('seeds')}: fitness [{values}], mean ± SE {stats.mean_pm(conf)}"
    _, vs_dpo, vs_best = stats.confirmation_cells(conf)
    if vs_dpo:
        text += f"; vs DPO {vs_dpo}; vs best baseline {vs_best}"
    return text


def export_candidate(archive: Archive, row_id: int, out: Path) -> Path:
    """Write candidate ``row_id`` as a loss file loadable with ``discopop.load_loss``."""
    row = archive.get(row_id)
    if row is None:
        raise ValueError(f"no candidate #{row_id} in {archive.path.parent}")
    if row.status != Status.SCORED:
        raise ValueError(f"candidate #{row_id} has status {row.status}; only scored candidates are exported")
    conf_text = confirmation_text(row.metrics.get("confirmation"))
    tree = ast.parse(row.code)
    body_start = 0
    old_doc = ast.get_docstring(tree)
    if old_doc is not None:
        body_start = tree.body[0].end_lineno
    header = [
        f"{row.name}: discovered by discopop.", "",
        f"run: {archive.path.parent.resolve()}", f"candidate: #{row.id}, generation {row.generation}, "
        f"proposer {row.proposer}", f"fitness: {_num(row.fitness)} (reward {_num(row.metrics.get('reward'))},"
        f" KL {_num(row.metrics.get('kl'), 3)})", f"confirmation: {conf_text}",
        f"lineage: {' <- '.join(lineage(archive, row_id)) or 'none (first generation)'}",
        f"parent ids: {json.dumps(row.parent_ids)}",
    ]
    if row.thought:
        header += ["", f"idea: {row.thought}"]
    if old_doc:
        header += ["", old_doc]
    doc = "\n".join(header).replace('"""', "'''").replace("\\", "\\\\")
    rest = "\n".join(row.code.splitlines()[body_start:]).lstrip("\n")
    out.write_text(f'"""{doc}\n"""\n\n{rest}\n', encoding="utf-8")
    return out
