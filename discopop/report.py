"""Review a run: the views behind ``discopop report RUN_DIR`` and ``notebooks/lineage.ipynb``.

Everything here reads ``RUN_DIR/archive.sqlite`` *read-only* through the archive contract
(docs/DESIGN.md), so a report can be drawn while the loop is still writing, from a copied run
directory, or by a tool that knows nothing else about discopop. Each view is a small function
``rows -> View``; a view that has nothing to draw carries a note instead of an empty plot.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot state, so the
notebook's inline backend is left alone) and use the Okabe-Ito colour-blind-safe palette.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
import math
import re
import sqlite3
import textwrap
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from discopop import stats
from discopop.archive import ARCHIVE_NAME, ArchiveError, Row
from discopop.diagnostics import summarize, wrong_way

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}  # fmt: skip
GREY = "#8C8C8C"
STATUS_COLOURS = {
    "scored": OKABE_ITO["green"], "invalid": OKABE_ITO["vermillion"], "duplicate": GREY,
    "train_failed": OKABE_ITO["orange"], "eval_failed": OKABE_ITO["purple"], "proposed": OKABE_ITO["sky"],
}  # fmt: skip
BASELINE_STYLE = {"dpo": (OKABE_ITO["black"], "--"), "lrml": (OKABE_ITO["purple"], "-.")}
SERIES_COLOURS = [OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "sky", "yellow")]
FAILED = ("invalid", "duplicate", "train_failed", "eval_failed")
FITNESS_LABEL = "fitness (held-out reward)"
CMAP = "viridis"  # perceptually uniform and colour-blind safe
DPI = 100
TOP_TABLE = 25  # leaderboard rows shown; the rest are in the archive
TOP_SHAPES = 3  # evolved candidates drawn next to DPO and LRML
MAX_DIFFS = 12  # parent->child diffs along the winner's ancestry (the ones nearest the winner)
EMPTY_NOTE = "The archive has no candidates yet."


@dataclass
class View:
    """One section of the report: a figure, some HTML (tables, diffs), or a note saying why neither."""

    id: str
    title: str
    about: str
    figure: Figure | None = None
    html: str = ""
    note: str | None = None
    captions: list[str] = field(default_factory=list)

    def png_base64(self) -> str | None:
        """The figure as base64 PNG (what the HTML report embeds), or None without a figure."""
        if self.figure is None:
            return None
        return base64.b64encode(_png_bytes(self.figure)).decode("ascii")

    def _repr_html_(self) -> str:
        parts = [f"<h3>{html.escape(self.title)}</h3>"]
        if self.note:
            parts.append(f"<p><em>{html.escape(self.note)}</em></p>")
        parts.append(self.html)
        if self.figure is not None:
            parts.append(f'<img src="data:image/png;base64,{self.png_base64()}" alt="{html.escape(self.title)}">')
        parts += [f"<p><small>{html.escape(c)}</small></p>" for c in self.captions]
        return "\n".join(parts)


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _figure(width: float = 9.0, height: float = 5.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# Reading the run (only the archive contract)
# ---------------------------------------------------------------------------------------------


def _json(text: Any, default: Any) -> Any:
    try:
        value = json.loads(text) if text else default
    except (TypeError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


def _ids(values: Iterable[Any]) -> list[int]:
    out = []
    for v in values:
        try:
            out.append(int(v))
        except (TypeError, ValueError):
            continue
    return out


def load_rows(run_dir: Path | str) -> list[Row]:
    """All candidate rows of a run, read through a read-only SQLite connection.

    Read-only so that a report never takes a write lock on (or migrates) the archive of a live run.
    """
    path = Path(run_dir) / ARCHIVE_NAME
    if not path.is_file():
        raise ArchiveError(f"no archive at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            records = [dict(r) for r in conn.execute("SELECT * FROM candidates ORDER BY id")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise ArchiveError(f"cannot read archive {path}: {err}") from None
    rows = []
    for d in records:
        d["parent_ids"] = _ids(_json(d.get("parent_ids"), []))
        d["metrics"] = _json(d.get("metrics"), {})
        rows.append(Row(**{k: d.get(k) for k in Row.__dataclass_fields__}))
    return rows


def _num(value: Any) -> float | None:
    """A finite float, or None (metrics are JSON written by other code: trust nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def scored(rows: list[Row]) -> list[Row]:
    """Rows with a usable fitness, best first."""
    good = [r for r in rows if r.status == "scored" and _num(r.fitness) is not None]
    return sorted(good, key=lambda r: (-r.fitness, r.id))


def baseline(rows: list[Row], name: str) -> Row | None:
    """The scored reference row called ``name`` (``dpo``, ``lrml``...), if the run has one."""
    for r in scored(rows):
        if r.proposer == "reference" and r.name.lower() == name:
            return r
    return None


def winner(rows: list[Row]) -> Row | None:
    """The best discovered candidate (a baseline only when nothing evolved was scored).

    Baselines are drawn as reference lines everywhere; the winner is what the search found.
    """
    ranked = scored(rows)
    evolved = [r for r in ranked if r.proposer != "reference"]
    return (evolved or ranked or [None])[0]


def lineage_graph(rows: list[Row]) -> nx.DiGraph:
    """Parent -> child graph over all rows (edges to ids not in the archive are dropped)."""
    graph = nx.DiGraph()
    for r in rows:
        graph.add_node(r.id, row=r)
    for r in rows:
        graph.add_edges_from((p, r.id) for p in r.parent_ids if p in graph and p != r.id)
    return graph


def ancestry(rows: list[Row], row_id: int) -> set[int]:
    """``row_id`` and every candidate it descends from."""
    graph = lineage_graph(rows)
    return nx.ancestors(graph, row_id) | {row_id} if row_id in graph else set()


def _confirmation(row: Row) -> dict[str, Any]:
    conf = row.metrics.get("confirmation")
    return conf if isinstance(conf, dict) else {}


def _seconds(row: Row) -> dict[str, float]:
    raw = row.metrics.get("seconds")
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in ((k, _num(v)) for k, v in raw.items()) if v is not None and v >= 0}


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:.{digits}f}"


