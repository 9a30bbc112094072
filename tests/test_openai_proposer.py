"""OpenAIProposer against a real loopback HTTP server speaking the chat-completions protocol.

Every test drives the official ``openai`` client over a socket to ``tests/openai_server.py`` and
asserts on what the server received, so a proposer that skipped a request, retried too often
or sent the wrong prompt fails here.
"""

from __future__ import annotations

import json
import random

import pytest
from openai_server import Scripted, completion, error, loopback_server

from discopop.contract.losses import static_check
from discopop.proposers.base import HistoryEntry, ProposerStop
from discopop.proposers.llm import prompting as P
from discopop.proposers.llm.options import MIN_HISTORY_BUDGET, Arm, select_arm
from discopop.proposers.llm.parsing import ProposalParseError, parse_proposal
from discopop.proposers.llm.proposer import OpenAIProposer

KEY_ENV = "DISCOPOP_TEST_OPENAI_KEY"
KEY = "sk-test-Zq8DISTINCTIVE-fake-key-4711"
SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
GOOD_CODE = """import torch.nn.functional as F

TAU = 0.05


def smooth_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho) + TAU * F.softplus(-beta * rho)
"""


def answer(code: str = GOOD_CODE, name: str = "smooth_margin", thought: str = "softplus smooths the margin") -> str:
    return json.dumps({"thought": thought, "name": name, "code": code})


def entry(i: int, fitness: float | None = None, status: str = "scored", error_line: str | None = None,
          name: str | None = None) -> HistoryEntry:
    name = name or f"loss_{i}"
    rho = "(policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)"
    code = (f"import torch.nn.functional as F\n\n\ndef {name}({SIG}):\n    rho = {rho}\n"
            f"    return -F.logsigmoid(beta * rho) * {1 + i / 1000:.3f}\n")
    return HistoryEntry(id=i, generation=i // 4, name=name, code=code, status=status, fitness=fitness,
                        error=error_line, parent_ids=(), proposer="openai", thought=f"idea number {i}")


def big_history(n: int) -> list[HistoryEntry]:
    rng = random.Random(0)
    out = []
    for i in range(1, n + 1):
        if i % 5 == 0:
            out.append(entry(i, None, "invalid", f"line 3: import of 'numpy' is not allowed ({i})"))
        else:
            out.append(entry(i, rng.uniform(0.1, 0.9)))
    return out


@pytest.fixture
def server(monkeypatch):
    with loopback_server(monkeypatch, KEY_ENV, KEY) as srv:
        yield srv


@pytest.fixture
def make(server):
    """Build a proposer pointed at the server; ``sleeps`` records every backoff sleep."""
    sleeps: list[float] = []
    made: list[OpenAIProposer] = []

    def build(**kw) -> OpenAIProposer:
        settings = {"model": "test-model", "base_url": server.url, "api_key_env": KEY_ENV, "timeout": 5.0,
                    "backoff_base": 0.01, "backoff_max": 0.04, "max_retries": 3, **kw}
        proposer = OpenAIProposer(sleep=sleeps.append, **settings)
        made.append(proposer)
        return proposer

    build.sleeps = sleeps
    yield build
    for proposer in made:
        proposer.close()


def assert_no_key(*things) -> None:
    for thing in things:
        assert KEY not in (thing if isinstance(thing, str) else json.dumps(thing, default=repr))


# -- a good proposal and the request that produced it --------------------------------------------

