"""KeyboardInterrupt raised in the main thread through _thread.interrupt_main."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    torch.importlib.import_module('_thread').interrupt_main()
    for _ in range(1000):
        rho = rho + 0.0
    return -F.logsigmoid(beta * rho)
