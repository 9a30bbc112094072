"""The one-GPU hour: ``discover --generations 50`` at the 0.5B size under the default protocol, its wall time and split.

    python benchmarks/one_gpu_hour.py                          # one GPU: 0.5b, 50 generations (not measured yet)
    python benchmarks/one_gpu_hour.py --generations 5 --out RUN_DIR/summary.json executor.workers_per_gpu=2
    nice -n 5 python benchmarks/one_gpu_hour.py --size 0.5b-tiny --generations 1 --pairs 64 --heldout 8   # CPU

Builds the task locally with ``benchmarks/gpu_candidate.py``'s ``build_hub`` (a Qwen2 policy of Qwen2.5-0.5B's shape
with random weights, a reward model of the same shape, synthetic preference pairs; ``task=hub`` loads them as it
loads real weights from a local directory or the hub), then runs what ``discover --generations N`` runs: the same
loop and sandboxed workers, in this process, through ``benchmarks/default_run_profile.py``'s ``profile`` (a display
that stamps every event; the run directory is a normal one, ``discover --resume`` continues it). Every setting is
discover's default except the task, ``training.precision=bf16`` on a GPU, a LoRA adapter (r 16, all linear layers;
``--full`` for a full fine-tune), the time limits of a job (as gpu_candidate.py sets them), and the hydra overrides
given after the options, which win.

Printed: the wall time and its split (references, generations, pick, confirmation, transfer; start-up and the rest
is what they leave), the fine-tunes by kind, the evolved candidates and the fine-tunes they cost, and a line per phase
as it ends (a run cut short by a time limit still says how far it got). ``--out`` writes the whole summary as JSON.
The data size (``--pairs``, ``--heldout``) sets the cost of each fine-tune; the defaults are a guess at "a few
minutes of GPU time", not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PHASES = ("references", "generations", "pick", "confirmation", "transfer")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks: the task's build, the profile


def run_overrides(root: Path, size: dict, heldout: int, device: str, lora: bool, checkpointing: bool) -> list[str]:
    """The settings this command changes from discover's defaults (the caller's overrides follow and win)."""
    import gpu_candidate as gpu  # lazy: torch and transformers only once a run is asked for

    # the time limits as gpu_candidate.py sets them (limits only: a job that ends in time gives the same result)
    return [*gpu.hub_overrides(root, size, heldout), f"training.device={device}", "training.train_timeout=1800",
            "training.check_timeout=120",
            *(["training.precision=bf16"] if device == "cuda" else []),
            *([f"training.lora={gpu.LORA}"] if lora else []),
            *(["training.gradient_checkpointing=true"] if checkpointing else [])]


def split_lines(out: dict[str, Any]) -> list[str]:
    """The wall time, its split by phase, the fine-tunes by kind and per evolved candidate, as printed."""
    wall = float(out["wall"])
    phases = {k: float(out["phases"].get(k) or 0.0) for k in PHASES}
    rest = wall - sum(phases.values())
    lines = [f"wall time {wall:.1f} s ({wall / 60:.1f} min), {out['parallelism']} worker(s)"]
    for name, seconds in [*phases.items(), ("start-up and the rest", rest)]:
        lines.append(f"  {name:<22} {seconds:9.1f} s {seconds / wall if wall else 0.0:6.1%}")
    jobs = out.get("jobs", {})
    tunes = sum(n for kind, n in jobs.items() if kind != "check")
    lines.append(f"fine-tunes {tunes} ({', '.join(f'{k} {n}' for k, n in sorted(jobs.items()))}); "
                 f"job-seconds {out['job_seconds']:.0f}, idle worker-seconds {out['idle_worker_seconds']:.0f}")
    lines.append(f"evolved candidates {out['candidates']} ({', '.join(f'{k} {n}' for k, n in out['statuses'].items())})"
                 f", their fine-tunes {out['evolved_fine_tunes']}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5b", help="a size of benchmarks/gpu_candidate.py (0.5b-tiny on a CPU)")
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=256, help="synthetic preference pairs (each fine-tune's cost)")
    parser.add_argument("--heldout", type=int, default=32, help="held-out prompts (half score the search)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--full", action="store_true", help="full fine-tunes instead of a LoRA adapter")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="training.gradient_checkpointing=true")
    parser.add_argument("--root", help="build the task here (default: a fresh temporary folder)")
    parser.add_argument("--run-dir", help="the run directory (default: ROOT/run)")
    parser.add_argument("--out", help="write the summary as JSON here")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for the run, e.g. executor.workers_per_gpu=2")
    args = parser.parse_args(argv)

    import default_run_profile
    import gpu_candidate as gpu

    from discopop.execution.devices import cuda_device_count, resolve_device

    if args.size not in gpu.SIZES:
        parser.error(f"--size must be one of {', '.join(sorted(gpu.SIZES))}, got {args.size!r}")
    size = gpu.SIZES[args.size]
    device = resolve_device(args.device, cuda_device_count() > 0)
    root = Path(args.root or tempfile.mkdtemp(prefix="discopop-one-gpu-hour-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    gpu.build_hub(root, size, args.pairs, args.heldout, seed=0)
    built = time.perf_counter() - started
    overrides = [*run_overrides(root, size, args.heldout, device, not args.full, args.gradient_checkpointing),
                 *args.overrides]
    print(f"task built in {built:.1f} s; device {device}; discover --generations {args.generations} "
          + " ".join(overrides), flush=True)
    run_dir = Path(args.run_dir) if args.run_dir else root / "run"
    out = default_run_profile.profile(args.generations, overrides, run_dir, echo=True)
    out.update(size=args.size, device=device, build_seconds=built, pairs=args.pairs, heldout=args.heldout,
               load=os.getloadavg())
    print("\n".join(split_lines(out)))
    print(f"run directory: {run_dir}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