def test_good_json_proposal_becomes_candidate(server, make):
    server.push(completion(answer(), prompt_tokens=1200, completion_tokens=300))
    proposer = make(prices={"test-model": {"prompt": 0.01, "completion": 0.03}})
    history = [entry(1, 0.61, name="dpo"), entry(2, None, "invalid", "line 2: use of 'open' is not allowed")]
    [cand] = proposer.propose(history, k=1, generation=3)

    assert cand.error is None and cand.name == "smooth_margin" and cand.thought == "softplus smooths the margin"
    assert static_check(cand.code).function_name == "smooth_margin"
    assert cand.proposer == "openai" and cand.parent_ids == [1]
    assert cand.info["model"] == "test-model"
    assert (cand.info["prompt_tokens"], cand.info["completion_tokens"]) == (1200, 300)
    assert cand.info["cost_usd"] == pytest.approx(1.2 * 0.01 + 0.3 * 0.03)
    assert proposer.totals["requests"] == 1 and proposer.totals["cost_usd"] == pytest.approx(0.021)

    [req] = server.requests
    assert req["path"] == "/v1/chat/completions" and req["headers"]["authorization"] == f"Bearer {KEY}"
    body = req["json"]
    assert body["model"] == "test-model" and body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system" and SIG.split(", ")[0] in system["content"] and '"code"' in system["content"]
    assert "### id 1: dpo, fitness 0.6100" in user["content"]
    assert "use of 'open' is not allowed" in user["content"] and "Generation 3" in user["content"]
    assert_no_key(cand.info, proposer.totals, repr(proposer))


@pytest.mark.parametrize("raw, reason", [
    ("I would make the loss smoother, perhaps with a softplus.", "no JSON object and no fenced Python code"),
    ('{"thought": "smoother", "name": "x"}', 'JSON answer has no "code" string (keys: name, thought)'),
    ('{"thought": "smoother", "code": "def f(a,', "broken JSON"),
    ("", "empty answer"),
], ids=["prose-only", "json-missing-code", "broken-json", "empty"])
def test_malformed_answer_becomes_candidate_error(server, make, raw, reason):
    server.push(completion(raw))
    [cand] = make().propose([], k=1, generation=0)
    assert cand.error is not None and cand.error.startswith("unparseable answer: ") and reason in cand.error
    assert cand.code == raw and cand.info["prompt_tokens"] == 100
    assert len(server.requests) == 1


@pytest.mark.parametrize("text", [
    "Here it is:\n```json\n" + answer() + "\n```\nGood luck.",
    "I propose a smoothed margin loss.\n\n```python\n" + GOOD_CODE + "```\nIt should be stable.",
    json.dumps({"code": GOOD_CODE, "extra": [1, 2]}),
    '{"thought": "x", "code": "' + GOOD_CODE.replace("\n", "\\n") + '"}',
    '{"thought": "x", "code": "' + GOOD_CODE + '"}',  # raw newlines inside the string
], ids=["fenced-json", "python-fence-plus-prose", "no-name-extra-keys", "escaped-newlines", "raw-newlines"])
def test_tolerant_parsing(text):
    name, thought, code = parse_proposal(text)
    assert name == "smooth_margin" and static_check(code).function_name == "smooth_margin"
    if "python-fence" in text or "```python" in text:
        assert thought.startswith("I propose") and "```" not in thought


def test_parse_error_is_one_line():
    with pytest.raises(ProposalParseError) as err:
        parse_proposal("```json\n{\"name\": \"x\",\n\n\"code\": \n```")
    assert "\n" not in str(err.value) and "broken JSON" in str(err.value)


# -- transport faults ---------------------------------------------------------------------------

def test_429_with_retry_after_then_success(server, make):
    server.push(error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"Retry-After": "0"}),
                completion(answer()))
    proposer = make()
    [cand] = proposer.propose([], k=1, generation=0)
    assert cand.error is None and cand.info["retries"] == 1
    assert make.sleeps == [0.0]  # Retry-After honoured instead of the exponential backoff
    assert len(server.requests) == 2 and server.bodies()[0] == server.bodies()[1]


