"""The LLM judge against a real OpenAI-protocol server on 127.0.0.1 (tests/openai_server.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer, completion, error

from discopop.archive import Archive
from discopop.config.compose import ConfigError, resolve_run
from discopop.execution.executors import Executor, Job, JobResult
from discopop.execution.messages import CheckReply, TrainReply
from discopop.fitness.judge import Judge, JudgedExecutor, JudgeFailed, JudgeStop, normalised, parse_rating
from discopop.fitness.tuning import LrProtocol
from discopop.proposers.base import Candidate
from discopop.proposers.llm.metering import Meter
from discopop.search.cascade import Evaluator

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-judge-Qw3DISTINCTIVE-fake-key-0042"
PROMPTS = ["Summarise: the cat sat on the mat.", "Summarise: it rained all day.", "Continue: I loved this film"]
ANSWERS = [" A cat sat.", " Rain.", " because it was great"]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


def judge_cfg(server: FakeOpenAIServer, **extra) -> dict:
    return {"model": "judge-model", "base_url": server.url, "api_key_env": "DISCOPOP_TEST_JUDGE_KEY",
            "backoff_base": 0.0, "backoff_max": 0.0, "concurrency": 1, **extra}


@pytest.fixture(autouse=True)
def key(monkeypatch) -> None:
    monkeypatch.setenv("DISCOPOP_TEST_JUDGE_KEY", KEY)


@pytest.mark.parametrize(("text", "rating"), [
    ("Clear and faithful. [[7]]", 7.0), ("Rating: [[ 8.5 ]]", 8.5), ("The scale is [[1]] to [[10]]; I give [[4]]", 4.0),
    ("I would say [6].", 6.0), ("Rating: 9", 9.0), ("overall 3/10", 3.0), ("[[11]]", None), ("[[0]]", None),
    ("no grade here", None), ("", None),
])
def test_parse_rating(text: str, rating: float | None) -> None:
    assert parse_rating(text) == rating


def test_grades_through_the_endpoint_with_the_template_and_caches_each_answer(server, tmp_path: Path) -> None:
    server.push(completion("Fine. [[7]]"), completion("Poor. [[2]]"), completion("Great. [[10]]"))
    judge = Judge(judge_cfg(server), tmp_path / "judge.sqlite")
    grades = judge.grade(PROMPTS, ANSWERS)
    assert grades.ratings == [7.0, 2.0, 10.0] and grades.requests == 3 and grades.cached == 0
    bodies = server.bodies()
    assert [b["model"] for b in bodies] == ["judge-model"] * 3 and bodies[0]["temperature"] == 0.0
    sent = bodies[0]["messages"][0]["content"]
    assert PROMPTS[0] in sent and ANSWERS[0] in sent and "[[6]]" in sent  # the packaged template, filled in
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    again = judge.grade(PROMPTS, ANSWERS)  # the same (prompt, completion): no request
    assert again.ratings == grades.ratings and again.cached == 3 and len(server.requests) == 3
    judge.close()
    resumed = Judge(judge_cfg(server), tmp_path / "judge.sqlite")  # a resumed run reads the run's cache
    assert resumed.grade(PROMPTS[:2], ANSWERS[:2]).ratings == [7.0, 2.0] and len(server.requests) == 3
    server.push(completion("[[5]]"))
    assert resumed.grade([PROMPTS[0]], [" Another answer."]).ratings == [5.0] and len(server.requests) == 4
    resumed.close()


def test_tokens_and_cost_count_into_the_shared_budget(server, tmp_path: Path) -> None:
    meter = Meter({"judge-model": {"prompt": 1.0, "completion": 2.0}}, max_cost_usd=0.5)  # the proposer's
    server.push(completion("[[6]]", prompt_tokens=100, completion_tokens=50),
                completion("[[8]]", prompt_tokens=200, completion_tokens=10))
    judge = Judge(judge_cfg(server), tmp_path / "judge.sqlite", meter=meter)
    grades = judge.grade(PROMPTS[:2], ANSWERS[:2])
    assert grades.usage["prompt_tokens"] == 300 and grades.usage["completion_tokens"] == 60
    assert grades.usage["cost_usd"] == pytest.approx(0.3 + 0.12)
    assert meter.totals["cost_usd"] == pytest.approx(0.42) and meter.totals["prompt_tokens"] == 300
    server.push(completion("[[6]]", prompt_tokens=100, completion_tokens=0))
    judge.grade([PROMPTS[2]], [ANSWERS[2]])  # 0.52 spent: over the budget now
    with pytest.raises(JudgeStop, match=r"budget of \$0.5 reached"):
        judge.grade(["a new prompt"], ["a new answer"])
    assert len(server.requests) == 3  # the stop came before any new request
    assert judge.grade(PROMPTS[:2], ANSWERS[:2]).ratings == [6.0, 8.0]  # cached ratings still cost nothing
    judge.close()
    from discopop.proposers.llm.proposer import OpenAIProposer

    proposer = OpenAIProposer(model="m", base_url=server.url, api_key_env="DISCOPOP_TEST_JUDGE_KEY")
    assert isinstance(proposer.meter, Meter) and proposer.meter.totals is proposer.totals  # what the loop shares
    own = Judge(judge_cfg(server, prices={"judge-model": {"prompt": 1.0, "completion": 2.0}}, max_cost_usd=10.0),
                tmp_path / "judge.sqlite")
    assert own.meter.totals["cost_usd"] == pytest.approx(0.52)  # the judge's own budget spans resumes
    own.close()


def test_a_lying_servers_usage_is_clamped_not_a_crash(server, tmp_path: Path) -> None:
    """Usage a server makes up ("lots", negative, absurd) never stops grading: it is charged as the most a request may
    cost (``metering.sane_tokens``), so a budget still holds."""
    from discopop.proposers.llm.metering import MAX_TOKENS_PER_REQUEST

    lying = completion("[[6]]")
    lying.body["usage"] = {"prompt_tokens": "lots", "completion_tokens": -5, "total_tokens": None}
    server.push(lying)
    judge = Judge(judge_cfg(server), tmp_path / "judge.sqlite")
    grades = judge.grade(PROMPTS[:1], ANSWERS[:1])
    judge.close()
    assert grades.ratings == [6.0]
    assert grades.usage["prompt_tokens"] == MAX_TOKENS_PER_REQUEST
    assert grades.usage["completion_tokens"] == MAX_TOKENS_PER_REQUEST


def test_an_endpoint_that_stops_answering_stops_the_run_instead_of_failing_the_loss(server, tmp_path: Path) -> None:
    sleeps: list[float] = []
    judge = Judge(judge_cfg(server, max_retries=2), tmp_path / "j.sqlite", sleep=sleeps.append)
    server.push(completion("[[6]]"))
    assert judge.grade(PROMPTS[:1], ANSWERS[:1]).ratings == [6.0]
    server.stop()  # the endpoint goes away mid-run: connection refused from now on
    with pytest.raises(JudgeStop, match=r"stopped answering: connection error .* after 3 requests"):
        judge.grade(PROMPTS[1:2], ANSWERS[1:2])
    assert len(sleeps) == 2  # retried (bounded) before giving up
    judge.close()


def test_failures_are_retried_then_reported_with_the_reason(server, tmp_path: Path) -> None:
    sleeps: list[float] = []
    judge = Judge(judge_cfg(server, max_retries=2, backoff_base=0.5, backoff_max=1.0), tmp_path / "j.sqlite",
                  sleep=sleeps.append)
    server.push(error(503, "overloaded", type_="server_error"), completion("I like it, maybe a seven"),
                completion("Good. [[7]]"))
    assert judge.grade(PROMPTS[:1], ANSWERS[:1]).ratings == [7.0]  # a 503 and an unparseable answer, retried
    assert len(server.requests) == 3 and sleeps == [0.5, 1.0]
    server.push(*[error(500, "boom", type_="server_error")] * 3)
    with pytest.raises(JudgeFailed, match=r"1 of 1 completions ungraded; first: HTTP 500: boom \(after 3 requests\)"):
        judge.grade(PROMPTS[1:2], ANSWERS[1:2])
    server.push(*[completion("I cannot grade this.")] * 3)
    with pytest.raises(JudgeFailed, match="no 1-10 rating like"):
        judge.grade(PROMPTS[2:], ANSWERS[2:])
    server.push(error(401, "bad key", code="invalid_api_key", type_="authentication_error"))
    with pytest.raises(JudgeStop, match="refused the API key from \\$DISCOPOP_TEST_JUDGE_KEY"):
        judge.grade(["p"], ["c"])
    judge.close()


def test_the_key_is_redacted_from_recorded_errors(server, tmp_path: Path) -> None:
    judge = Judge(judge_cfg(server, max_retries=0), tmp_path / "j.sqlite")
    server.push(error(400, f"invalid request from key {KEY} (also sk-otherLEAKED123)"))
    with pytest.raises(JudgeFailed) as caught:
        judge.grade(PROMPTS[:1], ANSWERS[:1])
    assert KEY not in str(caught.value) and "sk-otherLEAKED123" not in str(caught.value)
    assert "HTTP 400" in str(caught.value) and "***" in str(caught.value)
    judge.close()


def test_a_pasted_key_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    base = ["task=hub", "task.model=m", "task.dataset=d", "task.judge.model=gpt-4o-mini", f"hydra.run.dir={tmp_path}"]
    for pasted in (f"task.judge.api_key_env={KEY}", f"+task.judge.api_key={KEY}"):
        with pytest.raises(ConfigError) as caught:
            resolve_run(1, None, [*base, pasted])
        assert KEY not in str(caught.value) and "not saved" in str(caught.value)
    cfg, _ = resolve_run(1, None, base)  # a variable name is fine, and composing needs no key
    assert cfg.task.judge.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ConfigError, match="reward_model or task.judge.model, not both"):
        resolve_run(1, None, [*base, "task.reward_model=r"])
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_run(1, None, [*base, "+task.judge.colour=red"])
    assert list(tmp_path.iterdir()) == []


class ReplayExecutor(Executor):
    """Answers jobs as a worker would for a judged task of 3 prompts; the judge wrapper is what is tested."""

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        for job in jobs:
            if job.stage == "check":
                yield JobResult(job, True, "check", reply=CheckReply({}))
                continue
            yield JobResult(job, True, "train", reply=TrainReply(
                fitness=-0.01, reward=0.0, kl=0.2, kl_coef=0.05, per_prompt=[0.0] * 3,
                per_prompt_kl=[0.1, 0.2, 0.3], steps=4, final_loss=0.6, train_seconds=1.0,
                step_seconds=0.5, score_seconds=0.1, train_metrics={}, learning_rate=job.learning_rate,
                completions=list(ANSWERS)), seconds=1.0)

    def close(self) -> None:
        pass


def test_judged_fitness_and_eval_failed_through_the_cascade(server, tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive.sqlite")
    code = (REPO / "proposals" / "dpo.py").read_text()
    judged = JudgedExecutor(ReplayExecutor(), Judge(judge_cfg(server, max_retries=1), tmp_path / "judge.sqlite"),
                            lambda split: list(PROMPTS))
    evaluator = Evaluator(archive, judged, seed=0, protocol=LrProtocol(grid=(1e-5,), screen_margin=None))
    server.push(completion("[[7]]"), completion("[[4]]"), completion("[[10]]"))
    ok = archive.add(Candidate(name="dpo", code=code, proposer="reference"), 0)
    (outcome,) = evaluator.evaluate([archive.get(ok)])
    # the row's fitness is the ranking half of the prompts (odd indices: the second of three) at the rate the
    # other half chose (fitness.tuning.split_fitness); the evaluation keeps every prompt
    expected = normalised(4) - 0.05 * 0.2
    assert outcome.status == "scored" and outcome.fitness == pytest.approx(expected)
    assert outcome.metrics["judge"]["mean_rating"] == pytest.approx(7.0) and outcome.metrics["judge"]["requests"] == 3
    (evaluation,) = archive.evaluations(ok)
    assert evaluation.per_prompt == pytest.approx([normalised(7), normalised(4), normalised(10)])
    judged.prompts = lambda split: [p + "?" for p in PROMPTS]  # new (prompt, completion) pairs: not cached
    server.push(completion("no idea"), completion("still no idea"), completion("[[5]]"), completion("[[5]]"))
    hinge = (REPO / "proposals" / "hinge.py").read_text()
    bad = archive.add(Candidate(name="hinge", code=hinge, proposer="reference"), 0)
    (outcome,) = evaluator.evaluate([archive.get(bad)])
    assert outcome.status == "eval_failed" and outcome.metrics["stage"] == "score"
    assert re.match(r"judge: 1 of 3 completions ungraded; first: no 1-10 rating", outcome.error or ""), outcome.error
    assert len(server.requests) == 7
    judged.close()


def test_the_judge_wrapper_passes_on_where_its_workers_train(server, tmp_path: Path) -> None:
    """The reference store's key holds the device the executor reports (``auto`` resolved): a judged run must report
    its workers' device too, or results trained on one device would be served to a run on another."""

    class OnCuda(ReplayExecutor):
        device = "cuda"
        parallelism = 3

    judged = JudgedExecutor(OnCuda(), Judge(judge_cfg(server), tmp_path / "judge.sqlite"), lambda split: list(PROMPTS))
    assert (judged.device, judged.parallelism) == ("cuda", 3)
    judged.close()
