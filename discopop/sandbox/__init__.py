"""Child-process isolation for untrusted candidate code: the one seam where it can run.

Layers, outermost first (the static AST check in ``losses.py`` comes before all of them). Each OS
layer is used where the machine allows it and skipped silently where it does not;
``SandboxedProcess.layers`` names the ones that are active for a given child, e.g. on a root Linux
box with cgroup v1 and Landlock (Debian 12, kernel 6.x) all of them are::

    process-group env-allowlist rlimit-core rlimit-as (rlimit-data on CUDA) rlimit-fsize netns cgroup-pids
    cgroup-memory (on CUDA without it: memory-watch) output-cap parent-death-signal no-new-privs private-tmp
    landlock-fs landlock-read landlock-net landlock-signals no-capabilities seccomp audit-guard state-watch

The files follow the process boundary; each one's docstring describes its layers:

* ``parent.py``: ``SandboxedProcess`` and ``Limits``; process group, rlimits, netns, output cap,
  the pipe protocol (parent side, set up before/at ``exec``);
* ``boundary.py``: what crosses it: the environment allow-list (``sandbox_env``), untrusted text
  coming back (``clean_text``), the work dir's removal (``remove_tree``);
* ``cgroups.py``: the private pids and memory cgroups of a child tree;
* ``memory_watch.py``: ``memory-watch``, the parent's sampled cap on a CUDA child tree's resident memory
  where no memory cgroup can be made;
* ``lockdown.py``: ``lock_down``, the child-side OS layers (parent-death signal, no-new-privs,
  private /tmp and /dev/shm, Landlock, capabilities), called by the worker first thing;
* ``seccomp.py``: the BPF filter that ``seal`` loads;
* ``guard.py``: ``seal``, once the worker's own set-up is done, and the audit-hook runtime guard
  (``install_guard``, ``guard_violations``). ``state-watch`` lives in ``worker.py``.

Python-level guards alone are bypassable; that is why the OS layers sit around them. Where an OS
layer is missing (no root, no Landlock, no cgroups) the remaining ones still apply, and
``SandboxedProcess.missing_layers()`` names each absent layer with the reason.

A CUDA worker (``Limits.uses_cuda``) keeps every layer but one: ``rlimit-as`` becomes ``rlimit-data``
(CUDA reserves far more address space than it uses, but those reservations are not private writable
memory), so its ordinary (private) host memory stays capped even without ``cgroup-memory``; shared
anonymous mappings and pinned host memory are not counted, so without that cgroup ``memory-watch`` samples
the tree's resident anonymous + shared memory every 50 ms and kills it past the cap: a soft cap, not a hard
one (candidate code never runs there).
Landlock lets it open the GPU device files; seccomp never blocked what CUDA needs (``ioctl``,
``mmap``, threads). CUDA MPS is not available inside (its client connects over a unix socket in
/tmp: seccomp refuses AF_UNIX sockets and /tmp is private), so workers sharing a GPU time-slice it.
Loss oracles and CPU workers get ``CUDA_VISIBLE_DEVICES=""`` and no GPU device file.
``Limits.os_hardening`` is always True; only ``benchmarks/sandbox_startup.py``'s own subclass of ``Limits``
turns off private-tmp, landlock-read and seccomp, to measure what they cost.

The same ``SandboxedProcess`` runs the warm training workers (``executors.py``) and the one-shot
``discopop check`` (``checking.py``). The names below are re-exported for callers; to monkeypatch
one, patch the module that uses it (e.g. ``discopop.sandbox.guard.install_guard`` for ``seal``).
"""

from discopop.sandbox.boundary import (
    READ_PATHS_VAR,
    REPLY_LIMIT,
    TEXT_LIMIT,
    clean_reply,
    clean_text,
    remove_tree,
    sandbox_env,
)
from discopop.sandbox.guard import guard_violations, install_guard, seal
from discopop.sandbox.lockdown import lock_down
from discopop.sandbox.parent import (
    Limits,
    SandboxDied,
    SandboxedProcess,
    SandboxTimeout,
    child_connections,
    expected_layers,
    missing_layer_reasons,
)

__all__ = [
    "READ_PATHS_VAR", "REPLY_LIMIT", "TEXT_LIMIT", "Limits", "SandboxDied", "SandboxTimeout", "SandboxedProcess",
    "child_connections", "clean_reply", "clean_text", "expected_layers", "guard_violations", "install_guard",
    "lock_down", "missing_layer_reasons", "remove_tree", "sandbox_env", "seal",
]  # fmt: skip
