"""Child side of the sandbox: ``lock_down``, called by the worker first thing, while it still has a
single thread, puts on the OS layers that a process can only put on itself:

* ``parent-death-signal``: the child gets SIGKILL if its parent dies, even while busy;
* ``private-tmp``: a private mount namespace with fresh size-capped tmpfs on /tmp and /dev/shm
  (``Limits.tmpfs_mb``): nothing written there is seen by the host or outlives the child; the
  work dir and any readable path below them are bind-mounted back (needs root);
* ``landlock-*``: Landlock (Linux >= 5.13; root-proof, irreversible, inherited by children)
  forbids writing, creating or deleting files anywhere but the work directory (and a few device
  files), reading anything but the child's Python, import path, task cache, work dir and a short
  list of system files (``landlock-read``: not /etc/shadow, not the user's home), TCP
  bind/connect (kernel ABI >= 4) and signals and abstract unix sockets outside the sandbox
  (ABI >= 6). This holds even against code that slips past the Python-level guard, e.g. torch's
  C++ file writer behind ``torch.save``;
* ``no-capabilities``: a root child drops every capability (it cannot raise its own rlimits).

A CUDA worker (``Limits.uses_cuda``) keeps all of these; Landlock additionally lets it open the GPU
device files read-write (``gpu_device_files``) and read the driver's /proc and /sys entries. CPU
workers and loss oracles cannot open them.
"""

from __future__ import annotations

import os
import signal
import sys

from discopop.sandbox.boundary import READ_PATHS_VAR, outside_interpreter

# Landlock (include/uapi/linux/landlock.h).
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_LL_TRUNCATE, _LL_REFER = 1 << 14, 1 << 13
_LL_DIR_WRITES = sum(1 << b for b in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
_LL_READS = _LL_EXECUTE | _LL_READ_FILE | _LL_READ_DIR
_LL_FILE_RIGHTS = _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | _LL_TRUNCATE  # what a rule on a file may grant
_LL_NET_BIND, _LL_NET_CONNECT = 1 << 0, 1 << 1
_LL_SCOPE_ABSTRACT_UNIX, _LL_SCOPE_SIGNAL = 1 << 0, 1 << 1
_SYS_LANDLOCK_CREATE, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT = 444, 445, 446  # same on x86-64/arm64
_PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 1, 38, 24
# Device files a sandboxed process may open for writing.
_WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random", "/dev/shm")
# Only for a CUDA worker (``Limits.uses_cuda``): the driver opens its device files read-write and drives
# the GPU with ioctl and mmap on them. Every /dev/nvidia* entry is added at start (nvidia0.., nvidia-caps).
# Landlock's ioctl right (ABI 5) is not handled by our ruleset, so ioctls on these files are not restricted;
# seccomp allows ioctl/mmap. The driver also writes into the process's own /proc entry (see _landlock).
# A CPU worker and every loss oracle get none of these (they cannot reach a GPU).
_CUDA_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset", "/dev/dri")
# What a CUDA worker reads besides the system files: the driver's parameters and the device list.
_CUDA_READABLE = ("/proc/driver/nvidia", "/proc/devices", "/sys/module/nvidia")
# What a worker reads besides its Python (``sys.prefix``, ``sys.path``), its work dir and task cache:
# shared libraries, the loader's cache, time zone, user names (``getpass``), CPU topology (OpenMP,
# torch), GPU discovery (CUDA, NVML). Not /etc as a whole (/etc/shadow), not /home or /root.
_READABLE_SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/ld.so.conf",
                    "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone", "/etc/passwd", "/etc/group",
                    "/etc/nsswitch.conf", "/etc/os-release", "/etc/mime.types", "/etc/ssl/certs",
                    "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys/vm/overcommit_memory",
                    "/sys/devices", "/sys/bus", "/sys/class", "/sys/fs/cgroup")
# Mount namespace (sched.h, sys/mount.h).
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 0x1000, 0x4000, 1 << 18
_MNT_DETACH = 2


def hardening_on() -> bool:
    """False only for ``benchmarks/sandbox_startup.py``'s unhardened ``Limits`` (see ``Limits.os_hardening``)."""
    return os.environ.get("DISCOPOP_SANDBOX_HARDEN", "1") != "0"


