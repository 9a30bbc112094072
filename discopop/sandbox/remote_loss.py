"""The trusted side of the loss oracle: a loss callable in the contract form whose code runs elsewhere.

:class:`RemoteLoss` looks like any loss to ``check_loss``, ``FineTuner.run`` and the scorer, but
every value and gradient comes from a ``discopop.sandbox.oracle`` process over an :class:`OracleLink`.
So the checks, the fine-tune and the fitness are computed by code the candidate never touched;
its replies can at worst make its own loss behave differently, which is its honest effect.

Channel discipline, enforced here and never delegated to the oracle: binary frames
(``oracle_wire``) whose reply must echo the random id of the request it answers; the reply size
is known before it is read (a header announcing anything else is refused unread); every read has
a deadline (``call_timeout``); bytes nobody asked for are refused. Any breach sets
:attr:`OracleLink.failure` (stage ``oracle``, one line), closes the link and makes every later
call raise :class:`OracleBroken`; the worker reports that failure whatever the trainer or the
checks made of the exception, and the parent kills the oracle after that job (``oracle_keep`` keeps only the
oracle of a job that ended cleanly, for its own candidate).

Residual risk: a *stateful* oracle (a loss that counts its calls, or answers differently once
training starts) cannot be told from a deterministic one by framing alone. The checks' determinism
test catches the plain case; a backward for an older forward re-asks that forward and fails the
candidate if the answer changed (:meth:`OracleLink.backward`).
"""

from __future__ import annotations

import os
import socket
import time

import torch

from discopop.contract.checks import CheckFailed
from discopop.sandbox import oracle_wire as wire


class OracleBroken(Exception):
    """The oracle broke the channel discipline (its candidate fails at stage ``oracle``)."""


class OracleRefused(Exception):
    """The oracle reported that the candidate failed to load or tripped its guard (stage in ``stage``)."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


class CandidateError(CheckFailed):
    """The candidate's code raised (``str(err)`` is ``raised Type: message``) or broke the loss contract."""


