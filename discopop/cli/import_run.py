"""``discopop import-run``: the output of an original DiscoPOP run becomes archive rows.

The original DiscoPOP search (its ``launch_evo.py``) leaves two records, and either may be given:

- ``tests.json``: a JSON list of ``{"name", "code"}``, every loss it trained, in order;
- the conversation (``messages.json``, or the file passed to its ``--resume``): a JSON list of chat
  messages ``{"role", "content"}``. Each assistant message is a proposal (JSON with ``thought``,
  ``name``, ``code``); the user message after it reports ``Fitness: <score>.`` or why it failed
  (``Code not valid``, ``Training failed``, ``Evaluation failed``). The first user message lists
  the seed archive (DPO, hinge, IPO, KTO), which are our references already and are skipped.

A folder holding either or both is read too; a proposal in both is taken once, from the
conversation (which has its fitness). Each loss becomes a row with proposer ``imported``,
generation 0, its code normalised (``losses.normalise_loss``: the method form becomes the contract
form) and status ``proposed``, so ``discover --resume RUN_DIR`` evaluates it under this project's
protocol. The fitness DiscoPOP reported (an MT-Bench score on another model) is kept in
``metrics.proposer_info.reported_fitness``: it is never our fitness. A proposal whose answer cannot
be parsed, or whose code cannot be normalised, is archived ``invalid`` with the reason, so nothing
is lost; a file that is not such a record is refused with one line. Every proposal passes the same gate
as a discovery run's (``proposers.gate``: names made identifiers, thoughts cleaned, deep or huge code
refused) before it is hashed or normalised, and a new run directory that could not be filled is removed.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discopop.archive import ARCHIVE_NAME, Archive, ArchiveError
from discopop.config.compose import SAVED_CONFIG, compose_settings, create_run_dir, record_run, validate
from discopop.contract.losses import LossRejected, check_text, code_hash, normalise_loss
from discopop.proposers import gate
from discopop.proposers.base import Candidate
from discopop.proposers.llm.parsing import ProposalParseError, parse_proposal
from discopop.status import Status

PROPOSER = "imported"
_FITNESS = re.compile(r"fitness\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)", re.IGNORECASE)
_FAILURE = re.compile(r"^\s*(code not valid|training failed|evaluation failed)", re.IGNORECASE)
_NAMES = ("messages.json", "conversation.json", "tests.json")


class RecordError(ValueError):
    """The source is not a DiscoPOP run record: one line for the user."""


@dataclass
class Imported:
    """One proposal as the DiscoPOP run recorded it."""

    name: str
    code: str
    thought: str = ""
    reported_fitness: float | None = None
    reported: str | None = None  # what the run said after it: "Fitness: 7.9." or the failure's first line
    source: str = ""
    order: int = 0
    error: str | None = None  # unparseable answer
    extra: dict[str, Any] = field(default_factory=dict)


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(f"cannot read {path}: {err}") from None
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as err:
        raise RecordError(f"{path} is not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except (RecursionError, MemoryError, ValueError) as err:  # 100k nested brackets: RecursionError
        raise RecordError(f"{path} is JSON nested too deeply to read ({type(err).__name__})") from None


def _content(message: dict[str, Any]) -> str:
    """A message's text: a string, or the text parts of a list content (newer chat formats)."""
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _report(text: str) -> tuple[float | None, str | None]:
    """(fitness, first line) of the user message that answered a proposal."""
    first = text.strip().splitlines()[0][:200] if text.strip() else None
    if _FAILURE.match(text or ""):
        return None, first
    found = _FITNESS.search(text or "")
    if found:
        value = float(found.group(1))
        return (value if math.isfinite(value) and value != -1 else None), first
    return None, first


