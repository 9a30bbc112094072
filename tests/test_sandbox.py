"""The sandbox layers hold: timeouts kill the process group, writes outside the work dir are refused."""

from __future__ import annotations

from pathlib import Path

from discopop.cli.check import check_source

SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
RHO = "    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)\n"


def test_infinite_loop_is_killed_within_its_limit() -> None:
    source = f"import torch\n\ndef f({SIG}):\n{RHO}    for _ in range(10**12):\n        pass\n    return -rho\n"
    verdict = check_source(source, timeout=3)
    assert verdict == {"valid": False, "layer": "sandbox", "reason": "numeric checks timed out after 3 s"}


def test_memory_bomb_is_stopped() -> None:
    body = "    x = torch.ones(4096, 4096, 4096)\n    return -F.logsigmoid(beta * rho) + x.sum() * 0\n"
    source = f"import torch\nimport torch.nn.functional as F\n\ndef f({SIG}):\n{RHO}{body}"
    verdict = check_source(source, timeout=60)
    assert not verdict["valid"] and verdict["layer"] == "numeric"
    assert "memory" in verdict["reason"].lower() or "alloc" in verdict["reason"].lower()


def test_static_layer_reports_itself() -> None:
    verdict = check_source(f"import os\n\ndef f({SIG}):\n    return policy_chosen_logps\n")
    assert verdict["layer"] == "static" and "import of 'os'" in verdict["reason"]


def test_guard_refuses_writes_outside_the_work_dir(tmp_path: Path) -> None:
    """The runtime guard, exercised directly in a child (the static check would stop such code first)."""
    import subprocess
    import sys

    target = tmp_path / "escaped.txt"
    code = f"""
import os, socket, tempfile
from discopop.sandbox import install_guard
work = tempfile.mkdtemp()
install_guard(work)
open(os.path.join(work, "ok.txt"), "w").write("fine")
attempts = (lambda: open({str(target)!r}, "w"), lambda: os.system("true"),
            lambda: socket.socket().connect(("127.0.0.1", 9)), lambda: __import__("subprocess").Popen(["true"]))
for attempt in attempts:
    try:
        attempt()
        print("ALLOWED")
    except PermissionError as err:
        print("BLOCKED", err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.count("BLOCKED") == 4, out.stdout + out.stderr
    assert "'subprocess.Popen' (true) is not allowed" in out.stdout  # the one line names what was started
    assert not target.exists()


def test_valid_loss_passes_every_layer() -> None:
    source = f"import torch.nn.functional as F\n\ndef f({SIG}):\n{RHO}    return -F.logsigmoid(beta * rho)\n"
    verdict = check_source(source)
    assert verdict["valid"] and verdict["uses_beta"]
