"""The run archive: one SQLite file per run directory, the single source of truth of a run.

It stores and reads, nothing else: rows, evaluations and run state, through named queries (no caller writes
SQL). What the rows mean to the search (the proposer's view of history, the ranking, seed standings and
behaviour cells) lives in ``discopop.search.history``, so storage imports nothing above the loss contract.

Schema (a contract other tools read; see docs/DESIGN.md): table ``candidates`` with
``id, generation, parent_ids (JSON), proposer, name, thought, code, code_hash, status, error,
fitness, metrics (JSON), created_at, finished_at``, and ``normalised``: the contract form the workers loaded
(``code`` is the text as proposed, e.g. the DiscoPOP method form; ``losses.contract_form``: "" where a rewrite
is refused, and in a row written before the column existed). A row is inserted as ``proposed`` before any
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
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from discopop.contract.losses import code_hash, contract_form
from discopop.status import STATUSES, Status

__all__ = ["ARCHIVE_NAME", "STATUSES", "Archive", "ArchiveError", "Evaluation", "NewCandidate", "Row", "TrainScores",
           "read_rows"]
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
    finished_at TEXT,
    normalised TEXT NOT NULL DEFAULT ''
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


class TrainScores(Protocol):
    """What an ``Evaluation`` keeps of a worker's train reply (``execution.messages.TrainReply`` has it): a
    structural type, so the storage layer does not import the execution layer."""

    learning_rate: float | None
    fitness: float
    reward: float
    kl: float
    kl_coef: float
    per_prompt: Sequence[float]
    per_prompt_kl: Sequence[float]
    greedy: float | None


class NewCandidate(Protocol):
    """What ``Archive.add`` stores of a proposal (``proposers.base.Candidate`` has it): a structural type, so the
    storage layer does not import the proposers."""

    name: str
    code: str
    thought: str
    parent_ids: list[int]
    proposer: str
    info: dict[str, Any]


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
    normalised: str = ""  # the contract form the workers loaded; "" where not recorded (see the module docstring)


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
    def from_reply(cls, candidate_id: int, seed: int, split: str, reply: TrainScores) -> Evaluation:
        """From a worker's successful train reply."""
        return cls(candidate_id, seed, split, learning_rate=reply.learning_rate, fitness=reply.fitness,
                   reward=reply.reward, kl=reply.kl, kl_coef=float(reply.kl_coef or 0.0),
                   per_prompt=list(reply.per_prompt), per_prompt_kl=list(reply.per_prompt_kl),
                   greedy=_number(reply.greedy))


def _row(data: dict[str, Any]) -> Row:
    """A ``candidates`` record with its JSON columns decoded (as this module writes them)."""
    data["parent_ids"] = json.loads(data["parent_ids"] or "[]")
    data["metrics"] = json.loads(data["metrics"] or "{}")
    return Row(**{k: data[k] for k in Row.__dataclass_fields__ if k in data})  # an unmigrated archive lacks some


