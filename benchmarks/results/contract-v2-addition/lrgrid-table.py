"""Format an evaluate results.csv as the §0 table (loss, β, rate†, score, KL, fitness ± SE, Δ vs DPO, verdict, MDE)."""
import csv
import json
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
print("| loss | β | rate (grid edge †) | score | KL | fitness ± SE (n) | Δ vs DPO [95% CI] | verdict (Holm) | MDE |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    n = len(r["seeds"].split())
    edge = "†" if r["lr_at_edge"] == "yes" else ""
    if not r["mean"]:
        print(f"| {r['loss']} | {r['beta']} | not finished | | | | | | |")
        continue
    f = lambda k: f"{float(r[k]):.3f}"  # noqa: E731
    if r["vs_dpo_verdict"]:
        d = (f"{float(r['vs_dpo_delta']):+.3f} [{float(r['vs_dpo_ci_low']):+.3f}, {float(r['vs_dpo_ci_high']):+.3f}]")
        v = f"{r['vs_dpo_verdict']} (p {float(r['vs_dpo_p_holm']):.2g})"
        m = f"{float(r['vs_dpo_mde']):.3f}"
    else:
        d = v = m = "—"
    print(f"| {r['loss']} | {r['beta']} | {float(r['learning_rate']):g}{edge} | {f('reward')} | {f('kl')} | "
          f"{f('mean')} ± {f('se')} ({n}) | {d} | {v} | {m} |")
print()
print("search fitness per rate (seed 0, search prompts):")
print()
rates = sorted({float(k) for r in rows for k in json.loads(r["lr_sweep"] or "{}")})
print("| loss | " + " | ".join(f"{x:g}" for x in rates) + " |")
print("| --- |" + " --- |" * len(rates))
for r in rows:
    sw = {float(k): v for k, v in json.loads(r["lr_sweep"] or "{}").items()}
    best = max(sw.values()) if sw else None
    cells = [("**%.3f**" % sw[x] if sw[x] == best else "%.3f" % sw[x]) if x in sw else "" for x in rates]
    print(f"| {r['loss']} | " + " | ".join(cells) + " |")
for r in rows:
    if r.get("best_baseline"):
        print(f"\n{r['loss']}: strongest other reference {r['best_baseline']}, {r['vs_best_verdict']} "
              f"{float(r['vs_best_delta']):+.3f} [{float(r['vs_best_ci_low']):+.3f}, {float(r['vs_best_ci_high']):+.3f}]"
              f" p {float(r['vs_best_p_holm']):.2g}" if r["vs_best_verdict"] else "", end="")
print()
