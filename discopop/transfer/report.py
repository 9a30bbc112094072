"""What ``discopop evaluate`` writes: a CSV (one row per loss, task and beta) and a self-contained HTML page.

The page holds, per task: score vs beta per loss (mean over fresh seeds, error bars one crossed
standard error), the reward-vs-KL frontier (each loss's points across betas, as in the paper's
IMDb figure), and a table of mean ± SE with the verdicts against DPO and against the strongest
baseline at each beta (``stats.describe`` words, the same as the leaderboard's). Figures use
matplotlib's object API on the Agg canvas (no pyplot state) and are embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import discopop.report.escape as escape
from discopop.transfer.protocol import NOT_RUN, Cell

CSV_NAME = "results.csv"
OWN_BETA_CSV_NAME = "own_beta.csv"  # each loss at its own beta (``protocol.own_beta_cells``), with 2+ betas
HTML_NAME = "report.html"
MARKDOWN_NAME = "results.md"
EDGE_MARK = "†"
_MARK = {"beats": " ▲", "below": " ▼", "within noise of": "", "failed": ""}
CSV_FIELDS = ("task", "beta", "loss", "origin", "code_hash", "learning_rate", "lr_at_edge", "search_fitness",
              "lr_sweep", "lr_errors", "seeds", "fitness_per_seed", "mean", "se", "reward", "kl", "failed",
              "vs_dpo_verdict", "vs_dpo_delta", "vs_dpo_ci_low", "vs_dpo_ci_high", "vs_dpo_p_holm",
              "best_baseline", "vs_best_verdict", "vs_best_delta", "vs_best_ci_low", "vs_best_ci_high",
              "vs_best_p_holm", "vs_dpo_mde", "vs_dpo_equivalence", "vs_best_mde", "vs_best_equivalence",
              "trained_beta", "lr_from", "variant_of", "vs_default_verdict", "vs_default_delta", "vs_default_ci_low",
              "vs_default_ci_high", "vs_default_p_holm", "vs_default_mde", "vs_default_equivalence")


def _num(x: float | None, digits: int = 6) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def tried_rates(c: Cell) -> tuple[float, ...]:
    """The learning rates a cell's search ran, scored or failed, in order: the grid it was tuned on."""
    return tuple(c.sweep.rates())


def rate_at_edge(c: Cell) -> bool:
    """Whether the chosen rate is the lowest or highest of the grid tried: the optimum may lie beyond it.

    A loss compared at an edge rate is not known to be at its own best setting, so the tables mark it
    (a user would widen ``training.lr_grid`` there before trusting the comparison).
    """
    tried = tried_rates(c)
    return c.learning_rate is not None and len(tried) > 1 and (
        math.isclose(c.learning_rate, tried[0]) or math.isclose(c.learning_rate, tried[-1]))


def _verdict_fields(prefix: str, comp: dict[str, Any] | None) -> dict[str, str]:
    comp = comp or {}
    ci = comp.get("ci") or (None, None)
    return {f"{prefix}_verdict": comp.get("verdict", ""), f"{prefix}_delta": _num(comp.get("delta")),
            f"{prefix}_ci_low": _num(ci[0]), f"{prefix}_ci_high": _num(ci[1]),
            f"{prefix}_p_holm": _num(comp.get("p_adjusted"), 4),
            f"{prefix}_mde": _num(comp.get("mde_family") if comp.get("mde_family") is not None else comp.get("mde")),
            f"{prefix}_equivalence": _num(comp.get("equivalence"))}


def csv_rows(cells: Sequence[Cell]) -> list[dict[str, str]]:
    rows = []
    for c in cells:
        summary = c.sweep.summary(tried_rates(c))
        est = c.estimate
        rows.append({
            "task": c.task, "beta": f"{c.beta:g}", "loss": c.loss.name, "origin": c.loss.origin,
            "code_hash": c.loss.hash[:16], "learning_rate": _num(c.learning_rate),
            "lr_at_edge": "yes" if rate_at_edge(c) else "", "search_fitness":
            _num(c.search_fitness), "lr_sweep": json.dumps(summary["lr_sweep"]), "lr_errors":
            json.dumps(summary["lr_errors"]), "seeds": " ".join(map(str, est.get("seeds", []))),
            "fitness_per_seed": " ".join("" if f is None else f"{f:.6g}" for f in est.get("fitness", [])),
            "mean": _num(est.get("mean")), "se": _num(est.get("se")), "reward": _num(est.get("reward")),
            "kl": _num(est.get("kl")), "failed": est.get("failed") or "", "best_baseline": c.best_baseline or "",
            **_verdict_fields("vs_dpo", c.vs_dpo), **_verdict_fields("vs_best", c.vs_best),
            # a run's candidate keeps the beta and rate its run scored it at (``discopop evaluate --run``)
            "trained_beta": f"{c.trained_beta:g}", "lr_from": "run" if c.loss.learning_rate is not None else "grid",
            # ``--constants``: a reference at moved constants against the same reference at its defaults
            "variant_of": c.default_name or "", **_verdict_fields("vs_default", c.vs_default),
        })
    return rows


