"""Keep third-party chatter off the console: the CLI prints its own lines, libraries write to a log.

transformers, datasets and TRL warn (attention masks, deprecated arguments) and draw progress
bars (saving shards, tokenising) while a task is built or loaded in the main process. A user of
``discover`` needs none of it between the run directory line and the first candidate, but it
must not be lost either: it goes to ``RUN_DIR/libraries.log``. ``discover --verbose`` leaves
everything as the libraries do it. Worker processes' output never reaches the console anyway
(the sandbox captures it).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

LOG_NAME = "libraries.log"
# Loggers whose records are library chatter rather than discopop's own output.
_LIBRARY_LOGGERS = ("transformers", "datasets", "trl", "accelerate", "huggingface_hub", "torch", "py.warnings")


def quiet_libraries(run_dir: Path | None) -> Path | None:
    """Silence progress bars and route library warnings/logs to ``run_dir/libraries.log`` (or drop them).

    Returns the log path (``None`` when there is no run directory). Safe to call more than once.
    """
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import datasets  # lazy: the report is torch/transformers-free; only quieted where already used
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_default_handler()  # its stderr handler; ours below takes the records
    handler: logging.Handler
    path = None
    if run_dir is not None:
        path = Path(run_dir) / LOG_NAME
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    else:
        handler = logging.NullHandler()
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger
    warnings.simplefilter("default")  # once per location, as Python does, but into the log
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_discopop_quiet", False)]
        handler._discopop_quiet = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    return path
