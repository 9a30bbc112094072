"""Where candidates failed (by stage and by reason) and where the compute went (time per stage)."""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

import numpy as np
from matplotlib.ticker import MaxNLocator

import discopop.report.escape as escape
from discopop.archive import Row
from discopop.report.figures import GREY, OKABE_ITO, STATUS_COLOURS, View, legend_beside, new_figure
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
    legend_beside(ax_stage, title="status")
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


# ``metrics.seconds`` keys that are not parts of their own: ``runs`` counts fine-tunes; ``overhead`` is ``total`` less
# ``steps`` and ``score`` (so it holds ``check`` too); ``total`` is the row's wall time, spanning all the others.
_NOT_PARTS = ("runs", "overhead", "total")
TRAIN_REST = "train (rest)"


def stage_parts(row: Row) -> dict[str, float]:
    """The row's compute in parts that do not overlap, so that stacking them adds up to what it used.

    The cascade's ``train`` is each fine-tune job's whole time summed over its jobs, with the job's optimisation
    ``steps`` and its ``score`` inside it: those two are shown as parts of their own and ``train`` as the rest
    (model load, generation set-up). Cheap-stage keys (``fidelity``'s stages) and ``check`` are parts as they
    are. ``total`` is kept only where nothing else was timed (``unattributed``).
    """
    secs = seconds_of(row)
    parts = {k: v for k, v in secs.items() if k not in _NOT_PARTS and k not in ("train", "steps", "score")}
    train, steps, score = secs.get("train"), secs.get("steps"), secs.get("score")
    if steps is not None:  # the cascade's record: steps and score ran inside train's jobs
        parts["steps"] = steps
        if score is not None:
            parts["score"] = score
        if train is not None and train - steps - (score or 0.0) > 0.01:
            parts[TRAIN_REST] = train - steps - (score or 0.0)
    else:  # no step timing (a fine-tune that failed, an older archive): train and score as recorded
        if train is not None:
            parts[TRAIN_REST] = train
        if score is not None:
            parts["score"] = score
    if not parts and secs.get("total") is not None:
        parts["unattributed"] = secs["total"]
    return {k: v for k, v in parts.items() if v > 0}


def timing_view(rows: list[Row]) -> View:
    about = ("Where the compute went: seconds per part summed over candidates and their jobs, split by how each "
             "candidate ended (left; time spent on failures is wasted), and the per-candidate distribution of each "
             "part (right). The parts do not overlap: a fine-tune's optimisation steps and its scoring are shown "
             "apart from the rest of its job. Jobs run side by side on the workers, so the sum is worker time and "
             "can exceed the run's wall time.")
    view = View("timing", "Time per stage", about)
    timed = [(r, stage_parts(r)) for r in rows]
    timed = [(r, s) for r, s in timed if s]
    if not timed:
        view.note = EMPTY_NOTE if not rows else "No candidate recorded stage timings."
        return view
    stages = _ordered((k for _, s in timed for k in s), ["check", "steps", "score", TRAIN_REST, "unattributed"])
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
    ax_sum.set_ylabel("worker seconds (summed over candidates and jobs)")
    ax_sum.set_title(f"Worker time by outcome ({sum(bottom) / 60:.1f} min summed over jobs)")
    legend_beside(ax_sum, title="part")
    data = [[s[st] for _, s in timed if st in s] for st in stages]
    box = ax_box.boxplot(data, patch_artist=True, widths=0.5, medianprops={"color": OKABE_ITO["black"]})
    ax_box.set_xticks(range(1, len(stages) + 1), stages)
    for patch, stage in zip(box["boxes"], stages, strict=True):
        patch.set_facecolor(colours.get(stage, GREY))
        patch.set_alpha(0.7)
    positive = [v for d in data for v in d if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax_box.set_yscale("log")
    ax_box.set_xlabel("part")
    ax_box.set_ylabel("seconds per candidate")
    ax_box.set_title(f"Per-candidate time by part (timed candidates: {len(timed)})")
    ax_box.grid(alpha=0.3, axis="y")
    view.figure = fig
    wasted = sum(sum(s.values()) for r, s in timed if r.status in FAILED_STATUSES)
    view.captions.append(f"{wasted:.1f} s of {sum(bottom):.1f} s went to candidates that failed.")
    wall = wall_seconds(rows)
    if wall is not None:
        view.captions.append(f"The run's wall time, first proposal to last finish: {_minutes(wall)} (worker time "
                             f"{_minutes(sum(bottom))}: jobs ran side by side).")
    return view


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def wall_seconds(rows: list[Row]) -> float | None:
    """Seconds from the first row's creation to the last row's finish (archived timestamps), if readable."""
    try:
        start = min(datetime.fromisoformat(r.created_at) for r in rows)
        ends = [datetime.fromisoformat(r.finished_at) for r in rows if r.finished_at]
    except (TypeError, ValueError):
        return None
    try:
        return (max(ends) - start).total_seconds() if ends else None
    except TypeError:  # naive and aware stamps mixed: no honest difference
        return None
