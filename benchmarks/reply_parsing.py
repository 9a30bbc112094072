"""Reply parsing on hostile answers: the old fence regex beside the linear scan that replaced it.

The old ``parsing._FENCE`` (copied below as the baseline) backtracks: at every three backticks its
``[^\\n]*\\n`` runs to the end of the text and back, so a run of n backticks costs O(n^2). The new
``parsing.fence_spans`` scans once. Timed on 40k and 80k backticks and on a 1 MB reply (backticks,
fence openings without a newline, and prose), each fence extractor alone and ``parse_proposal`` whole
(which refuses answers over ``MAX_REPLY_CHARS`` before parsing), best of ``--repeat`` runs.

    python benchmarks/reply_parsing.py [--repeat 3] [--skip-old-over 100000]
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable

from discopop.proposers.llm.parsing import MAX_REPLY_CHARS, ProposalParseError, fence_spans, parse_proposal

OLD_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def old_fences(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in OLD_FENCE.finditer(text)]


def new_fences(text: str) -> list[tuple[str, str]]:
    return [(language, body) for language, body, _, _ in fence_spans(text)]


def parse(text: str) -> None:
    try:
        parse_proposal(text)
    except ProposalParseError:
        pass


def megabyte_reply(seed: int = 0) -> str:
    """1 MB of what a hostile server might send: backtick runs, fence openings with and without a newline,
    fenced code, prose."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < 1_000_000:
        piece = rng.choice(["`" * rng.randint(3, 4000), "```python " + "x" * rng.randint(1, 200), "just prose. ",
                            "\n", "```py\ndef f():\n    return 1\n```\n", "`" * rng.randint(3, 400) + "\n"])
        parts.append(piece)
        size += len(piece)
    return "".join(parts)[:1_000_000]


def best(fn: Callable[[str], object], text: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-old-over", type=int, default=100_000,
                        help="time the old regex only on inputs up to this many characters (it is quadratic)")
    args = parser.parse_args()
    cases = {"40k backticks": "`" * 40_000, "80k backticks": "`" * 80_000, "1 MB reply": megabyte_reply()}
    print(f"parse_proposal refuses answers over {MAX_REPLY_CHARS:,} characters before parsing")
    print(f"{'input':<16}{'old regex s':>13}{'new scan s':>13}{'ratio':>10}{'parse_proposal s':>19}")
    for name, text in cases.items():
        new = best(new_fences, text, args.repeat)
        whole = best(parse, text, args.repeat)
        if len(text) <= args.skip_old_over:
            old = best(old_fences, text, 1)
            print(f"{name:<16}{old:>13.3f}{new:>13.6f}{old / max(new, 1e-9):>10.0f}{whole:>19.6f}")
        else:
            print(f"{name:<16}{'(skipped)':>13}{new:>13.6f}{'':>10}{whole:>19.6f}")


if __name__ == "__main__":
    main()