class OracleLink:
    """The worker's end of one oracle's socket: load one loss, then forward/backward calls."""

    def __init__(self, sock: socket.socket, call_timeout: float = 10.0):
        self.sock = sock
        self.call_timeout = call_timeout
        self.failure: tuple[str, str] | None = None  # (stage, one line) once the oracle is disowned
        self.forwards = 0
        self._last_forward: bytes | None = None  # the forward whose graph the oracle holds
        self._request_id = b""

    # -- framing ---------------------------------------------------------------------------------

    def _fail(self, stage: str, reason: str) -> None:
        if self.failure is None:
            self.failure = (stage, reason[:300])
        self.close()

    def _request(self, kind: int, payload: bytes, a: int, expected_length) -> tuple[int, int, int, bytes]:
        """Send a request and read its reply: (status, a, b, body). ``expected_length(a)`` sizes an OK body."""
        if self.failure is not None:
            raise OracleBroken(self.failure[1])
        request_id = self._request_id = os.urandom(8)
        try:
            if wire.has_pending_data(self.sock):
                raise wire.ChannelError("the oracle sent data nobody asked for")
            self.sock.sendall(wire.pack(request_id, kind, payload, a))
            deadline = time.monotonic() + self.call_timeout
            reply_id, status, ra, rb, length = wire.read_header(self.sock, deadline)
            if reply_id != request_id:
                raise wire.ChannelError("reply to a request that was not asked (wrong request id)")
            if status == wire.OK:
                expected = expected_length(ra)
                if expected is None or length != expected:
                    raise wire.ChannelError(f"reply of {length} bytes where {expected} were due")
            elif status in wire.ERRORS:
                if length > wire.MAX_MESSAGE:
                    raise wire.ChannelError(f"error message of {length} bytes (at most {wire.MAX_MESSAGE})")
            else:
                raise wire.ChannelError(f"unknown reply status {status}")
            body = wire.read_exact(self.sock, length, deadline)
        except wire.ChannelError as err:
            self._fail("oracle", f"oracle: {err}")
            raise OracleBroken(self.failure[1]) from None
        except OSError as err:
            self._fail("oracle", f"oracle: channel error: {err}")
            raise OracleBroken(self.failure[1]) from None
        return status, ra, rb, body

    def _error(self, status: int, body: bytes) -> Exception:
        message = body.decode("utf-8", errors="replace").strip().splitlines()
        message = message[0] if message else "(no message)"
        if status == wire.ERR_STATIC:
            return OracleRefused("static", message)
        if status == wire.ERR_LOAD:
            return OracleRefused("load", message)
        if status == wire.ERR_GUARD:
            self._fail("guard", message)
            return OracleBroken(message)
        if status == wire.ERR_CONTRACT:
            return CandidateError(message)
        return CandidateError(f"raised {message}")

    # -- requests --------------------------------------------------------------------------------

    def load(self, source: str) -> None:
        data = source.encode("utf-8")
        if len(data) > wire.MAX_SOURCE:
            raise OracleRefused("static", f"loss source of {len(data)} bytes (at most {wire.MAX_SOURCE})")
        status, _, _, body = self._request(wire.LOAD, data, 0, lambda a: 0)
        if status != wire.OK:
            raise self._error(status, body)

    def forward(self, inputs: tuple[torch.Tensor, ...], beta: float) -> tuple[bytes, torch.Tensor, int]:
        """(forward id, values [B] on CPU, flags) for the four inputs (grad flags taken from them)."""
        batch = inputs[0].shape[0]
        codes = [wire.DTYPE_CODES[t.dtype] for t in inputs]
        mask = sum(1 << i for i, t in enumerate(inputs) if t.requires_grad)
        if torch.is_grad_enabled():
            mask |= wire.GRAD_ENABLED
        else:
            mask = 0
        payload = wire.FORWARD_HEAD.pack(float(beta), batch, *codes) + b"".join(map(wire.tensor_bytes, inputs))
        expected = lambda code: batch * wire.itemsize(code) if code in wire.DTYPES else None  # noqa: E731
        status, code, flags, body = self._request(wire.FORWARD, payload, mask, expected)
        if status != wire.OK:
            raise self._error(status, body)
        self.forwards += 1
        self._last_forward = self._request_id if flags & wire.OUT_REQUIRES_GRAD else None
        return self._request_id, wire.tensor_from(body, wire.DTYPES[code]), flags

    def backward(self, forward_id: bytes, grad_output: torch.Tensor, inputs: tuple[torch.Tensor, ...],
                 beta: float, values: torch.Tensor) -> list[torch.Tensor | None]:
        """Vector-Jacobian product for ``inputs`` (None where the loss does not use one).

        If another forward ran since (the oracle keeps one graph), that forward is asked again
        first; an answer different from the first one fails the candidate (a stateful oracle).
        """
        if forward_id != self._last_forward:
            forward_id, again, _ = self.forward(inputs, beta)
            if not torch.equal(again, values):
                self._fail("oracle", "oracle: asked the same forward twice, answered differently (stateful loss)")
                raise OracleBroken(self.failure[1])
        grad_output = grad_output.detach().to("cpu")
        code = wire.DTYPE_CODES.get(grad_output.dtype, 0)
        grad_output = grad_output.to(wire.DTYPES[code])
        sizes = [t.shape[0] * t.dtype.itemsize for t in inputs]
        expected = lambda present: sum(s for i, s in enumerate(sizes) if present & (1 << i))  # noqa: E731
        status, present, _, body = self._request(wire.BACKWARD, forward_id + wire.tensor_bytes(grad_output),
                                                 code, expected)
        if status != wire.OK:
            raise self._error(status, body)
        grads: list[torch.Tensor | None] = []
        offset = 0
        for i, (t, size) in enumerate(zip(inputs, sizes, strict=True)):
            if present & (1 << i) and t.requires_grad:
                grads.append(wire.tensor_from(body[offset:offset + size], t.dtype).to(t.device))
            else:
                grads.append(None)
            offset += size if present & (1 << i) else 0
        return grads

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _OracleVjp(torch.autograd.Function):
    """Ties the oracle's values into the caller's graph; backward asks the oracle for the VJP."""

    @staticmethod
    def forward(ctx, link: OracleLink, forward_id: bytes, values: torch.Tensor, beta: float,
                *inputs: torch.Tensor) -> torch.Tensor:
        ctx.link, ctx.forward_id, ctx.beta = link, forward_id, beta
        ctx.inputs = tuple(t.detach() for t in inputs)
        ctx.requires = [t.requires_grad for t in inputs]
        ctx.values = values.detach()
        return values.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        leaves = tuple(t.requires_grad_(r) for t, r in zip(ctx.inputs, ctx.requires, strict=True))
        with torch.enable_grad():
            grads = ctx.link.backward(ctx.forward_id, grad_output, leaves, ctx.beta, ctx.values.cpu())
        return (None, None, None, None, *grads)


class RemoteLoss:
    """A loss in the contract form whose code runs in a loss oracle (first-order gradients only)."""

    def __init__(self, link: OracleLink, name: str = "remote_loss"):
        self.link = link
        self.__name__ = name

    def __call__(self, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
                 beta: float) -> torch.Tensor:
        inputs = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
        _validate(inputs)
        forward_id, values, flags = self.link.forward(inputs, float(beta))
        if flags & wire.OUT_MUTATED_INPUTS:
            raise CandidateError("mutated its input tensors in place")
        values = values.to(inputs[0].device)
        if not (flags & wire.OUT_REQUIRES_GRAD and torch.is_grad_enabled()):
            return values
        # Each input goes through a detached alias so that the leaf stored in ctx is not the caller's tensor.
        return _OracleVjp.apply(self.link, forward_id, values, float(beta), *inputs)


def _validate(inputs: tuple[torch.Tensor, ...]) -> None:
    for t in inputs:
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError("RemoteLoss takes four 1-D tensors of log-probs")
        if t.dtype not in wire.DTYPE_CODES:
            raise ValueError(f"RemoteLoss: unsupported dtype {t.dtype} (allowed: float32, float64, float16, bfloat16)")
    batch = inputs[0].shape[0]
    if not 0 < batch <= wire.MAX_BATCH or any(t.shape[0] != batch for t in inputs):
        raise ValueError(f"RemoteLoss: the four inputs need one equal batch size in 1..{wire.MAX_BATCH}")
