"""Where one fine-tune of the embedded task spends its time: the training steps split by phase, and scoring.

Builds one ``FineTuner`` as a worker does and trains a reference loss (DPO by default) with the loss in this
process (``in-process``: BENCHMARK BASELINE ONLY, the unsafe path the product never takes) and through a sandboxed
loss oracle (``oracle``: a :class:`~discopop.sandbox.remote_loss.RemoteLoss` with one round trip per step, as the
worker runs a job), alternating the two arms run by run so machine load hits both alike. Each step is split by
wrapping the trainer's own calls (timing only; nothing they compute changes):

* policy forward (``_policy_token_logps``: the model and TRL's fused log-probs; the reference log-probs are
  precomputed once per task, so no reference forward runs in a step),
* loss call (in-process: the loss; oracle: the round trip, which also brings back the gradient),
* backward (``accelerator.backward``), gradient clipping, optimiser step (``Optimizer.step``, global hook),
* the rest of the step: TRL/Trainer bookkeeping (metrics, callbacks, loss accumulation, batch fetch);

and outside the steps: the ``train()`` set-up and tear-down (weights restored, optimiser built, ...) and the
scoring pass (greedy and sampled decoding, the KL pass over policy and reference, the answer probabilities).
Each phase is reported in wall seconds and in this process's CPU seconds (on a loaded machine the wall time is
mostly waiting for a core; the CPU seconds are what a phase costs). Also checks that every run of an arm gives the
same fitness bit for bit, and the arms the same as each other.

``--ab-malloc``: the A/B of ``execution.malloc.keep_freed_memory`` (process-wide, so one process per arm, both at
once so that load hits them alike): each arm's split, the on/off ratios of CPU and wall seconds, and whether the
fitness is the same in both.

    python benchmarks/step_split.py --reps 2
    python benchmarks/step_split.py --reps 1 --arms in-process --loss ipo
    python benchmarks/step_split.py --ab-malloc --reps 2 --arms in-process
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import discopop.fitness.scoring as scoring
import discopop.fitness.training as training_module
from discopop.config.compose import compose_settings
from discopop.config.references import reference_path
from discopop.contract.inputs import declared_inputs
from discopop.contract.losses import load_loss
from discopop.fitness.training import FineTuner
from discopop.sandbox import Limits
from discopop.sandbox.oracle_supply import OracleSupply
from discopop.sandbox.remote_loss import OracleLink, RemoteLoss
from discopop.tasks import load_task

PHASES = ("policy forward", "loss call", "backward", "grad clip", "optimizer step", "step rest")


class Clock:
    """Seconds per phase, accumulated by the wrappers below (single-threaded: one phase at a time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)  # this process's CPU seconds: what load does not inflate

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.cpu[name] += time.process_time() - cpu
        return timed


def instrument(tuner: FineTuner, clock: Clock) -> None:
    """Time the trainer's phases by wrapping its bound methods on this instance (benchmark only)."""
    trainer = tuner.trainer
    trainer._policy_token_logps = clock.wrap("policy forward", trainer._policy_token_logps)
    trainer.accelerator.backward = clock.wrap("backward", trainer.accelerator.backward)
    trainer._clip_grad_norm = clock.wrap("grad clip", trainer._clip_grad_norm)
    opt_started: list[tuple[float, float]] = []
    register_optimizer_step_pre_hook(lambda *a: opt_started.append((time.perf_counter(), time.process_time())))

    def after_step(*args: Any) -> None:
        wall, cpu = opt_started.pop()
        clock.seconds["optimizer step"] += time.perf_counter() - wall
        clock.cpu["optimizer step"] += time.process_time() - cpu
    register_optimizer_step_post_hook(after_step)
    for name in ("decode_loop", "token_kl_sums", "answer_probabilities"):
        setattr(scoring, name, clock.wrap(f"score: {name}", getattr(scoring, name)))


