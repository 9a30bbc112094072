"""The leaderboard view: the best scored candidates with their fresh-seed verdicts, as a table and a figure.

The confirmation cells come from ``stats.confirmation_cells``, the same words as ``discopop leaderboard``.
"""

from __future__ import annotations

import html

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from discopop.archive import Row
from discopop.contract.diagnostics import wrong_way
from discopop.fitness import stats
from discopop.report.escape import clean
from discopop.report.figures import FITNESS_LABEL, GREY, OKABE_ITO, View, legend_beside, new_figure
from discopop.report.run import (
    EMPTY_NOTE,
    confirmation_of,
    diagnostics_of,
    fmt,
    learning_rate_of,
    number,
    row_label,
    scored,
    tuned_beta,
)
from discopop.search.history import seed_scores

TOP_TABLE = 25  # leaderboard rows shown; the rest are in the archive


def behaviour(row: Row) -> str:
    """How the loss pushes, for a table cell: where it pushes the wrong way (a fact, never a failure)."""
    diag = diagnostics_of(row)
    if not diag:
        return "—"
    pushes = wrong_way(diag)
    text = "; ".join(pushes) if pushes else "never the wrong way (|β·ρ| ≤ 3)"
    return text if diag.get("uses_beta", True) else f"ignores beta; {text}"


def _search_cell(row: Row) -> str:
    """Mean search fitness over the row's search seeds, with their count (the rank's basis)."""
    scores = seed_scores(row)
    return "—" if scores is None else f"{fmt(scores.mean)} ({scores.n})"


def _lr_cell(row: Row) -> str:
    """The learning rate the row was scored at: with the run's beta, what TRL needs to train it the same way."""
    lr, beta = learning_rate_of(row), tuned_beta(row)
    if lr is None:
        return "—"
    return f"{lr:g}" if beta is None else f"{lr:g} (beta {beta:g})"  # the beta its search chose, where it chose one


def leaderboard(rows: list[Row], top: int = TOP_TABLE) -> list[dict[str, str]]:
    """Table records for the best ``top`` scored rows (reference baselines included, marked).

    The confirmation columns are ``stats.confirmation_cells``: the same words as ``discopop leaderboard``.
    """
    records = []
    for rank, r in enumerate(scored(rows)[:top], start=1):
        fresh, vs_dpo, vs_best = stats.confirmation_cells(confirmation_of(r) or None)
        is_dpo = r.proposer == "reference" and r.name.lower() == "dpo"
        records.append({
            "rank": str(rank), "id": str(r.id), "name": clean(r.name), "gen": str(r.generation), "proposer": r.proposer,
            "search (seeds)": _search_cell(r), "reward": fmt(r.metrics.get("reward")),
            "KL (nats)": fmt(r.metrics.get("kl")), "lr": _lr_cell(r),
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


def _confirmation_figure(rows: list[Row]) -> Figure | None:
    confirmed = [r for r in scored(rows) if number(confirmation_of(r).get("mean")) is not None]
    if not confirmed:
        return None
    fig = new_figure(9, max(3.0, 1.2 + 0.45 * len(confirmed)))
    ax = fig.add_subplot()
    dpo_conf = next((confirmation_of(r) for r in confirmed if r.proposer == "reference" and r.name == "dpo"), {})
    dpo_mean, dpo_se = number(dpo_conf.get("mean")), number(dpo_conf.get("se"))
    if dpo_mean is not None:
        ax.axvline(dpo_mean, color=OKABE_ITO["black"], ls="--", lw=1.2, label=f"DPO mean ({dpo_mean:.3f})")
        if dpo_se:
            ax.axvspan(dpo_mean - dpo_se, dpo_mean + dpo_se, color=GREY, alpha=0.2, label="DPO ± 1 SE")
    for y, r in enumerate(reversed(confirmed)):
        conf = confirmation_of(r)
        verdict = (conf.get("vs_dpo") or {}).get("verdict")
        colour = {stats.BEATS: OKABE_ITO["green"], stats.FAILED: OKABE_ITO["vermillion"]}.get(verdict,
                                                                                            OKABE_ITO["blue"])
        seeds = [f for f in (number(x) for x in conf.get("fitness", []) or []) if f is not None]
        ax.scatter(seeds, [y - 0.2] * len(seeds), s=14, color=GREY, zorder=2)
        ax.errorbar(conf["mean"], y, xerr=number(conf.get("se")) or 0, fmt="o", color=colour, capsize=4, zorder=3)
    ax.set_yticks(range(len(confirmed)), [row_label(r) for r in reversed(confirmed)])
    ax.set_ylim(-0.7, len(confirmed) - 0.3)
    ax.set_xlabel(f"{FITNESS_LABEL} on fresh seeds: mean ± SE (seeds and prompts)")
    ax.set_title("Fresh-seed confirmation of the top candidates")
    legend_beside(ax, handles=ax.get_legend_handles_labels()[0] + [
        Line2D([], [], marker="o", ls="", color=OKABE_ITO["green"], label="beats DPO (paired, Holm-corrected)"),
        Line2D([], [], marker="o", ls="", color=OKABE_ITO["blue"], label="within noise / below / baseline"),
        Line2D([], [], marker="o", ls="", color=OKABE_ITO["vermillion"], label="confirmation failed"),
        Line2D([], [], marker="o", ls="", color=GREY, markersize=4, label="fitness on one fresh seed"),
    ])
    return fig


def leaderboard_view(rows: list[Row]) -> View:
    about = ("Scored candidates ranked by search fitness (baselines are rows with proposer 'reference'). "
             "Where the loop re-scored a candidate on fresh seeds, its mean ± SE is shown with its paired "
             "comparison to DPO and to the strongest baseline: the gain, its 95% CI over seeds and prompts, and "
             "the verdict after a Holm correction over all of the confirmation's comparisons, with what the "
             "comparison could have seen: its minimum detectable effect at 80% power (MDE, at the Holm-corrected "
             "alpha) and, within noise, the TOST bound X no real gain or loss exceeds.")
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