def test_retry_after_as_an_http_date_is_honoured(server, make):
    """RFC 9110 lets Retry-After be an HTTP date; a past one means "now", an unparseable one is ignored."""
    from datetime import datetime, timezone

    from discopop.proposers.llm.chat_client import retry_after_seconds as _retry_after

    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)
    assert _retry_after({"retry-after": "Fri, 27 Nov 2026 12:00:42 GMT"}, now) == 42.0
    assert _retry_after({"retry-after": "Fri, 27 Nov 2026 11:59:00 GMT"}, now) == 0.0
    assert _retry_after({"retry-after": "next tuesday"}, now) is None
    assert _retry_after({"retry-after-ms": "1500", "retry-after": "Fri, 27 Nov 2026 12:00:42 GMT"}, now) == 1.5
    server.push(error(429, "Rate limit reached", code="rate_limit_exceeded",
                      headers={"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}), completion(answer()))
    [cand] = make().propose([], k=1, generation=0)
    assert cand.error is None and cand.info["retries"] == 1
    assert make.sleeps == [0.0]  # a date in the past: retry at once, not after the exponential backoff


def test_repeated_500s_exhaust_retries_then_stop_the_run_without_a_candidate(server, make):
    """A server error through every retry says nothing of a loss: the run stops (no ``no_answer`` row to archive
    and repair later), and the same proposer asks again once the endpoint is back (what --resume does)."""
    server.push(*[error(500, "upstream exploded", type_="server_error")] * 4, completion(answer()))
    proposer = make(max_retries=3)
    with pytest.raises(ProposerStop) as err:
        proposer.propose([], k=1, generation=0)
    assert str(err.value) == f"proposer: no answer from {server.url} (HTTP 500 after 3 retries); is the endpoint up?"
    assert len(server.requests) == 4 and len(make.sleeps) == 3 and proposer.totals["failed_requests"] == 4
    assert all(0.005 - 1e-9 <= s <= 0.04 for s in make.sleeps) and make.sleeps[2] > make.sleeps[0]  # 0.01, 0.02, 0.04
    [next_cand] = proposer.propose([], k=1, generation=1)
    assert next_cand.error is None and len(server.requests) == 5


def test_timeout_through_every_retry_stops_the_run(server, make):
    slow = completion(answer())
    slow.delay = 1.0
    server.push(slow, Scripted(**{**slow.__dict__}))
    with pytest.raises(ProposerStop, match=r"request timed out \(limit 0.25 s\) after 1 retries"):
        make(timeout=0.25, max_retries=1).propose([], k=1, generation=0)
    assert len(server.requests) == 2


def test_a_batch_with_one_unreachable_request_stops_and_keeps_the_others_cost(server, make):
    """Two requests at once, one answered and one failing every retry: nothing is proposed (the generation is
    asked again on --resume), but the answered one's tokens are counted."""
    server.push(completion(answer(), prompt_tokens=7, completion_tokens=3),
                *[error(503, "overloaded", type_="server_error")] * 2)
    proposer = make(max_retries=1, max_concurrency=2)
    with pytest.raises(ProposerStop, match="HTTP 503 after 1 retries"):
        proposer.propose([], k=2, generation=0)
    assert proposer.totals["prompt_tokens"] == 7 and proposer.totals["completion_tokens"] == 3
    assert proposer.totals["requests"] == 1 and proposer.totals["failed_requests"] == 2


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_stops_without_leaking_the_key(server, make, status):
    server.push(error(status, f"Incorrect API key provided: {KEY}. You can find your key at ...",
                      code="invalid_api_key"), completion(answer()))
    proposer = make()
    with pytest.raises(ProposerStop) as err:
        proposer.propose([], k=1, generation=0)
    message = str(err.value)
    assert f"HTTP {status}" in message and KEY_ENV in message and "\n" not in message
    assert_no_key(message, repr(err.value), repr(proposer), proposer.totals)
    assert err.value.__cause__ is None and err.value.__context__ is None  # no server text rides along
    assert len(server.requests) == 1  # no retry on bad credentials


def test_missing_key(server, make, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ProposerStop, match=f"{KEY_ENV} is not set"):
        make(base_url="https://api.example.invalid/v1").propose([], k=1, generation=0)
    assert server.requests == []
    server.push(completion(answer()))
    [cand] = make().propose([], k=1, generation=0)  # a local server gets a placeholder key
    assert cand.error is None and server.requests[0]["headers"]["authorization"] == "Bearer EMPTY"


def test_context_length_error_halves_the_history_and_succeeds(server, make):
    server.push(error(400, "This model's maximum context length is 8192 tokens. However, your messages resulted "
                           "in 9100 tokens.", code="context_length_exceeded"), completion(answer()))
    proposer = make(history_token_budget=6000, top_k=50, recent_k=50, failures_k=50)  # so the budget binds
    [cand] = proposer.propose(big_history(200), k=1, generation=50)
    assert cand.error is None and cand.info["context_shrinks"] == 1 and cand.info["history_budget"] == 3000
    first, second = (b["messages"][1]["content"] for b in server.bodies())
    assert 3000 < P.estimate_tokens(first) <= 6000 and P.estimate_tokens(second) <= 3000
    server.push(completion(answer()))
    proposer.propose(big_history(200), k=1, generation=51)  # the smaller budget is remembered
    assert P.estimate_tokens(server.bodies()[2]["messages"][1]["content"]) <= 3000


def test_empty_choices_and_length_cutoff_are_recorded_and_repairable(server, make, caplog):
    cut = answer()[:150]
    server.push(completion(None, no_choices=True), completion(cut, finish_reason="length"), completion(answer()))
    proposer = make(max_tokens=64)
    [empty] = proposer.propose([], k=1, generation=0)
    assert empty.error == "proposer: the server returned no choices"
    [cutoff] = proposer.propose([], k=1, generation=0)
    assert "finish_reason=length" in cutoff.error and "max_tokens=64" in cutoff.error and cutoff.code == cut
    fixed = proposer.repair(cutoff, 12, cutoff.error, attempt=1)
    assert fixed is not None and fixed.error is None and fixed.parent_ids == [12]
    repair_prompt = server.bodies()[2]["messages"][-1]["content"]
    assert "finish_reason=length" in repair_prompt and cut[:60] in repair_prompt
    assert sum("no price for model test-model" in r.getMessage() for r in caplog.records) == 1  # warned once
    assert fixed.info["cost_usd"] is None and proposer.totals["prompt_tokens"] == 300


def test_repair_sends_error_back_and_returns_fixed_candidate(server, make):
    broken = GOOD_CODE.replace("import torch.nn.functional as F", "import numpy as np\nimport torch.nn.functional as F")
    server.push(completion(answer(broken)), completion(answer(thought="dropped numpy")))
    proposer = make(max_repairs=2)
    [cand] = proposer.propose([], k=1, generation=0)
    assert cand.error is None and "numpy" in cand.code
    reason = "line 1: import of 'numpy' is not allowed (only torch, torch.nn.functional, math)"
    fixed = proposer.repair(cand, failed_id=7, error=reason, attempt=1)
    assert fixed.error is None and fixed.parent_ids == [7] and fixed.info["attempt"] == 1
    assert fixed.thought == "dropped numpy" and static_check(fixed.code)
    system, user = server.bodies()[1]["messages"]
    assert system["role"] == "system" and reason in user["content"] and "import numpy as np" in user["content"]
    assert proposer.repair(cand, 7, reason, attempt=3) is None and len(server.requests) == 2


@pytest.mark.parametrize("concurrency", [1, 2])
def test_budget_stop(server, make, concurrency):
    server.push(*[completion(answer(), prompt_tokens=1000, completion_tokens=1000)] * 3)
    proposer = make(max_cost_usd=3.0, prices={"test-model": {"prompt": 1.0, "completion": 1.0}},  # $2 a request
                    max_concurrency=concurrency)
    batch = proposer.propose([], k=3, generation=0)
    assert len(batch) == 2 and len(server.requests) == 2  # the batch stops once $4 >= $3 (2 at once: after them)
    with pytest.raises(ProposerStop) as err:
        proposer.propose([], k=1, generation=1)
    assert str(err.value) == "budget of $3 reached after 2 requests ($4.0000 spent)"
    assert len(server.requests) == 2


# -- history modes --------------------------------------------------------------------------------

def test_archive_mode_builds_a_fresh_prompt_within_budget(server, make):
    history = big_history(200)
    server.push(completion(answer()), completion(answer(name="second")))
    proposer = make(history_token_budget=6000, top_k=50, recent_k=50, failures_k=50)  # so the budget binds
    proposer.propose(history, k=1, generation=50)
    proposer.propose(history, k=1, generation=51)
    best = max((e for e in history if e.fitness is not None), key=lambda e: e.fitness)
    for body in server.bodies():
        assert [m["role"] for m in body["messages"]] == ["system", "user"]  # fresh, no earlier turns
        user = body["messages"][1]["content"]
        assert 5000 < P.estimate_tokens(user) <= 6000 and f"### id {best.id}: {best.name}" in user
        assert "smooth_margin" not in user  # the previous answer is not replayed
    for budget in (MIN_HISTORY_BUDGET, 700, 1500, 6000, 20000):
        text, shown = P.build_archive_prompt(history, 50, budget)
        assert P.estimate_tokens(text) <= budget
        assert P.archive_overhead() < MIN_HISTORY_BUDGET


def test_conversation_mode_grows_and_carries_feedback(server, make):
    server.push(completion(answer()), completion(answer(name="second")), completion(answer(name="third")))
    proposer = make(history_mode="conversation")
    [first] = proposer.propose([entry(1, 0.5, name="dpo")], k=1, generation=1)
    archived = HistoryEntry(id=2, generation=1, name=first.name, code=first.code, status="scored", fitness=0.4242,
                            error=None, parent_ids=(), proposer="openai")
    proposer.observe(archived)
    proposer.propose([], k=1, generation=2)
    proposer.observe(HistoryEntry(id=3, generation=2, name="second", code=GOOD_CODE, status="train_failed",
                                  fitness=None, error="loss became NaN at step 3", parent_ids=(), proposer="openai"))
    proposer.propose([], k=1, generation=3)
    roles = [[m["role"] for m in b["messages"]] for b in server.bodies()]
    assert roles[0] == ["system", "user"] and roles[1] == ["system", "user", "assistant", "user"]
    assert len(roles[2]) == 6
    second_msgs = server.bodies()[1]["messages"]
    assert "### id 1: dpo" in second_msgs[1]["content"] and second_msgs[2]["content"] == answer()
    assert "fitness 0.4242" in second_msgs[3]["content"] and "`smooth_margin` (id 2)" in second_msgs[3]["content"]
    assert "0.4242" not in server.bodies()[2]["messages"][5]["content"]  # feedback is sent once
    assert "loss became NaN at step 3" in server.bodies()[2]["messages"][5]["content"]


def test_conversation_is_trimmed_to_the_budget():
    messages = [{"role": "system", "content": "s" * 400}]
    for i in range(50):
        messages += [{"role": "user", "content": f"u{i} " * 100}, {"role": "assistant", "content": f"a{i} " * 100}]
    messages.append({"role": "user", "content": "latest"})
    kept = P.trim_conversation(messages, budget=MIN_HISTORY_BUDGET)
    assert kept[0]["role"] == "system" and kept[1]["role"] == "user" and kept[-1]["content"] == "latest"
    assert P.messages_tokens(kept[1:]) <= MIN_HISTORY_BUDGET and len(kept) < len(messages)


def test_json_mode_falls_back_to_plain_text_once_and_remembers(server, make):
    server.push(error(400, "response_format json_object is not supported by this server", code=None),
                completion(answer()), completion(answer()))
    proposer = make(json_mode=True)
    [cand] = proposer.propose([], k=1, generation=0)
    proposer.propose([], k=1, generation=1)
    bodies = server.bodies()
    assert cand.error is None and len(bodies) == 3
    assert "response_format" in bodies[0] and "response_format" not in bodies[1]
    assert "response_format" not in bodies[2]  # remembered
    assert cand.info["json_mode"] is False


def test_state_survives_a_resume(server, make):
    server.push(error(400, "response_format is not supported"), completion(answer(), prompt_tokens=1000,
                                                                           completion_tokens=1000),
                completion(answer(name="after_resume"), prompt_tokens=1000, completion_tokens=1000))
    settings = {"history_mode": "conversation", "max_cost_usd": 3.0,
                "prices": {"test-model": {"prompt": 1.0, "completion": 0.5}}}  # $1.50 a request
    before = make(**settings)
    [first] = before.propose([entry(1, 0.5, name="dpo")], k=1, generation=1)
    before.observe(HistoryEntry(id=2, generation=1, name=first.name, code=first.code, status="scored",
                                fitness=0.55, error=None, parent_ids=(), proposer="openai"))
    saved = json.loads(json.dumps(before.state()))  # the archive stores it as JSON
    assert_no_key(saved)
    after = make(**settings)
    after.load_state(saved)
    assert after.totals["cost_usd"] == pytest.approx(1.5) and after.totals["requests"] == 1
    after.propose([], k=1, generation=2)
    body = server.bodies()[-1]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert "fitness 0.5500" in body["messages"][-1]["content"] and "response_format" not in body  # remembered too
    with pytest.raises(ProposerStop, match="budget of \\$3 reached after 2 requests"):
        after.propose([], k=1, generation=3)
    assert len(server.requests) == 3


# -- several models -------------------------------------------------------------------------------

def test_bandit_chooses_among_models_and_records_the_choice(server, make):
    server.push(*[completion(answer(name=f"c{i}"), prompt_tokens=500, completion_tokens=500) for i in range(4)])
    proposer = make(models=[{"model": "model-a"}, {"model": "model-b"}], selection="ucb",
                    prices={"model-a": {"prompt": 0.01, "completion": 0.01},
                            "model-b": {"prompt": 0.01, "completion": 0.01}})
    history = [entry(1, 0.5, name="dpo")]
    fitness = {"model-a": 0.45, "model-b": 0.7}  # model-b improves on the best, model-a does not
    for i in range(3):
        [cand] = proposer.propose(history, k=1, generation=i)
        assert cand.info["model"] == server.bodies()[-1]["model"]
        history.append(HistoryEntry(id=10 + i, generation=i, name=cand.name, code=cand.code, status="scored",
                                    fitness=fitness[cand.info["model"]] + i / 100, error=None, parent_ids=(),
                                    proposer="openai"))
        proposer.observe(history[-1])
    assert [b["model"] for b in server.bodies()] == ["model-a", "model-b", "model-b"]


@pytest.mark.parametrize("selection", ["thompson", "fixed"])
def test_selection_is_seeded(selection):
    def picks(seed):
        rng = random.Random(seed)
        arms = [Arm("a", None, "K", 1.0), Arm("b", None, "K", 3.0)]
        out = []
        for _ in range(30):
            i = select_arm(arms, selection, rng)
            arms[i].reward(1.0 if i == 1 else 0.2, 1.0)
            out.append(i)
        return out
    assert picks(1) == picks(1) and len(set(picks(1))) == 2


# -- configuration --------------------------------------------------------------------------------

def test_config_file_builds_and_validation_names_the_value(monkeypatch):
    from discopop.config.compose import compose

    cfg = compose(["proposer=openai"])[0]["proposer"]  # conf/proposer/openai.yaml on its schema
    proposer = OpenAIProposer.from_config(cfg, seed=3)
    assert proposer.model == "gpt-4o" and proposer.history_token_budget == 6000 and "gpt-4o" in proposer.prices
    with pytest.raises(ValueError, match=r"temperature=5 is not allowed; expected a number in \[0, 2\]"):
        OpenAIProposer.from_config({**cfg, "temperature": 5}, seed=0)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['temprature'\]"):
        OpenAIProposer.from_config({"name": "openai", "temprature": 1.0}, seed=0)
    with pytest.raises(ValueError, match="history_mode='chat'"):
        OpenAIProposer(history_mode="chat")
    with pytest.raises(ValueError) as err:
        OpenAIProposer(api_key_env=KEY)  # a key pasted where the variable name belongs is not echoed
    assert KEY not in str(err.value) and "api_key_env" in str(err.value)


# -- what fitness is: the run's actual settings reach the model -----------------------------------

def run_facts(overrides: list[str], rows=(), sft: float | None = 0.587):
    from discopop.config.compose import compose_settings
    from discopop.proposers.llm.facts import FitnessFacts

    cfg, _ = compose_settings(overrides)
    return FitnessFacts.from_run(cfg, {"sft_heldout_reward": sft} if sft is not None else {}, rows)


def test_the_system_prompt_states_the_runs_fitness_facts(server, make):
    server.push(completion(answer()))
    proposer = make()
    proposer.set_facts(run_facts(["task.kl_coef=0.05", "training.beta=0.2",
                                  "++training.lr_grid=[2.5e-6,5e-6,1e-5]", "training.epochs=3"]))
    proposer.propose([entry(1, 0.61, name="dpo")], k=1, generation=1)
    system = server.bodies()[0]["messages"][0]["content"]
    assert "minus kl_coef x KL(policy || reference) in nats, with kl_coef = 0.05" in system
    assert "beta = 0.2: the value passed to your loss as `beta`" in system
    assert ("each loss is trained for 3 epochs with Adam and judged at its best learning rate on the grid "
            "[2.5e-06, 5e-06, 1e-05], chosen on the search prompts") in system
    assert "noise level: not yet measured." in system
    assert "mean probability the policy gives the exactly right answer" in system  # task.score=probability
    assert "answers 0.587 of the held-out prompts right greedily" in system


def test_other_settings_give_other_facts():
    # ``++training.lr_grid=null``: one learning rate, whether or not the config has a grid.
    text = P.system_prompt(run_facts(["task.kl_coef=0.3", "training.beta=0.05", "training.learning_rate=2e-5",
                                      "++training.lr_grid=null", "training.epochs=1", "task.score=greedy"], sft=None))
    assert "kl_coef = 0.3" in text and "beta = 0.05:" in text and "kl_coef = 0.05" not in text
    assert "each loss is trained for 1 epoch at learning rate 2e-05 with Adam" in text
    assert "scores not recorded" in text and "mean task reward of its greedy answers" in text


def test_noise_is_the_measured_fresh_seed_spread():
    class Confirmed:
        def __init__(self, std: float, n: int) -> None:
            self.metrics = {"confirmation": {"std": std, "fitness": [0.8] * n}}

    facts = run_facts([], rows=[Confirmed(0.006, 3), Confirmed(0.008, 3), Confirmed(0.5, 1)])
    assert facts.noise_std == pytest.approx(((0.006**2 + 0.008**2) / 2) ** 0.5) and facts.noise_candidates == 2
    assert "about 0.007 (std of fitness over fresh seeds, pooled over 2 confirmed losses)" in facts.render()


def test_archived_losses_carry_their_measured_behaviour():
    diag = ("d loss/d rho at x=-3,0,+3: -0.0953 / -0.05 / -0.00474; "
            "raising the chosen log-prob raises the loss at x = 1, 3")
    scored = HistoryEntry(id=4, generation=1, name="pushy", code=GOOD_CODE, status="scored", fitness=0.7, error=None,
                          parent_ids=(), proposer="openai", diagnostics=diag)
    text, _ = P.build_archive_prompt([scored], generation=2, budget=4000)
    assert f"Measured behaviour (x = beta*rho): {diag}" in text
    assert f"measured behaviour: {diag}" in P.feedback_line(scored)
