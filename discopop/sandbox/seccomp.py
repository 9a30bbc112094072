"""The ``seccomp`` layer of ``seal``, put on once the worker's own set-up is done (it may still
start threads afterwards):

* ``seccomp``: a BPF filter on every thread (x86-64) refuses with EPERM ``execve``, ``fork``,
  ``vfork``, ``clone`` without ``CLONE_THREAD``, AF_UNIX sockets, ``connect``, ``ptrace``,
  mounts, namespaces, BPF, io_uring, kernel modules and keys (``clone3`` gets ENOSYS so glibc
  falls back to ``clone``): ``_posixsubprocess.fork_exec``, ``os.execv`` and a host unix socket
  are out of reach even for C code. Pipes and connected sockets inherited from the parent work.
"""

from __future__ import annotations

import errno
import sys

from discopop.sandbox.lockdown import PR_SET_NO_NEW_PRIVS

# x86-64 numbers (arch/x86/entry/syscalls/syscall_64.tbl). Other architectures: the layer is absent.
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000  # the x32 ABI's syscall numbers: none is allowed
_SYS = {
    "socket": 41, "connect": 42, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "ptrace": 101,
    "syslog": 103, "uselib": 134, "vhangup": 153, "pivot_root": 155, "adjtimex": 159, "chroot": 161,
    "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "execveat": 322, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "clone3": 435,
    "pidfd_getfd": 438, "mount_setattr": 442,
}  # fmt: skip
# Refused outright (EPERM): new programs and processes, other processes' memory, mounts and
# namespaces, kernel modules/keys/BPF, io_uring (its operations bypass seccomp), and ``connect``
# on any socket (an inherited, already-connected socket or pipe keeps working for read/write).
_DENIED_SYSCALLS = sorted(set(_SYS) - {"socket", "clone", "clone3"})
_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC = 317, 1, 1
_CLONE_THREAD, _AF_UNIX = 0x00010000, 1
_RET_ALLOW = 0x7FFF0000
_RET_EPERM = 0x00050000 | errno.EPERM
_RET_ENOSYS = 0x00050000 | errno.ENOSYS


def _seccomp_program() -> list[tuple[int, int, int, int]]:
    """The BPF filter as (code, jt, jf, k) rows; jumps are relative, to the next row by default."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    nr, arch, arg0 = 0, 4, 16  # offsets in struct seccomp_data (arg0: its low 32 bits, little-endian)
    rows = [(ld, 0, 0, arch), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, _RET_EPERM),  # i386/x32 entry points
            (ld, 0, 0, nr), (jge, 0, 1, _X32_BIT), (ret, 0, 0, _RET_EPERM)]
    for name in _DENIED_SYSCALLS:
        rows += [(jeq, 0, 1, _SYS[name]), (ret, 0, 0, _RET_EPERM)]
    # clone3 cannot be inspected (its flags are behind a pointer): ENOSYS makes glibc fall back to clone.
    rows += [(jeq, 0, 1, _SYS["clone3"]), (ret, 0, 0, _RET_ENOSYS)]
    # clone: threads (CLONE_THREAD) only; fork, vfork and posix_spawn all arrive here without it.
    rows += [(jeq, 0, 4, _SYS["clone"]), (ld, 0, 0, arg0), (jset, 0, 1, _CLONE_THREAD),
             (ret, 0, 0, _RET_ALLOW), (ret, 0, 0, _RET_EPERM)]
    # socket: no AF_UNIX (pathname and abstract sockets of the host); others meet the empty netns.
    rows += [(jeq, 0, 4, _SYS["socket"]), (ld, 0, 0, arg0), (jeq, 0, 1, _AF_UNIX),
             (ret, 0, 0, _RET_EPERM), (ret, 0, 0, _RET_ALLOW)]
    return [*rows, (ret, 0, 0, _RET_ALLOW)]


def install_seccomp() -> bool:
    """Load the filter on every thread of this process (TSYNC); False where it cannot be done."""
    import ctypes  # lazy: ctypes only in the process that installs the filter
    import platform

    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    rows = _seccomp_program()
    program = (SockFilter * len(rows))(*(SockFilter(*row) for row in rows))
    fprog = SockFprog(len(rows), program)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # required for an unprivileged filter
        return False
    return libc.syscall(_SYS_SECCOMP, ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
                        ctypes.c_uint(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog)) == 0
