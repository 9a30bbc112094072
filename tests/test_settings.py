"""Typed settings: schemas in hydra's ConfigStore, every default declared once, one-line errors, resumable records."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from discopop.archive import Archive
from discopop.config import (
    SCHEMAS,
    ConfigError,
    HubTaskSettings,
    OpenAISettings,
    RunSettings,
    SyntheticTaskSettings,
    TrainingSettings,
    plain,
    register_schemas,
    task_from_wire,
    training_from_wire,
)
from discopop.config.compose import CONF_DIR, SAVED_CONFIG, compose_settings, record_run, resolve_run


def settings_classes() -> set[type]:
    """Every settings dataclass reachable from the schemas (nested ones too, e.g. task.judge, task.sft)."""
    found: set[type] = set()
    todo = [cls for _, _, cls in SCHEMAS]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.add(cls)
        for f in fields(cls):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if is_dataclass(default):
                todo.append(type(default))
    return found


def test_every_field_has_its_help_where_it_is_declared() -> None:
    classes = settings_classes()
    assert {TrainingSettings, OpenAISettings, SyntheticTaskSettings, HubTaskSettings} <= classes
    missing = [f"{cls.__name__}.{f.name}" for cls in classes for f in fields(cls)
               if len(f.metadata.get("help", "")) < 8]
    assert not missing, f"fields without a help text: {missing}"


def test_the_config_store_holds_the_schemas_and_a_composed_config_converts_to_them() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    repo = ConfigStore.instance().repo
    for group, name, cls in SCHEMAS:
        node = (repo[group] if group else repo)[f"{name}.yaml"].node
        assert OmegaConf.get_type(node) is cls, (group, name)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=["task=tldr", "proposer=openai_paper", "executor=ray"])
    finally:
        GlobalHydra.instance().clear()
    settings = OmegaConf.to_object(cfg)
    assert isinstance(settings, RunSettings) and isinstance(settings.training, TrainingSettings)
    assert isinstance(settings.task, HubTaskSettings) and settings.task.judge.model == "gpt-4o-mini"
    assert isinstance(settings.proposer, OpenAISettings) and settings.proposer.protocol == "paper"
    assert settings.executor.name == "ray" and settings.executor.address is None


def flat(node: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value and key not in ("prices", "lora"):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def default_of(cls: type, dotted: str) -> object:
    """The dataclass default of a dotted key (nested settings followed)."""
    node = OmegaConf.to_container(OmegaConf.structured(cls))
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("path", sorted(p.relative_to(CONF_DIR) for p in CONF_DIR.glob("*/*.yaml")),
                         ids=str)
def test_a_preset_holds_only_what_differs_from_its_schema(path: Path) -> None:
    """Defaults in exactly one place: a YAML file extends a schema (or another preset) and repeats no default."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / path))
    defaults = raw.pop("defaults", None)
    assert defaults and defaults[-1] == "_self_", f"{path} must extend its schema (defaults: [<schema>, _self_])"
    group = path.parent.name
    settings, _ = compose_settings([f"{group}={path.stem}"])
    cls = type(getattr(settings, group))

    def default(key: str) -> object:
        """A global-package preset (task=diagnostic also sets confirm.*) names its own group's keys in full."""
        if not (CONF_DIR / path).read_text().startswith("# @package _global_"):
            return default_of(cls, key)
        if key.startswith(f"{group}."):
            return default_of(cls, key.removeprefix(f"{group}."))
        section, _, rest = key.partition(".")
        return default_of(type(getattr(settings, section)), rest)

    repeated = {key: value for key, value in flat(raw).items() if value == default(key)}
    assert not repeated, f"{path} repeats defaults declared on {cls.__name__}: {repeated}"


def test_the_top_config_only_picks_groups() -> None:
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))
    assert set(raw) == {"defaults", "hydra"} and raw["defaults"][0] == "run_schema"


