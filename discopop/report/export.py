"""``discopop export``: a discovered loss as a standalone file: a ``#`` comment header (provenance, beta, learning
rate, a TRL snippet) above the archived code, byte for byte, re-checked and re-loaded before export succeeds."""

from __future__ import annotations

import io
import json
import tempfile
import tokenize
from pathlib import Path
from typing import Any

import discopop.report.escape as escape
from discopop.archive import Archive, Row
from discopop.contract.losses import LossRejected, code_hash, decode_source, signature_inputs, static_check
from discopop.fitness import stats
from discopop.report.run import beta_of, learning_rate_of, run_beta, settings_text, tuned_beta
from discopop.report.terminal_board import leaderboard_rows
from discopop.report.trl_options import CATALOGUE, match_trl
from discopop.search.transfer_confirm import transfer_text
from discopop.status import Status
from discopop.text import one_line


def lineage(archive: Archive, row_id: int) -> list[str]:
    """Ancestor names, nearest first (breadth-first over parent ids)."""
    names, seen, frontier = [], {row_id}, list(archive.get(row_id).parent_ids)
    while frontier:
        pid = frontier.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        parent = archive.get(pid)
        if parent is not None:
            names.append(f"{parent.name} (#{parent.id})")
            frontier.extend(parent.parent_ids)
    return names


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def confirmation_text(conf: dict[str, Any] | None) -> str:
    """The fresh-seed confirmation in one line: per-seed fitness, mean ± SE, and the paired verdicts against
    DPO and the strongest baseline (``stats.describe``), so a reader of the file can weigh the claim."""
    if not conf:
        return "not confirmed on fresh seeds"
    values = ", ".join("failed" if v is None else f"{v:.4f}" for v in conf.get("fitness", []))
    text = f"fresh seeds {conf.get('seeds')}: fitness [{values}], mean ± SE {stats.mean_pm(conf)}"
    _, vs_dpo, vs_best = stats.confirmation_cells(conf)
    if vs_dpo:
        text += f"; vs DPO {vs_dpo}; vs best baseline {vs_best}"
    return text


class ExportMismatch(ValueError):
    """The file written is not exactly the archived code under a comment header, or does not load."""


def resolve_id(archive: Archive, which: str | int) -> int:
    """A candidate id, or ``best``: the leaderboard's top scored candidate (``leaderboard_rows``' ranking)."""
    if str(which).strip().lower() == "best":
        top = leaderboard_rows(archive, 1)
        if not top:
            raise ValueError(f"no scored candidate in {archive.path.parent}: nothing to export as 'best'")
        return top[0].id
    try:
        return int(which)
    except ValueError:
        raise ValueError(f"candidate must be an id or 'best', got {which!r}") from None


def trl_option_lines(row: Row, beta: float | None, lr: float | None) -> list[str]:
    """Whether TRL's own ``loss_type``/``loss_weights`` reproduce the loss at the beta it was trained at."""
    options = match_trl(row.metrics.get("checks"), signature_inputs(row.code))
    if options is not None and beta is not None and options.beta == beta:
        config = options.config_text(lr).replace("Config(", 'Config(output_dir="out", ', 1)
        lines = ["In TRL's own loss options, without this file (the same policy gradients on the check's probe at",
                 f"this beta, relative residual {options.residual:.1e}):"]
        if options.trainer == "CPO":  # SimPO: TRL's CPOTrainer, reference-free
            return [*lines, "    from trl.experimental.cpo import CPOConfig, CPOTrainer", f"    args = {config}",
                    "    trainer = CPOTrainer(model=..., args=args, train_dataset=..., processing_class=...)"]
        return [*lines, f"    args = {config}"]
    if options is not None:
        return [f"At beta {options.beta!r}, where it was checked, it equals {options.config_text()}; at the beta it",
                "was trained at this was not checked."]
    if not (row.metrics.get("checks") or {}).get("fingerprint_scale"):
        return ["Whether TRL's own loss options reproduce it was not recorded for this run (`discopop check` says)."]
    return [f"Not a weighted sum of TRL's loss types ({', '.join(CATALOGUE)}) nor CPO's simpo: use the trainer",
            "below."]


