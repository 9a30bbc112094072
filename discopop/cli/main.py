"""Thin command-line entry points: ``discover`` and ``discopop check|leaderboard|export|report|evaluate|import-run``.

Bad input (unknown config group/key/value, a missing run directory, an unwritable output
directory, a loss file that does not parse) ends with one line on stderr naming what was wrong
and what is allowed, and exit status 2 (``check`` exits 1 for a rejected loss). No traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from discopop.archive import Archive, ArchiveError
from discopop.cli.conventions import config_yaml, run_sweep, settings_lines, version
from discopop.config import TrainingSettings
from discopop.config.compose import INFO_KINDS, ConfigError, create_run_dir, hydra_info, record_run, resolve_run
from discopop.execution.gpu_check import check_gpu
from discopop.text import clean

EXIT_USAGE = 2
EXIT_STOPPED = 3  # the run stopped for a cause outside the config (a key refused, an endpoint down, a budget)


def _fail(prog: str, message: str, code: int = EXIT_USAGE) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def discover(argv: list[str] | None = None) -> int:
    """``discover --generations N [--resume RUN_DIR] [key=value ...]``: run (or continue) a discovery."""
    parser = argparse.ArgumentParser(prog="discover", description="Discover preference-optimization losses.",
                                     epilog="Every setting, its default and its help: discopop settings [PREFIX].")
    parser.add_argument("--generations", type=int, help="generations to run (in total, when resuming)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="your own settings file (keys as in RUN_DIR/.hydra/config.yaml, e.g. 'training: {beta: "
                             "0.1}'; 'task: diagnostic' picks a preset); command-line overrides still win")
    parser.add_argument("--cfg", choices=["job"],
                        help="print the resolved config (as RUN_DIR/.hydra/config.yaml would record it) and exit")
    parser.add_argument("--config-dir", "-cd", metavar="DIR",
                        help="as in hydra: add DIR to the config search path (after the package's conf/), so "
                             "--config-name and group options find your files there (DIR/task/my_task.yaml: "
                             "task=my_task); a file never shadows a packaged one of the same name")
    parser.add_argument("--config-name", "-cn", metavar="NAME",
                        help="as in hydra: the primary config (default: the package's 'config'); in --config-dir, "
                             "it may extend the package's with 'defaults: [config, _self_]'")
    parser.add_argument("--info", "-i", nargs="?", const="all", choices=INFO_KINDS,
                        help="as in hydra: print the config search path, the defaults list (which file each group "
                             "came from) and the config, then exit (default: all)")
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="a sweep: one run per combination of comma-separated values (seed=1,2,3), one after "
                             "another, each in its own folder under one sweep directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own warnings and progress bars (default: RUN_DIR/libraries.log)")
    parser.add_argument("--version", action="version", version=f"%(prog)s (discopop) {version()}")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. proposer=openai training.beta=0.05")
    args = parser.parse_args(argv)
    if args.info is not None:
        return _info(args)
    if args.multirun:
        return run_sweep(args, _discover, _fail)
    try:
        cfg, run_dir = resolve_run(args.generations, args.resume, args.overrides, args.config, args.config_dir,
                                   args.config_name)
    except ConfigError as err:
        return _fail("discover", str(err))
    if args.cfg:
        sys.stdout.write(config_yaml(cfg))
        return 0
    return _discover(args, cfg, run_dir, args.overrides)


def _info(args: argparse.Namespace) -> int:
    """``discover --info [KIND]``: hydra prints what it would compose; like hydra's, alone (no run, no sweep)."""
    clash = [flag for flag, on in (("--resume", args.resume), ("--cfg", args.cfg), ("-m", args.multirun)) if on]
    if clash:
        return _fail("discover", f"--info cannot be combined with {', '.join(clash)}")
    try:
        hydra_info(args.info, list(args.overrides), args.config, args.config_dir, args.config_name)
    except ConfigError as err:
        return _fail("discover", str(err))
    return 0


