"""Candidates per hour with and without lookahead: the real loop, a slow "LLM", side by side in one invocation.

    nice -n 10 python benchmarks/proposal_overlap.py --llm-seconds 4 --generations 6 --passes 2

Both arms run the real loop with the real sandboxed workers (two 1-thread workers, two proposals a
generation) on the tiny task (``benchmarks/openai_loop.py``'s), and the real OpenAI proposer against the
loopback server of ``tests/openai_server.py``, which answers every request after ``--llm-seconds``
(as a hosted model would) with a valid loss: a reference loss with beta scaled by a factor unique
to the request. The arms differ only in ``proposer.lookahead``:

* ``lookahead=0``: lock step; the workers wait while a generation is proposed;
* ``lookahead=1``: generation g+1 is proposed while generation g trains.

Each arm starts from a copy of one shared archive of baselines, with its workers warm, and is
timed from its first request to the end of its run. ``--passes 2`` runs the arms in the order A B,
then B A, so load drifting on a shared machine favours neither. The arms' candidates are not the
same losses (the lookahead changes what each proposal saw), so the fine-tunes per candidate are
printed too: a ratio is only fair if those are close. The default protocol (learning-rate climb,
seed race) makes a generation's evaluation long next to a short answer time; ``selection.max_seeds=1
training.lr_grid=[2e-5]`` makes it one fine-tune per candidate, where proposing weighs more.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from openai_loop import TINY_RUN, variant  # noqa: E402
from openai_server import FakeOpenAIServer, Scripted, completion  # noqa: E402

from discopop.archive import ARCHIVE_NAME, Archive  # noqa: E402
from discopop.config.compose import resolve_run  # noqa: E402
from discopop.execution.factory import make_executor  # noqa: E402
from discopop.report.display import Display  # noqa: E402
from discopop.search.loop import Loop, worker_spec  # noqa: E402

MODEL = "slow-llm"
KEY_ENV = "DISCOPOP_OVERLAP_BENCH_KEY"  # left unset: a loopback endpoint needs no key


class SlowLLM:
    """Answers each request after ``seconds`` with a valid, new loss; remembers when the first came (epoch s)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.requests = 0
        self.first: float | None = None
        self._lock = threading.Lock()

    def __call__(self, body: object) -> Scripted:
        with self._lock:
            self.requests += 1
            n = self.requests
            self.first = self.first or time.time()
        name, code = variant(n)
        text = json.dumps({"thought": f"scale beta for request {n}", "name": name, "code": code})
        reply = completion(text, model=MODEL)
        reply.delay = self.seconds
        return reply


def quiet() -> Display:
    return Display(0, console=Console(file=io.StringIO()), quiet=True)


def run_arm(overrides: list[str], run_dir: Path, generations: int, llm: SlowLLM) -> dict[str, float]:
    """Warm the arm's workers, run ``generations``, and time it from the first request to the last candidate
    finished (the workers' shutdown after it is not search time)."""
    cfg, _ = resolve_run(None, None, overrides)
    executor = make_executor(cfg.executor, worker_spec(cfg))
    executor.warm_up()
    loop = Loop(cfg, run_dir, quiet(), executor=executor)
    llm.first = None
    summary = loop.run(generations)
    loop.archive.close()
    if summary.stopped:
        sys.exit(f"the run stopped: {summary.stopped}")
    archive = Archive(run_dir / ARCHIVE_NAME, create=False)
    rows = archive.rows_after_generation(0)
    fine_tunes = archive.evolved_fine_tunes()
    archive.close()
    last = max(datetime.fromisoformat(r.finished_at).timestamp() for r in rows)
    return {"candidates": len(rows), "seconds": last - (llm.first or last), "fine_tunes": fine_tunes,
            "statuses": ", ".join(sorted({r.status for r in rows}))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-seconds", type=float, default=4.0, help="seconds the server takes per answer")
    parser.add_argument("--generations", type=int, default=6, help="generations per arm and pass")
    parser.add_argument("--passes", type=int, default=2, help="passes over the arms, alternating their order")
    parser.add_argument("overrides", nargs="*", help="config overrides for both arms")
    args = parser.parse_args()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "OPENAI_BASE_URL"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = "*"
    llm = SlowLLM(args.llm_seconds)
    server = FakeOpenAIServer(responder=llm).start()
    root = Path(tempfile.mkdtemp(prefix="proposal-overlap-"))
    common = [*TINY_RUN, "executor.workers=2", "candidates_per_generation=auto", "proposer=openai",
              f"proposer.model={MODEL}", f"proposer.base_url={server.url}", f"proposer.api_key_env={KEY_ENV}",
              *args.overrides]
    arms = {"lookahead=0": ["proposer.lookahead=0"], "lookahead=1": ["proposer.lookahead=1"]}
    try:
        print("baselines once, shared by both arms ...", flush=True)
        shared = root / "baselines"
        shared.mkdir()
        cfg, _ = resolve_run(0, None, common)
        Loop(cfg, shared, quiet()).run(0)
        totals = {name: {"candidates": 0, "seconds": 0.0, "fine_tunes": 0} for name in arms}
        for number in range(args.passes):
            for name in (list(arms) if number % 2 == 0 else list(reversed(arms))):
                run_dir = root / f"pass{number}-{name.replace('=', '')}"
                run_dir.mkdir()
                shutil.copy(shared / ARCHIVE_NAME, run_dir / ARCHIVE_NAME)
                r = run_arm([*common, *arms[name]], run_dir, args.generations, llm)
                for key in totals[name]:
                    totals[name][key] += r[key]
                print(f"pass {number + 1} {name}: {r['candidates']} candidates ({r['statuses']}) in "
                      f"{r['seconds']:.1f} s, {r['fine_tunes']} fine-tunes", flush=True)
        per_hour = {}
        for name, t in totals.items():
            per_hour[name] = t["candidates"] / t["seconds"] * 3600
            print(f"{name}: {t['candidates']} candidates in {t['seconds']:.1f} s = {per_hour[name]:.0f}/hour, "
                  f"{t['fine_tunes'] / max(1, t['candidates']):.2f} fine-tunes per candidate", flush=True)
        print(f"LLM answer {args.llm_seconds:g} s: lookahead=1 / lookahead=0 = "
              f"{per_hour['lookahead=1'] / per_hour['lookahead=0']:.2f}x candidates per hour")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
