"""Archive: the contract schema, transactional updates, state, and clear errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helper_confirm import train_reply

from discopop.archive import Archive, ArchiveError, read_rows
from discopop.proposers.base import Candidate

CONTRACT_COLUMNS = {
    "id": "INTEGER", "generation": "INTEGER", "parent_ids": "TEXT", "proposer": "TEXT", "name": "TEXT",
    "thought": "TEXT", "code": "TEXT", "code_hash": "TEXT", "status": "TEXT", "error": "TEXT", "fitness": "REAL",
    "metrics": "TEXT", "created_at": "TEXT", "finished_at": "TEXT",
}


def test_schema_matches_the_contract(tmp_path: Path) -> None:
    Archive(tmp_path / "archive.sqlite").close()
    cols = {r[1]: r[2] for r in sqlite3.connect(tmp_path / "archive.sqlite").execute("PRAGMA table_info(candidates)")}
    assert {k: cols.get(k) for k in CONTRACT_COLUMNS} == CONTRACT_COLUMNS


def test_add_finish_and_read_back(tmp_path: Path) -> None:
    arch = Archive(tmp_path / "archive.sqlite")
    parent = arch.add(Candidate("dpo", "x = 1\n", proposer="reference"), 0)
    child = arch.add(Candidate("kid", "y = 2\n", thought="t", parent_ids=[parent], proposer="evolution"), 1)
    arch.finish(child, "scored", fitness=0.5, metrics={"reward": 0.5})
    arch.update_metrics(child, {"confirmation": {"mean": 0.4}})
    row = arch.get(child)
    assert row.status == "scored" and row.fitness == 0.5 and row.parent_ids == [parent]
    assert row.metrics == {"reward": 0.5, "confirmation": {"mean": 0.4}}
    assert row.finished_at is not None and arch.get(parent).status == "proposed"
    with pytest.raises(ValueError, match="unknown status"):
        arch.add(Candidate("z", "z"), 1, status="great")


def test_run_state_round_trip(tmp_path: Path) -> None:
    arch = Archive(tmp_path / "archive.sqlite")
    arch.set_state("generations_done", 3)
    arch.set_state("proposer_state", {"rng": [1, [2, 3]]})
    again = Archive(tmp_path / "archive.sqlite")
    assert again.get_state("generations_done") == 3 and again.get_state("proposer_state") == {"rng": [1, [2, 3]]}


def test_missing_or_corrupt_archive_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no archive"):
        Archive(tmp_path / "nope.sqlite", create=False)
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database")
    with pytest.raises(ArchiveError, match="cannot open archive"):
        Archive(bad, create=False)


def test_evaluations_are_stored_with_the_fate_and_read_back(tmp_path: Path) -> None:
    from discopop.archive import Evaluation

    arch = Archive(tmp_path / "archive.sqlite")
    row = arch.add(Candidate("dpo", "x = 1\n", proposer="reference"), 0)
    reply = {"fitness": 0.5, "reward": 0.5, "kl": 0.2, "kl_coef": 0.5, "learning_rate": 1e-5,
             "per_prompt": [1.0, 0.0, 1.0, 0.0], "per_prompt_kl": [0.2, 0.2, 0.4, 0.0]}
    arch.finish(row, "scored", fitness=0.4, evaluations=[Evaluation.from_reply(row, 7, "search", train_reply(**reply))])
    arch.add_evaluation(Evaluation(row, 1000, "confirm", 1e-5, error="train: loss is nan at step 3"))
    stored = arch.evaluations(row)
    assert [(e.seed, e.split, e.ok) for e in stored] == [(7, "search", True), (1000, "confirm", False)]
    assert stored[0].per_prompt_fitness() == [0.9, -0.1, 0.8, 0.0] and stored[0].learning_rate == 1e-5
    assert [e.seed for e in arch.evaluations(row, split="confirm")] == [1000]
    other = arch.add(Candidate("kid", "y = 2\n", proposer="evolution"), 1)
    with pytest.raises(sqlite3.IntegrityError):  # one transaction: a bad evaluation leaves the fate unwritten too
        arch.finish(other, "scored", fitness=0.3, evaluations=[Evaluation(other, None, "search")])
    assert arch.get(other).status == "proposed" and len(arch.evaluations()) == 2


def test_evolved_fine_tunes_count_only_rows_after_the_baselines(tmp_path: Path) -> None:
    from discopop.archive import Evaluation

    arch = Archive(tmp_path / "archive.sqlite")
    baseline = arch.add(Candidate("dpo", "x = 1\n", proposer="reference"), 0)
    child = arch.add(Candidate("kid", "y = 2\n", proposer="evolution"), 1)
    for row, seeds in ((baseline, (0, 1, 2)), (child, (0, 1))):
        for seed in seeds:
            arch.add_evaluation(Evaluation(row, seed, "search", 1e-5, error="train: loss is nan at step 1"))
    assert arch.evolved_fine_tunes() == 2
    arch.close()


def test_named_queries_select_what_their_names_say(tmp_path: Path) -> None:
    """Each named query against the same rows filtered in Python (what the SQL fragments they replace meant)."""
    arch = Archive(tmp_path / "archive.sqlite")
    plan = [("dpo", "reference", 0, "scored"), ("ipo", "reference", 0, "train_failed"),
            ("a", "evolution", 1, "scored"), ("b", "evolution", 1, "invalid"), ("c", "llm", 2, "proposed"),
            ("d", "evolution", 2, "scored"), ("e", "llm", 3, "proposed"), ("dpo", "llm", 3, "scored")]
    for i, (name, proposer, generation, status) in enumerate(plan):
        row_id = arch.add(Candidate(name, f"x = {i}\n", proposer=proposer), generation)
        if status != "proposed":
            arch.finish(row_id, status, fitness=0.1 * i if status == "scored" else None)
    rows = arch.rows()
    assert [r.id for r in rows] == sorted(r.id for r in rows) and len(rows) == len(plan)

    def ids(keep) -> list[int]:
        return [r.id for r in rows if keep(r)]

    def got(found) -> list[int]:
        return [r.id for r in found]

    assert got(arch.scored_rows()) == ids(lambda r: r.status == "scored")
    assert got(arch.finished_rows()) == ids(lambda r: r.status != "proposed")
    assert arch.count_finished() == len(ids(lambda r: r.status != "proposed")) == 6
    assert got(arch.pending_rows(2)) == ids(lambda r: r.status == "proposed" and r.generation <= 2) != []
    assert got(arch.rows_of_generation(1)) == ids(lambda r: r.generation == 1)
    assert got(arch.rows_through_generation(1)) == ids(lambda r: r.generation <= 1)
    assert got(arch.rows_after_generation(0)) == ids(lambda r: r.generation > 0)
    assert arch.last_generation() == 3
    assert got(arch.rows_by_proposer("reference")) == ids(lambda r: r.proposer == "reference")
    assert got(arch.rows_by_proposer("reference", status="scored")) == ids(
        lambda r: r.proposer == "reference" and r.status == "scored")
    assert got(arch.rows_by_proposer("reference", status="scored", name="dpo")) == [rows[0].id]
    assert got(arch.rows_not_by_proposer("reference")) == ids(lambda r: r.proposer != "reference")
    assert got(arch.rows_not_by_proposer("reference", status="scored")) == ids(
        lambda r: r.proposer != "reference" and r.status == "scored")
    arch.discard_rows(keep=[rows[2].id])
    assert got(arch.rows()) == [rows[2].id]
    arch.discard_rows()
    assert arch.rows() == [] and arch.last_generation() == 0
    arch.close()


def test_read_rows_reads_a_foreign_archive_leniently_without_writing(tmp_path: Path) -> None:
    """``read_rows`` (the report's reader): read-only, and a column another tool wrote badly reads as empty."""
    arch = Archive(tmp_path / "archive.sqlite")
    good = arch.add(Candidate("a", "x = 1\n", parent_ids=[], proposer="evolution"), 1)
    bad = arch.add(Candidate("b", "x = 2\n", parent_ids=[good], proposer="evolution"), 1)
    arch.close()
    conn = sqlite3.connect(tmp_path / "archive.sqlite")
    conn.execute("UPDATE candidates SET metrics = 'not json', parent_ids = ? WHERE id = ?", (f'[{good}, "x"]', bad))
    conn.commit()
    conn.close()
    before = (tmp_path / "archive.sqlite").stat().st_mtime_ns
    rows = read_rows(tmp_path / "archive.sqlite")
    assert [r.id for r in rows] == [good, bad] and rows[1].metrics == {} and rows[1].parent_ids == [good]
    assert (tmp_path / "archive.sqlite").stat().st_mtime_ns == before
    with pytest.raises(ArchiveError, match="no archive"):
        read_rows(tmp_path / "missing.sqlite")


METHOD_FORM = '''def my_loss(self, policy_chosen_logps, policy_rejected_logps,
            reference_chosen_logps, reference_rejected_logps):
    import torch.nn.functional as F
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(self.beta * rho)
'''


def test_both_texts_are_kept_the_one_proposed_and_the_one_the_workers_load(tmp_path: Path) -> None:
    """The DiscoPOP method form as proposed in ``code``, its contract form in ``normalised``; a method that reads
    more of ``self`` than ``beta`` cannot be rewritten and keeps "" (it is refused before anything runs); text that
    does not parse has nothing to rewrite and is kept as it is."""
    arch = Archive(tmp_path / "archive.sqlite")
    method = arch.add(Candidate("m", METHOD_FORM, proposer="openai"), 1)
    broken = arch.add(Candidate("b", "def f(:\n", proposer="openai"), 1)
    refused = arch.add(Candidate("r", METHOD_FORM.replace("self.beta", "self.gamma"), proposer="openai"), 1)
    row = arch.get(method)
    assert row.code == METHOD_FORM and "self" not in row.normalised
    assert "def my_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, " \
           "reference_rejected_logps, beta)" in row.normalised and "beta * rho" in row.normalised
    assert arch.get(broken).normalised == "def f(:\n" and arch.get(refused).normalised == ""
    arch.close()
    assert [r.normalised for r in read_rows(tmp_path / "archive.sqlite")] == [row.normalised, "def f(:\n", ""]


def test_an_archive_from_before_the_normalised_column_reads_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite"
    Archive(path).close()
    conn = sqlite3.connect(path)  # an older archive: the same tables without candidates.normalised
    conn.executescript("ALTER TABLE candidates DROP COLUMN normalised; "
                       "INSERT INTO candidates (generation, proposer, name, code, code_hash, status, created_at) "
                       "VALUES (1, 'openai', 'old', 'x = 1', 'h', 'proposed', 't');")
    conn.close()
    assert [r.normalised for r in read_rows(path)] == [""]  # read-only: not migrated
    assert "normalised" not in {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(candidates)")}
    read_only = Archive(path, create=False)  # how the leaderboard opens it: no migration, still readable
    assert [r.normalised for r in read_only.rows()] == [""]
    read_only.close()
    arch = Archive(path)  # a resumed run: the column is added, the old row keeps "" (not recorded then)
    new = arch.add(Candidate("new", METHOD_FORM, proposer="openai"), 2)
    assert [r.normalised == "" for r in arch.rows()] == [True, False] and "beta" in arch.get(new).normalised
    arch.close()
