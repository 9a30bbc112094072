"""What the LLM is told, and how requests go out: reflection, the paper protocol, the control arm, the chat client.

Everything runs against the loopback OpenAI-protocol server (``tests/openai_server.py``) through
the official client, and asserts on what the server received.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from openai_server import FakeOpenAIServer, Scripted, completion, error, loopback_server

from discopop.proposers.base import HistoryEntry
from discopop.proposers.llm import prompting as P
from discopop.proposers.llm.chat_client import (
    AuthError,
    ChatClient,
    ContextLengthError,
    MissingKeyError,
    ModelNotFoundError,
    QuotaError,
    RequestRejected,
    TransientError,
)
from discopop.proposers.llm.proposer import OpenAIProposer
from discopop.search.history import feedback_fields

KEY_ENV = "DISCOPOP_FEEDBACK_TEST_KEY"
KEY = "sk-feedback-Qw3DISTINCTIVE-fake-key-9090"
SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
RHO = "(policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)"


def code_of(name: str, scale: float = 1.0) -> str:
    return (f"import torch.nn.functional as F\n\n\ndef {name}({SIG}):\n    rho = {RHO}\n"
            f"    return -F.logsigmoid(beta * {scale} * rho)\n")


def answer(name: str) -> str:
    return json.dumps({"thought": f"idea {name}", "name": name, "code": code_of(name)})


@dataclass(frozen=True)
class SeededEntry(HistoryEntry):
    """A history entry as the archive gives it once candidates are re-scored on several seeds."""

    fitness_seeds: tuple[float, ...] = field(default=())
    fitness_lcb: float | None = None


def scored(i: int, fitness: float, **kw) -> HistoryEntry:
    cls = SeededEntry if "fitness_seeds" in kw else HistoryEntry
    return cls(id=i, generation=i, name=f"loss_{i}", code=code_of(f"loss_{i}", 1 + i / 100), status="scored",
               fitness=fitness, error=None, parent_ids=(), proposer="openai", thought=f"idea {i}", **kw)


def failed(i: int, status: str, stage: str, reason: str) -> HistoryEntry:
    return HistoryEntry(id=i, generation=i, name=f"broken_{i}", code=code_of(f"broken_{i}"), status=status,
                        fitness=None, error=reason, parent_ids=(), proposer="openai", stage=stage)


RICH = {"reward": 0.9123, "kl": 0.0456, "learning_rate": 4e-5, "loss_curve": (0.6931, 0.5012, 0.4104),
        "margin_used": (0.31, 1.27), "diagnostics": "d loss/d rho at x=-3,0,+3: -0.953 / -0.5 / -0.0474"}


@pytest.fixture
def server(monkeypatch):
    with loopback_server(monkeypatch, KEY_ENV, KEY) as srv:
        yield srv


@pytest.fixture
def make(server):
    made: list[OpenAIProposer] = []

    def build(**kw) -> OpenAIProposer:
        settings = {"model": "test-model", "base_url": server.url, "api_key_env": KEY_ENV, "timeout": 5.0,
                    "backoff_base": 0.01, "backoff_max": 0.04, "max_retries": 2, **kw}
        made.append(OpenAIProposer(sleep=lambda s: None, **settings))
        return made[-1]

    yield build
    for proposer in made:
        proposer.close()


# -- the default prompt: each shown loss with its results ------------------------------------------

def test_archive_prompt_shows_each_losss_results_and_failures_with_stage(server, make):
    history = [
        scored(1, 0.9000, fitness_seeds=(0.89, 0.90, 0.91), fitness_lcb=0.8800, **RICH),
        scored(2, 0.8000),  # one seed, nothing else recorded: said so, nothing invented
        failed(3, "train_failed", "train", "loss became NaN at step 3"),
        failed(4, "invalid", "static", "line 2: import of 'numpy' is not allowed"),
    ]
    server.push(completion(answer("next")))
    make().propose(history, k=1, generation=5)
    user = server.bodies()[0]["messages"][1]["content"]
    best = user[user.index("### id 1"):user.index("### id 2")]
    assert "Fitness: 0.9000, mean 0.9000 ± 0.0100 (std) over 3 seeds: 0.8900, 0.9000, 0.9100, lower confidence " \
           "bound 0.8800." in best
    assert "held-out reward 0.9123, KL to the reference 0.0456 nats, at learning rate 4e-05" in best
    assert "Training loss (mean over first / middle / last third of steps): 0.6931 → 0.5012 → 0.4104 (-41%)" in best
    assert "median 0.31, 90% below 1.27" in best and f"Measured behaviour (x = beta*rho): {RICH['diagnostics']}" in best
    plain = user[user.index("### id 2"):]
    assert "Fitness: 0.8000, 1 seed (compare differences with the noise level" in plain
    assert "held-out reward" not in plain and "Training loss" not in plain.split("```")[0]
    assert "- id 3 `broken_3` (train_failed) at stage train: loss became NaN at step 3" in user
    assert "- id 4 `broken_4` (invalid) at stage static: line 2: import of 'numpy' is not allowed" in user


def test_rich_history_stays_within_the_token_budget():
    history = []
    for i in range(1, 201):
        if i % 5 == 0:
            history.append(failed(i, "train_failed", "train", f"loss became NaN at step {i}"))
        else:
            fitness = 0.5 + (i % 37) / 100  # selection ranks by the lower bound: keep it in the fitness's order
            history.append(scored(i, fitness, fitness_seeds=(0.5, 0.51, 0.52), fitness_lcb=fitness - 0.01, **RICH))
    best = max((e for e in history if e.fitness is not None), key=lambda e: (e.fitness, -e.id))
    for budget in (1500, 6000):
        text, shown = P.build_archive_prompt(history, 200, budget, top_k=20, recent_k=20, failures_k=20)
        assert P.estimate_tokens(text) <= budget and shown[0] == best.id
        assert "held-out reward 0.9123" in text and "at stage train" in text
    big, _ = P.build_archive_prompt(history, 200, 6000, top_k=20, recent_k=20, failures_k=20)
    assert P.estimate_tokens(big) > 4500  # the budget, not the k's, is what binds here


def test_noise_from_re_scored_candidates_reaches_the_system_prompt(server, make):
    from discopop.proposers.llm.facts import FitnessFacts

    server.push(completion(answer("a")), completion(answer("b")))
    proposer = make()
    proposer.set_facts(FitnessFacts(kl_coef=0.0, beta=0.5, learning_rates=(1e-5,)))
    proposer.propose([scored(1, 0.8)], k=1, generation=1)  # one seed each: nothing to measure yet
    history = [scored(1, 0.8, fitness_seeds=(0.80, 0.82)), scored(2, 0.7, fitness_seeds=(0.70, 0.70, 0.73))]
    proposer.propose(history, k=1, generation=2)
    before, after = (b["messages"][0]["content"] for b in server.bodies())
    assert "noise level: not yet measured." in before
    expected = ((0.02**2 / 2 + 0.0003) / 2) ** 0.5  # sample variances 0.0002 and 0.0003, pooled
    assert f"noise level: about {expected:.3f} (std of fitness over search seeds, pooled over 2 re-scored" in after


def test_conversation_feedback_carries_the_results(server, make):
    server.push(completion(answer("first")), completion(answer("second")))
    proposer = make(history_mode="conversation")
    [first] = proposer.propose([], k=1, generation=1)
    result = SeededEntry(id=7, generation=1, name=first.name, code=first.code, status="scored", fitness=0.61,
                         error=None, parent_ids=(), proposer="openai", fitness_seeds=(0.6, 0.62), **RICH)
    proposer.observe(result)
    proposer.propose([], k=1, generation=2)
    turn = server.bodies()[1]["messages"][-1]["content"]
    assert "`first` (id 7): fitness 0.6100, mean 0.6100 ± 0.0141 (std) over 2 seeds" in turn
    assert "KL to the reference 0.0456 nats" in turn and "0.6931 → 0.5012 → 0.4104" in turn


def test_archived_metrics_become_reflection_fields():
    metrics = {"reward": 0.9, "kl": 0.05, "learning_rate": 2e-5, "stage": "score",
               "train": {"loss_start": 0.69, "loss_mid": 0.6, "loss_end": 0.55, "margin_abs_q50": 0.2,
                         "margin_abs_q90": 0.9, "rewards/margins": 0.1}}
    assert feedback_fields(metrics) == {"reward": 0.9, "kl": 0.05, "learning_rate": 2e-5,
                                        "loss_curve": (0.69, 0.6, 0.55), "margin_used": (0.2, 0.9), "stage": "score"}
    assert feedback_fields({}) == {"reward": None, "kl": None, "learning_rate": None, "loss_curve": (),
                                   "margin_used": (), "stage": ""}
    assert feedback_fields({"train": {"loss_start": 0.7}, "reward": "n/a"})["loss_curve"] == ()


# -- the control arm -------------------------------------------------------------------------------

def test_history_mode_none_shows_no_archive_content(server, make):
    history = [scored(1, 0.9321, **RICH), failed(2, "invalid", "static", "import of 'numpy' is not allowed")]
    server.push(*[completion(answer(f"blind_{i}")) for i in range(3)])
    proposer = make(history_mode="none")
    batch = proposer.propose(history, k=3, generation=9)
    assert [c.error for c in batch] == [None] * 3 and all(c.parent_ids == [] for c in batch)
    bodies = server.bodies()
    assert len(bodies) == 3 and all(b["messages"] == bodies[0]["messages"] for b in bodies)
    system, user = bodies[0]["messages"]
    assert user["content"] == P.build_blind_prompt() and system["content"] == P.system_prompt()
    sent = json.dumps(bodies[0]["messages"])
    for leaked in ("loss_1", "broken_2", "0.9321", "numpy", "0.9123", "Generation 9", "smooth"):
        assert leaked not in sent
    proposer.observe(HistoryEntry(id=3, generation=9, name=batch[0].name, code=batch[0].code, status="scored",
                                  fitness=0.99, error=None, parent_ids=(), proposer="openai"))
    server.push(completion(answer("blind_3")))
    proposer.propose(history, k=1, generation=10)
    assert server.bodies()[-1]["messages"] == bodies[0]["messages"]  # results never come back


# -- the paper protocol ----------------------------------------------------------------------------

def test_paper_protocol_is_one_growing_conversation_with_fitness_only(server, make):
    history = [scored(1, 0.61, **RICH), scored(2, 0.58), failed(3, "invalid", "static", "numpy")]
    server.push(*[completion(answer(n)) for n in ("p1", "p2", "p3")])
    proposer = make(history_mode="conversation", protocol="paper", max_repairs=0,
                    history_token_budget=100000)
    from discopop.proposers.llm.facts import FitnessFacts

    proposer.set_facts(FitnessFacts(kl_coef=0.05, beta=0.5, learning_rates=(1e-5,), sft_reward=0.4))
    [first] = proposer.propose(history, k=1, generation=1)
    proposer.observe(HistoryEntry(id=4, generation=1, name=first.name, code=first.code, status="scored",
                                  fitness=0.4242, error=None, parent_ids=(), proposer="openai", **RICH))
    [second] = proposer.propose(history, k=1, generation=2)
    proposer.observe(HistoryEntry(id=5, generation=2, name=second.name, code=second.code, status="train_failed",
                                  fitness=None, error="loss became NaN at step 3", parent_ids=(), proposer="openai",
                                  stage="train"))
    proposer.propose(history, k=1, generation=3)

    bodies = server.bodies()
    assert [[m["role"] for m in b["messages"]] for b in bodies] == [
        ["system", "user"], ["system", "user", "assistant", "user"],
        ["system", "user", "assistant", "user", "assistant", "user"]]
    assert bodies[2]["messages"][:4] == bodies[1]["messages"]  # the same conversation, grown by one exchange
    system, opening = bodies[0]["messages"]
    assert system["content"] == P.paper_system_prompt() and '"thought"' in system["content"]
    assert "kl_coef" not in system["content"]  # the paper's prompt states no run facts
    listed = json.loads(opening["content"][opening["content"].index("["):opening["content"].rindex("]") + 1])
    assert listed == [{"code": e.code.strip(), "fitness": e.fitness} for e in history[:2]]
    assert bodies[1]["messages"][2]["content"] == answer("p1")
    assert bodies[1]["messages"][3]["content"] == "Fitness: 0.4242.\n\nPropose the next one."
    last = bodies[2]["messages"][5]["content"]
    assert last == "The code could not be used. Error: loss became NaN at step 3\n\nPropose the next one."
    assert bodies[0]["response_format"] == {"type": "json_object"}


def test_paper_protocol_needs_the_conversation():
    with pytest.raises(ValueError, match="history_mode='archive' is not allowed; expected 'conversation' with "
                                         "protocol='paper'"):
        OpenAIProposer(protocol="paper")
    with pytest.raises(ValueError, match="protocol='eureka'"):
        OpenAIProposer(protocol="eureka", history_mode="conversation")


def test_paper_preset_composes():
    from discopop.config.compose import compose
    from discopop.proposers import build_proposer

    cfg, _ = compose(["proposer=openai_paper"])
    proposer = build_proposer(cfg["proposer"], seed=0)
    assert (proposer.protocol, proposer.history_mode, proposer.max_repairs) == ("paper", "conversation", 0)


# -- concurrency -----------------------------------------------------------------------------------

class InFlight:
    """Answers by model name after a per-model delay, and counts the requests in flight at once."""

    def __init__(self, delays: dict[str, float]):
        self.delays, self.now, self.most = delays, 0, 0
        self.lock = threading.Lock()

    def __call__(self, body) -> Scripted:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.delays[body["model"]])
        with self.lock:
            self.now -= 1
        return completion(answer(f"from_{body['model'].replace('-', '_')}"), model=body["model"])


@pytest.mark.parametrize("delays", [{"m-a": 0.3, "m-b": 0.2, "m-c": 0.1, "m-d": 0.0},
                                    {"m-a": 0.0, "m-b": 0.1, "m-c": 0.2, "m-d": 0.3}], ids=["last-first", "in-order"])
def test_concurrent_requests_are_bounded_and_kept_in_request_order(monkeypatch, delays):
    monkeypatch.setenv(KEY_ENV, KEY)
    responder = InFlight(delays)
    srv = FakeOpenAIServer(responder=responder).start()
    try:
        proposer = OpenAIProposer(models=[{"model": m} for m in delays], base_url=srv.url, api_key_env=KEY_ENV,
                                  max_concurrency=2, timeout=5.0)
        batch = proposer.propose([scored(1, 0.5)], k=4, generation=1)  # ucb tries every model once, in order
        proposer.close()
    finally:
        srv.stop()
    assert [c.name for c in batch] == ["from_m_a", "from_m_b", "from_m_c", "from_m_d"]
    assert [c.info["model"] for c in batch] == list(delays)
    assert responder.most == 2  # two at a time: bounded, and really concurrent
    assert all(c.parent_ids == [1] for c in batch)


# -- the chat client -------------------------------------------------------------------------------

def client(server, sleeps: list[float] | None = None, **kw) -> ChatClient:
    return ChatClient(model="test-model", base_url=server.url, api_key_env=KEY_ENV, timeout=5.0, max_retries=2,
                      backoff_base=0.01, backoff_max=0.04, sleep=(sleeps if sleeps is not None else []).append, **kw)


@pytest.mark.parametrize("reply, kind, says", [
    (error(401, f"Incorrect API key provided: {KEY}.", code="invalid_api_key", type_="authentication_error"),
     AuthError, f"refused the API key from ${KEY_ENV} (HTTP 401)"),
    (error(429, "You exceeded your current quota", code="insufficient_quota"), QuotaError, "no quota left"),
    (error(404, "The model does not exist"), ModelNotFoundError, "model 'test-model'"),
    (error(400, f"maximum context length is 8192 tokens (key {KEY})", code="context_length_exceeded"),
     ContextLengthError, "maximum context length is 8192 tokens (key ***)"),
    (error(422, f"bad value near {KEY}"), RequestRejected, "HTTP 422"),
], ids=["auth", "quota", "model", "context", "rejected"])
def test_chat_client_types_each_failure_and_never_shows_the_key(server, reply, kind, says):
    server.push(reply)
    chat = client(server)
    with pytest.raises(kind) as err:
        chat.complete([{"role": "user", "content": "hi"}])
    assert says in str(err.value) and KEY not in str(err.value) and "\n" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no server object rides along
    assert len(server.requests) == 1 and err.value.retries == 0  # none of these is retried
    chat.close()


def test_chat_client_retries_with_backoff_and_honours_retry_after(server):
    sleeps: list[float] = []
    server.push(error(503, "overloaded", type_="server_error", headers={"Retry-After": "2"}),
                error(500, "boom", type_="server_error"), completion("ok", prompt_tokens=7, completion_tokens=3))
    reply = client(server, sleeps).complete([{"role": "user", "content": "hi"}], temperature=0.5, max_tokens=9)
    assert (reply.text, reply.retries, reply.failed_requests) == ("ok", 2, 2)
    assert (reply.prompt_tokens, reply.completion_tokens) == (7, 3)
    assert sleeps[0] == 2.0 and 0.01 <= sleeps[1] <= 0.02  # Retry-After, then the jittered second step
    assert server.bodies()[0]["temperature"] == 0.5 and server.bodies()[0]["max_tokens"] == 9
    server.push(*[error(500, f"still down {KEY}", type_="server_error")] * 3)
    with pytest.raises(TransientError, match=r"^HTTP 500 after 2 retries$") as err:
        client(server, []).complete([{"role": "user", "content": "hi"}])
    assert (err.value.retries, err.value.failed_requests) == (2, 3)


def test_chat_client_falls_back_from_json_mode(server):
    server.push(error(400, "response_format is not supported"), completion("plain"))
    reply = client(server).complete([{"role": "user", "content": "hi"}], json_mode=True)
    assert (reply.text, reply.json_mode, reply.json_rejected) == ("plain", False, True)
    first, second = server.bodies()
    assert first["response_format"] == {"type": "json_object"} and "response_format" not in second
    server.push(error(400, "response_format is not supported"), error(400, "messages must not be empty"))
    with pytest.raises(RequestRejected, match="messages must not be empty"):
        client(server).complete([{"role": "user", "content": "hi"}], json_mode=True)


def test_chat_client_needs_a_key_only_for_remote_endpoints(monkeypatch, server):
    monkeypatch.delenv(KEY_ENV)
    remote = ChatClient(model="m", base_url="https://llm.invalid/v1", api_key_env=KEY_ENV)
    with pytest.raises(MissingKeyError, match=f"environment variable {KEY_ENV} is not set"):
        remote.complete([{"role": "user", "content": "hi"}])
    server.push(completion("local"))
    assert client(server).complete([{"role": "user", "content": "hi"}]).text == "local"
    assert server.requests[0]["headers"]["authorization"] == "Bearer EMPTY"


def test_best_section_shows_other_behaviour_cells_not_only_the_leaders_variations():
    """Four near-equal variants of one shape lead; a weaker loss of another shape still gets shown."""
    leaders = [scored(i, 0.95 - i / 1000, behaviour_cell=(1, 1, 1, 1)) for i in range(1, 5)]
    other = scored(5, 0.80, behaviour_cell=(0, 2, 1, 0))
    best = P.best_and_diverse([*leaders, other], 3)
    assert [e.id for e in best] == [1, 2, 5]  # the top half by rank, then the other cell's elite
    text, shown = P.build_archive_prompt([*leaders, other], 6, 6000, top_k=3)
    assert shown[:3] == [1, 2, 5] and "### id 5: loss_5" in text
    same_shape = P.best_and_diverse(leaders, 3)  # one cell only: filled from the ranking
    assert [e.id for e in same_shape] == [1, 2, 3]
