"""Prompts for the LLM proposer, built from the archive and trimmed to a token budget.

Kept apart from the HTTP code so prompt content can be read, tested and measured on its own
(``benchmarks/prompt_size.py``). Templates are plain text files in ``discopop/prompts/`` filled
with :class:`string.Template` (``$name`` placeholders), so the JSON braces in them need no escaping.

Three prompt families: the default (a system prompt with the run's facts, then an archive prompt
whose every loss carries its measured results: :func:`reflection`), the control arm's blind prompt
(:func:`build_blind_prompt`: task and contract only) and the paper protocol's (``paper_*``: a
``{code, fitness}`` list, then fitness-only feedback turns). The contract text is shared
(``prompts/contract.txt``).

Budgeting: the history part of a request (the archive prompt, or the conversation after the
system message) never exceeds ``budget`` estimated tokens. When it would, the lowest-priority
items are dropped first: the k-th best, k-th failure and k-th recent entry rank by k, and
within one k in that order, so the best candidate is the last thing ever dropped.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from string import Template

from discopop.proposers.base import HistoryEntry
from discopop.proposers.llm.facts import FitnessFacts
from discopop.search.behaviour_map import diverse_top_k
from discopop.status import FAILED_STATUSES, Status
from discopop.text import one_line

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
MAX_THOUGHT_IN_PROMPT = 300  # chars: the idea in a sentence or two; the code says the rest
MAX_ERROR_IN_PROMPT = 300
MAX_SEEDS_SHOWN = 8
EMPTY_SECTION = "(none)"
Message = dict[str, str]


@functools.cache
def template(name: str) -> Template:
    """The prompt template ``discopop/prompts/<name>.txt``."""
    return Template((PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _counter() -> Callable[[str], int]:
    """tiktoken's count when it is installed and its vocabulary loads offline, else chars // 4."""
    try:
        import tiktoken  # lazy: tiktoken is optional (a chars/4 estimate without it)

        encoding = tiktoken.get_encoding("o200k_base")
        return lambda text: len(encoding.encode(text, disallowed_special=()))
    except Exception:  # noqa: BLE001 - not installed, or the vocabulary needs a download
        return lambda text: len(text) // 4


def estimate_tokens(text: str) -> int:
    """Estimated token count of ``text`` (about 4 characters a token for English and code)."""
    return _counter()(text)


def messages_tokens(messages: Sequence[Message]) -> int:
    """Estimated tokens of the message contents (the few tokens of per-message framing ignored)."""
    return sum(estimate_tokens(m["content"]) for m in messages)


UNKNOWN_FACTS = "- (not given: the proposer was not told this run's settings)"


def system_prompt(facts: FitnessFacts | None = None) -> str:
    """The contract and rules, with what fitness is in this run (``facts``; the loop supplies them).

    The contract is the four-input one followed by its optional v2 inputs (``prompts/contract_v2.txt``: lengths,
    the chosen NLL, reference-free), so a model can write SimPO- or RPO-style losses; the paper protocol's prompt
    keeps the paper's four-input contract alone.
    """
    contract = template("contract").template.rstrip() + "\n\n" + template("contract_v2").template.rstrip()
    return template("system").substitute(fitness_facts=facts.render() if facts is not None else UNKNOWN_FACTS,
                                         contract=contract)


