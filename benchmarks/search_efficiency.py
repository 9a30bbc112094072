"""Does the search find losses the baselines do not have? Independent runs of the default protocol, two arms.

    python benchmarks/search_efficiency.py [--seeds 5] [--generations 50] [--confirm-seeds 5] [--out DIR]
                                           [--arms feedback none] [--no-run] [--curve-every N]
                                           [-- extra hydra overrides]

Per run seed, the references are scored once (``discover --generations 0``) and that run directory is copied
into one run per arm, which then goes on with ``discover --resume``: the arms share the baselines exactly.

- ``feedback``: the default evolution proposer (selection on lower confidence bounds, behaviour cells).
- ``none``: the control arm, ``proposer.history_mode=none``: random operator chains on the references, no
  feedback (best-of-N sampling of the same operators).

The confirmation also re-trains the finalists and baselines on the run's held-out task variants
(``confirm.transfer``, e.g. ``clean`` for a ``label_noise`` diagnostic run); each winner's line says whether it
transfers there, and the summary counts winners that beat the strongest baseline and hold on every variant.

Per run it prints the confirmed winner (the confirmed candidate with the best fresh-seed mean) against the
strongest baseline (``vs_best``, or ``vs_dpo`` when DPO is the strongest) with the shared confirmation
statistics (``stats.describe``: delta, CI, verdict, Holm p); the share of trained children that are behaviour
near-copies of their parent (cosine > 0.999 between the archived gradient fingerprints, measured by the sandboxed
checks at the run's beta; crossovers count their closer parent); the same cosine between the winner and the
baseline it is compared with (a winner above 0.999 is a behaviour near-copy of it); and the best-so-far curve
(best seed-mean search fitness among evolved rows after each generation) of both arms. Everything is read from
the archives (read-only); no loss code runs in this process. ``summary.json`` and ``best_so_far.png`` go to ``--out``.

A full 5 x 50 run takes hours on 2 CPU cores. An interrupted benchmark continues where it stopped when run
again with the same ``--out`` (each run is resumed); ``--no-run`` only analyses the runs already there.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from discopop.archive import ARCHIVE_NAME, Archive
from discopop.fitness import stats
from discopop.fitness.result_store import DEADLINE_MISSED
from discopop.search.confirmation import top_candidates
from discopop.search.history import run_standings

NEAR = 0.999
TRAINED = ("scored", "train_failed", "eval_failed")
# What the machine's load, not the loss, makes fail (the archive keeps only the error text; first match wins): an
# oracle that could not start, a missed oracle deadline, a job past its time limit (a loss that stalls reads the
# same, so that count is an upper bound). A dead worker's text does not say whose fault it was: not counted.
MACHINE = {"oracle start": "failed to start", "oracle deadline": DEADLINE_MISSED, "time limit": "timed out after"}
DISCOVER = "import sys; from discopop.cli.main import discover; sys.exit(discover())"


def discover(args: list[str]) -> None:
    print("  discover " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-c", DISCOVER, "--quiet", *args], check=False)
    if done.returncode != 0:
        raise SystemExit(f"discover failed (exit {done.returncode}): {' '.join(args)}")


def run_arms(out: Path, seed: int, generations: int, confirm_seeds: int, arms: list[str],
             overrides: list[str]) -> dict[str, Path]:
    """The baselines once, then one resumed run per arm (each resumed again if the benchmark is re-run)."""
    base = out / f"seed{seed}" / "baselines"
    if (base / ARCHIVE_NAME).is_file():  # finish what an interrupted benchmark left (a no-op when complete)
        discover(["--resume", str(base), "--generations", "0"])
    else:
        discover(["--generations", "0", f"seed={seed}", "confirm.seeds=0", f"hydra.run.dir={base}", *overrides])
    dirs = {}
    for arm in arms:
        run = out / f"seed{seed}" / arm
        if not (run / ARCHIVE_NAME).is_file():
            shutil.copytree(base, run, ignore=shutil.ignore_patterns(".discopop.lock", "wandb", "*.log"))
        discover(["--resume", str(run), "--generations", str(generations), f"proposer.history_mode={arm}",
                  f"confirm.seeds={confirm_seeds}"])
        dirs[arm] = run
    return dirs


def _unit(vec: Any) -> np.ndarray | None:
    if not isinstance(vec, list) or not vec:
        return None
    arr = np.asarray(vec, dtype=float)
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm > 0 and math.isfinite(norm) else None


def near_copies(archive: Archive) -> tuple[int, int]:
    """(near-copies of a parent, trained children with a fingerprint and a fingerprinted parent)."""
    rows = archive.rows()
    prints = {r.id: _unit((r.metrics.get("checks") or {}).get("fingerprint")) for r in rows}
    near = total = 0
    for r in rows:
        if r.proposer == "reference" or r.status not in TRAINED or prints[r.id] is None:
            continue
        parents = [prints.get(p) for p in r.parent_ids if prints.get(p) is not None]
        if not parents:
            continue
        total += 1
        near += max(float(prints[r.id] @ p) for p in parents if p.shape == prints[r.id].shape) > NEAR
    return near, total


def machine_failure(error: str | None) -> str | None:
    """The kind of machine failure an archived error names (``MACHINE``), None for any other error or none."""
    for kind, mark in MACHINE.items():
        if error and mark in error:
            return kind
    return None


def machine_failures(archive: Archive) -> dict[str, Any]:
    """Evolved rows lost to the machine (never scored: a failed check or search fine-tune) and fine-tunes that
    failed so, per split and kind. An arm run under heavier load loses more of its candidates this way, which
    biases a comparison of arms; the summary prints both arms' counts side by side."""
    rows: dict[str, int] = {}
    for row in archive.rows_not_by_proposer("reference"):
        kind = machine_failure(row.error) if row.status != "scored" else None
        if kind:
            rows[kind] = rows.get(kind, 0) + 1
    runs: dict[str, int] = {}
    for ev in archive.evaluations():
        kind = machine_failure(ev.error)
        if kind:
            runs[f"{ev.split} {kind}"] = runs.get(f"{ev.split} {kind}", 0) + 1
    return {"rows": rows, "rows_total": sum(rows.values()), "fine_tunes": runs}


