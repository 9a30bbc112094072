"""Contract v2: the inputs a loss may declare, by parameter name, and calling a loss with what it declares.

A v1 loss takes exactly ``(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
reference_rejected_logps, beta)``: every archived run and shipped reference is one, and its calls, oracle frames
and fingerprints stay exactly as they were. A v2 loss takes the two policy log-probs, any of the optional inputs
below, and ``beta`` last, in the canonical order of :data:`TENSOR_INPUTS` (so a loss's parameters say which inputs
it reads, and every caller builds the same call from one table):

- ``reference_chosen_logps``, ``reference_rejected_logps``: both or neither; a loss with neither is
  *reference-free* and the trainer computes no reference log-probs for it (SimPO, ORPO).
- ``chosen_lengths``, ``rejected_lengths``: completion token counts as float tensors, at least 1
  (length normalisation).
- ``chosen_nll``: the chosen answer's mean per-token negative log-likelihood under the policy, differentiable
  (an SFT / RPO term). It is ``-policy_chosen_logps / chosen_lengths`` for the summed log-probs the trainer feeds,
  given as an input so that a loss can say "NLL" without knowing how the trainer sums.

Torch-free: the static check, the oracle and the trusted callers share it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

POLICY = ("policy_chosen_logps", "policy_rejected_logps")
REFERENCE = ("reference_chosen_logps", "reference_rejected_logps")
LENGTHS = ("chosen_lengths", "rejected_lengths")
NLL = "chosen_nll"
# Every tensor input, in canonical (slot) order: the oracle wire numbers them by this position.
TENSOR_INPUTS = (*POLICY, *REFERENCE, *LENGTHS, NLL)
V1_INPUTS = TENSOR_INPUTS[:4]
# Inputs that carry a gradient back to the policy in training (the rest are constants).
DIFFERENTIABLE = frozenset({*POLICY, NLL})


def signature_problem(params: tuple[str, ...]) -> str | None:
    """Why ``params`` (a loss's parameter names, in order) is not a v1 or v2 signature, or None. One line."""
    v1 = (*V1_INPUTS, "beta")
    if params == v1:
        return None
    unknown = [p for p in params if p not in TENSOR_INPUTS and p != "beta"]
    if unknown:
        return f"unknown input '{unknown[0]}' (a loss may take {', '.join(TENSOR_INPUTS)}, then beta)"
    if params[:2] != POLICY or not params or params[-1] != "beta":
        return f"must start with {', '.join(POLICY)} and end with beta, got ({', '.join(params)})"
    if len(set(params)) != len(params):
        return f"repeats an input ({', '.join(params)})"
    tensors = params[:-1]
    if list(tensors) != sorted(tensors, key=TENSOR_INPUTS.index):
        return f"inputs must come in the order {', '.join(TENSOR_INPUTS)}, then beta; got ({', '.join(params)})"
    if sum(r in tensors for r in REFERENCE) == 1:
        return f"takes one reference log-prob: take both ({', '.join(REFERENCE)}) or neither (reference-free)"
    return None


def declared_inputs(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The tensor inputs ``fn`` takes, in call order (beta follows them).

    A loaded loss and a ``RemoteLoss`` say it (``discopop_inputs``); a plain callable whose parameter names form a
    v2 signature is read by its names; anything else is called as a v1 loss, as before contract v2.
    """
    declared = getattr(fn, "discopop_inputs", None)
    if declared is not None:
        return tuple(declared)
    try:
        params = tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return V1_INPUTS
    if params != (*V1_INPUTS, "beta") and signature_problem(params) is None:
        return params[:-1]
    return V1_INPUTS


def is_v1(inputs: tuple[str, ...]) -> bool:
    return tuple(inputs) == V1_INPUTS


def needs_reference(inputs: tuple[str, ...]) -> bool:
    """Whether a loss taking ``inputs`` reads the reference log-probs (False: reference-free)."""
    return REFERENCE[0] in inputs


def needs_lengths(inputs: tuple[str, ...]) -> bool:
    """Whether the caller must know completion lengths (the lengths themselves, or the NLL derived with them)."""
    return any(name in inputs for name in (*LENGTHS, NLL))


def call_loss(fn: Callable[..., Any], available: Mapping[str, Any], beta: float) -> Any:
    """``fn`` called with the inputs it declares, taken from ``available`` by name, then ``beta``."""
    return fn(*(available[name] for name in declared_inputs(fn)), beta)