def _uses_cuda() -> bool:
    """True in a CUDA worker (``Limits.uses_cuda``): its GPU device files stay open to it."""
    return os.environ.get("DISCOPOP_SANDBOX_CUDA", "0") == "1"


def gpu_device_files(uses_cuda: bool, dev: str = "/dev") -> list[str]:
    """The GPU device files Landlock leaves writable: all of /dev/nvidia* for a CUDA worker, none otherwise."""
    if not uses_cuda:
        return []
    try:
        found = [os.path.join(dev, n) for n in sorted(os.listdir(dev)) if n.startswith("nvidia")]
    except OSError:
        found = []
    return list(dict.fromkeys([*_CUDA_DEVICES, *found]))


def lock_down(workdir: str, network: bool = False) -> list[str]:
    """Put the child-side OS layers on this process (and its future children); return the active ones.

    Call it while the process still has one thread: Landlock restricts the calling thread and the
    threads it creates afterwards, not threads that already exist. Every layer is optional: a
    kernel or libc without it is skipped silently (the other layers still hold).

    The parent-death signal fires when the *thread* that started this process exits, so start
    sandboxes from long-lived threads: the main thread (``discopop check``, a Ray actor's methods)
    or a thread pool's workers (``LocalExecutor``), which live until the executor is closed.
    """
    if sys.platform != "linux":
        return []
    import ctypes  # lazy: ctypes only in the process that locks itself down

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return []
    libc.syscall.restype = ctypes.c_long
    layers: list[str] = []
    parent = int(os.environ.get("DISCOPOP_SANDBOX_PARENT", "0"))
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
        layers.append("parent-death-signal")
        if parent and os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        layers.append("no-new-privs")
    readable = _readable_paths(workdir) if hardening_on() else {}
    if hardening_on():
        layers += _private_tmp(libc, [workdir, *readable], int(os.environ.get("DISCOPOP_SANDBOX_TMPFS_MB", "64")))
    layers += _landlock(libc, workdir, network, readable, private_shm="private-tmp" in layers)
    if _drop_capabilities(libc):
        layers.append("no-capabilities")
    return layers


def _readable_paths(workdir: str) -> dict[str, int]:
    """What this process may read, as {path: Landlock rights}: its Python, its import path, the task
    cache, the paths its parent named (``READ_PATHS_VAR``), the hub caches, its /proc entry, system files.

    A project directory on the import path (a repository root, say) is listable, but only its
    packages and modules are readable: a ``.env`` or key file next to them stays closed.
    """
    whole = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
             os.environ.get("DISCOPOP_CACHE_DIR", ""), os.environ.get("HF_HUB_CACHE", ""),
             os.environ.get("HF_DATASETS_CACHE", ""), *os.environ.get(READ_PATHS_VAR, "").split(os.pathsep),
             f"/proc/{os.getpid()}", *_READABLE_SYSTEM, *(_CUDA_READABLE if _uses_cuda() else ()),
             *(os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if _uses_cuda() else ())]
    work = os.path.realpath(workdir)
    rules: dict[str, int] = {}
    for entry in sys.path:
        real = os.path.realpath(entry) if entry and os.path.isabs(entry) else ""
        if not real or real == work or not os.path.exists(real):
            continue
        if not outside_interpreter(real) or not os.path.isdir(real):
            whole.append(real)
            continue
        rules[real] = _LL_READ_DIR
        try:
            children = list(os.scandir(real))
        except OSError:
            children = []
        for child in children:
            path = os.path.realpath(child.path)
            if child.is_dir() and (child.name == "__pycache__" or os.path.exists(os.path.join(path, "__init__.py"))):
                rules[path] = _LL_READS
            elif child.is_file() and child.name.endswith((".py", ".pyc", ".so", ".pth")):
                rules[path] = _LL_READ_FILE | _LL_EXECUTE
    for path in whole:
        real = os.path.realpath(path) if path and os.path.isabs(path) else ""
        if real and real != work and os.path.exists(real):
            rules[real] = _LL_READS
    return rules