def _json(text: Any, default: Any) -> Any:
    try:
        value = json.loads(text) if text else default
    except (TypeError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


def _ids(values: Iterable[Any]) -> list[int]:
    out = []
    for v in values:
        try:
            out.append(int(v))
        except (TypeError, ValueError):
            continue
    return out


def read_rows(path: Path) -> list[Row]:
    """Every row of the archive at ``path``, through a read-only SQLite connection, oldest first.

    Read-only so that a reader (the report) never takes a write lock on, or migrates, the archive of a live
    run; lenient, since the file may come from any version or tool: a JSON column that does not decode reads
    as empty, a parent id that is not a number is dropped.
    """
    if not path.is_file():
        raise ArchiveError(f"no archive at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            records = [dict(r) for r in conn.execute("SELECT * FROM candidates ORDER BY id")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise ArchiveError(f"cannot read archive {path}: {err}") from None
    rows = []
    for d in records:
        d["parent_ids"] = _ids(_json(d.get("parent_ids"), []))
        d["metrics"] = _json(d.get("metrics"), {})
        d.setdefault("normalised", "")  # an archive from before the column
        rows.append(Row(**{k: d.get(k) for k in Row.__dataclass_fields__}))
    return rows


class Archive:
    """Transactional access to ``RUN_DIR/archive.sqlite``."""

    def __init__(self, path: Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ArchiveError(f"no archive at {self.path}")
        try:
            self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if create:
                self._conn.executescript(_SCHEMA)
                self._add_missing_columns()
            else:
                self._conn.execute("SELECT 1 FROM candidates LIMIT 1")
        except sqlite3.DatabaseError as err:
            raise ArchiveError(f"cannot open archive {self.path}: {err}") from None

    def _add_missing_columns(self) -> None:
        """Columns added since an archive was made (``evaluations.greedy``, ``candidates.normalised``), so a resumed
        run can write them. Older rows keep "" as their normalised form: not recorded, not guessed now."""
        have = {r["name"] for r in self._conn.execute("PRAGMA table_info(evaluations)")}
        if "greedy" not in have:
            self._conn.execute("ALTER TABLE evaluations ADD COLUMN greedy REAL")
        have = {r["name"] for r in self._conn.execute("PRAGMA table_info(candidates)")}
        if "normalised" not in have:
            self._conn.execute("ALTER TABLE candidates ADD COLUMN normalised TEXT NOT NULL DEFAULT ''")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            raise ArchiveError(f"cannot write archive {self.path}: {err}") from None

    def add(self, candidate: NewCandidate, generation: int, status: str = Status.PROPOSED,
            error: str | None = None) -> int:
        """Insert a candidate (as ``proposed`` unless already decided) and return its id."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; allowed: {', '.join(STATUSES)}")
        finished = None if status == Status.PROPOSED else _now()
        metrics = {"proposer_info": candidate.info} if candidate.info else {}
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO candidates (generation, parent_ids, proposer, name, thought, code, code_hash, status,"
                " error, metrics, created_at, finished_at, normalised) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (generation, json.dumps(candidate.parent_ids), candidate.proposer, candidate.name, candidate.thought,
                 candidate.code, code_hash(candidate.code), status, error, json.dumps(metrics), _now(), finished,
                 contract_form(candidate.code)),
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
            found = self._conn.execute(sql, params).fetchall()
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

    def retire_metric(self, row_id: int, key: str, as_key: str) -> None:
        """Move ``metrics[key]`` of a row to ``metrics[as_key]`` (kept, not shown as current), e.g. a confirmation
        that a later confirmation of the same run superseded."""
        with self._tx() as conn:
            old = conn.execute("SELECT metrics FROM candidates WHERE id=?", (row_id,)).fetchone()
            metrics = json.loads(old["metrics"])
            if key not in metrics:
                return
            metrics[as_key] = metrics.pop(key)
            conn.execute("UPDATE candidates SET metrics=? WHERE id=?", (json.dumps(metrics), row_id))

    def _select(self, where: str = "", params: Sequence[Any] = ()) -> list[Row]:
        """The one raw query of ``candidates``, oldest first; only the named queries below call it."""
        sql = "SELECT * FROM candidates" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        return [_row(dict(r)) for r in self._conn.execute(sql, tuple(params))]

    def rows(self) -> list[Row]:
        """Every row, oldest first."""
        return self._select()

    def get(self, row_id: int) -> Row | None:
        found = self._select("id = ?", (row_id,))
        return found[0] if found else None

    def scored_rows(self) -> list[Row]:
        """The rows with status ``scored``."""
        return self._select("status = ?", (Status.SCORED,))

    def finished_rows(self) -> list[Row]:
        """The rows whose fate is known (every status but ``proposed``)."""
        return self._select("status != ?", (Status.PROPOSED,))

    def count_finished(self) -> int:
        """How many rows ``finished_rows`` would give."""
        return int(self._conn.execute("SELECT COUNT(*) FROM candidates WHERE status != ?",
                                      (Status.PROPOSED,)).fetchone()[0])

    def pending_rows(self, through_generation: int) -> list[Row]:
        """Rows still ``proposed`` (work not finished: a stop came first) of generations up to the one given."""
        return self._select("status = ? AND generation <= ?", (Status.PROPOSED, through_generation))

    def rows_of_generation(self, generation: int) -> list[Row]:
        return self._select("generation = ?", (generation,))

    def rows_through_generation(self, generation: int) -> list[Row]:
        """Rows of ``generation`` and every earlier one."""
        return self._select("generation <= ?", (generation,))

    def rows_after_generation(self, generation: int) -> list[Row]:
        """Rows of the generations after ``generation`` (after 0: every proposal after the baselines)."""
        return self._select("generation > ?", (generation,))

    def last_generation(self) -> int:
        """The highest generation a row has (0 for an empty archive)."""
        return int(self._conn.execute("SELECT MAX(generation) FROM candidates").fetchone()[0] or 0)

    def rows_by_proposer(self, proposer: str, *, status: str | None = None, name: str | None = None) -> list[Row]:
        """Rows ``proposer`` made, optionally only those with ``status`` and/or called ``name``."""
        where, params = ["proposer = ?"], [proposer]
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if name is not None:
            where.append("name = ?")
            params.append(name)
        return self._select(" AND ".join(where), params)

    def rows_not_by_proposer(self, proposer: str, *, status: str | None = None) -> list[Row]:
        """Rows every other proposer made, optionally only those with ``status``."""
        if status is None:
            return self._select("proposer != ?", (proposer,))
        return self._select("proposer != ? AND status = ?", (proposer, status))

    def evolved_fine_tunes(self) -> int:
        """Fine-tunes (evaluation rows) spent on proposals after the baselines: the cost side of a search."""
        return self._conn.execute("SELECT COUNT(*) FROM evaluations e JOIN candidates c ON c.id = e.candidate_id "
                                  "WHERE c.generation > 0").fetchone()[0]

    def has_name(self, name: str) -> bool:
        """Whether a row already has this name (the gate renames a cleaned name that would collide)."""
        return self._conn.execute("SELECT 1 FROM candidates WHERE name = ? LIMIT 1", (name,)).fetchone() is not None

    def find_hash(self, digest: str) -> Row | None:
        """The oldest row with this code hash that was checked (not ``proposed`` nor ``invalid``)."""
        found = self._select("code_hash = ? AND status NOT IN (?, ?)", (digest, Status.PROPOSED, Status.INVALID))
        return found[0] if found else None

    def discard_rows(self, keep: Iterable[int] = ()) -> None:
        """Delete every candidate row but ``keep``: for a benchmark's scratch archive reused across probes (so an
        earlier probe is no duplicate of the next); a run's archive is append-only and never calls this."""
        kept = tuple(keep)
        with self._tx() as conn:
            conn.execute(f"DELETE FROM candidates WHERE id NOT IN ({','.join('?' * len(kept))})", kept)

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM run_state WHERE key=?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO run_state (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        self._conn.close()
