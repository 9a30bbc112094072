"""The hostile text corpus (``tests/hostile_text/``): one file per case, fed through the real path of its class.

Unlike ``test_hostile_proposals.py`` (megabyte cases built in code), every case here is a small file a reader can
open, with its expected outcome in ``MANIFEST.json`` (the README there describes the format). Per class:

- ``export``: archived as a scored row, then ``discopop export`` to stdout and to a file;
- ``encoding``: a loss file through ``discopop check`` (and read as Python's import reads it);
- ``reply`` / ``run_stopping``: an answer served by the loopback OpenAI server to the OpenAI proposer inside a
  resumed loop (scripted executor: no fine-tune), followed by a good answer;
- ``server``: a scripted HTTP answer from a lying server, then a good answer;
- ``import``: ``discopop import-run`` into a run that already holds rows;
- ``output``: a stored row's name and thought through the leaderboard (rich, CSV, JSON), export and report writers.

Every case asserts: no crash (an exit code, never a traceback), a one-line error where refused, nothing lost (every
earlier archive row still there, unchanged) and clean output (no control characters, ANSI, rendered markup or
spreadsheet formula starts in what is printed or written).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helper_runs import scored_run
from openai_server import Scripted, completion, loopback_server
from rich.console import Console
from scripted_executor import ScriptedExecutor, loss_code

from discopop.archive import Archive
from discopop.cli.main import main
from discopop.config import RunSettings
from discopop.config.compose import compose
from discopop.contract.losses import LossRejected, decode_source, static_check
from discopop.proposers.gate import MAX_NAME_CHARS
from discopop.proposers.llm.proposer import OpenAIProposer
from discopop.report.display import Display
from discopop.report.escape import markdown_cell
from discopop.report.terminal_board import print_leaderboard
from discopop.search.loop import Loop

CORPUS = Path(__file__).resolve().parent / "hostile_text"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "MANIFEST.json").read_text())
CLASSES = ("encoding", "export", "import", "output", "reply", "run_stopping", "server")
KEY_ENV = "DISCOPOP_TEST_CORPUS_KEY"
META = {"sft_heldout_reward": 0.8, "pairs": 64}
# What must never reach a terminal, a file or a cell: C0/C1 controls (ESC starts ANSI/OSC), DEL, zero-width and
# bidirectional format characters, line/paragraph separators, lone surrogates. Newline and tab are layout.
DIRTY = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cases(cls: str) -> list[Any]:
    return [pytest.param(name, id=name) for name, entry in sorted(MANIFEST.items()) if entry["class"] == cls]


def data(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def assert_clean(text: str, what: str) -> None:
    found = DIRTY.search(text)
    near = "" if found is None else ascii(text[max(0, found.start() - 40):found.start() + 40])
    assert found is None, f"{what}: {ascii(found.group())} at {found.start()}: {near}"


def assert_one_line(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert_clean(err, "error line")


def snapshot(archive_dir: Path) -> list[tuple]:
    """Every row as (id, name, code, status, fitness): what "nothing lost" compares."""
    archive = Archive(archive_dir / "archive.sqlite", create=False)
    try:
        return [(r.id, r.name, r.code, r.status, r.fitness) for r in archive.rows()]
    finally:
        archive.close()


def assert_archive_clean(archive_dir: Path) -> None:
    archive = Archive(archive_dir / "archive.sqlite", create=False)
    try:
        for row in archive.rows():
            assert IDENT.match(row.name) and len(row.name) <= MAX_NAME_CHARS, ascii(row.name)
            for text in (row.thought, row.error or ""):
                assert_clean(text.replace("\n", " "), f"row {row.id}")
                text.encode("utf-8")
    finally:
        archive.close()


def test_manifest_lists_every_file_and_every_class_has_cases() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name not in ("MANIFEST.json", "README.md")}
    assert files == set(MANIFEST), files ^ set(MANIFEST)
    counts = {cls: sum(1 for e in MANIFEST.values() if e["class"] == cls) for cls in CLASSES}
    assert set(e["class"] for e in MANIFEST.values()) == set(CLASSES) and min(counts.values()) >= 5, counts
    assert all(entry.get("why") for entry in MANIFEST.values())


# -- export -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("export"))
def test_export(case: str, tmp_path: Path, capsys) -> None:
    entry, code = MANIFEST[case], data(case).decode("utf-8")
    run, rid = scored_run(tmp_path, code, entry.get("name", "winner"), entry.get("thought", "idea"))
    before = snapshot(run)
    out = tmp_path / "loss.py"
    to_stdout = main(["export", str(run), str(rid)])
    printed = capsys.readouterr()
    to_file = main(["export", str(run), str(rid), "-o", str(out)])
    written = capsys.readouterr()
    if entry["expect"] == "refused":
        assert to_stdout == to_file == 2
        for got in (printed, written):
            assert got.out == "" and entry["match"] in got.err
            assert_one_line(got.err)
        assert not out.exists()
    else:
        assert to_stdout == to_file == 0, printed.err + written.err
        on_disk = out.read_bytes().decode("utf-8")
        for text in (printed.out, on_disk):  # the archived code byte for byte below a header of comments only
            assert text.endswith(code)
            header = text[: len(text) - len(code)]
            assert all(line.startswith("#") or line == "" for line in header.split("\n")), header
            assert_clean(header, "export header")
        assert_clean(written.out, "export message")
        assert static_check(decode_source(out.read_bytes())) == static_check(code)
    assert snapshot(run) == before


# -- encodings --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("encoding"))
def test_encoding(case: str, capsys) -> None:
    entry, raw = MANIFEST[case], data(case)
    if entry["expect"] == "refused":
        assert main(["check", str(CORPUS / case)]) == 1
        got = capsys.readouterr()
        assert "rejected by the static layer" in got.err and entry["match"] in got.err, got.err
        assert_one_line(got.err)
        with pytest.raises(LossRejected):
            decode_source(raw, case)
    else:
        # what is checked is what import runs: the same text Python's own decoder gives (nothing executed)
        text = decode_source(raw, case)
        assert text == importlib.util.decode_source(raw).replace("\r\n", "\n")
        static_check(text)


# -- replies, run-stopping replies and lying servers through the loop --------------------------------------

@pytest.fixture(scope="module")
def cfg() -> dict:
    composed, _ = compose(["baselines=[]", "training.lr_grid=[1e-5]", "confirm.seeds=0", "wandb.mode=disabled",
                           "selection.max_seeds=1", "candidates_per_generation=1"])
    return composed


@pytest.fixture
def server(monkeypatch):
    with loopback_server(monkeypatch, KEY_ENV, "sk-test-corpus") as srv:
        yield srv


def good(name: str) -> Scripted:
    return completion(json.dumps({"thought": "fine", "name": name, "code": loss_code(name)}))


def loop_run(cfg: dict, server, run_dir: Path, generations: int) -> str:
    """Run (or resume) ``run_dir`` to ``generations`` with the server's queued answers; what the display printed."""
    buf = io.StringIO()
    proposer = OpenAIProposer(model="test-model", base_url=server.url, api_key_env=KEY_ENV, max_retries=0,
                              max_repairs=0, lookahead=0)
    loop = Loop(RunSettings.coerce(cfg), run_dir, Display(0, console=Console(file=buf, width=200), quiet=True),
                proposer=proposer, executor=ScriptedExecutor(), task_meta=META)
    try:
        loop.run(generations)
    finally:
        loop.archive.close()
    return buf.getvalue()


