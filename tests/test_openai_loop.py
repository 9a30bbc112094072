"""``proposer=openai`` in whole runs: the real loop and proposer against a real loopback HTTP server.

``tests/test_openai_proposer.py`` covers the proposer alone; this file checks what only the whole
run can show: every answer (good, malformed, broken, rate-limited) becomes an archive row with its
reason, repairs are asked for with the error and archived as children of the failure, tokens and
model are recorded per row, stops (bad key, budget) end the run with one line and leave a
resumable archive, and the API key (given only through an environment variable) is never written
anywhere.

The bad-key test runs the real ``discover`` console script (a subprocess, a sandboxed worker, a small world of
the fast tier, whose fine-tunes take milliseconds: the subject is the stop and the resume, not training), so
exit codes and resuming through the CLI are covered end to end. The others run ``Loop`` in this process with
the scripted executor (``scripted_executor.py``: no worker, milliseconds), as the subject is the proposer and
the loop, not training. Every test scripts the server's replies in the order the loop asks for them: one
worker, so one proposal a generation, and lock step (``proposer.lookahead=0``), so each generation is asked
after the last one's repairs (the lookahead's order is in ``test_loop.py``).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import PROXY_VARS, SMALL_RUN, command_env
from openai_server import FakeOpenAIServer, closed_url, completion, error
from rich.console import Console
from scripted_executor import Script, ScriptedExecutor

from discopop.config import RunSettings
from discopop.config.compose import create_run_dir, record_run, resolve_run
from discopop.report.display import Display
from discopop.search.loop import Loop, RunSummary

REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "DISCOPOP_LOOP_TEST_KEY"
KEY = "sk-loop-Xy7DISTINCTIVE-fake-key-2025"
MODEL = "test-model"
SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
RHO = "(policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)"
# Fast retries so a test never waits; confirmation off (it re-trains winners: slow and not under test here).
FAST = ["proposer.backoff_base=0.01", "proposer.backoff_max=0.05", "proposer.max_retries=2", "confirm.seeds=0",
        "executor.workers=1", "proposer.lookahead=0"]


def variant(i: int) -> tuple[str, str]:
    """(name, code) of a valid DPO variant; the margin scale differs per ``i`` so none is a duplicate."""
    name = f"scaled_dpo_{i}"
    code = (f"import torch.nn.functional as F\n\nSCALE = {1 + i / 4}\n\n\ndef {name}({SIG}):\n"
            f"    rho = {RHO}\n    return -F.logsigmoid(beta * SCALE * rho)\n")
    return name, code


def answer(i: int, code: str | None = None, thought: str = "scale the margin") -> str:
    name, good = variant(i)
    return json.dumps({"thought": thought, "name": name, "code": code or good})


def broken(i: int) -> str:
    """Variant ``i`` with a forbidden import: parses, then fails the static check."""
    forbidden = "import numpy as np\nimport torch.nn.functional as F"
    return variant(i)[1].replace("import torch.nn.functional as F", forbidden)


@pytest.fixture
def server(monkeypatch):
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


def discover(args: list[str], cache_dir: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the real console script with the key in the environment only (and no proxy in the way)."""
    env = command_env(cache_dir, no_proxy=True, **{KEY_ENV: KEY})
    return subprocess.run(["discover", "--quiet", *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def new_run(run_dir: Path, server: FakeOpenAIServer, generations: int, *extra: str,
            task: tuple[str, ...] = tuple(SMALL_RUN)) -> list[str]:
    return ["--generations", str(generations), *task, *FAST, "proposer=openai", f"proposer.model={MODEL}",
            f"proposer.base_url={server.url}", f"proposer.api_key_env={KEY_ENV}", f"hydra.run.dir={run_dir}", *extra]


# A small world of the fast tier, for the test that starts real workers: the same two references, one rate.
DIAGNOSTIC_RUN = ("task=diagnostic", "task.contexts=64", "task.eval_contexts=64", "task.steps=20", "task.batch=64",
                  "task.extra_confirm_contexts=0", "task.extra_search_contexts=0", "training.lr_grid=[0.03]",
                  "training.tune_seeds=1", "baselines=[dpo,lrml]", "selection.max_seeds=1", "wandb.mode=disabled")


def run_in_process(args: list[str], monkeypatch, resume: Path | None = None) -> tuple[RunSummary, str]:
    """What ``discover`` does (config resolved and recorded in the run directory, then ``Loop.run``), in this
    process, with the scripted executor in place of the workers; returns the summary and the console text."""
    for name in list(os.environ):
        if name.lower() in PROXY_VARS:
            monkeypatch.delenv(name)
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("NO_PROXY", "*")
    generations = int(args[args.index("--generations") + 1]) if "--generations" in args else None
    overrides = [a for a in args if "=" in a]
    cfg, run_dir = resolve_run(generations, str(resume) if resume else None, overrides)
    create_run_dir(run_dir)
    record_run(cfg, run_dir, overrides, resumed=resume is not None)
    console = Console(file=io.StringIO(), width=300)
    scripts = {"dpo": Script(fitness=0.80), "lrml": Script(fitness=0.82)}
    executor = ScriptedExecutor(scripts, default=lambda name: Script(fitness=0.5 + len(name) / 100),
                                workers=cfg.executor.workers)
    loop = Loop(RunSettings.coerce(cfg), run_dir, Display(0, console=console, quiet=True), executor=executor,
                task_meta={"sft_heldout_reward": 0.8, "pairs": 64})
    try:
        summary = loop.run(cfg.generations)
    finally:
        loop.archive.close()
    return summary, console.file.getvalue()


def rows(run_dir: Path) -> list[dict]:
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        found = [dict(r) for r in conn.execute("SELECT * FROM candidates ORDER BY id")]
    for r in found:
        r["parent_ids"], r["metrics"] = json.loads(r["parent_ids"]), json.loads(r["metrics"])
    return found


def run_state(run_dir: Path, key: str):
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        value = conn.execute("SELECT value FROM run_state WHERE key=?", (key,)).fetchone()
    return json.loads(value[0]) if value else None


def user_turn(body: dict) -> str:
    return body["messages"][-1]["content"]


def assert_key_never_written(run_dir: Path, *outputs: subprocess.CompletedProcess | str) -> None:
    for out in outputs:
        text = out if isinstance(out, str) else out.stdout + out.stderr
        assert KEY not in text
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"the API key was written to {path}"
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert f"api_key_env: {KEY_ENV}" in saved  # only the variable's name is kept


def test_llm_run_archives_every_answer_with_repairs_retries_and_tokens(tmp_path, server, monkeypatch):
    malformed = "I would make the loss smoother, maybe with a softplus on the margin."
    server.push(
        completion(answer(1), prompt_tokens=1200, completion_tokens=300),   # gen 1: a good proposal
        completion(malformed),                                              # gen 2: prose, no code
        completion(answer(2)),                                              #   repair of the prose
        completion(answer(3, broken(3))),                                   # gen 3: parses, fails checks
        completion(answer(4, thought="dropped numpy")),                     #   repair of the import
        error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"Retry-After": "0"}),  # gen 4
        completion(answer(5)),                                              #   the retry
    )
    run_dir = tmp_path / "run"
    prices = "+proposer.prices.test-model={prompt:0.01,completion:0.03}"
    summary, out = run_in_process(new_run(run_dir, server, 4, prices), monkeypatch)
    assert summary.stopped is None, out[-3000:]

    found = rows(run_dir)
    assert [(r["generation"], r["proposer"], r["status"]) for r in found] == [
        (0, "reference", "scored"), (0, "reference", "scored"),
        (1, "openai", "scored"), (2, "openai", "invalid"), (2, "openai", "scored"),
        (3, "openai", "invalid"), (3, "openai", "scored"), (4, "openai", "scored")]
    first, prose, fixed_prose, bad, fixed_bad, retried = found[2:]
    assert prose["name"] == "unparseable" and prose["code"] == malformed
    assert prose["error"].startswith("unparseable answer: no JSON object and no fenced Python code")
    assert bad["name"] == "scaled_dpo_3" and bad["error"].startswith("static check:") and "numpy" in bad["error"]
    assert fixed_prose["parent_ids"] == [prose["id"]] and fixed_bad["parent_ids"] == [bad["id"]]
    assert fixed_bad["thought"] == "dropped numpy" and "numpy" not in fixed_bad["code"]
    info = {r["id"]: r["metrics"]["proposer_info"] for r in found[2:]}
    assert all(i["model"] == MODEL for i in info.values())
    assert (info[first["id"]]["prompt_tokens"], info[first["id"]]["completion_tokens"]) == (1200, 300)
    assert info[first["id"]]["cost_usd"] == pytest.approx(1.2 * 0.01 + 0.3 * 0.03)
    assert info[prose["id"]]["prompt_tokens"] == 100  # a malformed answer still cost its tokens
    assert [info[r["id"]]["attempt"] for r in (fixed_prose, fixed_bad)] == [1, 1]
    assert info[retried["id"]]["retries"] == 1 and info[first["id"]]["retries"] == 0
    totals = run_state(run_dir, "proposer_state")["totals"]
    assert totals["requests"] == 6 and totals["failed_requests"] == 1
    assert totals["prompt_tokens"] == 1200 + 5 * 100 and totals["completion_tokens"] == 300 + 5 * 50

    bodies = server.bodies()
    assert len(bodies) == 7, "the loop asked for more (or fewer) answers than the script holds"
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert all(b["model"] == MODEL for b in bodies)
    assert prose["error"] in user_turn(bodies[2]) and malformed in user_turn(bodies[2])  # repair: error + answer
    assert bad["error"] in user_turn(bodies[4]) and "import numpy as np" in user_turn(bodies[4])
    assert bodies[5] == bodies[6]  # the 429 was retried with the same request
    gen4 = user_turn(bodies[5])  # archive mode: a fresh prompt showing the best code and the failures
    assert "Generation 4" in gen4 and len(bodies[5]["messages"]) == 2
    best = sorted((r for r in found if r["status"] == "scored"), key=lambda r: (-r["fitness"], r["id"]))[:5]
    for r in best:
        assert f"### id {r['id']}: {r['name']}" in gen4 and r["code"].strip() in gen4
    assert f"id {prose['id']} `unparseable` (invalid)" in gen4 and f"id {bad['id']} `scaled_dpo_3`" in gen4
    # Reflection: what training measured reaches the model, and the failure's stage with its reason.
    shown = first if first["fitness"] >= retried["fitness"] else retried
    curve = [shown["metrics"]["train"][k] for k in ("loss_start", "loss_mid", "loss_end")]
    assert f"held-out reward {shown['metrics']['reward']:.4f}" in gen4
    assert " → ".join(f"{v:.4g}" for v in curve) in gen4
    assert f"id {bad['id']} `scaled_dpo_3` (invalid) at stage static: static check:" in gen4
    assert_key_never_written(run_dir, out)


