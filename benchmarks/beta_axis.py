"""The references with and without the beta axis of the tuning protocol (``training.beta_grid``), on the diagnostic
tier: ``discover --generations 0`` per preset, once with the axis off and once on, then each reference's search
fitness (the ranking half of the search prompts, at the point the tuning half chose), its chosen learning rate and
beta, the fine-tunes its climb cost, and its rank in each arm.

    python benchmarks/beta_axis.py --presets label_noise deterministic --out /tmp/beta-axis

A run directory that already holds an archive is read, not run again. Needs ``discover`` on PATH.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from discopop.archive import Archive

ON = "training.beta_grid=[0.5,1,2]"


def run(preset: str, arm: str, out: Path, workers: int) -> Path:
    run_dir = out / f"{preset}_{arm}"
    if (run_dir / "archive.sqlite").is_file():
        return run_dir
    args = ["discover", "--generations", "0", "--quiet", "task=diagnostic", f"task.preset={preset}",
            f"hydra.run.dir={run_dir}", f"executor.workers={workers}", "wandb.mode=disabled", "selection.max_seeds=1",
            "confirm.seeds=0", *([ON] if arm == "on" else [])]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def references(run_dir: Path) -> dict[str, dict]:
    """name -> fitness, learning rate, beta, the climb's fine-tunes, of each scored reference row."""
    archive = Archive(run_dir / "archive.sqlite", create=False)
    try:
        out = {}
        for r in archive.rows_by_proposer("reference", status="scored"):
            m = r.metrics  # the climb's fine-tunes at the search seed (race seeds not counted), failures included
            table = m.get("beta_sweep")
            runs = sum(map(len, table.values())) if table else len(m.get("lr_sweep", {})) + len(m.get("lr_errors", {}))
            out[r.name] = {"fitness": r.fitness, "lr": m.get("learning_rate"), "beta": m.get("beta"), "runs": runs}
        return out
    finally:
        archive.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["label_noise", "deterministic"])
    parser.add_argument("--out", type=Path, default=Path("beta-axis-runs"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for preset in args.presets:
        arms = {arm: references(run(preset, arm, args.out, args.workers)) for arm in ("off", "on")}
        names = sorted(arms["off"], key=lambda n: -arms["off"][n]["fitness"])
        rank = {arm: {n: i + 1 for i, n in enumerate(sorted(rows, key=lambda n: -rows[n]["fitness"]))}
                for arm, rows in arms.items()}
        print(f"\n## {preset}: search fitness (ranking half) of each reference, beta axis off -> on")
        print(f"{'loss':9} {'off':>8} {'on':>8} {'gain':>8}  {'lr off':>7} {'lr on':>7} {'beta on':>8}  "
              f"{'runs off':>8} {'runs on':>8}  rank off -> on")
        total = {"off": 0, "on": 0}
        for name in names:
            off, on = arms["off"][name], arms["on"].get(name)
            if on is None:
                print(f"{name:9} {off['fitness']:8.4f}  (not scored with the axis on)")
                continue
            total["off"] += off["runs"]
            total["on"] += on["runs"]
            print(f"{name:9} {off['fitness']:8.4f} {on['fitness']:8.4f} {on['fitness'] - off['fitness']:+8.4f}  "
                  f"{off['lr']:7g} {on['lr']:7g} {on['beta'] if on['beta'] is not None else float('nan'):8g}  "
                  f"{off['runs']:8d} {on['runs']:8d}  {rank['off'][name]:2d} -> {rank['on'][name]:2d}")
        print(f"search fine-tunes: {total['off']} off, {total['on']} on ({total['on'] / max(1, total['off']):.2f}x)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
