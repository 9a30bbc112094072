"""The LLM judge: single-answer 1-10 grading of held-out completions (the MT-Bench protocol of the paper).

Why in the main process: grading needs the API key, and no key may enter a sandboxed process
(workers and oracles run without network and with an environment allow-list). So a judged
task's worker returns its greedy completions (``scoring.score_policy``), and
:class:`JudgedExecutor`, wrapped around whatever executor the run uses, grades them here and
turns each train result into fitness = mean((rating - 1) / 9) - kl_coef * KL. Search and
confirmation both go through it, as every train job does.

- The judge is any OpenAI-compatible chat endpoint (``task.judge.model``, ``base_url``,
  ``api_key_env``: the NAME of the variable with the key; a pasted key is refused by
  :func:`judge_config_problem` before the run directory is written).
- The prompt is a template file (``discopop/prompts/judge_single.txt``, or ``task.judge.template``)
  with ``$question`` and ``$answer``; the judge answers with a rating like ``[[7]]``.
- Answers are cached per (model, template, prompt, completion) in ``RUN_DIR/judge.sqlite``, so a
  resumed run, a re-scored seed that decodes the same text, or a twin completion costs nothing.
- Tokens and dollars count into the run's :class:`~discopop.proposers.llm.metering.Meter`: the OpenAI proposer's
  when there is one (``proposer.max_cost_usd`` caps both), else the judge's own
  (``task.judge.max_cost_usd``, spanning resumes through the cache). A spent budget, a refused
  key or an unknown model stop the run (:class:`JudgeStop`); ``--resume`` continues it.
- Rate limits, server errors, timeouts and unparseable ratings are retried with exponential
  backoff (tenacity); a completion still ungraded after that fails its train job at stage
  ``score``, which the cascade records as ``eval_failed`` with the reason.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlparse

from discopop.config import KEY_LIKE, TaskSettings, plain
from discopop.config.task import JUDGE_DEFAULTS, judge_config_problem
from discopop.execution.executors import Executor, Job, JobResult, WrappingExecutor
from discopop.proposers.base import ProposerStop
from discopop.proposers.llm.deadline import call_within
from discopop.proposers.llm.metering import Meter, sane_tokens

TEMPLATE = Path(__file__).resolve().parents[1] / "prompts" / "judge_single.txt"
CACHE_NAME = "judge.sqlite"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
DEFAULTS = JUDGE_DEFAULTS  # declared once, with each option's help, on JudgeSettings
_NUMBER = r"(\d+(?:\.\d+)?)"
# Most explicit first: the requested [[x]], then [x], then "Rating: x" or "x/10" in prose.
_RATING_PATTERNS = [re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]"), re.compile(r"\[\s*" + _NUMBER + r"\s*\]"),
                    re.compile(r"(?:rating|score|grade)\s*(?:is|of|:|=)?\s*\**\s*" + _NUMBER, re.I),
                    re.compile(_NUMBER + r"\s*/\s*10\b")]


class JudgeStop(ProposerStop):
    """The judge cannot work at all (key refused, unknown model, budget spent): the run stops with this line."""


class JudgeFailed(RuntimeError):
    """Some completions stayed ungraded after the retries; the message says why (the key redacted)."""


def parse_rating(text: str | None) -> float | None:
    """The 1-10 rating in a judge's answer, or None. The last match of the most explicit form wins
    (a judge may quote the scale before giving its grade); a value outside [1, 10] is no rating."""
    for pattern in _RATING_PATTERNS:
        found = pattern.findall(text or "")
        if found:
            value = float(found[-1])
            return value if 1.0 <= value <= 10.0 else None
    return None


def normalised(rating: float) -> float:
    """A 1-10 rating on [0, 1], so fitness and kl_coef keep the scale of the other tasks."""
    return (rating - 1.0) / 9.0


@dataclass
class Grades:
    """Ratings of one batch of completions, in order, and what grading them cost."""

    ratings: list[float]
    requests: int = 0
    cached: int = 0
    usage: dict[str, Any] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0,
                                                           "cost_usd": None})
    seconds: float = 0.0

    def summary(self, model: str) -> dict[str, Any]:
        return {"model": model, "mean_rating": round(sum(self.ratings) / len(self.ratings), 4),
                "requests": self.requests, "cached": self.cached, **self.usage, "seconds": round(self.seconds, 3)}


class _Retry(Exception):
    """A failure worth asking again (rate limit, 5xx, timeout, unparseable rating).

    ``transport``: the endpoint did not answer at all (timeout, connection refused or lost). When every retry
    fails that way the judge is gone, not the loss bad: the run stops (:class:`JudgeStop`) rather than archive
    the candidate as ``eval_failed``, and ``--resume`` grades it once the endpoint is back.
    """

    def __init__(self, message: str, transport: bool = False) -> None:
        super().__init__(message)
        self.transport = transport


@dataclass
class _Answer:
    rating: float | None
    raw: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    error: str | None = None


class JudgeCache:
    """Ratings already paid for, per (model, template, prompt, completion), in a SQLite file of the run."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, model TEXT, prompt TEXT, "
                          "completion TEXT, rating REAL NOT NULL, raw TEXT, prompt_tokens INTEGER, "
                          "completion_tokens INTEGER, cost_usd REAL, created_at TEXT DEFAULT CURRENT_TIMESTAMP)")

    def get(self, keys: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self.conn.execute(f"SELECT key, rating FROM judgements WHERE key IN ({','.join('?' * len(chunk))})",
                                     chunk)
            found.update(rows.fetchall())
        return found

    def put(self, key: str, model: str, prompt: str, completion: str, answer: _Answer, cost: float | None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO judgements (key, model, prompt, completion, rating, raw, "
                          "prompt_tokens, completion_tokens, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (key, model, prompt, completion, answer.rating, answer.raw[:4000], answer.prompt_tokens,
                           answer.completion_tokens, cost))

    def spent(self) -> tuple[int, int, int, float]:
        """Requests, prompt and completion tokens, dollars of every cached rating (a fresh meter starts there)."""
        row = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), "
                                "0), COALESCE(SUM(cost_usd), 0) FROM judgements").fetchone()
        return int(row[0]), int(row[1]), int(row[2]), float(row[3])

    def close(self) -> None:
        self.conn.close()


