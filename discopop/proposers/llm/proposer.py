"""LLM proposer for any OpenAI-compatible chat-completions endpoint (the DiscoPOP protocol).

The strategy lives here: what each request asks (see ``history_mode`` and ``protocol`` below),
which model to ask, and what a failure means for the run. The network lives in
:mod:`discopop.proposers.llm.chat_client` (retries, backoff, JSON fallback, typed errors, redaction).
Failures are data, not crashes: an unparseable answer (or a request the server rejected) is
archived as the candidate's error; bad credentials, an unknown model, no quota, a spent budget or
an endpoint unreachable through every retry (connection errors, timeouts, 429 / 5xx: the transport,
not the loss) stop the run (:class:`ProposerStop`), and ``--resume`` asks that request again.
The API key is read from an environment variable when the first request is made; only the HTTP
client holds it, never this object's fields, ``Candidate.info``, a log line or an exception message.

Several proposals asked in one ``propose`` call (``k > 1``) go out concurrently, at most
``max_concurrency`` at a time; everything that changes state (spending, the bandit, parsing) is
then done in request order, so the archive depends only on the server's answers, not on timing.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from discopop.proposers.base import Candidate, HistoryEntry, Proposer, ProposerStop
from discopop.proposers.llm import prompting as P
from discopop.proposers.llm.chat_client import (
    ChatClient,
    ChatError,
    ChatReply,
    ChatStop,
    ContextLengthError,
    TransientError,
)
from discopop.proposers.llm.facts import FitnessFacts, seed_noise
from discopop.proposers.llm.options import MIN_HISTORY_BUDGET, Arm, Meter, plain, select_arm, validate
from discopop.proposers.llm.parsing import ProposalParseError, parse_proposal
from discopop.status import Status

logger = logging.getLogger(__name__)
MAX_RAW_CHARS = 4000  # an unparseable answer is archived this far, enough to see what went wrong
Build = Callable[[int], list[P.Message]]


@dataclass
class Fetched:
    """What one request brought back, before any accounting: an answer or the reason there is none."""

    reply: ChatReply | None
    error: ChatError | None
    info: dict[str, Any]
    sent: list[P.Message] = field(default_factory=list)
    failed_requests: int = 0


@dataclass
class Job:
    """One request to make: the model to ask, how to build the prompt for a budget, what to record."""

    arm: int
    build: Build
    attempt: int = 0
    parents: list[int] = field(default_factory=list)
    shown: list[int] | None = None  # archive mode: filled with the ids of the best entries the prompt showed


class OpenAIProposer(Proposer):
    """Proposes losses by asking a chat model. Fields (all constructor keywords):

    - model: model id sent to the endpoint (default "gpt-4o").
    - base_url: endpoint root such as "http://localhost:8000/v1"; None = OpenAI's default.
    - api_key_env: environment variable holding the key (default "OPENAI_API_KEY"). If it is unset,
      a local base_url gets "EMPTY" and any other endpoint stops the run with a clear line.
    - temperature (0..2), max_tokens (answer length cap), timeout (seconds per request).
    - json_mode: ask for response_format={"type": "json_object"}; a server that rejects it with
      HTTP 400 is asked again in plain text, and remembered.
    - history_mode: "archive" (a fresh prompt from the archive each time, with each shown loss's
      results: fitness and its uncertainty, reward, KL, training-loss curve, shape; failures with
      stage and reason), "conversation" (one running chat, results fed back after each proposal),
      or "none" (the control arm: every request sees only the task and the contract).
    - protocol: "default" or "paper" (the paper's protocol: one growing conversation, each answer
      gets only its fitness or its error back; needs history_mode="conversation").
    - history_token_budget: estimated tokens the history may take in one request (default 6000);
      halved whenever the server reports the context length exceeded.
    - top_k, recent_k, failures_k: how many best, most recent and failed candidates a prompt shows.
    - max_repairs: repair attempts the loop may ask for per failed candidate (default 2).
    - max_concurrency: requests in flight at once when one call asks for several proposals.
    - lookahead: 1 (default) = the loop asks for the next generation while this one trains, from the
      history as it stood before this generation's evaluation (feedback one generation late; workers
      are not idle during requests); 0 = lock step.
    - max_retries, backoff_base, backoff_max: retries of 429/5xx/timeouts, exponential backoff
      with jitter in seconds; a Retry-After header wins.
    - max_cost_usd: stop the run once this much is spent (None = unlimited); concurrent requests
      may overshoot it by up to max_concurrency - 1 requests.
    - prices: {model: {"prompt": usd_per_1k_tokens, "completion": usd_per_1k_tokens}}; a model
      without a price is counted in tokens only (warned once).
    - models: optional list of {model, base_url, api_key_env, weight} to choose among; base_url
      and api_key_env default to the top-level ones.
    - selection: "ucb" or "thompson" (bandit on fitness gain per cost) or "fixed" (weights).
    - seed: seeds all randomness (backoff jitter, Thompson sampling, fixed-weight choice).
    - sleep: the backoff sleep (tests pass a recorder); not a config field.
    """

    name = "openai"

    def __init__(self, *, sleep: Callable[[float], None] | None = None, **kwargs: Any):
        cfg = validate(kwargs)
        for key, value in cfg.items():
            if key not in ("models", "model", "base_url", "api_key_env"):
                setattr(self, key, value)
        self.model, self.base_url, self.api_key_env = cfg["model"], cfg["base_url"], cfg["api_key_env"]
        self.models = cfg["models"]
        arms = cfg["models"] or [{"model": cfg["model"]}]
        self._arms = [Arm(a["model"], a.get("base_url", cfg["base_url"]), a.get("api_key_env", cfg["api_key_env"]),
                           float(a.get("weight", 1.0))) for a in arms]
        self._rng = random.Random(cfg["seed"])
        self._budget = cfg["history_token_budget"]
        self._clients = [ChatClient(model=a.model, base_url=a.base_url, api_key_env=a.api_key_env,
                                    timeout=cfg["timeout"], max_retries=cfg["max_retries"],
                                    backoff_base=cfg["backoff_base"], backoff_max=cfg["backoff_max"],
                                    seed=cfg["seed"] * 1000 + i, sleep=sleep) for i, a in enumerate(self._arms)]
        self._lock = threading.Lock()  # the history budget, shared by concurrent requests
        self._warned: set[str] = set()
        self.facts: FitnessFacts | None = None  # set by the loop (set_facts) once the task is loaded
        self._conversation: list[P.Message] = [{"role": "system", "content": self._system_prompt()}]
        self._feedback: list[str] = []
        self._pending: dict[str, tuple[int, float, str]] = {}  # code -> (arm, cost, name) until its result is seen
        self._seen: set[int] = set()
        self._best: float | None = None
        self._meter = Meter(cfg["prices"], cfg["max_cost_usd"])
        self.totals = self._meter.totals  # requests, failed_requests, prompt/completion tokens, cost_usd

    @property
    def meter(self) -> Meter:
        """The run's spending: the LLM judge counts into it too, so ``max_cost_usd`` caps both."""
        return self._meter

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], seed: int) -> OpenAIProposer:
        """Build from the hydra group as a plain mapping (its "name" key is ignored)."""
        cfg = plain(cfg)
        if cfg.pop("name", "openai") != "openai":
            raise ValueError(f"openai proposer: config name must be 'openai', got {cfg!r}")
        cfg.pop("seed", None)  # the run's seed wins over one left in the group
        return cls(**cfg, seed=seed)

    def __repr__(self) -> str:
        models = ", ".join(a.model for a in self._arms)
        return (f"OpenAIProposer(models=[{models}], base_url={self.base_url!r}, api_key_env={self.api_key_env!r}, "
                f"history_mode={self.history_mode!r}, selection={self.selection!r})")

    # -- the Proposer interface -------------------------------------------------------------

    def propose(self, history: list[HistoryEntry], k: int, generation: int) -> list[Candidate]:
        self._meter.check()
        for entry in history:
            self._absorb(entry)
        self._update_noise(history)
        if self.history_mode == "conversation":  # one thread of turns: each request waits for the last answer
            out: list[Candidate] = []
            for _ in range(k):
                if out and self._meter.spent():
                    break  # the next propose() raises ProposerStop; keep what this batch already has
                out.append(self._conversation_turn(history, generation))
            return out
        out = []
        while len(out) < k:
            if out and self._meter.spent():
                break
            names = [c.name for c in out if c.error is None]
            jobs = [self._fresh_job(history, generation, names) for _ in range(min(self.max_concurrency, k - len(out)))]
            out += self._run(jobs)
        return out

    def _fresh_job(self, history: list[HistoryEntry], generation: int, names: list[str]) -> Job:
        """A one-turn request: the archive prompt (``archive``) or the task alone (``none``)."""
        arm = select_arm(self._arms, self.selection, self._rng)
        if self.history_mode == "none":
            return Job(arm, lambda budget: [self._conversation[0], {"role": "user", "content": P.build_blind_prompt()}],
                       shown=[])
        shown: list[int] = []

        def build(budget: int) -> list[P.Message]:
            text, shown[:] = P.build_archive_prompt(history, generation, budget, self.top_k, self.recent_k,
                                                    self.failures_k, names)
            return [self._conversation[0], {"role": "user", "content": text}]

        return Job(arm, build, shown=shown)

    def _conversation_turn(self, history: list[HistoryEntry], generation: int) -> Candidate:
        arm = select_arm(self._arms, self.selection, self._rng)
        lines = list(self._feedback)
        if len(self._conversation) == 1:  # first turn: the archive so far
            if self.protocol == "paper":
                first = P.paper_first_turn(history)
                turn: Callable[[int], str] = lambda b: first  # noqa: E731
            else:
                turn = lambda b: P.build_archive_prompt(history, generation, b, self.top_k,  # noqa: E731
                                                        self.recent_k, self.failures_k)[0]
        elif self.protocol == "paper":
            turn = lambda b: P.paper_feedback(lines)  # noqa: E731
        else:
            turn = lambda b: P.build_feedback(lines)  # noqa: E731
        [candidate] = self._run([Job(arm, self._conversation_build(turn))], feedback_used=len(lines))
        return candidate

    def repair(self, failed: Candidate, failed_id: int, error: str, attempt: int) -> Candidate | None:
        """Send the error back with the failed answer; ``None`` when there was no answer to fix."""
        if attempt > self.max_repairs or failed.info.get("transport_error"):
            return None  # a server that just failed N retries is not helped by asking again at once
        self._meter.check()
        arm = failed.info.get("arm")  # the model that made the mistake is asked to fix it
        if not (isinstance(arm, int) and 0 <= arm < len(self._arms)):
            arm = select_arm(self._arms, self.selection, self._rng)
        text = P.build_repair(failed.name, failed.code, self._redact(error))
        if self.history_mode == "conversation":
            [fixed] = self._run([Job(arm, self._conversation_build(lambda b: text), attempt, [failed_id])],
                                feedback_used=0)
        else:
            [fixed] = self._run([Job(arm, lambda b: [self._conversation[0], {"role": "user", "content": text}],
                                     attempt, [failed_id])])
        return fixed

    def set_facts(self, facts: FitnessFacts) -> None:
        """Tell the model what fitness is in this run (kl_coef, beta, learning rates, noise, SFT score)."""
        self.facts = facts
        self._conversation[0] = {"role": "system", "content": self._system_prompt()}

    def _update_noise(self, history: list[HistoryEntry]) -> None:
        """Until confirmation measures it on fresh seeds, state the noise seen among re-scored search candidates."""
        facts = self.facts
        confirmed = facts is not None and facts.noise_from == "fresh seeds" and facts.noise_std is not None
        if facts is None or confirmed or self.history_mode == "none":
            return
        found = seed_noise(history)
        if found is not None and found != (facts.noise_std, facts.noise_candidates):
            self.set_facts(replace(facts, noise_std=found[0], noise_candidates=found[1], noise_from="search seeds"))

    def observe(self, entry: HistoryEntry) -> None:
        """A finished candidate: feedback for the conversation, reward for the bandit."""
        self._absorb(entry)

    def state(self) -> dict[str, Any]:
        """JSON-able state for ``--resume``: spending (so max_cost_usd spans resumes), bandit, conversation."""
        version, internal, gauss = self._rng.getstate()
        arms = [[a.model, a.picks, a.observed, a.reward_sum, a.json_ok] for a in self._arms]
        return {"rng": [version, list(internal), gauss], "totals": dict(self.totals), "budget": self._budget,
                "arms": arms, "best": self._best, "seen": sorted(self._seen), "feedback": list(self._feedback),
                "pending": [[code, *v] for code, v in self._pending.items()],
                "conversation": P.trim_conversation(self._conversation, self._budget)[1:]}  # the rest is never sent

    def load_state(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self.totals.update(state["totals"])
        self._budget = min(self._budget, int(state["budget"]))
        if [a[0] for a in state["arms"]] == [a.model for a in self._arms]:  # same models: keep what was learnt
            for arm, saved in zip(self._arms, state["arms"], strict=True):
                arm.picks, arm.observed, arm.reward_sum, arm.json_ok = saved[1:]
        self._best, self._seen, self._feedback = state["best"], set(state["seen"]), list(state["feedback"])
        self._pending = {code: (arm, cost, name) for code, arm, cost, name in state["pending"]}
        self._conversation = self._conversation[:1] + [dict(m) for m in state["conversation"]]

    def close(self) -> None:
        for client in self._clients:
            client.close()

    # -- requests -----------------------------------------------------------------------------

    def _system_prompt(self) -> str:
        return P.paper_system_prompt() if self.protocol == "paper" else P.system_prompt(self.facts)

    def _conversation_build(self, turn: Callable[[int], str]) -> Build:
        """The conversation plus the next user turn (made for the budget), trimmed to the budget."""
        return lambda b: P.trim_conversation([*self._conversation, {"role": "user", "content": turn(b)}], b)

    def _run(self, jobs: list[Job], feedback_used: int | None = None) -> list[Candidate]:
        """Send ``jobs`` (concurrently if several), then turn the answers into candidates in job order.

        ``feedback_used`` (conversation mode, one job): how many pending feedback lines the turn carried.
        """
        started = time.monotonic()
        if len(jobs) == 1:
            fetched = [self._fetch(jobs[0])]
        else:
            with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="llm-request") as pool:
                fetched = list(pool.map(self._fetch, jobs))
        latency = round(time.monotonic() - started, 3)
        stop = next((self._stop_line(job, got.error) for job, got in zip(jobs, fetched, strict=True)
                     if isinstance(got.error, ChatStop | TransientError)), None)
        if stop is not None:
            # Nothing of this call is archived (--resume asks it again); what the answered requests cost is kept.
            for job, got in zip(jobs, fetched, strict=True):
                self.totals["failed_requests"] += got.failed_requests
                if got.reply is not None:
                    self._meter.add(self._arms[job.arm].model, got.reply.prompt_tokens, got.reply.completion_tokens,
                                    got.info)
            raise ProposerStop(stop)
        return [self._candidate(job, got, latency, feedback_used) for job, got in zip(jobs, fetched, strict=True)]

    def _stop_line(self, job: Job, error: ChatError) -> str:
        """The run's stop line for a request that cannot be answered now: the endpoint refused the key, the
        model or the quota (``ChatStop``), or stayed unreachable through the retries (``TransientError``: a
        transport failure says nothing of a loss, so it is never archived as an invalid one)."""
        if isinstance(error, TransientError):
            return f"proposer: no answer from {self._clients[job.arm].where} ({error}); is the endpoint up?"
        return f"proposer: {error}"

    def _fetch(self, job: Job) -> Fetched:
        """POST until an answer or a final failure; the budget halves on a context-length error.

        Runs on request threads: touches nothing but the shared budget (under the lock) and ``job.shown``.
        """
        arm = self._arms[job.arm]
        info: dict[str, Any] = {"model": arm.model, "arm": job.arm, "prompt_tokens": 0, "completion_tokens": 0,
                                "cost_usd": None, "retries": 0, "context_shrinks": 0}
        failed = 0
        while True:
            with self._lock:
                budget = self._budget
            messages = job.build(budget)
            info["prompt_chars"] = sum(len(m["content"]) for m in messages)
            info["json_mode"] = self.json_mode and arm.json_ok
            info["history_budget"] = budget
            try:
                reply = self._clients[job.arm].complete(messages, temperature=self.temperature,
                                                        max_tokens=self.max_tokens, json_mode=info["json_mode"])
            except ContextLengthError as err:
                info["retries"] += err.retries
                failed += err.failed_requests
                with self._lock:
                    if self._budget == budget:  # a concurrent request may have shrunk it already
                        if budget // 2 < MIN_HISTORY_BUDGET:
                            err.args = (f"prompt exceeds the model's context even at {budget} tokens",)
                            return Fetched(None, err, info, messages, failed)
                        self._budget //= 2  # kept for later requests too: the model will not grow
                        info["context_shrinks"] += 1
                        logger.warning("context length exceeded for %s: history budget now %d tokens", arm.model,
                                       self._budget)
                continue
            except ChatError as err:
                info["retries"] += err.retries
                return Fetched(None, err, info, messages, failed + err.failed_requests)
            info["retries"] += reply.retries
            info["json_mode"] = reply.json_mode
            return Fetched(reply, None, info, messages, failed + reply.failed_requests)

    def _candidate(self, job: Job, got: Fetched, latency: float, feedback_used: int | None) -> Candidate:
        """Account for one fetched answer and turn it into a candidate; every failure becomes ``error``."""
        arm, info, reply = self._arms[job.arm], got.info, got.reply
        self.totals["failed_requests"] += got.failed_requests
        info.update(attempt=job.attempt, history_mode=self.history_mode, selection=self.selection, latency_s=latency)
        if job.shown is not None:
            info["context_ids"] = list(job.shown)
        parents = list(job.parents) if job.parents else list(job.shown or [])[:1]  # lineage: best one shown
        text: str | None = None
        error: str | None = f"proposer: {got.error}" if got.error is not None else None
        if reply is not None:
            self._meter.add(arm.model, reply.prompt_tokens, reply.completion_tokens, info)
            if reply.json_rejected:
                arm.json_ok = False
                if arm.model not in self._warned:
                    self._warned.add(arm.model)
                    logger.warning("%s rejected response_format=json_object; asking it for plain text from now on",
                                   arm.model)
            text = reply.text
            info["finish_reason"] = reply.finish_reason
            if text is None:
                error = "proposer: the server returned no choices"
            elif reply.finish_reason == "length":
                error = f"proposer: answer cut off at max_tokens={self.max_tokens} (finish_reason=length)"
        if feedback_used is not None and text is not None:  # the conversation only grows by answered turns
            self._conversation += [got.sent[-1], {"role": "assistant", "content": text}]
            del self._feedback[:feedback_used]
        if error is None:
            try:
                name, thought, code = parse_proposal(text)
            except ProposalParseError as err:
                error = f"unparseable answer: {err}"
            else:
                self._pending[code] = (job.arm, self._bandit_cost(info), name)
                return Candidate(name=name, code=code, thought=thought, parent_ids=parents, proposer=self.name,
                                 info=info)
        info["transport_error"] = text is None
        arm.reward(0.0, self._bandit_cost(info))  # a failed proposal earns nothing and may cost
        return Candidate(name="unparseable" if text is not None else "no_answer", code=(text or "")[:MAX_RAW_CHARS],
                         parent_ids=parents, proposer=self.name, info=info, error=self._redact(error))

    def _bandit_cost(self, info: dict[str, Any]) -> float:
        return self._meter.bandit_cost([a.model for a in self._arms], info)

    def _redact(self, text: str) -> str:
        for client in self._clients:
            text = client.redact(text)
        return text

    # -- feedback and model selection ---------------------------------------------------------

    def _absorb(self, entry: HistoryEntry) -> None:
        """Learn from a finished entry once: best fitness so far, conversation feedback, bandit reward."""
        if entry.id in self._seen or entry.status == Status.PROPOSED:
            return
        self._seen.add(entry.id)
        fitness = entry.fitness if entry.status == Status.SCORED and entry.fitness is not None else None
        mine = self._pending.pop(entry.code, None)
        if mine is None and entry.proposer == self.name:  # the loop may have reformatted the code
            code = next((c for c, p in self._pending.items() if p[2] == entry.name), None)
            mine = self._pending.pop(code) if code is not None else None
        if mine is not None:
            gain = 0.0  # a failure, or a first score with nothing to improve on yet
            if fitness is not None and math.isfinite(fitness) and self._best is not None:
                gain = max(0.0, fitness - self._best)
            self._arms[mine[0]].reward(gain, mine[1])
            if self.history_mode == "conversation":
                self._feedback.append(P.paper_feedback_line(entry) if self.protocol == "paper"
                                      else P.feedback_line(entry))
        if fitness is not None and math.isfinite(fitness):
            self._best = fitness if self._best is None else max(self._best, fitness)
