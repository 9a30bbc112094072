"""``discopop check-gpu``: can a sandboxed training worker use this machine's GPU? An answer in seconds.

A worker trains on CUDA inside every sandbox layer but the address-space limit, and a GPU machine can
differ from the ones it was tested on in ways only CUDA itself reveals (on one H200, Landlock kept the
driver from writing its own /proc entry, and Triton's compiler subprocess was refused). This starts one
probe exactly as a CUDA worker starts (same limits, environment and layers), has it initialise CUDA
before the sandbox is sealed, and after sealing run what a fine-tune runs: a bf16 matmul with its
backward pass and TRL's per-token log-probs; last it checks that host memory past ``executor.memory_mb``
is refused (the CUDA worker's ``rlimit-data``; untouched pages, so a missing cap costs nothing). It
prints one line per step, torch's own error where one fails, and the layers the probe could not get.
Far cheaper than learning the same from a failed run.

Run as ``python -m discopop.execution.gpu_check`` it is the probe itself (the sandboxed child).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

PROBE_MODULE = "discopop.execution.gpu_check"


@dataclass
class GpuCheck:
    """What ``check_gpu`` found: ``ok`` is False only when a GPU is visible here and a worker cannot use it."""

    ok: bool
    lines: list[str] = field(default_factory=list)


def check_gpu(gpu: str = "0", timeout: float = 180.0, device_count: int | None = None,
              device: str = "cuda", memory_mb: int | None = None) -> GpuCheck:
    """Start one sandboxed CUDA probe pinned to ``gpu`` (an index as ``CUDA_VISIBLE_DEVICES`` takes it).

    ``device="cpu"`` runs the same steps on the CPU in the same CUDA-worker sandbox (how the tests cover
    everything but CUDA itself). ``memory_mb``: the worker's memory cap (default: ``Limits``'s).
    """
    # lazy: also the probe child's entry: nothing beyond the stdlib before lock_down
    from discopop.execution.devices import cuda_device_count
    from discopop.sandbox import Limits, SandboxedProcess

    count = cuda_device_count() if device_count is None else device_count
    if count == 0:
        return GpuCheck(True, ["no CUDA GPU is visible to this process: nothing to check "
                               "(training.device=auto trains on the CPU here)"])
    limits = Limits(uses_cuda=True) if memory_mb is None else Limits(uses_cuda=True, memory_mb=memory_mb)
    proc = SandboxedProcess(PROBE_MODULE, limits, env={"CUDA_VISIBLE_DEVICES": gpu})
    try:
        reply = proc.request({"op": "probe", "device": device, "memory_mb": limits.memory_mb}, timeout=timeout)
        layers, missing = list(proc.layers), proc.missing_layers()
    except Exception as err:  # noqa: BLE001 - a probe that dies is itself the finding
        return GpuCheck(False, [f"the probe died: {' '.join(str(err).split())[:300]}"])
    finally:
        proc.close()
    steps = reply.get("steps") or []
    ok = bool(steps) and all(result == "ok" for _, result in steps)
    where = f"GPU {gpu} ({reply.get('name') or 'unknown'})" if device == "cuda" else "CPU, CUDA-worker sandbox"
    lines = [f"{where}: a sandboxed worker {'CAN' if ok else 'CANNOT'} train here"]
    lines += [f"  {'ok  ' if result == 'ok' else 'FAIL'} {name}" + ("" if result == "ok" else f": {result}")
              for name, result in steps]
    lines.append("  layers: " + ", ".join(layers))
    lines += [f"  not applied: {name}: {why}" for name, why in missing.items()]
    return GpuCheck(ok, lines)


def _probe(workdir: str, layers: list[str], device: str, memory_mb: int) -> dict:
    """In the locked-down child: the worker's start-up order, one step at a time, stopping at the first failure."""
    from discopop.sandbox import seal  # lazy: also the probe child's entry: nothing beyond the stdlib before lock_down
    from discopop.text import error_line

    steps: list[list[str]] = []
    out: dict = {"steps": steps, "sandbox_layers": layers}  # the parent adds these to the probe's layers

    def step(name: str, action) -> bool:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - reported, one line
            steps.append([name, error_line(err)])
            return False
        steps.append([name, "ok"])
        return True

    import torch  # lazy: also the probe child's entry: nothing beyond the stdlib before lock_down

    if not step(f"{device.upper()} initialises in the locked-down worker",
                lambda: torch.ones(1, device=device).sum().item()):
        return out
    out["name"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    # lazy: also the probe child's entry: nothing beyond the stdlib before lock_down
    from discopop.dpo_trainer import use_torch_log_softmax_kernels

    use_torch_log_softmax_kernels()
    # lazy: also the probe child's entry: nothing beyond the stdlib before lock_down
    from trl.trainer.utils import selective_log_softmax

    sealed = seal(workdir)  # seccomp + audit guard: from here on as during a fine-tune
    out["sandbox_layers"] = [*layers, *sealed]

    def matmul_backward() -> None:
        w = torch.randn(256, 256, device=device, dtype=torch.bfloat16, requires_grad=True)
        (torch.randn(64, 256, device=device, dtype=torch.bfloat16) @ w).float().square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    def log_probs() -> None:
        logits = torch.randn(2, 8, 512, device=device, dtype=torch.bfloat16)
        selective_log_softmax(logits, torch.randint(0, 512, (2, 8), device=device)).sum().item()

    def past_the_memory_cap() -> None:
        size = (memory_mb + 512) * 2**20
        try:
            torch.empty(size, dtype=torch.uint8)  # never written: a missing cap reserves, but uses, nothing
        except (MemoryError, RuntimeError) as err:
            if isinstance(err, MemoryError) or "alloc" in str(err).lower():
                return
            raise
        raise RuntimeError(f"{size >> 20} MB of host memory were granted past the {memory_mb} MB cap: "
                           "this worker has no per-process memory cap")

    if step(f"bf16 matmul + backward after sealing ({', '.join(sealed)})", matmul_backward):
        if step("TRL per-token log-probs (PyTorch path)", log_probs):
            step(f"host memory past the {memory_mb} MB cap is refused", past_the_memory_cap)
    return out


def main() -> None:
    # lazy: also the probe child's entry: nothing beyond the stdlib before lock_down
    from discopop.sandbox import child_connections, lock_down

    workdir = os.environ["DISCOPOP_SANDBOX_DIR"]
    layers = lock_down(workdir)  # first, while single-threaded, as the worker does
    recv, send = child_connections()
    request = json.loads(recv.recv_bytes())
    device = "cpu" if request.get("device") == "cpu" else "cuda"
    send.send_bytes(json.dumps(_probe(workdir, layers, device, int(request["memory_mb"]))).encode())


if __name__ == "__main__":
    main()
