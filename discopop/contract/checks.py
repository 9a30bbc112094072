"""Numeric unit checks of a loss function, run on random inputs over realistic ranges.

These run *inside* a sandboxed worker (never the main process) on a loaded candidate. They are
ordered cheap to costly and stop at the first failure, returning a one-line reason. Inputs mimic
what DPO training feeds a loss: summed sequence log-probabilities (tens of nats, negative) with
policy/reference log-ratios of a few nats, plus a "large" set (hundreds of nats, ratios of tens)
that catches losses which are fine on small inputs and overflow on large ones.

Checks judge, they do not guess: a loss is rejected only for what makes training impossible or
unsafe (wrong type or shape, non-finite values or gradients, no gradient, nondeterminism, mutated
inputs). How the loss pushes (its slope at rho = 0, at the ends of the range training reaches,
whether it ever pushes the wrong way) is *measured* at the training beta and recorded as
``diagnostics``: regularised variants of DPO legitimately push back where the policy drifted far.

``fingerprint`` is the loss's training behaviour: the L2-normalised gradient of the batch-mean loss
with respect to the policy log-probs on a fixed probe batch. Adam ignores a positive scale and
an added constant, so two losses with the same fingerprint train the same (see ``evaluate.py``).

``fn`` is only ever called with the four tensors and a float beta, and differentiated to first
order (``torch.autograd.grad`` without ``create_graph``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from discopop.config.training import TrainingSettings

BATCH = 16
BETAS = (0.1, 0.5)  # every check runs at these and at the training beta: a loss must be sound across them
# The beta a call that names none measures at: the default config's training.beta, read from the settings so the
# two cannot drift apart (a separate 0.1 here once measured every direct call at a beta no run trained at). A run's
# jobs pass the run's own beta (``execution.worker``), ``discopop check --beta`` the user's.
DEFAULT_BETA = TrainingSettings().beta
TOL = 1e-5


class CheckFailed(Exception):
    """A numeric check failed; ``str(err)`` is one line saying which and why."""


@dataclass
class CheckReport:
    """What the checks measured; stored in the archive's ``metrics`` as ``checks``."""

    uses_beta: bool = True
    probe: list[float] = field(default_factory=list)
    # loss(x) and d loss/dx on CURVE_X (x = beta * rho), drawn by the report without running the code again
    curve: dict[str, list[float]] = field(default_factory=dict)
    beta: float = DEFAULT_BETA  # the training beta the fingerprint and diagnostics were measured at
    fingerprint: list[float] = field(default_factory=list)
    # the norm the fingerprint was divided by: with it the raw gradients are known (report/trl_options.py)
    fingerprint_scale: float = 0.0
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"uses_beta": self.uses_beta, "probe": self.probe, "curve": self.curve, "beta": self.beta,
                "fingerprint": self.fingerprint, "fingerprint_scale": self.fingerprint_scale,
                "diagnostics": self.diagnostics}