def _header(archive: Archive, row: Row, target: str) -> str:
    """Provenance and the TRL settings, as ``#`` comment lines only (so the code below stays byte-exact).

    The first two lines are fixed text: Python reads a coding cookie only there, so no untrusted text reaches them.
    """
    beta, lr = beta_of(row, run_beta(archive.path.parent)), learning_rate_of(row)
    beta_source = "the run's training.beta" if tuned_beta(row) is None else "the beta its search chose"
    beta_arg = "0.1  # not recorded: the run's training.beta" if beta is None else f"{beta!r}"
    lr_arg = "1e-06  # not recorded: the rate this loss was scored at" if lr is None else f"{lr!r}"
    conf = row.metrics.get("confirmation")
    lines = [
        "discopop export: a discovered loss. Everything below this comment header is the archived code, byte for",
        "byte: the code that was checked and scored.",
        "",
        f"run: {archive.path.parent.resolve()}",
        f"candidate: #{row.id}, generation {row.generation}, proposer {row.proposer}",
        f"name: {row.name}",
        f"fitness: {_num(row.fitness)} (reward {_num(row.metrics.get('reward'))}, KL {_num(row.metrics.get('kl'), 3)})",
        f"confirmation: {confirmation_text(conf if isinstance(conf, dict) else None)}",
        f"transfer: {transfer_text(row.metrics.get('transfer')) or 'not confirmed on held-out task variants'}",
        f"lineage: {' <- '.join(lineage(archive, row.id)) or 'none (first generation)'}",
        f"parent ids: {json.dumps(row.parent_ids)}",
        f"trained at: {settings_text(beta, lr)} ({beta_source}; the learning rate it was scored at)",
    ]
    if tuned_beta(row) is not None:  # its diagnostics (curvature, wrong-way slope) depend on beta: at the chosen one
        lines.append(f"check it at that beta: discopop check {target} --beta {beta!r}")
    if row.thought:
        lines.append(f"idea: {one_line(row.thought, 2000)}")
    lines += ["", *trl_option_lines(row, beta, lr)]
    lines += [
        "",
        "To train with it in TRL (its DPOConfig defaults to beta 0.1: pass the beta this loss was found at):",
        "    from trl import DPOConfig",
        "    from discopop import load_loss",
        "    from discopop.dpo_trainer import DiscoveredLossDPOTrainer",
        f"    args = DPOConfig(output_dir=\"out\", beta={beta_arg}, learning_rate={lr_arg})",
        f"    trainer = DiscoveredLossDPOTrainer(loss_fn=load_loss({target!r}), args=args, model=..., "
        "train_dataset=...)",
    ]
    return "".join(f"# {escape.comment(line)}".rstrip() + "\n" for line in lines) + "\n"


def export_text(archive: Archive, row_id: int, target: str = "loss.py") -> tuple[str, str]:
    """``(file text, header)`` for candidate ``row_id``: the header, then the archived code unchanged."""
    row = archive.get(row_id)
    if row is None:
        raise ValueError(f"no candidate #{row_id} in {archive.path.parent}")
    if row.status != Status.SCORED:
        raise ValueError(f"candidate #{row_id} has status {row.status}; only scored candidates are exported")
    try:
        static_check(row.code)
    except LossRejected as err:
        raise ExportMismatch(f"candidate #{row_id}'s archived code fails the static check now: {err}") from None
    header = _header(archive, row, target)
    return header + row.code, header


def verify_export(path: Path, code: str, header: str) -> None:
    """Read ``path`` back as a user's import would (bytes, cookie, BOM) and prove it is ``header`` + ``code``
    exactly, only comments above the code, with the same static verdict and code hash.

    Nothing of the file is executed here: candidate code never runs in the main process, not even its
    module body. The static check is the same one ``load_loss`` applies before it executes anything.
    """
    data = path.read_bytes()
    if data != (header + code).encode("utf-8"):
        raise ExportMismatch(f"{path}: the file written differs from the archived code")
    text = decode_source(data, str(path))
    comments = [tok for tok in tokenize.generate_tokens(io.StringIO(header).readline)
                if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.ENDMARKER)]
    if comments or not text.startswith(header) or text[len(header):] != code:
        raise ExportMismatch(f"{path}: the header is not comment lines only")
    if static_check(text) != static_check(code) or code_hash(text) != code_hash(code):
        raise ExportMismatch(f"{path}: the exported file checks differently from the archived code")


def export_candidate(archive: Archive, row_id: int, out: Path | None = None) -> Path | str:
    """Write candidate ``row_id`` as a loss file loadable with ``discopop.load_loss``; ``out=None``: return the
    text instead (for stdout), verified the same way through a temporary file.

    The file is verified (:func:`verify_export`) before this returns; a file that fails is removed.
    """
    if out is None:
        text, header = export_text(archive, row_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "loss.py"
            path.write_bytes(text.encode("utf-8"))
            verify_export(path, text[len(header):], header)
        return text
    out = Path(out)
    text, header = export_text(archive, row_id, str(out))
    out.write_bytes(text.encode("utf-8"))
    try:
        verify_export(out, text[len(header):], header)
    except (LossRejected, ExportMismatch, OSError):
        out.unlink(missing_ok=True)
        raise
    return out
