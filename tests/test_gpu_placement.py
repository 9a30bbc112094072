"""Device decisions that only matter on GPUs, tested through their logic on this CPU-only machine:
how ``training.device``/``precision``/``lora`` resolve, which GPU each worker gets, which sandbox
layers a CUDA worker keeps, and that the loss oracle stays CPU-only."""

from __future__ import annotations

import json
import os
import resource
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from discopop.config import LocalExecutorSettings, TrainingSettings
from discopop.execution.devices import (
    NO_GPU,
    accumulation_steps,
    check_precision,
    gpu_slots,
    lora_settings,
    plan_local_workers,
    resolve_device,
    visible_devices,
)
from discopop.execution.executors import WarmWorker, WorkerSpec, placed_specs
from discopop.execution.ray_executor import actor_gpus
from discopop.sandbox import Limits, SandboxedProcess, expected_layers, sandbox_env
from discopop.sandbox.lockdown import gpu_device_files

TRAINING = TrainingSettings(batch_size=32, device="auto", precision="fp32")
LOCAL = LocalExecutorSettings()


def training(**changes) -> TrainingSettings:
    return replace(TRAINING, **changes)


def test_device_auto_resolves_to_cpu_here() -> None:
    assert not torch.cuda.is_available(), "this test documents the CPU-only machine"
    assert resolve_device("auto", torch.cuda.is_available()) == "cpu"
    assert resolve_device("auto", True) == "cuda"
    assert resolve_device("cpu", True) == "cpu"
    assert plan_local_workers(TRAINING, LOCAL, 2)[0].device == "cpu"  # asks torch: no GPU here


@pytest.mark.parametrize(("call", "message"), [
    (lambda: resolve_device("cuda", False), "training.device=cuda but no CUDA GPU is usable here"),
    # A worker whose parent saw a GPU says torch's own reason (as an H200 worker did when its sandbox stopped CUDA).
    (lambda: resolve_device("cuda", False, "Error 304: OS call failed"), "usable here: Error 304: OS call failed;"),
    (lambda: resolve_device("gpu", True), "training.device must be one of auto, cpu, cuda, got 'gpu'"),
    (lambda: check_precision("fp16", "cpu"), "training.precision=fp16 needs a CUDA device"),
    (lambda: check_precision("bf16", "cuda", bf16_supported=False), "not supported by this GPU"),
    (lambda: check_precision("half", "cpu"), "training.precision must be one of fp32, bf16, fp16"),
    (lambda: lora_settings({"r": 0}), "training.lora.r must be an integer >= 1"),
    (lambda: lora_settings({"r": 4, "dropout": 1.0}), "training.lora.dropout must be in [0, 1)"),
    (lambda: lora_settings({"r": 4, "target_modules": []}), "training.lora.target_modules must be"),
    (lambda: lora_settings("yes"), "training.lora must be null or a mapping"),
    (lambda: accumulation_steps(training(gradient_accumulation_steps=3)), "must divide"),
    (lambda: gpu_slots([0, 2], 2, 1, 2), "executor.gpus: [2] not among the 2 GPU(s)"),
    (lambda: gpu_slots("auto", 5, 2, 2), "executor.workers=5 does not fit on 2 GPU(s)"),
    (lambda: plan_local_workers(training(precision="fp16"), LOCAL, 1, device_count=0), "fp16 needs a CUDA"),
])
def test_bad_values_give_one_line_errors(call, message: str) -> None:
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_lora_settings_parse() -> None:
    assert lora_settings(None) is None
    parsed = lora_settings({"r": 4, "alpha": 8, "target_modules": ["c_attn"]})
    assert (parsed.r, parsed.alpha, parsed.target_modules) == (4, 8.0, ("c_attn",))
    config = parsed.peft_config()
    assert config.r == 4 and config.lora_alpha == 8.0 and set(config.target_modules) == {"c_attn"}


def test_workers_spread_over_gpus_before_sharing_one() -> None:
    assert gpu_slots("auto", 2, 2, 2) == ["0", "1"]
    assert gpu_slots("auto", 4, 2, 2) == ["0", "1", "0", "1"]
    assert gpu_slots([1], 2, 2, 4) == ["1", "1"]
    assert gpu_slots("auto", 3, 1, 4) == ["0", "1", "2"]
    assert gpu_slots("auto", 2, None, 1) == ["0", "0"]  # no cap: the default 2 workers share a single GPU


