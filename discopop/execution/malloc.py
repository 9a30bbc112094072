"""Let a fine-tuning process keep the memory it frees, instead of handing it back to the OS after every tensor.

glibc's ``malloc`` serves blocks above its mmap threshold (128 KiB at start, raised adaptively) with a fresh
``mmap`` and returns them with ``munmap`` on free, and trims the top of the heap once more than its trim threshold
is free. A CPU fine-tune of a small model allocates and frees activation-sized blocks (~1 MB on the embedded task)
hundreds of times per step, so each step mapped fresh pages and paid a zero-filled page fault per 4 KiB:
~245,000 minor faults and ~0.8 s of system time per fine-tune of the embedded task, ~10% of its CPU time
(``benchmarks/step_split.py``). With the thresholds below the freed blocks stay in the heap and are reused.

Only where memory comes from, not what is computed: torch aligns every CPU tensor to 64 bytes itself, so the
kernels see the same alignment and the results are bit for bit the same (the archive is unchanged). The cost is
memory kept: at most ``TRIM_THRESHOLD`` of free heap top per process, well inside a worker's address-space limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 64 * 2**20  # blocks below this come from the heap (glibc's adaptive maximum is 32 MiB)
TRIM_THRESHOLD = 256 * 2**20  # free heap top kept before trimming
TOP_PAD = 64 * 2**20  # extra heap grown per brk, so the heap grows in few steps


def keep_freed_memory() -> bool:
    """Set the process's glibc malloc thresholds (above); True if they were set, False where malloc is not glibc's.

    Process-wide and idempotent; safe to call at any time (only later allocations follow it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
