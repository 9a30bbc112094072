"""The conventions a hydra or TRL user brings (issue 30, item 5): ``--cfg job``, ``--config FILE``, ``-m`` sweeps,
a settings listing, ``--version``, and a leaderboard as JSON, CSV or 80 columns. Nothing here trains."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from helper_runs import scored_run
from rich.console import Console

from discopop.archive import Archive
from discopop.cli.main import discover, main
from discopop.config import ConfirmSettings
from discopop.config.catalogue import entries
from discopop.config.compose import compose
from discopop.report.terminal_board import print_leaderboard


def _flat(value: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, item in value.items():
        if isinstance(item, dict) and item and key != "prices":
            keys |= _flat(item, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _printed_config(capsys) -> dict:
    return yaml.safe_load(capsys.readouterr().out)


def test_cfg_job_prints_the_resolved_config_and_writes_nothing(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert discover(["--cfg", "job", "training.beta=0.2", "seed=3", f"hydra.run.dir={run_dir}"]) == 0
    cfg = _printed_config(capsys)
    assert cfg["training"]["beta"] == 0.2 and cfg["seed"] == 3
    assert isinstance(cfg["executor"]["workers"], int), "auto resolved, as the run would record it"
    assert not run_dir.exists()


def test_config_file_merges_under_the_command_line(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("task: diagnostic\ntraining:\n  beta: 0.3\n  lora: {r: 16}\nseed: 4\n")
    assert discover(["--cfg", "job", "--config", str(mine), "seed=5"]) == 0
    cfg = _printed_config(capsys)
    assert cfg["task"]["kind"] == "diagnostic", "a group given a string picks the preset"
    assert cfg["training"]["beta"] == 0.3 and cfg["training"]["lora"] == {"r": 16}
    assert cfg["seed"] == 5, "the command line wins over the file"
    assert discover(["--cfg", "job", "--config", str(mine), "task=addition"]) == 0
    assert _printed_config(capsys)["task"]["kind"] == "synthetic", "the command line's group choice wins"


@pytest.mark.parametrize(("text", "message"), [
    (None, "no such file"),
    ("training: [beta\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("training:\n  betta: 0.1\n", "betta"),
    ("proposer:\n  api_key: sk-abcdefghijklmnop\n", "not a setting"),
])
def test_a_bad_config_file_is_refused_in_one_line(tmp_path: Path, capsys, text: str | None, message: str) -> None:
    mine = tmp_path / "mine.yaml"
    if text is not None:
        mine.write_text(text)
    assert discover(["--cfg", "job", "--config", str(mine)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(mine) in err[0]
    assert "abcdefghijklmnop" not in captured.err


def test_settings_lists_every_setting_with_help_and_default(capsys) -> None:
    keys = {e.key for e in entries()}
    for preset in (["task=addition"], ["task=hub"], ["task=diagnostic"], ["proposer=openai"], ["executor=ray"]):
        missing = _flat(compose(preset)[0]) - keys
        assert not missing, f"{preset}: settings without a listing: {sorted(missing)}"
    assert all(e.help for e in entries()), [e.key for e in entries() if not e.help]
    assert main(["settings", "training"]) == 0
    out = capsys.readouterr().out
    assert "training.beta = 0.5" in out and "KL strength passed to the loss" in out
    assert "task.kind" not in out, "the prefix filters"
    assert max(len(line) for line in out.splitlines() if not line.startswith("training.lr_grid")) <= 80
    assert main(["settings", "--json", "confirm"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {e["key"] for e in listed} == {f"confirm.{f.name}" for f in fields(ConfirmSettings)}
    assert main(["settings", "nope"]) == 2


def test_version(capsys) -> None:
    for entry, argv in ((main, ["--version"]), (discover, ["--version"])):
        with pytest.raises(SystemExit) as stop:
            entry(argv)
        assert stop.value.code == 0
        assert "0." in capsys.readouterr().out


def test_multirun_plans_one_run_per_seed_and_checks_all_first(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    assert discover(["-m", "--cfg", "job", "seed=1,2", "training.beta=0.1,0.5", f"hydra.run.dir={sweep}"]) == 0
    out = capsys.readouterr().out
    docs = [yaml.safe_load(part) for part in out.split("# job ")[1:]]
    assert [(d["seed"], d["training"]["beta"]) for d in docs] == [(1, 0.1), (1, 0.5), (2, 0.1), (2, 0.5)]
    assert f"{sweep}/0_seed=1,training.beta=0.1" in out and f"{sweep}/3_seed=2,training.beta=0.5" in out
    assert not sweep.exists()
    # One bad job refuses the sweep before any run starts.
    assert discover(["-m", "seed=1,2", "training.beta=0.1,-1", f"hydra.run.dir={sweep}"]) == 2
    assert "beta" in capsys.readouterr().err and not sweep.exists()
    assert discover(["-m", "seed=1", f"hydra.run.dir={sweep}"]) == 2
    assert "needs a sweep" in capsys.readouterr().err


HOSTILE = '=HYPERLINK("http://evil","x")\x1b[2J a very long candidate name that goes on and on'


def test_leaderboard_json_and_csv_are_escaped(tmp_path: Path, capsys) -> None:
    run, _ = scored_run(tmp_path, name=HOSTILE, thought="")
    assert main(["leaderboard", str(run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["beta"] == 0.25 and doc["candidates"] == {"scored": 2}
    top = doc["rows"][0]
    assert top["learning_rate"] == 8e-5 and top["search_mean"] == pytest.approx(0.6)
    assert "\x1b" not in top["name"] and top["name"].startswith("=HYPERLINK")
    assert main(["leaderboard", str(run), "--csv"]) == 0
    text = capsys.readouterr().out
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["id"] for r in table] == [str(top["id"]), "1"]
    assert table[0]["name"].startswith("'=HYPERLINK"), "a formula is defused"
    assert table[0]["beta"] == "0.25" and "\x1b" not in text


def test_leaderboard_fits_80_columns(tmp_path: Path) -> None:
    run, _ = scored_run(tmp_path, name=HOSTILE, thought="")
    buf = io.StringIO()
    arch = Archive(run / "archive.sqlite", create=False)
    print_leaderboard(arch, Console(file=buf, width=80, force_terminal=True, color_system=None))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if "8e-05" in line)  # the learning rate is a column
    assert row.split()[:2] == ["1", "2"] and "0.600 (1)" in row and "=HYPERLINK" in row, "one line per row, uncut"
    assert any("beta 0.25 for every row" in line for line in lines)


def test_multirun_runs_each_job_in_its_own_directory_and_stops_at_a_failure(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    import discopop.cli.main as cli

    ran: list[tuple[int, Path]] = []

    def fake(args, cfg, run_dir: Path, overrides: list[str]) -> int:
        ran.append((cfg.seed, run_dir))
        return 3 if cfg.seed == 2 else 0

    monkeypatch.setattr(cli, "_discover", fake)
    assert discover(["-m", "--generations", "1", "seed=1,2,3", f"hydra.run.dir={tmp_path / 'sw'}"]) == 3
    assert [seed for seed, _ in ran] == [1, 2], "the sweep stops at the failed job"
    assert [d.name for _, d in ran] == ["0_seed=1", "1_seed=2"] and all(d.parent == tmp_path / "sw" for _, d in ran)
    assert "1 job(s) not started" in capsys.readouterr().err
