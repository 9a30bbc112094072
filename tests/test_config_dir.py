"""hydra's ``--config-dir``/``--config-name`` and ``--info`` on ``discover`` (issue 30, item 5): a user's own
primary config and group files outside the package, found as hydra finds them, and hydra's account of where
every file came from. Nothing here trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from discopop.archive import Archive
from discopop.cli.main import discover
from discopop.config.compose import create_run_dir, record_run, resolve_run


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A user's config folder: a primary config extending the package's, a new task option, and a file named like
    a packaged option (which hydra's search order must not let shadow it)."""
    root = tmp_path / "my_conf"
    (root / "task").mkdir(parents=True)
    (root / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nseed: 7\ntraining:\n  beta: 0.2\n")
    (root / "task" / "my_add.yaml").write_text("defaults:\n  - addition\n  - _self_\nkl_coef: 0.3\n")
    (root / "task" / "addition.yaml").write_text("defaults:\n  - synthetic_schema\n  - _self_\nkl_coef: 9.0\n")
    return root


def _printed(capsys) -> dict:
    return yaml.safe_load(capsys.readouterr().out)


def test_config_name_and_group_options_are_found_in_config_dir(conf_dir: Path, capsys) -> None:
    assert discover(["--config-dir", str(conf_dir), "--config-name", "mine", "task=my_add", "--cfg", "job"]) == 0
    cfg = _printed(capsys)
    assert cfg["seed"] == 7 and cfg["training"]["beta"] == 0.2 and cfg["task"]["kl_coef"] == 0.3
    assert cfg["task"]["name"] == "addition"  # my_add extends the packaged addition preset
    # the command line still wins over the user's primary config, as in hydra
    assert discover(["-cd", str(conf_dir), "-cn", "mine", "training.beta=0.05", "--cfg", "job"]) == 0
    assert _printed(capsys)["training"]["beta"] == 0.05


def test_a_file_in_config_dir_never_shadows_a_packaged_option(conf_dir: Path, capsys) -> None:
    """hydra puts --config-dir after the application's own config directory: DIR/task/addition.yaml is not read."""
    assert discover(["--config-dir", str(conf_dir), "task=addition", "--cfg", "job"]) == 0
    packaged = _printed(capsys)["task"]["kl_coef"]
    assert discover(["task=addition", "--cfg", "job"]) == 0
    assert packaged == _printed(capsys)["task"]["kl_coef"] != 9.0


def test_info_prints_the_search_path_and_the_defaults_list(conf_dir: Path, capsys) -> None:
    assert discover(["--info", "searchpath", "--config-dir", str(conf_dir)]) == 0
    out = capsys.readouterr().out
    assert "Config search path" in out and f"file://{conf_dir.resolve()}" in out and "command-line" in out
    assert "discopop/conf" in out
    assert discover(["--config-dir", str(conf_dir), "task=my_add", "--info", "defaults"]) == 0
    out = capsys.readouterr().out
    assert "Defaults List" in out and "task/my_add" in out and "task/addition" in out
    assert discover(["--info"]) == 0  # all: plugins, search path, defaults and the composed config
    out = capsys.readouterr().out
    assert "Config search path" in out and "Defaults List" in out and "training:" in out


@pytest.mark.parametrize("args, expected", [
    (["--config-dir", "/nonexistent/conf", "--cfg", "job"], "--config-dir /nonexistent/conf: no such directory"),
    (["--info", "--config-dir", "/nonexistent/conf"], "no such directory"),
    (["--config-name", "nothere", "--cfg", "job"], "Cannot find primary config 'nothere'"),
    (["--info", "all", "--cfg", "job"], "--info cannot be combined with --cfg"),
    (["--resume", "/tmp", "--config-name", "mine"], "--config-name sets up a new run"),
])
def test_mistakes_are_one_line_and_exit_2(args, expected, capsys) -> None:
    assert discover(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_a_run_composed_from_config_dir_resumes_without_it(conf_dir: Path, tmp_path: Path) -> None:
    """The run directory records the resolved settings, so --resume needs neither the folder nor its name."""
    settings, run_dir = resolve_run(1, None, [f"hydra.run.dir={tmp_path / 'run'}"], None, str(conf_dir), "mine")
    assert settings.training.beta == 0.2 and settings.seed == 7
    create_run_dir(run_dir)
    record_run(settings, run_dir, [], resumed=False)
    Archive(run_dir / "archive.sqlite").close()
    again, _ = resolve_run(2, str(run_dir), [])
    assert again.training.beta == 0.2 and again.seed == 7
