"""The loss oracle (``python -m discopop.sandbox.oracle``): the only process that runs candidate code.

A loss's whole effect on training is its value and its gradient with respect to the four log-prob
inputs, so that is all this process computes: it loads one candidate (``discopop.contract.losses.load_loss``)
and answers forward requests (four tensors + beta -> per-example losses, plus whether the output
depends on the inputs and whether the loss mutated them, and on request the vector-Jacobian product for
the uniform ``grad_output`` a batch mean sends back, so a training step needs one round trip) and backward
requests (grad_output -> vector-Jacobian product for the inputs of the last forward: the fallback when the
trainer's gradient was not the assumed one). The numeric checks, the fine-tune and
the scoring run in the trusted worker through :class:`discopop.sandbox.remote_loss.RemoteLoss`, so nothing
this process says can change any verdict or fitness but its own loss's behaviour.

It imports torch and the loss contract only, puts the child-side OS layers on itself first
(``sandbox.lock_down``) and seals itself (``sandbox.seal``: seccomp and the runtime guard) before
the candidate is loaded; a fresh one serves each candidate (it may serve several jobs of that candidate, each
starting with a ``LOAD`` that re-executes the module and re-seeds the RNG) and is killed afterwards, so no
thread, patched module or global setting survives into another candidate. Reported problems (a guard refusal,
changed global torch state, a patched namespace) are informational: the OS layers enforce, and
whatever this process answers, the trusted side checks the framing, sizes and deadlines itself
(``oracle_wire``).

Its one channel is a connected unix socket (fd in ``DISCOPOP_ORACLE_FD``) whose other end the
parent hands to the worker; it sends ``READY`` before reading anything, i.e. before any candidate
code has run.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from typing import Any

from discopop.sandbox import oracle_wire as wire
from discopop.text import error_line

RNG_SEED = 20251205  # torch's global RNG at the start of every job (fixed: the same job gives the same answers)


class _Stop(Exception):
    """Reply with this status and message instead of a result."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


