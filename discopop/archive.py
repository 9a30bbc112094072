"""The run archive: one SQLite file per run directory, the single source of truth of a run.

Schema (a contract other tools read; see docs/DESIGN.md): table ``candidates`` with
``id, generation, parent_ids (JSON), proposer, name, thought, code, code_hash, status, error,
fitness, metrics (JSON), created_at, finished_at``. A row is inserted as ``proposed`` before any
work on it and updated once when its fate is known, each in its own transaction, so a crash loses
at most the candidate in flight (which ``--resume`` finds still ``proposed`` and runs again).
A ``run_state`` key/value table holds loop progress (generation counters, RNG state).
An ``evaluations`` table (added here, not part of the contract) keeps every training evaluation of a
candidate: seed, split, learning rate, fitness/reward/KL and the per-prompt scores, written in the
same transaction as the candidate's fate; a failed one keeps its error. Paired statistics
(``discopop.fitness.stats``) are computed from it.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from discopop.contract.diagnostics import compact
from discopop.contract.losses import code_hash
from discopop.proposers.base import Candidate, HistoryEntry
from discopop.search import seed_race
from discopop.search.behaviour_map import cell as behaviour_cell
from discopop.status import STATUSES, Status

__all__ = ["ARCHIVE_NAME", "STATUSES", "Archive", "ArchiveError", "Evaluation", "Row", "ranked"]
ARCHIVE_NAME = "archive.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    parent_ids TEXT NOT NULL DEFAULT '[]',
    proposer TEXT NOT NULL,
    name TEXT NOT NULL,
    thought TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN (STATUS_LIST)),
    error TEXT,
    fitness REAL,
    metrics TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS candidates_hash ON candidates (code_hash);
CREATE TABLE IF NOT EXISTS run_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    candidate_id INTEGER NOT NULL REFERENCES candidates (id),
    seed INTEGER NOT NULL,
    split TEXT NOT NULL,
    learning_rate REAL,
    fitness REAL,
    reward REAL,
    kl REAL,
    kl_coef REAL,
    per_prompt TEXT NOT NULL DEFAULT '[]',
    per_prompt_kl TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    created_at TEXT NOT NULL,
    greedy REAL
);
CREATE INDEX IF NOT EXISTS evaluations_candidate ON evaluations (candidate_id, split, seed);
""".replace("STATUS_LIST", ",".join(f"'{s}'" for s in STATUSES))


class ArchiveError(RuntimeError):
    """The archive cannot be opened or written; the message is one line for the user."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def feedback_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The measured results a proposer may reflect on (``HistoryEntry``'s reward ... stage), from ``metrics``."""
    train = metrics.get("train") or {}
    curve = tuple(train[k] for k in ("loss_start", "loss_mid", "loss_end") if _number(train.get(k)) is not None)
    margin = tuple(train[k] for k in ("margin_abs_q50", "margin_abs_q90") if _number(train.get(k)) is not None)
    return {"reward": _number(metrics.get("reward")), "kl": _number(metrics.get("kl")),
            "learning_rate": _number(metrics.get("learning_rate")), "loss_curve": curve if len(curve) == 3 else (),
            "margin_used": margin if len(margin) == 2 else (), "stage": str(metrics.get("stage") or "")}


@dataclass
class Row:
    """One ``candidates`` row with JSON columns decoded."""

    id: int
    generation: int
    parent_ids: list[int]
    proposer: str
    name: str
    thought: str
    code: str
    code_hash: str
    status: str
    error: str | None
    fitness: float | None
    metrics: dict[str, Any]
    created_at: str
    finished_at: str | None

    def seed_scores(self) -> seed_race.SeedScores | None:
        """Its search fitness per seed at the chosen learning rate (None unless scored)."""
        return seed_race.scores_of(self.status, self.fitness, self.metrics)

    def history_entry(self, standing: seed_race.Standing | None = None) -> HistoryEntry:
        """The row as a proposer sees it; ``standing`` (from ``Archive.standings``) adds its selection figures."""
        diagnostics = (self.metrics.get("checks") or {}).get("diagnostics")
        scores = self.seed_scores()
        return HistoryEntry(
            id=self.id, generation=self.generation, name=self.name, code=self.code, status=self.status,
            fitness=self.fitness, error=self.error, parent_ids=tuple(self.parent_ids), proposer=self.proposer,
            thought=self.thought, diagnostics=compact(diagnostics),
            fitness_mean=standing.mean if standing else None, fitness_lcb=standing.lcb if standing else None,
            fitness_seeds=scores.values if scores else (), behaviour_cell=behaviour_cell(diagnostics),
            **feedback_fields(self.metrics),
        )


