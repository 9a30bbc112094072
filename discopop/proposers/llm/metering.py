"""Tokens and dollars spent on LLM endpoints, against the run's one budget (``max_cost_usd``).

Shared by the OpenAI proposer and the LLM judge (``discopop.fitness.judge``): when both run, they count
into the same :class:`Meter`, so ``proposer.max_cost_usd`` caps what the whole run spends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from discopop.proposers.stop import ProposerStop

logger = logging.getLogger(__name__)
# The most tokens one request may be charged: above any model's context (2M) and any answer. A server's
# usage is believed only within [0, this]; a negative, non-integer or larger count is a lie or a bug and is
# charged as this much, so a lying server makes max_cost_usd trigger sooner, never later.
MAX_TOKENS_PER_REQUEST = 2_000_000


def sane_tokens(value: Any, what: str = "tokens") -> int:
    """A token count from a server's ``usage``: missing is 0, anything outside [0, MAX] the max (logged)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS_PER_REQUEST:
        return value
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_TOKENS_PER_REQUEST:
        return int(value)
    logger.warning("the server reported %s = %s: charged as %d (the most one request may cost)", what,
                   repr(value)[:40], MAX_TOKENS_PER_REQUEST)
    return MAX_TOKENS_PER_REQUEST


class Meter:
    """Tokens and dollars, per request and in total, against an optional budget.

    Prices are per 1,000 tokens. A model with no price is counted in tokens only, with one
    warning, since its spending is invisible to ``max_cost_usd``. Thread-safe: with lookahead
    (``loop``), the proposer asks on a background thread while the judge grades on the main one.
    """

    def __init__(self, prices: Mapping[str, Mapping[str, float]], max_cost_usd: float | None):
        self.prices = dict(prices)
        self.max_cost_usd = max_cost_usd
        self.totals: dict[str, float] = {"requests": 0, "failed_requests": 0, "prompt_tokens": 0,
                                         "completion_tokens": 0, "cost_usd": 0.0}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def price(self, model: str) -> Mapping[str, float] | None:
        if model in self.prices:
            return self.prices[model]
        prefixes = [m for m in self.prices if model.startswith(m + "-")]  # dated snapshots: gpt-4o-2024-08-06
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def add(self, model: str, prompt_tokens: int, completion_tokens: int, info: dict[str, Any]) -> float | None:
        """Count one answered request into ``info`` (this candidate) and the totals; return its cost in dollars
        (None for a model without a price). Counts outside [0, MAX_TOKENS_PER_REQUEST] are charged as the max."""
        with self._lock:
            return self._add(model, prompt_tokens, completion_tokens, info)

    def _add(self, model: str, prompt_tokens: int, completion_tokens: int, info: dict[str, Any]) -> float | None:
        prompt_tokens = sane_tokens(prompt_tokens, "prompt_tokens")
        completion_tokens = sane_tokens(completion_tokens, "completion_tokens")
        info["prompt_tokens"] += prompt_tokens
        info["completion_tokens"] += completion_tokens
        self.totals["requests"] += 1
        self.totals["prompt_tokens"] += prompt_tokens
        self.totals["completion_tokens"] += completion_tokens
        price = self.price(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                logger.warning("no price for model %s: counting its tokens only%s", model,
                               " (max_cost_usd cannot see its spending)" if self.max_cost_usd is not None else "")
            return None
        cost = prompt_tokens / 1000 * price["prompt"] + completion_tokens / 1000 * price["completion"]
        info["cost_usd"] = (info.get("cost_usd") or 0.0) + cost
        self.totals["cost_usd"] += cost
        return cost

    def spent(self) -> bool:
        return self.max_cost_usd is not None and self.totals["cost_usd"] >= self.max_cost_usd

    def check(self) -> None:
        """Stop the run once the budget is reached (checked before every request batch)."""
        if self.spent():
            raise ProposerStop(f"budget of ${self.max_cost_usd:g} reached after {int(self.totals['requests'])} "
                               f"requests (${self.totals['cost_usd']:.4f} spent)")

    def bandit_cost(self, models: list[str], info: Mapping[str, Any]) -> float:
        """What the bandit divides gain by: dollars if every model has a price, else thousands of tokens."""
        if all(self.price(m) is not None for m in models):
            return float(info.get("cost_usd") or 0.0)
        return (info.get("prompt_tokens", 0) + info.get("completion_tokens", 0)) / 1000