def _fitness(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fitness_uncertainty(entry: HistoryEntry) -> str:
    """How sure the fitness is: every seed's score with their spread and lower bound, when the archive has them.

    ``fitness_seeds`` / ``fitness_lcb`` are optional on a history entry (the archive adds them once
    candidates are re-scored on extra seeds); without them the fitness is one seed's.
    """
    seeds = [float(v) for v in (getattr(entry, "fitness_seeds", None) or ()) if _finite(v)]
    lcb = getattr(entry, "fitness_lcb", None)
    bound = f", lower confidence bound {lcb:.4f}" if _finite(lcb) else ""
    if len(seeds) < 2:
        return f"1 seed{bound} (compare differences with the noise level in the system message)"
    mean = sum(seeds) / len(seeds)
    std = math.sqrt(sum((v - mean) ** 2 for v in seeds) / (len(seeds) - 1))
    shown = ", ".join(f"{v:.4f}" for v in seeds[:MAX_SEEDS_SHOWN]) + (", …" if len(seeds) > MAX_SEEDS_SHOWN else "")
    return f"mean {mean:.4f} ± {std:.4f} (std) over {len(seeds)} seeds: {shown}{bound}"


def reflection(entry: HistoryEntry) -> str:
    """What training measured for a scored loss, in a few lines (only what was recorded)."""
    lines = [f"Fitness: {_fitness(entry.fitness)}, {fitness_uncertainty(entry)}."]
    parts = []
    if _finite(entry.reward):
        parts.append(f"held-out reward {entry.reward:.4f}")
    if _finite(entry.kl):
        parts.append(f"KL to the reference {entry.kl:.4f} nats")
    if _finite(entry.learning_rate):
        parts.append(f"at learning rate {entry.learning_rate:g}")
    if parts:
        lines.append("Outcome: " + ", ".join(parts) + ".")
    if len(entry.loss_curve) == 3 and all(map(_finite, entry.loss_curve)):
        start, mid, end = entry.loss_curve
        change = f" ({(end - start) / abs(start):+.0%})" if start else ""
        trend = f"Training loss (mean over first / middle / last third of steps): {start:.4g} → {mid:.4g} → {end:.4g}"
        lines.append(trend + change + ".")
    if len(entry.margin_used) == 2 and all(map(_finite, entry.margin_used)):
        lines.append(f"|beta*rho| reached in the last epoch: median {entry.margin_used[0]:.3g}, "
                     f"90% below {entry.margin_used[1]:.3g} (the part of the curve training used).")
    if entry.diagnostics:
        lines.append(f"Measured behaviour (x = beta*rho): {entry.diagnostics}")
    return "\n".join(lines) + "\n"


def render_scored(entry: HistoryEntry) -> str:
    """A scored entry with its code and its results: what the model should learn from and improve on."""
    idea = f"Idea: {one_line(entry.thought, MAX_THOUGHT_IN_PROMPT)}\n" if entry.thought.strip() else ""
    return (f"### id {entry.id}: {entry.name}, fitness {_fitness(entry.fitness)} (generation {entry.generation})\n"
            f"{reflection(entry)}{idea}```python\n{entry.code.strip()}\n```\n")


def failure_reason(entry: HistoryEntry) -> str:
    """``at stage <stage>: <reason>`` on one line (the stage only where it was recorded)."""
    error = one_line(entry.error or "no reason recorded", MAX_ERROR_IN_PROMPT)
    return f"at stage {entry.stage}: {error}" if entry.stage else error


def render_failure(entry: HistoryEntry) -> str:
    """A failure in one line: the name, the stage that failed and why (its code would cost too much)."""
    return f"- id {entry.id} `{entry.name}` ({entry.status}) {failure_reason(entry)}\n"


def _is_scored(entry: HistoryEntry) -> bool:
    return entry.status == Status.SCORED and entry.fitness is not None and math.isfinite(entry.fitness)


def best_and_diverse(scored: Sequence[HistoryEntry], k: int) -> list[HistoryEntry]:
    """The k losses the prompt shows as "best": the top half by selection fitness (the lower bound over
    seeds), then the elites of other behaviour cells (``behaviour_map``), so distinct shapes are seen and
    not only variations of the leader; filled from the ranking if there are too few cells."""
    ranking = sorted(scored, key=lambda e: (-e.selection_fitness, e.id))
    best = ranking[:(k + 1) // 2]
    taken = {e.id for e in best}
    for entry in [*diverse_top_k(scored, k), *ranking]:
        if len(best) >= k:
            break
        if entry.id not in taken:
            best.append(entry)
            taken.add(entry.id)
    return best


def build_archive_prompt(history: Sequence[HistoryEntry], generation: int, budget: int, top_k: int = 5,
                         recent_k: int = 5, failures_k: int = 5,
                         batch_names: Sequence[str] = ()) -> tuple[str, list[int]]:
    """The fresh user prompt for one proposal and the ids of the best entries it shows.

    Never exceeds ``budget`` estimated tokens unless the bare template already does (the caller
    validates budgets against :func:`archive_overhead`).
    """
    scored = [e for e in history if _is_scored(e)]
    best = best_and_diverse(scored, top_k)
    best_ids = {e.id for e in best}
    recent = sorted((e for e in scored if e.id not in best_ids), key=lambda e: -e.id)[:recent_k]
    failures = sorted((e for e in history if e.status in FAILED_STATUSES), key=lambda e: -e.id)[:failures_k]
    # (priority, section, entry): see the module docstring for why this order.
    items = [((k, 0), "best", e) for k, e in enumerate(best)]
    items += [((k, 1), "failures", e) for k, e in enumerate(failures)]
    items += [((k, 2), "recent", e) for k, e in enumerate(recent)]
    items.sort(key=lambda item: item[0])
    texts = {(s, e.id): (render_failure(e) if s == "failures" else render_scored(e)) for _, s, e in items}
    note = ""
    if batch_names:
        note = ("\nAlready proposed in this generation, still being evaluated (propose something different): "
                + ", ".join(batch_names) + "\n")
    counts = {"generation": generation, "n_total": len(history), "n_scored": len(scored),
              "n_failed": sum(e.status in FAILED_STATUSES for e in history), "batch_note": note}

    def render(kept: list) -> str:
        sections = {name: [e for _, s, e in kept if s == name] for name in ("best", "recent", "failures")}
        sections["best"].sort(key=lambda e: (-e.selection_fitness, e.id))
        sections["recent"].sort(key=lambda e: -e.id)
        sections["failures"].sort(key=lambda e: -e.id)
        filled = {name: "\n".join(texts[name, e.id] for e in entries).rstrip() or EMPTY_SECTION
                  for name, entries in sections.items()}
        return template("archive_user").substitute(counts, **filled)

    left = budget - estimate_tokens(render([]))
    kept = []
    for item in items:  # greedy in priority order; a too-large item is skipped, smaller ones may fit
        cost = estimate_tokens(texts[item[1], item[2].id]) + 1
        if cost <= left:
            kept.append(item)
            left -= cost
    text = render(kept)
    while kept and estimate_tokens(text) > budget:  # token estimates are not exactly additive
        kept.pop()
        text = render(kept)
    return text, [e.id for _, s, e in kept if s == "best"]


def archive_overhead() -> int:
    """Tokens of the archive prompt with every section empty: the smallest budget that works."""
    return estimate_tokens(build_archive_prompt([], 0, 10**9, batch_names=("x" * 40,) * 4)[0])


def feedback_line(entry: HistoryEntry) -> str:
    """One result for the conversation: the fitness with what training measured, or why the candidate failed."""
    if _is_scored(entry):
        details = " ".join(reflection(entry).split("\n")[1:]).strip()
        details = details.replace("Measured behaviour (x = beta*rho):", "measured behaviour:")
        return (f"- `{entry.name}` (id {entry.id}): fitness {_fitness(entry.fitness)}, {fitness_uncertainty(entry)}"
                + (f". {details}" if details else ""))
    return f"- `{entry.name}` (id {entry.id}): {entry.status} {failure_reason(entry)}"


def build_feedback(lines: Sequence[str]) -> str:
    """The next user turn of a conversation: results since the last turn, then the next request."""
    return template("feedback").substitute(results="\n".join(lines) or "(none finished yet)")


def build_blind_prompt() -> str:
    """The user turn of ``history_mode=none``: the task alone, no archive and no results (the control arm)."""
    return template("blind_user").template.strip()


def paper_system_prompt() -> str:
    """The paper protocol's system message: the task, the contract and the JSON answer format; no run facts."""
    return template("paper_system").substitute(contract=template("contract").template.rstrip())


def paper_first_turn(history: Sequence[HistoryEntry]) -> str:
    """The paper protocol's first user turn: every scored loss so far as a JSON list of {code, fitness}."""
    scored = [{"code": e.code.strip(), "fitness": round(e.fitness, 6)} for e in history if _is_scored(e)]
    return template("paper_first").substitute(archive=json.dumps(scored, indent=1))


def paper_feedback_line(entry: HistoryEntry) -> str:
    """The paper protocol's feedback on one answer: its fitness only, or the reason its code was not used."""
    if _is_scored(entry):
        return f"Fitness: {entry.fitness:.4f}."
    return f"The code could not be used. Error: {one_line(entry.error or 'no reason recorded', MAX_ERROR_IN_PROMPT)}"


def paper_feedback(lines: Sequence[str]) -> str:
    """The next user turn of the paper protocol: the results since the last answer, then the request."""
    return template("paper_feedback").substitute(results="\n".join(lines)).strip()


def build_repair(name: str, code: str, error: str, max_code_chars: int = 8000) -> str:
    """The request to fix a proposal that failed parsing or checks, with what failed and why."""
    code = code.strip() or "(no code)"
    if len(code) > max_code_chars:
        code = code[:max_code_chars] + "\n… (truncated)"
    return template("repair").substitute(name=name, error=error.strip() or "unknown error", code=code)


def trim_conversation(messages: Sequence[Message], budget: int) -> list[Message]:
    """The system message plus the newest messages that fit ``budget`` (the newest is always kept).

    A kept history must start with a user turn, so a leading assistant message is dropped too.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = list(messages[len(system):])
    kept: list[Message] = []
    used = 0
    for message in reversed(rest):
        cost = estimate_tokens(message["content"])
        if kept and used + cost > budget:
            break
        kept.insert(0, message)
        used += cost
    while len(kept) > 1 and kept[0]["role"] != "user":
        kept.pop(0)
    return system + kept
