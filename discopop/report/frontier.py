"""Each loss's reward–KL frontier: its (KL, reward) point at every learning rate it was evaluated at.

The fitness is reward − kl_coef·KL, so a loss is judged at one point of a curve; the curve shows
whether a loss is better *at every KL budget* or only buys reward by drifting further from the
reference. The points come from the archive (``metrics.lr_points``, written by ``tuning.Sweep``: all
on the search seed, so the rates are compared on the same data); a row archived before those were
kept shows its chosen rate's point alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import discopop.report.escape as escape
from discopop.archive import Row
from discopop.report.figures import OKABE_ITO, SERIES_COLOURS, View, legend_beside, new_figure
from discopop.report.run import EMPTY_NOTE, number, row_label, scored

TOP_FRONTIERS = 5  # evolved losses drawn beside every baseline: more lines stop being readable


def plot_text(text: str) -> str:
    """``text`` safe as a matplotlib label (``escape.plot_text``: figures are drawn with mathtext off)."""
    return escape.plot_text(text)


@dataclass
class Frontier:
    """One loss's points, ordered by learning rate: (learning rate or None, KL, reward)."""

    row: Row
    points: list[tuple[float | None, float, float]]


def frontier_of(row: Row) -> Frontier | None:
    """The row's reward–KL points from its metrics (untrusted JSON: anything malformed is skipped)."""
    raw = row.metrics.get("lr_points")
    points: list[tuple[float | None, float, float]] = []
    if isinstance(raw, dict):
        for rate, point in raw.items():
            try:
                lr = float(rate)
            except (TypeError, ValueError):
                continue
            if isinstance(point, dict) and None not in (kl := number(point.get("kl")),
                                                        reward := number(point.get("reward"))):
                points.append((lr, kl, reward))
        points.sort(key=lambda p: p[0])
    if not points and None not in (kl := number(row.metrics.get("kl")), reward := number(row.metrics.get("reward"))):
        points = [(number(row.metrics.get("learning_rate")), kl, reward)]
    return Frontier(row, points) if points else None


def frontiers(rows: list[Row], top: int = TOP_FRONTIERS) -> list[Frontier]:
    """Every scored baseline's frontier and the ``top`` best evolved losses' (ranked as the leaderboard)."""
    best_first = scored(rows)
    chosen = [r for r in best_first if r.proposer == "reference"] + [
        r for r in best_first if r.proposer != "reference"][:top]
    return [f for r in chosen if (f := frontier_of(r)) is not None]


def frontier_view(rows: list[Row]) -> View:
    about = ("Held-out reward (the fitness's score) against KL from the reference, one line per loss through the "
             "learning rates it was trained at (marker size grows with the rate; the chosen rate is ringed). A loss "
             "whose line lies above another's at the same KL is better at that budget; one that is higher only "
             "further right bought its reward by drifting. Baselines are dashed, the best evolved losses solid.")
    view = View("frontier", "Reward–KL frontier per loss", about)
    series = frontiers(rows)
    if not series:
        view.note = EMPTY_NOTE if not rows else "No scored loss recorded reward and KL, so there is no frontier."
        return view
    fig = new_figure(9, 5.5)
    ax = fig.add_subplot()
    colours = [OKABE_ITO["black"], *SERIES_COLOURS, OKABE_ITO["purple"]]
    for i, frontier in enumerate(series):
        row, points = frontier.row, frontier.points
        baseline = row.proposer == "reference"
        rates = [lr for lr, _, _ in points if lr is not None]
        sizes = [18 + 50 * k / max(1, len(points) - 1) for k in range(len(points))] if rates else [30] * len(points)
        colour = colours[i % len(colours)]
        kls, rewards = [p[1] for p in points], [p[2] for p in points]
        ax.plot(kls, rewards, ls="--" if baseline else "-", lw=1.2 if baseline else 2.0, color=colour,
                label=plot_text(row_label(row)))
        ax.scatter(kls, rewards, s=sizes, color=colour, zorder=3)
        chosen = number(row.metrics.get("learning_rate"))
        for lr, kl, reward in points:
            if chosen is not None and lr is not None and math.isclose(lr, chosen):
                ax.scatter([kl], [reward], s=160, facecolors="none", edgecolors=colour, linewidths=1.5, zorder=4)
    ax.set_xlabel("KL(policy ‖ reference) (nats)")
    ax.set_ylabel("held-out reward (the fitness's score)")
    ax.set_title("Reward against KL over each loss's learning rates")
    ax.grid(alpha=0.3)
    legend_beside(ax)
    ax.margins(0.1)
    view.figure = fig
    return view
