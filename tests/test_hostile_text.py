"""Untrusted text around the sandbox: exports are exactly what was scored, encodings Python reads differently are
refused, and names reach terminals, figures, CSV and markdown escaped for each."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from helper_runs import DPO, scored_run
from rich.console import Console

from discopop.archive import Archive
from discopop.cli.main import main
from discopop.contract.losses import LossRejected, load_loss
from discopop.report import escape
from discopop.report.export import export_candidate
from discopop.report.terminal_board import print_leaderboard

BODY = DPO[DPO.index("import"):]
HOSTILE_THOUGHT = "idea\x1b[31m\nline"
HOSTILE_NAME = '\x1b[2J\x1b]8;;http://evil\x07[bold red]boom[/] $\\foo$ =HYPERLINK("http://evil","x") | `x`'


def test_form_feeds_in_a_docstring_cannot_smuggle_code_out(tmp_path: Path) -> None:
    """The old export cut ``splitlines()`` text at parser line numbers: the hidden line came out live."""
    code = '"""A loss.\x0c\x0c\nimport os; open("MARKER", "w")\x0c"""\n' + BODY
    run, rid = scored_run(tmp_path, code, thought=HOSTILE_THOUGHT)
    arch = Archive(run / "archive.sqlite", create=False)
    out = tmp_path / "out.py"
    with pytest.raises(ValueError, match="form feed"):
        export_candidate(arch, rid, out)
    assert not out.exists()


def test_export_is_byte_exact_below_a_comment_header_and_loads_the_same(tmp_path: Path) -> None:
    code = '"""Escapes stay escapes: \\x0c \\f \\\\ \'\'\' and a "quote"."""\n' + BODY.rstrip("\n")  # no final newline
    run, rid = scored_run(tmp_path, code, thought=HOSTILE_THOUGHT)
    arch = Archive(run / "archive.sqlite", create=False)
    out = export_candidate(arch, rid, tmp_path / "out.py")
    data = out.read_bytes().decode("utf-8")
    assert data.endswith(code)
    header = data[: len(data) - len(code)]
    assert all(line.startswith("#") or line == "" for line in header.split("\n"))
    exported, archived = load_loss(out), load_loss(code)
    torch.manual_seed(0)
    logps = [torch.randn(32, dtype=torch.float64) * 5 for _ in range(4)]
    assert torch.equal(exported(*logps, 0.25), archived(*logps, 0.25))


def test_export_shows_beta_and_lr_and_best_goes_to_stdout(tmp_path: Path, capsys) -> None:
    run, rid = scored_run(tmp_path, BODY, name=HOSTILE_NAME, thought=HOSTILE_THOUGHT)
    assert main(["export", str(run), "best"]) == 0
    text = capsys.readouterr().out
    assert text.endswith(BODY)
    assert f"candidate: #{rid}," in text
    assert "DPOConfig(output_dir=\"out\", beta=0.25, learning_rate=8e-05)" in text
    assert "DiscoveredLossDPOTrainer(loss_fn=load_loss(" in text
    header = text[: -len(BODY)]
    assert "\x1b" not in header and "\x07" not in header
    assert all(line.startswith("#") or line == "" for line in header.split("\n"))


