"""LLM proposer for any OpenAI-compatible chat-completions endpoint (the DiscoPOP protocol).

One request per candidate: a system prompt with the loss contract, then either a fresh prompt
built from the archive (``history_mode="archive"``) or the running conversation with fitness
feedback after each proposal (``"conversation"``, the paper's protocol). Failures are data, not
crashes: a rate limit, 5xx or timeout is retried with backoff and then archived as the
candidate's error; only bad credentials, an unknown model or a spent budget stop the run
(:class:`ProposerStop`). The API key is read from an environment variable when the client is
made; only that client holds it, never this object's own fields, ``Candidate.info``, a log line
or an exception message (server error text is redacted before it is recorded).
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import openai

from discopop.proposers import prompting as P
from discopop.proposers.base import Candidate, HistoryEntry, Proposer, ProposerStop
from discopop.proposers.facts import FitnessFacts
from discopop.proposers.openai_config import MIN_HISTORY_BUDGET, Arm, Meter, plain, select_arm, validate
from discopop.proposers.parsing import ProposalParseError, parse_proposal

logger = logging.getLogger(__name__)
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
RETRY_AFTER_CAP = 300.0  # s: honour a server's Retry-After, but not one that would stall a run for hours
MAX_RAW_CHARS = 4000  # an unparseable answer is archived this far, enough to see what went wrong
_CONTEXT_ERROR = re.compile(r"context[ _-]?length|maximum context|context window|prompt is too long", re.I)
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_*\-]{6,}")
Build = Callable[[int], list[P.Message]]


class OpenAIProposer(Proposer):
    """Proposes losses by asking a chat model. Fields (all constructor keywords):

    - model: model id sent to the endpoint (default "gpt-4o").
    - base_url: endpoint root such as "http://localhost:8000/v1"; None = OpenAI's default.
    - api_key_env: environment variable holding the key (default "OPENAI_API_KEY"). If it is unset,
      a local base_url gets "EMPTY" and any other endpoint stops the run with a clear line.
    - temperature (0..2), max_tokens (answer length cap), timeout (seconds per request).
    - json_mode: ask for response_format={"type": "json_object"}; a server that rejects it with
      HTTP 400 is asked again in plain text, and remembered.
    - history_mode: "archive" (fresh prompt from the archive each time) or "conversation".
    - history_token_budget: estimated tokens the history may take in one request (default 6000);
      halved whenever the server reports the context length exceeded.
    - top_k, recent_k, failures_k: how many best, most recent and failed candidates a prompt shows.
    - max_repairs: repair attempts the loop may ask for per failed candidate (default 2).
    - max_retries, backoff_base, backoff_max: retries of 429/5xx/timeouts, exponential backoff
      with jitter in seconds; a Retry-After header wins.
    - max_cost_usd: stop the run once this much is spent (None = unlimited).
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
        self._sleep = sleep or time.sleep
        self._budget = cfg["history_token_budget"]
        self._clients: dict[int, openai.OpenAI] = {}
        self._warned: set[str] = set()
        self.facts: FitnessFacts | None = None  # set by the loop (set_facts) once the task is loaded
        self._conversation: list[P.Message] = [{"role": "system", "content": P.system_prompt()}]
        self._last_sent: list[P.Message] = []
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
        out: list[Candidate] = []
        for _ in range(k):
            if out and self._meter.spent():
                break  # the next propose() raises ProposerStop; keep what this batch already has
            arm = select_arm(self._arms, self.selection, self._rng)
            if self.history_mode == "archive":
                shown: list[int] = []
                names = [c.name for c in out if c.error is None]

                def build(budget: int, names=names, shown=shown) -> list[P.Message]:
                    text, shown[:] = P.build_archive_prompt(history, generation, budget, self.top_k, self.recent_k,
                                                            self.failures_k, names)
                    return [self._conversation[0], {"role": "user", "content": text}]

                candidate = self._ask(arm, build, attempt=0, parents=[])
                candidate.info["context_ids"] = list(shown)
                candidate.parent_ids = shown[:1]  # lineage: the best candidate the model was shown
            elif len(self._conversation) == 1:  # first turn: the archive so far, then feedback turns
                candidate = self._ask(arm, self._conversation_build(
                    lambda b: P.build_archive_prompt(history, generation, b, self.top_k, self.recent_k,
                                                     self.failures_k)[0]), 0, [], len(self._feedback))
            else:
                lines = list(self._feedback)
                candidate = self._ask(arm, self._conversation_build(lambda b, lines=lines: P.build_feedback(lines)),
                                      0, [], len(lines))
            out.append(candidate)
        return out

    def repair(self, failed: Candidate, failed_id: int, error: str, attempt: int) -> Candidate | None:
        """Send the error back with the failed answer; ``None`` when there was no answer to fix."""
        if attempt > self.max_repairs or failed.info.get("transport_error"):
            return None  # a server that just failed N retries is not helped by asking again at once
        self._meter.check()
        arm = failed.info.get("arm")  # the model that made the mistake is asked to fix it
        if not (isinstance(arm, int) and 0 <= arm < len(self._arms)):
            arm = select_arm(self._arms, self.selection, self._rng)
        text = P.build_repair(failed.name, failed.code, self._redact(error))
        if self.history_mode == "archive":
            return self._ask(arm, lambda b: [self._conversation[0], {"role": "user", "content": text}], attempt,
                             [failed_id])
        return self._ask(arm, self._conversation_build(lambda b: text), attempt, [failed_id], 0)

    def set_facts(self, facts: FitnessFacts) -> None:
        """Tell the model what fitness is in this run (kl_coef, beta, learning rates, noise, SFT score)."""
        self.facts = facts
        self._conversation[0] = {"role": "system", "content": P.system_prompt(facts)}

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
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- requests -----------------------------------------------------------------------------

    def _conversation_build(self, turn: Callable[[int], str]) -> Build:
        """The conversation plus the next user turn (made for the budget), trimmed to the budget."""
        return lambda b: P.trim_conversation([*self._conversation, {"role": "user", "content": turn(b)}], b)

    def _ask(self, arm: int, build: Build, attempt: int, parents: list[int],
             feedback_used: int | None = None) -> Candidate:
        """One request turned into a candidate; every failure becomes ``Candidate.error``.

        ``feedback_used`` (conversation mode only): how many pending feedback lines the turn carried.
        """
        started = time.monotonic()
        text, info, error = self._request(arm, build)
        info.update(attempt=attempt, history_mode=self.history_mode, history_budget=self._budget,
                    selection=self.selection, latency_s=round(time.monotonic() - started, 3))
        if feedback_used is not None and text is not None:  # the conversation only grows by answered turns
            self._conversation += [self._last_sent[-1], {"role": "assistant", "content": text}]
            del self._feedback[:feedback_used]
        if error is None:
            try:
                name, thought, code = parse_proposal(text)
            except ProposalParseError as err:
                error = f"unparseable answer: {err}"
            else:
                self._pending[code] = (arm, self._bandit_cost(info), name)
                return Candidate(name=name, code=code, thought=thought, parent_ids=list(parents),
                                 proposer=self.name, info=info)
        info["transport_error"] = text is None
        self._arms[arm].reward(0.0, self._bandit_cost(info))  # a failed proposal earns nothing and may cost
        return Candidate(name="unparseable" if text is not None else "no_answer", code=(text or "")[:MAX_RAW_CHARS],
                         parent_ids=list(parents), proposer=self.name, info=info, error=self._redact(error))

    def _bandit_cost(self, info: dict[str, Any]) -> float:
        return self._meter.bandit_cost([a.model for a in self._arms], info)

    def _request(self, arm_index: int, build: Build) -> tuple[str | None, dict[str, Any], str | None]:
        """POST until an answer, a final failure or a stop: ``(text, info, error)``."""
        arm = self._arms[arm_index]
        client = self._client(arm_index)
        where = arm.base_url or "api.openai.com"
        info: dict[str, Any] = {"model": arm.model, "arm": arm_index, "prompt_tokens": 0, "completion_tokens": 0,
                                "cost_usd": None, "retries": 0, "context_shrinks": 0}
        plain_retry = False
        while True:
            messages = self._last_sent = build(self._budget)
            use_json = self.json_mode and arm.json_ok
            kwargs: dict[str, Any] = {"model": arm.model, "messages": messages, "temperature": self.temperature,
                                      "max_tokens": self.max_tokens}
            if use_json:
                kwargs["response_format"] = {"type": "json_object"}
            info["prompt_chars"] = sum(len(m["content"]) for m in messages)
            info["json_mode"] = use_json
            stop: str | None = None  # raised after the except block, so no server text rides along as context
            try:
                response = client.chat.completions.create(**kwargs)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                stop = (f"proposer: {where} refused the API key from ${arm.api_key_env} (HTTP {err.status_code}); "
                        "check the key and its permissions")
            except openai.NotFoundError:
                stop = f"proposer: model {arm.model!r} or the chat-completions route not found at {where} (HTTP 404)"
            except openai.BadRequestError as err:
                detail = self._detail(err)
                if _CONTEXT_ERROR.search(detail) or err.code == "context_length_exceeded":
                    if self._budget // 2 < MIN_HISTORY_BUDGET:
                        return None, info, f"proposer: prompt exceeds the model's context even at {self._budget} tokens"
                    self._budget //= 2  # kept for later requests too: the model will not grow
                    info["context_shrinks"] += 1
                    logger.warning("context length exceeded for %s: history budget now %d tokens", arm.model,
                                   self._budget)
                    continue
                if use_json and not plain_retry:  # most likely response_format itself; try once without
                    arm.json_ok, plain_retry = False, True
                    continue
                if plain_retry:
                    arm.json_ok = True  # plain text failed as well, so response_format was not the problem
                self.totals["failed_requests"] += 1
                return None, info, f"proposer: HTTP 400 from {where}: {detail}"
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
                    openai.APIStatusError) as err:
                status = getattr(err, "status_code", None)
                self.totals["failed_requests"] += 1
                if status == 429 and getattr(err, "code", None) == "insufficient_quota":
                    stop = f"proposer: the account behind ${arm.api_key_env} has no quota left at {where} (HTTP 429)"
                    break
                if isinstance(err, openai.APITimeoutError):
                    what = f"request timed out (limit {self.timeout:g} s)"
                elif status is None:
                    what = f"connection error ({type(err).__name__})"
                elif status in (408, 409, 429) or status >= 500:
                    what = f"HTTP {status}"
                else:
                    return None, info, f"proposer: HTTP {status} from {where}: {self._detail(err)}"
                if info["retries"] >= self.max_retries:
                    return None, info, f"proposer: {what} after {info['retries']} retries"
                response_obj = getattr(err, "response", None)
                self._sleep(self._delay(info["retries"], getattr(response_obj, "headers", None)))
                info["retries"] += 1
                continue
            if stop is not None:
                break
            return self._answer(arm, response, info, plain_retry)
        raise ProposerStop(stop)

    def _answer(self, arm: Arm, response: Any, info: dict[str, Any], plain_retry: bool):
        """Account for a response and pull out its text; an empty or cut-off answer is an error."""
        usage = getattr(response, "usage", None)
        self._meter.add(arm.model, int(getattr(usage, "prompt_tokens", 0) or 0),
                        int(getattr(usage, "completion_tokens", 0) or 0), info)
        if plain_retry and arm.model not in self._warned:
            self._warned.add(arm.model)
            logger.warning("%s rejected response_format=json_object; asking it for plain text from now on", arm.model)
        choices = getattr(response, "choices", None) or []
        if not choices:
            return None, info, "proposer: the server returned no choices"
        choice = choices[0]
        text = (choice.message.content if choice.message is not None else None) or ""
        info["finish_reason"] = choice.finish_reason
        if choice.finish_reason == "length":
            return text, info, f"proposer: answer cut off at max_tokens={self.max_tokens} (finish_reason=length)"
        return text, info, None

    def _client(self, index: int) -> openai.OpenAI:
        """The client of one arm, made on first use so composing a config never needs the key."""
        if index not in self._clients:
            arm = self._arms[index]
            key = os.environ.get(arm.api_key_env)
            if not key:
                if urlparse(arm.base_url or "").hostname not in LOCAL_HOSTS:
                    raise ProposerStop(f"proposer: environment variable {arm.api_key_env} is not set; it must hold "
                                       f"the API key for {arm.base_url or 'api.openai.com'}")
                key = "EMPTY"  # local servers (vLLM, llama.cpp, ...) accept any key
            self._clients[index] = openai.OpenAI(base_url=arm.base_url, api_key=key, timeout=self.timeout,
                                                 max_retries=0)
        return self._clients[index]

    def _delay(self, retry: int, headers: Any) -> float:
        after = _retry_after(headers)
        if after is not None:
            return min(after, RETRY_AFTER_CAP)
        # Jitter in [0.5, 1) of the exponential step, so clients that failed together do not retry together.
        return min(self.backoff_max, self.backoff_base * 2**retry) * (0.5 + 0.5 * self._rng.random())

    def _detail(self, err: openai.APIStatusError) -> str:
        body = err.body
        message = body.get("message") if isinstance(body, dict) else None
        return P._short(self._redact(str(message or body or err.message)), 300)

    def _redact(self, text: str) -> str:
        for arm in self._arms:
            key = os.environ.get(arm.api_key_env)
            if key and len(key) >= 4:
                text = text.replace(key, "***")
        return _KEY_LIKE.sub("sk-***", text)

    # -- feedback and model selection ---------------------------------------------------------

    def _absorb(self, entry: HistoryEntry) -> None:
        """Learn from a finished entry once: best fitness so far, conversation feedback, bandit reward."""
        if entry.id in self._seen or entry.status == "proposed":
            return
        self._seen.add(entry.id)
        fitness = entry.fitness if entry.status == "scored" and entry.fitness is not None else None
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
                self._feedback.append(P.feedback_line(entry))
        if fitness is not None and math.isfinite(fitness):
            self._best = fitness if self._best is None else max(self._best, fitness)


def _retry_after(headers: Any, now: datetime | None = None) -> float | None:
    """Seconds from retry-after-ms or Retry-After, which RFC 9110 allows as seconds or an HTTP date."""
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            seconds = _seconds_until(value, now) if header == "retry-after" else None
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _seconds_until(http_date: str, now: datetime | None) -> float | None:
    """Seconds from ``now`` (default: the clock) to an HTTP date, 0 if it is past; None if unparseable."""
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may parse naive
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