def test_bad_key_stops_at_once_with_one_line_and_the_run_resumes(tmp_path, cache_dir, server):
    """The key is revoked while the repair of generation 1's unparseable answer is being asked: the run
    stops with one line, and ``--resume`` asks that owed repair before going on to generation 2."""
    server.push(completion("OK"),  # the pre-flight
                completion("I would rather not write code today."),
                error(401, f"Incorrect API key provided: {KEY}. You can find your API key at ...",
                      code="invalid_api_key", type_="authentication_error"))
    run_dir = tmp_path / "run"
    stopped = discover(new_run(run_dir, server, 2, task=DIAGNOSTIC_RUN), cache_dir)  # gen 2 after the owed repair
    assert stopped.returncode == 3, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    lines = [line for line in stopped.stdout.splitlines() if "run stopped" in line]
    assert len(lines) == 1, stopped.stdout
    assert "HTTP 401" in lines[0] and f"${KEY_ENV}" in lines[0] and f"discover --resume {run_dir}" in lines[0]
    assert "Traceback" not in stopped.stdout + stopped.stderr
    assert len(server.requests) == 3  # pre-flight, gen 1; no retry on bad credentials, no further generation
    before = rows(run_dir)
    assert [(r["generation"], r["status"]) for r in before] == [(0, "scored"), (0, "scored"), (1, "invalid")]
    assert run_state(run_dir, "generations_done") == 1
    assert_key_never_written(run_dir, stopped)

    server.push(completion("OK"), completion(answer(1)), completion(answer(2)))  # key back
    resumed = discover(["--resume", str(run_dir)], cache_dir)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = rows(run_dir)
    assert after[:3] == before  # nothing finished is repeated or changed
    assert [(r["generation"], r["name"], r["status"]) for r in after[3:]] == [
        (1, "scaled_dpo_1", "scored"), (2, "scaled_dpo_2", "scored")]
    assert after[3]["parent_ids"] == [before[2]["id"]]  # the repair owed since the stop
    assert len(server.requests) == 6
    assert_key_never_written(run_dir, stopped, resumed)


