"""Can the task rank losses? Issue 24's three calibration figures, for any task.

Each reference loss goes through ``discopop evaluate``'s protocol (``transfer.protocol.TransferEvaluation``):
its learning rate chosen on the search prompts with the run seed, then ``--seeds`` fresh seeds at that rate,
scored per prompt on the ``confirm`` prompts, which chose nothing. From those per-prompt matrices
(``fitness.calibration``, where the definitions are):

1. the share of held-out prompts whose score varies across losses and seeds (SD over the fine-tunes above
   ``--threshold``), beside the same for the per-prompt fitness and the greedy 0/1 figure; goal >= 50%;
2. the spread of the references' fresh-seed means in units of the median pairwise MDE; goal >= 10;
3. the MDE of the default confirmation (``confirm.seeds`` fresh seeds, Holm over ``2 * confirm.top_k``
   comparisons) against the strongest baseline, for a dissimilar candidate (each other reference); goal:
   at most a quarter of the gap from DPO to the best other reference.

Every fine-tune is kept in ``OUT/results.sqlite`` (the evaluate command's store: an interrupted run resumes,
and an earlier ``discopop evaluate -o DIR`` with the same task, training settings and beta can be reused by
pointing ``--out`` at it or copying its ``results.sqlite``). cDPO and rDPO run at the task's true flip rate.
The figures also go to ``OUT/calibration.json``.

    python benchmarks/task_calibration.py task=diagnostic task.preset=label_noise
    python benchmarks/task_calibration.py --losses dpo,aqfl,hinge,ipo,cdpo --out runs/calib_addition
    python benchmarks/task_calibration.py --report-only --out runs/calib_addition   # what the store holds

``--grid-seeds`` / ``--grid-contexts`` read the figures again on the first N seeds and first M confirm prompts of
the same fine-tunes (nested subsets: a smaller confirmation of the same runs), with the variance split of the
comparisons with the strongest reference (seed / prompt / residual share of the mean difference's variance):

    python benchmarks/task_calibration.py --seeds 20 --grid-seeds 5,10,20 --grid-contexts 128,512,2048,3968 \
        task=diagnostic task.preset=label_noise task.extra_confirm_contexts=3840
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from discopop.archive import Evaluation
from discopop.cli.evaluate import executor_factory
from discopop.config.compose import compose_settings, validate
from discopop.fitness.calibration import (
    GAP_FRACTION,
    SHARE_GOAL,
    SPREAD_GOAL,
    ArmScores,
    Calibration,
    calibrate,
    subset,
    variance_split,
)
from discopop.fitness.result_store import CACHE_NAME, ResultCache, RunKey
from discopop.proposers.reference import available, reference_candidate
from discopop.report.quiet import quiet_libraries
from discopop.search.confirmation import SPLIT
from discopop.tasks import load_task
from discopop.transfer.protocol import Cell, LossSpec, Progress, TransferEvaluation, arm_matrix, task_key


def flip_rate(cfg, task) -> float | None:
    """The task's true label-flip rate (cDPO/rDPO run at it), as ``discover`` finds it."""
    flips = getattr(getattr(cfg.task, "pairs", None), "label_noise", None)
    return flips if flips is not None else task.meta.get("label_noise")


