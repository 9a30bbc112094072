"""LRML written with idioms LLM proposals use: ``torch.nn.functional`` imported from ``torch.nn``, a
private helper, annotations, keyword arguments, ``torch.finfo(...).eps``, ``math.inf``, ``float('inf')`` and a
string keyword argument. The value equals ``lrml.py``'s.

Source: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
Models" (DiscoPOP), Eq. 5, in the contract form.
"""

import math

import torch
from torch.nn import functional

TAU = 0.05


def _blend(logistic: torch.Tensor, exponential: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.lerp(logistic, exponential, weight)


def lrml_idioms(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
                beta: float) -> torch.Tensor:
    eps = torch.finfo(policy_chosen_logps.dtype).eps
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    logits = beta * rho
    logits = logits.clamp(min=-math.inf, max=float("inf"))
    weight = torch.sigmoid(logits / max(TAU, eps))
    ones = torch.ones_like(logits)
    logistic = functional.binary_cross_entropy_with_logits(logits, ones, reduction="none")
    exponential = torch.exp(-logits)
    return _blend(logistic, exponential, weight)
