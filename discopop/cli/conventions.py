"""The conventions hydra and TRL users bring: ``--cfg job``, ``-m`` sweeps, a settings listing, ``--version``.

(``--config-dir``/``--config-name`` and ``--info`` are hydra's own machinery: ``config.search_path`` and
``config.compose.hydra_info``.)

``discover`` composes its config with hydra's compose API (``config/compose.py``) rather than ``@hydra.main``,
so these are provided here, each one small: a sweep is expanded with hydra's own override parser (so
``seed=1,2``, ``seed=range(3)`` and ``training.beta=choice(0.1,0.5)`` mean what they mean in hydra) and run
as consecutive ordinary runs, one run directory each under one sweep directory.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import textwrap
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from discopop.config import ConfigError
from discopop.config.catalogue import Entry, matching
from discopop.config.compose import resolve_run

__all__ = ["SweepJob", "config_yaml", "expand_sweep", "quote", "run_sweep", "settings_lines", "version"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def version() -> str:
    """The installed distribution's version (the package's own where it is not installed)."""
    try:
        return metadata.version("discopop")
    except metadata.PackageNotFoundError:
        import discopop  # lazy: only reached from a source tree that was never installed

        return discopop.__version__


def settings_lines(prefix: str | None = None, width: int = 80) -> list[str]:
    """``key = default`` then the help, indented and wrapped to ``width``, one section per group/schema."""
    found: list[Entry] = matching(prefix)
    if not found:
        raise ConfigError(f"no setting starts with {prefix!r} (discopop settings lists them all)")
    lines = ["Defaults as declared; a preset (task=addition, training=diagnostic) may change",
             "some of them:",
             "`discover --cfg job [overrides]` prints the resolved values."]
    section = None
    for entry in found:
        if entry.section != section:
            section = entry.section
            lines += ["", f"[{section}]"]
        lines.append(f"{entry.key} = {entry.default}")
        lines += textwrap.wrap(entry.help, width=width, initial_indent="    ", subsequent_indent="    ") or []
    return lines


class SweepJob:
    """One run of a sweep: its overrides (the sweep's values filled in) and a directory name naming them."""

    def __init__(self, number: int, overrides: list[str], chosen: list[tuple[str, str]]):
        self.number = number
        self.overrides = overrides
        self.label = f"{number}_" + (_UNSAFE.sub("_", ",".join(f"{k}={v}" for k, v in chosen)) or "run")


def quote(value: str) -> str:
    """``value`` as a quoted hydra override value (a path may hold ``=``, spaces or quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand_sweep(overrides: Iterable[str]) -> list[SweepJob]:
    """The cartesian product of the sweep overrides (``seed=1,2``), in hydra's order (the first varies slowest)."""
    # lazy: hydra's grammar (antlr) only where a sweep is expanded
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = list(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    axes: list[list[tuple[str, str]]] = []
    for item in parsed:
        if item.is_sweep_override():
            prefix = item.get_key_element()
            axes.append([(prefix, value) for value in item.sweep_string_iterator()])
        else:
            axes.append([(item.input_line, "")])
    jobs = []
    for number, combo in enumerate(itertools.product(*axes)):
        lines = [key if value == "" else f"{key}={value}" for key, value in combo]
        chosen = [(k.lstrip("+~"), v) for k, v in combo if v != ""]
        jobs.append(SweepJob(number, lines, chosen))
    if not any(item.is_sweep_override() for item in parsed):
        raise ConfigError("-m/--multirun needs a sweep, e.g. seed=1,2,3 or training.beta=0.1,0.5")
    return jobs


def sweep_dir(overrides: list[str]) -> tuple[Path | None, list[str]]:
    """(the sweep directory a ``hydra.run.dir=`` override names, if any; the overrides without it)."""
    rest, base = [], None
    for line in overrides:
        if line.split("=", 1)[0] == "hydra.run.dir":
            base = Path(line.split("=", 1)[1].strip("'\""))
        else:
            rest.append(line)
    return base, rest


def run_sweep(args: argparse.Namespace, run_one: Callable[..., int], fail: Callable[[str, str], int]) -> int:
    """``discover -m seed=1,2 ...``: every job is checked before the first one trains, then run in turn.

    ``run_one(args, settings, run_dir, overrides)`` runs one job (``main._discover``); ``fail`` prints one line."""
    if args.resume is not None:
        return fail("discover", "-m/--multirun starts new runs; resume each of a sweep's runs with "
                                 "discover --resume SWEEP_DIR/N_...")
    sources = (args.config, getattr(args, "config_dir", None), getattr(args, "config_name", None))
    try:
        base, overrides = sweep_dir(args.overrides)
        jobs = expand_sweep(overrides)
        if base is None:  # hydra's default run directory (runs/<time>) becomes the sweep directory
            base = Path(resolve_run(args.generations, None, jobs[0].overrides, *sources)[1])
        planned = []
        for job in jobs:
            job.overrides.append(f"hydra.run.dir={quote(str(base / job.label))}")
            planned.append((job, *resolve_run(args.generations, None, job.overrides, *sources)))
    except ConfigError as err:
        return fail("discover", str(err))
    for job, cfg, run_dir in planned:
        if args.cfg:
            print(f"# job {job.number}: {run_dir}")
            sys.stdout.write(config_yaml(cfg))
            continue
        print(f"sweep job {job.number + 1}/{len(planned)}: {' '.join(job.overrides[:-1])}")
        code = run_one(args, cfg, run_dir, job.overrides)
        if code != 0:
            left = len(planned) - job.number - 1
            print(f"sweep stopped at job {job.number + 1}/{len(planned)} (exit {code}); {left} job(s) not started",
                  file=sys.stderr)
            return code
    if not args.cfg:
        print(f"sweep done: {len(planned)} runs under {base}")
    return 0


def config_yaml(cfg: Any) -> str:
    """The resolved settings as the run directory records them (``.hydra/config.yaml``)."""
    # lazy: hydra/omegaconf only where a config is shown
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))