def cosine_to_reference(archive: Archive, row: Any, name: str | None) -> float | None:
    """Cosine between ``row``'s archived gradient fingerprint and that of the reference called ``name`` (None
    where either has none): how close the winner's training behaviour is to the baseline it is compared with."""
    mine = _unit((row.metrics.get("checks") or {}).get("fingerprint"))
    refs = [r for r in archive.rows() if r.proposer == "reference" and r.name == name]
    theirs = _unit((refs[0].metrics.get("checks") or {}).get("fingerprint")) if refs else None
    if mine is None or theirs is None or mine.shape != theirs.shape:
        return None
    return float(mine @ theirs)


def generations_run(archive: Archive) -> int:
    """The last generation the run reached (a run stopped or not yet extended is shorter than asked)."""
    return archive.last_generation()


def best_so_far(archive: Archive, generations: int) -> tuple[list[float | None], float | None]:
    """Best seed-mean search fitness among evolved rows after each generation 1..G (None past the run's last
    generation, so a shorter run does not look flat); the strongest reference's."""
    rows = archive.scored_rows()
    standing = run_standings(archive, rows)
    curve, best = [], None
    reached = generations_run(archive)
    for g in range(1, generations + 1):
        if g > reached:
            curve.append(None)
            continue
        for r in rows:
            if r.generation == g and r.proposer != "reference" and r.id in standing:
                best = standing[r.id].mean if best is None else max(best, standing[r.id].mean)
        curve.append(best)
    refs = [standing[r.id].mean for r in rows if r.proposer == "reference" and r.id in standing]
    return curve, max(refs) if refs else None


def confirmed_evolved(archive: Archive, top_k: int) -> list:
    """Evolved rows of the run's last confirmation: its ``top_k`` by the search's ranking.

    A run extended after an earlier confirmation keeps that round's verdicts on rows that have since dropped out
    of the top; they belong to another Holm family and must not compete with the last round's.
    """
    return [r for r in top_candidates(archive, top_k)
            if (r.metrics.get("confirmation") or {}).get("vs_dpo") is not None]