@dataclass
class Evaluation:
    """One training evaluation of a candidate (a row of ``evaluations``); ``error`` set when it failed."""

    candidate_id: int
    seed: int
    split: str
    learning_rate: float | None = None
    fitness: float | None = None
    reward: float | None = None
    kl: float | None = None
    kl_coef: float = 0.0
    per_prompt: list[float] = field(default_factory=list)  # reward per prompt, in task.prompts(split) order
    per_prompt_kl: list[float] = field(default_factory=list)
    error: str | None = None
    greedy: float | None = None  # greedy accuracy beside the reward (None: judged, or archived before it existed)

    @property
    def ok(self) -> bool:
        return self.error is None and self.fitness is not None

    def per_prompt_fitness(self) -> list[float]:
        """Each prompt's share of the fitness: reward - kl_coef * KL (their mean is ``fitness``)."""
        if not self.kl_coef:
            return list(self.per_prompt)
        return [r - self.kl_coef * k for r, k in zip(self.per_prompt, self.per_prompt_kl, strict=True)]

    @classmethod
    def from_reply(cls, candidate_id: int, seed: int, split: str, data: dict[str, Any]) -> Evaluation:
        """From a worker's successful train reply."""
        return cls(candidate_id, seed, split, learning_rate=data.get("learning_rate"), fitness=data["fitness"],
                   reward=data["reward"], kl=data["kl"], kl_coef=float(data.get("kl_coef") or 0.0),
                   per_prompt=list(data.get("per_prompt", [])), per_prompt_kl=list(data.get("per_prompt_kl", [])),
                   greedy=_number(data.get("greedy")))


def ranked(rows: Iterable[Row], policy: seed_race.RacePolicy | None = None) -> list[Row]:
    """Scored rows with a finite fitness, best first by the search's lower confidence bound over their seeds
    (``seed_race``: the bound parents, the LLM's top-k and confirmation use), then by mean; ties: the older row.

    A row's ``fitness`` is its best grid point on the search seed, biased upwards by that choice; a row
    that raced has more seeds, so its bound is the fairer rank. The one ranking behind every table:
    ``discopop leaderboard`` (with the run's recorded ``policy``), the report and the notebook (with the
    default ``selection.z`` and noise prior, which decide the order only when they were overridden).
    """
    good = [r for r in rows if r.status == Status.SCORED and isinstance(r.fitness, (int, float))
            and not isinstance(r.fitness, bool) and math.isfinite(r.fitness)]
    standing = seed_race.standings(((r.id, r.seed_scores()) for r in good), policy or seed_race.RacePolicy())
    return sorted(good, key=lambda r: (-standing[r.id].lcb, -standing[r.id].mean, r.id) if r.id in standing
                  else (math.inf, math.inf, r.id))


