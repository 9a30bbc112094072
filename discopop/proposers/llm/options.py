"""The OpenAI proposer's options as keyword arguments, the choice among models, spending.

Kept out of ``openai.py`` so the HTTP logic there stays readable. Every option is declared, with
its default and help, on :class:`discopop.config.OpenAISettings`; the checks live there too
(``check_openai``): errors name the field, the received value and what is allowed, except for
values that may be an API key (``api_key_env``), which are never echoed.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from discopop.config.proposer import (  # noqa: F401 - re-exported
    ARM_KEYS,
    MIN_HISTORY_BUDGET,
    PROTOCOLS,
    OpenAISettings,
    check_openai,
)
from discopop.proposers.llm.metering import Meter  # noqa: F401 - re-exported: the proposer's spending is a Meter

logger = logging.getLogger(__name__)

# The defaults live once, on the settings dataclass (whose field help documents each option); "seed" is the run's.
DEFAULTS: dict[str, Any] = {**OpenAISettings().kwargs(), "seed": 0}


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
    return check_openai({**DEFAULTS, **kwargs})


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
