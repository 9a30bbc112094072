"""Settings of the OpenAI proposer: defaults and validation, the choice among models, spending.

Kept out of ``openai.py`` so the HTTP logic there stays readable. Every field is documented in
:class:`discopop.proposers.openai.OpenAIProposer` and in ``conf/proposer/openai.yaml``; errors
here name the field, the received value and what is allowed, except for values that may be an
API key (``api_key_env``), which are never echoed.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from discopop.metering import Meter  # noqa: F401 - re-exported: the proposer's spending is a Meter

logger = logging.getLogger(__name__)

# Tokens: the bare archive prompt takes ~150 (tests check it), so this still leaves room for an entry or two.
MIN_HISTORY_BUDGET = 512
DEFAULTS: dict[str, Any] = {
    "model": "gpt-4o", "base_url": None, "api_key_env": "OPENAI_API_KEY", "temperature": 1.0, "max_tokens": 2048,
    "timeout": 120.0, "json_mode": True, "history_mode": "archive", "history_token_budget": 6000, "top_k": 5,
    "recent_k": 5, "failures_k": 5, "max_repairs": 2, "max_retries": 5, "backoff_base": 1.0, "backoff_max": 60.0,
    "max_cost_usd": None, "prices": {}, "models": None, "selection": "ucb", "seed": 0, "protocol": "default",
    "max_concurrency": 4, "lookahead": 1,
}  # fmt: skip
ARM_KEYS = {"model", "base_url", "api_key_env", "weight"}
# archive: a fresh prompt from the archive; conversation: one running chat; none: no feedback (the control arm)
HISTORY_MODES = ("archive", "conversation", "none")
PROTOCOLS = ("default", "paper")  # paper: the DiscoPOP paper's conversation, fitness-only feedback


@dataclass
class Arm:
    """One model the proposer can pick, with its running bandit statistics."""

    model: str
    base_url: str | None
    api_key_env: str
    weight: float = 1.0
    picks: int = 0
    observed: int = 0
    reward_sum: float = 0.0
    json_ok: bool = True  # False once the server has rejected response_format

    def reward(self, gain: float, cost: float) -> None:
        """Record one finished proposal: its fitness gain over the best so far, per unit cost."""
        self.observed += 1
        self.reward_sum += gain / max(cost, 1e-6)  # a free request (no price, no tokens) must not divide by 0


def validate(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every field checked; errors say what was received and what is allowed."""
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"openai proposer: unknown option(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **kwargs}

    def need(ok: Any, key: str, allowed: str, value: Any = None, shown: bool = True) -> None:
        if not ok:
            got = repr(cfg[key] if value is None else value) if shown else "a value not shown (it may be a key)"
            raise ValueError(f"openai proposer: {key}={got} is not allowed; expected {allowed}")

    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def url(v: Any) -> bool:
        return v is None or (isinstance(v, str) and urlparse(v).scheme in ("http", "https")
                             and bool(urlparse(v).netloc))

    def env_name(v: Any) -> bool:
        return isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None

    need(isinstance(cfg["model"], str) and cfg["model"].strip(), "model", "a non-empty model id")
    need(url(cfg["base_url"]), "base_url", "null (OpenAI) or an http(s) URL such as http://localhost:8000/v1")
    need(env_name(cfg["api_key_env"]), "api_key_env", "the NAME of an environment variable", shown=False)
    need(num(cfg["temperature"]) and 0 <= cfg["temperature"] <= 2, "temperature", "a number in [0, 2]")
    need(integer(cfg["max_tokens"]) and cfg["max_tokens"] > 0, "max_tokens", "a positive integer")
    need(num(cfg["timeout"]) and cfg["timeout"] > 0, "timeout", "a positive number of seconds")
    need(isinstance(cfg["json_mode"], bool), "json_mode", "true or false")
    need(cfg["history_mode"] in HISTORY_MODES, "history_mode", " or ".join(map(repr, HISTORY_MODES)))
    need(cfg["protocol"] in PROTOCOLS, "protocol", " or ".join(map(repr, PROTOCOLS)))
    need(cfg["protocol"] != "paper" or cfg["history_mode"] == "conversation", "history_mode",
         "'conversation' with protocol='paper' (the paper's protocol is one growing conversation)")
    need(integer(cfg["max_concurrency"]) and cfg["max_concurrency"] >= 1, "max_concurrency", "an integer >= 1")
    need(integer(cfg["lookahead"]) and cfg["lookahead"] in (0, 1), "lookahead", "0 or 1")
    need(integer(cfg["history_token_budget"]) and cfg["history_token_budget"] >= MIN_HISTORY_BUDGET,
         "history_token_budget", f"an integer >= {MIN_HISTORY_BUDGET}")
    for key in ("top_k", "recent_k", "failures_k", "max_repairs", "max_retries", "seed"):
        need(integer(cfg[key]) and cfg[key] >= 0, key, "an integer >= 0")
    need(num(cfg["backoff_base"]) and cfg["backoff_base"] >= 0, "backoff_base", "a number of seconds >= 0")
    need(num(cfg["backoff_max"]) and cfg["backoff_max"] >= cfg["backoff_base"], "backoff_max",
         f"a number of seconds >= backoff_base ({cfg['backoff_base']!r})")
    need(cfg["max_cost_usd"] is None or (num(cfg["max_cost_usd"]) and cfg["max_cost_usd"] > 0), "max_cost_usd",
         "null (unlimited) or a positive number of dollars")
    prices = cfg["prices"] if cfg["prices"] is not None else {}
    need(isinstance(prices, Mapping) and all(
        isinstance(p, Mapping) and set(p) == {"prompt", "completion"} and all(num(x) and x >= 0 for x in p.values())
        for p in prices.values()), "prices", '{model: {"prompt": usd_per_1k, "completion": usd_per_1k}}')
    cfg["prices"] = {str(m): {k: float(x) for k, x in p.items()} for m, p in prices.items()}
    models = cfg["models"]
    need(models is None or (isinstance(models, list) and models), "models", "null or a non-empty list")
    for i, arm in enumerate(models or []):
        key = f"models[{i}]"
        need(isinstance(arm, Mapping) and set(arm) <= ARM_KEYS and isinstance(arm.get("model"), str)
             and arm["model"].strip(), key, f"a mapping with a 'model' and optionally {sorted(ARM_KEYS - {'model'})}",
             arm, shown=isinstance(arm, Mapping) and "api_key_env" not in arm)
        need(url(arm.get("base_url")), key + ".base_url", "null or an http(s) URL", arm.get("base_url"))
        need(env_name(arm.get("api_key_env", "X")), key + ".api_key_env", "an environment variable name",
             shown=False)
        need(num(arm.get("weight", 1.0)) and arm.get("weight", 1.0) > 0, key + ".weight", "a positive number",
             arm.get("weight"))
    need(cfg["selection"] in ("ucb", "thompson", "fixed"), "selection", "'ucb', 'thompson' or 'fixed'")
    return cfg