def test_gpu_indices_map_through_an_outer_cuda_visible_devices() -> None:
    outer = visible_devices({"CUDA_VISIBLE_DEVICES": "2,3"})
    assert outer == ["2", "3"]
    assert gpu_slots("auto", 2, 1, 2, outer) == ["2", "3"]
    assert gpu_slots([1], 1, 1, 2, outer) == ["3"]
    assert visible_devices({}) is None


def test_local_plan_pins_cuda_workers_and_hides_gpus_from_cpu_workers() -> None:
    spec = WorkerSpec(task=None, training=TRAINING)
    cuda = placed_specs(spec, LocalExecutorSettings(gpus=[0, 1], workers_per_gpu=2), 4, device_count=2)
    assert [(s.device, s.visible_devices, s.training.device) for s in cuda] == [
        ("cuda", "0", "cuda"), ("cuda", "1", "cuda"), ("cuda", "0", "cuda"), ("cuda", "1", "cuda")]
    assert cuda[0].worker_env() == {"CUDA_VISIBLE_DEVICES": "0"}
    cpu = placed_specs(spec, LocalExecutorSettings(gpus="auto"), 2, device_count=0)
    assert [(s.device, s.visible_devices, s.training.device) for s in cpu] == [("cpu", NO_GPU, "cpu")] * 2
    assert spec.training.device == "auto"  # placing copies the settings: the run's own are not changed
    forced_cpu = placed_specs(WorkerSpec(task=None, training=training(device="cpu")), LOCAL, 1, device_count=8)
    assert forced_cpu[0].device == "cpu"
    untrained = placed_specs(WorkerSpec(task=None, training=None), LOCAL, 1, device_count=0)
    assert untrained[0].device == "cpu" and untrained[0].training is None


def test_ray_actors_ask_for_a_gpu_share() -> None:
    assert actor_gpus(TRAINING, 2, cluster_gpus=4) == ("cuda", 0.5)
    assert actor_gpus(TRAINING, 1, cluster_gpus=1) == ("cuda", 1.0)
    assert actor_gpus(TRAINING, None, cluster_gpus=1) == ("cuda", 1.0)
    assert actor_gpus(TRAINING, 2, cluster_gpus=0) == ("cpu", 0.0)
    assert actor_gpus(training(device="cpu"), 1, cluster_gpus=8) == ("cpu", 0.0)
    with pytest.raises(ValueError, match="training.device=cuda but no CUDA GPU"):
        actor_gpus(training(device="cuda"), 1, cluster_gpus=0)


def test_a_cuda_worker_swaps_only_the_address_space_limit_for_a_data_limit_and_its_oracles_stay_cpu_only() -> None:
    spec = WorkerSpec(task=None, training=None, limits=Limits(memory_mb=4096), device="cuda", visible_devices="1")
    worker_limits = spec.worker_limits()
    assert worker_limits.uses_cuda and worker_limits.memory_mb == 4096  # the cgroup cap stays
    assert set(expected_layers(Limits())) ^ set(expected_layers(worker_limits)) == {"rlimit-as", "rlimit-data"}
    worker = WarmWorker(spec)
    try:
        assert not worker.oracles.limits.uses_cuda and worker.oracles.limits.memory_mb == 4096
    finally:
        worker.close()
    oracle_env = sandbox_env(Path("/nonexistent"), worker.oracles.limits, {"CUDA_VISIBLE_DEVICES": "1"})
    assert oracle_env["CUDA_VISIBLE_DEVICES"] == "" and oracle_env["DISCOPOP_SANDBOX_CUDA"] == "0"
    worker_env = sandbox_env(Path("/nonexistent"), worker_limits, spec.worker_env())
    assert worker_env["CUDA_VISIBLE_DEVICES"] == "1" and worker_env["DISCOPOP_SANDBOX_CUDA"] == "1"


