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

One round trip per training step: a forward asks the oracle for the loss values *and* the vector-Jacobian
product for the gradient the trainer's batch mean will send back (``grad_output`` = ``full([batch], w)``, ``w``
= 1/batch in the output's dtype, or the uniform value the last fallback saw for that batch size, e.g. with
gradient accumulation). The backward uses those gradients only if the trainer's ``grad_output``, converted as
the two-call path converts it, is bit for bit that tensor: then the oracle's answer is exactly the one a
``BACKWARD`` would have given. Otherwise it asks the oracle, exactly as the two-call path does
(``fused=False``: always).

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
from discopop.contract.inputs import TENSOR_INPUTS, V1_INPUTS, is_v1
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
        self.round_trips = 0  # requests answered (load, forwards, backwards): what a training step costs
        self.fused_backwards = 0  # backwards answered by the gradient a forward already carried
        self._last_forward: bytes | None = None  # the forward whose graph the oracle holds
        self._request_id = b""

    # -- framing ---------------------------------------------------------------------------------

    def _fail(self, stage: str, reason: str) -> None:
        if self.failure is None:
            self.failure = (stage, reason[:300])
        self.close()

    def _request(self, kind: int, payload: bytes, a: int, expected_length) -> tuple[int, int, int, bytes]:
        """Send a request and read its reply: (status, a, b, body). ``expected_length(a, b)`` sizes an OK body
        (None: those reply fields are not a valid answer)."""
        if self.failure is not None:
            raise OracleBroken(self.failure[1])
        request_id = self._request_id = os.urandom(8)
        self.round_trips += 1
        try:
            if wire.has_pending_data(self.sock):
                raise wire.ChannelError("the oracle sent data nobody asked for")
            self.sock.sendall(wire.pack(request_id, kind, payload, a))
            deadline = time.monotonic() + self.call_timeout
            reply_id, status, ra, rb, length = wire.read_header(self.sock, deadline)
            if reply_id != request_id:
                raise wire.ChannelError("reply to a request that was not asked (wrong request id)")
            if status == wire.OK:
                expected = expected_length(ra, rb)
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
        status, _, _, body = self._request(wire.LOAD, data, 0, lambda a, b: 0)
        if status != wire.OK:
            raise self._error(status, body)

    def forward(self, inputs: tuple[torch.Tensor, ...], beta: float,
                slots: tuple[int, ...] | None = None) -> tuple[bytes, torch.Tensor, int]:
        """(forward id, values [B] on CPU, flags) for the inputs (grad flags taken from them); ``slots``: see
        :meth:`forward_with_grads`."""
        forward_id, values, flags, _ = self.forward_with_grads(inputs, beta, None, slots)
        return forward_id, values, flags

    def forward_with_grads(self, inputs: tuple[torch.Tensor, ...], beta: float, weight: float | None,
                           slots: tuple[int, ...] | None = None,
                           ) -> tuple[bytes, torch.Tensor, int, list[torch.Tensor | None] | None]:
        """:meth:`forward`, plus (with ``weight``, grad mode on and an input that requires grad) the gradients for
        ``grad_output = full([batch], weight)`` in the output's dtype, as :meth:`backward` would return them; None
        where the oracle carried none (the output needs no gradient, or differentiating it raised: a
        :meth:`backward` then reports that error as the two-call path does).

        ``slots``: the contract-v2 input slot of each input (``oracle_wire``: a ``FORWARD2``); None: the four
        log-probs of a v1 loss, sent as a ``FORWARD`` exactly as before contract v2."""
        v2 = slots is not None
        slots = tuple(range(len(inputs))) if slots is None else tuple(slots)
        batch = inputs[0].shape[0]
        codes = [wire.DTYPE_CODES[t.dtype] for t in inputs]
        requires = sum(1 << slot for slot, t in zip(slots, inputs, strict=True) if t.requires_grad)
        mask = 0 if v2 else requires
        if torch.is_grad_enabled():
            mask |= wire.GRAD_ENABLED
        else:
            mask, requires = 0, 0
        if weight is not None and requires:
            mask |= wire.WANT_GRADS
        else:
            weight = None
        weight_value = 0.0 if weight is None else float(weight)
        if v2:
            slot_codes = [0] * wire.SLOTS
            for slot, code in zip(slots, codes, strict=True):
                slot_codes[slot] = code
            head = wire.FORWARD2_HEAD.pack(float(beta), batch, sum(1 << slot for slot in slots), requires,
                                           *slot_codes, weight_value)
        else:
            head = wire.FORWARD_HEAD.pack(float(beta), batch, *codes, weight_value)
        payload = head + b"".join(map(wire.tensor_bytes, inputs))
        sizes = {slot: batch * t.dtype.itemsize for slot, t in zip(slots, inputs, strict=True)}

        def reply_fields(a: int, b: int) -> tuple[int, int, int] | None:
            if not v2:
                return a, b & ~(0xF << wire.GRADS_SHIFT), b >> wire.GRADS_SHIFT
            return wire.unpack_forward2_reply(a, b)

        def expected(a: int, b: int) -> int | None:
            fields = reply_fields(a, b)
            if fields is None:
                return None
            code, flags, present = fields
            if code not in wire.DTYPES or flags & ~wire.OUT_FLAGS:
                return None
            if not flags & wire.OUT_GRADS:
                return None if present else batch * wire.itemsize(code)
            if weight is None or not flags & wire.OUT_REQUIRES_GRAD or present & ~requires:
                return None  # gradients nobody asked for, or for an input that does not require one
            return batch * wire.itemsize(code) + sum(s for slot, s in sizes.items() if present & (1 << slot))

        status, a, b, body = self._request(wire.FORWARD2 if v2 else wire.FORWARD, payload, mask, expected)
        if status != wire.OK:
            raise self._error(status, body)
        code, _, present = reply_fields(a, b)
        flags = b if not v2 else (b & ~(0xF << wire.GRADS_SHIFT))
        self.forwards += 1
        self._last_forward = self._request_id if flags & wire.OUT_REQUIRES_GRAD else None
        size = batch * wire.itemsize(code)
        grads = None
        if flags & wire.OUT_GRADS:
            grads = self._gradients_from(body[size:], present, inputs, sizes, slots)
        return self._request_id, wire.tensor_from(body[:size], wire.DTYPES[code]), flags, grads

    @staticmethod
    def _gradients_from(body: bytes, present: int, inputs: tuple[torch.Tensor, ...], sizes: dict[int, int],
                        slots: tuple[int, ...]) -> list[torch.Tensor | None]:
        """The gradients in ``body`` (those of the slots flagged in ``present``, in slot order), on the inputs'
        devices."""
        grads: list[torch.Tensor | None] = []
        offset = 0
        for slot, t in zip(slots, inputs, strict=True):
            size = sizes[slot]
            if present & (1 << slot) and t.requires_grad:
                grads.append(wire.tensor_from(body[offset:offset + size], t.dtype).to(t.device))
            else:
                grads.append(None)
            offset += size if present & (1 << slot) else 0
        return grads

    def backward(self, forward_id: bytes, grad_output: torch.Tensor, inputs: tuple[torch.Tensor, ...],
                 beta: float, values: torch.Tensor, slots: tuple[int, ...] | None = None) -> list[torch.Tensor | None]:
        """Vector-Jacobian product for ``inputs`` (None where the loss does not use one).

        If another forward ran since (the oracle keeps one graph), that forward is asked again
        first; an answer different from the first one fails the candidate (a stateful oracle).
        """
        if forward_id != self._last_forward:
            forward_id, again, _ = self.forward(inputs, beta, slots)
            if not torch.equal(again, values):
                self._fail("oracle", "oracle: asked the same forward twice, answered differently (stateful loss)")
                raise OracleBroken(self.failure[1])
        grad_output = grad_output.detach().to("cpu")
        code = wire.DTYPE_CODES.get(grad_output.dtype, 0)
        grad_output = grad_output.to(wire.DTYPES[code])
        slots = tuple(range(len(inputs))) if slots is None else tuple(slots)
        sizes = {slot: t.shape[0] * t.dtype.itemsize for slot, t in zip(slots, inputs, strict=True)}
        expected = lambda present, _: sum(s for i, s in sizes.items() if present & (1 << i))  # noqa: E731
        status, present, _, body = self._request(wire.BACKWARD, forward_id + wire.tensor_bytes(grad_output),
                                                 code, expected)
        if status != wire.OK:
            raise self._error(status, body)
        return self._gradients_from(body, present, inputs, sizes, slots)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _OracleVjp(torch.autograd.Function):
    """Ties the oracle's values into the caller's graph; backward uses the gradients the forward carried if the
    trainer's ``grad_output`` is the assumed one, else asks the oracle for the VJP."""

    @staticmethod
    def forward(ctx, link: OracleLink, forward_id: bytes, values: torch.Tensor, beta: float, fused: _Fused | None,
                slots: tuple[int, ...] | None, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.link, ctx.forward_id, ctx.beta, ctx.fused, ctx.slots = link, forward_id, beta, fused, slots
        ctx.inputs = tuple(t.detach() for t in inputs)
        ctx.requires = [t.requires_grad for t in inputs]
        ctx.values = values.detach()
        return values.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        fused = ctx.fused
        if fused is not None:
            sent = as_sent(grad_output, ctx.values.dtype)
            if wire.tensor_bytes(sent) == wire.tensor_bytes(torch.full_like(sent, fused.weight)):
                ctx.link.fused_backwards += 1
                return (None, None, None, None, None, None, *fused.grads)
            fused.owner.learn(sent)
        leaves = tuple(t.requires_grad_(r) for t, r in zip(ctx.inputs, ctx.requires, strict=True))
        with torch.enable_grad():
            grads = ctx.link.backward(ctx.forward_id, grad_output, leaves, ctx.beta, ctx.values.cpu(), ctx.slots)
        return (None, None, None, None, None, None, *grads)


def as_sent(grad_output: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``grad_output`` as the oracle differentiates it on the two-call path: on the CPU, in a wire dtype
    (float32 for any other), then in the output's dtype."""
    grad_output = grad_output.detach().to("cpu")
    return grad_output.to(wire.DTYPES[wire.DTYPE_CODES.get(grad_output.dtype, 0)]).to(out_dtype)


class _Fused:
    """The gradients one forward carried, the uniform weight they assume, and the loss that asked for them."""

    __slots__ = ("grads", "owner", "weight")

    def __init__(self, owner: RemoteLoss, weight: float, grads: list[torch.Tensor | None]) -> None:
        self.owner, self.weight, self.grads = owner, weight, grads


class RemoteLoss:
    """A loss in the contract form whose code runs in a loss oracle (first-order gradients only).

    ``fused`` (``executor.fused_backward``): each forward under grad also brings the gradient for the backward
    the trainer's batch mean will send, so a training step is one round trip; off, every backward asks the oracle.
    Values and gradients are bit for bit the same either way.
    """

    def __init__(self, link: OracleLink, name: str = "remote_loss", fused: bool = True,
                 inputs: tuple[str, ...] = V1_INPUTS):
        self.link = link
        self.__name__ = name
        self.fused = fused
        # The tensor inputs the loss declares (``contract.inputs``; the worker reads them from the code's signature):
        # callers pass these, then beta. A v1 loss's forwards are ``FORWARD`` frames exactly as before contract v2.
        self.discopop_inputs = tuple(inputs)
        self.slots = None if is_v1(self.discopop_inputs) else tuple(map(TENSOR_INPUTS.index, self.discopop_inputs))
        # The uniform grad_output (as sent, exact in a float64) a fallback saw, per batch size: a trainer that scales
        # its mean (gradient accumulation, a loss scale) sends the same one every step, so the next forwards assume it.
        self.weights: dict[int, float] = {}

    def weight(self, batch: int, dtype: torch.dtype) -> float:
        """The grad_output value a backward of this batch is assumed to send: 1/batch, as a batch mean's backward
        computes it (``ones / batch`` in the output's dtype, assumed to be the inputs'), unless a fallback saw
        another uniform one."""
        if batch not in self.weights:
            return float(torch.ones(1, dtype=dtype).div(batch))
        return self.weights[batch]

    def learn(self, sent: torch.Tensor) -> None:
        """Remember a uniform grad_output (as sent) for its batch size; a non-uniform one changes nothing."""
        flat = sent.reshape(-1)
        if flat.numel() and wire.tensor_bytes(flat) == wire.tensor_bytes(torch.full_like(flat, float(flat[0]))):
            self.weights[flat.numel()] = float(flat[0])

    def __call__(self, *args: torch.Tensor | float) -> torch.Tensor:
        """The loss of the declared inputs (``discopop_inputs``, in that order), then beta."""
        if len(args) != len(self.discopop_inputs) + 1:
            raise TypeError(f"RemoteLoss takes {', '.join(self.discopop_inputs)} and beta ({len(args)} given)")
        inputs, beta = tuple(args[:-1]), args[-1]
        _validate(inputs)
        weight = self.weight(inputs[0].shape[0], inputs[0].dtype) if self.fused else None
        forward_id, values, flags, grads = self.link.forward_with_grads(inputs, float(beta), weight, self.slots)
        if flags & wire.OUT_MUTATED_INPUTS:
            raise CandidateError("mutated its input tensors in place")
        values = values.to(inputs[0].device)
        if not (flags & wire.OUT_REQUIRES_GRAD and torch.is_grad_enabled()):
            return values
        fused = None if grads is None or weight is None else _Fused(self, weight, grads)
        # Each input goes through a detached alias so that the leaf stored in ctx is not the caller's tensor.
        return _OracleVjp.apply(self.link, forward_id, values, float(beta), fused, self.slots, *inputs)


def _validate(inputs: tuple[torch.Tensor, ...]) -> None:
    for t in inputs:
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError("RemoteLoss takes 1-D tensors (four log-probs for a v1 loss)")
        if t.dtype not in wire.DTYPE_CODES:
            raise ValueError(f"RemoteLoss: unsupported dtype {t.dtype} (allowed: float32, float64, float16, bfloat16)")
    batch = inputs[0].shape[0]
    if not 0 < batch <= wire.MAX_BATCH or any(t.shape[0] != batch for t in inputs):
        raise ValueError(f"RemoteLoss: the inputs need one equal batch size in 1..{wire.MAX_BATCH}")
