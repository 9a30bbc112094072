"""Typed run settings: one dataclass per config group, registered as hydra schemas.

Every default is declared once, on a dataclass field with its help text (``metadata["help"]``);
the YAML files under ``discopop/conf`` extend these schemas (``defaults: [<group>_schema, _self_]``)
and hold only the presets' differences. Hydra rejects an unknown key or a value of the wrong type
while composing; ``RunSettings.check`` then checks the values once, before anything is written.
The loop and its parts read attributes of these objects; where a config must cross a process
boundary (a sandboxed worker gets its task and training config as JSON) it goes as ``asdict``.

Groups: ``task`` (:class:`SyntheticTaskSettings`, :class:`HubTaskSettings`, :class:`DiagnosticTaskSettings`),
``proposer`` (:class:`EvolutionSettings`, :class:`OpenAISettings`, :class:`ReferenceSettings`), ``training``
(:class:`TrainingSettings`) and ``executor`` (:class:`LocalExecutorSettings`, :class:`RayExecutorSettings`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, TypeVar

from discopop.config.base import (
    KEY_LIKE,
    ConfigError,
    check_count,
    from_plain,
    from_wire,
    help_of,
    require,
    setting,
)
from discopop.config.cascade import CascadeSettings
from discopop.config.proposer import EvolutionSettings, OpenAISettings, ReferenceSettings
from discopop.config.references import known
from discopop.config.task import (
    DiagnosticTaskSettings,
    HubTaskSettings,
    JudgeSettings,
    PairsSettings,
    SftSettings,
    SyntheticTaskSettings,
)
from discopop.config.training import (
    ExecutorSettings,
    LocalExecutorSettings,
    RayExecutorSettings,
    TrainingSettings,
    training_from_wire,
)
from discopop.config.variants import variant_names

__all__ = [
    "API_KEY_REFUSED", "GROUP_KEYS", "KEY_LIKE", "MAX_SEEDS_LIMIT", "SCHEMAS", "WANDB_MODES", "CascadeSettings",
    "ConfigError",
    "ConfirmSettings", "DiagnosticTaskSettings", "EvolutionSettings", "ExecutorSettings", "HubTaskSettings",
    "JudgeSettings",
    "LocalExecutorSettings", "OpenAISettings", "PairsSettings", "RayExecutorSettings", "ReferenceSettings",
    "RunSettings", "SelectionSettings", "SftSettings", "SyntheticTaskSettings", "TaskSettings", "TrainingSettings",
    "WandbSettings", "check_group", "check_race", "describe", "executor_settings", "from_plain", "help_of", "plain",
    "proposer_settings", "register_schemas", "task_from_wire", "task_settings", "training_from_wire", "typed",
]  # fmt: skip

MISSING = "???"  # omegaconf.MISSING: a group hydra fills in (kept literal: importing settings stays light)
BASELINES = ["dpo", "hinge", "ipo", "kto_pair", "lrml", "padll", "cell", "pfl", "aql", "aqfl", "dbaql"]
WANDB_MODES = ("offline", "online", "disabled")
MAX_SEEDS_LIMIT = 100  # selection.max_seeds at most: keeps race seeds (base + 500 + i) below the confirmation seeds
MAX_PICK_SEEDS = 100  # selection.pick_seeds at most: pick seeds (base + 3000 + i) stay apart from every other kind


@dataclass
class ConfirmSettings:
    """The end-of-run confirmation of the winners on fresh seeds and the held-back prompts."""

    top_k: int = setting(3, "Best candidates re-trained on fresh seeds at the end (DPO always is).")
    seeds: int = setting(5, "Fresh seeds per comparison: with 3, t has 2 d.o.f. and Holm over 6 tests needs "
                            "|t| ~ 10.")
    references: Any = setting("auto", "Best baselines (by search fitness) re-trained on the fresh seeds too; the "
                                      "candidates are held to the one with the best fresh-seed mean, so a baseline "
                                      "left out cannot be the bar. A number, all (every baseline the run scored), "
                                      "or auto: all on task=diagnostic (a fine-tune costs ms; confirming 4 of 11 "
                                      "let a noisy search ranking leave out the strongest, docs/results.md), 2 "
                                      "elsewhere (each is confirm.seeds full fine-tunes).")
    split: str = setting("confirm", "Which held-out prompts the confirmation scores: confirm (the default) or "
                                    "replicate (a replication run, e.g. seed=100: the part task.replicate_prompts "
                                    "keeps back, which neither the search nor a default confirmation used).")
    transfer: Any = setting("auto", "Held-out task variants the same finalists and baselines are also confirmed on "
                                    "(transfer is part of the verdict; discopop/config/variants.py): a list of "
                                    "variant names (task=diagnostic: other presets; addition: pair variants such "
                                    "as hardflip), [] for none, auto: one held-out variant per task (diagnostic "
                                    "clean -> label_noise, other presets -> clean, a composite a+b -> the first "
                                    "of its worlds' choices that is none of its worlds; none for hub tasks).")

    def check(self) -> None:
        require(self.seeds >= 0 and self.top_k >= 0, "confirm.seeds and confirm.top_k must be >= 0")
        require(self.references in ("auto", "all") or (isinstance(self.references, int)
                                                        and not isinstance(self.references, bool)
                                                        and self.references >= 1),
                f"confirm.references must be an integer >= 1, all or auto, got {self.references!r}")
        require(self.split in ("confirm", "replicate"),
                f"confirm.split must be confirm or replicate, got {self.split!r}")

    def baseline_count(self, scored: int, exact_tier: bool) -> int:
        """How many baselines the confirmation re-trains, of the ``scored`` ones the run has (``exact_tier``: the
        run's task is ``task=diagnostic``, where ``auto`` means all)."""
        if self.references == "all" or (self.references == "auto" and exact_tier):
            return max(1, scored)
        return 2 if self.references == "auto" else int(self.references)


@dataclass
class SelectionSettings:
    """Noise-aware selection (``discopop/search/seed_race.py``).

    After the learning-rate protocol, a candidate that could enter the best top_k gets more search
    seeds at its chosen rate, one at a time while still in contention; references always get all of
    them. Proposers rank by mean - z * noise / sqrt(seeds).
    """

    max_seeds: int = setting(3, "Search seeds per row at most (1: no race, one seed each).")
    top_k: int = setting(5, "Contention: its upper bound reaches the k-th best lower bound of the scored rows.")
    z: float = setting(1.0, "Width of the confidence bounds, in standard errors.")
    noise_prior: float = setting(0.01, "One seed's fitness std assumed until rows with several seeds measure it.")
    reference_store: bool = setting(True, "Keep the reference losses' fine-tunes in <cache_dir>/results.sqlite, "
                                          "shared by every run: a run with the same task, training and scoring "
                                          "settings takes them from there instead of training them again. false: "
                                          "train every reference in this run.")

    pick_holdout: bool = setting(False, "Hold half of the prompts that rank a row out of selection: its fitness, "
                                        "the race, parents and the LLM's view use one half, and only the finalists "
                                        "sent to confirmation are ordered on the other (metrics.pick), so the pick "
                                        "is not made on the prompts selection climbed.")
    pick_seeds: int = setting(0, "Before confirmation, re-train the pick_pool best rows on this many seeds "
                                 "selection never trained on (base seed + 3000 + i) and send the best of them on "
                                 "those to confirmation (discopop/search/pick_stage.py). 0: off; the finalists are "
                                 "the best by search standing.")
    pick_pool: int = setting(15, "How many of the best distinct rows selection ranked the pick_seeds re-train.")

    def check(self) -> None:
        try:
            check_race(self.max_seeds, self.top_k, self.z, self.noise_prior)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        require(0 <= self.pick_seeds <= MAX_PICK_SEEDS,
                f"selection.pick_seeds must be in 0..{MAX_PICK_SEEDS}, got {self.pick_seeds}")
        require(self.pick_pool >= 1, f"selection.pick_pool must be >= 1, got {self.pick_pool}")


def check_race(max_seeds: int, top_k: int, z: float, noise_prior: float) -> None:
    """The selection numbers' ranges, one ``ValueError`` line (``seed_race.RacePolicy`` checks them too)."""
    if not 1 <= max_seeds <= MAX_SEEDS_LIMIT:
        raise ValueError(f"selection.max_seeds must be in 1..{MAX_SEEDS_LIMIT}, got {max_seeds}")
    if top_k < 1:
        raise ValueError(f"selection.top_k must be >= 1, got {top_k}")
    if not (z >= 0 and math.isfinite(z)):
        raise ValueError(f"selection.z must be a finite number >= 0, got {z}")
    if not (noise_prior >= 0 and math.isfinite(noise_prior)):
        raise ValueError(f"selection.noise_prior must be a finite number >= 0, got {noise_prior}")


@dataclass
class WandbSettings:
    """Experiment tracking (``discopop/report/tracking.py``); offline runs can be uploaded later with ``wandb sync``."""

    mode: str = setting("offline", "offline | online | disabled.")
    project: str = setting("discopop", "The wandb project.")

    def check(self) -> None:
        require(self.mode in WANDB_MODES, f"wandb.mode must be offline, online or disabled, got {self.mode!r}")


@dataclass
class RunSettings:
    """One discovery run. The groups come first, as in the saved ``.hydra/config.yaml``."""

    task: Any = setting(MISSING, "The task (group task: addition, sorting, hub, imdb, tldr, diagnostic).")
    proposer: Any = setting(MISSING, "Who proposes losses (group proposer: evolution, openai, openai_paper, "
                                     "reference).")
    training: TrainingSettings = setting(TrainingSettings(), "The short fine-tune each candidate gets (group training: "
                                                             "short_dpo).")
    executor: Any = setting(MISSING, "Where fine-tunes run (group executor: local, ray).")
    seed: int = setting(0, "Every random choice of a run derives from this.")
    generations: int = setting(10, "Set by `discover --generations N`.")
    candidates_per_generation: Any = setting("auto", "k proposals asked of the proposer each generation, evaluated "
                                                     "together; auto = executor.workers, so every worker is busy (the "
                                                     "run records the number).")
    baselines: list[str] = setting(BASELINES, "Reference losses (files in proposals/) scored first as baselines, in "
                                              "this order.")
    baseline_constants: bool = setting(False, "Also score each baseline with each of its declared shape constants "
                                              "(proposers.reference.TUNABLE_CONSTANTS) moved x3 down and up, as "
                                              "baselines of their own (e.g. lrml_tau_0_15): the references' "
                                              "constants get a tuning budget, as the evolution gives a candidate's "
                                              "(measured: benchmarks/reference_constants.py). false: published "
                                              "constants only.")
    confirm: ConfirmSettings = setting(ConfirmSettings(), "The confirmation of the winners.")
    selection: SelectionSettings = setting(SelectionSettings(), "Noise-aware selection (the seed race).")
    wandb: WandbSettings = setting(WandbSettings(), "Experiment tracking.")
    cascade: CascadeSettings = setting(CascadeSettings(), "Cheap stages before the full fine-tune protocol "
                                                          "(search/fidelity.py).")

    def check(self) -> None:
        """Every check of every group, once, before anything is written (``ConfigError``: one line)."""
        require(self.generations >= 0, f"generations must be >= 0, got {self.generations}")
        check_count(self.candidates_per_generation, "candidates_per_generation", 1)
        unknown = [n for n in self.baselines if n not in known()]
        require(not unknown, f"unknown baseline(s) {', '.join(unknown)} (available: {', '.join(known())})")
        require("dpo" in self.baselines, "baselines must include dpo (the fresh-seed confirmation compares to it)")
        for group, key, _ in GROUP_KEYS:
            check_group(group, getattr(getattr(self, group), key), type(getattr(self, group)))
        for part in (self.training, self.task, self.executor, self.confirm, self.selection, self.proposer, self.wandb,
                     self.cascade):
            part.check()
        variant_names(plain(self.task), self.confirm.transfer)  # a ConfigError names what is wrong
        require(not self.training.tune_seeds or isinstance(self.task, DiagnosticTaskSettings),
                f"training.tune_seeds={self.training.tune_seeds} needs task=diagnostic: on a fine-tuned model each "
                "tuning seed is one more full fine-tune per grid point (k+1 times the protocol's cost); use 0")
        kept = getattr(self.task, "replicate_prompts", getattr(self.task, "replicate_contexts", None))
        require(self.confirm.split != "replicate" or bool(kept), "confirm.split=replicate needs "
                "task.replicate_prompts (diagnostic: task.replicate_contexts) > 0: the prompts kept for replications")

    def confirmed_baselines(self, scored: int) -> int:
        """How many of the run's ``scored`` baselines the confirmation re-trains (``confirm.references``)."""
        return self.confirm.baseline_count(scored, isinstance(self.task, DiagnosticTaskSettings))

    @classmethod
    def coerce(cls, value: RunSettings | Mapping[str, Any]) -> RunSettings:
        """The settings of ``value``: itself, or a plain config (as saved, or as tests build it) made typed.

        Missing keys take their dataclass defaults (a missing group: the synthetic task, the evolution
        proposer, the local executor, as declared, not as a preset such as task=addition changes them);
        an unknown key or a wrong type is a ``ConfigError``.
        """
        if isinstance(value, RunSettings):
            return value
        groups = {"task": task_settings(value.get("task") or {}),
                  "proposer": proposer_settings(value.get("proposer") or {"name": "evolution"}),
                  "executor": executor_settings(value.get("executor") or {})}
        rest = {k: v for k, v in value.items() if k not in groups}
        return typed(cls, {**rest, **{k: plain(v) for k, v in groups.items()}}, groups)

    def to_dict(self) -> dict[str, Any]:
        """The plain config: what ``.hydra/config.yaml`` records and ``coerce`` reads back."""
        return asdict(self)


T = TypeVar("T")
TaskSettings = SyntheticTaskSettings | HubTaskSettings | DiagnosticTaskSettings  # what ``task`` holds once typed
TASKS: dict[str, type] = {"synthetic": SyntheticTaskSettings, "hub": HubTaskSettings,
                          "diagnostic": DiagnosticTaskSettings}
PROPOSERS: dict[str, type] = {"evolution": EvolutionSettings, "openai": OpenAISettings,
                              "reference": ReferenceSettings}
EXECUTORS: dict[str, type] = {"local": LocalExecutorSettings, "ray": RayExecutorSettings}
# (group, schema name, dataclass): the YAML files of a group extend its schema in their defaults list.
SCHEMAS: list[tuple[str | None, str, type]] = [
    (None, "run_schema", RunSettings), ("training", "training_schema", TrainingSettings),
    *(("task", f"{kind}_schema", cls) for kind, cls in TASKS.items()),
    *(("proposer", f"{name}_schema", cls) for name, cls in PROPOSERS.items()),
    *(("executor", f"{name}_schema", cls) for name, cls in EXECUTORS.items()),
]


# The key that says which schema a group's settings follow; it is chosen with the group (proposer=openai).
GROUP_KEYS = (("task", "kind", TASKS), ("proposer", "name", PROPOSERS), ("executor", "name", EXECUTORS))


def check_group(group: str, value: Any, schema: type | None) -> None:
    """A group's ``name``/``kind`` must be its schema's: changing it by an override would mix two schemas."""
    key, choices = next((k, c) for g, k, c in GROUP_KEYS if g == group)
    require(choices.get(value) is schema, f"{group}.{key}={value!r} does not match the chosen group: pick the group "
                                          f"with {group}=NAME instead (options: conf/{group}/*.yaml)")


def register_schemas() -> None:
    """Store every schema in hydra's ConfigStore (idempotent), so the YAML files can extend them."""
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, name, cls in SCHEMAS:
        store.store(group=group, name=name, node=cls)


def _pick(kind: Any, choices: dict[str, type], key: str) -> type:
    if kind not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {kind!r}")
    return choices[kind]


def task_settings(value: Any) -> SyntheticTaskSettings | HubTaskSettings | DiagnosticTaskSettings:
    if is_dataclass(value):
        return value
    return typed(_pick(value.get("kind", "synthetic"), TASKS, "task.kind"), value, where="task")


def task_from_wire(value: Any) -> TaskSettings:
    """The task settings a sandboxed worker received as JSON (``asdict`` of them), read back at once without
    OmegaConf and checked: a bad value is a ``ConfigError`` of one line (``base.from_wire``).

    A hub task's values are not checked again here: its check looks for the judge's template file, which the
    worker's sandbox need not show it (the judge grades in the main process, which checked them at start)."""
    kind = value.get("kind", "synthetic") if isinstance(value, Mapping) else None
    settings = from_wire(_pick(kind, TASKS, "task.kind"), value, "task")
    if isinstance(settings, HubTaskSettings):
        return settings
    try:
        settings.check()  # a ConfigError already says which key and value
    except TypeError as err:  # a value of the wrong type where a number is compared
        raise ConfigError(f"task: {str(err).splitlines()[0]}") from None
    return settings


def proposer_settings(value: Any) -> EvolutionSettings | OpenAISettings | ReferenceSettings:
    if is_dataclass(value):
        return value
    if "api_key" in value:  # before anything echoes it: a key pasted here must not reach the run directory
        raise ConfigError(API_KEY_REFUSED.format(key="proposer.api_key"))
    return typed(_pick(value.get("name"), PROPOSERS, "proposer.name"), value, where="proposer")


def executor_settings(value: Any) -> LocalExecutorSettings | RayExecutorSettings:
    if is_dataclass(value):
        return value
    return typed(_pick(value.get("name", "local"), EXECUTORS, "executor.name"), value, where="executor")


API_KEY_REFUSED = ("{key} is not a setting: put the key in an environment variable and name it with {key}_env "
                   "(the value given was not saved)")


def typed(cls: type[T], value: Mapping[str, Any], replace: Mapping[str, Any] | None = None, where: str = "") -> T:
    """``value`` merged onto the schema ``cls`` and converted to it; ``replace``: typed parts put in as they are;
    ``where``: the group's key, named in errors."""
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.merge(OmegaConf.structured(cls), dict(value))
        out = OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        raise ConfigError(describe(err, where)) from None
    for key, part in (replace or {}).items():
        setattr(out, key, part)
    return out


def describe(err: Exception, where: str = "") -> str:
    """One line for an OmegaConf error: the key it concerns and what was wrong (unknown key, wrong type)."""
    # lazy: hydra/omegaconf only where a config is composed; a worker reads settings without them
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    full_key = ".".join(k for k in (where, getattr(err, "full_key", None) or "") if k)
    if isinstance(err, ConfigKeyError | ConfigAttributeError) and "not in" in text:
        parent, _, child = full_key.rpartition(".")
        cls = getattr(err, "object_type", None)
        allowed = f" (allowed: {', '.join(f.name for f in fields(cls))})" if is_dataclass(cls) else ""
        return f"{parent or 'config'}: unknown option '{child}'{allowed}"
    return f"{full_key}: {text}" if full_key and full_key not in text else text


def plain(value: Any) -> Any:
    """A settings object (or OmegaConf container) as plain dicts and lists, e.g. to send to a worker as JSON."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return [plain(v) for v in value]
    return value