class Judge:
    """Grades completions through one OpenAI-compatible endpoint; see the module docstring."""

    def __init__(self, cfg: Mapping[str, Any], cache_path: Path, meter: Meter | None = None,
                 sleep: Callable[[float], None] | None = None):
        problem = judge_config_problem(cfg)
        if problem or not cfg.get("model"):
            raise ValueError(problem or "task.judge.model is not set")
        self.cfg = {**DEFAULTS, **cfg}
        self.model: str = self.cfg["model"]
        self.template_text = Path(self.cfg["template"] or TEMPLATE).expanduser().read_text(encoding="utf-8")
        self.template = Template(self.template_text)
        self.cache = JudgeCache(cache_path)
        prices = {str(m): {k: float(v) for k, v in p.items()} for m, p in (self.cfg["prices"] or {}).items()}
        if meter is None:
            meter = Meter(prices, self.cfg["max_cost_usd"])
            requests, prompt_tokens, completion_tokens, cost = self.cache.spent()  # the budget spans resumes
            meter.totals.update(requests=requests, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                cost_usd=cost)
        else:
            for model, price in prices.items():  # the proposer's prices win; the judge may add its model's
                meter.prices.setdefault(model, price)
        self.meter = meter
        self._sleep = sleep or time.sleep
        self._client: Any = None
        self._lock = threading.Lock()  # the client, made or dropped (a deadline) by grading threads

    def key(self, prompt: str, completion: str) -> str:
        parts = (self.model, self.template_text, prompt, completion)
        return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()

    def grade(self, prompts: list[str], completions: list[str]) -> Grades:
        """The rating of each completion (cached ones first); raises JudgeFailed, or JudgeStop for the run."""
        started = time.perf_counter()
        keys = [self.key(p, c) for p, c in zip(prompts, completions, strict=True)]
        known = self.cache.get(keys)
        todo = {k: (p, c) for k, p, c in zip(keys, prompts, completions, strict=True) if k not in known}
        grades = Grades(ratings=[], cached=len(keys) - len(todo))
        failures: list[str] = []
        if todo:
            try:
                self.meter.check()  # a spent budget stops the run before any new request
            except ProposerStop as err:
                raise JudgeStop(f"judge: {err}") from None
            client = self._make_client()
            with ThreadPoolExecutor(max_workers=min(self.cfg["concurrency"], len(todo))) as pool:
                answers = pool.map(lambda item: self._ask(client, *item[1]), todo.items())
                for (key, (prompt, completion)), answer in zip(todo.items(), answers, strict=True):
                    grades.requests += answer.requests
                    # its own cost: the proposer may be counting into the same meter meanwhile (lookahead)
                    cost = self.meter.add(self.model, answer.prompt_tokens, answer.completion_tokens, grades.usage)
                    if answer.rating is None:
                        failures.append(answer.error or "no rating")
                        continue
                    known[key] = answer.rating
                    self.cache.put(key, self.model, prompt, completion, answer, cost)
        grades.seconds = time.perf_counter() - started
        if failures:
            raise JudgeFailed(f"{len(failures)} of {len(keys)} completions ungraded; first: {failures[0]}")
        grades.ratings = [known[k] for k in keys]
        return grades

    def _make_client(self) -> Any:
        """The client, made on first use so composing or validating a config never needs the key."""
        with self._lock:
            return self._locked_client()

    def _locked_client(self) -> Any:
        if self._client is None:
            import openai  # lazy: openai/tenacity only when a judge is configured

            key = os.environ.get(self.cfg["api_key_env"])
            if not key:
                if urlparse(self.cfg["base_url"] or "").hostname not in LOCAL_HOSTS:
                    raise JudgeStop(f"judge: environment variable {self.cfg['api_key_env']} is not set; it must hold "
                                    f"the API key for {self.cfg['base_url'] or 'api.openai.com'}")
                key = "EMPTY"  # local servers accept any key
            self._client = openai.OpenAI(base_url=self.cfg["base_url"], api_key=key, timeout=self.cfg["timeout"],
                                         max_retries=0)
        return self._client

    def _create(self, client: Any, message: str) -> Any:
        """One grading request within ``timeout`` seconds overall (the client's timeout is per read): at the
        deadline the client is closed and dropped, and the request fails as the ``openai`` timeout."""
        return call_within(self.cfg["timeout"], lambda: client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": message}],
            temperature=self.cfg["temperature"], max_tokens=self.cfg["max_tokens"]),
            on_expiry=lambda: self._drop(client), expired=self._expired)

    def _expired(self) -> BaseException:
        # lazy: openai only when a judge is configured
        from discopop.proposers.llm.chat_client import deadline_error

        return deadline_error(self.cfg["base_url"])

    def _drop(self, client: Any) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def _ask(self, client: Any, prompt: str, completion: str) -> _Answer:
        """One completion graded, with retries (runs in a pool thread; the meter is fed by the caller)."""
        import openai  # lazy: openai/tenacity only when a judge is configured
        from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        answer = _Answer(None, "")
        message = self.template.safe_substitute(question=prompt, answer=completion)
        where = self.cfg["base_url"] or "api.openai.com"
        retrying = Retrying(stop=stop_after_attempt(self.cfg["max_retries"] + 1), sleep=self._sleep,
                            wait=wait_exponential(multiplier=self.cfg["backoff_base"], max=self.cfg["backoff_max"]),
                            retry=retry_if_exception_type(_Retry))
        try:
            for attempt in retrying:
                with attempt:
                    answer.requests += 1
                    if answer.requests > 1:
                        client = self._make_client()  # a fresh one if a deadline closed the last
                    try:
                        response = self._create(client, message)
                    except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                        raise JudgeStop(f"judge: {where} refused the API key from ${self.cfg['api_key_env']} "
                                        f"(HTTP {err.status_code}); check the key and its permissions") from None
                    except openai.NotFoundError:
                        raise JudgeStop(f"judge: model {self.model!r} or the chat-completions route not found at "
                                        f"{where} (HTTP 404)") from None
                    except openai.APITimeoutError:
                        raise _Retry(f"request timed out (limit {self.cfg['timeout']:g} s)", transport=True) from None
                    except openai.APIConnectionError as err:
                        raise _Retry(f"connection error ({type(err).__name__})", transport=True) from None
                    except openai.APIStatusError as err:
                        if err.status_code in (408, 409, 429) or err.status_code >= 500:
                            raise _Retry(f"HTTP {err.status_code}: {self._detail(err)}") from None
                        answer.error = f"HTTP {err.status_code} from {where}: {self._detail(err)}"
                        return answer
                    usage = getattr(response, "usage", None)
                    # a lying server's usage ("lots", -5, 1e30) is clamped like the proposer's, never int()-ed raw
                    answer.prompt_tokens += sane_tokens(getattr(usage, "prompt_tokens", None), "prompt_tokens")
                    answer.completion_tokens += sane_tokens(getattr(usage, "completion_tokens", None),
                                                            "completion_tokens")
                    choices = getattr(response, "choices", None) or []
                    answer.raw = ((choices[0].message.content if choices and choices[0].message else None) or "")
                    answer.rating = parse_rating(answer.raw)
                    if answer.rating is None:
                        raise _Retry(f"no 1-10 rating like [[7]] in the answer {self.redact(answer.raw[:120])!r}")
        except RetryError as err:
            last = err.last_attempt.exception()
            if getattr(last, "transport", False):
                raise JudgeStop(f"judge: {where} stopped answering: {last} after {answer.requests} requests; "
                                f"nothing was archived for this candidate, `discover --resume` grades it") from None
            answer.error = f"{last} (after {answer.requests} requests)"
        return answer

    def _detail(self, err: Any) -> str:
        body = getattr(err, "body", None)
        text = body.get("message") if isinstance(body, dict) else None
        return self.redact(str(text or body or getattr(err, "message", err)))[:300]

    def redact(self, text: str) -> str:
        """``text`` without the key (its value and anything shaped like an OpenAI key)."""
        key = os.environ.get(self.cfg["api_key_env"])
        if key and len(key) >= 4:
            text = text.replace(key, "***")
        return KEY_LIKE.sub("sk-***", text)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.cache.close()


