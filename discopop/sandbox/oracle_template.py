"""The oracle template (``python -m discopop.sandbox.oracle_template``): forks loss oracles from a pre-imported state.

Why: a spawned oracle spends ~2 CPU-seconds importing torch before it can say ``READY``; on the diagnostic tier
that was most of a run's CPU. This process is started like an oracle (``SandboxedProcess``: rlimits, network
namespace, env allow-list, its own session and output cap), imports torch and the oracle's modules once, and then
only serves "fork one" requests from the trusted parent (``oracle_fork.OracleTemplate``) over a unix seqpacket
socket. It never loads candidate code, so every child starts from the same clean state; it does no torch op (no
OpenMP or BLAS pool may exist when it forks) and refuses to fork unless it has exactly one thread.

A child, right after ``fork``, is single-threaded and:

1. forgets the template's control socket and closes every descriptor but the three it was sent (its oracle
   socket, the write end of its own output pipe, the gate): it cannot talk to the template or see another child;
2. waits on the gate until the parent has moved it into its own cgroups (EOF: the parent gave up, it exits);
3. takes a session of its own, its own work dir and environment (the one ``sandbox_env`` gives a spawned
   oracle, built by the parent), and then runs ``oracle.start``: the same ``lock_down``, ``Oracle()``, ``seal``
   and ``READY`` a spawned oracle runs, so every child-side layer is the same function on the child's own thread.

The template does not reap on its own: a dead child stays a zombie (its pid reserved, so the parent's pidfd and
process-group kill cannot hit a reused pid) until the parent asks ``reap`` and gets its exit code. The template
dies with its parent (parent-death signal) and its children die with it (theirs, armed by ``lock_down``).
"""

from __future__ import annotations

import json
import os
import socket
import sys

MODULE_VAR = "DISCOPOP_ORACLE_MODULE"  # the oracle module whose import-time patches the children get (test variants)
CONTROL_VAR = "DISCOPOP_TEMPLATE_FD"  # the template's end of its control socket
MESSAGE_LIMIT = 1 << 20  # one control request (an environment and a path), far below this
_PR_SET_PDEATHSIG = 1
GO = b"g"  # what the parent writes on the gate once the child is in its cgroups


def thread_count() -> int:
    """This process's threads, from the kernel (a thread a C library started counts too)."""
    return len(os.listdir("/proc/self/task"))


def _die_with_parent() -> None:
    """SIGKILL when the parent thread that started us exits (as ``lock_down``'s first layer does for an oracle)."""
    import ctypes  # lazy: ctypes only in the process that arms its own parent-death signal
    import signal  # lazy: with ctypes, only here

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent = int(os.environ.get("DISCOPOP_SANDBOX_PARENT", "0"))
    if parent and os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _preimport(module: str) -> None:
    """Everything a child's ``oracle.start`` imports, so that no child pays for it; no torch op is run."""
    import importlib  # lazy: only the template imports modules by name

    # symbolic_shapes: the first autograd.grad with a grad_output imports it (with sympy), ~0.3-0.8 s (see Oracle).
    for name in ("torch", "torch.nn.functional", "torch.fx.experimental.symbolic_shapes", "discopop.contract.checks",
                 "discopop.contract.losses", "discopop.contract.inputs", "discopop.sandbox.state_watch",
                 "discopop.sandbox.oracle", "discopop.sandbox.lockdown", "discopop.sandbox.guard",
                 "discopop.sandbox.seccomp", "ctypes", module):
        importlib.import_module(name)


def _child(control: socket.socket, request: dict, fds: list[int], template_pid: int) -> None:
    """The forked oracle: never returns (``os._exit``), whatever happens."""
    code = 1
    try:
        control.detach()  # the template's socket object must not close a descriptor number we reuse
        sock_fd, out_fd, gate_fd = fds
        keep = sorted(fds)
        os.closerange(0, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, keep[2])
        os.closerange(keep[2] + 1, 1 << 20)
        null = os.open(os.devnull, os.O_RDONLY)  # fd 0: the lowest free
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        if os.read(gate_fd, 1) != GO:
            os._exit(1)
        os.close(gate_fd)
        os.setsid()
        workdir = str(request["workdir"])
        os.chdir(workdir)
        template_dir = os.environ.get("DISCOPOP_SANDBOX_DIR", "")
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})
        os.environ.update(DISCOPOP_SANDBOX_PARENT=str(template_pid), DISCOPOP_ORACLE_FD=str(sock_fd))
        # ``python -m`` put the template's work dir first on the import path; a spawned oracle has its own there.
        sys.path[:] = [workdir if entry == template_dir else entry for entry in sys.path]
        from discopop.sandbox import oracle  # lazy: imported by the template already (a dict look-up here)

        oracle.start(workdir, os.environ.get("DISCOPOP_SANDBOX_NETWORK") == "1", sock_fd)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported on the child's own output pipe, as a spawned oracle's would be
        import traceback  # lazy: only on the way out of a failed child

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001, S110 - nothing is left to report it to
                pass
        os._exit(code)


def _fork(control: socket.socket, request: dict, fds: list[int]) -> dict:
    threads = thread_count()
    if threads != 1:
        return {"error": f"the template has {threads} threads; it forks only while single-threaded"}
    if len(fds) != 3 or not isinstance(request.get("env"), dict) or not isinstance(request.get("workdir"), str):
        return {"error": "a fork request needs an environment, a work dir and three descriptors"}
    template_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(control, request, fds, template_pid)
    return {"pid": pid}


def _reap(request: dict) -> dict:
    pid = request.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return {"error": "reap needs a pid"}
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return {"error": f"{pid} is not a child of the template"}
    if got == 0:
        return {"pid": pid, "code": None}
    return {"pid": pid, "code": os.waitstatus_to_exitcode(status)}


def serve(control: socket.socket) -> None:
    """Answer fork and reap requests until the parent hangs up."""
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, MESSAGE_LIMIT, 3)
        except OSError:
            return
        if not data:
            return
        try:
            try:
                request = json.loads(data)
            except ValueError:
                request = None
            if not isinstance(request, dict):
                reply = {"error": "unreadable request"}
            elif request.get("op") == "fork":
                reply = _fork(control, request, fds)
            elif request.get("op") == "reap":
                reply = _reap(request)
            else:
                reply = {"error": f"unknown op {request.get('op')!r}"}
        finally:
            for fd in fds:  # the child has its copies; the template keeps none of any child's descriptors
                os.close(fd)
        control.send(json.dumps(reply).encode())


def main() -> None:
    _die_with_parent()
    _preimport(os.environ.get(MODULE_VAR) or "discopop.sandbox.oracle")
    control = socket.socket(fileno=int(os.environ[CONTROL_VAR]))
    control.send(json.dumps({"ready": True, "threads": thread_count()}).encode())
    serve(control)


if __name__ == "__main__":
    main()
