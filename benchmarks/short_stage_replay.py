"""What the short stage would have saved on a finished run, replayed offline from the stage-agreement log.

    python benchmarks/short_stage_replay.py --log benchmarks/results/cpu-cascade/stage_agreement_addition.log \
        --run RUN_DIR

Reads each row's short-stage score from the log ``benchmarks/stage_agreement.py --run RUN_DIR`` printed, walks the
run's candidates in row order and applies the cascade's rule (``search/fidelity.py``: reject a candidate whose short
score is below the ``--quantile`` of the earlier rows' scores, once ``--min-history`` rows have one; references never),
then prints how many it rejects, the fine-tunes and training seconds those rows spent in the run, and the short
stage's own cost on every candidate (``--short-share`` of the row's full-evaluation seconds, the log's measured
``seconds_share``). A replay: a run that filtered would have bred from other parents, so it is an estimate of the
first-order saving, not of a different search.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from pathlib import Path

import numpy as np

ROW = re.compile(r"^(\d+):(\S+)\s+(\S+)\s+(\S+)\s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--quantile", type=float, default=0.25)
    parser.add_argument("--min-history", type=int, default=5)
    parser.add_argument("--short-share", type=float, default=0.2641,
                        help="a short stage's seconds / a full evaluation's (the log's seconds_share)")
    args = parser.parse_args()
    scores: dict[int, float] = {}
    for line in args.log.read_text().splitlines():
        m = ROW.match(line)
        if m:
            try:
                scores[int(m.group(1))] = float(m.group(4))
            except ValueError:
                scores[int(m.group(1))] = float("nan")
    with sqlite3.connect(args.run / "archive.sqlite") as conn:
        rows = conn.execute("SELECT id, proposer, status, metrics FROM candidates ORDER BY id").fetchall()
        runs = dict(conn.execute("SELECT candidate_id, COUNT(*) FROM evaluations WHERE split='search' "
                                 "GROUP BY candidate_id").fetchall())
    seen: list[float] = []
    total = {"rows": 0, "fine_tunes": 0, "seconds": 0.0}
    rejected = {"rows": 0, "fine_tunes": 0, "seconds": 0.0}
    for row_id, proposer, status, metrics in rows:
        if row_id not in scores:
            continue
        score = scores[row_id]
        seconds = float((json.loads(metrics or "{}").get("seconds") or {}).get("train") or 0.0)
        if proposer != "reference" and status == "scored":
            total["rows"] += 1
            total["fine_tunes"] += runs.get(row_id, 0)
            total["seconds"] += seconds
            if len(seen) >= args.min_history and not score >= float(np.quantile(seen, args.quantile)):
                rejected["rows"] += 1
                rejected["fine_tunes"] += runs.get(row_id, 0)
                rejected["seconds"] += seconds
        if np.isfinite(score):
            seen.append(score)
    added = args.short_share * total["seconds"]
    print(f"candidates {total['rows']} (fine-tunes {total['fine_tunes']}, training {total['seconds']:.0f} s)")
    print(f"rejected {rejected['rows']} ({rejected['rows'] / max(1, total['rows']):.0%}): their fine-tunes "
          f"{rejected['fine_tunes']}, training {rejected['seconds']:.0f} s saved")
    print(f"short stage on every candidate: ~{added:.0f} s added; net {added - rejected['seconds']:+.0f} s "
          f"({(added - rejected['seconds']) / max(1.0, total['seconds']):+.0%} of the candidates' training)")
    per = added / max(1, total["rows"])
    spent = rejected["seconds"] / max(1, rejected["rows"])
    print(f"a rejected candidate spends ~{per:.1f} s (the short stage) against the {spent:.1f} s it cost in the run "
          f"and the {total['seconds'] / max(1, total['rows']):.1f} s of an average full evaluation")


if __name__ == "__main__":
    main()
