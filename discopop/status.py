"""The candidate statuses: one vocabulary for the archive, the loop, the proposers and every reader.

The values are the strings the archive has always stored (``candidates.status``), so archives
written before this module read unchanged. They are plain ``str`` constants rather than an enum
because rows, JSON and SQLite hand them around as text; compare ``row.status == Status.SCORED``.
"""

from __future__ import annotations

from typing import Final


class Status:
    """The fate of a candidate row (see the table in docs/DESIGN.md §3)."""

    PROPOSED: Final = "proposed"  # inserted, work not finished (re-run on --resume)
    INVALID: Final = "invalid"  # unparseable proposal, static or numeric check failed
    DUPLICATE: Final = "duplicate"  # same normalised code, or same training behaviour, as an earlier row
    TRAIN_FAILED: Final = "train_failed"  # no fine-tune of the learning-rate sweep succeeded
    EVAL_FAILED: Final = "eval_failed"  # scoring failed, or the best fitness is not finite
    SCORED: Final = "scored"  # has a fitness


STATUSES: Final = (Status.PROPOSED, Status.INVALID, Status.DUPLICATE, Status.TRAIN_FAILED, Status.EVAL_FAILED,
                   Status.SCORED)
"""Every status, in the order of a candidate's life (the archive's CHECK constraint lists these)."""

FAILED_STATUSES: Final = (Status.INVALID, Status.DUPLICATE, Status.TRAIN_FAILED, Status.EVAL_FAILED)
"""Finished without a fitness."""

BROKEN_STATUSES: Final = (Status.INVALID, Status.TRAIN_FAILED, Status.EVAL_FAILED)
"""Failed because something went wrong (a duplicate is not broken, only redundant)."""

REPAIRABLE_STATUSES: Final = (Status.INVALID, Status.TRAIN_FAILED)
"""Failures a proposer is offered back (``Proposer.repair``): its own code caused them."""
