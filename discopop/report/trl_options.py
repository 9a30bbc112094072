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
the catalogue: ``bco_pair`` (a running mean across batches) and ``aot*`` (a function of the whole batch).

Contract v2 (a loss taking token counts or the chosen NLL): the probe draws completion lengths, so the catalogue
also holds TRL's ``sigmoid_norm``, ``ipo`` (TRL length-normalises it: ``proposals/v2/ipo_norm.py``; the paper's
summed ``ipo`` differs from it on any answer longer than one token, so it is not claimed as TRL's) and ``sft`` (the
chosen answers' token-mean NLL: RPO is ``["sigmoid", "sft"]``),
and a reference-free loss may be TRL's ``CPOTrainer`` at ``loss_type="simpo"``: SimPO with its target margin
``simpo_gamma`` read off the gradients (each rejected answer's gradient gives it in closed form), plus
``cpo_alpha`` times the same NLL (CPO's cross-entropy on the chosen completions). CPO has no weight on its SimPO
term, so only a weight of exactly 1 is claimed.

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

from discopop.contract.checks import behaviour_gradients, behaviour_inputs
from discopop.contract.inputs import V1_INPUTS
from discopop.contract.losses import load_loss
from discopop.proposers.reference import reference_candidate

# loss_type -> the proposals/ file that computes it (TRL 1.16's ``sigmoid`` ignores label_smoothing: it is DPO).
PLAIN_TERMS = {"sigmoid": "dpo", "hinge": "hinge", "nca_pair": "nca_pair", "sppo_hard": "sppo_hard",
               "apo_zero": "apo_zero", "apo_down": "apo_down"}
SMOOTHED_TERMS = {"robust": "rdpo", "exo_pair": "exo_pair"}  # at DPOConfig.label_smoothing
# contract v2 terms (they read the probe's drawn lengths); "sft" is SFT_CODE below, the rest proposals/v2/ files
V2_TERMS = {"sigmoid_norm": "sigmoid_norm", "ipo": "ipo_norm", "sft": "sft"}
CATALOGUE = (*PLAIN_TERMS, *SMOOTHED_TERMS, "discopop", *V2_TERMS)
# TRL's loss_type="sft" alone (RPO's second term; CPO's NLL): the chosen answers' token-mean NLL over the batch,
# the same value on every example. The package's own code (as a proposals/ file is), as rpo.py computes it.
SFT_CODE = '''import torch


def sft(policy_chosen_logps, policy_rejected_logps, chosen_lengths, chosen_nll, beta):
    return (chosen_nll * chosen_lengths).sum() / chosen_lengths.sum() * torch.ones_like(policy_chosen_logps)
'''
# SimPO's target margin as read off the gradients: tried at 3, 4, then 6 significant digits (a tuned constant is
# usually short); rejected answers whose gradient is this close to 0 or to its bound say little about it.
GAMMA_DIGITS = (3, 4, 6)
SIGMOID_MARGIN = 0.02
GAMMA_SPREAD = 0.01  # the interquartile range of the rows' gammas a SimPO loss stays within (relative to 1 + |gamma|)
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
    trainer: str = "DPO"  # or "CPO": trl.experimental.cpo's CPOTrainer/CPOConfig (SimPO)
    simpo_gamma: float | None = None
    cpo_alpha: float | None = None

    def config_text(self, learning_rate: float | None = None) -> str:
        """``DPOConfig(...)`` (or ``CPOConfig(...)``) as a user would write it (one loss type of weight 1: no
        ``loss_weights``)."""
        if self.trainer == "CPO":
            parts = [f"loss_type={self.loss_type[0]!r}", f"cpo_alpha={self.cpo_alpha!r}",
                     f"simpo_gamma={self.simpo_gamma!r}", f"beta={self.beta!r}"]
            if learning_rate is not None:
                parts.append(f"learning_rate={learning_rate!r}")
            return f"CPOConfig({', '.join(parts)})"
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
                "residual": self.residual, "trainer": self.trainer, "simpo_gamma": self.simpo_gamma,
                "cpo_alpha": self.cpo_alpha}


Probe = tuple[float, int, tuple[float, ...]]  # beta, seed and reference scale of the drawn behaviour probe


@lru_cache(maxsize=256)
def _term_gradient(reference: str, probe: Probe, flip_rate: float | None = None,
                   constants: tuple[tuple[str, float], ...] = ()) -> torch.Tensor:
    """Policy gradients of one catalogue term on the check's behaviour probe, flattened as the fingerprint is."""
    code = SFT_CODE if reference == "sft" else reference_candidate(reference, flip_rate,
                                                                   constants=dict(constants) or None).code
    loss = load_loss(code)
    beta, seed, scale = probe
    return behaviour_gradients(loss, beta, seed, scale)


def _bases(probe: Probe, v2: bool = True) -> list[tuple[dict[str, torch.Tensor], float | None, float | None]]:
    """(term gradients by loss_type, label_smoothing, discopop_tau) for each point of the shared-constant grid; the
    first entry has neither constant (no robust/exo_pair/discopop term). ``v2``: with the contract-v2 terms."""
    plain = {name: _term_gradient(ref, probe) for name, ref in {**PLAIN_TERMS, **(V2_TERMS if v2 else {})}.items()}
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
    """Least-squares weights and the relative residual they leave: rounded to the fewest of 3, 4 or WEIGHT_DIGITS
    significant digits that is still exact (RPO's 0.25 is printed 0.25, not 0.250001), else to WEIGHT_DIGITS."""
    matrix = torch.stack(columns, dim=1)
    solution = torch.linalg.lstsq(matrix, target.unsqueeze(1)).solution.squeeze(1)

    def rounded(digits: int) -> tuple[list[float], float]:
        weights = [float(f"{float(w):.{digits}g}") for w in solution]
        fitted = matrix @ torch.tensor(weights, dtype=torch.float64)
        return weights, float((fitted - target).norm() / target.norm())

    best = rounded(WEIGHT_DIGITS)
    if best[1] > TOLERANCE:
        return best  # no exact fit (the common case): nothing shorter to look for
    return next((fit for fit in map(rounded, (3, 4)) if fit[1] <= TOLERANCE), best)


def _needs(combo: tuple[str, ...]) -> tuple[bool, bool]:
    return any(t in SMOOTHED_TERMS for t in combo), "discopop" in combo


def match_trl(checks: Mapping[str, Any] | None, inputs: tuple[str, ...] | None = None) -> TrlOptions | None:
    """The sparsest exact TRL combination for an archived check report (``metrics["checks"]``), or None.

    None also where the report cannot say: no fingerprint, or one archived before its scale was recorded.
    ``inputs``: the tensor inputs the loss declares, where the caller knows them (``losses.signature_inputs``): a
    four-input loss's gradients cannot depend on lengths, so the v2 terms and CPO are not tried for it (about 3x
    faster where nothing matches).
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
    v2 = inputs is None or tuple(inputs) != V1_INPUTS
    grids = _bases((float(beta), seed, tuple(float(v) for v in ref_scale)), v2)
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
    return _match_simpo(target, (float(beta), seed, tuple(float(v) for v in ref_scale))) if v2 else None


def _match_simpo(target: torch.Tensor, probe: Probe) -> TrlOptions | None:
    """TRL's CPOTrainer at ``loss_type="simpo"`` (plus ``cpo_alpha`` times the chosen NLL), or None.

    SimPO's gradient on a rejected answer is ``beta / |y_r| * sigmoid(gamma - beta * m)`` (m the difference of
    the average log-probs), and CPO's NLL does not reach rejected answers, so each rejected row of the target
    gives gamma in closed form; their median, rounded, is then verified like every other match.
    """
    beta, seed, scale = probe
    drawn = behaviour_inputs(beta, seed=seed, scale=scale)
    if drawn.lengths is None:
        return None
    grid, n = drawn.grid, int(drawn.grid.shape[0])
    pol_c, pol_r = (t[grid].double() for t in drawn.inputs[:2])
    len_c, len_r = (t[grid].double() for t in drawn.lengths)
    margin = pol_c / len_c - pol_r / len_r
    share = target[n:] * len_r / beta
    usable = (share > SIGMOID_MARGIN) & (share < 1.0 - SIGMOID_MARGIN)
    if int(usable.sum()) < 3:
        return None
    gammas = beta * margin[usable] + torch.logit(share[usable])
    quartiles = torch.quantile(gammas, torch.tensor([0.25, 0.5, 0.75], dtype=gammas.dtype))
    low, estimate, high = (float(q) for q in quartiles)
    if high - low > GAMMA_SPREAD * (1.0 + abs(estimate)):
        return None  # the rows disagree on gamma: not SimPO (and no need to compute its gradients to say so)
    sft = _term_gradient("sft", probe)
    for digits in GAMMA_DIGITS:
        gamma = float(f"{estimate:.{digits}g}")
        simpo = _term_gradient("simpo", probe, constants=(("GAMMA", gamma),))
        for columns in ([simpo], [simpo, sft]):
            weights, residual = _fit(target, columns)
            if residual <= TOLERANCE and weights[0] == 1.0 and all(w != 0.0 for w in weights):
                alpha = weights[1] if len(weights) > 1 else 0.0
                return TrlOptions(("simpo",), (1.0,), beta, residual=residual, trainer="CPO", simpo_gamma=gamma,
                                  cpo_alpha=alpha)
    return None
