"""A run a user can trust: one configuration per run directory, and every chat endpoint checked before training.

``discover`` is called in this process: each case here must end before the loop starts (a refused config,
a failed pre-flight), so no worker, task or model is ever loaded; a loop that starts anyway fails the test
at once (``no_loop``) instead of training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from openai_server import PROXY_AND_BASE_VARS, closed_url, completion, loopback_server

from discopop.archive import Archive
from discopop.cli.main import EXIT_STOPPED, EXIT_USAGE, discover
from discopop.config import RunSettings
from discopop.config.compose import SAVED_CONFIG, ConfigError, create_run_dir, record_run, resolve_run
from discopop.config.resume import RESUMABLE, changed_keys, is_measured
from discopop.proposers.llm.preflight import endpoints, preflight
from discopop.proposers.stop import ProposerStop
from discopop.search import loop

KEY_ENV = "DISCOPOP_TRUST_TEST_KEY"
BASE = ["baselines=[dpo,lrml]", "executor.workers=2", "wandb.mode=disabled"]


@pytest.fixture(autouse=True)
def no_loop(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("discover started the loop: the run should have been refused before it")

    monkeypatch.setattr(loop.Loop, "__init__", refuse)


def saved_run(tmp_path: Path, *overrides: str) -> Path:
    """A run directory as a first ``discover`` leaves it: the recorded config and an archive."""
    settings, run_dir = resolve_run(2, None, [*BASE, *overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    create_run_dir(run_dir)
    Archive(run_dir / "archive.sqlite").close()
    record_run(settings, run_dir, list(overrides), resumed=False)
    return run_dir


def saved_beta(run_dir: Path) -> float:
    return OmegaConf.load(run_dir / SAVED_CONFIG).training.beta


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# -- one configuration per run directory -------------------------------------------------------------

def test_a_new_run_in_a_run_directory_that_holds_one_is_refused(tmp_path, capsys):
    run_dir = saved_run(tmp_path)
    code = discover(["--generations", "3", f"hydra.run.dir={run_dir}", "training.beta=0.1", *BASE])
    line = one_error_line(capsys)
    assert code == EXIT_USAGE
    assert f"{run_dir} already holds a run" in line and f"discover --resume {run_dir}" in line
    assert saved_beta(run_dir) == 0.5  # the record of the run is untouched


def test_resume_refuses_a_measured_setting_and_names_it(tmp_path, capsys):
    run_dir = saved_run(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_run(None, str(run_dir), ["training.beta=0.1"])
    assert "training.beta (0.5 -> 0.1)" in str(err.value) and "may change only: generations" in str(err.value)
    code = discover(["--resume", str(run_dir), "training.beta=0.1", "seed=3", "task.kl_coef=0.1"])
    line = one_error_line(capsys)
    assert code == EXIT_USAGE
    for key in ("training.beta", "seed", "task.kl_coef"):
        assert key in line
    assert "proposer.*" in line and "executor.*" in line  # which kinds of setting are allowed
    assert saved_beta(run_dir) == 0.5


@pytest.mark.parametrize("override", ["training.lr_grid=[1e-5]", "training.epochs=5", "baselines=[dpo]",
                                      "selection.max_seeds=2", "task.score=greedy",
                                      "training.pair_fraction=0.5", "training.threads=2", "selection.z=2"])
def test_every_kind_of_measured_setting_is_refused_on_resume(tmp_path, override):
    run_dir = saved_run(tmp_path)
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        resolve_run(None, str(run_dir), [override])


def test_resume_accepts_what_does_not_change_the_measurement(tmp_path):
    run_dir = saved_run(tmp_path, "proposer=openai")
    settings, same = resolve_run(5, str(run_dir), ["executor.workers=3", "proposer.model=other-model",
                                                   "proposer.max_cost_usd=2.0", "confirm.top_k=1",
                                                   "confirm.seeds=7", "training.train_timeout=900",
                                                   "wandb.mode=offline", "task.cache_dir=/tmp/elsewhere"])
    assert same == run_dir and settings.generations == 5 and settings.executor.workers == 3
    assert settings.proposer.model == "other-model" and settings.confirm.top_k == 1
    assert settings.confirm.seeds == 7 and settings.training.train_timeout == 900


def test_the_rule_protects_any_key_not_declared_resumable():
    """Deny by default: a setting added later is measured until someone lists it (config/resume.py)."""
    assert is_measured("training.some_new_knob") and is_measured("task.judge.model") and is_measured("seed")
    assert not is_measured("proposer.anything") and not is_measured("task.judge.timeout")
    assert all(not is_measured(key) for key in RESUMABLE)
    saved = RunSettings.coerce({"proposer": {"name": "evolution"}}).to_dict()
    assert changed_keys(saved, saved) == []
    changed = RunSettings.coerce({"proposer": {"name": "evolution"}, "training": {"beta": 0.1}}).to_dict()
    assert changed_keys(saved, changed) == ["training.beta"]


# -- pre-flight ------------------------------------------------------------------------------------

@pytest.fixture
def no_proxy(monkeypatch):
    for var in PROXY_AND_BASE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


def test_a_closed_port_stops_the_run_in_one_line_before_anything_trains(tmp_path, capsys, no_proxy, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-trust-0000")
    run_dir, url = tmp_path / "run", closed_url()
    code = discover(["--generations", "1", "proposer=openai", f"proposer.base_url={url}",
                     f"proposer.api_key_env={KEY_ENV}", f"hydra.run.dir={run_dir}", *BASE])
    line = one_error_line(capsys)
    assert code == EXIT_STOPPED
    assert f"pre-flight: proposer model 'gpt-4o' at {url}: connection error" in line
    assert "run the same command again" in line
    assert not (run_dir / "archive.sqlite").exists()  # no reference trained, nothing recorded


def test_a_missing_key_stops_the_run_before_anything_trains(tmp_path, capsys, no_proxy, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    run_dir = tmp_path / "run"
    code = discover(["--generations", "1", "proposer=openai", "proposer.base_url=https://api.example.invalid/v1",
                     f"proposer.api_key_env={KEY_ENV}", f"hydra.run.dir={run_dir}", *BASE])
    line = one_error_line(capsys)
    assert code == EXIT_STOPPED and f"environment variable {KEY_ENV} is not set" in line
    assert not (run_dir / "archive.sqlite").exists()


def test_preflight_asks_each_endpoint_one_token_and_passes_when_they_answer(monkeypatch):
    with loopback_server(monkeypatch, KEY_ENV, "sk-test-trust-1111") as server:
        server.push(completion("OK"), completion("OK"))
        settings, _ = resolve_run(1, None, [*BASE, "proposer=openai", f"proposer.base_url={server.url}",
                                            f"proposer.api_key_env={KEY_ENV}",
                                            "proposer.models=[{model: a}, {model: b}, {model: a}]"])
        assert preflight(settings) == 2  # two distinct arms (a twice)
        assert [b["model"] for b in server.bodies()] == ["a", "b"]
        assert all(b["max_tokens"] == 1 for b in server.bodies())


def test_preflight_checks_the_judge_too(no_proxy, monkeypatch):
    url = closed_url()
    judged = RunSettings.coerce({"proposer": {"name": "evolution"},
                                 "task": {"kind": "hub", "model": "m", "dataset": "d",
                                          "judge": {"model": "judge-model", "base_url": url,
                                                    "api_key_env": KEY_ENV}}})
    assert [who for who, _ in endpoints(judged)] == ["judge"]
    with pytest.raises(ProposerStop, match=f"pre-flight: judge model 'judge-model' at {url}: connection error"):
        preflight(judged, sleep=lambda s: None)
    assert endpoints(RunSettings.coerce({"proposer": {"name": "evolution"}})) == []  # nothing to check offline