def candidates_ahead(cfg: Any, run_dir: Path, resumed: bool) -> int:
    """Rows this start will decide (the progress display's count): references and proposals, less those an
    earlier start of a resumed run already decided."""
    total = len(cfg.baselines) + cfg.generations * cfg.candidates_per_generation
    if not resumed:
        return total
    earlier = Archive(run_dir / "archive.sqlite", create=False)
    try:
        return max(0, total - earlier.count_finished())
    finally:
        earlier.close()


def _discover(args: argparse.Namespace, cfg: Any, run_dir: Path, overrides: list[str]) -> int:
    """One run with resolved settings: pre-flight, lock, record, train, print the leaderboard."""
    # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
    from discopop.proposers.llm.preflight import preflight
    from discopop.proposers.stop import ProposerStop

    try:
        preflight(cfg)  # every endpoint answers before anything is written or trained
    except ProposerStop as stop:
        again = f"discover --resume {run_dir}" if args.resume else "the same command again"
        return _fail("discover", f"run stopped before training: {stop}; fix the cause, then run {again}",
                     EXIT_STOPPED)
    try:
        create_run_dir(run_dir)
    except ConfigError as err:
        return _fail("discover", str(err))
    # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
    from rich.console import Console

    from discopop.report.display import Display
    from discopop.report.terminal_board import print_leaderboard
    from discopop.report.tracking import Tracker, TrackerDisplay
    from discopop.search.events import Displays
    from discopop.search.loop import Loop, RunLocked, lock_run_dir

    console = Console(highlight=False)
    try:
        lock = lock_run_dir(run_dir)
    except (RunLocked, OSError) as err:
        return _fail("discover", str(err))
    try:
        record_run(cfg, run_dir, overrides, resumed=args.resume is not None)
    except ConfigError as err:
        lock.close()
        return _fail("discover", str(err))
    total = candidates_ahead(cfg, run_dir, resumed=args.resume is not None)
    if not args.verbose:
        # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
        from discopop.report.quiet import quiet_libraries

        quiet_libraries(run_dir)
    console.print(f"run directory: {run_dir}")
    tracker = None
    try:
        conf = cfg.confirm
        # top k, DPO, best references (with baseline_constants, 'all' counts only the named baselines: a floor)
        confirm_fine_tunes = (conf.top_k + 1 + cfg.confirmed_baselines(len(cfg.baselines))) * conf.seeds
        tracker = Tracker(cfg.wandb, run_dir, cfg.to_dict())
        with Display(total, console=console, quiet=args.quiet, confirm_fine_tunes=confirm_fine_tunes) as display:
            # the terminal and wandb hear the same events; the loop shows nothing itself
            summary = Loop(cfg, run_dir, Displays(display, TrackerDisplay(tracker))).run(cfg.generations)
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with: discover --resume {run_dir}")
        return 130
    except (ArchiveError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return _fail("discover", f"{first} (finished candidates are kept; continue with --resume {run_dir})")
    finally:
        if tracker is not None:
            tracker.finish()  # the run's RunFinished already did, unless the loop never started
        lock.close()
    archive = Archive(run_dir / "archive.sqlite", create=False)
    print_leaderboard(archive, console)
    archive.close()
    console.print(f"done in {summary.seconds / 60:.1f} min; run directory: {run_dir}")
    return 0 if summary.stopped is None else EXIT_STOPPED


def _open_archive(run_dir: str):
    path = Path(run_dir) / "archive.sqlite"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"run directory not found: {run_dir}")
    try:
        return Archive(path, create=False)
    except ArchiveError as err:
        raise ConfigError(f"{run_dir} is not a discopop run directory ({err})") from None


