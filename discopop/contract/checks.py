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

``fingerprint`` is the loss's training behaviour: the L2-normalised per-example gradient of the loss
with respect to the policy log-probs on the behaviour probe. Adam ignores a positive scale and
an added constant, so two losses with the same fingerprint train the same (see ``evaluate.py``).

Two kinds of input, for two jobs. The *fixed* rows (the small and large batches of 16 from ``make_inputs``,
the 25-row value probe, the 401-point curve) stay the same for every loss and every run: the hostile corpus
and the oracle's reply-size limits are written against them, and they hold the extremes that catch overflow.
But a loss can recognise fixed inputs (constant reference log-probs, references all below one floor, one batch
size) and show the checks one shape while training with another; the archived fingerprint, the duplicate test,
the behaviour map and the proposer's feedback would then describe a loss that never trained. So what describes
the loss (the fingerprint, the diagnostics, ``uses_beta``) is measured on *drawn* rows, and both kinds must
pass the safety checks. The drawn rows come from the check's seed (a run's check jobs pass the run seed, so
the fingerprints deduplication compares share their inputs within a run; a train job's probes use the job's
seed), so the same config and seed give the same archive. Reference log-probs are drawn log-normal around the
task's own training pairs when the worker has a task (``reference_scale``), else around tens of nats with a
spread from about 2 to 200, so no threshold, constant or floor separates them from what training feeds; the x
grid and drift patterns keep their meaning (each fingerprint entry is the same point for every loss) but their
rows are shuffled among filler rows and split into calls whose batch sizes are drawn too (``DRAWN_BATCH``,
which holds the default training batch of 32); the slope at rho = 0 comes from a call made entirely at policy
= reference, as a first training step is, so a loss of batch statistics is measured where training starts.
Policy log-probs are never above 0: an example that would be is lowered as a whole (its rho and drift kept),
by its own excess plus a drawn margin. What a loss can still single out: a batch below 16 pairs (the fault
tests rely on it), and real sequences' fine structure; the worker's probe on the training pairs' own reference
log-probs (``probe_fingerprint`` with ``refs``) records that.

``fn`` is only ever called with the tensors it declares (``contract.inputs``: the four log-probs for a v1 loss)
and a float beta, and differentiated to first order (``torch.autograd.grad`` without ``create_graph``). A contract-v2
loss's extra inputs are fed on every row: token counts drawn from the check's seed (``draw_lengths``, log-uniform
over 1 to 128 tokens; their own generator, so a v1 loss's draws and fingerprint are unchanged) and the chosen NLL
``-policy_chosen / chosen_lengths``, computed from the policy leaf so that its gradient reaches the fingerprint as it
reaches the policy in training; a reference-free loss is simply not passed the references.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from discopop.config.training import TrainingSettings
from discopop.contract.inputs import LENGTHS, NLL, declared_inputs, is_v1, needs_lengths

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
    # the drawn probe the fingerprint was measured on: its seed and the reference scale (``reference_scale``)
    probe_seed: int = 0
    probe_scale: list[float] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"uses_beta": self.uses_beta, "probe": self.probe, "curve": self.curve, "beta": self.beta,
                "fingerprint": self.fingerprint, "fingerprint_scale": self.fingerprint_scale,
                "probe_seed": self.probe_seed, "probe_scale": self.probe_scale, "diagnostics": self.diagnostics}


