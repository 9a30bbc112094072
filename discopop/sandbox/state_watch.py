"""The state watch: notices when a job changed global torch state or patched a module, and undoes it.

Both sandboxed processes that run jobs use it (defence in depth): the worker after every check or
train job, and the loss oracle around the candidate's calls. A candidate should never reach the
worker's globals (its code runs only in the oracle), so a change there points at a bug or a breach.
"""

from __future__ import annotations

import builtins
import math
import operator
import sys
from types import ModuleType
from typing import Any

_MISSING = object()
# Attributes that change during normal operation (interpreter bookkeeping), never compared.
_VOLATILE = {"sys": {"last_type", "last_value", "last_traceback", "last_exc"}, "builtins": {"_"}}
_VOLATILE_EVERYWHERE = {"__warningregistry__"}  # the warnings module's per-module "already shown" record


class StateWatch:
    """Snapshot of global torch state and of the namespaces the checks and the trainer rely on.

    Taken once the worker is set up; compared after every job, and by the loss oracle after every request
    (identity of every attribute of ~3.7k: one pass in C per namespace, ~0.16 ms, and the detailed comparison only
    where that pass differs). New attributes are allowed only if they are modules (lazy sub-module imports add those
    to their parent).
    """

    def __init__(self, threads: int):
        import torch  # lazy: the sandbox package stays torch-free at import (the parent imports it)
        import torch.nn.functional as F

        self.threads = threads
        self.spaces: dict[str, Any] = {"builtins": builtins, "math": math, "sys": sys, "torch": torch,
                                       "torch.nn.functional": F, "torch.Tensor": torch.Tensor,
                                       "torch.TensorBase": torch.Tensor.__mro__[1]}
        for name, module in list(sys.modules.items()):
            if name == "__main__" or name.startswith("discopop."):
                self.spaces[name] = module
        trl = sys.modules.get("discopop.dpo_trainer")
        if trl is not None:
            self.spaces["DiscoveredLossDPOTrainer"] = trl.DiscoveredLossDPOTrainer
        self.snapshot = {name: dict(vars(obj)) for name, obj in self.spaces.items()}
        # (keys, values) of each snapshot, for the fast path of ``patched``: the loss oracle asks after every request.
        self._frozen = {name: (tuple(snap), tuple(snap.values())) for name, snap in self.snapshot.items()}
        self.state = self.read_state()

    def remember_state(self) -> None:
        """Take the current global torch state as the one to keep (after a deliberate change, e.g. threads)."""
        self.state = self.read_state()

    @staticmethod
    def read_state() -> dict[str, Any]:
        import torch  # lazy: the sandbox package stays torch-free at import (the parent imports it)

        return {
            "num_threads": torch.get_num_threads(), "default_dtype": torch.get_default_dtype(),
            "grad_enabled": torch.is_grad_enabled(), "default_device": torch.get_default_device(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "anomaly_detection": torch.is_anomaly_enabled(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "recursion_limit": sys.getrecursionlimit(),
        }

    def changed_state(self) -> list[str]:
        now = self.read_state()
        return [f"{key} {self.state[key]} -> {now[key]}" for key in self.state if now[key] != self.state[key]]

    def unchanged(self, name: str) -> bool:
        """True if namespace ``name`` holds the snapshot's keys, in order, bound to the very same objects: one pass
        in C (~0.1 ms for all of them, where the detailed comparison below took ~1 ms), exact, never a false yes."""
        keys, values = self._frozen[name]
        current = vars(self.spaces[name])
        return (len(current) == len(keys) and all(map(operator.is_, current, keys))
                and all(map(operator.is_, current.values(), values)))

    def patched(self) -> list[str]:
        found = []
        for name, obj in self.spaces.items():
            if self.unchanged(name):
                continue
            current = vars(obj)
            skip = _VOLATILE.get(name, set()) | _VOLATILE_EVERYWHERE
            for key, value in self.snapshot[name].items():
                if key not in skip and current.get(key, _MISSING) is not value:
                    found.append(f"{name}.{key}")
            for key in current.keys() - self.snapshot[name].keys():
                if key not in skip and not isinstance(current[key], ModuleType):
                    found.append(f"{name}.{key}")
        return found

    def reset(self) -> None:
        """Put global torch state back as it was after set-up; only what changed is set (some setters
        are not free: ``use_deterministic_algorithms`` imports torch._dynamo)."""
        import torch  # lazy: the sandbox package stays torch-free at import (the parent imports it)

        setters = {
            "num_threads": torch.set_num_threads, "default_dtype": torch.set_default_dtype,
            "grad_enabled": torch.set_grad_enabled,
            "default_device": lambda d: torch.set_default_device(None if d == torch.device("cpu") else d),
            "deterministic_algorithms": torch.use_deterministic_algorithms,
            "anomaly_detection": torch.autograd.set_detect_anomaly,
            "float32_matmul_precision": torch.set_float32_matmul_precision,
            "recursion_limit": sys.setrecursionlimit,
        }
        now = self.read_state()
        for key, value in self.state.items():
            if now[key] != value:
                setters[key](value)
