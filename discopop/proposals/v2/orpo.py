"""ORPO loss: the chosen answer's NLL plus beta times an odds-ratio term, reference-free (contract v2).

loss = NLL - beta * log sigmoid(log odds(p_c) - log odds(p_r)),   log odds(p) = log p - log(1 - p),
log p = pi / |y| (the average per-token log-prob), NLL = the chosen answers' token-mean NLL over the batch
(sum of token NLLs / number of tokens, as TRL's SFT terms average it; the same value on every example).

Source: Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model", Eqs. 4-7
(beta is the paper's lambda). TRL: ORPOTrainer, whose odds-ratio term this equals
(tests/test_contract_v2_parity.py); its NLL also counts the prompt's tokens, this one the completion's only.
The average log-prob is kept below 0 (log(1 - p) needs p < 1): real answers are never certain.
"""

import torch

CEILING = -1e-6


def orpo(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, chosen_nll, beta):
    chosen = torch.clamp(policy_chosen_logps / chosen_lengths, max=CEILING)
    rejected = torch.clamp(policy_rejected_logps / rejected_lengths, max=CEILING)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    nll = (chosen_nll * chosen_lengths).sum() / chosen_lengths.sum()
    return nll * torch.ones_like(chosen) - beta * torch.nn.functional.logsigmoid(log_odds)


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))
