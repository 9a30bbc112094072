"""Hostile proposals: one bad LLM reply or imported record never stops a run (``proposers/gate.py``).

Unlike ``tests/hostile/`` (loss files run through the sandbox), these cases are hostile *text*
reaching the main process: a reply, a name, a thought, a usage count, a drip-feeding server, an
imported record. Most are megabytes or thousands of levels deep, so they are built here rather than
stored as files. Each case drives the real path (loopback OpenAI server -> proposer -> loop ->
archive, or ``discopop import-run``) and asserts the run goes on, every proposal has its row, and
what is stored is clean (encodable, identifier names, no control characters).
"""

from __future__ import annotations

import io
import json
import random
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from openai_server import completion, loopback_server
from rich.console import Console
from scripted_executor import ScriptedExecutor, ScriptedProposer, candidate, loss_code

from discopop.archive import Archive
from discopop.cli.main import main
from discopop.config import RunSettings
from discopop.config.compose import compose
from discopop.proposers import ProposerStop
from discopop.proposers.base import Candidate
from discopop.proposers.gate import MAX_CODE_CHARS, MAX_NAME_CHARS, admit
from discopop.proposers.llm.chat_client import ChatClient, TransientError
from discopop.proposers.llm.metering import MAX_TOKENS_PER_REQUEST
from discopop.proposers.llm.parsing import ProposalParseError, fence_spans, parse_proposal
from discopop.proposers.llm.proposer import OpenAIProposer
from discopop.report.display import Display
from discopop.search.loop import Loop

KEY_ENV = "DISCOPOP_TEST_HOSTILE_KEY"
META = {"sft_heldout_reward": 0.8, "pairs": 64}
GOOD = loss_code("good_loss")
SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
HUGE_SUM = f"def big_sum({SIG}):\n    return " + " + ".join(["beta"] * 2000) + "\n"
UNSAFE = re.compile("[\ud800-\udfff\x00-\x08\x0b-\x1f\x7f-\x9f]")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OLD_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)  # the parser before the gate


def reply(code: str = GOOD, name: str = "good_loss", thought: str = "a fine idea") -> str:
    return json.dumps({"thought": thought, "name": name, "code": code})


@pytest.fixture(scope="module")
def cfg() -> dict:
    composed, _ = compose(["baselines=[]", "training.lr_grid=[1e-5]", "confirm.seeds=0", "wandb.mode=disabled",
                           "selection.max_seeds=1", "candidates_per_generation=1"])
    return composed


@pytest.fixture
def server(monkeypatch):
    with loopback_server(monkeypatch, KEY_ENV, "sk-test-hostile") as srv:
        yield srv


def run(cfg: dict, run_dir: Path, proposer, generations: int) -> Archive:
    run_dir.mkdir(parents=True, exist_ok=True)
    display = Display(0, console=Console(file=io.StringIO(), width=200), quiet=True)
    loop = Loop(RunSettings.coerce(cfg), run_dir, display,
                proposer=proposer, executor=ScriptedExecutor(), task_meta=META)
    try:
        loop.run(generations)
    finally:
        loop.archive.close()
    return Archive(run_dir / "archive.sqlite", create=False)


def assert_clean(archive: Archive) -> None:
    """Every stored text is encodable and free of control characters; every name is an identifier."""
    for row in archive.rows():
        assert IDENT.match(row.name) and len(row.name) <= MAX_NAME_CHARS, row.name
        for text in (row.thought, row.code, row.error or ""):
            assert not UNSAFE.search(text.replace("\n", " ").replace("\t", " ")), ascii(text[:80])
            text.encode("utf-8")


def llm_run(cfg: dict, server, tmp_path: Path, replies: list[str], **settings) -> Archive:
    """One generation per reply, each reply from the loopback server through the OpenAI proposer."""
    for text in replies:
        server.push(completion(text))
    proposer = OpenAIProposer(model="test-model", base_url=server.url, api_key_env=KEY_ENV, max_retries=0,
                              max_repairs=0, lookahead=0, **settings)
    return run(cfg, tmp_path / "run", proposer, len(replies))


# -- hostile replies through the whole loop --------------------------------------------------------

def test_lone_surrogate_thought_is_cleaned_and_the_run_goes_on(cfg, server, tmp_path) -> None:
    replies = [reply(thought="half \ud800 a pair \udfff"), reply(loss_code("next_loss"), "next_loss")]
    archive = llm_run(cfg, server, tmp_path, replies)
    rows = archive.rows()
    assert [r.status for r in rows] == ["scored", "scored"]  # both generations ran
    assert rows[0].thought == "half  a pair"
    assert_clean(archive)