def arms_of(cells: list[Cell], seeds: list[int], cache: ResultCache, key_task: str,
            train_seconds: list[float] | None = None) -> dict[str, ArmScores]:
    """Each reference's seeds x prompts matrices (fitness, score, greedy where the store kept it); failed arms are
    left out with a line saying so. ``train_seconds`` gains each fresh run's stored training time."""
    arms: dict[str, ArmScores] = {}
    for cell in cells:
        fitness, failed = arm_matrix(cell.runs, seeds)
        if fitness is None:
            print(f"  {cell.loss.name}: left out ({failed})")
            continue
        score = np.asarray([cell.runs[s].per_prompt for s in seeds], dtype=float)
        greedy_rows = []
        for s in seeds:
            reply = cache.reply_data(RunKey(cell.loss.hash, key_task, cell.beta, s, SPLIT, cell.learning_rate))
            greedy_rows.append(list(reply.per_prompt_greedy) if reply is not None else [])
            if train_seconds is not None and reply is not None and reply.train_seconds:
                train_seconds.append(float(reply.train_seconds))
        greedy = (np.asarray(greedy_rows, dtype=float)
                  if all(len(g) == fitness.shape[1] for g in greedy_rows) else None)
        arms[cell.loss.name] = ArmScores(fitness, score, greedy)
    return arms


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def report(cal: Calibration, cells: list[Cell], arms: dict[str, ArmScores], threshold: float) -> None:
    """The per-loss table and the three figures against their goals."""
    vs = {p.candidate: p for p in cal.vs_strongest}
    print(f"\n{'loss':10s} {'lr':>8s} {'search':>7s} {'fresh mean ± se':>16s} {'score':>6s} {'KL':>6s} "
          f"{'greedy':>6s} {'vs strongest (MDE Holm)':>26s}")
    for cell in sorted((c for c in cells if c.loss.name in arms), key=lambda c: -cal.means[c.loss.name]):
        name, est = cell.loss.name, cell.estimate
        greedy = arms[name].greedy  # from the stored replies (a cached Evaluation has no greedy mean)
        greedy_text = f"{greedy.mean():.3f}" if greedy is not None else "—"
        p = vs.get(name)
        versus = f"{p.delta:+.3f} ({p.mde_family:.3f})" if p else "strongest"
        print(f"{name:10s} {cell.learning_rate:8g} {cell.search_fitness:7.3f} "
              f"{est['mean']:8.3f} ± {est['se']:.3f} {est['reward']:6.3f} {est['kl']:6.3f} {greedy_text:>6s} "
              f"{versus:>26s}")
    print(f"\n{len(arms)} references x {cal.seeds} fresh seeds = {cal.fine_tunes} fine-tunes, {cal.prompts} confirm "
          f"prompts; MDE at 80% power, Holm over {cal.family} comparisons (single test in brackets)")
    greedy = (f"greedy reward not constant on {_pct(cal.greedy_varying)} over {cal.greedy_fine_tunes} fine-tunes"
              + (f" (right every time {_pct(cal.greedy_always)}, never {_pct(cal.greedy_never)})"
                 if cal.greedy_always is not None else "")) if cal.greedy_varying is not None else \
        "greedy per prompt: not kept by these runs"
    goals = cal.goals
    print(f"1. prompts whose score varies (SD over fine-tunes > {threshold:g}): {cal.varying_score:.1%} "
          f"[goal >= {SHARE_GOAL:.0%}: {'met' if goals['varying'] else 'NOT met'}]; per-prompt fitness: "
          f"{cal.varying_fitness:.1%}; median SD {cal.median_sd:.4f}; {greedy}")
    single = sorted(p.mde for p in cal.pairs)
    print(f"2. spread of the references {cal.spread:.3f} = {cal.spread_in_mde:.1f} x the median pairwise MDE "
          f"{cal.spread_unit:.4f} ({single[len(single) // 2]:.4f}), {cal.spread / cal.mde_vs_strongest:.1f} x the MDE "
          f"of 3. [goal >= {SPREAD_GOAL:g}: "
          f"{'met' if goals['spread'] else 'NOT met'}]")
    mdes = sorted(p.mde_family for p in cal.vs_strongest)
    gap_text = ("no DPO arm" if cal.gap is None else
                f"DPO-to-best-other gap {cal.gap:+.3f}, a quarter {GAP_FRACTION * cal.gap:+.4f}"
                + ("" if cal.gap > 0 else ": DPO is the strongest reference, the goal cannot be met"))
    print(f"3. MDE vs the strongest baseline ({cal.strongest}): median {cal.mde_vs_strongest:.4f} over "
          f"{len(mdes)} dissimilar references (range {mdes[0]:.4f}-{mdes[-1]:.4f}); {gap_text} "
          f"[goal: {'met' if goals['mde'] else 'NOT met'}]")


def grid(arms: dict[str, ArmScores], seed_counts: list[int], prompt_counts: list[int], family: int,
         threshold: float) -> list[dict]:
    """The figures on every (first N seeds, first M prompts) of the same fine-tunes, with the median variance split
    of the comparisons with the strongest reference; printed as a table and returned as rows."""
    rows = []
    print(f"\n{'seeds':>5s} {'prompts':>7s} {'spread':>7s} {'unit':>7s} {'(ii)':>6s} {'strongest':>10s} "
          f"{'(iii)':>7s} {'gap':>7s} {'gap/4':>7s} {'seed':>5s} {'prompt':>6s} {'resid':>5s}")
    for s in seed_counts:
        for p in prompt_counts:
            part = subset(arms, s, p)
            cal = calibrate(part, family=family, threshold=threshold)
            splits = [variance_split(part[v.candidate].fitness, part[cal.strongest].fitness)
                      for v in cal.vs_strongest]
            share = {k: float(np.median([getattr(x, k) for x in splits])) for k in ("seed", "prompt", "residual")}
            row = {"seeds": s, "prompts": p, "spread": cal.spread, "spread_unit": cal.spread_unit,
                   "spread_in_mde": cal.spread_in_mde, "strongest": cal.strongest,
                   "mde_vs_strongest": cal.mde_vs_strongest, "gap": cal.gap, "goals": cal.goals,
                   "variance_split_median": share}
            rows.append(row)
            gap = "—" if cal.gap is None else f"{cal.gap:+.4f}"
            quarter = "—" if cal.gap is None else f"{GAP_FRACTION * cal.gap:.4f}"
            print(f"{s:5d} {p:7d} {cal.spread:7.3f} {cal.spread_unit:7.4f} {cal.spread_in_mde:5.1f}x "
                  f"{cal.strongest:>10s} {cal.mde_vs_strongest:7.4f} {gap:>7s} {quarter:>7s} "
                  f"{share['seed']:5.0%} {share['prompt']:6.0%} {share['residual']:5.0%}")
    return rows