CURVE_POINTS = 401  # x = beta * rho on an even grid over [-10, 10], the DiscoPOP paper's plotting range
# The behaviour probe: x = beta * rho over the range a short DPO fine-tune reaches (|x| <= 3, i.e.
# sigmoid(x) from 0.05 to 0.95), and several ways of splitting rho between the chosen and the
# rejected side: (share of rho carried by the chosen log-prob, drift of both sides in units of 1/beta).
# x = 0 itself is left out: several losses switch branch there (PADLL, PFL), and float32 round-off
# in computing rho would then decide the branch differently for the same loss written two ways.
PROBE_X = torch.tensor([-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, -0.25, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
DRIFT_PATTERNS = ((1.0, 0.0), (0.0, 0.0), (0.5, 0.0), (0.5, -1.0), (0.2, -0.5))
FINGERPRINT_DECIMALS = 7  # of a unit vector with 140 entries of ~0.08: ~1e-6 relative per entry
ROUND_OFF = 1e-6  # relative float32 error of a gradient (eps 1.2e-7, a few ops): below it, a slope is 0


def loss_curve(fn: Callable) -> dict[str, list[float]]:
    """loss(x) and its derivative at x = beta * rho in [-10, 10] (policy_chosen = x, rest 0, beta = 1)."""
    x = torch.linspace(-10.0, 10.0, CURVE_POINTS, requires_grad=True)
    zeros = torch.zeros_like(x)
    loss = _call(fn, (x, zeros, zeros, zeros), 1.0)
    (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    grad = torch.zeros_like(x) if grad is None else grad
    return {"loss": [round(float(v), 6) for v in loss.detach()], "grad": [round(float(v), 6) for v in grad]}


def make_inputs(batch: int, scale: str, seed: int) -> tuple[torch.Tensor, ...]:
    """Plausible (policy_chosen, policy_rejected, ref_chosen, ref_rejected) log-prob tensors."""
    gen = torch.Generator().manual_seed(seed)
    if scale == "small":
        ref = -torch.rand(2, batch, generator=gen) * 40.0 - 2.0
        ratio = torch.randn(2, batch, generator=gen) * 2.0
    else:
        ref = -torch.rand(2, batch, generator=gen) * 400.0 - 20.0
        ratio = torch.randn(2, batch, generator=gen) * 30.0
    pol = ref + ratio
    return pol[0].clone(), pol[1].clone(), ref[0].clone(), ref[1].clone()


def probe_inputs() -> tuple[torch.Tensor, ...]:
    """Fixed inputs whose loss values are archived as ``probe`` (a quick look at the loss's values)."""
    rho = torch.linspace(-6.0, 6.0, 25)
    ref_c = torch.full_like(rho, -20.0)
    ref_r = torch.full_like(rho, -22.0)
    pol_c = ref_c + 0.6 * rho + 0.3
    pol_r = ref_r - 0.4 * rho - 0.1
    return pol_c, pol_r, ref_c, ref_r


def contract_problem(out: object, batch: int) -> str | None:
    """Why ``out`` is not a loss's return value for ``batch`` examples, or None (the loss oracle uses it too)."""
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, expected a torch.Tensor of shape [batch]"
    if not out.dtype.is_floating_point:
        return f"returned dtype {out.dtype}, expected a floating-point tensor"
    if tuple(out.shape) != (batch,):
        return f"returned shape {list(out.shape)}, expected [{batch}] (one loss per example)"
    return None


def behaviour_inputs(beta: float, refs: tuple[torch.Tensor, torch.Tensor] | None = None,
                     ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The fixed behaviour probe at ``beta``: the four log-prob tensors and x = beta * rho of each example.

    Reference log-probs vary (fixed draw) and sit far enough below 0 that no policy log-prob of
    the probe is positive: log-probs of real sequences never are. With ``refs`` (the chosen and rejected
    reference log-probs of real training pairs) the reference log-probs are a fixed draw of those pairs,
    lowered by the same margin: the same probe on the inputs training feeds the loss (``trained_behaviour``).
    """
    n_x, n_p = len(PROBE_X), len(DRIFT_PATTERNS)
    x = PROBE_X.repeat(n_p)
    share = torch.tensor([p[0] for p in DRIFT_PATTERNS]).repeat_interleave(n_x)
    shift = torch.tensor([p[1] for p in DRIFT_PATTERNS]).repeat_interleave(n_x) / beta
    rho = x / beta
    gen = torch.Generator().manual_seed(20240607)
    floor = float(PROBE_X.abs().max()) / beta + 5.0
    if refs is None:
        ref_c = -floor - 40.0 * torch.rand(n_x * n_p, generator=gen)
        ref_r = -floor - 40.0 * torch.rand(n_x * n_p, generator=gen)
    else:
        pick = torch.randint(0, int(refs[0].shape[0]), (n_x * n_p,), generator=gen)
        ref_c = refs[0].detach().to(torch.float32)[pick] - floor
        ref_r = refs[1].detach().to(torch.float32)[pick] - floor
    pol_c = ref_c + shift + share * rho
    pol_r = ref_r + shift - (1.0 - share) * rho
    return (pol_c, pol_r, ref_c, ref_r), x


def _call(fn: Callable, inputs: tuple[torch.Tensor, ...], beta: float) -> torch.Tensor:
    out = fn(*inputs, beta)
    problem = contract_problem(out, inputs[0].shape[0])
    if problem:
        raise CheckFailed(problem)
    return out


def check_loss(fn: Callable, seed: int = 0, beta: float | None = None) -> CheckReport:
    """Run every numeric check on ``fn``; raise :class:`CheckFailed` at the first failure.

    ``beta`` is the training beta: the fingerprint, the diagnostics and the archived probe are measured at it
    (None: ``DEFAULT_BETA``, the default config's ``training.beta``).
    """
    beta = DEFAULT_BETA if beta is None else beta
    try:
        return _check_loss(fn, seed, float(beta))
    except CheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 - any error of the candidate is a rejection with its reason
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckFailed(f"raised {type(err).__name__}: {first}") from None


def _check_loss(fn: Callable, seed: int, beta: float) -> CheckReport:
    report = CheckReport(beta=beta)
    for scale in ("small", "large"):
        for check_beta in sorted({*BETAS, beta}):
            inputs = make_inputs(BATCH, scale, seed)
            originals = [t.clone() for t in inputs]
            leaves = [t.clone().requires_grad_(i < 2) for i, t in enumerate(inputs)]
            out = _call(fn, tuple(leaves), check_beta)
            if any(not torch.equal(a.detach(), b) for a, b in zip(leaves, originals, strict=True)):
                raise CheckFailed("mutated its input tensors in place")
            if not torch.isfinite(out).all():
                raise CheckFailed(f"non-finite loss values on {scale} inputs (beta={check_beta})")
            if not out.requires_grad:
                raise CheckFailed("loss does not depend on the policy log-probs (no gradient)")
            grads = torch.autograd.grad(out.mean(), leaves[:2], allow_unused=True)
            if any(g is None for g in grads):
                raise CheckFailed("loss has no gradient with respect to the policy log-probs")
            if not all(torch.isfinite(g).all() for g in grads):
                raise CheckFailed(f"non-finite gradients on {scale} inputs (beta={check_beta})")
            if scale == "small" and all(float(g.abs().max()) == 0.0 for g in grads):
                raise CheckFailed(f"gradient is zero everywhere on small inputs (beta={check_beta})")
            again = _call(fn, tuple(t.detach().clone() for t in inputs), check_beta)
            if not torch.equal(again, out.detach()):
                raise CheckFailed("not deterministic: two calls on the same inputs differ")
    report.uses_beta = _uses_beta(fn)
    grad_c, grad_r, x = _behaviour_gradients(fn, beta)
    report.fingerprint = fingerprint(grad_c, grad_r)
    report.fingerprint_scale = float(torch.cat([grad_c, grad_r]).double().norm())
    report.diagnostics = diagnose(fn, beta, grad_c, grad_r, x, report.uses_beta)
    with torch.no_grad():
        report.probe = [round(float(v), 6) for v in _call(fn, probe_inputs(), beta)]
    report.curve = loss_curve(fn)
    return report


def _policy_gradients(fn: Callable, inputs: tuple[torch.Tensor, ...], beta: float,
                      where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean loss / d policy_chosen and / d policy_rejected (finite, else a rejection naming ``where``)."""
    pc, pr = (t.clone().requires_grad_(True) for t in inputs[:2])
    out = _call(fn, (pc, pr, inputs[2].clone(), inputs[3].clone()), beta)
    if not torch.isfinite(out).all():
        raise CheckFailed(f"non-finite loss values {where} (beta={beta})")
    grad_c, grad_r = torch.autograd.grad(out.mean(), (pc, pr), allow_unused=True)
    grad_c = torch.zeros_like(pc) if grad_c is None else grad_c
    grad_r = torch.zeros_like(pr) if grad_r is None else grad_r
    if not (torch.isfinite(grad_c).all() and torch.isfinite(grad_r).all()):
        raise CheckFailed(f"non-finite gradients {where} (beta={beta})")
    return grad_c.detach(), grad_r.detach()


def behaviour_gradients(fn: Callable, beta: float) -> torch.Tensor:
    """The policy gradients the fingerprint normalises, flattened the same way, at their own scale."""
    grad_c, grad_r, _ = _behaviour_gradients(fn, beta)
    return torch.cat([grad_c, grad_r]).double()


def _behaviour_gradients(fn: Callable, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs, x = behaviour_inputs(beta)
    grad_c, grad_r = _policy_gradients(fn, inputs, beta, "over the range training reaches (|beta*rho| <= 3)")
    return grad_c, grad_r, x


def probe_fingerprint(fn: Callable, beta: float, refs: tuple[torch.Tensor, torch.Tensor] | None = None,
                      ) -> list[float] | None:
    """The behaviour fingerprint measured again (``behaviour_inputs``, on ``refs`` if given); None if the loss fails.

    The archived fingerprint comes from the check job: a loss that behaved one way there and another in
    training (it counted its calls, kept state, or recognised the check's inputs) would be archived,
    deduplicated and placed in the behaviour map by a shape it never trained with. So a training job probes
    before and after its fine-tune, and on the reference log-probs of its own training pairs, on the same loss
    oracle (``execution.worker``); a loss of rho alone gives the same fingerprint every time.
    """
    try:
        inputs, _ = behaviour_inputs(beta, refs)
        return fingerprint(*_policy_gradients(fn, inputs, beta, "in the behaviour probe"))
    except Exception:  # noqa: BLE001 - a candidate failing the probe is a finding (None), not a crash
        return None


def fingerprint_distance(a: list[float] | None, b: list[float] | None) -> float | None:
    """1 - cosine of two fingerprints (0: the same behaviour up to a positive factor); None if either is missing."""
    if not a or not b or len(a) != len(b):
        return None
    va, vb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return round(float(1.0 - (va @ vb) / (va.norm() * vb.norm())), 12)


def fingerprint(grad_c: torch.Tensor, grad_r: torch.Tensor) -> list[float]:
    """The behaviour fingerprint: policy gradients on the probe, flattened, L2-normalised, rounded.

    Only the policy log-probs: the reference log-probs are constants in training, so a term of
    them alone is an added constant (per example) and must not tell two losses apart.
    """
    flat = torch.cat([grad_c, grad_r]).double()
    norm = float(flat.norm())
    if norm == 0.0:
        return []
    return [round(float(v), FINGERPRINT_DECIMALS) for v in flat / norm]


def diagnose(fn: Callable, beta: float, grad_c: torch.Tensor, grad_r: torch.Tensor, x: torch.Tensor,
             uses_beta: bool) -> dict[str, Any]:
    """How the loss pushes at the training beta; recorded, never a rejection (see the module docstring).

    Slopes are per example (the batch-mean gradient times the batch size), in loss per nat:
    ``chosen`` = d loss / d policy_chosen (negative: raising the chosen log-prob lowers the loss),
    ``rejected`` = d loss / d policy_rejected (positive is the usual way), ``rho`` = (chosen -
    rejected) / 2, the slope along rho when both sides move (for a loss of rho alone, f'(rho)).
    """
    n = len(x)
    per_c, per_r = grad_c * n, grad_r * n
    scale = float(torch.cat([per_c, per_r]).abs().max())
    tol = ROUND_OFF * scale
    (at_zero_c, at_zero_r) = _slope_at_zero(fn, beta)
    wrong0 = int(((at_zero_c > tol) | (at_zero_r < -tol)).sum())
    lo, hi = float(x.min()), float(x.max())
    ends = {f"{v:+g}": round(float(((per_c - per_r) / 2)[x == v].mean()), 6) for v in (lo, hi)}
    return {
        "beta": beta,
        "uses_beta": uses_beta,
        "slope_at_0": {"chosen": round(float(at_zero_c.mean()), 6), "rejected": round(float(at_zero_r.mean()), 6),
                       "rho": round(float(((at_zero_c - at_zero_r) / 2).mean()), 6),
                       "wrong_way": wrong0, "examples": len(at_zero_c)},
        "slope_at_ends": ends,
        "wrong_way": {"chosen_up_raises_loss": _where(x[per_c > tol]),
                      "rejected_up_lowers_loss": _where(x[per_r < -tol])},
        "range": [lo, hi],
    }


def _slope_at_zero(fn: Callable, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example slopes where training starts: policy = reference (rho = 0), varied log-probs."""
    gen = torch.Generator().manual_seed(7)
    ref = -torch.rand(2, BATCH, generator=gen) * 60.0 - 2.0
    inputs = (ref[0].clone(), ref[1].clone(), ref[0].clone(), ref[1].clone())
    grad_c, grad_r = _policy_gradients(fn, inputs, beta, "at rho = 0")
    return grad_c * BATCH, grad_r * BATCH


def _where(xs: torch.Tensor) -> list[float]:
    """The distinct x = beta * rho values (of the probe grid) where a condition held, ascending."""
    return sorted({round(float(v), 2) for v in xs})


def _uses_beta(fn: Callable) -> bool:
    with torch.no_grad():
        inputs = make_inputs(BATCH, "small", 2)
        return not torch.allclose(_call(fn, inputs, 0.1), _call(fn, inputs, 0.5))