@pytest.mark.parametrize(("overrides", "words"), [
    (["training.epochs=abc"], "training.epochs: Value 'abc' of type 'str' could not be converted to Integer"),
    (["training.bogus=1"], "training: unknown option 'bogus'"),
    (["+training.bogus=1"], "training: unknown option 'bogus'"),
    (["+bogus=1"], "config: unknown option 'bogus'"),
    (["executor=ray", "executor.gpus=[0]"], "executor: unknown option 'gpus'"),
    (["task=hub", "+task.judge.colour=red"], "task.judge: unknown option 'colour'"),
    (["task.judge.model=x"], "task: unknown option 'judge'"),  # the synthetic task has no judge
    (["selection.noise_prior=abc"], "selection.noise_prior"),
])
def test_a_type_mistake_or_an_unknown_key_is_one_line(overrides: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        compose_settings(overrides)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_group_is_chosen_by_its_name_not_by_overriding_the_name_key() -> None:
    for override in ("proposer.name=openai", "task.kind=hub", "executor.name=ray"):
        with pytest.raises(ConfigError, match=f"{override.split('=')[0]}='.*' does not match the chosen group"):
            resolve_run(1, None, [override])


def test_a_key_like_value_in_a_type_error_is_not_echoed() -> None:
    key = "sk-PASTEDBYMISTAKE123456"
    with pytest.raises(ConfigError) as err:
        compose_settings(["task=hub", f"task.judge.max_tokens={key}"])
    assert key not in str(err.value) and "task.judge.max_tokens" in str(err.value)


def test_a_plain_config_is_coerced_with_defaults_and_refused_with_a_wrong_key() -> None:
    settings = RunSettings.coerce({"task": {"kind": "hub", "model": "m"}, "proposer": {"name": "reference"},
                                   "training": {"beta": 0.1}})
    assert settings.task.model == "m" and settings.task.judge.api_key_env == "OPENAI_API_KEY"
    assert settings.training.beta == 0.1 and settings.training.epochs == TrainingSettings().epochs
    assert settings.executor.name == "local" and settings.proposer.names is None
    with pytest.raises(ConfigError, match="training: unknown option 'betta'"):
        RunSettings.coerce({"task": {}, "proposer": {"name": "evolution"}, "training": {"betta": 0.1}})
    with pytest.raises(ConfigError, match="proposer.name must be one of evolution, openai, reference"):
        RunSettings.coerce({"task": {}, "proposer": {"name": "gpt"}})


def _saved_run(tmp_path: Path, overrides: list[str]) -> tuple[RunSettings, Path]:
    settings, run_dir = resolve_run(2, None, [*overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    (run_dir / SAVED_CONFIG).parent.mkdir(parents=True)
    Archive(run_dir / "archive.sqlite").close()
    record_run(settings, run_dir, overrides, resumed=False)
    return settings, run_dir


def test_a_recorded_config_is_plain_yaml_and_resumes_to_the_same_settings(tmp_path: Path) -> None:
    settings, run_dir = _saved_run(tmp_path, ["task=sorting", "proposer=openai", "executor.workers=2"])
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / SAVED_CONFIG))
    assert saved["task"]["language"] == "sorting" and saved["executor"]["workers"] == 2
    assert "_target_" not in str(saved) and "RunSettings" not in (run_dir / SAVED_CONFIG).read_text()
    resumed, same_dir = resolve_run(None, str(run_dir), [])
    assert resumed == settings and same_dir == run_dir
    raised, _ = resolve_run(4, str(run_dir), ["proposer.max_cost_usd=2.5"])
    assert raised.generations == 4 and raised.proposer.max_cost_usd == 2.5
    with pytest.raises(ConfigError, match="--resume: proposer: unknown option 'temprature'"):
        resolve_run(None, str(run_dir), ["proposer.temprature=1"])


def test_a_config_recorded_before_the_schemas_still_resumes(tmp_path: Path) -> None:
    """Older records wrote integer timeouts and no task.pairs.label_noise for sorting: they load as they were."""
    settings, run_dir = _saved_run(tmp_path, ["task=sorting", "executor.workers=2"])
    old = settings.to_dict()
    old["training"].update(check_timeout=30, train_timeout=600, oracle_timeout=10)
    del old["task"]["pairs"]["label_noise"]
    (run_dir / SAVED_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    resumed, _ = resolve_run(None, str(run_dir), [])
    assert resumed == settings and resumed.training.check_timeout == 30.0


def test_code_that_keeps_defaults_takes_them_from_the_settings() -> None:
    """Direct construction (tests, scripts) gets the same defaults as a composed run: declared once."""
    import inspect
    from dataclasses import asdict

    from discopop.config import EvolutionSettings, JudgeSettings, LocalExecutorSettings, RayExecutorSettings
    from discopop.execution.executors import WorkerSpec
    from discopop.fitness.judge import DEFAULTS as JUDGE_DEFAULTS
    from discopop.proposers.evolution import EvolutionProposer
    from discopop.proposers.llm.options import DEFAULTS as OPENAI_DEFAULTS
    from discopop.sandbox import Limits

    signature = inspect.signature(EvolutionProposer.__init__).parameters
    assert {k: p.default for k, p in signature.items() if k not in ("self", "seed")} == EvolutionSettings().kwargs()
    assert {k: v for k, v in OPENAI_DEFAULTS.items() if k != "seed"} == OpenAISettings().kwargs()
    assert JUDGE_DEFAULTS == asdict(JudgeSettings())
    spec, training = WorkerSpec(None, None), TrainingSettings()
    assert (spec.threads, spec.check_timeout, spec.train_timeout, spec.oracle_timeout) == (
        training.threads, training.check_timeout, training.train_timeout, training.oracle_timeout)
    for executor in (LocalExecutorSettings(), RayExecutorSettings()):
        assert (executor.memory_mb, executor.file_mb) == (Limits().memory_mb, Limits().file_size_mb)
        assert executor.kept_oracles == spec.kept_oracles
        assert executor.fused_backward == spec.fused_backward


def test_the_allowed_values_kept_with_the_settings_match_the_components() -> None:
    """The settings hold the allowed values (config imports nothing else); the components must agree with them."""
    from discopop.config.proposer import HISTORY_MODES, POPULATIONS
    from discopop.config.references import available
    from discopop.config.task import LANGUAGE_NAMES
    from discopop.proposers.evolution import EvolutionProposer
    from discopop.tasks.synthetic import LANGUAGES

    assert tuple(LANGUAGES) == LANGUAGE_NAMES
    proposals = Path(__file__).resolve().parents[1] / "discopop" / "proposals"
    assert "dpo" in available() and all((proposals / f"{n}.py").is_file() for n in available())
    for population in POPULATIONS:
        for mode in HISTORY_MODES:
            EvolutionProposer(seed=0, population=population, history_mode=mode)


# ---- the wire to a sandboxed worker: settings cross as JSON and are typed again at once ----------------------


def test_settings_sent_to_a_worker_come_back_the_same() -> None:
    training = TrainingSettings(beta=0.2, lr_grid=[1e-5, 2e-5], lora={"r": 4, "alpha": 8}, threads=3)
    assert training_from_wire(json.loads(json.dumps(plain(training)))) == training
    for overrides in ([], ["task=diagnostic", "task.preset=label_noise"], ["task=sorting", "task.pairs.ties=0.1"],
                      ["task=tldr", "task.judge.template=/nowhere/the/worker/can/see.txt"]):
        settings, _ = compose_settings(overrides)
        back = task_from_wire(json.loads(json.dumps(plain(settings.task))))
        assert back == settings.task and type(back) is type(settings.task)


@pytest.mark.parametrize(("which", "value", "message"), [
    ("training", {"beta": 0.2, "fast_reuse": False}, "training: unknown option(s) fast_reuse"),
    ("training", {"beta": "high"}, "training: '>' not supported"),
    ("training", {"beta": -1.0}, "training.beta must be > 0, got -1.0"),
    ("training", {"lora": {"r": 0}}, "training.lora.r must be an integer >= 1"),
    ("training", ["beta", 0.2], "training: expected a mapping of settings, got list"),
    ("task", {"kind": "synthetic", "sft": {"steps": 10, "layers": 2}}, "task.sft: unknown option(s) layers"),
    ("task", {"kind": "diagnostic", "preset": "nowhere"}, "task.preset must be one of"),
    ("task", {"kind": "nonsense"}, "task.kind must be one of synthetic, hub, diagnostic, got 'nonsense'"),
])
def test_a_bad_value_on_the_wire_is_one_line(which: str, value: object, message: str) -> None:
    parse = training_from_wire if which == "training" else task_from_wire
    with pytest.raises(ConfigError) as err:
        parse(value)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("overrides", "scored", "expected"), [
    (["task=diagnostic"], 11, 11),  # auto on the fast tier: every baseline (the bar cannot be one left out)
    (["task=addition"], 11, 2),  # auto on a fine-tuned model: each baseline is confirm.seeds full fine-tunes
    (["task=addition", "confirm.references=all"], 11, 11),
    (["task=diagnostic", "confirm.references=4"], 11, 4),
])
def test_confirm_references_auto_confirms_every_baseline_on_the_fast_tier(overrides: list[str], scored: int,
                                                                          expected: int) -> None:
    settings, _ = compose_settings(overrides)
    assert settings.confirmed_baselines(scored) == expected


@pytest.mark.parametrize("value", ["0", "many", "true", "2.5"])
def test_a_bad_confirm_references_is_one_line(value: str) -> None:
    with pytest.raises(ConfigError, match="confirm.references must be an integer >= 1, all or auto") as err:
        compose_settings([f"confirm.references={value}"])[0].check()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["extra_search_contexts", "extra_confirm_contexts"])
def test_a_negative_extra_context_count_is_one_line(key: str) -> None:
    with pytest.raises(ConfigError, match=f"task.{key} must be >= 0, got -1") as err:
        compose_settings(["task=diagnostic", f"task.{key}=-1"])[0].check()
    assert "\n" not in str(err.value)