def test_utf7_cookie_is_refused_by_check_with_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "utf7.py"
    path.write_bytes(b"# -*- coding: utf-7 -*-\n" + BODY.encode() + b"# +AAo-import os\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "utf-7" in err and "static" in err
    with pytest.raises(LossRejected, match="utf-7"):
        load_loss(path)


def test_hostile_name_is_clean_on_the_leaderboard(tmp_path: Path) -> None:
    run, _ = scored_run(tmp_path, BODY, name=HOSTILE_NAME, thought=HOSTILE_THOUGHT)
    buf = io.StringIO()
    arch = Archive(run / "archive.sqlite", create=False)
    print_leaderboard(arch, Console(file=buf, width=400, force_terminal=False, color_system=None))
    text = buf.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "[bold red]boom[/]" in text, "markup shown as text, not rendered"
    assert "0.25" in text and "8e-05" in text, "beta and lr shown"


def test_hostile_name_renders_in_the_report(tmp_path: Path) -> None:
    from discopop.report import write_report

    run, _ = scored_run(tmp_path, BODY, name=HOSTILE_NAME, thought=HOSTILE_THOUGHT)
    html = write_report(run).read_text()
    assert "\x1b" not in html and "<b>" not in html
    assert "beta 0.25" in html and "8e-05" in html


def test_csv_and_markdown_cells() -> None:
    assert escape.csv_cell('=HYPERLINK("x")') == '\'=HYPERLINK("x")'
    assert escape.csv_cell("@SUM(A1)") == "'@SUM(A1)" and escape.csv_cell("\tx") == "'\tx"
    assert escape.csv_cell("-0.5") == "-0.5" and escape.csv_cell(-0.5) == -0.5 and escape.csv_cell("dpo") == "dpo"
    cell = escape.markdown_cell("a|b`c\nd<script>")
    assert "\n" not in cell and "\\|" in cell and "\\`" in cell and "<script>" not in cell


def test_the_terminal_display_renders_a_hostile_name_inert() -> None:
    """Every event that carries untrusted text reaches a real terminal (colours on) with no escape sequence of its
    own and its rich markup shown as text (issue 27 item 5, issue 26 item 3)."""
    from discopop.execution.executors import Job
    from discopop.report.display import Display
    from discopop.search import events

    out = io.StringIO()
    display = Display(1, console=Console(file=out, width=400, force_terminal=True, color_system="truecolor",
                                      highlight=False),
                      quiet=True)
    display.show(events.CandidateStage(7, HOSTILE_NAME, "train"))
    display.show(events.JobsQueued((Job(7, "", "train", 0, learning_rate=1e-5),), 1))
    status = display.status_line()
    for event in (events.Note(f"task '{HOSTILE_NAME}': 64 preference pairs"), events.RunWarning(HOSTILE_NAME),
                  events.CandidateFinished(7, HOSTILE_NAME, 1, "invalid", None, None, None, HOSTILE_THOUGHT, None),
                  events.CandidateFinished(8, HOSTILE_NAME, 1, "scored", 0.5, 0.6, 0.1, None, 0.5),
                  events.TransferVerdict(7, HOSTILE_NAME, HOSTILE_NAME), events.RunStopped(HOSTILE_NAME, "runs/x")):
        display.show(event)
    text = out.getvalue()
    assert text.count("[bold red]boom[/]") == 7, "markup in a name is shown, not applied"
    assert "\x1b[2J" not in text and "\x1b]8" not in text and "\x07" not in text and "\x1b[31m" not in text
    assert "\x1b[" in text, "the display's own colours are there: the check above would see a leak"
    assert "\x1b" not in status and "\x07" not in status


def test_evaluate_progress_lines_show_a_hostile_loss_name_and_error_inert() -> None:
    """``discopop evaluate`` without a terminal prints a line per fine-tune: a run's loss name and a failed
    fine-tune's error (candidate code) reach it cleaned of every control character."""
    from discopop.archive import Evaluation
    from discopop.cli.evaluate import _Display
    from discopop.fitness.result_store import RunKey

    out = io.StringIO()
    display = _Display(Console(file=out, width=200), quiet=False)
    display.planned(1)
    failed = Evaluation(1, 0, "confirm", 1e-5, error=HOSTILE_THOUGHT)
    with contextlib.redirect_stdout(out):
        display.done(HOSTILE_NAME, 0.1, "addition", RunKey("h", "t", 0.1, 0, "confirm", 1e-5), failed, False)
    line = out.getvalue()
    assert "FAILED idea" in line and "[bold red]boom[/]" in line
    assert "\x1b" not in line and "\x07" not in line and line.count("\n") == 1


def test_check_prints_a_hostile_reason_and_normalised_code_inert(tmp_path: Path, capsys, monkeypatch) -> None:
    """What the sandbox says about a loss (its error, the rewritten code) reaches the terminal without escapes."""
    import discopop.cli.check as check_cli

    hostile = "\x1b]8;;http://evil\x07dpo\x1b]8;;\x07\x1b[2J"
    verdicts = iter([{"valid": False, "layer": "numeric", "reason": f"raised ValueError: {hostile}"},
                     {"valid": True, "uses_beta": True, "summary": "ok", "normalised": f"# {hostile}\nx = 1"}])
    monkeypatch.setattr(check_cli, "check_file", lambda *a, **k: next(verdicts))
    loss = tmp_path / "loss.py"
    loss.write_text("x = 1\n")
    assert main(["check", str(loss)]) == 1
    assert main(["check", str(loss)]) == 0
    out = capsys.readouterr()
    assert "\x1b" not in out.err + out.out and "\x07" not in out.err + out.out
    assert "raised ValueError: ]8;;http://evildpo]8;;[2J" in out.err and "    # ]8;;http://evildpo" in out.out