CURVE_POINTS = 401  # x = beta * rho on an even grid over [-10, 10], the DiscoPOP paper's plotting range
# The behaviour probe: x = beta * rho over the range a short DPO fine-tune reaches (|x| <= 3, i.e.
# sigmoid(x) from 0.05 to 0.95), and several ways of splitting rho between the chosen and the
# rejected side: (share of rho carried by the chosen log-prob, drift of both sides in units of 1/beta).
# x = 0 itself is left out: several losses switch branch there (PADLL, PFL), and float32 round-off
# in computing rho would then decide the branch differently for the same loss written two ways.
PROBE_X = torch.tensor([-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, -0.25, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
DRIFT_PATTERNS = ((1.0, 0.0), (0.0, 0.0), (0.5, 0.0), (0.5, -1.0), (0.2, -0.5))
AT_ZERO = 16  # examples at rho = 0 (policy = reference) whose slopes the diagnostics report
# Batch sizes of the drawn calls: from the fixed rows' 16 up to twice the default training batch (32). Not lower:
# tests/test_faults.py tells training (12-pair batches) from the checks by the batch size.
DRAWN_BATCH = (16, 64)
# The drawn references without a task: log-normal magnitudes (median 20 nats, ~95% within 2 to 220 nats), the
# rejected side's log-magnitude near the chosen one's: (mean, sd of log|ref_c|, mean, sd of log|ref_r/ref_c|).
DEFAULT_SCALE = (3.0, 1.2, 0.0, 0.3)
_PURPOSES = {"layout": 1, "refs": 2, "fillers": 3, "margin": 4, "pick": 5, "lengths": 6}
MAX_LENGTH = 128  # the drawn completion lengths of a contract-v2 loss: log-uniform integers in [1, MAX_LENGTH]
PROBE_LENGTHS = (8.0, 10.0)  # the fixed value probe's completion lengths (chosen, rejected)
FINGERPRINT_DECIMALS = 7  # of a unit vector with 140 entries of ~0.08: ~1e-6 relative per entry
ROUND_OFF = 1e-6  # relative float32 error of a gradient (eps 1.2e-7, a few ops): below it, a slope is 0


def loss_curve(fn: Callable) -> dict[str, list[float]]:
    """loss(x) and its derivative at x = beta * rho in [-10, 10] (policy_chosen = x, rest 0, beta = 1)."""
    x = torch.linspace(-10.0, 10.0, CURVE_POINTS, requires_grad=True)
    zeros = torch.zeros_like(x)
    loss = _call(fn, (x, zeros, zeros, zeros), 1.0)  # a v2 loss: one-token answers (lengths 1)
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


def draw_lengths(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (chosen, rejected) completion token counts, float, log-uniform integers in [1, MAX_LENGTH]."""
    logs = torch.rand(2, n, generator=gen) * torch.log(torch.tensor(float(MAX_LENGTH)))
    lengths = logs.exp().round().clamp(1.0, float(MAX_LENGTH))
    return lengths[0].clone(), lengths[1].clone()


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


def draw_generator(seed: int, purpose: str) -> torch.Generator:
    """A generator for one kind of drawn input, from the check's seed (stable across processes and versions)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + _PURPOSES[purpose] * 7_919) % (2 ** 63))


def reference_scale(refs: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[float, float, float, float]:
    """The drawn references' distribution fitted to a task's training pairs (``DEFAULT_SCALE`` without them)."""
    if refs is None:
        return DEFAULT_SCALE
    mag_c, mag_r = (torch.as_tensor(r).detach().double().neg().clamp(min=1e-3).log() for r in refs)
    keep = torch.isfinite(mag_c) & torch.isfinite(mag_r)
    mag_c, mag_r = mag_c[keep], mag_r[keep]
    if mag_c.numel() < 2:
        return DEFAULT_SCALE
    ratio = mag_r - mag_c
    # floors on the spreads: a task whose references are all alike must not make the draw a constant
    return (round(float(mag_c.mean()), 6), round(max(float(mag_c.std()), 0.25), 6),
            round(float(ratio.mean()), 6), round(max(float(ratio.std()), 0.1), 6))


def draw_references(n: int, gen: torch.Generator,
                    scale: tuple[float, float, float, float] = DEFAULT_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (chosen, rejected) summed reference log-probs, log-normal magnitudes per ``scale``."""
    mean, sd, ratio_mean, ratio_sd = scale
    log_c = mean + sd * torch.randn(n, generator=gen)
    log_r = log_c + ratio_mean + ratio_sd * torch.randn(n, generator=gen)
    return -log_c.exp(), -log_r.exp()


@dataclass
class Probe:
    """The drawn behaviour probe: rows in call order, split into ``sizes``; where the grid and the rho = 0 rows are.

    ``grid`` indexes the ``PROBE_X`` x ``DRIFT_PATTERNS`` rows in canonical order (the fingerprint's entries),
    shuffled among fillers the fingerprint ignores; ``at_zero`` the ``AT_ZERO`` rows the diagnostics report from the
    one call made entirely at policy = reference.
    """

    inputs: tuple[torch.Tensor, ...]
    x: torch.Tensor  # x = beta * rho of the grid rows, canonical order
    sizes: list[int]
    grid: torch.Tensor
    at_zero: torch.Tensor
    zero_call: int  # which call is the one at rho = 0
    lengths: tuple[torch.Tensor, torch.Tensor] | None = None  # (chosen, rejected) token counts, call order

    def calls(self) -> list[tuple[torch.Tensor, ...]]:
        """The four log-prob inputs of each call, ``sizes`` rows at a time."""
        return list(zip(*(t.split(self.sizes) for t in self.inputs), strict=True))

    def full_calls(self) -> list[tuple[torch.Tensor, ...]]:
        """Each call's four log-probs and, where drawn, its two length tensors (what ``_call`` takes)."""
        return list(zip(*(t.split(self.sizes) for t in (*self.inputs, *(self.lengths or ()))), strict=True))


def behaviour_inputs(beta: float, refs: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0,
                     scale: tuple[float, float, float, float] = DEFAULT_SCALE) -> Probe:
    """The behaviour probe at ``beta``, drawn from ``seed`` (see the module docstring).

    Reference log-probs come from ``draw_references`` at ``scale``, or, with ``refs`` (the chosen and rejected
    reference log-probs of real training pairs), a seeded pick of those pairs: the same probe on the inputs
    training feeds the loss (``probe_fingerprint``).
    """
    n_x, n_p = len(PROBE_X), len(DRIFT_PATTERNS)
    n_grid = n_x * n_p
    layout = draw_generator(seed, "layout")
    low, high = DRAWN_BATCH
    sizes: list[int] = []
    while sum(sizes) < n_grid:
        sizes.append(int(torch.randint(low, high + 1, (1,), generator=layout)))
    n_pool = sum(sizes)  # the grid rows among fillers; then one call at rho = 0, where training starts
    n_zero = int(torch.randint(max(low, AT_ZERO), high + 1, (1,), generator=layout))
    total, n_fill = n_pool + n_zero, n_pool - n_grid
    fill = draw_generator(seed, "fillers")
    x = torch.cat([PROBE_X.repeat(n_p), 6.0 * torch.rand(n_fill, generator=fill) - 3.0, torch.zeros(n_zero)])
    share = torch.cat([torch.tensor([p[0] for p in DRIFT_PATTERNS]).repeat_interleave(n_x),
                       torch.rand(n_fill, generator=fill), torch.zeros(n_zero)])
    shift = torch.cat([torch.tensor([p[1] for p in DRIFT_PATTERNS]).repeat_interleave(n_x),
                       -torch.rand(n_fill, generator=fill), torch.zeros(n_zero)]) / beta
    if refs is None:
        ref_c, ref_r = draw_references(total, draw_generator(seed, "refs"), scale)
    else:
        pick = torch.randint(0, int(refs[0].shape[0]), (total,), generator=draw_generator(seed, "pick"))
        ref_c = refs[0].detach().to(torch.float32)[pick]
        ref_r = refs[1].detach().to(torch.float32)[pick]
    rho = x / beta
    pol_c = ref_c + shift + share * rho
    pol_r = ref_r + shift - (1.0 - share) * rho
    # log-probs of real sequences are never above 0: lower such an example as a whole (rho and drift kept)
    excess = torch.clamp(torch.maximum(pol_c, pol_r), min=0.0)
    margin = 0.1 + 2.0 * torch.rand(total, generator=draw_generator(seed, "margin"))
    lower = torch.where(excess > 0, excess + margin, torch.zeros_like(excess))
    rows = (pol_c - lower, pol_r - lower, ref_c - lower, ref_r - lower)
    # policy = reference exactly in the rho = 0 call, so rho is 0 however a loss computes it; all of that call is
    # at rho = 0 (as a first training step is), so a loss of batch statistics is measured as training starts
    zero = slice(n_pool, total)
    rows[0][zero], rows[1][zero] = rows[2][zero], rows[3][zero]
    calls = list(torch.randperm(n_pool, generator=layout).split(sizes))
    calls.append(n_pool + torch.randperm(n_zero, generator=layout))
    sizes.append(n_zero)
    call_order = torch.randperm(len(calls), generator=layout).tolist()
    order = torch.cat([calls[i] for i in call_order])
    where = torch.empty_like(order)
    where[order] = torch.arange(total)  # where[i]: the call-order position of canonical row i
    # their own generator, drawn last: the other draws (and so every v1 loss's fingerprint) are as before
    lengths = draw_lengths(total, draw_generator(seed, "lengths"))
    return Probe(inputs=tuple(t[order].clone() for t in rows), x=x[:n_grid].clone(),
                 sizes=[sizes[i] for i in call_order], grid=where[:n_grid].clone(),
                 at_zero=where[n_pool:n_pool + AT_ZERO].clone(), zero_call=call_order.index(len(calls) - 1),
                 lengths=(lengths[0][order].clone(), lengths[1][order].clone()))


def loss_inputs(fn: Callable, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The tensors ``fn`` declares, from (policy_chosen, policy_rejected, ref_chosen, ref_rejected[, chosen_lengths,
    rejected_lengths]): lengths 1 where none are given; the chosen NLL from the policy tensor (its gradient flows)."""
    declared = declared_inputs(fn)
    if is_v1(declared):
        return tuple(inputs[:4])
    available = dict(zip(("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
                          "reference_rejected_logps"), inputs[:4], strict=True))
    if needs_lengths(declared):
        lengths = inputs[4:6] if len(inputs) >= 6 else (torch.ones_like(inputs[0]), torch.ones_like(inputs[1]))
        chosen_len, rejected_len = (t.to(inputs[0].dtype) for t in lengths)
        available.update({LENGTHS[0]: chosen_len, LENGTHS[1]: rejected_len, NLL: -inputs[0] / chosen_len})
    return tuple(available[name] for name in declared)


def _call(fn: Callable, inputs: tuple[torch.Tensor, ...], beta: float) -> torch.Tensor:
    out = fn(*loss_inputs(fn, inputs), beta)
    problem = contract_problem(out, inputs[0].shape[0])
    if problem:
        raise CheckFailed(problem)
    return out


def check_loss(fn: Callable, seed: int = 0, beta: float | None = None,
               scale_refs: tuple[torch.Tensor, torch.Tensor] | None = None) -> CheckReport:
    """Run every numeric check on ``fn``; raise :class:`CheckFailed` at the first failure.

    ``beta`` is the training beta: the fingerprint, the diagnostics and the archived probe are measured at it
    (None: ``DEFAULT_BETA``, the default config's ``training.beta``). ``seed`` draws the behaviour probe;
    ``scale_refs`` (the task's training pairs' reference log-probs, where the worker has a task) set the scale
    its reference log-probs are drawn at (``reference_scale``).
    """
    beta = DEFAULT_BETA if beta is None else beta
    try:
        return _check_loss(fn, seed, float(beta), reference_scale(scale_refs))
    except CheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 - any error of the candidate is a rejection with its reason
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckFailed(f"raised {type(err).__name__}: {first}") from None


def _check_loss(fn: Callable, seed: int, beta: float, scale: tuple[float, float, float, float]) -> CheckReport:
    report = CheckReport(beta=beta)
    # a contract-v2 loss's lengths on the fixed rows: drawn from the seed (a v1 loss gets none, as always)
    lengths = draw_lengths(BATCH, draw_generator(seed, "lengths")) if needs_lengths(declared_inputs(fn)) else ()
    # the fixed safety rows first, exactly as always (the hostile corpus and the oracle's reply sizes rely on them)
    for scale_name in ("small", "large"):
        for check_beta in sorted({*BETAS, beta}):
            inputs = make_inputs(BATCH, scale_name, seed)
            originals = [t.clone() for t in inputs]
            leaves = [t.clone().requires_grad_(i < 2) for i, t in enumerate(inputs)]
            out = _call(fn, (*leaves, *lengths), check_beta)
            if any(not torch.equal(a.detach(), b) for a, b in zip(leaves, originals, strict=True)):
                raise CheckFailed("mutated its input tensors in place")
            if not torch.isfinite(out).all():
                raise CheckFailed(f"non-finite loss values on {scale_name} inputs (beta={check_beta})")
            if not out.requires_grad:
                raise CheckFailed("loss does not depend on the policy log-probs (no gradient)")
            grads = torch.autograd.grad(out.mean(), leaves[:2], allow_unused=True)
            if any(g is None for g in grads):
                raise CheckFailed("loss has no gradient with respect to the policy log-probs")
            if not all(torch.isfinite(g).all() for g in grads):
                raise CheckFailed(f"non-finite gradients on {scale_name} inputs (beta={check_beta})")
            if scale_name == "small" and all(float(g.abs().max()) == 0.0 for g in grads):
                raise CheckFailed(f"gradient is zero everywhere on small inputs (beta={check_beta})")
            again = _call(fn, (*(t.detach().clone() for t in inputs), *lengths), check_beta)
            if not torch.equal(again, out.detach()):
                raise CheckFailed("not deterministic: two calls on the same inputs differ")
    # what describes the loss is measured on the drawn rows, which must pass the same safety checks
    probe = behaviour_inputs(beta, seed=seed, scale=scale)
    report.uses_beta = _uses_beta(fn, probe)
    per_c, per_r = _probe_gradients(fn, probe, beta, "over the range training reaches (|beta*rho| <= 3)")
    again_c, again_r = _probe_gradients(fn, probe, beta, "over the range training reaches (|beta*rho| <= 3)")
    if not (torch.equal(per_c, again_c) and torch.equal(per_r, again_r)):
        raise CheckFailed("not deterministic: two calls on the same inputs differ")
    grid_c, grid_r = per_c[probe.grid], per_r[probe.grid]
    report.fingerprint = fingerprint(grid_c, grid_r)
    report.fingerprint_scale = float(torch.cat([grid_c, grid_r]).double().norm())
    report.probe_seed, report.probe_scale = int(seed), [float(v) for v in scale]
    report.diagnostics = diagnose(beta, grid_c, grid_r, probe.x, report.uses_beta,
                                  (per_c[probe.at_zero], per_r[probe.at_zero]))
    fixed = probe_inputs()
    fixed_lengths = tuple(torch.full_like(fixed[0], n) for n in PROBE_LENGTHS)
    with torch.no_grad():
        report.probe = [round(float(v), 6) for v in _call(fn, (*fixed, *fixed_lengths), beta)]
    report.curve = loss_curve(fn)
    return report


def _policy_gradients(fn: Callable, inputs: tuple[torch.Tensor, ...], beta: float,
                      where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean loss / d policy_chosen and / d policy_rejected (finite, else a rejection naming ``where``)."""
    pc, pr = (t.clone().requires_grad_(True) for t in inputs[:2])
    out = _call(fn, (pc, pr, *(t.clone() for t in inputs[2:])), beta)
    if not torch.isfinite(out).all():
        raise CheckFailed(f"non-finite loss values {where} (beta={beta})")
    grad_c, grad_r = torch.autograd.grad(out.mean(), (pc, pr), allow_unused=True)
    grad_c = torch.zeros_like(pc) if grad_c is None else grad_c
    grad_r = torch.zeros_like(pr) if grad_r is None else grad_r
    if not (torch.isfinite(grad_c).all() and torch.isfinite(grad_r).all()):
        raise CheckFailed(f"non-finite gradients {where} (beta={beta})")
    return grad_c.detach(), grad_r.detach()


def _probe_gradients(fn: Callable, probe: Probe, beta: float, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example gradients (d loss_i / d policy log-probs, each call's mean-gradient times its size), call order."""
    parts = [_policy_gradients(fn, inputs, beta, where) for inputs in probe.full_calls()]
    return (torch.cat([g * n for (g, _), n in zip(parts, probe.sizes, strict=True)]),
            torch.cat([g * n for (_, g), n in zip(parts, probe.sizes, strict=True)]))


def behaviour_gradients(fn: Callable, beta: float, seed: int, scale: tuple[float, ...]) -> torch.Tensor:
    """The per-example policy gradients the fingerprint normalises (the drawn probe's grid rows, at ``seed`` and
    the reference ``scale`` a check report records), flattened the same way, at their own scale."""
    probe = behaviour_inputs(beta, seed=seed, scale=tuple(scale))
    per_c, per_r = _probe_gradients(fn, probe, beta, "over the range training reaches (|beta*rho| <= 3)")
    return torch.cat([per_c[probe.grid], per_r[probe.grid]]).double()


def probe_fingerprint(fn: Callable, beta: float, refs: tuple[torch.Tensor, torch.Tensor] | None = None,
                      seed: int = 0, scale_refs: tuple[torch.Tensor, torch.Tensor] | None = None,
                      ) -> list[float] | None:
    """The behaviour fingerprint measured again (``behaviour_inputs``, on ``refs`` if given); None if the loss fails.

    The archived fingerprint comes from the check job: a loss that behaved one way there and another in
    training (it counted its calls, kept state, or recognised the check's inputs) would be archived,
    deduplicated and placed in the behaviour map by a shape it never trained with. So a training job probes
    before and after its fine-tune, and on the reference log-probs of its own training pairs, on the same loss
    oracle and the job's seed (``execution.worker``); a loss of rho alone gives the same fingerprint every time.
    """
    try:
        probe = behaviour_inputs(beta, refs, seed, reference_scale(scale_refs))
        per_c, per_r = _probe_gradients(fn, probe, beta, "in the behaviour probe")
        return fingerprint(per_c[probe.grid], per_r[probe.grid])
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


def diagnose(beta: float, per_c: torch.Tensor, per_r: torch.Tensor, x: torch.Tensor, uses_beta: bool,
             at_zero: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """How the loss pushes at the training beta; recorded, never a rejection (see the module docstring).

    Slopes are per example, in loss per nat: ``per_c``/``per_r`` on the grid rows (x = beta * rho),
    ``at_zero`` on the rows where policy = reference (rho = 0, where training starts).
    ``chosen`` = d loss / d policy_chosen (negative: raising the chosen log-prob lowers the loss),
    ``rejected`` = d loss / d policy_rejected (positive is the usual way), ``rho`` = (chosen -
    rejected) / 2, the slope along rho when both sides move (for a loss of rho alone, f'(rho)).
    """
    scale = float(torch.cat([per_c, per_r]).abs().max())
    tol = ROUND_OFF * scale
    at_zero_c, at_zero_r = at_zero
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


def _where(xs: torch.Tensor) -> list[float]:
    """The distinct x = beta * rho values (of the probe grid) where a condition held, ascending."""
    return sorted({round(float(v), 2) for v in xs})


def _uses_beta(fn: Callable, probe: Probe) -> bool:
    """Whether the loss's values change with beta on the probe's drawn calls away from rho = 0 (where a loss of
    beta * rho cannot show it)."""
    with torch.no_grad():
        return any(not torch.allclose(_call(fn, inputs, 0.1), _call(fn, inputs, 0.5))
                   for i, inputs in enumerate(probe.full_calls()) if i != probe.zero_call)
