"""``discopop import-run``: an original DiscoPOP run's tests.json / conversation becomes archive rows.

The files in ``tests/discopop_records`` are written here in the formats the original DiscoPOP search
leaves (its ``tests.json`` list of ``{name, code}`` and its chat-message conversation, where each
answer is JSON and the next user message reports ``Fitness: x.`` or a failure).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from discopop.archive import Archive
from discopop.cli.import_run import PROPOSER, candidates, read_record, read_source
from discopop.cli.main import main
from discopop.contract.losses import static_check

RECORDS = Path(__file__).resolve().parent / "discopop_records"


def test_conversation_keeps_thought_name_code_and_the_reported_fitness() -> None:
    items = read_record(RECORDS / "messages.json")
    assert [i.name for i in items] == ["sigmoid_scaled", "margin_mix", "stateful", "unparsed_3"]
    assert items[0].thought == "Sharpen DPO by doubling the scale."
    assert items[0].reported_fitness == pytest.approx(7.91875)
    assert items[1].reported_fitness is None and items[1].reported.startswith("Training failed")
    assert items[2].reported_fitness == pytest.approx(7.5)
    assert items[3].error and "unparseable" in items[3].error


def test_tests_json_skips_entries_without_code() -> None:
    items = read_record(RECORDS / "tests.json")
    assert [i.name for i in items] == ["sigmoid_scaled", "margin_mix", "ipo_like"]
    assert all(i.reported_fitness is None for i in items)


def test_candidates_are_normalised_and_keep_the_original() -> None:
    cands = {c.name: c for c in candidates(read_record(RECORDS / "messages.json"))}
    good = cands["sigmoid_scaled"]
    assert good.proposer == PROPOSER and good.error is None
    assert "self" not in good.code and static_check(good.code).uses_beta  # torch/F were implied, now imported
    assert "self.beta" in good.info["original_code"]
    assert good.info["reported_fitness"] == pytest.approx(7.91875)
    assert "self.step_count" in cands["stateful"].error  # state on self is refused with its reason
    assert cands["unparsed_3"].error.startswith("unparseable proposal")


def test_folder_takes_each_loss_once_conversation_first() -> None:
    items = read_source(RECORDS)
    names = [i.name for i in items]
    assert names.count("sigmoid_scaled") == 1 and "ipo_like" in names
    assert next(i for i in items if i.name == "sigmoid_scaled").reported_fitness is not None


def test_import_run_creates_a_resumable_run_and_is_idempotent(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["import-run", str(RECORDS), str(run_dir), "wandb.mode=disabled"]) == 0
    assert "discover --resume" in capsys.readouterr().out
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    from discopop.config.compose import resolve_run

    cfg, resumed = resolve_run(3, str(run_dir), [])  # what `discover --resume RUN_DIR --generations 3` loads
    assert resumed == run_dir and cfg.wandb.mode == "disabled"
    archive = Archive(run_dir / "archive.sqlite", create=False)
    rows = archive.rows()
    assert {r.proposer for r in rows} == {PROPOSER} and {r.generation for r in rows} == {0}
    by_name = {r.name: r for r in rows}
    assert by_name["sigmoid_scaled"].status == "proposed" and by_name["sigmoid_scaled"].fitness is None
    assert by_name["sigmoid_scaled"].metrics["proposer_info"]["reported_fitness"] == pytest.approx(7.91875)
    assert by_name["stateful"].status == "invalid"
    assert by_name["ipo_like"].status == "proposed"
    count = len(rows)
    archive.close()
    assert main(["import-run", str(RECORDS / "tests.json"), str(run_dir)]) == 0
    archive = Archive(run_dir / "archive.sqlite", create=False)
    assert len(archive.rows()) == count  # nothing imported twice
    archive.close()


@pytest.mark.parametrize("content, expected", [
    ("not json at all", "is not JSON"),
    (json.dumps({"foo": 1}), "neither a DiscoPOP tests.json"),
    (json.dumps([1, 2, 3]), "neither a DiscoPOP tests.json"),
])
def test_bad_files_give_one_line(tmp_path, capsys, content, expected) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["import-run", str(bad), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written for a bad source


def test_missing_source_and_foreign_directory(tmp_path, capsys) -> None:
    assert main(["import-run", str(tmp_path / "nope"), str(tmp_path / "run")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    shutil.copy(RECORDS / "tests.json", tmp_path / "tests.json")
    assert main(["import-run", str(tmp_path / "tests.json"), str(other)]) == 2
    assert "not a discopop run directory" in capsys.readouterr().err