class JudgedExecutor(WrappingExecutor):
    """Any executor whose train results are graded by the judge here, in the trusted main process."""

    def __init__(self, inner: Executor, judge: Judge, prompts: Callable[[str], list[str]]):
        super().__init__(inner)
        self.judge = judge
        self.prompts = prompts  # split -> the held-out prompts, in the order the worker scored them

    def run(self, jobs: list[Job]) -> Iterator[JobResult]:
        for result in self.inner.run(jobs):
            yield self._judged(result) if result.ok and result.job.stage == "train" else result

    def _judged(self, result: JobResult) -> JobResult:
        """The train result with its reward and fitness from the judge, or a ``score`` failure with the reason."""
        data, job = result.trained, result.job
        prompts = self.prompts(job.split)
        completions = data.completions
        if not (completions is not None and len(completions) == len(prompts)):  # strings: checked by from_wire
            return JobResult(job, False, "score", f"judge: the worker returned no completions for the "
                             f"{len(prompts)} {job.split} prompts", seconds=result.seconds)
        try:
            grades = self.judge.grade(prompts, completions)
        except JudgeFailed as err:
            return JobResult(job, False, "score", self.judge.redact(f"judge: {err}"), seconds=result.seconds,
                             machinery=True)
        per_prompt = [normalised(r) for r in grades.ratings]
        reward = sum(per_prompt) / len(per_prompt)
        fitness = reward - float(data.kl_coef or 0.0) * float(data.kl)
        if not math.isfinite(fitness):
            return JobResult(job, False, "score", f"judge: non-finite fitness (kl={data.kl})",
                             seconds=result.seconds)
        judged = replace(data, completions=None, reward=reward, fitness=fitness, per_prompt=per_prompt,
                         judge=grades.summary(self.judge.model),
                         score_seconds=float(data.score_seconds or 0.0) + grades.seconds)
        return JobResult(job, True, result.stage, reply=judged, seconds=result.seconds + grades.seconds)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.judge.close()


def with_judge(executor: Executor, task_cfg: TaskSettings, task: Any, run_dir: Path,
               meter: Meter | None = None) -> Executor:
    """``executor`` wrapped in a :class:`JudgedExecutor` when the task is judged, else unchanged."""
    if not getattr(task, "judged", False):
        return executor
    judge = plain(task_cfg)["judge"]  # a judged task is a hub task: its judge settings, plain for the client
    return JudgedExecutor(executor, Judge(judge, Path(run_dir) / CACHE_NAME, meter), task.prompts)
