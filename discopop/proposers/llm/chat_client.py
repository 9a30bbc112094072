"""One OpenAI-compatible chat-completions endpoint, as a small client with typed failures.

Network policy lives here so every caller (the LLM proposer, an LLM judge) gets the same:

- retries of rate limits (429), server errors (5xx, 408, 409), timeouts and dropped connections,
  with exponential backoff and jitter; a ``Retry-After`` / ``retry-after-ms`` header wins;
- a JSON-mode fallback: a server that answers HTTP 400 to ``response_format`` is asked once more
  in plain text, and the reply says so (``ChatReply.json_rejected``) so the caller can remember;
- typed errors, each with a one-line message: :class:`AuthError`, :class:`QuotaError`,
  :class:`ModelNotFoundError`, :class:`MissingKeyError` (all :class:`ChatStop`: the endpoint
  cannot be used at all), :class:`ContextLengthError`, :class:`TransientError` (retries spent),
  :class:`RequestRejected` (any other refusal), :class:`MalformedReply` (an HTTP 200 that is not a chat
  completion); fields of a reply with the wrong type (``choices`` a string, ``content`` a number) read as absent;
- an overall deadline per request: ``timeout`` bounds the whole request, not each socket read
  (``deadline.call_within``), so a server that drips one byte a second cannot hold it;
- usage counts believed only within [0, ``metering.MAX_TOKENS_PER_REQUEST``], else charged as that max;
- redaction: the key (and anything that looks like one) is removed from every message, and
  errors are raised ``from None`` so no server text rides along as their context.

What to ask, how to count tokens and dollars (``discopop.proposers.llm.metering`` / ``openai_config.Meter``)
and what to do with a failure are the caller's business. The API key is read from the
environment when the first request is made and lives only in the ``openai.OpenAI`` object.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import httpx
import openai

from discopop.config import KEY_LIKE  # one pattern for what an API key looks like (re-exported here)
from discopop.proposers.llm.deadline import call_within
from discopop.proposers.llm.metering import sane_tokens

logger = logging.getLogger(__name__)
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
RETRY_AFTER_CAP = 300.0  # s: honour a server's Retry-After, but not one that would stall a run for hours
MAX_DETAIL_CHARS = 300
CONTEXT_ERROR = re.compile(r"context[ _-]?length|maximum context|context window|prompt is too long", re.I)
RETRYABLE_STATUS = (408, 409, 429)


class ChatError(RuntimeError):
    """A request that produced no answer. ``retries`` and ``failed_requests`` say what it cost."""

    def __init__(self, message: str, retries: int = 0, failed_requests: int = 0):
        super().__init__(message)
        self.retries = retries
        self.failed_requests = failed_requests


class ChatStop(ChatError):
    """The endpoint cannot be used at all (key, quota, model): asking again will not help."""


class AuthError(ChatStop):
    """HTTP 401/403: the key was refused."""


class QuotaError(ChatStop):
    """HTTP 429 ``insufficient_quota``: the account has no credit left."""


class ModelNotFoundError(ChatStop):
    """HTTP 404: no such model or no chat-completions route."""


class MissingKeyError(ChatStop):
    """The key's environment variable is unset for a non-local endpoint."""


class ContextLengthError(ChatError):
    """The prompt does not fit the model's context: send a shorter one."""


class TransientError(ChatError):
    """Rate limit, server error, timeout or connection failure that outlived the retries."""


class RequestRejected(ChatError):
    """Any other refusal (HTTP 400/422 ...): the request itself is wrong."""


class MalformedReply(ChatError):
    """HTTP 200 whose body is not a chat completion (HTML, truncated JSON): this answer is lost, the run is not."""


@dataclass
class ChatReply:
    """An answered request. ``text`` is None when the server returned no choices."""

    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    retries: int = 0
    failed_requests: int = 0
    json_mode: bool = False  # whether the answered request asked for a JSON object
    json_rejected: bool = False  # the server refused response_format and answered in plain text


def retry_after_seconds(headers: Any, now: datetime | None = None) -> float | None:
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


def deadline_error(base_url: str | None) -> openai.APITimeoutError:
    """What a request that outlived its overall deadline raises: the ``openai`` timeout, as a read timeout would."""
    url = (base_url or "https://api.openai.com/v1").rstrip("/") + "/chat/completions"
    return openai.APITimeoutError(request=httpx.Request("POST", url))