def test_two_thousand_term_sum_is_invalid_and_the_run_goes_on(cfg, server, tmp_path) -> None:
    archive = llm_run(cfg, server, tmp_path, [reply(HUGE_SUM, "big_sum"), reply()])
    first, second = archive.rows()
    assert first.status == "invalid" and "nested more than" in first.error and first.code == HUGE_SUM
    assert second.status == "scored"
    assert_clean(archive)


def test_huge_sum_resumes_without_dying_again(cfg, server, tmp_path) -> None:
    llm_run(cfg, server, tmp_path, [reply(HUGE_SUM, "big_sum")])
    server.push(completion(reply(HUGE_SUM, "big_sum")))  # the LLM repeats it on the resumed run
    proposer = OpenAIProposer(model="test-model", base_url=server.url, api_key_env=KEY_ENV, max_retries=0,
                              max_repairs=0, lookahead=0)
    archive = run(cfg, tmp_path / "run", proposer, 2)
    assert [r.status for r in archive.rows()] == ["invalid", "invalid"]


def test_ten_thousand_nested_brackets_in_a_reply(cfg, server, tmp_path) -> None:
    nested = '{"thought": "x", "name": "deep", "code": ' + "[" * 10_000 + "]" * 10_000 + "}"
    archive = llm_run(cfg, server, tmp_path, [nested, reply()])
    first, second = archive.rows()
    assert first.status == "invalid" and first.error.startswith("unparseable answer")
    assert second.status == "scored"
    assert_clean(archive)


def test_name_with_ansi_escapes_newlines_and_dollar(cfg, server, tmp_path) -> None:
    hostile = "\x1b[31mred\x1b[0m\nrm -rf $HOME;`x`"
    replies = [reply(name=hostile), reply(loss_code("b_loss"), name="red_rm__rf__HOME_x")]
    archive = llm_run(cfg, server, tmp_path, replies)
    first, second = archive.rows()
    assert first.name == "red_rm__rf__HOME_x" and first.status == "scored"
    assert first.metrics["proposer_info"]["original_name"].startswith("'\\x1b[31mred")  # kept, escaped
    assert second.name == "red_rm__rf__HOME_x"  # a clean name is the proposer's own choice: kept
    assert_clean(archive)


def test_five_megabyte_reply_is_refused_unparsed(cfg, server, tmp_path) -> None:
    big = reply(GOOD + "#" + "x" * 5_000_000)
    archive = llm_run(cfg, server, tmp_path, [big, reply(loss_code("after_loss"), "after_loss")])
    first, second = archive.rows()
    assert first.status == "invalid" and "the limit is" in first.error and len(first.code) <= MAX_CODE_CHARS
    assert second.status == "scored"
    assert_clean(archive)


def test_control_characters_in_code_make_an_invalid_row(cfg, tmp_path) -> None:
    nul = Candidate("nul_loss", GOOD.replace("import", "\x00import", 1))
    bidi = Candidate("bidi_loss", GOOD.replace("rho =", "rho = \u202e", 1))
    archive = run(cfg, tmp_path / "run", ScriptedProposer({1: [nul], 2: [bidi], 3: [candidate("fine")]}), 3)
    by_name = {r.name: r for r in archive.rows()}
    assert by_name["nul_loss"].status == "invalid" and "'\\x00'" in by_name["nul_loss"].error
    assert "\\x00import" in by_name["nul_loss"].code  # kept visible, escaped
    assert by_name["bidi_loss"].status == "invalid" and by_name["fine"].status == "scored"
    assert_clean(archive)


def test_every_proposer_path_is_gated_repairs_too(cfg, tmp_path) -> None:
    bad = Candidate("first", "def broken(:\n", thought="t\ud800")
    fix = Candidate("x\x1b[2Jfixed", loss_code("fixed"), thought="\x07bell")
    proposer = ScriptedProposer({1: [bad]}, repairs={"first": fix}, max_repairs=1)
    archive = run(cfg, tmp_path / "run", proposer, 1)
    names = [r.name for r in archive.rows()]
    assert names == ["first", "xfixed"] and archive.rows()[1].thought == "bell"
    assert_clean(archive)


def test_gate_renames_a_changed_name_that_would_collide() -> None:
    taken = {"a_b", "a_b_2"}
    admitted = admit(Candidate("a$b", GOOD), taken.__contains__)
    assert admitted.name == "a_b_3" and admitted.info["original_name"] == "'a$b'"
    assert admit(Candidate("a_b", GOOD), taken.__contains__).name == "a_b"  # clean: the proposer's choice
    assert admit(Candidate("", GOOD)).name == "unnamed" and admit(Candidate("9lives", GOOD)).name == "n_9lives"


