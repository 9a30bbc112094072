"""The README's "Use a discovered loss" script runs as written (against a tiny local model)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_trl_snippet_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use a discovered loss", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace('"proposals/lrml.py"', repr(str(REPO / "proposals" / "lrml.py")))
    code += "\nprint('final', trainer.state.global_step, trainer.state.log_history[-1]['train_loss'])\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final 4 " in out.stdout


def _quickstart() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]


def test_readme_offers_a_quick_recipe_that_composes_and_says_how_long_it_took(capsys) -> None:
    import shlex

    import yaml

    from discopop.cli.main import discover

    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    quick = next(line for line in _quickstart().splitlines() if line.startswith("discover ") and "quick" in line)
    args = shlex.split(quick.split("#", 1)[0])[1:]
    assert discover(["--cfg", "job", *args]) == 0, capsys.readouterr().err
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["generations"] <= 5 and len(cfg["baselines"]) < 11, "smaller than the full run"
    assert re.search(r"quick recipe .* took \d+(\.\d+)? min", " ".join(_quickstart().split())), \
        "the quick recipe's measured wall time is stated"
    assert "discover --generations 50" in _quickstart()


def test_the_notebook_dependency_is_an_extra() -> None:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("papermill") for dep in extras["notebook"])
    assert '".[notebook]"' in (REPO / "README.md").read_text()
