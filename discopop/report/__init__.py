"""Review a run: the views behind ``discopop report RUN_DIR`` and ``notebooks/lineage.ipynb``.

Everything here reads ``RUN_DIR/archive.sqlite`` *read-only* through the archive contract
(docs/DESIGN.md), so a report can be drawn while the loop is still writing, from a copied run
directory, or by a tool that knows nothing else about discopop. Each view is a small function
``rows -> View``; a view that has nothing to draw carries a note instead of an empty plot.

One module per view family: ``run`` (reading the archive, ranking, winner, lineage graph),
``figures`` (``View``, palette, canvas), ``board`` (leaderboard), ``progress`` (fitness over
generations, reward against KL), ``lineage`` (graph and code diffs), ``shapes`` (loss curves),
``frontier`` (each loss's reward–KL points over its learning rates),
``failures`` (failures and time per stage) and ``document`` (the HTML file and notebook display).
Callers use the names re-exported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discopop.report.board import TOP_TABLE, behaviour, leaderboard, leaderboard_view
    from discopop.report.document import VIEWS, build_views, show, write_report
    from discopop.report.failures import failure_reason, failure_stage, failures_view, timing_view
    from discopop.report.figures import (
        BASELINE_STYLE,
        CMAP,
        DPI,
        FITNESS_LABEL,
        GREY,
        OKABE_ITO,
        SERIES_COLOURS,
        STATUS_COLOURS,
        View,
    )
    from discopop.report.frontier import frontier_view
    from discopop.report.lineage import MAX_DIFFS, ancestry_edges, code_diff_html, diffs_view, lineage_view
    from discopop.report.progress import fitness_view, reward_kl_view
    from discopop.report.run import EMPTY_NOTE, ancestry, baseline, lineage_graph, load_rows, scored, summary, winner
    from discopop.report.shapes import TOP_SHAPES, loss_curve, loss_shapes_view

# Where each re-exported name lives, imported on first use (PEP 562): a caller of one light module (the terminal
# display, the escapes, a run's start) does not import matplotlib and networkx with the figures (~1.5 CPU-s).
_NAMES = {
    "board": ("TOP_TABLE", "behaviour", "leaderboard", "leaderboard_view"),
    "document": ("VIEWS", "build_views", "show", "write_report"),
    "failures": ("failure_reason", "failure_stage", "failures_view", "timing_view"),
    "figures": ("BASELINE_STYLE", "CMAP", "DPI", "FITNESS_LABEL", "GREY", "OKABE_ITO", "SERIES_COLOURS",
                "STATUS_COLOURS", "View"),
    "frontier": ("frontier_view",),
    "lineage": ("MAX_DIFFS", "ancestry_edges", "code_diff_html", "diffs_view", "lineage_view"),
    "progress": ("fitness_view", "reward_kl_view"),
    "run": ("EMPTY_NOTE", "ancestry", "baseline", "lineage_graph", "load_rows", "scored", "summary", "winner"),
    "shapes": ("TOP_SHAPES", "loss_curve", "loss_shapes_view"),
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """A re-exported name, imported from its module now (then kept here)."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BASELINE_STYLE", "CMAP", "DPI", "EMPTY_NOTE", "FITNESS_LABEL", "GREY", "MAX_DIFFS", "OKABE_ITO", "SERIES_COLOURS",
    "STATUS_COLOURS", "TOP_SHAPES", "TOP_TABLE", "VIEWS", "View", "ancestry", "ancestry_edges", "baseline",
    "behaviour", "build_views", "code_diff_html", "diffs_view", "failure_reason", "failure_stage", "failures_view",
    "fitness_view", "frontier_view", "leaderboard", "leaderboard_view", "lineage_graph", "lineage_view", "load_rows",
    "loss_curve", "loss_shapes_view", "reward_kl_view", "scored", "show", "summary", "timing_view", "winner",
    "write_report",
]  # fmt: skip
