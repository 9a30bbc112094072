"""``task``: the preference task every candidate is fine-tuned and scored on.

Three kinds: ``synthetic`` (built locally: addition, the default, and sorting, the transfer task),
``hub`` (a Hugging Face model, dataset and reward model or LLM judge; presets imdb and tldr) and
``diagnostic`` (a contextual bandit with exact reward and KL, ``discopop.tasks.diagnostic``: the fast tier).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from discopop.config.base import ConfigError, is_env_name, is_url, require, setting

# The embedded tasks (``tasks.synthetic.LANGUAGES`` builds them).
LANGUAGE_NAMES = ("addition", "sorting", "addition_mixedlen")
HUB_REQUIRED = ("model", "dataset")  # a hub task's keys without a default

SCORES = ("probability", "greedy")  # task.score of an embedded task (discopop.fitness.scoring)
# The diagnostic presets (``tasks.diagnostic.PRESETS``; declared here too so config stays a leaf, a test
# checks the two agree).
DIAGNOSTIC_PRESETS = ("clean", "label_noise", "ties", "mixed_quality", "deterministic", "shifted_support",
                      "narrow_support", "rich_deterministic")
DIAGNOSTIC_KL_COEF = 0.05  # tasks.diagnostic.KL_COEF (the rule is there; a test checks the two agree)
WORLD_SEPARATOR = "+"  # task.preset=narrow_support+clean: a composite task, trained and scored on every world


def diagnostic_worlds(preset: str | None) -> list[str]:
    """The worlds (presets) of a diagnostic ``task.preset``, in order: one, or several joined by ``+``.

    A search that sees one world tunes its losses to that world's quirks (docs/results.md §0); a composite's
    fitness averages over several, and its transfer is judged on a world outside it (``config.variants``).
    """
    return str(preset or "clean").split(WORLD_SEPARATOR)


@dataclass
class SftSettings:
    """The small GPT-2 trained as the SFT reference policy of a synthetic task."""

    n_layer: int = setting(3, "Transformer layers.")
    n_embd: int = setting(128, "Embedding width.")
    n_head: int = setting(4, "Attention heads.")
    steps: int = setting(1500, "Optimiser steps of the SFT.")
    batch_size: int = setting(64, "Examples per SFT step.")
    lr: float = setting(1.0e-3, "SFT learning rate.")
    noise: float = setting(0.1, "Share of SFT answers replaced by a random wrong one.")
    systematic_error: float = setting(0.6, "Share of SFT answers with the task's habitual mistake (addition: "
                                           "forgetting the carry; sorting: leaving a smaller last digit last).")
    small_sum_share: float = setting(0.0, "Share of SFT examples drawn from the training prompts whose sum is under "
                                          "20 (addition only). Two-digit operands drawn uniformly make them ~2% of "
                                          "the data, too few for the reference to learn them: a floor no preference "
                                          "loss can move. 0: prompts drawn uniformly, as before.")

    def check(self) -> None:
        share = self.small_sum_share
        require(0 <= share < 1, f"task.sft.small_sum_share must be in [0, 1), got {share}")


@dataclass
class PairsSettings:
    """Preference pairs sampled from the SFT model and labelled by exact correctness."""

    prompts: int = setting(3000, "Training prompts sampled from the SFT model.")
    samples_per_prompt: int = setting(4, "Completions sampled per prompt.")
    max_pairs: int = setting(1536, "Preference pairs kept at most.")
    label_noise: float = setting(0.0, "Share of pairs with chosen/rejected swapped, as disagreeing annotators do.")
    hard_flip: float = setting(0.0, "Probability a pair on a hard prompt (addition: a carry) has its label swapped, "
                                    "on top of label_noise: noise where the data is informative "
                                    "(discopop/tasks/pair_variants.py).")
    ties: float = setting(0.0, "Share of prompts whose pair is a tie instead: two different wrong answers in random "
                               "order.")
    length_bias: float = setting(0.0, "Probability that of two answers of different length the longer is made the "
                                      "chosen one, whatever its correctness (a spurious feature).")

    small_sum_share: float = setting(0.0, "Share of the pair prompts drawn from the training prompts whose sum is "
                                          "under 20 (addition only; as many as there are, at most): pairs where the "
                                          "reference's small-sum answers can be corrected. 0: drawn uniformly (~2%).")

    def check(self) -> None:
        for key in ("label_noise", "hard_flip", "ties", "length_bias", "small_sum_share"):
            value = getattr(self, key)
            require(0 <= value <= 1, f"task.pairs.{key} must be in [0, 1], got {value}")


@dataclass
class SyntheticTaskSettings:
    """An embedded task built locally (``task=addition``, the default, or ``task=sorting``)."""

    name: str = setting("addition", "The task's name (the preset).")
    kind: str = setting("synthetic", "synthetic (built locally) or hub.")
    language: str = setting("addition", "Which embedded task: addition, sorting or addition_mixedlen (operands of "
                                        "1-4 digits: answers of mixed length).")
    seed: int = setting(0, "Seeds the built task (SFT, pairs, label noise, held-out split).")
    cache_dir: str | None = setting(None, "Where built tasks are cached; null: $DISCOPOP_CACHE_DIR or "
                                          "~/.cache/discopop.")
    heldout_prompts: int = setting(3000, "Split off first, by unordered problem: held-out prompts never trained on.")
    search_prompts: int | None = setting(500, "Of the held-out prompts, those scored during the search; the rest "
                                              "confirm the winners (null: half).")
    replicate_prompts: int = setting(0, "Of the held-out prompts after the search's, the last N are kept back for "
                                        "replications (confirm.split=replicate): prompts neither the search nor "
                                        "a default confirmation scores. 0: none (a replication would re-score the "
                                        "confirmation prompts that selected the winner).")
    score: str = setting("probability", "Per-prompt score of the fitness: probability (the policy's teacher-forced "
                                        "probability of the correct answer, the exact expected 0/1 reward) or greedy "
                                        "(0/1 accuracy of the greedy answer, reported beside it either way).")
    kl_coef: float = setting(0.5, "fitness = score - kl_coef * KL(policy || reference), the KL-regularised objective "
                                  "DPO-family losses optimise, at the default training.beta (0.5); fixed, so runs at "
                                  "other betas are scored on one objective (see discopop/fitness/scoring.py).")
    sft: SftSettings = setting(SftSettings(), "The SFT reference policy.")
    pairs: PairsSettings = setting(PairsSettings(), "The preference pairs.")

    def check(self) -> None:
        require(self.language in LANGUAGE_NAMES,
                f"task.language must be one of {', '.join(LANGUAGE_NAMES)}, got {self.language!r}")
        require(self.score in SCORES, f"task.score must be one of {', '.join(SCORES)}, got {self.score!r}")
        require(self.kl_coef >= 0, f"task.kl_coef must be >= 0, got {self.kl_coef}")
        require(self.replicate_prompts >= 0, f"task.replicate_prompts must be >= 0, got {self.replicate_prompts}")
        self.pairs.check()
        self.sft.check()
        for part in ("sft", "pairs"):
            require(self.language != "sorting" or not getattr(self, part).small_sum_share,
                    f"task.{part}.small_sum_share is for addition tasks (sorting has no sums)")


@dataclass
class DiagnosticTaskSettings:
    """The diagnostic tier (``task=diagnostic``): a contextual bandit whose reward and KL are computed exactly.

    A fine-tune takes ~0.1 s (plus the oracle's round trips) instead of seconds, and the only noise is the
    seed's pairs and their order, so the search can be developed and checked in minutes
    (``discopop/tasks/diagnostic.py`` describes the world; ``benchmarks/diagnostic_tier.py`` measures it).
    Fields left null take the preset's value (``tasks.diagnostic.PRESETS``).
    """

    name: str = setting("diagnostic", "The task's name.")
    kind: str = setting("diagnostic", "synthetic (built locally), hub or diagnostic.")
    preset: str = setting("clean", f"Which world and data: {', '.join(DIAGNOSTIC_PRESETS)}; several joined by + "
                                   "(e.g. narrow_support+clean) make a composite task: each fine-tune trains and "
                                   "scores on every world at the same seed and rate; the worlds share their held-out "
                                   "contexts, so a context's score is its mean over the worlds (the statistics "
                                   "count it once) and the fitness is the worlds' mean. The fields set here apply "
                                   "to every world.")
    contexts: int | None = setting(None, "Training contexts the pairs are drawn on (preset: 256).")
    eval_contexts: int | None = setting(None, "Held-out contexts scored exactly; the first half scores the search, "
                                              "the second half confirms the winners (preset: 256). Changing it "
                                              "redraws the whole world, the training contexts' rewards and "
                                              "reference too (one random stream): compare runs at one value; "
                                              "extra_search_contexts and extra_confirm_contexts have streams "
                                              "of their own and do not.")
    actions: int | None = setting(None, "Actions per context (preset: 16).")
    task_seed: int | None = setting(None, "Seeds the world: contexts, reward, reference (preset: 0).")
    pairs_per_context: int | None = setting(None, "Preference pairs drawn per training context and seed.")
    label_noise: float | None = setting(None, "Probability a pair's label is flipped.")
    label_temperature: float | None = setting(None, "Bradley-Terry temperature of the labels; 0: deterministic.")
    replicate_contexts: int | None = setting(None, "Of the confirming half of the held-out contexts, the last N "
                                                   "are kept for replications (confirm.split=replicate; preset: 0).")
    extra_confirm_contexts: int | None = setting(None, "Held-out contexts added to the confirming half only, drawn "
                                                       "from a random stream of their own: the training side and "
                                                       "the search half stay those of the world without them. "
                                                       "Scoring is exact and ~free, and the contexts are most of "
                                                       "a confirmation's variance on this tier (task=diagnostic "
                                                       "sets it: conf/task/diagnostic.yaml; null: the preset's, 0).")
    extra_search_contexts: int | None = setting(None, "Held-out contexts added to the search half only, from a "
                                                      "random stream of their own (the world and the confirming "
                                                      "half do not move): a wider search split on the same world, "
                                                      "so the ranking of references and candidates is not that of "
                                                      "a few fixed contexts (null: the preset's, 0).")
    steps: int | None = setting(None, "Adam steps of one fine-tune (preset: 80).")
    batch: int | None = setting(None, "Pairs per step (preset: 256).")
    kl_coef: float = setting(DIAGNOSTIC_KL_COEF, "fitness = expected reward - kl_coef * KL(policy || reference), "
                                                 "both exact (the reward is standardised per context: uniform play "
                                                 "scores 0). 0.05 = the default training.beta (0.1) x the labels' "
                                                 "Bradley-Terry temperature (0.5): the KL-regularised objective "
                                                 "the labels define (tasks/diagnostic.py, KL_COEF), one for every "
                                                 "preset and beta; 0: reward only.")
    cache_dir: str | None = setting(None, "Where the shared reference store lives; null: $DISCOPOP_CACHE_DIR or "
                                          "~/.cache/discopop (nothing is built: the world is made in memory).")

    def check(self) -> None:
        worlds = diagnostic_worlds(self.preset)
        require(len(worlds) > 1 or self.preset in DIAGNOSTIC_PRESETS,
                f"task.preset must be one of {', '.join(DIAGNOSTIC_PRESETS)}, got {self.preset!r}")
        unknown = [w for w in worlds if w not in DIAGNOSTIC_PRESETS]
        require(not unknown, f"task.preset={self.preset!r}: unknown world(s) {', '.join(map(repr, unknown))} "
                             f"(each of a composite must be one of {', '.join(DIAGNOSTIC_PRESETS)})")
        require(len(set(worlds)) == len(worlds), f"task.preset={self.preset!r} lists a world twice")
        require(self.kl_coef >= 0, f"task.kl_coef must be >= 0, got {self.kl_coef}")
        for key in ("contexts", "actions", "pairs_per_context", "steps", "batch"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"task.{key} must be >= 1 (or null), got {value}")
        require(self.eval_contexts is None or self.eval_contexts >= 4,
                f"task.eval_contexts must be >= 4 (half search, half confirm), got {self.eval_contexts}")
        require(self.actions is None or self.actions >= 2, f"task.actions must be >= 2, got {self.actions}")
        require(self.replicate_contexts is None or self.replicate_contexts >= 0,
                f"task.replicate_contexts must be >= 0, got {self.replicate_contexts}")
        for key in ("extra_confirm_contexts", "extra_search_contexts"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"task.{key} must be >= 0, got {value}")
        require(self.label_noise is None or 0 <= self.label_noise <= 1,
                f"task.label_noise must be in [0, 1], got {self.label_noise}")
        require(self.label_temperature is None or self.label_temperature >= 0,
                f"task.label_temperature must be >= 0, got {self.label_temperature}")


@dataclass
class JudgeSettings:
    """An LLM judge grading each held-out completion 1-10 (MT-Bench single-answer grading).

    It runs in the main process only; the key never reaches a sandboxed worker.
    """

    model: str | None = setting(None, "e.g. gpt-4o-mini; null = no judge (reward_model scores).")
    base_url: str | None = setting(None, "null = api.openai.com; any OpenAI-compatible endpoint, e.g. "
                                         "http://localhost:8000/v1.")
    api_key_env: str = setting("OPENAI_API_KEY", "The NAME of the variable holding the key; unset is fine only for "
                                                 "localhost.")
    template: str | None = setting(None, "Prompt file with $question and $answer; null = "
                                         "discopop/prompts/judge_single.txt.")
    temperature: float = setting(0.0, "Sampling temperature of the judge.")
    max_tokens: int = setting(512, "Room for a short justification before the [[rating]].")
    timeout: float = setting(60.0, "Seconds per request.")
    max_retries: int = setting(3, "Retries of a 429 / 5xx / timeout / unparseable rating, exponential backoff.")
    backoff_base: float = setting(1.0, "Seconds before the first retry (doubles each time).")
    backoff_max: float = setting(30.0, "Cap on one backoff sleep, seconds.")
    concurrency: int = setting(4, "Requests in flight at once.")
    max_cost_usd: float | None = setting(None, "Budget when the proposer has none of its own (with proposer=openai, "
                                               "its max_cost_usd caps both).")
    prices: dict[str, dict[str, float]] = setting({}, "{model: {prompt: usd_per_1k, completion: usd_per_1k}}; the "
                                                      "proposer's prices also apply.")


@dataclass
class HubTaskSettings:
    """A task from the Hugging Face Hub or local copies (save_pretrained / save_to_disk directories).

    e.g. ``task=hub task.model=gpt2 task.dataset=trl-lib/ultrafeedback_binarized task.reward_model=...``;
    ready-made: ``task=imdb`` (the paper's sentiment setup), ``task=tldr`` (summaries graded by an LLM judge).
    """

    name: str = setting("hub", "The task's name (the preset).")
    kind: str = setting("hub", "synthetic (built locally) or hub.")
    model: str | None = setting(None, "Causal LM: hub id or local path (the SFT reference policy).")
    tokenizer: str | None = setting(None, "Default: the model's.")
    dataset: str | None = setting(None, "Preference pairs: hub id or a save_to_disk directory.")
    split: str = setting("train", "Dataset split holding the pairs.")
    prompt_column: str = setting("prompt", "Column of the prompts.")
    chosen_column: str = setting("chosen", "Column of the preferred completions.")
    rejected_column: str = setting("rejected", "Column of the rejected completions.")
    heldout_prompts: int = setting(64, "Distinct prompts split off first (never trained on); half search, half "
                                       "confirm.")
    max_pairs: int | None = setting(None, "Cap on training pairs (null: all).")
    reward_model: str | None = setting(None, "Sequence-classification model scoring prompt + completion (hub id or "
                                             "local path).")
    reward_index: int = setting(0, "Which of its logits is the reward (a sentiment classifier: its positive class).")
    max_new_tokens: int = setting(32, "Tokens generated per held-out prompt.")
    score_batch_size: int = setting(32, "Held-out prompts decoded together (sorted by length, so padding stays "
                                        "small).")
    kl_coef: float = setting(0.05, "A reward model can be gamed by drifting far from the reference: penalise KL.")
    seed: int = setting(0, "Seeds the held-out split.")
    cache_dir: str | None = setting(None, "Where the split is cached; null: $DISCOPOP_CACHE_DIR or ~/.cache/discopop.")
    judge: JudgeSettings = setting(JudgeSettings(), "Instead of reward_model: an LLM judge (see JudgeSettings).")

    def check(self) -> None:
        plain = asdict(self)
        for problem in (hub_config_problem(plain), judge_config_problem(plain["judge"])):
            if problem:
                raise ConfigError(problem)


JUDGE_DEFAULTS: dict[str, Any] = asdict(JudgeSettings())  # declared once, with each option's help, on JudgeSettings


def hub_config_problem(cfg: Mapping[str, Any]) -> str | None:
    """What a hub task config lacks (one line), or None: a policy, pairs, and one source of reward."""
    missing = [f"task.{k}" for k in HUB_REQUIRED if not cfg.get(k)]
    judged = bool((cfg.get("judge") or {}).get("model"))
    if not cfg.get("reward_model") and not judged:
        missing.append("task.reward_model")
    if missing:
        return (f"task=hub needs {', '.join(missing)} (hub ids or local paths; task.judge.model may replace "
                "the reward model)")
    if cfg.get("reward_model") and judged:
        return "task=hub: set task.reward_model or task.judge.model, not both (one of them gives the reward)"
    return None


def judge_config_problem(cfg: Any) -> str | None:
    """What is wrong with ``task.judge`` (one line that never echoes a value that may be a key), or None."""
    if not isinstance(cfg, Mapping):
        return "task.judge must be a mapping with at least a model"
    if "api_key" in cfg:
        return ("task.judge.api_key is not a setting: put the key in an environment variable and name it with "
                "task.judge.api_key_env (the value given was not saved)")
    unknown = sorted(set(cfg) - set(JUDGE_DEFAULTS))
    if unknown:
        return f"task.judge: unknown option(s) {unknown}; allowed: {sorted(JUDGE_DEFAULTS)}"
    full = {**JUDGE_DEFAULTS, **cfg}
    if not full["model"]:
        return None  # no judge: the task's reward model scores it
    if not is_env_name(full["api_key_env"]):
        return ("task.judge.api_key_env must be the NAME of an environment variable holding the key "
                "(the value given is not a variable name and was not saved)")
    url = full["base_url"]
    if not is_url(url):
        return f"task.judge.base_url={url!r} is not allowed; expected null (OpenAI) or an http(s) URL"
    for key, low in (("max_tokens", 1), ("concurrency", 1), ("max_retries", 0)):
        if not (isinstance(full[key], int) and not isinstance(full[key], bool) and full[key] >= low):
            return f"task.judge.{key}={full[key]!r} is not allowed; expected an integer >= {low}"
    for key in ("temperature", "timeout", "backoff_base", "backoff_max"):
        if not (isinstance(full[key], int | float) and not isinstance(full[key], bool) and full[key] >= 0):
            return f"task.judge.{key}={full[key]!r} is not allowed; expected a number >= 0"
    if full["max_cost_usd"] is not None and not (isinstance(full["max_cost_usd"], int | float)
                                                 and full["max_cost_usd"] > 0):
        return f"task.judge.max_cost_usd={full['max_cost_usd']!r} is not allowed; expected null or dollars > 0"
    template = full["template"]
    if template is not None and not Path(str(template)).expanduser().is_file():
        return f"task.judge.template: no such file {template}"
    return None
