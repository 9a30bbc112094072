"""Where candidates failed (by stage and by reason) and where the compute went (time per stage)."""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Iterable

import numpy as np
from matplotlib.ticker import MaxNLocator

import discopop.report.escape as escape
from discopop.archive import Row
from discopop.report.figures import GREY, OKABE_ITO, STATUS_COLOURS, View, new_figure
from discopop.report.run import EMPTY_NOTE, seconds_of
from discopop.status import FAILED_STATUSES, Status

_DEFAULT_STAGE = {Status.INVALID: "check", Status.DUPLICATE: "dedup", Status.TRAIN_FAILED: "train",
                  Status.EVAL_FAILED: "score"}
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
    failed = [r for r in rows if r.status in FAILED_STATUSES]
    if not failed:
        view.note = EMPTY_NOTE if not rows else "No failed candidates: every finished proposal was scored."
        return view
    fig = new_figure(13, max(4.5, 1.5 + 0.42 * min(10, len({failure_reason(r) for r in failed}))))
    ax_stage, ax_reason = fig.subplots(1, 2, width_ratios=[1, 1.6])
    stages = _ordered((failure_stage(r) for r in failed), _STAGE_ORDER)
    statuses = [s for s in FAILED_STATUSES if any(r.status == s for r in failed)]
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
    labels = ["\n".join(textwrap.wrap(textwrap.shorten(escape.plot_text(reason), 90, placeholder=" …"), 48))
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
    secs = seconds_of(row)
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
    statuses = [s for s in (Status.SCORED, *FAILED_STATUSES, Status.PROPOSED) if any(r.status == s for r, _ in timed)]
    fig = new_figure(13, 5)
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
    wasted = sum(sum(s.values()) for r, s in timed if r.status in FAILED_STATUSES)
    view.captions.append(f"{wasted:.1f} s of {sum(bottom):.1f} s went to candidates that failed.")
    return view
