"""hydra's config search path for ``discover``: the package's ``conf/``, plus ``--config-dir DIR`` as hydra adds it.

A hydra user's ``--config-dir DIR`` makes DIR's files findable: a primary config named by ``--config-name``
(which may extend the package's, ``defaults: [config, _self_]``) and group options (``DIR/task/my_task.yaml``,
picked by ``task=my_task``). hydra's own command line puts DIR after the application's config directory and
before the structured schemas, so a file in DIR adds an option and never shadows a packaged one of the same
name; this does the same. ``hydra.searchpath=[...]``, hydra's other way, cannot hold the primary config (it is
read after the primary config is loaded), which is why the search path is built here, as hydra's command line
builds it, from hydra's own search-path helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from discopop.config.base import ConfigError

JOB_NAME = "discover"


def config_dir_path(config_dir: str | Path | None) -> Path | None:
    """The absolute ``--config-dir``, or a one-line ``ConfigError`` when it is not a directory."""
    if config_dir is None:
        return None
    path = Path(config_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--config-dir {config_dir}: no such directory")
    return path


@contextmanager
def hydra_session(conf_dir: Path, config_dir: str | Path | None = None) -> Iterator[Any]:
    """hydra initialised on ``conf_dir`` (the package's), with ``config_dir`` added where hydra's ``--config-dir``
    goes; yields the ``Hydra`` object (``hydra.compose`` and ``show_info`` use it). Cleared on exit."""
    # lazy: hydra only where a config is composed; its search-path helpers are the ones hydra's own CLI uses
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    extra = config_dir_path(config_dir)
    GlobalHydra.instance().clear()
    version.setbase(None)
    search_path = create_config_search_path(str(conf_dir))
    if extra is not None:
        search_path.prepend(provider="command-line", path=f"file://{extra}",
                            anchor=SearchPathQuery(provider="schema"))
    try:
        yield Hydra.create_main_hydra2(task_name=JOB_NAME, config_search_path=search_path)
    finally:
        GlobalHydra.instance().clear()
