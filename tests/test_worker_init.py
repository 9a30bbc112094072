"""A real worker's start (``init``): it types its settings again before it builds anything.

Moved from ``tests/test_messages.py`` (unit kind), whose other tests need no process: this one starts a sandboxed
worker (a torch import, seconds), so it belongs with the sandbox tests.
"""

from __future__ import annotations

import pytest

from discopop.config import TrainingSettings
from discopop.execution.executors import WarmWorker, WorkerSpec


def test_a_worker_refuses_settings_it_cannot_read_back_in_one_line() -> None:
    """The init message's settings are typed again in the worker before it builds anything (``config.from_wire``):
    a value the main process would have refused fails the start with the key and the value."""
    worker = WarmWorker(WorkerSpec(task=None, training=TrainingSettings(beta=-1.0), kept_oracles=0))
    try:
        with pytest.raises(RuntimeError, match=r"worker failed to start: training\.beta must be > 0, got -1\.0"):
            worker.ensure_started()
    finally:
        worker.close()
