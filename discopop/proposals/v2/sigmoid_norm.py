"""DPO on length-normalised log-ratios: TRL's loss_type="sigmoid_norm" (contract v2).

loss = -log sigmoid(beta * ((pi_c - ref_c) / |y_c| - (pi_r - ref_r) / |y_r|))

|y| are the completion token counts. The four-input contract could only approximate it (DPO at beta / L for
answers all L tokens long); with the lengths it is TRL's own loss (tests/test_contract_v2_parity.py).
"""

import torch.nn.functional as F


def sigmoid_norm(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 chosen_lengths, rejected_lengths, beta):
    chosen = (policy_chosen_logps - reference_chosen_logps) / chosen_lengths
    rejected = (policy_rejected_logps - reference_rejected_logps) / rejected_lengths
    return -F.logsigmoid(beta * (chosen - rejected))
