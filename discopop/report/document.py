"""The whole report: every view in reading order, as one self-contained HTML file or as notebook output."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from discopop.archive import Row
from discopop.report.board import leaderboard_view
from discopop.report.failures import failures_view, timing_view
from discopop.report.figures import View, png_bytes
from discopop.report.frontier import frontier_view
from discopop.report.lineage import diffs_view, lineage_view
from discopop.report.progress import fitness_view, reward_kl_view
from discopop.report.run import load_rows, run_beta, summary, tuned_beta
from discopop.report.shapes import loss_shapes_view

VIEWS: list[Callable[[list[Row]], View]] = [
    leaderboard_view, fitness_view, lineage_view, diffs_view, loss_shapes_view, reward_kl_view, frontier_view,
    failures_view, timing_view,
]  # fmt: skip


def build_views(rows: list[Row]) -> list[View]:
    """Every view of the report, in reading order."""
    return [make(rows) for make in VIEWS]


def show(view: View) -> None:
    """Display a view in a notebook: note and HTML as rich text, the figure as a PNG image output."""
    from IPython.display import HTML, Image, display  # lazy: IPython/jinja2 are optional, for notebooks and HTML only

    if view.note:
        display(HTML(f"<p><em>{html.escape(view.note)}</em></p>"))
    if view.html:
        display(HTML(f"<style>{_diff_css()}</style>{view.html}"))
    if view.figure is not None:
        display(Image(data=png_bytes(view.figure), format="png"))
    for caption in view.captions:
        display(HTML(f"<p><small>{html.escape(caption)}</small></p>"))


def _diff_css() -> str:
    return (".diff .add{background:#e6f4ea;color:#005c2e}.diff .del{background:#fce8e6;color:#8a1c0a}"
            ".diff .hunk{color:#0072B2}.diff .meta{font-weight:bold}"
            "table.board td,table.board th{padding:2px 8px;text-align:left}")


def _environment():
    import jinja2  # lazy: IPython/jinja2 are optional, for notebooks and HTML only

    return jinja2.Environment(loader=jinja2.PackageLoader("discopop.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                              lstrip_blocks=True)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write one self-contained HTML report of a run (figures embedded as PNG) and return its path."""
    run_dir = Path(run_dir)
    rows = load_rows(run_dir)
    views = build_views(rows)
    sections = [{"view": v, "png": v.png_base64()} for v in views]
    beta = run_beta(run_dir)
    trained = (f" Every candidate trained at beta {beta:g} (the run's training.beta; TRL's DPOConfig defaults to "
               "0.1): pass it with the learning rate shown for the candidate.") if beta is not None else ""
    if any(tuned_beta(r) is not None for r in rows):  # training.beta_grid: each row chose its own beta
        trained = (" Each candidate trained at the beta its search chose (shown beside its learning rate; TRL's "
                   "DPOConfig defaults to 0.1): pass both.")
    text = _environment().get_template("report.html.j2").render(
        run_dir=str(run_dir), summary=summary(rows) + trained, sections=sections, diff_css=_diff_css())
    out = Path(out) if out is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
