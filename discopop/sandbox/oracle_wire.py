"""The binary framing between the trusted side and a loss oracle (``discopop.sandbox.oracle``).

Every frame is a fixed 20-byte header followed by a payload whose length the *reader* can
predict exactly before reading it::

    magic (4) | request id (8) | kind or status (1) | a (1) | b (1) | pad (1) | payload length (4)

Requests (trusted side -> oracle): ``LOAD`` (payload: the loss source), ``FORWARD`` (``a``: which
inputs require grad, bit 4: grad mode on, bit 5: answer with the gradient too; payload: ``beta`` f64,
batch u32, four dtype codes, the gradient weight ``w`` f64, then the four tensors' bytes) and ``BACKWARD``
(``a``: dtype of ``grad_output``; payload: the id of the forward it differentiates, then ``grad_output``'s bytes).

Replies (oracle -> trusted side) echo the request id. ``OK`` to a forward carries the output's
dtype in ``a`` and flags in ``b`` (requires grad, mutated its inputs, carries gradients; bits 4-7: which
of the four inputs got one), payload exactly ``batch * itemsize`` followed, when it carries gradients,
by the vector-Jacobian product of the output with ``grad_output = full([batch], w)`` (the gradient a
trainer's batch mean sends back: one round trip per training step instead of two), in the inputs'
own dtypes; ``OK`` to a backward carries in ``a`` which of the four inputs got a
gradient, payload exactly the bytes of those gradients. An error status carries a UTF-8 message
of at most ``MAX_MESSAGE`` bytes. Anything else is refused by the reader without being read whole.
The magic names the wire's version (``DLO2``: forwards may carry their gradient).

Contract v2 (``contract.inputs``): a loss that declares other inputs than the four log-probs is asked with
``FORWARD2`` instead, whose inputs are numbered by their slot in ``inputs.TENSOR_INPUTS`` (0-3 the log-probs,
4-5 the lengths, 6 the chosen NLL): payload ``FORWARD2_HEAD`` (beta f64, batch u32, which slots are sent u8, which
of them require grad u8, seven dtype codes, weight f64), then the sent tensors in slot order; ``a`` carries only
the grad-mode and want-gradients bits. Its ``OK`` reply says which slots the carried gradient covers in ``b``
bits 4-7 (slots 0-3, as for ``FORWARD``) and ``a`` bits 4-6 (slots 4-6; bits 0-3: the output's dtype); a
``BACKWARD`` reply's ``a`` is a mask over slots either way. A v1 loss is asked with ``FORWARD`` exactly as before,
so its frames are byte-identical.

Reading is with an absolute deadline (``poll`` between chunks), so a partial frame cannot hang
the reader, and never more than the announced length, which is checked first.
"""

from __future__ import annotations

import select
import socket
import struct
import time

import torch

MAGIC = b"DLO2"  # the version: DLO1 had no gradient in a forward's reply
HEADER = struct.Struct("<4s8sBBBxI")
FORWARD_HEAD = struct.Struct("<dI4Bd")  # beta, batch, dtype code of each of the four inputs, gradient weight
READY_ID = bytes(8)
SLOTS = 7  # contract-v2 input slots (``contract.inputs.TENSOR_INPUTS``)
FORWARD2_HEAD = struct.Struct("<dIBB7Bd")  # beta, batch, slots sent, slots requiring grad, 7 dtype codes, weight

# Request kinds
READY, LOAD, FORWARD, BACKWARD, FORWARD2 = 1, 2, 3, 4, 5
# Reply statuses (OK, or which stage the oracle says stopped the loss)
OK, ERR_STATIC, ERR_LOAD, ERR_CONTRACT, ERR_RAISED, ERR_GUARD = 0, 10, 11, 12, 13, 14
ERRORS = {ERR_STATIC, ERR_LOAD, ERR_CONTRACT, ERR_RAISED, ERR_GUARD}

