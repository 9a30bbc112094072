"""``proposer``: who writes the candidate losses (the offline evolution, an LLM, or the references replayed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from discopop.config.base import ConfigError, is_env_name, is_int, is_number, is_url, require, setting
from discopop.config.references import known

# archive: a fresh prompt from the archive; conversation: one running chat; none: no feedback (the control arm)
OPENAI_HISTORY_MODES = ("archive", "conversation", "none")
PROTOCOLS = ("default", "paper")  # paper: the DiscoPOP paper's conversation, fitness-only feedback
SELECTIONS = ("ucb", "thompson", "fixed")
# The evolution proposer's arms: feedback selects on the archive, none is the control arm (no feedback).
HISTORY_MODES = ("feedback", "none")
POPULATIONS = ("cells", "flat")  # cells: the best loss of each behaviour cell may breed; flat: any scored loss
# OpenAI list prices in 2024, USD per 1,000 tokens: check them before trusting max_cost_usd.
LIST_PRICES = {"gpt-4o": {"prompt": 0.0025, "completion": 0.01},
               "gpt-4o-mini": {"prompt": 0.00015, "completion": 0.0006}}


@dataclass
class EvolutionSettings:
    """Offline evolutionary proposer: program transformations over the archive's losses."""

    name: str = setting("evolution", "The proposer to build: evolution, openai or reference.")
    tournament_size: int = setting(3, "Parents are the fittest of this many random scored candidates.")
    crossover_rate: float = setting(0.1, "Share of children made by recombining two parents (often a parent's "
                                         "shape again).")
    constant_rate: float = setting(0.05, "Share of children made by perturbing numeric constants (mostly "
                                         "near-copies).")
    novelty_weight: float = setting(0.1, "Penalty per existing child of a parent (diversity pressure).")
    max_attempts: int = setting(20, "Tries per requested child before giving up.")
    population: str = setting("cells", "cells: parents are the best loss of each behaviour cell (MAP-Elites, "
                                       "search/behaviour_map.py), so distinct gradient shapes survive; flat: every "
                                       "scored loss is a possible parent.")
    history_mode: str = setting("feedback", "feedback: select on the archive; none: the control arm (no feedback, "
                                            "random operator chains on the references: best-of-N sampling, to show "
                                            "what selection adds).")
    chain_length: int = setting(3, "history_mode=none: each child is a chain of 1..chain_length random operators.")
    feedback_chain_length: int = setting(1, "history_mode=feedback: each child is a chain of "
                                            "1..feedback_chain_length operators on its tournament-chosen parent. "
                                            "1: one operator a generation (chains grow with the lineage); equal to "
                                            "chain_length: both arms draw children alike, so feedback - control "
                                            "measures selection alone.")
    lookahead: int = setting(0, "1: propose generation g+1 while g trains; 0: lock step (proposing takes "
                                "milliseconds here, so lock step costs nothing and sees one generation more).")
    v2_operators: bool = setting(False, "Also draw the contract-v2 operators (length normalisation, NLL mixing, "
                                        "reference-free: children that take token counts or the chosen NLL). Off: "
                                        "the draws, and so the archives, are exactly as before.")

    def check(self) -> None:
        require(self.history_mode in HISTORY_MODES,
                f"proposer.history_mode must be {' or '.join(HISTORY_MODES)}, got {self.history_mode!r}")
        require(self.population in POPULATIONS,
                f"proposer.population must be {' or '.join(POPULATIONS)}, got {self.population!r}")
        try:
            self.check_ranges()
        except ValueError as err:
            raise ConfigError(f"proposer: {err}") from None

    def check_ranges(self) -> None:
        """The numeric ranges (``EvolutionProposer`` checks them too when it is built directly)."""
        counts = {"tournament_size": self.tournament_size, "max_attempts": self.max_attempts,
                  "chain_length": self.chain_length, "feedback_chain_length": self.feedback_chain_length}
        for key, value in counts.items():
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        crossover, constant = self.crossover_rate, self.constant_rate
        if not (0 <= crossover <= 1 and 0 <= constant <= 1 and crossover + constant <= 1):
            raise ValueError(f"crossover_rate ({crossover}) and constant_rate ({constant}) must lie in [0, 1] and "
                             "sum to at most 1")
        if self.novelty_weight < 0:
            raise ValueError(f"novelty_weight must be >= 0, got {self.novelty_weight}")
        if self.lookahead not in (0, 1) or isinstance(self.lookahead, bool):
            raise ValueError(f"lookahead must be 0 or 1, got {self.lookahead!r}")

    def kwargs(self) -> dict[str, Any]:
        """The proposer's constructor arguments (everything but ``name``)."""
        return {k: v for k, v in vars(self).items() if k != "name"}


