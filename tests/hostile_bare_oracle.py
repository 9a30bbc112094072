"""A loss oracle with every Python-level layer switched off (the static check, the restricted builtins
a loss is loaded with, the runtime audit guard): only the OS layers (namespaces, private /tmp,
Landlock, seccomp, cgroups, rlimits, the environment allow-list) stand.

Only ``tests/test_hostile_os.py`` starts it, to show that those layers hold on their own against
code that got past all of the Python-level ones. Everything else is the production oracle.
"""

import builtins

import hostile_deep_oracle  # noqa: F401 - fools the static check

import discopop.contract.allowlist as allowlist
import discopop.contract.losses as losses
import discopop.sandbox.guard as guard


def _no_guard(workdir: str) -> None:
    """The audit hook is bypassable in principle (C code, torch's writers): pretend it was bypassed."""


guard.install_guard = _no_guard  # the module ``seal`` looks it up in
allowlist.BUILTINS = {name for name in dir(builtins) if not name.startswith("__")}
losses._restricted_import = builtins.__import__

if __name__ == "__main__":
    from discopop.sandbox.oracle import main

    main()