def _counts(text: str | None) -> list[int]:
    return [int(v) for v in text.split(",") if v] if text else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--losses", default=",".join(available()), help="reference losses (comma-separated)")
    parser.add_argument("--seeds", type=int, default=None, help="fresh seeds (default: confirm.seeds)")
    parser.add_argument("--beta", type=float, default=None, help="default: training.beta")
    parser.add_argument("--threshold", type=float, default=0.01, help="per-prompt SD over fine-tunes that 'varies'")
    parser.add_argument("--out", default=None, help="default: runs/task_calibration/<task>[-<preset>]")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report what the store holds")
    parser.add_argument("--grid-seeds", default=None, help="also read the figures on the first N seeds (e.g. 5,10)")
    parser.add_argument("--grid-contexts", default=None,
                        help="... and on the first M confirm prompts (e.g. 128,512); default: all of them")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. task=diagnostic task.preset=clean")
    args = parser.parse_args()
    cfg = validate(compose_settings(["wandb.mode=disabled", *args.overrides])[0])
    task = load_task(cfg.task)
    preset = getattr(cfg.task, "preset", None)
    out = Path(args.out or f"runs/task_calibration/{cfg.task.name}{f'-{preset}' if preset else ''}")
    out.mkdir(parents=True, exist_ok=True)
    quiet_libraries(out)
    seeds = args.seeds or cfg.confirm.seeds
    beta = args.beta or cfg.training.beta
    flips = flip_rate(cfg, task)
    losses = [LossSpec(n, reference_candidate(n, flips).code, "reference", reference=True)
              for n in args.losses.split(",") if n]
    cache = ResultCache(out / CACHE_NAME)
    print(f"task {cfg.task.name}{f' ({preset})' if preset else ''}: kl_coef {cfg.task.kl_coef}, beta {beta:g}, "
          f"flip rate {flips}, {len(losses)} references, {seeds} fresh seeds; store {out / CACHE_NAME} "
          f"({cache.count()} fine-tunes already)", flush=True)
    counts = {"ran": 0, "cached": 0}
    started = time.perf_counter()

    def done(loss: str, beta: float, task_name: str, key: RunKey, ev: Evaluation, cached: bool) -> None:
        counts["cached" if cached else "ran"] += 1
        if not cached:
            result = f"fitness {ev.fitness:.4f}" if ev.ok else f"FAILED {ev.error}"
            print(f"  {time.perf_counter() - started:6.0f}s {loss} {key.split} seed {key.seed} "
                  f"lr {key.learning_rate:g}: {result}", flush=True)

    cells = TransferEvaluation(losses, [cfg], [beta], seeds, cache, executor_factory(out), Progress(done=done),
                               train=not args.report_only).run()
    print(f"{counts['ran']} fine-tunes run, {counts['cached']} from the store, "
          f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
    seed_list = cells[0].estimate["seeds"]
    train_seconds: list[float] = []
    arms = arms_of(cells, seed_list, cache, task_key(cfg), train_seconds)
    cache.close()
    if len(arms) < 2 or seeds < 2:
        print("fewer than two references with every seed scored, or fewer than 2 seeds: no figures")
        return
    cal = calibrate(arms, family=2 * max(1, cfg.confirm.top_k), threshold=args.threshold)
    report(cal, cells, arms, args.threshold)
    per_tune = float(np.median(train_seconds)) if train_seconds else None
    if per_tune is not None:
        print(f"time per fine-tune (the worker's training time, median over {len(train_seconds)} fresh runs): "
              f"{per_tune:.2f} s")
    rows = []
    if args.grid_seeds or args.grid_contexts:
        rows = grid(arms, _counts(args.grid_seeds) or [seeds], _counts(args.grid_contexts) or [cal.prompts],
                    2 * max(1, cfg.confirm.top_k), args.threshold)
    facts = {"task": cfg.task.name, "preset": preset, "kl_coef": cfg.task.kl_coef, "beta": beta, "flip_rate": flips,
             "learning_rates": {c.loss.name: c.learning_rate for c in cells},
             "minutes": round((time.perf_counter() - started) / 60, 2), **counts,
             "train_seconds_median": per_tune, "grid": rows}
    payload = {**facts, **cal.as_dict()}
    (out / "calibration.json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {out / 'calibration.json'}")


if __name__ == "__main__":
    main()
