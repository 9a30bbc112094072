"""Pre-flight: every chat endpoint a run will need answers before anything is trained.

Without it a missing key, a wrong ``base_url`` or a stopped local server shows only after the
references have trained (minutes to hours). The check is one tiny chat request per distinct
(model, endpoint, key variable): the proposer's (each of ``proposer.models``) and the LLM judge's
(``task.judge``), with a short timeout and one retry. A tiny request rather than the models list:
it is the call the run will make, so it proves the key, the route and the model name together
(local servers often list any name, or none), for a few tokens. Its cost is not metered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from discopop.config import RunSettings
from discopop.proposers.stop import ProposerStop

TIMEOUT = 20.0  # seconds at most per pre-flight request: a reachable endpoint answers one token well within it
RETRIES = 1  # one retry (a server just starting); a closed port fails in about backoff seconds
BACKOFF = 0.5
PROBE = [{"role": "user", "content": "Reply with the single word OK."}]


def endpoints(settings: RunSettings) -> list[tuple[str, dict[str, Any]]]:
    """(who, ChatClient keywords) for every distinct endpoint the run will ask: proposer arms, then the judge."""
    found: list[tuple[str, dict[str, Any]]] = []
    proposer = settings.proposer
    if getattr(proposer, "name", None) == "openai":
        arms = proposer.models or [{"model": proposer.model}]
        for arm in arms:
            found.append(("proposer", {"model": arm["model"], "base_url": arm.get("base_url", proposer.base_url),
                                       "api_key_env": arm.get("api_key_env", proposer.api_key_env),
                                       "timeout": min(TIMEOUT, proposer.timeout)}))
    judge = getattr(settings.task, "judge", None)
    if judge is not None and judge.model:
        found.append(("judge", {"model": judge.model, "base_url": judge.base_url, "api_key_env": judge.api_key_env,
                                "timeout": min(TIMEOUT, judge.timeout or TIMEOUT)}))
    unique: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
    for who, kwargs in found:
        unique.setdefault((kwargs["model"], kwargs["base_url"], kwargs["api_key_env"]), (who, kwargs))
    return list(unique.values())


def preflight(settings: RunSettings, sleep: Callable[[float], None] | None = None) -> int:
    """Ask each endpoint for one token; the first that cannot answer raises :class:`ProposerStop` (one line).

    Returns how many endpoints were checked (0: the run needs none).
    """
    found = endpoints(settings)
    if not found:
        return 0
    # lazy: the chat client imports openai (~1.3 CPU-s of a run's start): only a run that asks an endpoint pays it
    from discopop.proposers.llm.chat_client import ChatClient, ChatError

    checked = 0
    for who, kwargs in found:
        client = ChatClient(**kwargs, max_retries=RETRIES, backoff_base=BACKOFF, backoff_max=BACKOFF, sleep=sleep)
        try:
            client.complete(PROBE, max_tokens=1)
        except ChatError as err:
            raise ProposerStop(f"pre-flight: {who} model {kwargs['model']!r} at {client.where}: "
                               f"{client.redact(str(err))}") from None
        finally:
            client.close()
        checked += 1
    return checked
