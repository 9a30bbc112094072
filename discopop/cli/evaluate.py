"""The ``discopop evaluate`` command: parse its arguments, show progress, write the CSV and HTML.

The protocol itself is ``discopop.transfer.protocol``; the files are ``discopop.transfer.report``. Every
mistake in the input (unknown loss or task, a beta that is not a positive number, a loss that fails
the static check, an unwritable output directory) raises ``EvaluateError`` or ``ConfigError``
before any training starts, which the command line turns into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from discopop.archive import Evaluation
from discopop.config.compose import RunSettings, compose_settings, validate
from discopop.execution.factory import make_executor
from discopop.fitness.judge import with_judge
from discopop.fitness.tuning import LrProtocol
from discopop.report.escape import clean, terminal
from discopop.report.quiet import quiet_libraries
from discopop.report.run import run_beta
from discopop.search.loop import worker_spec
from discopop.tasks import label_flip_rate, load_task
from discopop.transfer.protocol import (
    CACHE_NAME,
    EvaluateError,
    LossSpec,
    ResultCache,
    RunKey,
    TransferEvaluation,
    own_beta_cells,
    resolve_losses,
)
from discopop.transfer.protocol import Progress as Callbacks
from discopop.transfer.report import (
    CSV_NAME,
    HTML_NAME,
    MARKDOWN_NAME,
    OWN_BETA_CSV_NAME,
    write_csv,
    write_html,
    write_markdown,
)

# The paper's beta sweep: what a list of losses is evaluated at when neither --betas nor --run says otherwise.
DEFAULT_BETAS = "0.01,0.05,0.1,0.5,1,2.5"


def parse_betas(text: str) -> list[float]:
    try:
        betas = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise EvaluateError(f"--betas must be comma-separated positive numbers, got {text!r}") from None
    if not betas or any(not (math.isfinite(b) and b > 0) for b in betas):
        raise EvaluateError(f"--betas must be comma-separated positive numbers, got {text!r}")
    return list(dict.fromkeys(betas))


def task_configs(tasks: list[str], overrides: list[str]) -> list[RunSettings]:
    """One validated config per task (``task=NAME`` plus the user's overrides)."""
    return [validate(compose_settings([*overrides, f"task={name}"])[0]) for name in tasks]


def executor_factory(out: Path):
    """Makes the sandboxed executor discovery uses, for one (task, beta). The task is built here first (a
    sandboxed worker may only read the task cache, not write it); a judged task's completions are graded in
    this process, with the ratings cached in ``out`` (``judge.with_judge``), as in ``discover``."""
    def make(cfg: RunSettings):
        task = load_task(cfg.task)
        return with_judge(make_executor(cfg.executor, worker_spec(cfg)), cfg.task, task, out)

    return make


def run_evaluate(args: argparse.Namespace) -> int:
    overrides = [i for i in args.items if "=" in i]
    loss_items = [i for i in args.items if "=" not in i]
    betas = parse_betas(args.betas or DEFAULT_BETAS)
    if args.seeds < 1:
        raise EvaluateError(f"--seeds must be >= 1, got {args.seeds}")
    if args.top_k is not None and args.run is None:
        raise EvaluateError("--top-k needs --run RUN_DIR")
    top_k = 3 if args.top_k is None else args.top_k
    if top_k < 1:
        raise EvaluateError(f"--top-k must be >= 1, got {top_k}")
    tasks = [t.strip() for t in (args.tasks or ("sorting" if args.run else "addition")).split(",") if t.strip()]
    if not tasks:
        raise EvaluateError("--tasks names no task")
    cfgs = task_configs(tasks, overrides)
    # Per task: cDPO, rDPO and AOT are built at the task's own flip rate, as discover builds them
    task_losses = [resolve_losses(loss_items, Path(args.run) if args.run else None, top_k if args.run else 0,
                                  constants=getattr(args, "constants", False),
                                  flip_rate=label_flip_rate(cfg.task)) for cfg in cfgs]
    per_task = [run_settings(losses, args, betas, cfgs[0].training.beta) for losses in task_losses]
    task_losses = [losses for losses, _, _ in per_task]
    _, betas, settings = per_task[0]
    losses = list({spec.hash: spec for task in task_losses for spec in task}.values())  # each loss once, in order
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EvaluateError(f"cannot write the output directory {out}: {err.strerror or err}") from None
    cache = ResultCache(out / CACHE_NAME)
    console = Console(highlight=False)
    quiet_libraries(out)
    names = terminal(", ".join(s.name for s in losses))
    console.print(f"evaluating {len(losses)} losses ({names}) on {', '.join(tasks)} "
                  f"at beta {', '.join(f'{b:g}' for b in betas)}, {args.seeds} fresh seeds; output: {out}")
    for line in settings:
        console.print(f"  {terminal(line)}")
    started = time.perf_counter()
    with _Display(console, quiet=args.quiet) as display:
        evaluation = TransferEvaluation(task_losses, cfgs, betas, args.seeds, cache, executor_factory(out),
                                        Callbacks(planned=display.planned, done=display.done),
                                        train=not args.report_only, tune_seeds=getattr(args, "tune_seeds", 1))
        try:
            cells = evaluation.run()
        except KeyboardInterrupt:
            console.print(f"interrupted; finished fine-tunes are cached in {out / CACHE_NAME}: run the same "
                          "command again to continue")
            return 130
    seconds = time.perf_counter() - started
    facts = {"losses": ", ".join(s.name for s in losses), "tasks": ", ".join(tasks),
             "betas": ", ".join(f"{b:g}" for b in betas), "fresh seeds": args.seeds,
             "learning-rate grid": ", ".join(f"{lr:g}" for lr in _grid(cfgs[0])),
             "seeds choosing each rate (search prompts)": getattr(args, "tune_seeds", 1),
             **({"settings of the run's candidates": "; ".join(settings)} if settings else {}),
             "fine-tunes run now / cached": f"{display.ran} / {display.cached}",
             "wall time of this invocation": f"{seconds / 60:.1f} min",
             "command": command_line(args)}
    own_beta = own_beta_cells(cells)  # with two or more betas: each loss at its own
    write_csv(cells, out / CSV_NAME)
    if own_beta:
        write_csv(own_beta, out / OWN_BETA_CSV_NAME)
    write_html(cells, out / HTML_NAME, facts, own_beta)
    write_markdown(cells, out / MARKDOWN_NAME, own_beta)
    cache.close()
    console.print(f"{display.ran} fine-tunes run, {display.cached} cached, {seconds / 60:.1f} min; "
                  f"wrote {out / CSV_NAME}" + (f", {out / OWN_BETA_CSV_NAME}" if own_beta else "")
                  + f" and {out / HTML_NAME}")
    return 0


def run_settings(losses: list[LossSpec], args: argparse.Namespace, betas: list[float],
                 config_beta: float) -> tuple[list[LossSpec], list[float], list[str]]:
    """Apply the user's overrides to a run's candidates' own settings; return the losses, the betas, and one line per
    candidate saying the beta and learning rate it trains at and why.

    A run's row was scored at its beta (``metrics.beta`` where the run's beta axis chose one, else the run's
    ``training.beta``) and its chosen rate; re-training it elsewhere judges a loss the run never ranked. So by
    default it keeps both, and the cells sit at the run's ``training.beta``. ``--betas`` puts every loss at exactly
    those betas; ``--tune-lr`` gives it the whole ``training.lr_grid``, as references get.
    """
    run_rows = [s for s in losses if s.beta is not None or s.learning_rate is not None]
    if not run_rows:
        return losses, betas, []
    if args.betas is None:
        default = run_beta(Path(args.run)) if args.run else None
        betas = [default if default is not None else config_beta]
        beta_note = f"{betas[0]:g} (the cells' beta: its run recorded none)"
    else:
        losses = [replace(s, beta=None) for s in losses]
        beta_note = "of each cell (--betas overrides its run's)"
    lr_note = "tuned on training.lr_grid (its run recorded none)"
    if args.tune_lr:
        losses = [replace(s, learning_rate=None) for s in losses]
        lr_note = "tuned on training.lr_grid (--tune-lr overrides its run's)"
    lines = [f"{s.name} ({s.origin}): {s.settings_text(beta_note, lr_note)}" for s in losses
             if any(s.hash == r.hash for r in run_rows)]
    return losses, betas, lines


def command_line(args: argparse.Namespace) -> str:
    """The invocation, to re-run or resume it (the same command skips what the cache holds)."""
    parts = ["discopop evaluate", *map(shlex.quote, args.items)]
    if args.run:
        parts += ["--run", shlex.quote(args.run), "--top-k", str(args.top_k or 3)]
    if args.tasks:
        parts += ["--tasks", shlex.quote(args.tasks)]
    if args.betas is not None:
        parts += ["--betas", shlex.quote(args.betas)]
    if getattr(args, "tune_lr", False):
        parts.append("--tune-lr")
    if getattr(args, "constants", False):
        parts.append("--constants")
    if getattr(args, "tune_seeds", 1) != 1:
        parts += ["--tune-seeds", str(args.tune_seeds)]
    parts += ["--seeds", str(args.seeds), "-o", shlex.quote(args.output)]
    return " ".join(parts)


def _grid(cfg: RunSettings) -> tuple[float, ...]:
    return LrProtocol.from_config(cfg.training).grid


class _Display:
    """A rich progress bar; on a non-terminal (a log file) one line per finished fine-tune instead."""

    def __init__(self, console: Console, quiet: bool):
        self.console = console
        self.lines = not console.is_terminal and not quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                 transient=True, disable=quiet or not console.is_terminal)
        self.bar = self.progress.add_task("fine-tunes", total=None)
        self.ran = 0
        self.cached = 0
        self.planned_total = 0

    def __enter__(self) -> _Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def planned(self, total: int) -> None:
        self.planned_total = total
        self.progress.update(self.bar, total=total)

    def done(self, loss: str, beta: float, task: str, key: RunKey, ev: Evaluation, cached: bool) -> None:
        if cached:
            self.cached += 1
        else:
            self.ran += 1
        # a loss's name (from a run's archive) and a fine-tune's error are untrusted: escaped for each output
        self.progress.update(self.bar, advance=1, description=terminal(f"{task} β={beta:g} {loss}"))
        if self.lines and not cached:
            result = f"fitness {ev.fitness:.4f}" if ev.ok else f"FAILED {ev.error}"
            stamp = time.strftime("%H:%M:%S")
            print(clean(f"{stamp} [{self.ran + self.cached}/{self.planned_total}] {task} beta={beta:g} {loss} "
                        f"{key.split} seed={key.seed} lr={key.learning_rate:g}: {result}"), flush=True)