def hostile_turn(case: str) -> list[Scripted]:
    entry = MANIFEST[case]
    if entry["class"] == "reply":
        return [completion(data(case).decode("utf-8"))]
    loaded = json.loads(data(case))
    if entry["class"] == "run_stopping":
        return [completion(loaded["content"])]
    return [Scripted(status=s["status"], body=s["body"], headers=s.get("headers", {})) for s in loaded]


@pytest.mark.parametrize("case", cases("reply") + cases("run_stopping") + cases("server"))
def test_answer_through_the_loop(case: str, cfg, server, tmp_path: Path) -> None:
    entry = MANIFEST[case]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    server.push(good("earlier_loss"))
    loop_run(cfg, server, run_dir, 1)
    before = snapshot(run_dir)
    server.push(*hostile_turn(case), good("later_loss"))
    shown = loop_run(cfg, server, run_dir, 3)
    after = snapshot(run_dir)
    assert after[: len(before)] == before  # nothing lost
    new = after[len(before):]
    assert [row[3] for row in new] == entry["statuses"], (new, shown)
    assert_archive_clean(run_dir)
    assert_clean(shown.replace("\n", " "), "the run's display")
    archive = Archive(run_dir / "archive.sqlite", create=False)
    try:
        rows = archive.rows()[len(before):]
    finally:
        archive.close()
    if entry.get("stopped"):
        assert "run stopped" in shown and "--resume" in shown
        return
    assert rows[-1].name == "later_loss"  # the run went on past the hostile answer
    if "error" in entry:
        assert entry["error"] in (rows[0].error or ""), rows[0].error
    if "names" in entry:
        assert [r.name for r in rows[: len(entry["names"])]] == entry["names"]
    if "tokens_at_least" in entry:
        info = rows[0].metrics["proposer_info"]
        assert info["prompt_tokens"] >= 0 and info["completion_tokens"] >= 0, info


