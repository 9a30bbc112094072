"""Repairs owed when a stop came mid-generation are found again on ``--resume`` (``loop.owed_repairs``)."""

from __future__ import annotations

from pathlib import Path

from discopop.archive import Archive
from discopop.proposers.base import Candidate
from discopop.search.loop import candidate_of, owed_repairs


def add(archive: Archive, generation: int, name: str, status: str, parents: list[int] | None = None,
        proposer: str = "openai") -> int:
    cand = Candidate(name=name, code=f"# {name}", parent_ids=parents or [], proposer=proposer, info={"arm": 0})
    row_id = archive.add(cand, generation)
    archive.finish(row_id, status, fitness=0.5 if status == "scored" else None,
                   error=None if status == "scored" else f"{name} failed")
    return row_id


def test_failed_rows_without_a_repair_are_owed_with_their_attempt(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive.sqlite")
    old = add(archive, 1, "old_failure", "invalid")  # an earlier generation: its repairs were asked
    ok = add(archive, 2, "fine", "scored", parents=[old])
    first = add(archive, 2, "first_try", "invalid")
    repair1 = add(archive, 2, "first_try_fix", "train_failed", parents=[first])  # stop before its own repair
    untouched = add(archive, 2, "never_repaired", "train_failed", parents=[ok])  # stop before any repair
    add(archive, 2, "evolved_failure", "invalid", proposer="evolution")  # another proposer's row
    owed = {row.name: attempt for row, attempt in owed_repairs(archive, "openai", 2, max_repairs=2)}
    assert owed == {"first_try_fix": 2, "never_repaired": 1}
    assert {r.name for r, _ in owed_repairs(archive, "openai", 2, max_repairs=1)} == {"never_repaired"}
    assert owed_repairs(archive, "openai", 2, max_repairs=0) == []
    row = archive.get(repair1)
    cand = candidate_of(row)
    assert (cand.name, cand.code, cand.parent_ids) == ("first_try_fix", "# first_try_fix", [first])
    assert cand.info == {"arm": 0}
    assert untouched in {r.id for r, _ in owed_repairs(archive, "openai", 2, max_repairs=3)}


def test_a_repaired_failure_is_not_owed_again(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive.sqlite")
    failed = add(archive, 1, "broken", "invalid")
    add(archive, 1, "broken_fix", "scored", parents=[failed])
    assert owed_repairs(archive, "openai", 1, max_repairs=2) == []