class Oracle:
    """Holds the loaded loss and the last forward's graph (no module globals: the state watch compares those)."""

    def __init__(self, threads: int = 1) -> None:
        # torch.autograd.grad with an explicit grad_output imports symbolic_shapes (and sympy) on its first call:
        # 0.3-0.8 s of a candidate's first forward with gradients, on its critical path. Imported here, before READY.
        import torch  # lazy: the oracle imports torch and the checks only once locked down
        import torch.fx.experimental.symbolic_shapes  # noqa: F401

        from discopop.contract import checks  # noqa: F401 - contract_problem; imported before the watch snapshot
        from discopop.sandbox.state_watch import StateWatch

        self.fn: Any = None
        self.slots: tuple[int, ...] = (0, 1, 2, 3)  # the input slots the loaded loss declares (contract v2)
        self.last: tuple[bytes, list[Any], Any] | None = None  # (forward id, leaves, output)
        # Every job's loss meets the same global RNG state (a loss may draw with rand_like): torch seeds its default
        # generator from the OS at start-up, so without this a fresh oracle per job was not reproducible either.
        torch.default_generator.manual_seed(RNG_SEED)
        self.rng = torch.get_rng_state()
        # Global state the state watch does not undo (a loss may leave CPU autocast on: judged on its own values),
        # put back at every job's start so that a later job of the candidate starts as its first did.
        self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        self.watch = StateWatch(threads)
        torch.set_num_threads(threads)
        self.watch.remember_state()

    def load(self, payload: bytes) -> tuple[bytes, int, int]:
        """Start a job: the candidate's module is executed afresh and the global RNG put back to its seeded
        state (and CPU autocast as it was), so one oracle serving several jobs of its candidate answers each as a
        fresh oracle would (a module-level counter, ``torch.rand_like`` or autocast left on cannot make a job's
        result depend on the jobs before it)."""
        import torch  # lazy: the oracle imports torch and the checks only once locked down

        # lazy: the oracle imports torch and the checks only once locked down
        from discopop.contract.losses import LossRejected, load_loss

        self.fn, self.last = None, None
        torch.set_rng_state(self.rng)
        torch.set_autocast_enabled("cpu", self.autocast[0])
        torch.set_autocast_dtype("cpu", self.autocast[1])
        try:
            self.fn = load_loss(payload.decode("utf-8"))
        except LossRejected as err:
            raise _Stop(wire.ERR_STATIC, str(err)) from None
        except BaseException as err:  # noqa: BLE001 - module top level of untrusted code
            raise _Stop(wire.ERR_LOAD, f"error while loading the module: {error_line(err)}") from None
        from discopop.contract.inputs import TENSOR_INPUTS  # lazy: the oracle imports the contract once locked down

        self.slots = tuple(TENSOR_INPUTS.index(name) for name in self.fn.discopop_inputs)
        return b"", 0, 0

    def forward(self, request_id: bytes, mask: int, payload: bytes) -> tuple[bytes, int, int]:
        if self.slots != (0, 1, 2, 3):
            raise _Stop(wire.ERR_CONTRACT, "the loss takes contract-v2 inputs; it was sent the four log-probs only")
        beta, batch, *codes, weight = wire.FORWARD_HEAD.unpack_from(payload)
        offset = wire.FORWARD_HEAD.size
        inputs = []
        for code in codes:
            size = batch * wire.itemsize(code)
            inputs.append(wire.tensor_from(payload[offset:offset + size], wire.DTYPES[code]))
            offset += size
        leaves = [t.requires_grad_(bool(mask & (1 << i))) for i, t in enumerate(inputs)]
        return self._answer(request_id, mask, leaves, beta, batch, weight, v2=False)

    def forward2(self, request_id: bytes, mask: int, payload: bytes) -> tuple[bytes, int, int]:
        """A contract-v2 forward: the slots the loss declares (``oracle_wire``), nothing else."""
        beta, batch, sent, requires, *codes, weight = wire.FORWARD2_HEAD.unpack_from(payload)
        declared = sum(1 << slot for slot in self.slots)
        if sent != declared or requires & ~sent:
            raise _Stop(wire.ERR_CONTRACT, f"the loss takes input slots {declared:#04x}, it was sent {sent:#04x}")
        offset = wire.FORWARD2_HEAD.size
        leaves: list[Any] = [None] * wire.SLOTS
        for slot in self.slots:
            size = batch * wire.itemsize(codes[slot])
            leaves[slot] = wire.tensor_from(payload[offset:offset + size], wire.DTYPES[codes[slot]])
            leaves[slot].requires_grad_(bool(requires & (1 << slot)))
            offset += size
        return self._answer(request_id, mask, leaves, beta, batch, weight, v2=True)

    def _answer(self, request_id: bytes, mask: int, leaves: list[Any], beta: float, batch: int, weight: float,
                v2: bool) -> tuple[bytes, int, int]:
        """Run the loss on ``leaves`` (by slot; None: not declared) and build the forward's reply."""
        import torch  # lazy: the oracle imports torch and the checks only once locked down

        from discopop.contract.checks import contract_problem

        sent = [t for t in leaves if t is not None]
        originals = [t.detach().clone() for t in sent]
        self.last = None
        try:
            with torch.set_grad_enabled(bool(mask & wire.GRAD_ENABLED)):
                out = self.fn(*sent, beta)
        except BaseException as err:  # noqa: BLE001 - the candidate's own error is its verdict
            raise _Stop(wire.ERR_RAISED, error_line(err)) from None
        problem = contract_problem(out, batch)
        if problem:
            raise _Stop(wire.ERR_CONTRACT, problem)
        if out.dtype not in wire.DTYPE_CODES:
            raise _Stop(wire.ERR_CONTRACT, f"returned dtype {out.dtype}, which the trainer does not support")
        mutated = any(not torch.equal(a.detach(), b) for a, b in zip(sent, originals, strict=True))
        flags = (wire.OUT_REQUIRES_GRAD if out.requires_grad else 0) | (wire.OUT_MUTATED_INPUTS if mutated else 0)
        body, present = wire.tensor_bytes(out), 0
        if out.requires_grad:
            self.last = (request_id, leaves, out)
            if mask & wire.WANT_GRADS and mask & wire.GRAD_ENABLED:
                carried, chunks = self._gradients(torch.full(out.shape, weight, dtype=out.dtype), keep_graph=True)
                if carried is not None:
                    flags, present = flags | wire.OUT_GRADS, carried
                    body += chunks
        if v2:
            return (body, *wire.pack_forward2_reply(wire.DTYPE_CODES[out.dtype], flags, present))
        return body, wire.DTYPE_CODES[out.dtype], flags | (present << wire.GRADS_SHIFT)

    def _gradients(self, grad_output: Any, keep_graph: bool = False) -> tuple[int | None, bytes]:
        """(which leaves got a gradient, their bytes) of the last forward for ``grad_output``; (None, message) if
        differentiating raised. ``keep_graph``: a later BACKWARD for the same forward can still be answered (the
        trusted side asks one when the trainer's gradient is not the one assumed)."""
        import torch  # lazy: the oracle imports torch and the checks only once locked down

        _, leaves, out = self.last
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        try:
            grads = torch.autograd.grad(out, wanted, grad_output, allow_unused=True, retain_graph=keep_graph)
        except BaseException as err:  # noqa: BLE001
            return None, error_line(err).encode()
        by_leaf = dict(zip(map(id, wanted), grads, strict=True))
        present, chunks = 0, []
        for i, leaf in enumerate(leaves):
            grad = None if leaf is None else by_leaf.get(id(leaf))
            if grad is not None:
                present |= 1 << i
                chunks.append(wire.tensor_bytes(grad.to(leaf.dtype).reshape(leaf.shape)))
        return present, b"".join(chunks)

    def backward(self, code: int, payload: bytes) -> tuple[bytes, int, int]:

        forward_id, data = payload[:8], payload[8:]
        if self.last is None or self.last[0] != forward_id:
            raise _Stop(wire.ERR_RAISED, "RuntimeError: backward of a forward the oracle no longer holds")
        out = self.last[2]
        present, body = self._gradients(wire.tensor_from(data, wire.DTYPES[code]).to(out.dtype))
        self.last = None
        if present is None:
            raise _Stop(wire.ERR_RAISED, body.decode())
        return body, present, 0

    def trace_problem(self) -> str | None:
        """What the candidate changed in this process, worded as the worker's audit words it."""
        # lazy: the oracle imports torch and the checks only once locked down
        from discopop.sandbox import guard_violations

        refused = guard_violations()
        state = self.watch.changed_state()
        self.watch.reset()  # first: some global setters rebind attributes (set_default_dtype: torch.Storage)
        patched = self.watch.patched()
        if patched:
            return f"changed shared state: {', '.join(patched[:5])}"
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            return f"refused by the runtime guard: {refused[0]}{more}"
        if state:
            return f"changed torch global state: {'; '.join(state)}"
        return None


