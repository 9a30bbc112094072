"""How often does the fresh-seed confirmation call a loss better or worse than *itself*?

DPO is confirmed against a copy of DPO under another name, through the confirmation's own code
(``discopop.search.confirmation.judge``: per-prompt runs stored in a real archive, paired statistics,
Holm, verdicts), with real training on the task, ``--reps`` times, each repetition on new seeds.
Two nulls:

* **common random numbers** (what ``confirm`` does): both arms train with the same seeds, so two
  identical losses give identical runs and the difference is exactly 0. The first repetition
  trains the copy to show that; later ones reuse arm A's runs (identical by that check). The rate
  is trivially 0% and is printed only as a check of the machinery.
* **independent arms** (the honest figure): the copy trains on *other* seeds (its own pair
  subsample, data order and sampling), paired with arm A's seeds by position. Any difference is
  pure training noise, which a sound test calls significant at most ``alpha`` of the time.

Each repetition prints one line per null; the end prints both false-positive rates with their
Monte-Carlo standard error. Full figure (the default task, ~10 min on 2 cores):

    python benchmarks/confirm_false_positives.py --reps 20 --seeds 3

A quick check that it works: ``--reps 3 --seeds 2`` (append hydra overrides to shrink the task).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from transformers import PrinterCallback

from discopop.archive import Archive, Evaluation
from discopop.config.compose import compose_settings
from discopop.contract.losses import load_loss
from discopop.fitness import stats
from discopop.fitness.training import FineTuner
from discopop.proposers.base import Candidate
from discopop.search.confirmation import SEED_OFFSET, judge
from discopop.tasks import load_task

DPO = Path(__file__).resolve().parent.parent / "discopop" / "proposals" / "dpo.py"
OTHER_SEEDS = 1_000_000  # arm B's seeds in the independent null: far from every seed arm A uses


def evaluation(row_id: int, seed: int, result, kl_coef: float) -> Evaluation:
    score = result.score
    return Evaluation(row_id, seed, "confirm", None, fitness=score.fitness, reward=score.reward, kl=score.kl,
                      kl_coef=kl_coef, per_prompt=score.per_prompt, per_prompt_kl=score.per_prompt_kl)


def judged(archive: Archive, ids: dict[str, int], seeds: list[int]) -> stats.Comparison:
    (comp,) = judge(archive, [archive.get(ids["dpo_copy"])], archive.get(ids["dpo"]), None, seeds)
    return comp


def line(rep: int, null: str, comp: stats.Comparison, arm_a: list[float], arm_b: list[float]) -> str:
    fits = " ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(arm_a, arm_b, strict=True))
    if comp.delta is None:
        return f"rep {rep:2d} {null:11s} fitness A/B {fits}  -> {comp.verdict}: {comp.reason}"
    ci = f"[{comp.ci[0]:+.4f}, {comp.ci[1]:+.4f}]" if comp.ci else "n/a"
    return (f"rep {rep:2d} {null:11s} fitness A/B {fits}  delta {comp.delta:+.4f} se {comp.se:.4f} CI {ci} "
            f"p {comp.p:.3f} p_adj {comp.p_adjusted:.3f} -> {comp.verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="repetitions, each on new seeds (>= 20 for the figure)")
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds per arm, as confirm.seeds")
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="hydra overrides (task.*, training.*)")
    args = parser.parse_args()
    if args.reps < 1 or args.seeds < 1:
        parser.error(f"--reps and --seeds must be >= 1, got {args.reps} and {args.seeds}")
    cfg, _ = compose_settings(["wandb.mode=disabled", *args.overrides])
    task = load_task(cfg.task)
    kl_coef = float(cfg.task.kl_coef)
    tuner = FineTuner(task, cfg.training, Path(tempfile.mkdtemp()), kl_coef=kl_coef)
    tuner.trainer.remove_callback(PrinterCallback)  # one line per repetition, not one dict per run
    dpo = load_loss(DPO)
    print(f"task {task.name}: {len(task.prompts('confirm'))} confirm prompts, {len(tuner.all_pairs)} pairs, "
          f"pair_fraction {tuner.pair_fraction}; {args.reps} reps x {args.seeds} seeds; alpha {stats.ALPHA}")
    archive_dir = Path(tempfile.mkdtemp())
    called = {"crn": 0, "independent": 0}
    se_sum = 0.0
    started = time.perf_counter()
    for rep in range(args.reps):
        seeds = [args.base_seed + SEED_OFFSET + rep * args.seeds + i for i in range(args.seeds)]
        crn = Archive(archive_dir / f"crn-{rep}.sqlite")
        ind = Archive(archive_dir / f"independent-{rep}.sqlite")
        ids = {}
        for arch in (crn, ind):
            for name, proposer in (("dpo", "reference"), ("dpo_copy", "evolution")):
                row = arch.add(Candidate(name, DPO.read_text(), proposer=proposer), 0)
                arch.finish(row, "scored", fitness=0.0)
                ids[name] = row  # same ids in both archives: rows are added in the same order
        arm_a, arm_b_crn, arm_b_ind = [], [], []
        rep_started, runs = time.perf_counter(), 0
        for seed in seeds:
            a = tuner.run(dpo, seed, split="confirm")
            runs += 2 if rep else 3
            arm_a.append(a.score.fitness)
            for arch in (crn, ind):
                arch.add_evaluation(evaluation(ids["dpo"], seed, a, kl_coef))
            b_crn = tuner.run(dpo, seed, split="confirm") if rep == 0 else a  # identical: checked on rep 0
            if rep == 0 and b_crn.score.per_prompt != a.score.per_prompt:
                raise SystemExit(f"common random numbers broken: seed {seed} gave two different runs of one loss")
            crn.add_evaluation(evaluation(ids["dpo_copy"], seed, b_crn, kl_coef))
            arm_b_crn.append(b_crn.score.fitness)
            b_ind = tuner.run(dpo, OTHER_SEEDS + seed, split="confirm")
            ind.add_evaluation(evaluation(ids["dpo_copy"], seed, b_ind, kl_coef))  # paired with A's i-th seed
            arm_b_ind.append(b_ind.score.fitness)
        print(f"rep {rep:2d} {runs} runs, {(time.perf_counter() - rep_started) / runs:.1f} s per run "
              f"(last: train {a.train_seconds:.1f} s, score {a.score.seconds:.1f} s)")
        for null, arch, arm_b in (("crn", crn, arm_b_crn), ("independent", ind, arm_b_ind)):
            comp = judged(arch, ids, seeds)
            called[null] += comp.verdict in (stats.BEATS, stats.BELOW)
            if null == "independent":
                se_sum += comp.se or 0.0
            print(line(rep, null, comp, arm_a, arm_b), flush=True)
        crn.close()
        ind.close()
    minutes = (time.perf_counter() - started) / 60
    for null, count in called.items():
        rate = count / args.reps
        mc_se = math.sqrt(max(rate * (1 - rate), 0.05 * 0.95) / args.reps)
        print(f"false-positive rate, {null:11s} null: {count}/{args.reps} = {rate:.1%} "
              f"(Monte-Carlo SE ~{mc_se:.1%}; target <= {stats.ALPHA:.0%})")
    print(f"mean SE of the difference (independent null): {se_sum / args.reps:.4f}; {minutes:.1f} min")


if __name__ == "__main__":
    main()
