"""Experiment tracking with wandb, offline by default (no network, no account needed).

Offline runs are written under RUN_DIR/wandb and can be uploaded later with ``wandb sync``.
``wandb.mode=disabled`` skips wandb entirely (tests use it to stay fast).

One wandb run per run directory: its id is drawn once, kept in ``RUN_DIR/wandb/RUN_ID_FILE`` and reused by every
``--resume``, so the resumes' offline folders sync into the same run, and two run directories that share a name
(``outputs/run`` on two days) never merge into one. At the end of a run the fresh-seed confirmation table and the
winner's code are logged beside the per-candidate numbers. ``TrackerDisplay`` is how a run reaches wandb: the loop
reports events (``search.events``) and this display decides what is logged.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from discopop.archive import Row
from discopop.config import WANDB_MODES, WandbSettings
from discopop.report.escape import clean, code_text
from discopop.report.run import confirmation_of, learning_rate_of, number, scored, tuned_beta, winner
from discopop.search.events import CandidateFinished, Event, ResultsReady, RunFinished, ScreenMeasured
from discopop.search.history import seed_scores
from discopop.search.screen_agreement import ScreenAgreement

RUN_ID_FILE = "discopop_run_id"
_ID = re.compile(r"[a-z0-9]{8,64}")


def run_id(run_dir: Path) -> str:
    """The run directory's wandb id: read from ``RUN_DIR/wandb/RUN_ID_FILE``, drawn and written there the first time.

    Drawn at random, not from the config or seed: it names the directory's run, not a result (the archive is
    unaffected, so the same config and seed still give the same archive).
    """
    path = Path(run_dir) / "wandb" / RUN_ID_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        kept = ""
    if _ID.fullmatch(kept):
        return kept
    new = secrets.token_hex(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new + "\n", encoding="utf-8")
    return new


CONFIRMATION_COLUMNS = ["rank", "id", "name", "proposer", "search (seeds)", "fresh mean", "fresh SE", "fresh seeds",
                        "vs DPO", "vs best baseline"]


def confirmation_table(rows: list[Row]) -> list[list[Any]]:
    """The confirmed rows, best ranked first, as ``CONFIRMATION_COLUMNS`` (the leaderboard's words; names cleaned)."""
    from discopop.report.board import leaderboard  # lazy: the board imports matplotlib (~1 CPU-s), a run's start-up

    records = {int(rec["id"]): rec for rec in leaderboard(rows, top=len(rows))}
    out = []
    for r in scored(rows):
        conf = confirmation_of(r)
        if number(conf.get("mean")) is None or r.id not in records:
            continue
        rec = records[r.id]
        seeds = [v for v in (number(x) for x in conf.get("fitness") or []) if v is not None]
        out.append([int(rec["rank"]), r.id, rec["name"], rec["proposer"], rec["search (seeds)"],
                    number(conf.get("mean")), number(conf.get("se")), len(seeds), rec["vs DPO"],
                    rec["vs best baseline"]])
    return out


def winner_summary(rows: list[Row], run_beta: float | None) -> dict[str, Any]:
    """What the run found, for the wandb run's summary: the winner's id, name, numbers, settings and code."""
    best = winner(rows)
    if best is None:
        return {}
    scores = seed_scores(best)
    beta = tuned_beta(best)
    return {"winner/id": best.id, "winner/name": clean(best.name), "winner/proposer": clean(best.proposer),
            "winner/search_mean": scores.mean if scores else None, "winner/search_seeds": scores.n if scores else 0,
            "winner/fresh_mean": number(confirmation_of(best).get("mean")),
            "winner/beta": beta if beta is not None else run_beta, "winner/learning_rate": learning_rate_of(best),
            "winner/code": code_text(best.code)}


# wandb's switch for its Weave integration: set, wandb.init neither starts Weave nor prints its three-line "Detected
# [openai] in use ... W&B Weave" suggestion (every run imports openai for the LLM proposer). Only that integration is
# off: wandb's warnings and errors print as before.
WEAVE_SWITCH = "WANDB_DISABLE_WEAVE"


@contextmanager
def no_weave_suggestion() -> Iterator[None]:
    """The Weave integration off for one ``wandb.init`` (a user who set ``WANDB_DISABLE_WEAVE`` keeps their value);
    the environment is restored after, so nothing else in the process sees the variable."""
    if WEAVE_SWITCH in os.environ:
        yield
        return
    os.environ[WEAVE_SWITCH] = "true"
    try:
        yield
    finally:
        os.environ.pop(WEAVE_SWITCH, None)


class Tracker:
    def __init__(self, settings: WandbSettings, run_dir: Path, config: dict[str, Any]):
        """``settings``: the run's ``wandb`` group; ``config``: the whole run config (plain), logged with the run."""
        mode = settings.mode
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
        self.run = None
        self._config = config
        if mode == "disabled":
            return
        import wandb  # lazy: wandb is optional

        with no_weave_suggestion():
            self.run = wandb.init(project=settings.project, mode=mode, dir=str(run_dir),
                                  config=config, name=run_dir.name, resume="allow", id=run_id(run_dir),
                                  settings=wandb.Settings(silent=True, console="off"))

    def log_candidate(self, row_id: int, name: str, generation: int, status: str, fitness: float | None,
                      metrics: dict[str, Any], best: float | None) -> None:
        if self.run is None:
            return
        data: dict[str, Any] = {"candidate/id": row_id, "candidate/generation": generation,
                                "candidate/status": status, "best_fitness": best}
        if fitness is not None:
            data.update({"candidate/fitness": fitness, "candidate/reward": metrics.get("reward"),
                         "candidate/kl": metrics.get("kl")})
        self.run.log(data)

    def log_screen(self, record: ScreenAgreement) -> None:
        """How the run's rate screen ranked (``search.screen_agreement``), in the run's summary: comparable
        across runs and tasks in wandb."""
        if self.run is not None:
            self.run.summary.update(record.summary())

    def log_results(self, rows: list[Row]) -> None:
        """The run's outcome, once the confirmation is archived: its table, and the winner with its code."""
        if self.run is None:
            return
        import wandb  # lazy: wandb is optional

        table = confirmation_table(rows)
        if table:
            self.run.log({"confirmation": wandb.Table(columns=CONFIRMATION_COLUMNS, data=table)})
        training = self._config.get("training") if isinstance(self._config, Mapping) else None
        found = winner_summary(rows, number(training.get("beta")) if isinstance(training, Mapping) else None)
        if found:
            self.run.summary.update(found)
            self.run.log({"winner": wandb.Table(columns=["id", "name", "code"],
                                                 data=[[found["winner/id"], found["winner/name"],
                                                        found["winner/code"]]])})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class TrackerDisplay:
    """The loop's events as wandb logs: each finished candidate's numbers, the results once confirmed, and the end
    of the run (``RunFinished`` finishes the wandb run). Other events are not logged."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def show(self, event: Event) -> None:
        if isinstance(event, CandidateFinished):
            self.tracker.log_candidate(event.row_id, event.name, event.generation, event.status, event.fitness,
                                       {"reward": event.reward, "kl": event.kl}, event.best_fitness)
        elif isinstance(event, ScreenMeasured):
            self.tracker.log_screen(event.record)
        elif isinstance(event, ResultsReady):
            self.tracker.log_results(list(event.rows))
        elif isinstance(event, RunFinished):
            self.tracker.finish()
