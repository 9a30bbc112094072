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