def _check(args: argparse.Namespace) -> int:
    # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
    from discopop.cli.check import check_file

    path = Path(args.file)
    if not path.is_file():
        return _fail("discopop check", f"no such file: {path}")
    if args.beta is not None and not args.beta > 0:
        return _fail("discopop check", f"--beta must be a positive number, got {args.beta}")
    verdict: dict[str, Any] = check_file(path, timeout=args.timeout, beta=args.beta)
    if args.json:
        print(json.dumps(verdict, indent=2))
    elif verdict["valid"]:
        print(f"{path}: valid ({'uses' if verdict.get('uses_beta') else 'IGNORES'} beta)")
        print(f"  diagnostics: {verdict['summary']}")
        trl = verdict.get("trl_config") or "not a weighted sum of TRL's loss types: use DiscoveredLossDPOTrainer"
        print(f"  in TRL: {trl}")
    if verdict.get("normalised") and not args.json:
        print("  checked as rewritten from the DiscoPOP method form to the contract form:")
        print("\n".join("    " + clean(line) for line in verdict["normalised"].splitlines()))
    if not verdict["valid"]:
        print(f"{path}: rejected by the {verdict['layer']} layer: {clean(verdict['reason'])}", file=sys.stderr)
        return 1
    return 0


def _settings(args: argparse.Namespace) -> int:
    if args.json:
        # lazy: the catalogue walks every settings dataclass; only this subcommand needs it
        from dataclasses import asdict

        from discopop.config.catalogue import matching

        print(json.dumps([asdict(e) for e in matching(args.prefix)], indent=2))
        return 0
    print("\n".join(settings_lines(args.prefix)))
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
    from discopop.report.terminal_board import leaderboard_csv, leaderboard_json, print_leaderboard

    archive = _open_archive(args.run_dir)
    try:
        if args.json:
            print(leaderboard_json(archive, args.limit))
        elif args.csv:
            sys.stdout.write(leaderboard_csv(archive, args.limit))
        else:
            print_leaderboard(archive, limit=args.limit)
    finally:
        archive.close()
    return 0