def write_csv(cells: Sequence[Cell], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({k: escape.csv_cell(v) for k, v in row.items()} for row in csv_rows(cells))
    return path


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with escape.plain_text_figures():  # loss names are labels: never mathtext
        escape.no_mathtext(fig).savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _by_loss(cells: Sequence[Cell]) -> dict[str, list[Cell]]:
    out: dict[str, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: c.beta):
        out.setdefault(c.loss.name, []).append(c)
    return out


def _style(i: int, name: str) -> dict[str, Any]:
    """Distinct colour and marker per loss (11 references outrun the default 10-colour cycle); DPO drawn thicker."""
    return {"color": colormaps["tab20"](i % 20), "marker": "osD^v<>px*h"[i % 11], "ms": 4,
            "lw": 2.2 if name == "dpo" else 1.0}


def score_vs_beta(task: str, cells: Sequence[Cell]) -> Figure:
    """Mean fresh-seed fitness per loss against beta (log axis); a failed beta is a gap, marked x at the bottom."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    lows = [c.estimate["mean"] for c in cells if c.estimate.get("mean") is not None]
    floor = min(lows) if lows else 0.0
    for i, (name, series) in enumerate(_by_loss(cells).items()):
        xs = [c.beta for c in series if c.estimate.get("mean") is not None]
        ys = [c.estimate["mean"] for c in series if c.estimate.get("mean") is not None]
        es = [c.estimate.get("se") or 0.0 for c in series if c.estimate.get("mean") is not None]
        line = ax.errorbar(xs, ys, yerr=es, capsize=2, label=escape.plot_text(name), **_style(i, name))
        failed = [c.beta for c in series if c.estimate.get("failed") not in (None, NOT_RUN)]
        if failed:
            ax.plot(failed, [floor] * len(failed), "x", color=line[0].get_color(), ms=8)
    ax.set_xscale("log")
    return _labelled(fig, ax, "beta", "fitness (confirm prompts, fresh seeds)",
                     f"{task}: score vs beta (x: failed at that beta)")


def _labelled(fig: Figure, ax, xlabel: str, ylabel: str, title: str) -> Figure:
    """Axis labels, title, grid and legend, the same way on both figures."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def frontier(task: str, cells: Sequence[Cell]) -> Figure:
    """Reward against KL(policy || reference): each loss's betas joined, in the style of the paper's IMDb figure."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for i, (name, series) in enumerate(_by_loss(cells).items()):
        pts = [(c.estimate["kl"], c.estimate["reward"], c.beta) for c in series
               if c.estimate.get("kl") is not None and c.estimate.get("reward") is not None]
        if not pts:
            continue
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=escape.plot_text(name), **_style(i, name))
        for kl, reward, beta in pts:
            ax.annotate(f"{beta:g}", (kl, reward), fontsize=6, color=line.get_color(), xytext=(2, 2),
                        textcoords="offset points")
    return _labelled(fig, ax, "KL(policy || reference), sampled, mean over fresh seeds", "reward (confirm prompts)",
                     f"{task}: reward vs KL frontier (labels: beta)")


def _mean_se(est: dict[str, Any]) -> str:
    """A cell's mean, with its crossed SE when it has one (the same text in the HTML and markdown tables)."""
    se = est.get("se")
    return f"{est['mean']:.3f}" + (f" ± {se:.3f}" if se is not None and math.isfinite(se) else "")


def _cell_html(c: Cell) -> str:
    est = c.estimate
    if est.get("failed") == NOT_RUN:
        return '<span class="why">not run yet</span>'
    if est.get("failed"):
        head = f'<span class="fail">failed</span><div class="why">{html.escape(est["failed"][:160])}</div>'
    else:
        head = _mean_se(est)
    edge = " (grid edge)" if rate_at_edge(c) else ""
    lines = [head, f'<div class="why">lr {c.learning_rate:g}{edge}</div>' if c.learning_rate else ""]
    for label, comp in (("DPO", c.vs_dpo), (c.best_baseline or "best", c.vs_best),
                        (f"{c.default_name or 'its'} defaults", c.vs_default)):
        if comp:
            cls = {"beats": "beats", "below": "below"}.get(comp.get("verdict", ""), "within")
            short = comp.get("verdict", "") if comp.get("verdict") != "failed" else "failed"
            delta = f" {comp['delta']:+.3f}" if comp.get("delta") is not None else ""
            lines.append(f'<div class="{cls}" title="{html.escape(comp.get("text", ""))}">'
                         f"{html.escape(short)} {html.escape(label)}{delta}</div>")
    return "".join(lines)


def table(task: str, cells: Sequence[Cell]) -> str:
    betas = sorted({c.beta for c in cells})
    rows = []
    for name, series in _by_loss(cells).items():
        at = {c.beta: c for c in series}
        tds = "".join(f"<td>{_cell_html(at[b])}</td>" if b in at else "<td></td>" for b in betas)
        rows.append(f"<tr><th>{html.escape(name)}</th>{tds}</tr>")
    head = "".join(f"<th>β = {b:g}</th>" for b in betas)
    return f"<table><tr><th>loss</th>{head}</tr>{''.join(rows)}</table>"


def own_beta_table(cells: Sequence[Cell]) -> str:
    """Each loss at its own beta (chosen on the search prompts), judged against DPO and the strongest at theirs."""
    rows = "".join(f"<tr><th>{html.escape(c.loss.name)}</th><td>{c.beta:g}</td><td>{_cell_html(c)}</td></tr>"
                   for c in cells)
    return f"<table><tr><th>loss</th><th>own β</th><th>result</th></tr>{rows}</table>"


OWN_BETA_NOTE = ("Each loss at its own β: the β (with its rate) whose search-prompt score was best, chosen on the run "
                 "seed as the rate is, then judged on the same fresh seeds against DPO and the strongest baseline "
                 "each at their own β; Holm over these comparisons per task.")


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}.why{color:#777;font-size:11px}
.beats{color:#070}.below{color:#b00}.within{color:#555}.fail{color:#b00;font-weight:bold}img{max-width:100%}"""


def write_html(cells: Sequence[Cell], path: Path, facts: dict[str, Any], own_beta: Sequence[Cell] = ()) -> Path:
    """The self-contained page (figures embedded); ``facts`` (grid, seeds, command) are listed at the top;
    ``own_beta``: each loss at its own beta, a table per task after the per-beta one."""
    parts = ["<!doctype html><meta charset='utf-8'><title>discopop evaluate</title>", f"<style>{_STYLE}</style>",
             "<h1>Loss transfer and beta sweep</h1>", "<ul>"]
    parts += [f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in facts.items()]
    parts.append("</ul><p>Each loss is trained at every learning rate of the grid with the run seed (and any "
                 "further tuning seeds, whose mean decides) and scored on the search prompts; the best rate is "
                 "re-trained on fresh seeds and scored on the confirm prompts. "
                 "Mean ± crossed SE over (seed, prompt); verdicts are paired per (seed, prompt), Holm-corrected over "
                 "all comparisons at one (task, beta). Hover a verdict for its delta, interval and adjusted p.</p>")
    for task in dict.fromkeys(c.task for c in cells):
        mine = [c for c in cells if c.task == task]
        parts.append(f"<h2>{html.escape(task)}</h2>")
        for fig in (score_vs_beta(task, mine), frontier(task, mine)):
            parts.append(f'<img src="data:image/png;base64,{_png(fig)}" alt="{html.escape(task)} figure">')
        parts.append(table(task, mine))
        own = [c for c in own_beta if c.task == task]
        if own:
            parts += [f"<h3>{html.escape(task)}: each loss at its own β</h3>", f"<p>{html.escape(OWN_BETA_NOTE)}</p>",
                      own_beta_table(own)]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _md_cell(c: Cell) -> str:
    est = c.estimate
    if est.get("failed") == NOT_RUN:
        return "not run"
    if est.get("failed"):
        return "failed"
    rate = f" ({c.learning_rate:g}{EDGE_MARK if rate_at_edge(c) else ''})" if c.learning_rate else ""
    return _mean_se(est) + _MARK.get((c.vs_dpo or {}).get("verdict", ""), "") + rate


def write_markdown(cells: Sequence[Cell], path: Path, own_beta: Sequence[Cell] = ()) -> Path:
    """Per task, losses x betas: fresh-seed mean ± SE, ▲/▼ where Holm-significantly above/below DPO, (rate); then,
    with ``own_beta``, each loss at its own beta."""
    parts = []
    for task in dict.fromkeys(c.task for c in cells):
        mine = [c for c in cells if c.task == task]
        betas = sorted({c.beta for c in mine})
        parts += [f"**{escape.markdown_cell(task)}**", "", "| loss | " + " | ".join(f"β = {b:g}" for b in betas) + " |",
                  "| --- |" + " --- |" * len(betas)]
        for name, series in _by_loss(mine).items():
            at = {c.beta: c for c in series}
            cells_md = " | ".join(_md_cell(at[b]) if b in at else "" for b in betas)
            parts.append(f"| {escape.markdown_cell(name)} | {cells_md} |")
        parts.append("")
        own = [c for c in own_beta if c.task == task]
        if own:
            parts += [f"**{escape.markdown_cell(task)}: each loss at its own β**", "", "| loss | own β | result |",
                      "| --- | --- | --- |"]
            parts += [f"| {escape.markdown_cell(c.loss.name)} | {c.beta:g} | {_md_cell(c)} |" for c in own]
            parts += ["", OWN_BETA_NOTE, ""]
    parts.append(f"▲/▼: Holm-significantly above/below DPO at that β. (rate): the learning rate chosen on the search "
                 f"prompts; {EDGE_MARK}: it is the grid's lowest or highest point, so the loss's best rate may lie "
                 "beyond the grid.")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