GRAD_ENABLED = 1 << 4  # FORWARD ``a`` bit: the caller runs with grad mode on
WANT_GRADS = 1 << 5  # FORWARD ``a`` bit: answer with the gradient for grad_output = full([batch], weight) too
OUT_REQUIRES_GRAD, OUT_MUTATED_INPUTS, OUT_GRADS = 1 << 0, 1 << 1, 1 << 2  # forward reply ``b`` flags
GRADS_SHIFT = 4  # forward reply ``b`` bits 4-7: which of the four inputs the carried gradient covers
OUT_FLAGS = OUT_REQUIRES_GRAD | OUT_MUTATED_INPUTS | OUT_GRADS | (0xF << GRADS_SHIFT)
DTYPE_BITS = 0x0F  # FORWARD2 reply ``a`` bits 0-3: the output's dtype code
EXTRA_GRADS_SHIFT = 4  # FORWARD2 reply ``a`` bits 4-6: which of slots 4-6 the carried gradient covers

HUNG_UP = "the oracle closed the channel"  # the parent then asks the oracle's sandbox why it died

MAX_MESSAGE = 512  # bytes of an error message
MAX_BATCH = 1 << 20  # examples per call: bounds every payload (4 x 8 MB at most)
MAX_SOURCE = 1 << 20  # bytes of loss source in a LOAD request

DTYPES = {0: torch.float32, 1: torch.float64, 2: torch.float16, 3: torch.bfloat16}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}


class ChannelError(Exception):
    """The peer broke the framing: wrong magic, id or size, a late or partial frame, or it hung up."""


def pack(request_id: bytes, kind: int, payload: bytes = b"", a: int = 0, b: int = 0) -> bytes:
    return HEADER.pack(MAGIC, request_id, kind, a, b, len(payload)) + payload


def read_exact(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    """``size`` bytes from ``sock``, or :class:`ChannelError` once ``deadline`` (``time.monotonic``) passes."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while got < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise ChannelError(f"no complete reply within the deadline ({got} of {size} bytes came)")
        try:
            n = sock.recv_into(view[got:], size - got)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as err:
            raise ChannelError(f"channel error: {err}") from None
        if n == 0:
            raise ChannelError(HUNG_UP)
        got += n
    return bytes(buf)


def read_header(sock: socket.socket, deadline: float | None) -> tuple[bytes, int, int, int, int]:
    """(request id, kind or status, a, b, payload length); the magic is checked here."""
    magic, request_id, kind, a, b, length = HEADER.unpack(read_exact(sock, HEADER.size, deadline))
    if magic != MAGIC:
        raise ChannelError("malformed frame (bad magic)")
    return request_id, kind, a, b, length


def has_pending_data(sock: socket.socket) -> bool:
    """True if the peer sent something nobody asked for yet (or hung up)."""
    return bool(select.select([sock], [], [], 0)[0])


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from(data: bytes, dtype: torch.dtype) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype)


def itemsize(code: int) -> int:
    return DTYPES[code].itemsize


def pack_forward2_reply(code: int, flags: int, present: int) -> tuple[int, int]:
    """(a, b) of a FORWARD2 reply: the output's dtype code, the flags, the slots (7 bits) the gradient covers."""
    return code | ((present >> 4) << EXTRA_GRADS_SHIFT), flags | ((present & 0xF) << GRADS_SHIFT)


def unpack_forward2_reply(a: int, b: int) -> tuple[int, int, int] | None:
    """(dtype code, flags without the gradient bits, slots the gradient covers) of a FORWARD2 reply; None if ``a``
    holds bits that mean nothing."""
    if a & ~(DTYPE_BITS | (0x7 << EXTRA_GRADS_SHIFT)):
        return None
    return a & DTYPE_BITS, b & ~(0xF << GRADS_SHIFT), ((b >> GRADS_SHIFT) & 0xF) | ((a >> EXTRA_GRADS_SHIFT) << 4)