def parse_conversation(messages: list[Any], source: str) -> list[Imported]:
    """Every assistant proposal of a DiscoPOP conversation, with the fitness the next user message reported."""
    out: list[Imported] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        text = _content(message)
        reply = next((m for m in messages[i + 1:] if isinstance(m, dict) and m.get("role") == "user"), None)
        fitness, reported = _report(_content(reply)) if reply is not None else (None, None)
        try:
            name, thought, code = parse_proposal(text)
            out.append(Imported(name, code, thought, fitness, reported, source, len(out)))
        except ProposalParseError as err:
            out.append(Imported(f"unparsed_{len(out)}", text[:4000], "", fitness, reported, source, len(out),
                                error=f"unparseable proposal: {err}"))
    return out


def parse_tests(entries: list[Any], source: str) -> list[Imported]:
    """The losses of a DiscoPOP ``tests.json`` (``[{"name", "code"}]``); entries without code are skipped."""
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        code = next((entry[k] for k in ("code", "source", "loss") if isinstance(entry.get(k), str)), None)
        if not code or not code.strip():
            continue
        fitness = entry.get("fitness")
        fitness = float(fitness) if isinstance(fitness, int | float) and not isinstance(fitness, bool) else None
        out.append(Imported(str(entry.get("name") or f"test_{len(out)}")[:80], code, str(entry.get("thought") or ""),
                            fitness if fitness is not None and math.isfinite(fitness) and fitness != -1 else None,
                            None, source, len(out)))
    return out


def read_record(path: Path) -> list[Imported]:
    """The proposals of one DiscoPOP record file (format recognised from its content, not its name)."""
    data = _load_json(path)
    if isinstance(data, dict):
        data = data.get("messages") or data.get("conversation") or data.get("tests") or data
    if isinstance(data, list) and data and all(isinstance(m, dict) and "role" in m for m in data):
        return parse_conversation(data, path.name)
    if isinstance(data, list) and any(isinstance(e, dict) and isinstance(e.get("code"), str) for e in data):
        return parse_tests(data, path.name)
    raise RecordError(f"{path} is neither a DiscoPOP tests.json (a list of {{name, code}}) nor a conversation "
                       "(a list of {role, content} messages)")


def read_source(source: Path) -> list[Imported]:
    """A record file, or a folder holding messages.json / conversation.json and/or tests.json."""
    if source.is_file():
        return read_record(source)
    if not source.is_dir():
        raise RecordError(f"no such file or folder: {source}")
    files = [source / n for n in _NAMES if (source / n).is_file()]
    if not files:
        raise RecordError(f"{source} holds none of {', '.join(_NAMES)}")
    found: list[Imported] = []
    seen: set[str] = set()
    for path in files:  # the conversation first: it has the fitness
        for item in read_record(path):
            key = _hash(item)
            if key not in seen:
                seen.add(key)
                found.append(item)
    return found


def _hash(item: Imported) -> str:
    if item.error or gate.code_problem(item.code) is not None:  # never normalise what the gate refuses
        return item.code
    return code_hash(_normalised(item.code)[0])


def _normalised(code: str) -> tuple[str, str | None]:
    try:
        check_text(code)  # text Python reads other than it looks (form feeds, a utf-7 cookie) is refused here too
    except LossRejected as err:
        return code, f"the DiscoPOP code is refused: {err}"
    try:
        return normalise_loss(code), None
    except LossRejected as err:
        return code, f"cannot normalise the DiscoPOP code: {err}"
    except (RecursionError, MemoryError, ValueError) as err:
        return code, f"cannot normalise the DiscoPOP code ({type(err).__name__})"


