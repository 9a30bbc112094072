"""The LLM proposer in a real run: ``discover --generations 10 proposer=openai`` against a scripted "LLM".

    python benchmarks/openai_loop.py [--modes archive,conversation,none,paper] [--generations 10] [overrides ...]

Starts the loopback OpenAI-compatible server of ``tests/openai_server.py`` with a deterministic
script instead of a model: request n gets a 429 (Retry-After: 0) if n % 11 == 0, else a
broken-code answer (forbidden import: parses, fails the static check) if n % 7 == 0, else a
malformed answer (prose, no code) if n % 5 == 0, else a valid variant of a reference loss (its beta
scaled by a per-request factor, so few are duplicates). Token usage is reported as the estimated
tokens of what was sent and answered, so the totals track prompt growth. Then it runs ``discover``
on the tiny task once per history mode (overrides are passed through) and prints candidates by
status, repairs, retries and tokens, the prompt sent at the last generation, and, from
``benchmarks/prompt_size.py``, the prompt at generation 50 and 200 in each mode (200 generations
of real training would take too long to run here).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from openai_server import FakeOpenAIServer, Scripted, completion, error  # noqa: E402
from prompt_size import measure  # noqa: E402

from discopop.proposers.llm import prompting as P  # noqa: E402

KEY_ENV = "DISCOPOP_BENCH_KEY"
MODEL = "scripted-llm"
PROPOSALS = sorted((ROOT / "discopop" / "proposals").glob("*.py"))
# The tiny task of tests/conftest.py: seconds per candidate, so the run measures the loop, not training.
TINY_RUN = [
    "task.sft.steps=150", "task.pairs.samples_per_prompt=16", "task.sft.n_layer=1", "task.sft.n_embd=32",
    "task.sft.n_head=2",
    "task.pairs.prompts=200", "task.pairs.max_pairs=64", "task.heldout_prompts=64", "task.search_prompts=32",
    "training.batch_size=16", "training.threads=1", "baselines=[dpo,lrml]", "confirm.seeds=0",
    "wandb.mode=disabled",
]


def variant(n: int) -> tuple[str, str]:
    """(name, code): reference loss ``n % 11`` renamed, with beta scaled by a factor unique to ``n``."""
    tree = ast.parse(PROPOSALS[n % len(PROPOSALS)].read_text())
    fn = next(s for s in tree.body if isinstance(s, ast.FunctionDef) and not s.name.startswith("_"))
    fn.name = f"{fn.name}_v{n}"
    fn.body.insert(0, ast.parse(f"beta = beta * {0.5 + n / 40:.3f}").body[0])
    return fn.name, ast.unparse(tree) + "\n"


class ScriptedLLM:
    """Stands in for the server's reply queue: decides each reply from the request number alone."""

    def __init__(self, server: FakeOpenAIServer):
        self.server = server
        self.kinds: Counter[str] = Counter()

    def get_nowait(self) -> Scripted:  # the server calls this right after recording the request
        n = len(self.server.requests)
        sent = self.server.requests[-1]["json"] or {}
        prompt_tokens = P.messages_tokens(sent.get("messages", [])) + 4 * len(sent.get("messages", []))
        name, code = variant(n)
        if n % 11 == 0:
            self.kinds["429"] += 1
            return error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"Retry-After": "0"})
        if n % 7 == 0:
            self.kinds["broken code"] += 1
            code = "import numpy as np\n" + code
            text = json.dumps({"thought": "numpy has a stable logaddexp", "name": name, "code": code})
        elif n % 5 == 0:
            self.kinds["malformed"] += 1
            text = "A smoother margin should help; I would blend the logistic and exponential terms."
        else:
            self.kinds["valid"] += 1
            text = json.dumps({"thought": f"scale beta for request {n}", "name": name, "code": code})
        return completion(text, prompt_tokens=prompt_tokens, completion_tokens=P.estimate_tokens(text), model=MODEL)