def test_only_a_cuda_worker_may_open_gpu_device_files(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-caps", "null"):
        (tmp_path / name).touch()
    assert gpu_device_files(False, str(tmp_path)) == []
    found = gpu_device_files(True, str(tmp_path))
    assert {str(tmp_path / n) for n in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-caps")} <= set(found)
    assert str(tmp_path / "null") not in found


PROBE = """
import json, os, resource
from discopop.sandbox import child_connections, lock_down
layers = lock_down(os.environ["DISCOPOP_SANDBOX_DIR"])
recv, send = child_connections()
recv.recv_bytes()
try:  # the CUDA driver writes into its own /proc entry; Landlock must allow that to a CUDA worker only
    with open(f"/proc/{os.getpid()}/comm", "w") as own:
        own.write("probe")
    own_proc = "written"
except OSError as err:
    own_proc = type(err).__name__
try:  # ... but not past it: the magic link /proc/<pid>/root leads to / and its rules
    with open(f"/proc/{os.getpid()}/root/var/tmp/discopop-escape-probe", "w") as escaped:
        escaped.write("x")
    via_root = "written"
except OSError as err:
    via_root = type(err).__name__
send.send_bytes(json.dumps({"ok": True, "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
                            "rlimit_data": resource.getrlimit(resource.RLIMIT_DATA)[0], "own_proc": own_proc,
                            "via_root": via_root, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                            "sandbox_layers": layers, "ld_library_path": os.environ.get("LD_LIBRARY_PATH")}).encode())
"""


def probe(tmp_path: Path, limits: Limits, env: dict[str, str]) -> tuple[dict, list[str], dict[str, str]]:
    (tmp_path / "gpu_probe.py").write_text(PROBE)
    proc = SandboxedProcess("gpu_probe", limits, env={"PYTHONPATH": str(tmp_path), **env})
    try:
        reply = proc.request({"op": "probe"}, timeout=60)
        return reply, list(proc.layers), proc.missing_layers()
    finally:
        proc.close()


def test_sandbox_reports_the_layers_a_cuda_worker_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real sandboxed child started as a CUDA worker: RLIMIT_DATA instead of RLIMIT_AS, its GPU pinned, every other
    layer kept.

    Measured on an H200: without a writable own /proc entry every CUDA call in the worker failed (error 304).
    """
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))  # where some images keep libcuda
    cpu_reply, cpu_layers, cpu_missing = probe(tmp_path, Limits(memory_mb=4096), {"CUDA_VISIBLE_DEVICES": "1"})
    gpu_reply, gpu_layers, gpu_missing = probe(tmp_path, Limits(memory_mb=4096, uses_cuda=True),
                                               {"CUDA_VISIBLE_DEVICES": "1"})
    assert gpu_reply["ld_library_path"] == str(tmp_path) and cpu_reply["ld_library_path"] is None
    assert gpu_reply["own_proc"] == "written"
    if "landlock-fs" in gpu_layers:
        assert gpu_reply["via_root"] == "PermissionError" and not Path("/var/tmp/discopop-escape-probe").exists()
    if "landlock-fs" in cpu_layers:  # where Landlock exists, a CPU child's /proc stays read-only
        assert cpu_reply["own_proc"] == "PermissionError"
    assert cpu_reply["rlimit_as"] == 4096 * 2**20 and cpu_reply["visible"] == ""
    assert gpu_reply["rlimit_as"] == resource.RLIM_INFINITY and gpu_reply["visible"] == "1"
    assert gpu_reply["rlimit_data"] == 4096 * 2**20  # private host memory stays capped without a cgroup
    assert "rlimit-as" in cpu_layers and "rlimit-data" in gpu_layers
    watched = {"memory-watch"} if "cgroup-memory" in gpu_missing else set()  # stands in for the cgroup (CUDA only)
    assert set(cpu_layers) ^ set(gpu_layers) == {"rlimit-as", "rlimit-data"} | watched
    assert "rlimit-as" not in gpu_missing and "rlimit-data" not in gpu_missing and "rlimit-as" not in cpu_missing
    assert set(gpu_missing) == set(cpu_missing)
    if "cgroup-memory" in gpu_missing:  # no memory cgroup here: rlimit-data is a partial cap, and says so
        assert "caps this CUDA worker's private memory, but not shared" in gpu_missing["cgroup-memory"]
        assert "memory-watch" in gpu_missing["cgroup-memory"]
    print(json.dumps({"layers": gpu_layers, "missing": gpu_missing}, indent=1), os.uname().release)


@pytest.mark.parametrize(("override", "message"), [
    ("training.precision=fp16", "training.precision=fp16 needs a CUDA device"),  # with training.device=cpu
    ("training.lora={r: 4, rank: 2}", "training.lora: unknown key(s) rank"),
    ("executor.workers_per_gpu=0", "executor.workers_per_gpu must be an integer >= 1"),
])
def test_config_mistakes_stop_the_run_in_one_line(override: str, message: str) -> None:
    from discopop.config.compose import ConfigError, resolve_run

    with pytest.raises(ConfigError) as err:
        resolve_run(1, None, ["training.device=cpu", override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_lora_override_composes() -> None:
    from discopop.config.compose import resolve_run

    cfg, _ = resolve_run(1, None, ["training.lora={r: 4, alpha: 8, target_modules: [c_attn]}"])
    assert lora_settings(cfg.training.lora).target_modules == ("c_attn",)
    assert (cfg.training.device, cfg.training.precision) == ("auto", "fp32")