def test_an_endpoint_that_goes_away_stops_the_run_and_archives_nothing_for_it(tmp_path, server, monkeypatch):
    """The endpoint is gone when generation 2 is asked (resumed against a closed port): the run stops with one
    line instead of archiving a ``no_answer`` row per request as an invalid loss (a repair owed on the next
    resume); with the endpoint back, --resume proposes generation 2 afresh."""
    server.push(completion(answer(1)))
    run_dir = tmp_path / "run"
    summary, out = run_in_process(new_run(run_dir, server, 1), monkeypatch)
    assert summary.stopped is None, out[-3000:]
    gone = closed_url()
    summary, out = run_in_process(["--generations", "3", f"proposer.base_url={gone}"], monkeypatch, resume=run_dir)
    assert summary.stopped is not None, out[-3000:]
    [line] = [line for line in out.splitlines() if "run stopped" in line]
    assert f"no answer from {gone} (connection error" in line and f"discover --resume {run_dir}" in line
    found = rows(run_dir)
    assert [(r["generation"], r["status"]) for r in found] == [(0, "scored"), (0, "scored"), (1, "scored")]
    assert not any(r["metrics"].get("proposer_info", {}).get("transport_error") for r in found)
    assert run_state(run_dir, "generations_done") == 1 and run_state(run_dir, "generations_proposed") == 1

    server.push(completion(answer(2)), completion(answer(3)))  # the endpoint is back
    summary, out = run_in_process(["--generations", "3", f"proposer.base_url={server.url}"], monkeypatch,
                                  resume=run_dir)
    assert summary.stopped is None, out[-3000:]
    after = rows(run_dir)
    assert after[:3] == found
    assert [(r["generation"], r["name"], r["status"]) for r in after[3:]] == [
        (2, "scaled_dpo_2", "scored"), (3, "scaled_dpo_3", "scored")]  # no repair was owed
    assert len(server.requests) == 3