def plain(value: Any) -> Any:
    """Hydra's DictConfig/ListConfig (or any mapping/sequence) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [plain(v) for v in value]
    return value


def select_arm(arms: list[Arm], selection: str, rng: random.Random) -> int:
    """Pick a model: by fixed weights, or by a bandit (UCB1 / Gaussian Thompson) on gain per cost.

    Rewards are scaled by the largest mean so they are O(1) whatever the currency (dollars or
    thousands of tokens). Every model is tried once before the bandit takes over.
    """
    if len(arms) == 1:
        chosen = 0
    elif selection == "fixed":
        chosen = rng.choices(range(len(arms)), weights=[a.weight for a in arms])[0]
    elif any(a.picks == 0 for a in arms):
        chosen = next(i for i, a in enumerate(arms) if a.picks == 0)
    else:
        means = [a.reward_sum / max(a.observed, 1) for a in arms]
        scale = max(max(abs(m) for m in means), 1e-12)
        total = sum(a.picks for a in arms)
        if selection == "ucb":
            scores = [m / scale + math.sqrt(2 * math.log(total) / a.picks) for m, a in zip(means, arms, strict=True)]
        else:  # thompson: a Gaussian posterior that narrows with observations
            scores = [m / scale + rng.gauss(0.0, 1.0) / math.sqrt(a.observed + 1)
                      for m, a in zip(means, arms, strict=True)]
        chosen = max(range(len(arms)), key=scores.__getitem__)
    arms[chosen].picks += 1
    return chosen
