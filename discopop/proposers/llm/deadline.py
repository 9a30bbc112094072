"""An overall deadline for one blocking HTTP request (the proposer's and the judge's).

The ``openai`` client's ``timeout`` is httpx's, which applies to each socket read, not to the request:
a server that sends one byte a second held a request with ``timeout=5`` for 98.6 s. httpx has no total
timeout, so :func:`call_within` runs the request on a daemon thread and waits at most ``seconds``. At
the deadline it calls ``on_expiry`` (the caller closes the HTTP client the request uses, which closes
its connection: the abandoned thread's next read then fails, within one byte or one read timeout) and
raises ``expired()`` in the caller, who treats it as a timeout (retried, then recorded).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The request outlived its overall deadline."""


def call_within(seconds: float, call: Callable[[], T], on_expiry: Callable[[], None],
                expired: Callable[[], BaseException] = lambda: DeadlineExceeded("deadline passed")) -> T:
    """``call()``'s result or exception, if it comes within ``seconds``; else ``on_expiry()`` and ``expired()``."""
    done = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name="http-request", daemon=True).start()
    if not done.wait(seconds):
        with suppress(Exception):  # the caller's timeout is what matters; a failed close must not hide it
            on_expiry()
        raise expired()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