def test_a_server_failing_a_repair_through_its_retries_stops_and_the_repair_stays_owed(tmp_path, server,
                                                                                       monkeypatch):
    """The repair of an unparseable answer meets HTTP 503 through every retry: the unparseable row (a real bad
    answer) stays, no row is added for the 503s, and --resume asks that repair."""
    server.push(completion("no code today"), *[error(503, "overloaded", type_="server_error")] * 3)
    run_dir = tmp_path / "run"
    summary, out = run_in_process(new_run(run_dir, server, 1), monkeypatch)
    assert summary.stopped is not None and "HTTP 503 after 2 retries" in summary.stopped, out[-3000:]
    found = rows(run_dir)
    assert [(r["generation"], r["name"], r["status"]) for r in found[2:]] == [(1, "unparseable", "invalid")]
    server.push(completion(answer(1)))
    summary, out = run_in_process([], monkeypatch, resume=run_dir)
    assert summary.stopped is None, out[-3000:]
    after = rows(run_dir)
    assert [(r["generation"], r["name"], r["parent_ids"]) for r in after[3:]] == [(1, "scaled_dpo_1", [found[2]["id"]])]


def test_budget_stop_mid_generation_then_resume_with_a_larger_budget(tmp_path, server, monkeypatch):
    # $0.02 a request against a $0.05 budget: the third request (gen 3) crosses it, and the stop comes
    # when gen 3's broken answer would be sent back for repair. Conversation mode, so the feedback the
    # loop hands the proposer through observe() is visible in what the server receives.
    server.push(*[completion(answer(i), prompt_tokens=10, completion_tokens=10) for i in (1, 2)],
                completion(answer(3, broken(3)), prompt_tokens=10, completion_tokens=10))
    run_dir = tmp_path / "run"
    budget = ["proposer.history_mode=conversation", "proposer.max_cost_usd=0.05",
              "+proposer.prices.test-model={prompt:1.0,completion:1.0}"]
    summary, stopped = run_in_process(new_run(run_dir, server, 5, *budget), monkeypatch)
    assert summary.stopped is not None, stopped[-3000:]
    [line] = [line for line in stopped.splitlines() if "run stopped" in line]
    assert "budget of $0.05 reached after 3 requests ($0.0600 spent)" in line
    assert len(server.requests) == 3  # the repair request was never sent
    before = rows(run_dir)
    assert [(r["generation"], r["status"]) for r in before[2:]] == [(1, "scored"), (2, "scored"), (3, "invalid")]
    assert run_state(run_dir, "generations_done") == 3  # its proposal is archived: never proposed again
    roles = [[m["role"] for m in b["messages"]] for b in server.bodies()]
    assert roles[1] == ["system", "user", "assistant", "user"]
    assert f"`scaled_dpo_1` (id {before[2]['id']}): fitness" in user_turn(server.bodies()[1])

    server.push(*[completion(answer(i), prompt_tokens=10, completion_tokens=10) for i in (4, 5, 6)])
    summary, resumed = run_in_process(["proposer.max_cost_usd=1.0"], monkeypatch, resume=run_dir)
    assert summary.stopped is None, resumed[-3000:]
    after = rows(run_dir)
    assert after[:5] == before
    # The repair the budget stop left owed is asked first (attempt 1 of gen 3's broken answer), then gens 4-5.
    assert [(r["generation"], r["name"], r["status"]) for r in after[5:]] == [
        (3, "scaled_dpo_4", "scored"), (4, "scaled_dpo_5", "scored"), (5, "scaled_dpo_6", "scored")]
    assert after[5]["parent_ids"] == [before[4]["id"]]
    repair = server.bodies()[3]  # the conversation survived the stop; the repair quotes the failed answer
    assert [m["role"] for m in repair["messages"]][:2] == ["system", "user"] and len(repair["messages"]) > 6
    assert "scaled_dpo_3" in repair["messages"][-1]["content"]
    feedback = f"`scaled_dpo_3` (id {before[4]['id']}): invalid at stage static: static check:"
    assert any(feedback in m["content"] for b in server.bodies()[3:] for m in b["messages"] if m["role"] == "user")
    totals = run_state(run_dir, "proposer_state")["totals"]
    assert totals["requests"] == 6 and totals["cost_usd"] == pytest.approx(0.12)
    assert "max_cost_usd: 1.0" in (run_dir / ".hydra" / "config.yaml").read_text()  # the raised budget is kept
    assert_key_never_written(run_dir, stopped, resumed)


