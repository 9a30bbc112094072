"""Who descends from whom: the lineage graph, and the code changes along the winner's ancestry."""

from __future__ import annotations

import difflib
import html
import textwrap
from collections import Counter, defaultdict
from typing import Any

import networkx as nx
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from discopop.archive import Row
from discopop.report.figures import (
    CMAP,
    FITNESS_LABEL,
    GREY,
    OKABE_ITO,
    SERIES_COLOURS,
    View,
    generation_ticks,
    new_figure,
)
from discopop.report.run import EMPTY_NOTE, ancestry, fmt, lineage_graph, row_label, scored, winner
from discopop.status import BROKEN_STATUSES, Status

MAX_DIFFS = 12  # parent->child diffs along the winner's ancestry (the ones nearest the winner)


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
    fig = new_figure(min(16, 5 + 1.3 * len(per_gen)), min(14, 3.5 + 0.4 * max(per_gen.values())))
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
    generation_ticks(ax, list(per_gen))
    ax.margins(y=0.12)
    ax.set_xlim(min(per_gen) - 0.5, max(per_gen) + 0.7)
    ax.set_yticks([])
    ax.tick_params(axis="x", bottom=True, labelbottom=True)  # networkx switches tick labels off
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("generation")
    ax.set_title("Lineage of all candidates" + (f" — winner {row_label(best, 40)}" if best else ""))
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
        "failed": [r for r in rows if r.status in BROKEN_STATUSES],
        "duplicate": [r for r in rows if r.status == Status.DUPLICATE],
        "proposed": [r for r in rows if r.status == Status.PROPOSED],
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
            text = row_label(r, 18)
        ax.annotate(text, pos[r.id], xytext=(9, 5), textcoords="offset points", fontsize=7,
                    fontweight="bold" if r.id in line else "normal", zorder=5)


def code_diff_html(parent: Row, child: Row) -> str:
    """A unified diff of two candidates' code as an escaped, coloured <pre> block."""
    lines = difflib.unified_diff(parent.code.splitlines(), child.code.splitlines(), lineterm="",
                                 fromfile=row_label(parent, 60), tofile=row_label(child, 60), n=3)
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
        view.note = f"The winner {row_label(best, 60)} has no recorded parents (a seed or baseline): nothing to diff."
    elif len(steps) > MAX_DIFFS:
        view.captions.append(f"Showing the {MAX_DIFFS} steps nearest the winner of {len(steps)}.")
        steps = steps[-MAX_DIFFS:]
    parts = []
    for parent, child in steps:
        head = (f"{row_label(parent, 60)} (gen {parent.generation}, fitness {fmt(parent.fitness)}) → "
                f"{row_label(child, 60)} (gen {child.generation}, {child.status}, fitness {fmt(child.fitness)})")
        thought = textwrap.shorten(child.thought or "", 600, placeholder=" …")
        parts.append(f"<h4>{html.escape(head)}</h4>"
                     + (f'<p class="thought">{html.escape(thought)}</p>' if thought else "")
                     + code_diff_html(parent, child))
    parts.append(f"<h4>Winner's code: {html.escape(row_label(best, 60))}</h4>"
                 f'<pre class="code">{html.escape(best.code)}</pre>')
    view.html = "\n".join(parts)
    return view
