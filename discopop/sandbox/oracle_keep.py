"""Loss oracles kept for the candidates a worker served last, so a candidate pays one oracle start, not one per job.

Why: an oracle's start-up imports torch (1.3 s alone, several seconds on a busy machine), while a job of the
diagnostic tier takes a fraction of a second; with a fresh oracle per job, starting oracles was most of a run.
A candidate's check job, its fine-tunes at each rate and its race and confirmation seeds can all be served by one
oracle, because what makes a fresh oracle safe is that no *other* candidate's state reaches it.

The rules that keep that true, and keep results independent of which jobs an oracle served before:

* an oracle is keyed by the sha-256 of the exact code it was loaded with and is only ever handed to a job with
  that code: two candidates never share an oracle (a fresh one per candidate, per worker);
* it is kept only after a job that ended cleanly (the worker's reply ``ok``), while its process is alive and its
  socket silent: a job that failed, timed out, tripped a guard or broke the channel kills its oracle as before;
* each job starts with ``LOAD``, which in the oracle re-executes the candidate's module and restores the global
  RNG state the first job met (``oracle.Oracle.load``): a module-level counter or ``torch.rand_like`` gives every
  job the answers a fresh oracle would;
* at most ``size`` are kept per worker (least recently used first out, killed whole tree); the rest are killed
  when the worker closes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from discopop.sandbox import oracle_wire as wire
from discopop.sandbox.oracle_supply import OracleProcess


def code_key(code: str) -> str:
    """The key an oracle is kept under: the exact text it loads (not the normalised hash: the text is what runs)."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


class KeptOracles:
    """Up to ``size`` idle oracles, one per code key, least recently used first out (``size`` 0 keeps none)."""

    def __init__(self, size: int = 2):
        self.size = max(0, int(size))
        self._idle: OrderedDict[str, OracleProcess] = OrderedDict()
        self._lock = threading.Lock()  # the executor reads keys() from another thread to place jobs
        self.reused = 0  # jobs served by a kept oracle (for the benchmarks' split)

    def keys(self) -> set[str]:
        with self._lock:
            return set(self._idle)

    def take(self, key: str) -> OracleProcess | None:
        """The kept oracle for ``key``, removed from the keep (the caller owns it now), or None.

        One that died or spoke while idle is killed instead: it is not handed to anybody.
        """
        with self._lock:
            oracle = self._idle.pop(key, None)
        if oracle is None:
            return None
        if oracle.sock is None or not oracle.proc.alive() or wire.has_pending_data(oracle.sock):
            oracle.close()
            return None
        self.reused += 1
        return oracle

    def keep(self, key: str, oracle: OracleProcess) -> None:
        """Keep ``oracle`` (which served a clean job of ``key``'s code) for that code's next job."""
        if self.size == 0 or oracle.sock is None or not oracle.proc.alive():
            oracle.close()
            return
        with self._lock:
            gone = [old] if (old := self._idle.pop(key, None)) is not None and old is not oracle else []
            self._idle[key] = oracle
            while len(self._idle) > self.size:
                gone.append(self._idle.popitem(last=False)[1])
        for old in gone:
            old.close()

    def close(self) -> None:
        with self._lock:
            gone, self._idle = list(self._idle.values()), OrderedDict()
        for oracle in gone:
            oracle.close()
