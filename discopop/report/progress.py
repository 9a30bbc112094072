"""How the search went: fitness over generations, and held-out reward against KL."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
from matplotlib.ticker import MaxNLocator

import discopop.report.escape as escape
from discopop.archive import Row
from discopop.report.figures import (
    BASELINE_STYLE,
    CMAP,
    FITNESS_LABEL,
    GREY,
    OKABE_ITO,
    SERIES_COLOURS,
    View,
    generation_ticks,
    legend_beside,
    new_figure,
)
from discopop.report.run import EMPTY_NOTE, baseline, number, row_label, scored, winner
from discopop.status import FAILED_STATUSES


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
    fig = new_figure(10, 5.2)
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
    failed = [r for r in rows if r.status in FAILED_STATUSES]
    if failed:
        xs = _spread([r.generation for r in failed], 1)
        ax.scatter(xs, np.full(len(failed), 0.03), transform=ax.get_xaxis_transform(), marker="x", color=GREY,
                   s=25, zorder=2, label=f"failed / duplicate ({len(failed)})")
    all_gens = [r.generation for r in rows]
    ax.set_xlim(min(all_gens) - 0.6, max(all_gens) + 0.6)
    generation_ticks(ax, all_gens)
    ax.margins(y=0.15)  # room for the failure crosses on the bottom edge
    ax.set_xlabel("generation")
    ax.set_ylabel(FITNESS_LABEL)
    ax.set_title("Fitness of each candidate over generations")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    view.figure = fig
    return view


def reward_kl_view(rows: list[Row]) -> View:
    about = ("Held-out reward against KL divergence from the reference model for every scored candidate: "
             "up and to the left is better (more reward for less drift). Evolved candidates are coloured by "
             "generation; baselines are black squares; the winner is circled.")
    view = View("reward-kl", "Reward against KL", about)
    pts = [r for r in scored(rows) if None not in (number(r.metrics.get("reward")), number(r.metrics.get("kl")))]
    if not pts:
        view.note = (EMPTY_NOTE if not rows else "No candidate was scored, so there is no reward or KL to plot."
                     if not scored(rows) else "No scored candidate recorded both reward and KL.")
        return view
    fig = new_figure(9, 5.5)
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
            ax.annotate(escape.plot_text(r.name), (r.metrics["kl"], r.metrics["reward"]), xytext=(6, -10),
                        textcoords="offset points", fontsize=8)
    best = winner(rows)
    if best is not None and any(r.id == best.id for r in pts):
        ax.scatter([best.metrics["kl"]], [best.metrics["reward"]], s=260, facecolors="none",
                   edgecolors=OKABE_ITO["vermillion"], linewidths=2, zorder=5, label=f"winner {row_label(best)}")
    ax.set_xlabel("KL(policy ‖ reference) (nats)")
    ax.set_ylabel("held-out reward")
    ax.set_title("Reward against KL for scored candidates")
    ax.grid(alpha=0.3)
    legend_beside(ax)
    ax.margins(0.12)
    view.figure = fig
    return view