def confirm_top_k(run: Path) -> int:
    """``confirm.top_k`` from the run's saved config."""
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    return int(saved["confirm"]["top_k"])


def winner(archive: Archive, top_k: int) -> dict[str, Any] | None:
    """The confirmed candidate with the best fresh-seed mean, and its comparison with the strongest baseline."""
    confirmed = confirmed_evolved(archive, top_k)
    if not confirmed:
        return None
    top = max(confirmed, key=lambda r: (r.metrics["confirmation"].get("mean") or -math.inf, -r.id))
    conf = top.metrics["confirmation"]
    comp = conf.get("vs_best") or conf["vs_dpo"]
    return {"id": top.id, "name": top.name, "mean": conf.get("mean"), "se": conf.get("se"),
            "baseline": comp.get("baseline"), "delta": comp.get("delta"), "verdict": comp.get("verdict"),
            "p_adjusted": comp.get("p_adjusted"), "text": stats.describe(comp), "transfer": transfer_words(top),
            "cosine_to_baseline": cosine_to_reference(archive, top, comp.get("baseline"))}


def transfer_words(row: Any) -> dict[str, str]:
    """Per held-out variant (``confirm.transfer``): transfers / holds / does not transfer / not judged (the
    baseline's runs failed); empty without transfer."""
    return {variant: str(entry.get("transfers")) for variant, entry in (row.metrics.get("transfer") or {}).items()}


def beat_and_hold(winner: dict[str, Any] | None) -> bool:
    """The issue's figure for one run: its winner beats the strongest baseline and transfers or holds on every
    held-out variant it was judged on (``winner``'s ``transfer``, as ``transfer_words`` gives it)."""
    words = set(((winner or {}).get("transfer") or {}).values())
    return bool(winner) and winner.get("verdict") == stats.BEATS and bool(words) and words <= {"transfers", "holds"}


def finalists(archive: Archive, top_k: int) -> list[dict[str, Any]]:
    """Every confirmed evolved finalist against the strongest baseline: delta, its Holm MDE, verdict, and behaviour
    cosine to that baseline (do the finalists differ from it by more than the confirmation can resolve?)."""
    out = []
    for row in confirmed_evolved(archive, top_k):
        comp = row.metrics["confirmation"].get("vs_best") or row.metrics["confirmation"]["vs_dpo"]
        mde = comp.get("mde_family") if comp.get("mde_family") is not None else comp.get("mde")
        out.append({"id": row.id, "name": row.name, "delta": comp.get("delta"), "verdict": comp.get("verdict"),
                    "mde": mde, "baseline": comp.get("baseline"),
                    "cosine_to_baseline": cosine_to_reference(archive, row, comp.get("baseline"))})
    return out


def search_pick(archive: Archive, top_k: int) -> dict[str, Any] | None:
    """The confirmed evolved candidate the run itself ranks first among its finalists (the confirmation's order:
    the search's lower confidence bound, or where the run used them the prompts held out of selection,
    ``selection.pick_holdout``, and the pick seeds, ``selection.pick_seeds``), with its fresh-seed delta against
    the strongest baseline.

    Unlike ``winner`` it is chosen without looking at the fresh seeds, so its delta is unbiased: it is the one
    to average over runs (the best of k fresh-seed means is biased upwards: by 0.85 SE for k = 3 under the null).
    """
    rows = confirmed_evolved(archive, top_k)
    if not rows:
        return None
    pick = rows[0]
    comp = pick.metrics["confirmation"].get("vs_best") or pick.metrics["confirmation"]["vs_dpo"]
    return {"id": pick.id, "name": pick.name, "mean": pick.metrics["confirmation"].get("mean"),
            "delta": comp.get("delta"), "verdict": comp.get("verdict"), "text": stats.describe(comp)}


