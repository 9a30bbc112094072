"""A stored run directory to test the readers and writers of a finished run on (export, leaderboard, report).

Imported as ``from helper_runs import ...`` (the tests folder is on pytest's path; CI runs plain ``pytest``).
"""

from __future__ import annotations

from pathlib import Path

from discopop.archive import Archive
from discopop.proposers.base import Candidate

DPO = (Path(__file__).resolve().parent.parent / "discopop" / "proposals" / "dpo.py").read_text()
RUN_BETA = 0.25  # the beta the run's saved config records


def scored_run(tmp_path: Path, code: str = DPO, name: str = "winner", thought: str = "idea") -> tuple[Path, int]:
    """``tmp_path/run`` as a finished search leaves it: its saved config (beta 0.25), the DPO reference (scored 0.5
    at lr 1e-5) and one evolved candidate (scored 0.6 at lr 8e-5). The candidate is written directly, as an archive
    from before the gate or one edited by hand would hold it: the readers must not trust its name, thought or code.
    Returns the run directory and the candidate's row id."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"training:\n  beta: {RUN_BETA}\n")
    arch = Archive(run / "archive.sqlite")
    ref = arch.add(Candidate(name="dpo", code=DPO, proposer="reference"), generation=0)
    arch.finish(ref, "scored", fitness=0.5, metrics={"reward": 0.5, "kl": 1.0, "learning_rate": 1e-5})
    rid = arch.add(Candidate(name=name, code=code, proposer="evolution", thought=thought), generation=1)
    arch.finish(rid, "scored", fitness=0.6, metrics={"reward": 0.6, "kl": 1.0, "learning_rate": 8e-5})
    arch.close()
    return run, rid
