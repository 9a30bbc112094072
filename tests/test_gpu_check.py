"""``discopop check-gpu``: the probe starts as a CUDA worker does and reports each step in one line."""

from __future__ import annotations

import torch

from discopop.cli.main import main
from discopop.execution.gpu_check import check_gpu


def test_no_gpu_here_means_nothing_to_check(capsys) -> None:
    assert not torch.cuda.is_available(), "this test documents the CPU-only machine"
    assert main(["check-gpu"]) == 0
    assert "no CUDA GPU is visible to this process" in capsys.readouterr().out


def test_a_worker_that_cannot_start_cuda_says_torchs_reason() -> None:
    found = check_gpu(device_count=1)  # as if a GPU were visible: the probe's CUDA start fails in the sandbox
    assert not found.ok
    assert found.lines[0] == "GPU 0 (unknown): a sandboxed worker CANNOT train here"
    assert found.lines[1].startswith("  FAIL CUDA initialises in the locked-down worker: ")
    assert "CUDA" in found.lines[1] and len(found.lines[1]) < 400  # torch's own words, one line
    assert any(line.startswith("  not applied: seccomp: ") for line in found.lines)  # never sealed


def test_the_steps_after_sealing_run_in_the_cuda_worker_sandbox() -> None:
    """The same steps on the CPU: sealing (seccomp + guard) leaves the matmul and TRL's log-probs working, and
    the CUDA worker's per-process memory cap (rlimit-data, not rlimit-as) refuses an allocation past it."""
    found = check_gpu(device_count=1, device="cpu")
    assert found.ok, found.lines
    assert [line.split()[0] for line in found.lines[1:5]] == ["ok", "ok", "ok", "ok"]
    assert found.lines[4] == "  ok   host memory past the 6144 MB cap is refused"
    assert "rlimit-data" in found.lines[5] and "rlimit-as" not in found.lines[5]
    layers = next(line for line in found.lines if line.startswith("  layers: "))
    assert "audit-guard" in layers and "env-allowlist" in layers
    assert not any("not applied: audit-guard" in line for line in found.lines)
