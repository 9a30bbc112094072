"""Rank agreement between each cheap stage (``search/fidelity.py``) and the full protocol, and what each costs.

Scores the reference losses (``discopop/proposals``) plus evolved losses (scored rows of run archives given
with ``--archives``, else children of the offline evolution proposer, blind mode, seeded) three ways:

* full: every rate of ``training.lr_grid`` on the run's task, the rate chosen on the even search prompts and
  the loss ranked on the odd ones (``tuning.Sweep``), the most a loss's protocol spends before its race;
* short: one fine-tune of ``--short-fraction`` of the steps at the grid's middle rate;
* diagnostic: best of ``--lrs`` per diagnostic preset, mean over ``--presets`` (no step of the run's task).

Every fine-tune runs in sandboxed workers through the loss oracle (this process never runs loss code). It
prints Spearman's rho of each stage with the full score, its percentile-bootstrap interval over the losses,
and each stage's cost relative to the full evaluation (optimiser steps on the task, and seconds). ``--out``
stores the agreements with the key of these settings, for ``cascade.agreement``.

    python benchmarks/stage_agreement.py                     # tiny task, 13 references + 4 evolved (~5-8 min)
    python benchmarks/stage_agreement.py --task addition --evolved 8 --out runs/stage_agreement.json
    python benchmarks/stage_agreement.py --run runs/RUN --out runs/stage_agreement.json

``--run RUN_DIR`` measures the cheap stages against what a finished run's own protocol decided: the full score of
every scored row (references and evolved) is its archived search fitness (the learning-rate climb and seed race the
loop ranks by), so only the cheap stages are trained, under the run's saved config (``.hydra/config.yaml``). This is
the agreement that matters for gating: over the losses a real search produces, not a hand-picked set.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import math
import sqlite3
import statistics
import time
from pathlib import Path

from discopop.config import CascadeSettings, plain
from discopop.config.compose import SAVED_CONFIG, compose_settings
from discopop.config.references import available
from discopop.execution.executors import Job, LocalExecutor
from discopop.fitness.rank_agreement import agreement_key, bootstrap_spearman, entry, save_agreements
from discopop.fitness.tuning import LrProtocol, Sweep
from discopop.proposers.base import HistoryEntry
from discopop.proposers.evolution.proposer import EvolutionProposer
from discopop.proposers.reference import reference_candidate
from discopop.search.fidelity import Fidelity, StageResult, stage_settings
from discopop.search.loop import worker_spec
from discopop.tasks import load_task

print = functools.partial(print, flush=True)  # noqa: A001 - progress shows in a redirected log at once

TINY = ["task.sft.steps=150", "task.sft.n_layer=1", "task.sft.n_embd=32", "task.sft.n_head=2",
        "task.pairs.prompts=200", "task.pairs.samples_per_prompt=16", "task.pairs.max_pairs=64",
        "task.heldout_prompts=64", "task.search_prompts=32", "training.batch_size=4", "training.epochs=2"]


def evolved_losses(count: int, archives: str | None, seed: int) -> dict[str, str]:
    """name -> code: scored non-reference rows of the archives (first ``count``), else blind evolution children."""
    found: dict[str, str] = {}
    for path in sorted(glob.glob(archives)) if archives else []:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for name, code in db.execute("SELECT name, code FROM candidates WHERE proposer != 'reference' "
                                         "AND status = 'scored' ORDER BY id"):
                if len(found) < count and code not in found.values():
                    found[f"{Path(path).parent.name}:{name}"] = code
    if len(found) < count:
        history = [HistoryEntry(i, 0, n, reference_candidate(n).code, "scored", 0.0, None, (), "reference")
                   for i, n in enumerate(available(), start=1)]
        proposer = EvolutionProposer(seed=seed, history_mode="none", chain_length=2)
        for cand in proposer.propose(history, count - len(found), 1):
            found[f"evolved:{cand.name}"] = cand.code
    return found


def archived_scores(run_dir: Path, protocol: LrProtocol) -> dict[str, tuple[str, float, float]]:
    """name -> (code, archived search fitness, short-stage rate) of every scored row of a run (read-only).

    The short stage's rate is the one the cascade would have given the row before its climb (its screen rate:
    the grid's middle for a reference, its parent's chosen rate for a candidate), never the rate the full
    protocol went on to choose, which would leak the full result into the cheap one."""
    found: dict[str, tuple[str, float, float]] = {}
    rate_of: dict[int, float] = {}
    with sqlite3.connect(f"file:{run_dir / 'archive.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, name, code, fitness, metrics, proposer, parent_ids FROM candidates "
                          "WHERE status = 'scored' AND fitness IS NOT NULL ORDER BY id").fetchall()
    for row_id, name, code, fitness, metrics, proposer, parent_ids in rows:
        data = json.loads(metrics or "{}")
        rate, race = data.get("learning_rate"), data.get("race") or {}
        score = race.get("mean") if isinstance(race.get("mean"), int | float) else fitness  # the seed mean it ranks by
        if proposer == "reference":
            screen = protocol.default()
        else:
            parents = [rate_of[i] for i in json.loads(parent_ids or "[]") if i in rate_of]
            screen = protocol.screen_rate(parents, list(rate_of.values()))
        if isinstance(rate, int | float):
            rate_of[row_id] = float(rate)
        if math.isfinite(score) and code not in {c for c, _, _ in found.values()}:
            found[f"{row_id}:{name}"] = (code, float(score), float(screen))
    return found


def archived_costs(run_dir: Path, names: list[str]) -> tuple[dict[int, int], dict[int, float]]:
    """Steps and seconds each archived row's full evaluation spent: fine-tunes run x steps, and its total time."""
    ids = {int(name.split(":", 1)[0]): i for i, name in enumerate(names)}
    steps, seconds = dict.fromkeys(range(len(names)), 0), dict.fromkeys(range(len(names)), 0.0)
    with sqlite3.connect(f"file:{run_dir / 'archive.sqlite'}?mode=ro", uri=True) as db:
        for row_id, metrics in db.execute("SELECT id, metrics FROM candidates WHERE status = 'scored'"):
            if row_id in ids:
                data = json.loads(metrics or "{}")
                spent = data.get("seconds") or {}
                steps[ids[row_id]] = int(data.get("steps") or 0) * int(spent.get("runs") or 1)
                seconds[ids[row_id]] = float(spent.get("total") or 0.0)
    return steps, seconds


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="tiny", help="tiny (the tests' task) or a task preset (e.g. addition)")
    parser.add_argument("--grid", default="[5e-6,2e-5,8e-5]", help="training.lr_grid of the full protocol")
    parser.add_argument("--evolved", type=int, default=4)
    parser.add_argument("--archives", default=None, help="glob of run archives to take evolved losses from")
    parser.add_argument("--presets", default="clean,label_noise")
    parser.add_argument("--lrs", default="0.01,0.03,0.1")
    parser.add_argument("--short-fraction", type=float, default=0.25)
    parser.add_argument("--stages", default="diagnostic,short", help="which cheap stages to train and measure")
    parser.add_argument("--kl-coef", type=float, default=None,
                        help="the diagnostic stage's kl_coef (default: cascade.diagnostic_kl_coef's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--run", type=Path, default=None,
                        help="a finished run directory: full scores are its archived ones (see the docstring)")
    parser.add_argument("--out", default=None, help="store the agreements here (JSON, for cascade.agreement)")
    parser.add_argument("overrides", nargs="*", help="more hydra overrides")
    args = parser.parse_args()

    task = [] if args.task == "tiny" else [f"task={args.task}"]
    if args.run is not None:  # the run's own settings: its task, training and grid
        run_settings, _ = compose_settings(["training.threads=1", f"executor.workers={args.workers}",
                                            "wandb.mode=disabled", *args.overrides],
                                           config_file=args.run / SAVED_CONFIG)
    else:
        run_settings, _ = compose_settings([*task, *(TINY if args.task == "tiny" else []),
                                            f"training.lr_grid={args.grid}", "training.threads=1",
                                            f"executor.workers={args.workers}", "wandb.mode=disabled",
                                            *args.overrides])
    cfg = run_settings.to_dict()
    settings = CascadeSettings(stages=["diagnostic", "short"], diagnostic_presets=args.presets.split(","),
                               diagnostic_lrs=[float(x) for x in args.lrs.split(",")],
                               short_fraction=args.short_fraction,
                               **({} if args.kl_coef is None else {"diagnostic_kl_coef": args.kl_coef}))
    stages = tuple(args.stages.split(","))
    if not stages or any(s not in ("diagnostic", "short") for s in stages):
        parser.error(f"--stages: diagnostic and/or short, got {args.stages!r}")
    settings.check()
    started = time.perf_counter()
    load_task(cfg["task"])  # built (or found) before the workers start
    print(f"task ready in {time.perf_counter() - started:.1f} s")
    protocol = LrProtocol.from_config(run_settings.training)
    archived = archived_scores(args.run, protocol) if args.run is not None else {}
    if archived:
        losses = {name: code for name, (code, _, _) in archived.items()}
    else:
        losses = {n: reference_candidate(n).code for n in available()}
        losses.update(evolved_losses(args.evolved, args.archives, args.seed))
    names = list(losses)
    executor = LocalExecutor(worker_spec(run_settings), workers=args.workers)
    fidelity = Fidelity(settings, task=run_settings.task, training=run_settings.training, seed=args.seed,
                        executor=executor, base_spec=worker_spec(run_settings))
    try:
        executor.warm_up()
        t0 = time.perf_counter()
        diag = (fidelity.diagnostic_scores(dict(enumerate(losses.values())))
                if "diagnostic" in stages else {i: StageResult(None) for i in range(len(names))})
        t_diag = time.perf_counter() - t0
        t0 = time.perf_counter()
        rates = [archived[n][2] for n in names] if archived else [protocol.default()] * len(names)
        short = (fidelity.short_scores({i: (code, rates[i]) for i, code in enumerate(losses.values())})
                 if "short" in stages else {i: StageResult(None) for i in range(len(names))})
        t_short = time.perf_counter() - t0
        t0 = time.perf_counter()
        sweeps = {i: Sweep() for i in range(len(names))}
        full_seconds = dict.fromkeys(range(len(names)), 0.0)
        full_steps = dict.fromkeys(range(len(names)), 0)
        jobs = [] if archived else [Job(i, code, "train", args.seed, learning_rate=lr)
                                    for i, code in enumerate(losses.values()) for lr in protocol.grid]
        for result in executor.run(jobs):
            i = result.job.row_id
            sweeps[i].add(result.job.learning_rate, result.ok, result.trained if result.ok else None, result.stage,
                          result.error)
            full_seconds[i] += result.seconds
            full_steps[i] += result.trained.steps if result.ok else 0
        t_full = time.perf_counter() - t0
    finally:
        executor.close()
        fidelity.close()

    full = ({i: archived[n][1] for i, n in enumerate(names)} if archived
            else {i: sweeps[i].ranked_fitness() for i in sweeps})
    if archived:  # the archive keeps no per-row step count: a full evaluation is its climb and race fine-tunes
        full_steps, full_seconds = archived_costs(args.run, names)
    kept = [i for i in range(len(names)) if full[i] is not None and math.isfinite(full[i])]
    print(f"{len(names)} losses ({'from ' + str(args.run) if archived else len(names) - args.evolved} "
          f"{'' if archived else 'references'}), {len(kept)} with a full score; "
          f"grid {list(protocol.grid)}; wall: diagnostic {t_diag:.0f} s, short {t_short:.0f} s, full {t_full:.0f} s "
          "(measured under load)")
    print(f"{'loss':<40} {'full':>8} {'short':>8} {'diag':>8}")
    for i in sorted(kept, key=lambda k: -full[k]):
        s, d = short[i].score, diag[i].score
        print(f"{names[i][:40]:<40} {full[i]:8.4f} {'-' if s is None else f'{s:8.4f}':>8} "
              f"{'-' if d is None else f'{d:8.4f}':>8}")
    for stage, results in (("diagnostic", diag), ("short", short)):
        for i in kept if stage in stages else ():
            if results[i].score is None:  # a failed cheap run ranks last below; say why it failed
                print(f"  {stage} failed for {names[i][:40]}: {str(results[i].detail.get('error'))[:200]}")
    full_cost_steps = statistics.mean(full_steps[i] for i in kept)
    full_cost_seconds = statistics.mean(full_seconds[i] for i in kept)
    stored = {}
    print(f"\nfull evaluation: {full_cost_steps:.1f} task steps, {full_cost_seconds:.2f} s per loss (mean)")
    print(f"{'stage':<11} {'rho':>6} {'CI (' + format(args.confidence, '.0%') + ')':>16} {'n':>3} "
          f"{'steps/full':>10} {'s/full':>8}")
    for stage, results in (("diagnostic", diag), ("short", short)):
        if stage not in stages:
            continue
        values = [results[i].score for i in kept]
        floor = min((v for v in values if v is not None), default=0.0) - 1.0  # a failed cheap run ranks last
        cheap = [floor if v is None else v for v in values]
        agreement = bootstrap_spearman(cheap, [full[i] for i in kept], confidence=args.confidence,
                                       resamples=args.bootstrap, seed=args.seed)
        steps_share = statistics.mean(results[i].steps for i in kept) / full_cost_steps
        seconds_share = statistics.mean(results[i].seconds for i in kept) / full_cost_seconds
        print(f"{stage:<11} {agreement.rho:6.3f} [{agreement.lower:6.3f}, {agreement.upper:6.3f}] {agreement.n:3d} "
              f"{steps_share:10.3f} {seconds_share:8.3f}")
        key = agreement_key(plain(cfg["task"]), plain(cfg["training"]), stage_settings(settings, stage))
        stored[stage] = entry(agreement, key, steps_share=round(steps_share, 4),
                              seconds_share=round(seconds_share, 4), losses=[names[i] for i in kept],
                              measured_by="benchmarks/stage_agreement.py")
    if args.out:
        save_agreements(Path(args.out), stored)
        print(f"agreements stored in {args.out} (cascade.agreement={args.out})")


if __name__ == "__main__":
    main()