def short(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ChatClient:
    """Chat completions from one endpoint and model; safe to call from several threads at once.

    ``seed`` seeds the backoff jitter; ``sleep`` is the backoff sleep (tests pass a recorder).
    """

    def __init__(self, *, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 5, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 seed: int = 0, sleep: Callable[[float], None] | None = None):
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.where = base_url or "api.openai.com"
        self._rng = random.Random(seed)
        self._sleep = sleep or time.sleep
        self._lock = threading.Lock()
        self._client: openai.OpenAI | None = None

    def __repr__(self) -> str:
        return f"ChatClient(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def complete(self, messages: Sequence[Mapping[str, str]], *, temperature: float | None = None,
                 max_tokens: int | None = None, json_mode: bool = False) -> ChatReply:
        """One answer to ``messages``, retried as the module docstring says, or a :class:`ChatError`."""
        retries = failed = 0
        plain_retry = False
        while True:
            kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages)}
            if temperature is not None:
                kwargs["temperature"] = temperature
            if max_tokens is not None:
                kwargs["max_tokens"] = max_tokens
            asked_json = json_mode and not plain_retry
            if asked_json:
                kwargs["response_format"] = {"type": "json_object"}
            problem: ChatError | None = None  # raised after the except block, so no server text rides along
            try:
                response = self._create(kwargs)
            except ValueError as err:  # a 200 whose body is not JSON: the client's decoder raises JSONDecodeError
                problem = MalformedReply(f"the answer from {self.where} is not a chat completion "
                                         f"({type(err).__name__})", retries, failed + 1)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                problem = AuthError(f"{self.where} refused the API key from ${self.api_key_env} "
                                    f"(HTTP {err.status_code}); check the key and its permissions", retries, failed + 1)
            except openai.NotFoundError:
                problem = ModelNotFoundError(f"model {self.model!r} or the chat-completions route not found at "
                                             f"{self.where} (HTTP 404)", retries, failed + 1)
            except openai.BadRequestError as err:
                detail = self.detail(err)
                if CONTEXT_ERROR.search(detail) or err.code == "context_length_exceeded":
                    problem = ContextLengthError(f"prompt exceeds the context of {self.model}: {detail}", retries,
                                                 failed)
                elif asked_json:  # most likely response_format itself; try once without
                    plain_retry = True
                    continue
                else:
                    problem = RequestRejected(f"HTTP 400 from {self.where}: {detail}", retries, failed + 1)
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
                    openai.APIStatusError) as err:
                status = getattr(err, "status_code", None)
                failed += 1
                if status == 429 and getattr(err, "code", None) == "insufficient_quota":
                    problem = QuotaError(f"the account behind ${self.api_key_env} has no quota left at "
                                         f"{self.where} (HTTP 429)", retries, failed)
                elif isinstance(err, openai.APITimeoutError):
                    what = f"request timed out (limit {self.timeout:g} s)"
                elif status is None:
                    what = f"connection error ({type(err).__name__})"
                elif status in RETRYABLE_STATUS or status >= 500:
                    what = f"HTTP {status}"
                else:
                    problem = RequestRejected(f"HTTP {status} from {self.where}: {self.detail(err)}", retries,
                                              failed)
                if problem is None:
                    if retries >= self.max_retries:
                        problem = TransientError(f"{what} after {retries} retries", retries, failed)
                    else:
                        self._sleep(self.delay(retries, getattr(getattr(err, "response", None), "headers", None)))
                        retries += 1
                        continue
            if problem is not None:
                problem.args = (self.redact(str(problem)),)
                raise problem from None
            return self._reply(response, retries, failed, asked_json, json_mode and plain_retry)

    def _reply(self, response: Any, retries: int, failed: int, asked_json: bool, json_rejected: bool) -> ChatReply:
        usage = getattr(response, "usage", None)
        choices = getattr(response, "choices", None)
        text = finish = None
        if isinstance(choices, list) and choices:  # a lying server's fields may be of any type: never trust them
            choice = choices[0]
            content = getattr(getattr(choice, "message", None), "content", None)
            text = content if isinstance(content, str) else ""
            finish = getattr(choice, "finish_reason", None)
            finish = finish if isinstance(finish, str) else None
        return ChatReply(text=text, finish_reason=finish,
                         prompt_tokens=sane_tokens(getattr(usage, "prompt_tokens", None), "prompt_tokens"),
                         completion_tokens=sane_tokens(getattr(usage, "completion_tokens", None), "completion_tokens"),
                         retries=retries, failed_requests=failed, json_mode=asked_json, json_rejected=json_rejected)

    def _create(self, kwargs: dict[str, Any]) -> Any:
        """One POST, within ``timeout`` seconds overall (``deadline``): the client's own timeout is per read.

        At the deadline the client is closed (its connections with it) and dropped, so the next request makes
        a fresh one; a request of another thread on the same client then fails as a connection error and is
        retried. The expiry is raised as the ``openai`` timeout it stands for.
        """
        client = self.client()
        return call_within(self.timeout, lambda: client.chat.completions.create(**kwargs),
                           on_expiry=lambda: self._drop(client), expired=lambda: deadline_error(self.base_url))

    def _drop(self, client: openai.OpenAI) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def client(self) -> openai.OpenAI:
        """The ``openai`` client, made on first use so composing a config never needs the key."""
        with self._lock:
            if self._client is None:
                key = os.environ.get(self.api_key_env)
                if not key:
                    if urlparse(self.base_url or "").hostname not in LOCAL_HOSTS:
                        raise MissingKeyError(f"environment variable {self.api_key_env} is not set; it must hold "
                                              f"the API key for {self.where}")
                    key = "EMPTY"  # local servers (vLLM, llama.cpp, ...) accept any key
                self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout,
                                             max_retries=0)
            return self._client

    def delay(self, retry: int, headers: Any) -> float:
        """Seconds to wait before retry number ``retry + 1``: the server's Retry-After, else backoff."""
        after = retry_after_seconds(headers)
        if after is not None:
            return min(after, RETRY_AFTER_CAP)
        with self._lock:  # jitter in [0.5, 1) of the step, so clients that failed together do not retry together
            jitter = 0.5 + 0.5 * self._rng.random()
        return min(self.backoff_max, self.backoff_base * 2**retry) * jitter

    def detail(self, err: openai.APIStatusError) -> str:
        """The server's error message, redacted and on one line."""
        body = err.body
        message = body.get("message") if isinstance(body, dict) else None
        return short(self.redact(str(message or body or err.message)), MAX_DETAIL_CHARS)

    def redact(self, text: str) -> str:
        """``text`` without this client's key or anything shaped like an OpenAI key."""
        key = os.environ.get(self.api_key_env)
        if key and len(key) >= 4:
            text = text.replace(key, "***")
        return KEY_LIKE.sub("sk-***", text)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