@dataclass
class OpenAISettings:
    """LLM proposer: any OpenAI-compatible chat-completions endpoint, with DiscoPOP's proposal protocol.

    The API key never goes in the config: only the NAME of the environment variable that holds it.
    """

    name: str = setting("openai", "The proposer to build: evolution, openai or reference.")
    model: str = setting("gpt-4o", "Model id sent to the endpoint (ignored when `models` is set).")
    base_url: str | None = setting(None, "null = api.openai.com; e.g. http://localhost:8000/v1 for vLLM / llama.cpp.")
    api_key_env: str = setting("OPENAI_API_KEY", "Environment variable with the key; unset is fine only for "
                                                 'localhost/127.0.0.1 (sends "EMPTY").')
    temperature: float = setting(1.0, "Sampling temperature in [0, 2]; 1.0 keeps proposals diverse.")
    max_tokens: int = setting(2048, 'Answer cap; a loss with its "thought" fits in well under 1k tokens.')
    timeout: float = setting(120.0, "Seconds per request before it counts as a timeout (and is retried).")
    json_mode: bool = setting(True, "Ask for response_format=json_object; servers that 400 on it fall back to plain "
                                    "text.")
    history_mode: str = setting("archive", "archive = fresh prompt from the archive each time, with each loss's "
                                           "results; conversation = running chat with feedback; none = no feedback "
                                           "(control arm).")
    protocol: str = setting("default", "default = the rich prompts; paper = the paper's protocol (see "
                                       "proposer=openai_paper).")
    history_token_budget: int = setting(6000, "Estimated tokens of history per request (chars/4); halved on a "
                                              "context-length error.")
    top_k: int = setting(5, "Best scored candidates shown, with code.")
    recent_k: int = setting(5, "Most recent scored candidates shown (besides the best), with code.")
    failures_k: int = setting(5, "Most recent failures shown, one line each with the error.")
    max_repairs: int = setting(2, "Attempts to fix a candidate that failed parsing or checks, error sent back each "
                                  "time.")
    max_concurrency: int = setting(4, "Requests in flight at once when a generation asks for several proposals.")
    lookahead: int = setting(1, "1: ask for generation g+1 while g trains (from the archive as it stood before g's "
                                "evaluation), so workers never wait on a request; 0: lock step (feedback is fresher).")
    max_retries: int = setting(5, "Retries of a request after 429 / 5xx / timeout / connection error.")
    backoff_base: float = setting(1.0, "Seconds before the first retry; doubles each retry (with jitter), "
                                       "Retry-After wins.")
    backoff_max: float = setting(60.0, "Cap on one backoff sleep, seconds.")
    max_cost_usd: float | None = setting(None, "Stop the run once this many dollars are spent; null = no limit.")
    prices: dict[str, Any] = setting(LIST_PRICES, "USD per 1,000 tokens per model, {model: {prompt, completion}}; "
                                                  "a price also matches dated snapshots (gpt-4o-2024-08-06). Unknown "
                                                  "models are counted in tokens only (one warning).")
    models: list[Any] | None = setting(None, "Optional list of {model, base_url, api_key_env, weight} to choose "
                                             "among.")
    selection: str = setting("ucb", "With several models: ucb | thompson (bandit on fitness gain per cost) | fixed "
                                    "(weights).")

    def check(self) -> None:
        """Every field checked, as one config line that never echoes a value that may be a key."""
        require(is_env_name(self.api_key_env), "proposer.api_key_env must be the NAME of an environment variable "
                "holding the key (the value given is not a variable name and was not saved)")
        try:
            check_openai(self.kwargs())
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def kwargs(self) -> dict[str, Any]:
        """The proposer's constructor arguments (everything but ``name``)."""
        return {k: v for k, v in vars(self).items() if k != "name"}


# Tokens: the bare archive prompt takes ~150 (tests check it), so this still leaves room for an entry or two.
MIN_HISTORY_BUDGET = 512
ARM_KEYS = {"model", "base_url", "api_key_env", "weight"}