# -- import-run ---------------------------------------------------------------------------------------------

@pytest.fixture
def imported_run(tmp_path: Path) -> Path:
    """A run directory that already holds imported rows (the earlier rows nothing may lose)."""
    record = tmp_path / "earlier.json"
    record.write_text(json.dumps([{"name": "earlier_a", "code": loss_code("earlier_a")},
                                  {"name": "earlier_b", "code": loss_code("earlier_b")}]))
    run_dir = tmp_path / "run"
    assert main(["import-run", str(record), str(run_dir), "wandb.mode=disabled"]) == 0
    return run_dir


@pytest.mark.parametrize("case", cases("import"))
def test_import_run(case: str, imported_run: Path, tmp_path: Path, capsys) -> None:
    entry = MANIFEST[case]
    capsys.readouterr()
    before = snapshot(imported_run)
    code = main(["import-run", str(CORPUS / case), str(imported_run)])
    got = capsys.readouterr()
    assert code == entry["exit"], got.err
    after = snapshot(imported_run)
    assert after[: len(before)] == before
    assert_archive_clean(imported_run)
    if code != 0:
        assert entry["match"] in got.err and after == before
        assert_one_line(got.err)
        fresh = tmp_path / "fresh"
        assert main(["import-run", str(CORPUS / case), str(fresh), "wandb.mode=disabled"]) == 2
        assert not fresh.exists()  # a new run directory that could not be filled is not left behind
        return
    assert_clean(got.out, "import summary")
    assert [row[3] for row in after[len(before):]] == entry["statuses"]
    if "names" in entry:
        assert [row[1] for row in after[len(before):]] == entry["names"]
    if "error" in entry:
        archive = Archive(imported_run / "archive.sqlite", create=False)
        try:
            errors = [r.error or "" for r in archive.rows()[len(before):] if r.status == "invalid"]
        finally:
            archive.close()
        assert errors and all(entry["error"] in e for e in errors), errors


# -- output writers -------------------------------------------------------------------------------------------

def assert_csv_safe(text: str) -> None:
    for record in csv.reader(io.StringIO(text)):
        for cell in record:
            try:
                float(cell)
                continue
            except ValueError:
                pass
            assert not cell.startswith(FORMULA_START), cell
            assert_clean(cell, "CSV cell")


@pytest.mark.parametrize("case", cases("output"))
def test_output_writers(case: str, tmp_path: Path, capsys) -> None:
    stored = json.loads(data(case))
    run, rid = scored_run(tmp_path, loss_code("stored_loss"), stored["name"], stored["thought"])
    before = snapshot(run)
    outputs: dict[str, str] = {}
    for argv in (["leaderboard", str(run)], ["leaderboard", str(run), "--csv"], ["leaderboard", str(run), "--json"],
                 ["export", str(run), "best"], ["report", str(run), "-o", str(tmp_path / "report.html")]):
        assert main(argv) == 0, argv
        got = capsys.readouterr()
        assert got.err == "" or "Traceback" not in got.err
        outputs[" ".join(argv[:1] + argv[2:])] = got.out
    for what, text in outputs.items():
        assert_clean(text, what)
    assert_csv_safe(outputs["leaderboard --csv"])
    assert json.loads(outputs["leaderboard --json"])["rows"]
    export_text = outputs["export best"]
    assert export_text.endswith(loss_code("stored_loss"))
    header = export_text[: -len(loss_code("stored_loss"))]
    assert all(line.startswith("#") or line == "" for line in header.split("\n"))
    html = (tmp_path / "report.html").read_text()
    assert_clean(html, "report")
    assert "<script>alert" not in html and "<img src=x" not in html
    wide = io.StringIO()
    archive = Archive(run / "archive.sqlite", create=False)
    try:
        print_leaderboard(archive, Console(file=wide, width=400, force_terminal=True, color_system=None))
    finally:
        archive.close()
    assert_clean(wide.getvalue().replace("\n", " "), "leaderboard on a terminal")
    if stored.get("show"):
        assert stored["show"] in wide.getvalue(), "markup shown as text, not rendered"
    cell = markdown_cell(stored["name"])
    assert "\n" not in cell and not re.search(r"(?<!\\)\|", cell) and not re.search(r"(?<!\\)`", cell)
    assert snapshot(run) == before