def test_lookahead_asks_the_next_generation_before_this_ones_results_are_in(tmp_path, server, monkeypatch):
    """The default (``proposer.lookahead=1``): generation g+1's request goes out while g trains, so its prompt
    shows the archive as it stood before g's evaluation: g-1's results, never g's."""
    server.push(*[completion(answer(i)) for i in (1, 2, 3)])
    run_dir = tmp_path / "run"
    args = [a for a in new_run(run_dir, server, 3) if a != "proposer.lookahead=0"]
    summary, out = run_in_process(args, monkeypatch)
    assert summary.stopped is None, out[-3000:]
    found = rows(run_dir)
    assert [(r["generation"], r["name"], r["status"]) for r in found[2:]] == [
        (1, "scaled_dpo_1", "scored"), (2, "scaled_dpo_2", "scored"), (3, "scaled_dpo_3", "scored")]
    bodies = server.bodies()
    assert len(bodies) == 3
    gen2, gen3 = user_turn(bodies[1]), user_turn(bodies[2])
    assert "Generation 2" in gen2 and f"### id {found[2]['id']}:" not in gen2  # generation 1 was still training
    assert f"### id {found[2]['id']}: scaled_dpo_1" in gen3 and f"### id {found[3]['id']}:" not in gen3
    assert run_state(run_dir, "generations_proposed") == 3