def candidates(items: list[Imported], taken: Callable[[str], bool] = lambda name: False) -> list[Candidate]:
    """Archive candidates (proposer ``imported``), the reported facts kept as ``proposer_info``.

    Each passes the gate first (``taken``: names the archive holds); only admitted code is normalised."""
    out: list[Candidate] = []
    chosen: set[str] = set()
    for item in items:
        info = {"reported_fitness": item.reported_fitness, "reported": gate.reason_line(item.reported) or None,
                "source": gate.reason_line(item.source), "order": item.order}
        cand = gate.admit(Candidate(name=item.name, code=item.code, thought=item.thought, proposer=PROPOSER,
                                    info=info, error=item.error), lambda n: n in chosen or taken(n))
        if cand.error is None:
            code, problem = _normalised(cand.code)
            if problem is None and gate.code_problem(code) is not None:  # the rewrite grew past a limit
                code, problem = cand.code, f"{gate.PREFIX}{gate.code_problem(code)}"
            if code != cand.code:
                cand.info["original_code"] = cand.code
            cand.code, cand.error = code, problem
        chosen.add(cand.name)
        out.append(cand)
    return out


def import_run(source: Path, run_dir: Path, overrides: list[str]) -> str:
    """Add the DiscoPOP record at ``source`` to ``run_dir`` (created with ``overrides`` if new); return a summary.

    Rows whose code is already archived as imported are skipped, so importing twice adds nothing.
    """
    if gate.unprintable(str(run_dir)):
        raise RecordError(f"the run directory name {ascii(str(run_dir))[:200]} has control or unprintable characters")
    items = read_source(source)
    if not items:
        raise RecordError(f"{source} holds no proposals")
    new = not (run_dir / ARCHIVE_NAME).is_file()
    if new:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RecordError(f"{run_dir} exists and is not a discopop run directory")
        existed = run_dir.exists()
        cfg = validate(compose_settings([*overrides, f"hydra.run.dir={run_dir}"])[0])
        create_run_dir(run_dir)
        try:
            return _import_into(items, run_dir, overrides, cfg, new=True)
        except BaseException:
            _remove_new_run(run_dir, existed)
            raise
    if overrides:
        raise RecordError(f"{run_dir} is an existing run: overrides apply only to a new one "
                           "(pass them to discover --resume instead)")
    if not (run_dir / SAVED_CONFIG).is_file():
        raise RecordError(f"{run_dir} has an archive but no {SAVED_CONFIG}")
    return _import_into(items, run_dir, overrides, None, new=False)


def _remove_new_run(run_dir: Path, existed: bool) -> None:
    """Undo a new run directory an import failed to fill: what it wrote, and the folder if it made it."""
    if existed:
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink(missing_ok=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    latest = run_dir.parent / "latest"
    if latest.is_symlink() and not latest.exists():  # record_run pointed runs/latest at it
        latest.unlink(missing_ok=True)


def _import_into(items: list[Imported], run_dir: Path, overrides: list[str], cfg: Any, *, new: bool) -> str:
    """Archive ``items`` into ``run_dir`` under its lock (a new run: its config recorded first)."""
    # lazy: the search loop imports torch; only this subcommand needs it
    from discopop.search.loop import RunLocked, lock_run_dir

    try:
        lock = lock_run_dir(run_dir)
    except (RunLocked, OSError) as err:
        raise RecordError(str(err)) from None
    try:
        if new:
            record_run(cfg, run_dir, overrides, resumed=False)
        archive = Archive(run_dir / ARCHIVE_NAME)
        known = {r.code_hash for r in archive.rows_by_proposer(PROPOSER)}
        added = invalid = skipped = 0
        for cand in candidates(items, archive.has_name):
            if code_hash(cand.code) in known:
                skipped += 1
                continue
            known.add(code_hash(cand.code))
            if cand.error:
                archive.add(cand, 0, status=Status.INVALID, error=cand.error)
                invalid += 1
            else:
                archive.add(cand, 0)
                added += 1
        archive.close()
    except ArchiveError as err:
        raise RecordError(str(err)) from None
    finally:
        lock.close()
    reported = sum(1 for i in items if i.reported_fitness is not None)
    return (f"imported {added} proposal(s) into {run_dir} ({invalid} invalid, {skipped} already there; "
            f"{reported} with a reported fitness, kept as metadata); evaluate them with: "
            f"discover --resume {run_dir} --generations N")
