"""Numeric unit checks of a loss function, run on random inputs over realistic ranges.

These run *inside* a sandboxed worker (never the main process) on a loaded candidate. They are
ordered cheap to costly and stop at the first failure, returning a one-line reason. Inputs mimic
what DPO training feeds a loss: summed sequence log-probabilities (tens of nats, negative) with
policy/reference log-ratios of a few nats, plus a "large" set (hundreds of nats, ratios of tens)
that catches losses which are fine on small inputs and overflow on large ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

BATCH = 16
BETAS = (0.1, 0.5)
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


CURVE_POINTS = 401  # x = beta * rho on an even grid over [-10, 10], the DiscoPOP paper's plotting range


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
    """Fixed inputs whose outputs fingerprint a loss (two losses equal here are duplicates)."""
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


def _call(fn: Callable, inputs: tuple[torch.Tensor, ...], beta: float) -> torch.Tensor:
    out = fn(*inputs, beta)
    problem = contract_problem(out, inputs[0].shape[0])
    if problem:
        raise CheckFailed(problem)
    return out


def check_loss(fn: Callable, seed: int = 0) -> CheckReport:
    """Run every numeric check on ``fn``; raise :class:`CheckFailed` at the first failure."""
    try:
        return _check_loss(fn, seed)
    except CheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 - any error of the candidate is a rejection with its reason
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckFailed(f"raised {type(err).__name__}: {first}") from None


def _check_loss(fn: Callable, seed: int) -> CheckReport:
    report = CheckReport()
    for scale in ("small", "large"):
        for beta in BETAS:
            inputs = make_inputs(BATCH, scale, seed)
            originals = [t.clone() for t in inputs]
            leaves = [t.clone().requires_grad_(i < 2) for i, t in enumerate(inputs)]
            out = _call(fn, tuple(leaves), beta)
            if any(not torch.equal(a.detach(), b) for a, b in zip(leaves, originals, strict=True)):
                raise CheckFailed("mutated its input tensors in place")
            if not torch.isfinite(out).all():
                raise CheckFailed(f"non-finite loss values on {scale} inputs (beta={beta})")
            if not out.requires_grad:
                raise CheckFailed("loss does not depend on the policy log-probs (no gradient)")
            grads = torch.autograd.grad(out.mean(), leaves[:2], allow_unused=True)
            if any(g is None for g in grads):
                raise CheckFailed("loss has no gradient with respect to the policy log-probs")
            if not all(torch.isfinite(g).all() for g in grads):
                raise CheckFailed(f"non-finite gradients on {scale} inputs (beta={beta})")
            if scale == "small" and all(float(g.abs().max()) == 0.0 for g in grads):
                raise CheckFailed(f"gradient is zero everywhere on small inputs (beta={beta})")
            again = _call(fn, tuple(t.detach().clone() for t in inputs), beta)
            if not torch.equal(again, out.detach()):
                raise CheckFailed("not deterministic: two calls on the same inputs differ")
    _check_direction(fn)
    report.uses_beta = _uses_beta(fn)
    with torch.no_grad():
        report.probe = [round(float(v), 6) for v in _call(fn, probe_inputs(), 0.1)]
    report.curve = loss_curve(fn)
    return report


def _check_direction(fn: Callable) -> None:
    """Raising the chosen log-prob must not raise the mean loss; raising the rejected must not lower it.

    Measured as the directional derivative of the mean loss along a uniform raise of every
    chosen (rejected) log-prob. A derivative, not a finite step: several published losses (PADLL,
    PFL) switch weights at rho = 0, and a finite step across that jump would wrongly fail them.
    """
    for beta in BETAS:
        pc, pr, rc, rr = make_inputs(BATCH * 4, "small", 1)
        pc.requires_grad_(True)
        pr.requires_grad_(True)
        mean = _call(fn, (pc, pr, rc, rr), beta).mean()
        grad_c, grad_r = torch.autograd.grad(mean, (pc, pr), allow_unused=True)
        d_chosen = float(grad_c.sum()) if grad_c is not None else 0.0
        d_rejected = float(grad_r.sum()) if grad_r is not None else 0.0
        tol = TOL * max(1.0, abs(float(mean.detach())))
        if d_chosen > tol:
            raise CheckFailed(f"raising the chosen log-prob raises the mean loss (slope {d_chosen:.3g}, beta={beta})")
        if d_rejected < -tol:
            raise CheckFailed(
                f"raising the rejected log-prob lowers the mean loss (slope {d_rejected:.3g}, beta={beta})"
            )


def _uses_beta(fn: Callable) -> bool:
    with torch.no_grad():
        inputs = make_inputs(BATCH, "small", 2)
        return not torch.allclose(_call(fn, inputs, 0.1), _call(fn, inputs, 0.5))