def _private_tmp(libc, keep: list[str], size_mb: int) -> list[str]:
    """A private mount namespace with a fresh size-capped tmpfs on /tmp and /dev/shm.

    What the child writes there is invisible to the host and freed with the child; what it must
    still see below them (its work dir, a task cache under /tmp) is bind-mounted back at the same
    path. Needs CAP_SYS_ADMIN (root): elsewhere the layer is absent and Landlock still keeps the
    child's writes in its work dir.
    """
    if libc.unshare(_CLONE_NEWNS) != 0:
        return []
    # Nothing mounted from here on may propagate back to the host's namespace.
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return []
    done = []
    for target in ("/tmp", "/dev/shm"):
        real = os.path.realpath(target)
        inside = sorted(p for p in keep if p.startswith(real + os.sep))
        inside = [p for i, p in enumerate(inside) if not any(p.startswith(q + os.sep) for q in inside[:i])]
        if os.path.isdir(real) and _mount_fresh_tmpfs(libc, real, inside, size_mb):
            done.append(target)
    return ["private-tmp"] if done == ["/tmp", "/dev/shm"] else []


def _mount_fresh_tmpfs(libc, target: str, keep: list[str], size_mb: int) -> bool:
    fds = []
    try:
        for path in keep:
            fds.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
    except OSError:
        for _, fd in fds:
            os.close(fd)
        return False
    options = f"size={size_mb}m,nr_inodes=65536,mode=1777".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    ok = libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options) == 0
    try:
        for path, fd in fds:
            if not ok:
                break
            source = f"/proc/self/fd/{fd}"
            if os.path.isdir(source):
                os.makedirs(path, mode=0o700, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                open(path, "ab").close()  # noqa: SIM115 - a mount point for the file
            if libc.mount(source.encode(), path.encode(), None, _MS_BIND | _MS_REC, None) != 0:
                libc.umount2(target.encode(), _MNT_DETACH)  # never leave the work dir hidden
                ok = False
    finally:
        for _, fd in fds:
            os.close(fd)
    return ok


def _landlock(libc, workdir: str, network: bool, readable: dict[str, int], private_shm: bool) -> list[str]:
    """Writes only in the work dir and device files (/dev/shm only when it is the child's own);
    reads only in ``readable`` and the work dir (all reads stay free when ``readable`` is empty);
    no TCP; no signals or abstract sockets outside."""
    import ctypes  # lazy: ctypes only in the process that locks itself down

    abi = libc.syscall(_SYS_LANDLOCK_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return []

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    fs = _LL_WRITE_FILE | _LL_DIR_WRITES | (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0)
    fs |= _LL_READS if readable else 0
    net = (_LL_NET_BIND | _LL_NET_CONNECT) if abi >= 4 and not network else 0
    scoped = (_LL_SCOPE_ABSTRACT_UNIX | _LL_SCOPE_SIGNAL) if abi >= 6 else 0
    attr = RulesetAttr(fs, net, scoped)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return []

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            rights &= fs if os.path.isdir(path) else fs & _LL_FILE_RIGHTS
            rule = PathBeneath(rights, fd)
            libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                         ctypes.c_uint32(0))
        finally:
            os.close(fd)

    try:
        allow(workdir, fs)
        # The CUDA driver writes into its own process's /proc entry at initialisation (without it every
        # CUDA call fails with error 304); the entry is this process's alone.
        own_proc = [f"/proc/{os.getpid()}"] if _uses_cuda() else []
        devices = [*_WRITABLE_DEVICES, *gpu_device_files(_uses_cuda()), *own_proc]
        devices = [d for d in devices if private_shm or d != "/dev/shm"]  # the host's: files there outlive us
        for path in devices:
            allow(path, fs if os.path.isdir(path) else _LL_FILE_RIGHTS & ~_LL_EXECUTE)
        for path, rights in readable.items():
            allow(path, rights)
        if libc.syscall(_SYS_LANDLOCK_RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return []
    finally:
        os.close(ruleset)
    return (["landlock-fs"] + (["landlock-read"] if readable else []) + (["landlock-net"] if net else [])
            + (["landlock-signals"] if scoped else []))


def _drop_capabilities(libc) -> bool:
    """Empty the bounding, effective, permitted and inheritable capability sets (a root child stays uid 0)."""
    import ctypes  # lazy: ctypes only in the process that locks itself down

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, current = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), current) != 0 or not any(d.permitted for d in current):
        return False
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    return libc.capset(ctypes.byref(header), (Data * 2)()) == 0
