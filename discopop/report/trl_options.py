"""TRL's own loss options for a discovered loss, where it is exactly a weighted sum of TRL loss types.

Why: a user who already trains with ``DPOConfig(loss_type=..., loss_weights=...)`` should see how a winner relates
to what they run, and where it *is* one of TRL's combinations (evolution's crossovers often are weighted sums of
two references), train it without any discopop code.

How, without running candidate code here: the check job archives the loss's behaviour fingerprint (its per-example
policy gradients on the drawn behaviour probe, normalised), the norm it was normalised by and the probe's seed and
reference scale, so the same probe is drawn again here for the catalogue. A fine-tune depends on a loss only
through those gradients (reference log-probs are constants), so a combination of TRL's loss types whose gradients
on the same probe equal the archived ones to round-off trains the same. The catalogue here is TRL 1.16's
``loss_type`` values that are a function of one pair's four log-probs and beta, each as the ``proposals/`` file
with a parity test against TRL's own code (``tests/test_trl_loss_parity.py``); those files are the package's own
trusted code, not proposals. TRL shares one ``label_smoothing`` (robust, exo_pair) and one ``discopop_tau`` over
all terms of a combination, so the search runs over a small grid of each and keeps the sparsest exact fit. Not in
the catalogue: ``ipo``/``sigmoid_norm`` (TRL length-normalises them), ``bco_pair`` (a running mean across
batches), ``aot*`` (a function of the whole batch) and ``sft`` (needs the answer's NLL).

The claim is what was checked: equal gradients on the probe at the beta the checks ran at
(``tests/test_trl_options.py`` trains one step both ways).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from discopop.contract.checks import behaviour_gradients
from discopop.contract.losses import load_loss
from discopop.proposers.reference import reference_candidate

# loss_type -> the proposals/ file that computes it (TRL 1.16's ``sigmoid`` ignores label_smoothing: it is DPO).
PLAIN_TERMS = {"sigmoid": "dpo", "hinge": "hinge", "nca_pair": "nca_pair", "sppo_hard": "sppo_hard",
               "apo_zero": "apo_zero", "apo_down": "apo_down"}
SMOOTHED_TERMS = {"robust": "rdpo", "exo_pair": "exo_pair"}  # at DPOConfig.label_smoothing
CATALOGUE = (*PLAIN_TERMS, *SMOOTHED_TERMS, "discopop")
# The grids of TRL's shared constants searched: its defaults (0 and 0.05; exo_pair's 1e-3), the flip rates tasks and
# the tuner use, and LRML's tuned taus.
LABEL_SMOOTHING = (1e-3, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
DISCOPOP_TAU = (0.05, 0.025, 0.1, 0.15, 0.2)
MAX_TERMS = 3
# Relative residual of an exact match: the fingerprint is float32 gradients rounded to 7 decimals of a unit vector
# (about 1e-6 relative); a different loss sits orders of magnitude above this.
TOLERANCE = 2e-5
WEIGHT_DIGITS = 6


@dataclass(frozen=True)
class TrlOptions:
    """The ``DPOConfig`` fields that reproduce a loss, and how closely (relative residual on the probe)."""

    loss_type: tuple[str, ...]
    loss_weights: tuple[float, ...]
    beta: float
    label_smoothing: float | None = None
    discopop_tau: float | None = None
    residual: float = 0.0

    def config_text(self, learning_rate: float | None = None) -> str:
        """``DPOConfig(...)`` as a user would write it (one loss type of weight 1: no ``loss_weights``)."""
        if len(self.loss_type) == 1 and self.loss_weights == (1.0,):
            parts = [f"loss_type={self.loss_type[0]!r}"]
        else:
            parts = [f"loss_type={list(self.loss_type)!r}", f"loss_weights={list(self.loss_weights)!r}"]
        if self.label_smoothing is not None:
            parts.append(f"label_smoothing={self.label_smoothing!r}")
        if self.discopop_tau is not None:
            parts.append(f"discopop_tau={self.discopop_tau!r}")
        parts.append(f"beta={self.beta!r}")
        if learning_rate is not None:
            parts.append(f"learning_rate={learning_rate!r}")
        return f"DPOConfig({', '.join(parts)})"

    def as_dict(self) -> dict[str, Any]:
        return {"loss_type": list(self.loss_type), "loss_weights": list(self.loss_weights), "beta": self.beta,
                "label_smoothing": self.label_smoothing, "discopop_tau": self.discopop_tau,
                "residual": self.residual}


Probe = tuple[float, int, tuple[float, ...]]  # beta, seed and reference scale of the drawn behaviour probe


@lru_cache(maxsize=256)
def _term_gradient(reference: str, probe: Probe, flip_rate: float | None = None,
                   constants: tuple[tuple[str, float], ...] = ()) -> torch.Tensor:
    """Policy gradients of one catalogue term on the check's behaviour probe, flattened as the fingerprint is."""
    loss = load_loss(reference_candidate(reference, flip_rate, constants=dict(constants) or None).code)
    beta, seed, scale = probe
    return behaviour_gradients(loss, beta, seed, scale)