def one_run(tuner: FineTuner, loss: Callable[..., Any], clock: Clock, learning_rate: float) -> dict[str, float]:
    clock.seconds.clear()
    clock.cpu.clear()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = tuner.run(_TimedLoss(loss, clock), seed=0, learning_rate=learning_rate)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    split = dict(clock.seconds)
    split["steps"] = result.step_seconds
    split["step rest"] = result.step_seconds - sum(split.get(p, 0.0) for p in PHASES[:-1])
    split["train() set-up/tear-down"] = result.train_seconds - result.step_seconds
    split["scoring"] = result.score.seconds
    split["wall"] = wall
    split["fitness"] = result.score.fitness
    split["n_steps"] = result.steps
    split.update({f"cpu: {k}": v for k, v in clock.cpu.items()})
    split["cpu: wall"] = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    split["minor page faults"] = after.ru_minflt - usage.ru_minflt
    split["cpu s (user)"] = after.ru_utime - usage.ru_utime
    split["cpu s (system)"] = after.ru_stime - usage.ru_stime
    return split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2, help="timed runs per arm (after one untimed warm-up each)")
    parser.add_argument("--arms", nargs="+", choices=("in-process", "oracle"), default=["in-process", "oracle"])
    parser.add_argument("--loss", default="dpo", help="a reference loss name")
    parser.add_argument("--malloc", choices=("on", "off"), default="on",
                        help="off: skip execution.malloc.keep_freed_memory (the A/B's baseline arm)")
    parser.add_argument("--ab-malloc", action="store_true", help="run the malloc off and on arms at once, compare")
    parser.add_argument("--json", help="write the runs here (used by --ab-malloc)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.ab_malloc:
        ab_malloc([a for a in sys.argv[1:] if a != "--ab-malloc"])
        return
    if args.malloc == "off":
        training_module.keep_freed_memory = lambda: False
    cfg, _ = compose_settings(["wandb.mode=disabled", *args.overrides])
    task = load_task(cfg.task)
    tuner = FineTuner(task, cfg.training, Path(tempfile.mkdtemp()))
    clock = Clock()
    instrument(tuner, clock)
    code = reference_path(args.loss).read_text()
    grid = cfg.training.lr_grid or [cfg.training.learning_rate]
    lr = float(grid[len(grid) // 2])
    oracles = OracleSupply(Limits()) if "oracle" in args.arms else None
    links: list[OracleLink] = []

    def make_loss(arm: str) -> Callable[..., Any]:
        if arm == "in-process":
            return load_loss(code)  # BENCHMARK BASELINE ONLY
        oracle = oracles.take()
        link = OracleLink(oracle.sock, call_timeout=float(cfg.training.oracle_timeout))
        link.load(code)
        links.append(link)
        return RemoteLoss(link, fused=True)

    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in args.arms}
    try:
        if oracles:
            oracles.prespawn()
        for arm in args.arms:  # warm-up: the first run of a seed collates its batches
            one_run(tuner, make_loss(arm), clock, lr)
        for _ in range(args.reps):
            for arm in args.arms:
                runs[arm].append(one_run(tuner, make_loss(arm), clock, lr))
                r = runs[arm][-1]
                print(f"{arm:>10}: wall {r['wall']:.2f} s, steps {r['steps']:.2f} s, scoring {r['scoring']:.2f} s, "
                      f"fitness {r['fitness']!r}", flush=True)
    finally:
        for link in links:
            link.close()
        if oracles:
            oracles.close()
    print(f"\nloss {args.loss}, lr {lr}, {runs[args.arms[0]][0]['n_steps']:.0f} steps, malloc tuning {args.malloc}")
    report(runs, args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(runs))


def report(runs: dict[str, list[dict[str, float]]], reps: int) -> None:
    """The median split per arm: wall seconds (and share of the wall), then this process's CPU seconds."""
    arms = list(runs)
    first = runs[arms[0]][0]
    scores = sorted(k for k in first if k.startswith("score: "))
    keys = [*PHASES, "steps", "train() set-up/tear-down", *scores, "scoring", "wall"]
    for unit, prefix in (("wall seconds", ""), ("CPU seconds of this process", "cpu: ")):
        print(f"median {unit} per fine-tune over {reps} run(s); share of the total in brackets")
        print(f"{'phase':<34}" + "".join(f"{arm:>22}" for arm in arms))
        for key in keys if not prefix else [*PHASES[:-1], *scores, "wall"]:
            cells = []
            for arm in arms:
                value = statistics.median(r.get(prefix + key, 0.0) for r in runs[arm])
                total = statistics.median(r[prefix + "wall"] for r in runs[arm])
                cells.append(f"{value:9.3f} ({value / total:6.1%})")
            print(f"{'total' if key == 'wall' else key:<34}" + "".join(f"{c:>22}" for c in cells))
    for arm in arms:
        med = {k: statistics.median(r[k] for r in runs[arm]) for k in ("minor page faults", "cpu s (user)",
                                                                         "cpu s (system)")}
        print(f"{arm}: minor page faults {med['minor page faults']:.0f}, CPU user {med['cpu s (user)']:.2f} s, "
              f"system {med['cpu s (system)']:.2f} s per fine-tune")
    fits = {arm: {r["fitness"] for r in runs[arm]} for arm in arms}
    print("fitness per arm:", {arm: sorted(v) for arm, v in fits.items()},
          "identical:", len(set().union(*fits.values())) == 1)


def ab_malloc(argv: list[str]) -> None:
    """This script twice at once, malloc tuning off and on (process-wide, so one process per arm): both meet the
    same machine load; prints each split and the on/off ratios of CPU and wall seconds per fine-tune."""
    out = Path(tempfile.mkdtemp())
    procs = {arm: subprocess.Popen([sys.executable, __file__, *argv, "--malloc", arm, "--json", str(out / arm)])
             for arm in ("off", "on")}
    if any(proc.wait() for proc in procs.values()):
        raise SystemExit("an arm failed")
    runs = {arm: json.loads((out / arm).read_text()) for arm in procs}
    for key in ("cpu: wall", "wall", "minor page faults"):
        per_arm = {arm: statistics.median(r[key] for loss_arm in runs[arm].values() for r in loss_arm)
                   for arm in runs}
        print(f"{key.replace('cpu: wall', 'CPU seconds'):>18}: off {per_arm['off']:.2f}, on {per_arm['on']:.2f}, "
              f"on/off {per_arm['on'] / per_arm['off']:.3f}")
    fits = {r["fitness"] for arm in runs.values() for loss_arm in arm.values() for r in loss_arm}
    print("fitness identical across the arms:", len(fits) == 1, sorted(fits))


class _TimedLoss:
    """A loss (in-process, or a RemoteLoss: one oracle round trip per call with the fused backward) whose calls are
    timed as 'loss call'; it declares the inputs the loss declares, so the trainer calls it exactly as the loss."""

    def __init__(self, loss: Callable[..., Any], clock: Clock) -> None:
        self.discopop_inputs = declared_inputs(loss)
        self._call = clock.wrap("loss call", loss)

    def __call__(self, *args: Any) -> torch.Tensor:
        return self._call(*args)


if __name__ == "__main__":
    main()