class Archive:
    """Transactional access to ``RUN_DIR/archive.sqlite``."""

    def __init__(self, path: Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ArchiveError(f"no archive at {self.path}")
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            if create:
                self.conn.executescript(_SCHEMA)
                self._add_missing_columns()
            else:
                self.conn.execute("SELECT 1 FROM candidates LIMIT 1")
        except sqlite3.DatabaseError as err:
            raise ArchiveError(f"cannot open archive {self.path}: {err}") from None

    def _add_missing_columns(self) -> None:
        """Columns added since an archive was made (``evaluations.greedy``), so a resumed run can write them."""
        have = {r["name"] for r in self.conn.execute("PRAGMA table_info(evaluations)")}
        if "greedy" not in have:
            self.conn.execute("ALTER TABLE evaluations ADD COLUMN greedy REAL")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            raise ArchiveError(f"cannot write archive {self.path}: {err}") from None

    def add(self, candidate: Candidate, generation: int, status: str = Status.PROPOSED,
            error: str | None = None) -> int:
        """Insert a candidate (as ``proposed`` unless already decided) and return its id."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; allowed: {', '.join(STATUSES)}")
        finished = None if status == Status.PROPOSED else _now()
        metrics = {"proposer_info": candidate.info} if candidate.info else {}
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO candidates (generation, parent_ids, proposer, name, thought, code, code_hash, status,"
                " error, metrics, created_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (generation, json.dumps(candidate.parent_ids), candidate.proposer, candidate.name, candidate.thought,
                 candidate.code, code_hash(candidate.code), status, error, json.dumps(metrics), _now(), finished),
            )
            return int(cur.lastrowid)

    def finish(self, row_id: int, status: str, fitness: float | None = None, error: str | None = None,
               metrics: dict[str, Any] | None = None, evaluations: tuple[Evaluation, ...] | list[Evaluation] = (),
               ) -> None:
        """Record a candidate's fate (merging ``metrics`` into what is stored) with its training evaluations."""
        if status not in STATUSES or status == Status.PROPOSED:
            raise ValueError(f"cannot finish with status {status!r}")
        with self._tx() as conn:
            old = conn.execute("SELECT metrics FROM candidates WHERE id=?", (row_id,)).fetchone()
            merged = {**json.loads(old["metrics"] if old else "{}"), **(metrics or {})}
            conn.execute(
                "UPDATE candidates SET status=?, fitness=?, error=?, metrics=?, finished_at=? WHERE id=?",
                (status, fitness, error, json.dumps(merged), _now(), row_id),
            )
            for evaluation in evaluations:
                self._insert_evaluation(conn, evaluation)

    def add_evaluation(self, evaluation: Evaluation) -> None:
        """Store one training evaluation (e.g. a fresh-seed confirmation run) on its own."""
        with self._tx() as conn:
            self._insert_evaluation(conn, evaluation)

    @staticmethod
    def _insert_evaluation(conn: sqlite3.Connection, e: Evaluation) -> None:
        conn.execute(
            "INSERT INTO evaluations (candidate_id, seed, split, learning_rate, fitness, reward, kl, kl_coef,"
            " per_prompt, per_prompt_kl, error, created_at, greedy) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (e.candidate_id, e.seed, e.split, e.learning_rate, e.fitness, e.reward, e.kl, e.kl_coef,
             json.dumps(e.per_prompt), json.dumps(e.per_prompt_kl), e.error, _now(), e.greedy),
        )

    def evaluations(self, candidate_id: int | None = None, split: str | None = None) -> list[Evaluation]:
        """Stored training evaluations, oldest first (none for an archive written before the table existed)."""
        where, params = [], []
        if candidate_id is not None:
            where.append("candidate_id = ?")
            params.append(candidate_id)
        if split is not None:
            where.append("split = ?")
            params.append(split)
        sql = "SELECT * FROM evaluations" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        try:
            found = self.conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:  # an archive from before the evaluations table, opened read-only
            return []
        return [Evaluation(r["candidate_id"], r["seed"], r["split"], r["learning_rate"], r["fitness"], r["reward"],
                           r["kl"], r["kl_coef"] or 0.0, json.loads(r["per_prompt"]), json.loads(r["per_prompt_kl"]),
                           r["error"], r["greedy"] if "greedy" in r.keys() else None) for r in found]

    def update_metrics(self, row_id: int, metrics: dict[str, Any]) -> None:
        """Merge extra metrics (e.g. fresh-seed confirmation) into a finished row."""
        with self._tx() as conn:
            old = conn.execute("SELECT metrics FROM candidates WHERE id=?", (row_id,)).fetchone()
            merged = {**json.loads(old["metrics"]), **metrics}
            conn.execute("UPDATE candidates SET metrics=? WHERE id=?", (json.dumps(merged), row_id))

    def rows(self, where: str = "", params: tuple = ()) -> list[Row]:
        sql = "SELECT * FROM candidates" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        out = []
        for r in self.conn.execute(sql, params):
            data = dict(r)
            data["parent_ids"] = json.loads(data["parent_ids"] or "[]")
            data["metrics"] = json.loads(data["metrics"] or "{}")
            out.append(Row(**{k: data[k] for k in Row.__dataclass_fields__}))
        return out

    def get(self, row_id: int) -> Row | None:
        found = self.rows("id=?", (row_id,))
        return found[0] if found else None

    def selection_policy(self) -> seed_race.RacePolicy:
        """The run's selection policy, as the evaluator recorded it (defaults for an older archive)."""
        return seed_race.RacePolicy.from_state(self.get_state(seed_race.STATE_KEY))

    def standings(self, rows: list[Row] | None = None) -> dict[int, seed_race.Standing]:
        """Every scored row's mean, lower confidence bound and seed count (noise pooled over the run)."""
        rows = self.rows() if rows is None else rows
        return seed_race.standings(((r.id, r.seed_scores()) for r in rows), self.selection_policy())

    def history(self) -> list[HistoryEntry]:
        rows = self.rows()
        standing = self.standings(rows)
        return [r.history_entry(standing.get(r.id)) for r in rows]

    def evolved_fine_tunes(self) -> int:
        """Fine-tunes (evaluation rows) spent on proposals after the baselines: the cost side of a search."""
        return self.conn.execute("SELECT COUNT(*) FROM evaluations e JOIN candidates c ON c.id = e.candidate_id "
                                 "WHERE c.generation > 0").fetchone()[0]

    def history_as_of(self, generation: int) -> list[HistoryEntry]:
        """The history as it stood when ``generation``'s evaluation began: earlier generations with their
        results, ``generation``'s own rows still in flight (``proposed``, no results), nothing later.

        What the loop's lookahead shows a proposer asked for ``generation + 1`` meanwhile. It reads the
        same after a resume, whatever has finished since, which keeps ``--resume`` exact (the rows of
        ``generation`` are then its proposals only: its repairs are asked after the lookahead).
        """
        rows = self.rows("generation <= ?", (generation,))
        standing = self.standings([r for r in rows if r.generation < generation])
        return [r.history_entry(standing.get(r.id)) if r.generation < generation
                else replace(r, status=Status.PROPOSED, error=None, fitness=None, metrics={}).history_entry()
                for r in rows]

    def has_name(self, name: str) -> bool:
        """Whether a row already has this name (the gate renames a cleaned name that would collide)."""
        return self.conn.execute("SELECT 1 FROM candidates WHERE name = ? LIMIT 1", (name,)).fetchone() is not None

    def find_hash(self, digest: str) -> Row | None:
        found = self.rows("code_hash=? AND status NOT IN (?, ?)", (digest, Status.PROPOSED, Status.INVALID))
        return found[0] if found else None

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM run_state WHERE key=?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO run_state (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        self.conn.close()
