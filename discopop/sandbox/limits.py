"""A sandboxed process's limits, in a module of their own: ``boundary`` (its environment) and ``parent``
(the process) both read them, and neither should import the other for it."""

from __future__ import annotations

from dataclasses import dataclass

from discopop.config.training import SANDBOX_FILE_MB, SANDBOX_MEMORY_MB


@dataclass
class Limits:
    """Per-process limits; 0 disables a limit (a choice, not a gap: ``missing_layers`` does not report it)."""

    # Per process: address space (RLIMIT_AS), or for a CUDA child its data segment (RLIMIT_DATA); and the
    # memory of the whole tree (cgroup), where one can be made.
    memory_mb: int = SANDBOX_MEMORY_MB  # 6144; declared with the executor's settings, which default to it
    file_size_mb: int = SANDBOX_FILE_MB  # 256: largest file the child may write (RLIMIT_FSIZE)
    network: bool = False  # True: no network namespace, no Landlock TCP rule
    # Tasks (processes + threads) of the whole tree, via a pids cgroup. A training worker runs ~20
    # threads (torch, tokenizers, CUDA on GPU); 256 leaves room and still stops a fork bomb early.
    max_processes: int = 256
    # stdout+stderr bytes per request before the child is killed; a fine-tune logs a few KB.
    output_mb: int = 8
    # Size of the child's private /tmp and /dev/shm (each a fresh tmpfs, gone when the child is).
    # Nothing in a worker writes there (TMPDIR is the work dir); 64 MB is room for a stray library.
    tmpfs_mb: int = 64
    # The child initialises CUDA. CUDA maps far more virtual address space than it ever uses (tens to
    # hundreds of GB for its unified address space), so RLIMIT_AS would stop it at start-up. Those
    # reservations are inaccessible (PROT_NONE) or shared device mappings, which RLIMIT_DATA does not
    # count (Linux >= 4.7 counts private writable mappings), so a CUDA child gets RLIMIT_DATA instead:
    # a runaway of ordinary (private) host memory stays capped even where no memory cgroup can be made
    # (measured on an H100 with ``discopop check-gpu``, whose probe checks that an allocation over the cap
    # fails). It is not a hard cap: shared anonymous mappings (tested: 8 GB granted under a 4 GB cap) and,
    # likely, CUDA pinned host memory are not counted; only ``cgroup-memory`` bounds those. Candidate code
    # never runs in the worker (it runs in the CPU-only oracle, under RLIMIT_AS).
    uses_cuda: bool = False

    @property
    def os_hardening(self) -> bool:
        """The private mounts, the Landlock read rules and seccomp: always on, so not a setting of a run.

        A testing seam, not a switch: ``benchmarks/sandbox_startup.py`` measures what these layers cost with a
        subclass of its own that answers False (the child reads it from ``DISCOPOP_SANDBOX_HARDEN``)."""
        return True