def analyse(run: Path, generations: int) -> dict[str, Any]:
    archive = Archive(run / ARCHIVE_NAME, create=False)
    try:
        near, total = near_copies(archive)
        curve, strongest = best_so_far(archive, generations)
        evolved = archive.rows_not_by_proposer("reference")
        top_k = confirm_top_k(run)
        return {"run": str(run), "generations": generations_run(archive),
                "winner": winner(archive, top_k), "pick": search_pick(archive, top_k),
                "finalists": finalists(archive, top_k),
                "near_copies": near, "trained_children": total, "machine_failures": machine_failures(archive),
                "best_so_far": curve, "strongest_reference": strongest, "candidates": len(evolved),
                "scored": sum(r.status == "scored" for r in evolved)}
    finally:
        archive.close()


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _fmt_signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _fmt_cos(finalist: dict[str, Any]) -> str:
    value = finalist.get("cosine_to_baseline")
    return "—" if value is None else f"{value:.4f}"


def _fmt_failures(lost: dict[str, Any]) -> str:
    rows = ", ".join(f"{n} {kind}" for kind, n in sorted(lost["rows"].items())) or "none"
    runs = ", ".join(f"{n} {kind}" for kind, n in sorted(lost["fine_tunes"].items())) or "none"
    return f"evolved rows {lost['rows_total']} ({rows}); failed fine-tunes: {runs}"


def curve_marks(generations: int, every: int = 5) -> list[int]:
    """The generations the best-so-far table prints: the first, every ``every``-th and the last (1: all of them)."""
    return sorted({1, *range(every, generations + 1, every), generations})


def report(results: dict[str, dict[int, dict[str, Any]]], generations: int, every: int = 5) -> None:
    arms = list(results)
    print("\nper run: confirmed winner vs the strongest baseline (fresh seeds, confirm prompts)")
    for arm in arms:
        for seed, res in results[arm].items():
            w = res["winner"]
            share = res["near_copies"] / max(res["trained_children"], 1)
            text = f"{w['name']} {_fmt(w['mean'])}: {w['text']}" if w else "no confirmed winner"
            pick = res.get("pick")
            if pick and w and pick["id"] != w["id"]:
                text += f" (the search's pick: {pick['name']}, {pick['text']})"
            if w and w.get("cosine_to_baseline") is not None:
                text += f"; behaviour cosine to {w['baseline']} {w['cosine_to_baseline']:.4f}"
            if w and w.get("transfer"):
                text += "; held out: " + ", ".join(f"{v} {word}" for v, word in w["transfer"].items())
            reached = res.get("generations", generations)
            short = f" (only {reached} generations)" if reached < generations else ""
            print(f"  {arm:<8} seed {seed}{short}: {text}; near-copies {res['near_copies']}/{res['trained_children']} "
                  f"= {share:.0%}; {res['scored']}/{res['candidates']} evolved rows scored")
            lost = res.get("machine_failures")
            if lost:
                print(f"  {'':<8} lost to the machine: {_fmt_failures(lost)}")
            cells = [f"{f['name']} {_fmt_signed(f['delta'])} (MDE {_fmt(f['mde'])}, cos {_fmt_cos(f)})"
                     for f in res.get("finalists") or []]
            if cells:
                print(f"  {'':<8} finalists vs {res['finalists'][0]['baseline']}: " + "; ".join(cells))
    print("\nsummary per arm")
    def complete(arm: str) -> dict[int, dict[str, Any]]:
        """Runs that reached the asked generations: only those are summed up and paired."""
        return {s: r for s, r in results[arm].items() if r.get("generations", generations) >= generations}

    for arm in arms:
        runs = list(complete(arm).values())
        if len(runs) < len(results[arm]):
            print(f"  {arm:<8} ({len(results[arm]) - len(runs)} shorter run(s) left out of this summary)")
        beats = sum(1 for r in runs if r["winner"] and r["winner"]["verdict"] == stats.BEATS)
        transfers = sum(1 for r in runs if beat_and_hold(r["winner"]))
        near = sum(r["near_copies"] for r in runs)
        total = sum(r["trained_children"] for r in runs)
        print(f"  {arm:<8} winner beats the strongest baseline in {beats}/{len(runs)} runs (and holds or transfers "
              f"on every held-out variant in {transfers}); near-copies of the parent {near}/{total} = "
              f"{near / max(total, 1):.0%}")
        lost = [r["machine_failures"]["rows_total"] for r in runs if r.get("machine_failures")]
        if lost:
            print(f"  {'':<8} evolved rows lost to the machine (oracle deadline, start, time limit): {sum(lost)} "
                  f"({', '.join(map(str, lost))} per run) of {sum(r['candidates'] for r in runs)}")
        pooled = stats.pooled_over_runs([r["pick"]["delta"] for r in runs if r.get("pick")])
        if pooled:
            print(f"  {'':<8} the search's pick (its first finalist) vs the strongest baseline, pooled over "
                  f"runs: {pooled.text()}")
    if {"feedback", "none"} <= set(arms):
        fed, blind = complete("feedback"), complete("none")
        picks = [(fed[s].get("pick"), blind[s].get("pick")) for s in sorted(set(fed) & set(blind))]
        pooled = stats.pooled_over_runs([a["mean"] - b["mean"] for a, b in picks if a and b])
        if pooled:
            print(f"  feedback pick - control pick, paired by run seed: {pooled.text()}")
    marks = curve_marks(generations, every)
    print("\nbest-so-far seed-mean search fitness of evolved rows (mean over complete runs); strongest reference last")
    print("  arm      " + " ".join(f"g{g:<5}" for g in marks) + " ref")
    for arm in arms:
        runs = list(complete(arm).values())
        cells = []
        for g in marks:
            values = [r["best_so_far"][g - 1] for r in runs if r["best_so_far"][g - 1] is not None]
            cells.append(f"{np.mean(values):.3f}" if values else "  —  ")
        refs = [r["strongest_reference"] for r in runs if r["strongest_reference"] is not None]
        ref_text = f"{np.mean(refs):.3f}" if refs else "—"
        print(f"  {arm:<8} " + " ".join(f"{c:<6}" for c in cells) + f" {ref_text}")


