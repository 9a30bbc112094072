"""benchmarks/search_efficiency.py: the count of rows and fine-tunes lost to the machine, per arm (an arm run
under heavier load loses more candidates to missed oracle deadlines, which biases feedback - control)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from conftest import benchmark_script

from discopop.archive import Archive, Evaluation
from discopop.fitness.result_store import DEADLINE_MISSED
from discopop.status import Status


def _candidate(name: str, proposer: str = "evolution") -> SimpleNamespace:
    return SimpleNamespace(name=name, code=f"# {name}\n", thought="", parent_ids=[], proposer=proposer, info={})


def test_machine_failures_count_only_the_machines_errors(tmp_path: Path) -> None:
    se = benchmark_script("search_efficiency")
    arch = Archive(tmp_path / "archive.sqlite")
    try:
        ref = arch.add(_candidate("ipo", "reference"), 0, Status.SCORED)
        arch.add(_candidate("a"), 1, Status.INVALID, f"oracle check: oracle: {DEADLINE_MISSED} (0 of 20 bytes came)")
        arch.add(_candidate("b"), 1, Status.INVALID,
                 f"sandbox check: loss oracle failed to start: {DEADLINE_MISSED} (0 of 20 bytes came)")
        arch.add(_candidate("c"), 1, Status.TRAIN_FAILED, "train timed out after 600 s")
        arch.add(_candidate("d"), 2, Status.INVALID, "loss returned NaN")  # the loss's own fault
        arch.add(_candidate("e"), 2, Status.DUPLICATE, "same training behaviour as #1 (ipo)")
        scored = arch.add(_candidate("f"), 2, Status.SCORED)
        arch.add_evaluation(Evaluation(ref, 1000, "transfer:clean", error=f"oracle: oracle: {DEADLINE_MISSED}"))
        arch.add_evaluation(Evaluation(ref, 1001, "transfer:clean", error=f"oracle: oracle: {DEADLINE_MISSED}"))
        arch.add_evaluation(Evaluation(scored, 1000, "confirm", error="loss returned NaN"))
        arch.add_evaluation(Evaluation(scored, 1001, "confirm", fitness=1.0))
        lost = se.machine_failures(arch)
    finally:
        arch.close()
    assert lost["rows"] == {"oracle deadline": 1, "oracle start": 1, "time limit": 1}
    assert lost["rows_total"] == 3
    assert lost["fine_tunes"] == {"transfer:clean oracle deadline": 2}
    assert "3 (" in se._fmt_failures(lost) and "2 transfer:clean oracle deadline" in se._fmt_failures(lost)


def test_curve_marks_first_every_nth_and_last() -> None:
    se = benchmark_script("search_efficiency")
    assert se.curve_marks(20) == [1, 5, 10, 15, 20]
    assert se.curve_marks(12, 5) == [1, 5, 10, 12]
    assert se.curve_marks(4, 1) == [1, 2, 3, 4]