def test_gate_never_raises() -> None:
    weird = Candidate(name=None, code=b"bytes", thought=12, parent_ids=["x", 3])  # type: ignore[arg-type]
    admitted = admit(weird)
    assert admitted.error and admitted.name == "unnamed" and admitted.parent_ids == [3]


# -- parsing: linear and capped ---------------------------------------------------------------------

def test_eighty_thousand_backticks_are_refused_in_one_line() -> None:
    """80k backticks (the review's 96 s reply) end as one parse error; how fast is ``benchmarks/reply_parsing.py``'s
    question (no timed assertion here: the old regex also ended, after 12.8 s on this machine)."""
    with pytest.raises(ProposalParseError) as err:
        parse_proposal("`" * 80_000)
    assert "\n" not in str(err.value)


def test_fence_scan_matches_the_old_regex() -> None:
    rng = random.Random(7)
    pieces = ["```", "``", "`", "\n", "python", "json", " ", "def f():", "x", "{", "}", "\t", "py thing"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        old = [(m.group(1).lower(), m.group(2), m.start(), m.end()) for m in OLD_FENCE.finditer(text)]
        assert fence_spans(text) == old, ascii(text)


# -- the request and its bill ------------------------------------------------------------------------

def test_negative_usage_is_charged_as_the_max_and_the_budget_stops(server) -> None:
    server.push(completion(reply(), prompt_tokens=-10_000_000, completion_tokens=-10_000_000), completion(reply()))
    proposer = OpenAIProposer(model="test-model", base_url=server.url, api_key_env=KEY_ENV, max_retries=0,
                              prices={"test-model": {"prompt": 0.001, "completion": 0.002}}, max_cost_usd=1.0)
    try:
        [cand] = proposer.propose([], 1, 1)
        assert cand.info["prompt_tokens"] == MAX_TOKENS_PER_REQUEST and proposer.totals["cost_usd"] > 1.0
        with pytest.raises(ProposerStop, match="budget"):
            proposer.propose([], 1, 2)
    finally:
        proposer.close()


class DripServer:
    """Answers every request with headers promising 200 bytes, then one byte a second."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sent = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n")
                for _ in range(30):
                    conn.sendall(b" ")
                    self.sent += 1
                    time.sleep(1.0)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def test_drip_feeding_server_cannot_hold_a_request_past_its_timeout(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    drip = DripServer()
    client = ChatClient(model="m", base_url=drip.url, api_key_env=KEY_ENV, timeout=2.0, max_retries=0)
    try:
        with pytest.raises(TransientError, match="timed out"):
            client.complete([{"role": "user", "content": "hi"}])
        # The request gave up while the server was still dripping (it drips for 30 s): an outcome, not a
        # stopwatch. Before the deadline the per-read timeout never fired and the call waited all 30 bytes.
        assert drip.sent < 30
    finally:
        client.close()
        drip.close()


# -- import-run ---------------------------------------------------------------------------------------

def test_import_of_deeply_nested_json_is_one_line(tmp_path, capsys) -> None:
    record = tmp_path / "tests.json"
    record.write_text("[" * 200_000 + "]" * 200_000)
    assert main(["import-run", str(record), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nested too deeply" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_import_of_hostile_names_code_and_thoughts_is_clean(tmp_path, capsys) -> None:
    record = tmp_path / "tests.json"
    record.write_text(json.dumps([
        {"name": "\x1b[31mevil\nname$", "code": GOOD, "thought": "\ud800 lone"},
        {"name": "deep", "code": HUGE_SUM},
        {"name": "\ud800", "code": loss_code("other")},
    ]))
    run_dir = tmp_path / "run"
    assert main(["import-run", str(record), str(run_dir), "wandb.mode=disabled"]) == 0
    archive = Archive(run_dir / "archive.sqlite", create=False)
    rows = archive.rows()
    assert [r.name for r in rows] == ["evil_name", "deep", "unnamed"]
    assert [r.status for r in rows] == ["proposed", "invalid", "proposed"] and rows[0].thought == "lone"
    assert_clean(archive)


def test_import_with_a_bad_run_directory_name_is_one_line_and_leaves_nothing(tmp_path, capsys) -> None:
    record = tmp_path / "tests.json"
    record.write_text(json.dumps([{"name": "x", "code": GOOD}]))
    assert main(["import-run", str(record), str(tmp_path / "bad\nname")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "control" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tests.json"]


def test_import_that_fails_midway_removes_the_new_run_directory(tmp_path, monkeypatch) -> None:
    record = tmp_path / "tests.json"
    record.write_text(json.dumps([{"name": "x", "code": GOOD}]))

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Archive, "add", broken)
    with pytest.raises(sqlite3.OperationalError):
        main(["import-run", str(record), str(tmp_path / "run"), "wandb.mode=disabled"])
    assert not (tmp_path / "run").exists()