def plot(results: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for colour, arm in zip(("tab:blue", "tab:orange", "tab:green"), results, strict=False):
        for i, res in enumerate(results[arm].values()):
            xs = [g + 1 for g, v in enumerate(res["best_so_far"]) if v is not None]
            ys = [v for v in res["best_so_far"] if v is not None]
            ax.step(xs, ys, where="post", color=colour, alpha=0.8, label=arm if i == 0 else None)
            if res["strongest_reference"] is not None:
                ax.axhline(res["strongest_reference"], color="grey", lw=0.6, ls=":",
                           label="strongest reference" if arm == next(iter(results)) and i == 0 else None)
    ax.set_xlabel("generation")
    ax.set_ylabel("best seed-mean search fitness so far")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="independent run seeds (first-seed .. first-seed+N-1)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--confirm-seeds", type=int, default=5, help="fresh seeds of each run's confirmation")
    parser.add_argument("--arms", nargs="+", default=["feedback", "none"], choices=["feedback", "none"])
    parser.add_argument("--out", type=Path, default=Path("runs/search_efficiency"))
    parser.add_argument("--no-run", action="store_true", help="only analyse the runs already in --out")
    parser.add_argument("--curve-every", type=int, default=5, help="best-so-far table: every N-th generation")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every run (after --)")
    args = parser.parse_args()
    results: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in args.arms}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        print(f"run seed {seed}", flush=True)
        if args.no_run:
            dirs = {arm: args.out / f"seed{seed}" / arm for arm in args.arms
                    if (args.out / f"seed{seed}" / arm / ARCHIVE_NAME).is_file()}
        else:
            dirs = run_arms(args.out, seed, args.generations, args.confirm_seeds, args.arms, args.overrides)
        for arm, run in dirs.items():
            results[arm][seed] = analyse(run, args.generations)
    report(results, args.generations, max(args.curve_every, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    try:
        plot(results, args.out / "best_so_far.png")
    except ImportError:
        print("(matplotlib not installed: no plot)")
    print(f"\nwrote {args.out / 'summary.json'} and {args.out / 'best_so_far.png'}")


if __name__ == "__main__":
    main()