def _signed(value: Any) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:+.3f}"


def _short(text: str, width: int) -> str:
    """Cut to ``width`` characters (names are often one long identifier, which textwrap would drop whole)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _label(row: Row, width: int = 28) -> str:
    return f"#{row.id} {_short(row.name, width)}"


# ---------------------------------------------------------------------------------------------
# Leaderboard
# ---------------------------------------------------------------------------------------------


def _diagnostics(row: Row) -> dict[str, Any] | None:
    return (row.metrics.get("checks") or {}).get("diagnostics")


def behaviour(row: Row) -> str:
    """How the loss pushes, for a table cell: where it pushes the wrong way (a fact, never a failure)."""
    diag = _diagnostics(row)
    if not diag:
        return "—"
    pushes = wrong_way(diag)
    text = "; ".join(pushes) if pushes else "never the wrong way (|β·ρ| ≤ 3)"
    return text if diag.get("uses_beta", True) else f"ignores beta; {text}"


def leaderboard(rows: list[Row], top: int = TOP_TABLE) -> list[dict[str, str]]:
    """Table records for the best ``top`` scored rows (reference baselines included, marked).

    The confirmation columns are ``stats.confirmation_cells``: the same words as ``discopop leaderboard``.
    """
    records = []
    for rank, r in enumerate(scored(rows)[:top], start=1):
        fresh, vs_dpo, vs_best = stats.confirmation_cells(_confirmation(r) or None)
        is_dpo = r.proposer == "reference" and r.name.lower() == "dpo"
        records.append({
            "rank": str(rank), "id": str(r.id), "name": r.name, "gen": str(r.generation), "proposer": r.proposer,
            "fitness": _fmt(r.fitness), "reward": _fmt(r.metrics.get("reward")), "KL (nats)": _fmt(r.metrics.get("kl")),
            "fresh seeds (mean ± SE)": fresh or "—", "vs DPO": "baseline" if is_dpo else (vs_dpo or "—"),
            "vs best baseline": vs_best or "—", "behaviour (checks)": behaviour(r),
        })  # fmt: skip
    return records


def _table(records: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in records[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in rec.values()) + "</tr>" for rec in records
    )
    return f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summary(rows: list[Row]) -> str:
    """One line: how many candidates, their fates, the generations, the winner."""
    if not rows:
        return EMPTY_NOTE
    counts = Counter(r.status for r in rows)
    fates = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    gens = sorted({r.generation for r in rows})
    best = winner(rows)
    best_text = f"best discovered: {_label(best, 40)} (fitness {_fmt(best.fitness)})" if best else "nothing scored"
    return f"{len(rows)} candidates ({fates}) over generations {gens[0]}–{gens[-1]}; {best_text}."


def _confirmation_figure(rows: list[Row]) -> Figure | None:
    confirmed = [r for r in scored(rows) if _num(_confirmation(r).get("mean")) is not None]
    if not confirmed:
        return None
    fig = _figure(9, max(3.0, 1.2 + 0.45 * len(confirmed)))
    ax = fig.add_subplot()
    dpo_conf = next((_confirmation(r) for r in confirmed if r.proposer == "reference" and r.name == "dpo"), {})
    dpo_mean, dpo_se = _num(dpo_conf.get("mean")), _num(dpo_conf.get("se"))
    if dpo_mean is not None:
        ax.axvline(dpo_mean, color=OKABE_ITO["black"], ls="--", lw=1.2, label=f"DPO mean ({dpo_mean:.3f})")
        if dpo_se:
            ax.axvspan(dpo_mean - dpo_se, dpo_mean + dpo_se, color=GREY, alpha=0.2, label="DPO ± 1 SE")
    for y, r in enumerate(reversed(confirmed)):
        conf = _confirmation(r)
        verdict = (conf.get("vs_dpo") or {}).get("verdict")
        colour = {stats.BEATS: OKABE_ITO["green"], stats.FAILED: OKABE_ITO["vermillion"]}.get(verdict,
                                                                                            OKABE_ITO["blue"])
        seeds = [f for f in (_num(x) for x in conf.get("fitness", []) or []) if f is not None]
        ax.scatter(seeds, [y - 0.2] * len(seeds), s=14, color=GREY, zorder=2)
        ax.errorbar(conf["mean"], y, xerr=_num(conf.get("se")) or 0, fmt="o", color=colour, capsize=4, zorder=3)
    ax.set_yticks(range(len(confirmed)), [_label(r) for r in reversed(confirmed)])
    ax.set_ylim(-0.7, len(confirmed) - 0.3)
    ax.set_xlabel(f"{FITNESS_LABEL} on fresh seeds: mean ± SE (seeds and prompts)")
    ax.set_title("Fresh-seed confirmation of the top candidates")
    ax.legend(handles=ax.get_legend_handles_labels()[0] + [
        Line2D([], [], marker="o", ls="", color=OKABE_ITO["green"], label="beats DPO (paired, Holm-corrected)"),
        Line2D([], [], marker="o", ls="", color=OKABE_ITO["blue"], label="within noise / below / baseline"),
        Line2D([], [], marker="o", ls="", color=OKABE_ITO["vermillion"], label="confirmation failed"),
        Line2D([], [], marker="o", ls="", color=GREY, markersize=4, label="fitness on one fresh seed"),
    ], loc="best", fontsize=8)
    return fig


def leaderboard_view(rows: list[Row]) -> View:
    about = ("Scored candidates ranked by search fitness (baselines are rows with proposer 'reference'). "
             "Where the loop re-scored a candidate on fresh seeds, its mean ± SE is shown with its paired "
             "comparison to DPO and to the strongest baseline: the gain, its 95% CI over seeds and prompts, and "
             "the verdict after a Holm correction over all of the confirmation's comparisons.")
    view = View("leaderboard", "Leaderboard", about)
    if not rows:
        view.note = EMPTY_NOTE
        return view
    records = leaderboard(rows)
    if not records:
        view.note = "No candidate was scored: every proposal failed (see the failures section)."
        return view
    view.html = _table(records)
    view.figure = _confirmation_figure(rows)
    if view.figure is None:
        view.captions.append("No candidate has a fresh-seed confirmation yet (the loop adds it at the end of a run).")
    return view


# ---------------------------------------------------------------------------------------------
# Fitness over generations
# ---------------------------------------------------------------------------------------------


def _spread(gens: list[int], seed: int = 0) -> np.ndarray:
    """Generations jittered sideways (fixed seed) where several points share one, so none hide."""
    counts = Counter(gens)
    noise = np.random.default_rng(seed).uniform(-0.18, 0.18, len(gens))
    return np.array([g + (n if counts[g] > 1 else 0.0) for g, n in zip(gens, noise, strict=True)])


def _best_so_far(rows: list[Row]) -> tuple[list[int], list[float]]:
    ranked = scored(rows)
    gens, best = [], []
    for g in sorted({r.generation for r in rows}):
        seen = [r.fitness for r in ranked if r.generation <= g]
        if seen:
            gens.append(g)
            best.append(max(seen))
    return gens, best


def fitness_view(rows: list[Row]) -> View:
    about = ("Each dot is one scored candidate at its generation (jittered sideways); the step line is the best "
             "fitness found so far, the horizontal lines are the DPO and LRML baselines of this run. Grey crosses "
             "on the bottom edge are candidates that failed before scoring.")
    view = View("fitness", "Fitness over generations", about)
    ranked = scored(rows)
    if not ranked:
        view.note = EMPTY_NOTE if not rows else "No candidate was scored, so there is no fitness to plot."
        return view
    fig = _figure(10, 5.2)
    ax = fig.add_subplot()
    by_proposer: dict[str, list[Row]] = defaultdict(list)
    for r in ranked:
        by_proposer[r.proposer or "?"].append(r)
    colours = iter(SERIES_COLOURS)
    for proposer, group in sorted(by_proposer.items()):
        xs = _spread([r.generation for r in group], len(proposer))
        is_ref = proposer == "reference"
        ax.scatter(xs, [r.fitness for r in group], s=40 if is_ref else 30, marker="s" if is_ref else "o",
                   color=OKABE_ITO["black"] if is_ref else next(colours, GREY), alpha=0.85, zorder=3,
                   label=f"{proposer} ({len(group)})")
    gens, best = _best_so_far(rows)
    last = max(r.generation for r in rows) + 0.5  # carry the best to the right edge (visible with one point)
    ax.step([*gens, last], [*best, best[-1]], where="post", color=OKABE_ITO["vermillion"], lw=2, zorder=4,
            label="best so far")
    for name, (colour, style) in BASELINE_STYLE.items():
        row = baseline(rows, name)
        if row is not None:
            ax.axhline(row.fitness, color=colour, ls=style, lw=1.3,
                       label=f"{name.upper()} baseline ({row.fitness:.3f})")
        else:
            view.captions.append(f"No scored {name.upper()} baseline in this run.")
    failed = [r for r in rows if r.status in FAILED]
    if failed:
        xs = _spread([r.generation for r in failed], 1)
        ax.scatter(xs, np.full(len(failed), 0.03), transform=ax.get_xaxis_transform(), marker="x", color=GREY,
                   s=25, zorder=2, label=f"failed / duplicate ({len(failed)})")
    all_gens = [r.generation for r in rows]
    ax.set_xlim(min(all_gens) - 0.6, max(all_gens) + 0.6)
    _generation_ticks(ax, all_gens)
    ax.margins(y=0.15)  # room for the failure crosses on the bottom edge
    ax.set_xlabel("generation")
    ax.set_ylabel(FITNESS_LABEL)
    ax.set_title("Fitness of each candidate over generations")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    view.figure = fig
    return view


# ---------------------------------------------------------------------------------------------
# Lineage
# ---------------------------------------------------------------------------------------------


def _layered_positions(rows: list[Row], graph: nx.DiGraph) -> dict[int, tuple[float, float]]:
    """x = generation; y = the lane of the candidate's first parent, so each family reads as one row.

    With one candidate per generation a per-generation layout would put every child on the same
    line; inheriting the parent's lane instead shows which baseline each idea descends from.
    Roots (no archived parent) get lanes of their own; collisions in a generation are nudged apart.
    """
    pos: dict[int, tuple[float, float]] = {}
    by_gen: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        by_gen[r.generation].append(r)
    roots = [r for r in sorted(rows, key=lambda r: (r.generation, r.id))
             if not any(p in graph for p in graph.predecessors(r.id))]
    lane = {r.id: (len(roots) - 1) / 2 - i for i, r in enumerate(roots)}
    for gen in sorted(by_gen):
        taken: set[float] = set()
        for r in sorted(by_gen[gen], key=lambda r: r.id):
            parents = [p for p in sorted(graph.predecessors(r.id)) if p in pos]
            y = pos[parents[0]][1] if parents else lane.get(r.id, 0.0)
            step = 0
            while round(y, 3) in taken:
                step += 1
                y += 0.3 * step * (1 if step % 2 else -1)
            taken.add(round(y, 3))
            pos[r.id] = (float(gen), y)
    return pos


def _generation_ticks(ax, gens: list[int]) -> None:
    """Integer generation ticks (every one while they fit)."""
    lo, hi = min(gens), max(gens)
    if hi - lo <= 25:
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _lineage_legend(fig: Figure, has: dict[str, bool]) -> None:
    handles = [
        ("scored", Line2D([], [], marker="o", ls="", color=SERIES_COLOURS[0], label="scored (colour = fitness)")),
        ("reference", Line2D([], [], marker="s", ls="", color=SERIES_COLOURS[0], label="reference baseline")),
        ("failed", Line2D([], [], marker="x", ls="", color=GREY, label="failed (invalid / train / eval)")),
        ("duplicate", Line2D([], [], marker="o", ls="", mfc="none", color=GREY, label="duplicate")),
        ("proposed", Line2D([], [], marker="D", ls="", mfc="none", color=OKABE_ITO["sky"], label="in flight")),
        ("ancestry", Line2D([], [], lw=2.5, color=OKABE_ITO["vermillion"], label="winner's ancestry")),
    ]
    shown = [h for k, h in handles if has.get(k)]
    fig.legend(handles=shown, loc="outside lower center", ncol=min(len(shown), 6), fontsize=8, frameon=False)


def lineage_view(rows: list[Row]) -> View:
    about = ("Who descends from whom: one node per candidate, columns are generations, arrows go from parent to "
             "child. Scored nodes are coloured by fitness; failures are grey crosses, duplicates hollow circles. "
             "The winner and its ancestry are outlined and linked in vermillion.")
    view = View("lineage", "Lineage", about)
    if not rows:
        view.note = EMPTY_NOTE
        return view
    graph = lineage_graph(rows)
    pos = _layered_positions(rows, graph)
    best = winner(rows)
    line = ancestry(rows, best.id) if best else set()
    per_gen = Counter(r.generation for r in rows)
    fig = _figure(min(16, 5 + 1.3 * len(per_gen)), min(14, 3.5 + 0.4 * max(per_gen.values())))
    ax = fig.add_subplot()
    hot = [(u, v) for u, v in graph.edges if u in line and v in line]
    cold = [e for e in graph.edges if e not in set(hot)]
    for edges, colour, width in ((cold, "#BBBBBB", 0.9), (hot, OKABE_ITO["vermillion"], 2.5)):
        if edges:
            nx.draw_networkx_edges(graph, pos, edgelist=edges, ax=ax, edge_color=colour, width=width,
                                   arrows=True, arrowsize=10, node_size=160)
    present = _draw_nodes(ax, rows, pos)
    if line:
        ax.scatter([pos[i][0] for i in line], [pos[i][1] for i in line], s=330, facecolors="none",
                   edgecolors=OKABE_ITO["vermillion"], linewidths=2.2, zorder=4)
    _label_nodes(ax, rows, pos, line, best)
    if present.get("scored") is not None:
        fig.colorbar(present["scored"], ax=ax, label=FITNESS_LABEL, shrink=0.8)
    _generation_ticks(ax, list(per_gen))
    ax.margins(y=0.12)
    ax.set_xlim(min(per_gen) - 0.5, max(per_gen) + 0.7)
    ax.set_yticks([])
    ax.tick_params(axis="x", bottom=True, labelbottom=True)  # networkx switches tick labels off
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("generation")
    ax.set_title("Lineage of all candidates" + (f" — winner {_label(best, 40)}" if best else ""))
    _lineage_legend(fig, {**{k: v is not None for k, v in present.items()}, "ancestry": bool(line)})
    view.figure = fig
    if best is None:
        view.captions.append("No candidate was scored, so there is no winner to highlight.")
    return view


_NODE_STYLES = {
    "failed": dict(marker="x", color=GREY, s=70, linewidths=1.8),
    "duplicate": dict(marker="o", facecolors="none", edgecolors=GREY, s=130, linewidths=1.5),
    "proposed": dict(marker="D", facecolors="none", edgecolors=OKABE_ITO["sky"], s=90, linewidths=1.5),
}


def _draw_nodes(ax, rows: list[Row], pos: dict) -> dict[str, Any]:
    """Scatter every kind of node; returns each kind drawn (the scored one is the colorbar's mappable)."""
    good = scored(rows)
    fits = [r.fitness for r in good]
    vmin, vmax = (min(fits), max(fits)) if fits else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        pad = max(abs(vmin) * 0.05, 0.01)
        vmin, vmax = vmin - pad, vmax + pad
    groups = {
        "scored": [r for r in good if r.proposer != "reference"],
        "reference": [r for r in good if r.proposer == "reference"],
        "failed": [r for r in rows if r.status in ("invalid", "train_failed", "eval_failed")],
        "duplicate": [r for r in rows if r.status == "duplicate"],
        "proposed": [r for r in rows if r.status == "proposed"],
    }
    drawn: dict[str, Any] = {}
    for kind, group in groups.items():
        if not group:
            continue
        xs, ys = [pos[r.id][0] for r in group], [pos[r.id][1] for r in group]
        if kind in ("scored", "reference"):
            style = dict(marker="o" if kind == "scored" else "s", c=[r.fitness for r in group], cmap=CMAP,
                         vmin=vmin, vmax=vmax, s=160, edgecolors="white", linewidths=0.8)
        else:
            style = _NODE_STYLES[kind]
        drawn[kind] = ax.scatter(xs, ys, zorder=3, **style)
    if "scored" not in drawn and "reference" in drawn:
        drawn["scored"] = drawn["reference"]  # the colorbar needs one coloured collection
    return drawn


def _label_nodes(ax, rows: list[Row], pos: dict, line: set[int], best: Row | None) -> None:
    """Ids next to nodes (names for baselines and the winner); only ancestry when the graph is big."""
    crowded = len(rows) > 80
    for r in rows:
        if crowded and r.id not in line:
            continue
        text = f"#{r.id}"
        if r.proposer == "reference" or (best is not None and r.id == best.id):
            text = _label(r, 18)
        ax.annotate(text, pos[r.id], xytext=(9, 5), textcoords="offset points", fontsize=7,
                    fontweight="bold" if r.id in line else "normal", zorder=5)


# ---------------------------------------------------------------------------------------------
# Code diffs along the winner's ancestry
# ---------------------------------------------------------------------------------------------


def code_diff_html(parent: Row, child: Row) -> str:
    """A unified diff of two candidates' code as an escaped, coloured <pre> block."""
    lines = difflib.unified_diff(parent.code.splitlines(), child.code.splitlines(), lineterm="",
                                 fromfile=_label(parent, 60), tofile=_label(child, 60), n=3)
    out = []
    for line in lines:
        cls = ("meta" if line.startswith(("---", "+++")) else "hunk" if line.startswith("@@")
               else "add" if line.startswith("+") else "del" if line.startswith("-") else "")
        out.append(f'<span class="{cls}">{html.escape(line)}</span>' if cls else html.escape(line))
    return '<pre class="diff">' + ("\n".join(out) or "(no textual change)") + "</pre>"


def ancestry_edges(rows: list[Row], row_id: int) -> list[tuple[Row, Row]]:
    """(parent, child) pairs inside ``row_id``'s ancestry, oldest child first."""
    by_id = {r.id: r for r in rows}
    line = ancestry(rows, row_id)
    children = sorted((by_id[i] for i in line), key=lambda r: (r.generation, r.id))
    return [(by_id[p], c) for c in children for p in c.parent_ids if p in by_id]


def diffs_view(rows: list[Row]) -> View:
    about = ("How the winner came about: for each parent → child step in its ancestry, the change to the loss "
             "code (green added, red removed), with the proposer's stated reasoning and both fitnesses.")
    view = View("diffs", "Code changes along the winner's ancestry", about)
    best = winner(rows)
    if best is None:
        view.note = EMPTY_NOTE if not rows else "No candidate was scored, so there is no winner to trace."
        return view
    steps = ancestry_edges(rows, best.id)
    if not steps:
        view.note = f"The winner {_label(best, 60)} has no recorded parents (a seed or baseline): nothing to diff."
    elif len(steps) > MAX_DIFFS:
        view.captions.append(f"Showing the {MAX_DIFFS} steps nearest the winner of {len(steps)}.")
        steps = steps[-MAX_DIFFS:]
    parts = []
    for parent, child in steps:
        head = (f"{_label(parent, 60)} (gen {parent.generation}, fitness {_fmt(parent.fitness)}) → "
                f"{_label(child, 60)} (gen {child.generation}, {child.status}, fitness {_fmt(child.fitness)})")
        thought = textwrap.shorten(child.thought or "", 600, placeholder=" …")
        parts.append(f"<h4>{html.escape(head)}</h4>"
                     + (f'<p class="thought">{html.escape(thought)}</p>' if thought else "")
                     + code_diff_html(parent, child))
    parts.append(f"<h4>Winner's code: {html.escape(_label(best, 60))}</h4>"
                 f'<pre class="code">{html.escape(best.code)}</pre>')
    view.html = "\n".join(parts)
    return view


# ---------------------------------------------------------------------------------------------
# Loss shapes
# ---------------------------------------------------------------------------------------------


def loss_curve(code: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """loss(x) and d loss / dx with x = beta * rho: policy_chosen = x, other log-probs 0, beta = 1.

    Only for the packaged reference losses (trusted code): candidates' curves come from their
    sandboxed checks (``metrics.checks.curve``), so no archived code runs in the report's process.
    """
    import torch

    from discopop.losses import load_loss

    fn = load_loss(code)
    t = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    zeros = torch.zeros_like(t)
    loss = fn(t, zeros, zeros, zeros, 1.0)
    if not isinstance(loss, torch.Tensor) or loss.shape != t.shape:
        raise ValueError(f"returned {type(loss).__name__} of shape {getattr(loss, 'shape', '?')}, not [batch]")
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss.sum(), t, allow_unused=True)
        grad = torch.zeros_like(t) if grad is None else grad
    else:
        grad = torch.zeros_like(t)  # constant in rho: no gradient reaches the policy
    return loss.detach().double().numpy(), grad.detach().double().numpy()


def _sandboxed_curve(row: Row, x: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """A candidate's curve as its sandboxed numeric checks recorded it (candidate code never runs here)."""
    curve = (row.metrics.get("checks") or {}).get("curve") or {}
    loss, grad = curve.get("loss"), curve.get("grad")
    if not loss or not grad or len(loss) != len(x) or len(grad) != len(x):
        notes.append(f"Skipped {_label(row)}: no loss curve was recorded by its sandboxed checks.")
        return None
    return np.asarray(loss, dtype=float), np.asarray(grad, dtype=float)


def _reference_code(name: str) -> str | None:
    """The packaged (trusted) reference loss of that name; archived code is never executed by the report."""
    try:
        return (resources.files("discopop") / "proposals" / f"{name}.py").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None


def _limits(baselines: list[np.ndarray], others: list[np.ndarray]) -> tuple[float, float]:
    """y-limits showing the baselines whole and candidates up to twice the baselines' span beyond them.

    A candidate like exp(-x) reaches e^10 at the left edge; unclipped it would flatten every other curve.
    """
    finite = [c[np.isfinite(c)] for c in baselines + others]
    base = [c[np.isfinite(c)] for c in baselines if np.isfinite(c).any()]
    if not any(v.size for v in finite):
        return -1.0, 1.0
    ref = np.concatenate(base) if base else np.concatenate(finite)
    lo, hi = float(ref.min()), float(ref.max())
    span = max(hi - lo, 0.1)
    every = np.concatenate(finite)
    lo = max(min(lo, float(every.min())), lo - 2 * span)
    hi = min(max(hi, float(every.max())), hi + 2 * span)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def loss_shapes_view(rows: list[Row], top: int = TOP_SHAPES) -> View:
    about = ("The loss and its derivative as functions of the β-scaled log-ratio difference x = β·ρ, "
             "ρ = (log πc − log πr) − (log ref_c − log ref_r), for the best evolved candidates next to DPO and LRML "
             "(as in the DiscoPOP paper). A negative derivative pushes the chosen response up; where it is flat "
             "the pair no longer moves the policy.")
    view = View("loss-shapes", "Loss shapes", about)
    ranked = scored(rows)
    if not ranked:
        view.note = EMPTY_NOTE if not rows else "No candidate was scored, so there is no loss to compare with DPO."
        return view
    evolved, seen = [], set()
    for r in ranked:
        if r.proposer != "reference" and r.code_hash not in seen and len(evolved) < top:
            evolved.append(r)
            seen.add(r.code_hash)
    if not evolved:
        view.captions.append("No evolved candidate was scored yet: only the baselines are drawn.")
    x = np.linspace(-10, 10, 401)
    # (label, colour, line style, is baseline, loss, derivative)
    series: list[tuple[str, str, str, bool, np.ndarray, np.ndarray]] = []
    for r, colour in zip(evolved, SERIES_COLOURS, strict=False):
        curve = _sandboxed_curve(r, x, view.captions)
        if curve:
            series.append((f"{_label(r)} (fitness {r.fitness:.3f})", colour, "-", False, *curve))
        if _diagnostics(r):
            view.captions.append(f"{_label(r)}, measured by its checks: {summarize(_diagnostics(r))}.")
    for name, (colour, style) in BASELINE_STYLE.items():
        code = _reference_code(name)
        curve = _try_curve(code, x, name.upper(), view.captions) if code else None
        if curve:
            series.append((name.upper(), colour, style, True, *curve))
    if not series:
        view.note = "No loss could be evaluated (see the notes below)."
        return view
    fig = _figure(12, 5)
    ax_loss, ax_grad = fig.subplots(1, 2)
    for label, colour, style, is_base, loss, grad in series:  # baselines last: drawn on top, thinner
        for ax, y in ((ax_loss, loss), (ax_grad, grad)):
            ax.plot(x, y, color=colour, ls=style, lw=1.6 if is_base else 2.2, zorder=3 if is_base else 2, label=label)
    for ax, index, ylabel, title in ((ax_loss, 4, "loss f(x)", "Loss"),
                                     (ax_grad, 5, "f′(x) = d loss / dx", "Derivative of the loss")):
        ax.set_ylim(*_limits([s[index] for s in series if s[3]], [s[index] for s in series if not s[3]]))
        ax.axhline(0, color=GREY, lw=0.8)
        ax.axvline(0, color=GREY, lw=0.8)
        ax.set_xlabel("x = β·ρ (β-scaled log-ratio difference, nats)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8, loc="upper right")
    view.figure = fig
    return view


def _try_curve(code: str, x: np.ndarray, label: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return loss_curve(code, x)
    except Exception as err:  # noqa: BLE001 - any failure of one candidate's code only skips that curve
        notes.append(f"Skipped {label}: {type(err).__name__}: {textwrap.shorten(str(err), 160)}")
        return None


# ---------------------------------------------------------------------------------------------
# Reward against KL
# ---------------------------------------------------------------------------------------------


def reward_kl_view(rows: list[Row]) -> View:
    about = ("Held-out reward against KL divergence from the reference model for every scored candidate: "
             "up and to the left is better (more reward for less drift). Evolved candidates are coloured by "
             "generation; baselines are black squares; the winner is circled.")
    view = View("reward-kl", "Reward against KL", about)
    pts = [r for r in scored(rows) if None not in (_num(r.metrics.get("reward")), _num(r.metrics.get("kl")))]
    if not pts:
        view.note = (EMPTY_NOTE if not rows else "No candidate was scored, so there is no reward or KL to plot."
                     if not scored(rows) else "No scored candidate recorded both reward and KL.")
        return view
    fig = _figure(9, 5.5)
    ax = fig.add_subplot()
    refs = [r for r in pts if r.proposer == "reference"]
    evolved = [r for r in pts if r.proposer != "reference"]
    if evolved:
        gens = [r.generation for r in evolved]
        sc = ax.scatter([r.metrics["kl"] for r in evolved], [r.metrics["reward"] for r in evolved], c=gens,
                        cmap=CMAP, vmin=min(gens), vmax=max(gens) if max(gens) > min(gens) else min(gens) + 1,
                        s=40, edgecolors="white", linewidths=0.5, zorder=3, label=f"evolved ({len(evolved)})")
        bar = fig.colorbar(sc, ax=ax, label="generation")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    if refs:
        ax.scatter([r.metrics["kl"] for r in refs], [r.metrics["reward"] for r in refs], marker="s", s=50,
                   color=OKABE_ITO["black"], zorder=4, label=f"reference baselines ({len(refs)})")
        for r in refs:
            ax.annotate(r.name, (r.metrics["kl"], r.metrics["reward"]), xytext=(6, -10),
                        textcoords="offset points", fontsize=8)
    best = winner(rows)
    if best is not None and any(r.id == best.id for r in pts):
        ax.scatter([best.metrics["kl"]], [best.metrics["reward"]], s=260, facecolors="none",
                   edgecolors=OKABE_ITO["vermillion"], linewidths=2, zorder=5, label=f"winner {_label(best)}")
    ax.set_xlabel("KL(policy ‖ reference) (nats)")
    ax.set_ylabel("held-out reward")
    ax.set_title("Reward against KL for scored candidates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.margins(0.12)
    view.figure = fig
    return view


# ---------------------------------------------------------------------------------------------
# Failures and timing
# ---------------------------------------------------------------------------------------------

_DEFAULT_STAGE = {"invalid": "check", "duplicate": "dedup", "train_failed": "train", "eval_failed": "score"}
_STAGE_ORDER = ["parse", "static", "numeric", "check", "dedup", "train", "score"]


def failure_stage(row: Row) -> str:
    """Where a failed candidate stopped: the recorded stage, else what its status implies."""
    stage = row.metrics.get("stage")
    return stage if isinstance(stage, str) and stage else _DEFAULT_STAGE.get(row.status, "unknown")


def failure_reason(row: Row) -> str:
    """The error with numbers and quoted names masked, so that the same cause counts once."""
    lines = (row.error or "").strip().splitlines()
    text = lines[0] if lines else "(no error recorded)"
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"(#\d+) \([^)]*\)", r"\1 (…)", text)  # a duplicate's twin: "same ... as #12 (name)"
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)


def _ordered(keys: Iterable[str], order: list[str]) -> list[str]:
    return sorted(set(keys), key=lambda k: (order.index(k) if k in order else len(order), k))


def failures_view(rows: list[Row]) -> View:
    about = ("Candidates that never got a fitness, counted by the stage where they stopped (left, split by "
             "status) and by reason (right; numbers and quoted names masked so that one cause counts once).")
    view = View("failures", "Failures by stage and reason", about)
    failed = [r for r in rows if r.status in FAILED]
    if not failed:
        view.note = EMPTY_NOTE if not rows else "No failed candidates: every finished proposal was scored."
        return view
    fig = _figure(13, max(4.5, 1.5 + 0.42 * min(10, len({failure_reason(r) for r in failed}))))
    ax_stage, ax_reason = fig.subplots(1, 2, width_ratios=[1, 1.6])
    stages = _ordered((failure_stage(r) for r in failed), _STAGE_ORDER)
    statuses = [s for s in FAILED if any(r.status == s for r in failed)]
    bottom = np.zeros(len(stages))
    for status in statuses:
        counts = np.array([sum(1 for r in failed if r.status == status and failure_stage(r) == st) for st in stages])
        ax_stage.bar(stages, counts, bottom=bottom, color=STATUS_COLOURS[status], label=status)
        bottom += counts
    if len(stages) > 4:
        ax_stage.tick_params(axis="x", labelrotation=30)
    ax_stage.set_xlabel("stage where the candidate stopped")
    ax_stage.set_ylabel("candidates")
    ax_stage.set_title(f"Failures by stage ({len(failed)} of {len(rows)} candidates)")
    ax_stage.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_stage.set_ylim(0, max(bottom) * 1.35)  # headroom for the legend
    ax_stage.legend(title="status", fontsize=8, loc="upper right")
    reasons = Counter((failure_reason(r), r.status) for r in failed).most_common(10)
    labels = ["\n".join(textwrap.wrap(textwrap.shorten(reason, 90, placeholder=" …"), 48))
              for (reason, _), _ in reasons]
    ax_reason.barh(range(len(reasons)), [n for _, n in reasons],
                   color=[STATUS_COLOURS[s] for (_, s), _ in reasons])
    ax_reason.set_yticks(range(len(reasons)), labels, fontsize=8.5)
    ax_reason.invert_yaxis()
    ax_reason.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_reason.set_xlabel("candidates")
    ax_reason.set_title("Most common reasons (colour = status)")
    view.figure = fig
    return view


def _stage_seconds(row: Row) -> dict[str, float]:
    """Per-stage seconds, with the unaccounted part of ``total`` as ``other``."""
    secs = _seconds(row)
    total = secs.pop("total", None)
    if total is not None and total - sum(secs.values()) > 0.01:
        secs["other"] = total - sum(secs.values())
    elif total is not None and not secs:
        secs["other"] = total
    return secs


def timing_view(rows: list[Row]) -> View:
    about = ("Where the compute went: seconds per stage summed over candidates, split by how each candidate ended "
             "(left; time spent on failures is wasted), and the per-candidate distribution of each stage (right).")
    view = View("timing", "Time per stage", about)
    timed = [(r, _stage_seconds(r)) for r in rows]
    timed = [(r, s) for r, s in timed if s]
    if not timed:
        view.note = EMPTY_NOTE if not rows else "No candidate recorded stage timings."
        return view
    stages = _ordered((k for _, s in timed for k in s), ["check", "train", "score", "other"])
    palette = [OKABE_ITO[k] for k in ("sky", "orange", "green", "blue", "purple", "yellow")]
    colours = {stage: palette[i % len(palette)] for i, stage in enumerate(stages)}
    statuses = [s for s in ("scored", *FAILED, "proposed") if any(r.status == s for r, _ in timed)]
    fig = _figure(13, 5)
    ax_sum, ax_box = fig.subplots(1, 2)
    bottom = np.zeros(len(statuses))
    for stage in stages:
        totals = np.array([sum(s.get(stage, 0.0) for r, s in timed if r.status == st) for st in statuses])
        ax_sum.bar(statuses, totals, bottom=bottom, color=colours.get(stage, GREY), label=stage)
        bottom += totals
    ax_sum.set_xlabel("outcome of the candidate")
    ax_sum.set_ylabel("seconds (summed over candidates)")
    ax_sum.set_title(f"Total time by outcome ({sum(bottom) / 60:.1f} min in all)")
    ax_sum.set_ylim(0, max(bottom) * 1.3)  # headroom for the legend
    ax_sum.legend(title="stage", fontsize=8, loc="upper right")
    data = [[s[st] for _, s in timed if st in s] for st in stages]
    box = ax_box.boxplot(data, patch_artist=True, widths=0.5, medianprops={"color": OKABE_ITO["black"]})
    ax_box.set_xticks(range(1, len(stages) + 1), stages)
    for patch, stage in zip(box["boxes"], stages, strict=True):
        patch.set_facecolor(colours.get(stage, GREY))
        patch.set_alpha(0.7)
    positive = [v for d in data for v in d if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax_box.set_yscale("log")
    ax_box.set_xlabel("stage")
    ax_box.set_ylabel("seconds per candidate")
    ax_box.set_title(f"Per-candidate time by stage (timed candidates: {len(timed)})")
    ax_box.grid(alpha=0.3, axis="y")
    view.figure = fig
    wasted = sum(sum(s.values()) for r, s in timed if r.status in FAILED)
    view.captions.append(f"{wasted:.1f} s of {sum(bottom):.1f} s went to candidates that failed.")
    return view


# ---------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------

VIEWS: list[Callable[[list[Row]], View]] = [
    leaderboard_view, fitness_view, lineage_view, diffs_view, loss_shapes_view, reward_kl_view,
    failures_view, timing_view,
]  # fmt: skip


def build_views(rows: list[Row]) -> list[View]:
    """Every view of the report, in reading order."""
    return [make(rows) for make in VIEWS]


def show(view: View) -> None:
    """Display a view in a notebook: note and HTML as rich text, the figure as a PNG image output."""
    from IPython.display import HTML, Image, display

    if view.note:
        display(HTML(f"<p><em>{html.escape(view.note)}</em></p>"))
    if view.html:
        display(HTML(f"<style>{_diff_css()}</style>{view.html}"))
    if view.figure is not None:
        display(Image(data=_png_bytes(view.figure), format="png"))
    for caption in view.captions:
        display(HTML(f"<p><small>{html.escape(caption)}</small></p>"))


def _diff_css() -> str:
    return (".diff .add{background:#e6f4ea;color:#005c2e}.diff .del{background:#fce8e6;color:#8a1c0a}"
            ".diff .hunk{color:#0072B2}.diff .meta{font-weight:bold}"
            "table.board td,table.board th{padding:2px 8px;text-align:left}")


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("discopop", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                              lstrip_blocks=True)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write one self-contained HTML report of a run (figures embedded as PNG) and return its path."""
    run_dir = Path(run_dir)
    rows = load_rows(run_dir)
    views = build_views(rows)
    sections = [{"view": v, "png": v.png_base64()} for v in views]
    text = _environment().get_template("report.html.j2").render(
        run_dir=str(run_dir), summary=summary(rows), sections=sections, diff_css=_diff_css())
    out = Path(out) if out is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