def discover(run_dir: Path, server: FakeOpenAIServer, mode: str, generations: int, extra: list[str]) -> float:
    """Run the real ``discover`` entry point in a subprocess; return its wall time."""
    preset = ["proposer=openai_paper"] if mode == "paper" else ["proposer=openai", f"proposer.history_mode={mode}"]
    args = ["--generations", str(generations), "--quiet", *TINY_RUN, *preset, f"proposer.model={MODEL}",
            f"proposer.base_url={server.url}", f"proposer.api_key_env={KEY_ENV}", f"hydra.run.dir={run_dir}", *extra]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({KEY_ENV: "sk-bench-not-a-real-key", "WANDB_MODE": "disabled", "NO_PROXY": "*"})
    started = time.perf_counter()
    entry = "import sys; from discopop.cli.main import discover; sys.exit(discover())"
    out = subprocess.run([sys.executable, "-c", entry,
                          *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"discover exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - started


def report(run_dir: Path, server: FakeOpenAIServer, llm: ScriptedLLM, mode: str, generations: int,
           seconds: float) -> None:
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        rows = conn.execute("SELECT proposer, status, metrics, generation FROM candidates").fetchall()
        totals = json.loads(conn.execute("SELECT value FROM run_state WHERE key='proposer_state'").fetchone()[0])
    llm_rows = [(status, json.loads(metrics).get("proposer_info", {})) for proposer, status, metrics, _ in rows
                if proposer == "openai"]
    by_status = Counter(status for status, _ in llm_rows)
    repairs = [info for _, info in llm_rows if info.get("attempt", 0) >= 1]
    totals = totals["totals"]
    print(f"\n== history_mode={mode}: {generations} generations in {seconds:.0f} s ==")
    print(f"server replies: {dict(sorted(llm.kinds.items()))} ({len(server.requests)} requests)")
    print(f"candidates recorded: {len(llm_rows)} from the LLM "
          f"({', '.join(f'{k} {v}' for k, v in by_status.most_common())}) + "
          f"{sum(p == 'reference' for p, *_ in rows)} baselines")
    fixed = Counter(s for s, i in llm_rows if i.get("attempt", 0) >= 1)
    print(f"repairs made: {len(repairs)} ({', '.join(f'{k} {v}' for k, v in fixed.most_common())}; "
          f"{sum(i['attempt'] >= 2 for i in repairs)} of them second attempts)")
    print(f"retries: {sum(i.get('retries', 0) for _, i in llm_rows)}; failed requests: "
          f"{int(totals['failed_requests'])}; answered requests: {int(totals['requests'])}")
    print(f"tokens: prompt {int(totals['prompt_tokens'])}, completion {int(totals['completion_tokens'])}")
    last = next(r["json"] for r in reversed(server.requests)
                if r["json"] and not r["json"]["messages"][-1]["content"].startswith("Your proposal"))
    chars = sum(len(m["content"]) for m in last["messages"])
    print(f"prompt at generation {generations}: {len(last['messages'])} messages, {chars} chars, "
          f"~{P.messages_tokens(last['messages'])} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="archive,conversation",
                        help="history modes to run, comma-separated: archive, conversation, none, paper (the preset)")
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="hydra overrides passed to discover")
    args = parser.parse_args()
    modes = args.modes.split(",")
    for mode in modes:
        server = FakeOpenAIServer()
        llm = ScriptedLLM(server)
        server.script = llm  # type: ignore[assignment] - duck-typed: only get_nowait() is used
        server.start()
        try:
            with tempfile.TemporaryDirectory(prefix="discopop-openai-loop-") as tmp:
                seconds = discover(Path(tmp) / "run", server, mode, args.generations, args.overrides)
                report(Path(tmp) / "run", server, llm, mode, args.generations, seconds)
        finally:
            server.stop()
    print("\nprompt size at generation 50 and 200 (benchmarks/prompt_size.py: reference-loss histories, "
          "history_token_budget=6000; the paper preset has its own)")
    print(f"{'mode':<13}{'gen':>5}{'entries':>8}{'messages':>10}{'chars':>9}{'tokens':>8}")
    for mode in modes:
        for g in (50, 200):
            r = measure(mode, g, 6000)
            print(f"{r['mode']:<13}{g:>5}{r['entries']:>8}{r['messages']:>10}{r['chars']:>9}{r['tokens']:>8}")


if __name__ == "__main__":
    main()
