"""An evaluate results.csv as the docs/results.md §0 table, then each loss's search fitness per rate (and, from
``--constants``, each variant against its defaults).

    python lrgrid-table.py results.csv
"""

import csv
import json
import sys


def num(row: dict, key: str, spec: str = ".3f") -> str:
    return format(float(row[key]), spec)


def main(path: str) -> None:
    rows = list(csv.DictReader(open(path)))
    print("| loss | β | rate (grid edge †) | score | KL | fitness ± SE (n) | Δ vs DPO [95% CI] | verdict (Holm) "
          "| MDE |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if not r["mean"]:
            print(f"| {r['loss']} | {r['beta']} | not finished | | | | | | |")
            continue
        edge = "†" if r["lr_at_edge"] == "yes" else ""
        d = v = m = "—"
        if r["vs_dpo_verdict"]:
            d = (f"{num(r, 'vs_dpo_delta', '+.3f')} [{num(r, 'vs_dpo_ci_low', '+.3f')}, "
                 f"{num(r, 'vs_dpo_ci_high', '+.3f')}]")
            v = f"{r['vs_dpo_verdict']} (p {num(r, 'vs_dpo_p_holm', '.2g')})"
            m = num(r, "vs_dpo_mde")
        print(f"| {r['loss']} | {r['beta']} | {float(r['learning_rate']):g}{edge} | {num(r, 'reward')} | "
              f"{num(r, 'kl')} | {num(r, 'mean')} ± {num(r, 'se')} ({len(r['seeds'].split())}) | {d} | {v} | {m} |")
    print("\nsearch fitness per rate (seed 0, search prompts; bold: the chosen rate):\n")
    sweeps = {r["loss"]: {float(k): x for k, x in json.loads(r["lr_sweep"] or "{}").items()} for r in rows}
    rates = sorted({lr for sw in sweeps.values() for lr in sw})
    print("| loss | " + " | ".join(f"{lr:g}" for lr in rates) + " |")
    print("| --- |" + " --- |" * len(rates))
    for name, sw in sweeps.items():
        best = max(sw.values()) if sw else None
        cells = [(f"**{sw[lr]:.3f}**" if sw[lr] == best else f"{sw[lr]:.3f}") if lr in sw else "" for lr in rates]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for r in rows:
        if r.get("best_baseline") and r["vs_best_verdict"]:
            print(f"{r['loss']}: against the strongest other reference {r['best_baseline']}: {r['vs_best_verdict']} "
                  f"{num(r, 'vs_best_delta', '+.3f')} [{num(r, 'vs_best_ci_low', '+.3f')}, "
                  f"{num(r, 'vs_best_ci_high', '+.3f')}], Holm p {num(r, 'vs_best_p_holm', '.2g')}")
    variants = [r for r in rows if r.get("variant_of") and r.get("vs_default_verdict")]
    if variants:  # ``--constants``: each reference at a moved constant against the same reference at its defaults
        print("\n| variant | of | rate (grid edge †) | fitness ± SE (n) | Δ vs its defaults [95% CI] | verdict (Holm) "
              "| MDE | verdict vs DPO |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in variants:
            edge = "†" if r["lr_at_edge"] == "yes" else ""
            d = (f"{num(r, 'vs_default_delta', '+.3f')} [{num(r, 'vs_default_ci_low', '+.3f')}, "
                 f"{num(r, 'vs_default_ci_high', '+.3f')}]")
            v = f"{r['vs_default_verdict']} (p {num(r, 'vs_default_p_holm', '.2g')})"
            dpo = f"{r['vs_dpo_verdict']} (p {num(r, 'vs_dpo_p_holm', '.2g')})" if r["vs_dpo_verdict"] else "—"
            print(f"| {r['loss']} | {r['variant_of']} | {float(r['learning_rate']):g}{edge} | {num(r, 'mean')} ± "
                  f"{num(r, 'se')} ({len(r['seeds'].split())}) | {d} | {v} | {num(r, 'vs_default_mde')} | {dpo} |")


if __name__ == "__main__":
    main(sys.argv[1])
