"""After a non-editable install the package still finds its configs, reference losses, prompts and templates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_its_data_files(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              *map(str, wheels.glob("*.whl"))], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "import discopop, discopop.config.compose as c, discopop.proposers.reference as r, discopop.report as rep\n"
        "from importlib import resources\n"
        "cfg, run_dir = c.compose(['task=sorting'])\n"
        "print(discopop.__file__)\n"
        "print(cfg['task']['name'], len(r.available()), run_dir.startswith('runs/'))\n"
        "print((resources.files('discopop.report') / 'templates' / 'report.html.j2').is_file(),"
        " (resources.files('discopop') / 'prompts' / 'system.txt').is_file())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(target)), "the installed copy, not the checkout, must be under test"
    shipped = len(list((REPO / "discopop" / "proposals").glob("*.py")))  # every reference loss is packaged
    assert lines[1:] == [f"sorting {shipped} True", "True True"]
