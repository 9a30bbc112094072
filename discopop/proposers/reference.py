"""The reference losses shipped in ``proposals/`` (DPO, SLiC, IPO, LRML, ...), as candidates.

They are scored first in every run as baselines (archive rows with proposer ``reference``), and
the ``reference`` proposer replays them, which is handy for smoke tests and benchmarks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from discopop.config.references import PROPOSALS_DIR, available, known, reference_path
from discopop.proposers.base import Candidate, HistoryEntry, Proposer

__all__ = ["PROPOSALS_DIR", "TUNABLE_CONSTANTS", "ReferenceProposer", "available", "constant_variants",
           "reference_candidate", "reference_variants"]


# The references whose one constant is the label-flip rate they assume (cDPO's smoothing, rDPO's flip rate, the
# cDPO-style smoothing of TRL's AOT losses).
NOISE_CONSTANTS = {"cdpo": "LABEL_SMOOTHING", "rdpo": "FLIP_RATE", "aot": "LABEL_SMOOTHING",
                   "aot_unpaired": "LABEL_SMOOTHING"}


# The references' own shape constants that a tuner may move, and how: "weight" (a value in (0, 1), a mixing weight
# or a rate) moves in odds space, "scale" multiplicatively; both by a factor of 3 each way (DEFAULT_STEP), about the
# reach of a few of the evolution's ``tune`` steps (log-normal, sigma 0.3). Left out: beta itself (the protocol's
# beta axis, ``training.beta_grid``, tunes it for every loss), constants that only rescale the loss (PADLL's
# BASE_DECAY: Adam ignores it) or rescale beta*rho (a hinge's margin), and cDPO/rDPO's flip rate (the task's, set
# by ``reference_candidate``). DPO, IPO, hinge, KTO-pair and TRL's nca_pair, bco_pair, sppo_hard, apo_zero and
# apo_down have no constant but beta (sppo_hard's 1/2 only rescales beta). EXO's eps is the target preference
# probability's complement, TRL's label_smoothing for exo_pair (tests/test_trl_loss_parity.py).
TUNABLE_CONSTANTS: dict[str, dict[str, str]] = {
    "lrml": {"TAU": "scale"},
    "cell": {"ALPHA": "weight"},
    "pfl": {"FOCUS_SCALE": "scale"},
    "padll": {"MISMATCH_PENALTY": "weight"},
    "dbaql": {"TEMPERATURE": "scale", "SCALE": "scale"},
    "aql": {"START_QUANTILE": "weight", "QUANTILE_RATE": "weight", "SCALE": "scale"},
    "aqfl": {"QUANTILE_RATE": "weight", "DISTANCE_SCALE": "scale", "SCALE": "scale"},
    "exo_pair": {"EPSILON": "weight"},
    # contract v2 (proposals/v2/): SimPO's target margin, RPO's NLL weight, AlphaPO's reward shape and margin;
    # ORPO's lambda is its beta
    "simpo": {"GAMMA": "scale"},
    "alphapo": {"ALPHA": "scale", "GAMMA": "scale"},
    "rpo": {"ALPHA": "scale"},
}
DEFAULT_STEP = 3.0


def _constant(source: str, name: str) -> float:
    found = re.search(rf"^{name} = ([0-9.eE+-]+)$", source, flags=re.M)
    if found is None:
        raise ValueError(f"expected one '{name} = <number>' line")
    return float(found.group(1))


def _moved(value: float, kind: str, factor: float) -> float:
    """``value`` moved by ``factor``: multiplicatively for a scale, in odds space for a weight in (0, 1)."""
    if kind == "weight":
        odds = value / (1.0 - value) * factor
        return float(f"{odds / (1.0 + odds):.4g}")
    return float(f"{value * factor:.4g}")


def constant_variants(name: str, step: float = DEFAULT_STEP) -> list[dict[str, float]]:
    """The constant settings a tuner tries for reference ``name``: its defaults first, then each declared constant
    moved one step down and up with the others at their defaults (a coordinate grid: 1 + 2k settings for k
    constants). [{}] for a reference with no declared constant."""
    declared = TUNABLE_CONSTANTS.get(name, {})
    if not declared:
        return [{}]
    source = reference_path(name).read_text()
    variants: list[dict[str, float]] = [{}]
    for constant, kind in declared.items():
        value = _constant(source, constant)
        variants += [{constant: _moved(value, kind, f)} for f in (1.0 / step, step)]
    return variants


def reference_candidate(name: str, flip_rate: float | None = None,
                        constants: Mapping[str, float] | None = None) -> Candidate:
    """A reference loss as a candidate. ``flip_rate``: the task's true label-flip rate, where it is known.

    cDPO and rDPO are designed for a *known* flip rate; run at their textbook 0.1 on a task that flips
    25% or 40% of labels they are mis-tuned baselines, and a discovery that "beats" them would only
    have beaten the wrong constant. So they run at the task's rate (at 0 both are DPO exactly). The
    rewritten constant is in the code the archive keeps, so the row says what was scored.

    ``constants``: other declared constants to set (``TUNABLE_CONSTANTS``, e.g. ``{"TAU": 0.15}`` for LRML),
    rewritten the same way.
    """
    path = reference_path(name)
    if not path.is_file():
        raise ValueError(f"unknown reference loss '{name}' (available: {', '.join(known())})")
    source = path.read_text()
    constant = NOISE_CONSTANTS.get(name)
    if constant is not None and flip_rate is not None:
        if not 0.0 <= flip_rate < 0.5:
            raise ValueError(f"{name} needs a label-flip rate in [0, 0.5), got {flip_rate}")
        source, count = re.subn(rf"^{constant} = [0-9.eE+-]+$", f"{constant} = {flip_rate!r}  # the task's flip rate",
                                source, flags=re.M)
        if count != 1:
            raise ValueError(f"{name}: expected one '{constant} = <number>' line to set the flip rate")
    for constant, value in (constants or {}).items():
        if constant not in TUNABLE_CONSTANTS.get(name, {}) or not math.isfinite(float(value)):
            raise ValueError(f"{name}: {constant} is not a tunable constant or {value!r} is not a number")
        source, count = re.subn(rf"^{constant} = [0-9.eE+-]+$", f"{constant} = {float(value)!r}  # tuned",
                                source, flags=re.M)
        if count != 1:
            raise ValueError(f"{name}: expected one '{constant} = <number>' line to set it")
    doc = source.split('"""')[1].strip().splitlines()[0] if source.startswith('"""') else name
    return Candidate(name=name, code=source, thought=doc, proposer="reference")


def reference_variants(name: str, flip_rate: float | None = None) -> list[Candidate]:
    """Reference ``name`` at each of its :func:`constant_variants` but the default, as candidates of their own
    (named ``lrml_tau_0_15``), for ``baseline_constants``: scored as baselines, they give the reference's
    constants the coordinate grid a tuner would try."""
    out = []
    for variant in constant_variants(name)[1:]:
        cand = reference_candidate(name, flip_rate, constants=variant)
        # an identifier, as the proposal gate keeps it (a resumed run finds its baselines by name)
        cand.name = re.sub(r"\W", "_", name + "".join(f"_{k.lower()}_{v:g}" for k, v in variant.items()))
        out.append(cand)
    return out


class ReferenceProposer(Proposer):
    """Proposes the reference losses one after another (then nothing)."""

    name = "reference"

    def __init__(self, names: list[str] | None = None):
        self.names = list(names or available())

    def propose(self, history: list[HistoryEntry], k: int, generation: int) -> list[Candidate]:
        tried = {h.name for h in history if h.proposer == "reference"}
        todo = [n for n in self.names if n not in tried][:k]
        return [reference_candidate(n) for n in todo]