def _bases(probe: Probe) -> list[tuple[dict[str, torch.Tensor], float | None, float | None]]:
    """(term gradients by loss_type, label_smoothing, discopop_tau) for each point of the shared-constant grid; the
    first entry has neither constant (no robust/exo_pair/discopop term)."""
    plain = {name: _term_gradient(ref, probe) for name, ref in PLAIN_TERMS.items()}
    grids: list[tuple[dict[str, torch.Tensor], float | None, float | None]] = [(plain, None, None)]
    for eps, tau in itertools.product((None, *LABEL_SMOOTHING), (None, *DISCOPOP_TAU)):
        if eps is None and tau is None:
            continue
        terms = dict(plain)
        if eps is not None:
            terms["robust"] = _term_gradient("rdpo", probe, flip_rate=eps)
            terms["exo_pair"] = _term_gradient("exo_pair", probe, constants=(("EPSILON", eps),))
        if tau is not None:
            terms["discopop"] = _term_gradient("lrml", probe, constants=(("TAU", tau),))
        grids.append((terms, eps, tau))
    return grids


def _fit(target: torch.Tensor, columns: list[torch.Tensor]) -> tuple[list[float], float]:
    """Least-squares weights (rounded to WEIGHT_DIGITS significant digits) and the relative residual they leave."""
    matrix = torch.stack(columns, dim=1)
    solution = torch.linalg.lstsq(matrix, target.unsqueeze(1)).solution.squeeze(1)
    weights = [float(f"{float(w):.{WEIGHT_DIGITS}g}") for w in solution]
    fitted = matrix @ torch.tensor(weights, dtype=torch.float64)
    return weights, float((fitted - target).norm() / target.norm())


def _needs(combo: tuple[str, ...]) -> tuple[bool, bool]:
    return any(t in SMOOTHED_TERMS for t in combo), "discopop" in combo


def match_trl(checks: Mapping[str, Any] | None) -> TrlOptions | None:
    """The sparsest exact TRL combination for an archived check report (``metrics["checks"]``), or None.

    None also where the report cannot say: no fingerprint, or one archived before its scale was recorded.
    """
    if not isinstance(checks, Mapping):
        return None
    fingerprint, scale, beta = checks.get("fingerprint"), checks.get("fingerprint_scale"), checks.get("beta")
    seed, ref_scale = checks.get("probe_seed"), checks.get("probe_scale")
    if not fingerprint or not isinstance(scale, int | float) or not scale > 0 or not isinstance(beta, int | float):
        return None
    if not isinstance(seed, int) or not isinstance(ref_scale, list) or len(ref_scale) != 4:
        return None
    target = torch.tensor([float(v) for v in fingerprint], dtype=torch.float64) * float(scale)
    grids = _bases((float(beta), seed, tuple(float(v) for v in ref_scale)))
    if target.shape != next(iter(grids[0][0].values())).shape:
        return None  # measured on another probe (another version): nothing to compare with
    for size in range(1, MAX_TERMS + 1):
        exact = []
        for terms, eps, tau in grids:
            for combo in itertools.combinations(sorted(terms), size):
                smoothed, discopop = _needs(combo)
                if smoothed != (eps is not None) or discopop != (tau is not None):
                    continue  # each grid point is tried once, with the terms that use its constants
                weights, residual = _fit(target, [terms[t] for t in combo])
                if residual <= TOLERANCE and all(w != 0.0 for w in weights):
                    exact.append(TrlOptions(combo, tuple(weights), float(beta), eps, tau, residual))
        if exact:  # e.g. cDPO is sigmoid + robust at any smoothing: the one with the least cancellation
            return min(exact, key=lambda o: (sum(abs(w) for w in o.loss_weights), o.residual))
    return None