def serve(sock: socket.socket, oracle: Oracle) -> None:
    sock.sendall(wire.pack(wire.READY_ID, wire.READY))
    while True:
        try:
            request_id, kind, a, _, length = wire.read_header(sock, None)
            payload = wire.read_exact(sock, length, None)
        except (wire.ChannelError, struct.error):
            return
        try:
            if kind == wire.LOAD:
                body, ra, rb = oracle.load(payload)
            elif kind == wire.FORWARD:
                body, ra, rb = oracle.forward(request_id, a, payload)
            elif kind == wire.FORWARD2:
                body, ra, rb = oracle.forward2(request_id, a, payload)
            elif kind == wire.BACKWARD:
                body, ra, rb = oracle.backward(a, payload)
            else:
                return
            status = wire.OK
        except _Stop as stop:
            status, body, ra, rb = stop.status, stop.message.encode()[: wire.MAX_MESSAGE], 0, 0
        problem = oracle.trace_problem()
        if problem:
            status, body, ra, rb = wire.ERR_GUARD, problem.encode()[: wire.MAX_MESSAGE], 0, 0
        sock.sendall(wire.pack(request_id, status, body, ra, rb))


def main() -> None:
    start(os.environ["DISCOPOP_SANDBOX_DIR"], os.environ.get("DISCOPOP_SANDBOX_NETWORK") == "1",
          int(os.environ["DISCOPOP_ORACLE_FD"]))


def start(workdir: str, network: bool, sock_fd: int) -> None:
    """Everything an oracle does from lock-down on: a spawned oracle (``main``) and one forked from the template
    (``oracle_template``) both run exactly this, on their own single thread."""
    from discopop.sandbox import lock_down, seal  # lazy: the oracle imports torch and the checks only once locked down

    # A candidate that interrupts itself (``_thread.interrupt_main``, SIGINT) gets that as its own error however the
    # run was started: a run launched with ``&`` from a shell without job control starts every child with SIGINT
    # ignored, and then the interrupt silently does nothing (the hostile corpus saw a different verdict). Workers start
    # in a session of their own, so a Ctrl-C at the terminal does not reach the oracle either way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # First thing, while this process has a single thread (see lock_down).
    lock_down(workdir, network=network)
    sock = socket.socket(fileno=sock_fd)
    oracle = Oracle()
    seal(workdir)  # seccomp + the runtime guard, before any candidate code
    serve(sock, oracle)


if __name__ == "__main__":
    main()
