"""Loss shapes: each loss and its derivative against x = β·ρ, the best evolved candidates next to DPO and LRML.

A candidate's curve is the one its sandboxed checks recorded (``metrics.checks.curve``); only the
packaged reference losses are ever evaluated here.
"""

from __future__ import annotations

import textwrap

import numpy as np

from discopop.archive import Row
from discopop.contract.diagnostics import summarize
from discopop.contract.losses import load_loss
from discopop.proposers.reference import reference_candidate
from discopop.report.figures import BASELINE_STYLE, GREY, SERIES_COLOURS, View, legend_beside, new_figure
from discopop.report.run import EMPTY_NOTE, diagnostics_of, row_label, scored

TOP_SHAPES = 3  # evolved candidates drawn next to DPO and LRML


def loss_curve(code: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """loss(x) and d loss / dx with x = beta * rho: policy_chosen = x, other log-probs 0, beta = 1.

    Only for the packaged reference losses (trusted code): candidates' curves come from their
    sandboxed checks (``metrics.checks.curve``), so no archived code runs in the report's process.
    """
    import torch  # lazy: the report stays torch-free until a reference curve is drawn

    fn = load_loss(code)
    t = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    zeros = torch.zeros_like(t)
    loss = fn(t, zeros, zeros, zeros, 1.0)
    if not isinstance(loss, torch.Tensor) or loss.shape != t.shape:
        raise ValueError(f"returned {type(loss).__name__} of shape {getattr(loss, 'shape', '?')}, not [batch]")
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss.sum(), t, allow_unused=True)
        grad = torch.zeros_like(t) if grad is None else grad
    else:
        grad = torch.zeros_like(t)  # constant in rho: no gradient reaches the policy
    return loss.detach().double().numpy(), grad.detach().double().numpy()


def _sandboxed_curve(row: Row, x: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """A candidate's curve as its sandboxed numeric checks recorded it (candidate code never runs here)."""
    curve = (row.metrics.get("checks") or {}).get("curve") or {}
    loss, grad = curve.get("loss"), curve.get("grad")
    if not loss or not grad or len(loss) != len(x) or len(grad) != len(x):
        notes.append(f"Skipped {row_label(row)}: no loss curve was recorded by its sandboxed checks.")
        return None
    return np.asarray(loss, dtype=float), np.asarray(grad, dtype=float)


def _reference_code(name: str) -> str | None:
    """The packaged (trusted) reference loss of that name; archived code is never executed by the report."""
    try:
        return reference_candidate(name).code
    except (ValueError, OSError):
        return None


def _limits(baselines: list[np.ndarray], others: list[np.ndarray]) -> tuple[float, float]:
    """y-limits showing the baselines whole and candidates up to twice the baselines' span beyond them.

    A candidate like exp(-x) reaches e^10 at the left edge; unclipped it would flatten every other curve.
    """
    finite = [c[np.isfinite(c)] for c in baselines + others]
    base = [c[np.isfinite(c)] for c in baselines if np.isfinite(c).any()]
    if not any(v.size for v in finite):
        return -1.0, 1.0
    ref = np.concatenate(base) if base else np.concatenate(finite)
    lo, hi = float(ref.min()), float(ref.max())
    span = max(hi - lo, 0.1)
    every = np.concatenate(finite)
    lo = max(min(lo, float(every.min())), lo - 2 * span)
    hi = min(max(hi, float(every.max())), hi + 2 * span)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def loss_shapes_view(rows: list[Row], top: int = TOP_SHAPES) -> View:
    about = ("The loss and its derivative as functions of the β-scaled log-ratio difference x = β·ρ, "
             "ρ = (log πc − log πr) − (log ref_c − log ref_r), for the best evolved candidates next to DPO and LRML "
             "(as in the DiscoPOP paper). A negative derivative pushes the chosen response up; where it is flat "
             "the pair no longer moves the policy.")
    view = View("loss-shapes", "Loss shapes", about)
    ranked = scored(rows)
    if not ranked:
        view.note = EMPTY_NOTE if not rows else "No candidate was scored, so there is no loss to compare with DPO."
        return view
    evolved, seen = [], set()
    for r in ranked:
        if r.proposer != "reference" and r.code_hash not in seen and len(evolved) < top:
            evolved.append(r)
            seen.add(r.code_hash)
    if not evolved:
        view.captions.append("No evolved candidate was scored yet: only the baselines are drawn.")
    x = np.linspace(-10, 10, 401)
    # (label, colour, line style, is baseline, loss, derivative)
    series: list[tuple[str, str, str, bool, np.ndarray, np.ndarray]] = []
    for r, colour in zip(evolved, SERIES_COLOURS, strict=False):
        curve = _sandboxed_curve(r, x, view.captions)
        if curve:
            series.append((f"{row_label(r)} (fitness {r.fitness:.3f})", colour, "-", False, *curve))
        if diagnostics_of(r):
            view.captions.append(f"{row_label(r)}, measured by its checks: {summarize(diagnostics_of(r))}.")
    for name, (colour, style) in BASELINE_STYLE.items():
        code = _reference_code(name)
        curve = _try_curve(code, x, name.upper(), view.captions) if code else None
        if curve:
            series.append((name.upper(), colour, style, True, *curve))
    if not series:
        view.note = "No loss could be evaluated (see the notes below)."
        return view
    fig = new_figure(12, 5)
    ax_loss, ax_grad = fig.subplots(1, 2)
    for label, colour, style, is_base, loss, grad in series:  # baselines last: drawn on top, thinner
        for ax, y in ((ax_loss, loss), (ax_grad, grad)):
            ax.plot(x, y, color=colour, ls=style, lw=1.6 if is_base else 2.2, zorder=3 if is_base else 2, label=label)
    for ax, index, ylabel, title in ((ax_loss, 4, "loss f(x)", "Loss"),
                                     (ax_grad, 5, "f′(x) = d loss / dx", "Derivative of the loss")):
        ax.set_ylim(*_limits([s[index] for s in series if s[3]], [s[index] for s in series if not s[3]]))
        ax.axhline(0, color=GREY, lw=0.8)
        ax.axvline(0, color=GREY, lw=0.8)
        ax.set_xlabel("x = β·ρ (β-scaled log-ratio difference, nats)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    legend_beside(ax_loss)
    view.figure = fig
    return view


def _try_curve(code: str, x: np.ndarray, label: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return loss_curve(code, x)
    except Exception as err:  # noqa: BLE001 - any failure of one candidate's code only skips that curve
        notes.append(f"Skipped {label}: {type(err).__name__}: {textwrap.shorten(str(err), 160)}")
        return None