def _export(args: argparse.Namespace) -> int:
    # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
    from discopop.report.export import export_candidate, resolve_id

    archive = _open_archive(args.run_dir)
    try:
        row_id = resolve_id(archive, args.id)
        result = export_candidate(archive, row_id, Path(args.output) if args.output else None)
    finally:
        archive.close()
    if args.output:
        print(f"wrote {result} (candidate #{row_id}; checked and loaded back)")
    else:
        sys.stdout.write(str(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
    from discopop.report import write_report

    _open_archive(args.run_dir).close()
    out = write_report(Path(args.run_dir), Path(args.output) if args.output else None)
    print(f"wrote {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
    from discopop.cli.evaluate import run_evaluate

    return run_evaluate(args)


def _import_run(args: argparse.Namespace) -> int:
    # lazy: each subcommand imports only what it runs (torch, matplotlib): --help and check stay fast
    from discopop.cli.import_run import import_run

    summary = import_run(Path(args.source), Path(args.run_dir), list(args.overrides))
    print(summary)
    return 0


def _check_gpu(args: argparse.Namespace) -> int:
    found = check_gpu(args.gpu, memory_mb=args.memory_mb)
    print("\n".join(found.lines))
    return 0 if found.ok else 1


def main(argv: list[str] | None = None) -> int:
    """``discopop check|leaderboard|export|report|evaluate|import-run|check-gpu``."""
    parser = argparse.ArgumentParser(prog="discopop", description="Inspect losses and discovery runs.",
                                     epilog="A discovery run itself: discover --generations N [overrides] "
                                            "(discover --help).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("settings", help="every setting of a run with its default and help text")
    p.add_argument("prefix", nargs="?", help="only the settings under this key (e.g. training, task.pairs)")
    p.add_argument("--json", action="store_true", help="a JSON list of {key, default, help, section}")
    p.set_defaults(func=_settings)
    p = sub.add_parser("check", help="static + numeric checks of a loss file, in the sandbox")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable verdict (which layer, why)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds allowed for the numeric checks")
    default_beta = TrainingSettings().beta
    p.add_argument("--beta", type=float, default=default_beta,
                   help=f"training beta the diagnostics are measured at (default {default_beta:g}: the default "
                        "config's training.beta)")
    p.set_defaults(func=_check)
    p = sub.add_parser("leaderboard", help="best candidates of a run")
    p.add_argument("run_dir")
    p.add_argument("--limit", type=int, default=15, help="rows shown (default 15)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON document: run, beta, status counts, rows")
    form.add_argument("--csv", action="store_true", help="CSV, one row per candidate (spreadsheet-safe cells)")
    p.set_defaults(func=_leaderboard)
    p = sub.add_parser("export", help="write a candidate as a standalone loss file")
    p.add_argument("run_dir")
    p.add_argument("id", help="candidate id, or 'best': the leaderboard's top scored candidate")
    p.add_argument("-o", "--output", help="file to write (default: the file's text on stdout)")
    p.set_defaults(func=_export)
    p = sub.add_parser("report", help="self-contained HTML report of a run")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output")
    p.set_defaults(func=_report)
    p = sub.add_parser("evaluate", help="losses across tasks, betas and fresh seeds (fair lr protocol, paired stats)")
    p.add_argument("items", nargs="*", metavar="LOSS|key=value",
                   help="reference names or loss files, and hydra overrides (e.g. training.lr_grid=[1e-5,4e-5])")
    p.add_argument("--run", metavar="RUN_DIR", help="also evaluate this discovery run's best candidates")
    p.add_argument("--top-k", type=int, default=None, help="how many of --run's best candidates (default 3)")
    p.add_argument("--tasks", help="comma-separated tasks (default: sorting with --run, else addition)")
    p.add_argument("--betas", default=None,
                   help="comma-separated betas, every loss at exactly these (default: 0.01,0.05,0.1,0.5,1,2.5; with "
                        "--run, the run's training.beta, and its candidates each at the beta the run scored them at)")
    p.add_argument("--tune-lr", action="store_true",
                   help="tune --run's candidates on training.lr_grid as references are (default: each keeps the "
                        "learning rate its run chose)")
    p.add_argument("--constants", action="store_true",
                   help="also each named reference at each of its declared constants moved x3 down and up, as "
                        "references of their own (discover's baseline_constants), each also judged against the "
                        "reference at its defaults (the CSV's vs_default_* columns)")
    p.add_argument("--tune-seeds", type=int, default=1,
                   help="seeds each learning rate is trained on to choose it (and, with several betas, each loss's "
                        "own beta), on the search prompts; their mean decides (default 1: the run seed alone)")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds per loss, task and beta (default 3)")
    p.add_argument("-o", "--output", default="runs/evaluate",
                   help="output directory: results.csv, report.html and the result cache (default runs/evaluate)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the CSV and HTML from the fine-tunes already cached in the output")
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("import-run", help="archive rows from an original DiscoPOP run's output, to evaluate or resume")
    p.add_argument("source", help="the DiscoPOP output: a tests.json / conversation JSON file, or a folder of them")
    p.add_argument("run_dir", help="run directory to create (or add to); then: discover --resume RUN_DIR")
    p.add_argument("overrides", nargs="*", help="hydra overrides for a new run directory")
    p.set_defaults(func=_import_run)
    p = sub.add_parser("check-gpu", help="can a sandboxed training worker use this machine's GPU? (seconds)")
    p.add_argument("--gpu", default="0", help="which GPU, as CUDA_VISIBLE_DEVICES names it (default 0)")
    p.add_argument("--memory-mb", type=int, default=None,
                   help="the worker memory cap to check, as executor.memory_mb sets it (default: its default)")
    p.set_defaults(func=_check_gpu)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "evaluate" and not any(e.startswith("-") for e in extra):
        args.items += extra  # losses and overrides given after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ConfigError as err:
        return _fail(f"discopop {args.command}", str(err))
    except (OSError, ValueError) as err:
        return _fail(f"discopop {args.command}", str(err).splitlines()[0] if str(err) else type(err).__name__)


if __name__ == "__main__":
    sys.exit(main())