def check_openai(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` (every OpenAISettings field but name, and ``seed``) checked, prices as floats.

    Errors say what was received and what is allowed, except for values that may be an API key.
    """
    cfg = dict(cfg)

    def need(ok: Any, key: str, allowed: str, value: Any = None, shown: bool = True) -> None:
        if not ok:
            got = repr(cfg[key] if value is None else value) if shown else "a value not shown (it may be a key)"
            raise ValueError(f"openai proposer: {key}={got} is not allowed; expected {allowed}")

    need(isinstance(cfg["model"], str) and cfg["model"].strip(), "model", "a non-empty model id")
    need(is_url(cfg["base_url"]), "base_url", "null (OpenAI) or an http(s) URL such as http://localhost:8000/v1")
    need(is_env_name(cfg["api_key_env"]), "api_key_env", "the NAME of an environment variable", shown=False)
    need(is_number(cfg["temperature"]) and 0 <= cfg["temperature"] <= 2, "temperature", "a number in [0, 2]")
    need(is_int(cfg["max_tokens"]) and cfg["max_tokens"] > 0, "max_tokens", "a positive integer")
    need(is_number(cfg["timeout"]) and cfg["timeout"] > 0, "timeout", "a positive number of seconds")
    need(isinstance(cfg["json_mode"], bool), "json_mode", "true or false")
    need(cfg["history_mode"] in OPENAI_HISTORY_MODES, "history_mode", " or ".join(map(repr, OPENAI_HISTORY_MODES)))
    need(cfg["protocol"] in PROTOCOLS, "protocol", " or ".join(map(repr, PROTOCOLS)))
    need(cfg["protocol"] != "paper" or cfg["history_mode"] == "conversation", "history_mode",
         "'conversation' with protocol='paper' (the paper's protocol is one growing conversation)")
    need(is_int(cfg["max_concurrency"]) and cfg["max_concurrency"] >= 1, "max_concurrency", "an integer >= 1")
    need(is_int(cfg["lookahead"]) and cfg["lookahead"] in (0, 1), "lookahead", "0 or 1")
    need(is_int(cfg["history_token_budget"]) and cfg["history_token_budget"] >= MIN_HISTORY_BUDGET,
         "history_token_budget", f"an integer >= {MIN_HISTORY_BUDGET}")
    for key in ("top_k", "recent_k", "failures_k", "max_repairs", "max_retries", "seed"):
        if key in cfg:
            need(is_int(cfg[key]) and cfg[key] >= 0, key, "an integer >= 0")
    need(is_number(cfg["backoff_base"]) and cfg["backoff_base"] >= 0, "backoff_base", "a number of seconds >= 0")
    need(is_number(cfg["backoff_max"]) and cfg["backoff_max"] >= cfg["backoff_base"], "backoff_max",
         f"a number of seconds >= backoff_base ({cfg['backoff_base']!r})")
    need(cfg["max_cost_usd"] is None or (is_number(cfg["max_cost_usd"]) and cfg["max_cost_usd"] > 0), "max_cost_usd",
         "null (unlimited) or a positive number of dollars")
    prices = cfg["prices"] if cfg["prices"] is not None else {}
    need(isinstance(prices, Mapping) and all(
        isinstance(p, Mapping) and set(p) == {"prompt", "completion"}
        and all(is_number(x) and x >= 0 for x in p.values()) for p in prices.values()),
        "prices", '{model: {"prompt": usd_per_1k, "completion": usd_per_1k}}')
    cfg["prices"] = {str(m): {k: float(x) for k, x in p.items()} for m, p in prices.items()}
    models = cfg["models"]
    need(models is None or (isinstance(models, list) and models), "models", "null or a non-empty list")
    for i, arm in enumerate(models or []):
        key = f"models[{i}]"
        need(isinstance(arm, Mapping) and set(arm) <= ARM_KEYS and isinstance(arm.get("model"), str)
             and arm["model"].strip(), key, f"a mapping with a 'model' and optionally {sorted(ARM_KEYS - {'model'})}",
             arm, shown=isinstance(arm, Mapping) and "api_key_env" not in arm)
        need(is_url(arm.get("base_url")), key + ".base_url", "null or an http(s) URL", arm.get("base_url"))
        need(is_env_name(arm.get("api_key_env", "X")), key + ".api_key_env", "an environment variable name",
             shown=False)
        need(is_number(arm.get("weight", 1.0)) and arm.get("weight", 1.0) > 0, key + ".weight", "a positive number",
             arm.get("weight"))
    need(cfg["selection"] in SELECTIONS, "selection", "'ucb', 'thompson' or 'fixed'")
    return cfg


@dataclass
class ReferenceSettings:
    """Replays the reference losses in proposals/ (smoke tests, benchmarks)."""

    name: str = setting("reference", "The proposer to build: evolution, openai or reference.")
    names: list[str] | None = setting(None, "Reference losses to replay, in order; null: every file in proposals/.")

    def check(self) -> None:
        unknown = [n for n in self.names or [] if n not in known()]
        require(not unknown, f"proposer.names: unknown reference loss(es) {', '.join(unknown)} "
                             f"(available: {', '.join(known())})")

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "name"}
