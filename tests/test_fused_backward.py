"""One loss-oracle round trip per training step (``RemoteLoss(fused=True)``, ``executor.fused_backward``).

A forward under grad brings back the gradient the trainer's batch mean will ask for; the backward uses it only if
the trainer's ``grad_output`` is bit for bit the assumed one, else it asks the oracle as the two-call path does.
Checked here: the round trips per step (1 against 2), the fallback (a weighted sum, a scaled mean, which the next
forwards then assume), bit-identical values and gradients on the diagnostic tier and the tiny TRL task, and a
forward reply carrying gradients nobody asked for (or of the wrong size) refused by the wire.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from discopop.config import TrainingSettings
from discopop.contract.checks import check_loss
from discopop.fitness.diagnostic_tune import fine_tune
from discopop.sandbox import Limits
from discopop.sandbox import oracle_wire as wire
from discopop.sandbox.oracle_supply import OracleSupply
from discopop.sandbox.remote_loss import CandidateError, OracleBroken, OracleLink, RemoteLoss
from discopop.tasks.diagnostic import setting

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"
DPO = (PROPOSALS / "dpo.py").read_text()
LRML = (PROPOSALS / "lrml.py").read_text()


@pytest.fixture(scope="module")
def supply() -> Iterator[OracleSupply]:
    oracles = OracleSupply(Limits())
    yield oracles
    oracles.close()


@contextmanager
def remote(supply: OracleSupply, source: str, fused: bool) -> Iterator[RemoteLoss]:
    """A fresh oracle loaded with ``source``; this test process plays the trusted worker."""
    oracle = supply.take()
    link = OracleLink(oracle.sock, call_timeout=30.0)
    try:
        link.load(source)
        yield RemoteLoss(link, fused=fused)
    finally:
        assert oracle.close() is None, "the oracle died on its own"


def inputs_of(batch: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    return [(-torch.rand(batch, generator=gen, dtype=torch.float64) * 20).to(dtype).requires_grad_(i < 2)
            for i in range(4)]


def grads_of(fn, inputs: list[torch.Tensor], reduce) -> tuple[torch.Tensor, torch.Tensor]:
    out = fn(*inputs, 0.3)
    return torch.autograd.grad(reduce(out), inputs[:2])


@pytest.mark.usefixtures("one_torch_thread")
def test_a_diagnostic_fine_tune_costs_one_round_trip_per_step_and_gives_identical_results(supply) -> None:
    diag = setting("label_noise", steps=8, batch=64)
    results, trips = {}, {}
    for fused in (False, True):
        with remote(supply, LRML, fused) as fn:
            results[fused] = fine_tune(fn, diag, seed=3, lr=0.05)
            trips[fused] = (fn.link.round_trips, fn.link.fused_backwards)
    assert trips[False] == (1 + 2 * diag.steps, 0)  # the load, then a forward and a backward per step
    assert trips[True] == (1 + diag.steps, diag.steps)  # the load, then one forward per step
    old, new = results[False], results[True]
    assert torch.equal(old.weights, new.weights) and old.losses == new.losses
    assert (old.fitness, old.per_context, old.per_context_kl) == (new.fitness, new.per_context, new.per_context_kl)


def test_a_batch_mean_is_answered_by_the_forward_in_every_dtype(supply) -> None:
    cases = [(24, torch.float32), (25, torch.float64), (26, torch.bfloat16), (27, torch.float16)]
    expected, got = {}, {}
    with remote(supply, LRML, fused=False) as fn:
        for batch, dtype in cases:
            expected[dtype] = grads_of(fn, inputs_of(batch, dtype), torch.mean)
    with remote(supply, LRML, fused=True) as fn:
        for batch, dtype in cases:
            got[dtype] = grads_of(fn, inputs_of(batch, dtype), torch.mean)
        assert (fn.link.round_trips, fn.link.fused_backwards) == (1 + len(cases), len(cases))
    for _, dtype in cases:
        assert all(torch.equal(a, b) and a.dtype == dtype for a, b in zip(got[dtype], expected[dtype], strict=True))


def test_another_grad_output_falls_back_to_the_backward_call(supply) -> None:
    inputs = inputs_of(16)
    weights = torch.linspace(0.1, 2.0, 16)
    with remote(supply, DPO, fused=False) as fn:
        expected = grads_of(fn, inputs, lambda out: (out * weights).sum())
    with remote(supply, DPO, fused=True) as fn:
        got = grads_of(fn, inputs, lambda out: (out * weights).sum())
        assert (fn.link.round_trips, fn.link.fused_backwards) == (3, 0)  # load, forward, backward
        assert fn.weights == {}  # not uniform: nothing to assume next time
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_a_scaled_mean_falls_back_once_then_is_assumed(supply) -> None:
    """Gradient accumulation divides the mean by the micro-batches: the first backward asks, the next ones do not."""
    inputs = inputs_of(16)
    quarter = lambda out: out.mean() / 4  # noqa: E731
    with remote(supply, LRML, fused=False) as fn:
        expected = grads_of(fn, inputs, quarter)
    with remote(supply, LRML, fused=True) as fn:
        first = grads_of(fn, inputs, quarter)
        assert (fn.link.round_trips, fn.link.fused_backwards) == (3, 0)
        again = grads_of(fn, inputs, quarter)
        assert (fn.link.round_trips, fn.link.fused_backwards) == (4, 1)
        mean = grads_of(fn, inputs, torch.mean)  # the assumption changed: the plain mean falls back, and is learnt
        assert (fn.link.round_trips, fn.link.fused_backwards) == (6, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, expected, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(again, expected, strict=True))
    assert not torch.equal(mean[0], expected[0])


def test_checks_give_the_same_report_in_fewer_round_trips(supply) -> None:
    reports, trips = {}, {}
    for fused in (False, True):
        with remote(supply, LRML, fused) as fn:
            reports[fused] = check_loss(fn)
            trips[fused] = fn.link.round_trips
    assert reports[True] == reports[False]
    assert trips[True] < trips[False]


def test_a_loss_whose_backward_raises_fails_at_backward_as_before(supply) -> None:
    """The oracle carries no gradient when differentiating raises; the backward call then reports the same error."""
    source = ("import torch\n\ndef f(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, "
              "reference_rejected_logps, beta):\n    y = torch.sigmoid(beta * (policy_chosen_logps - "
              "policy_rejected_logps))\n    z = y * 2.0\n    y[0] = 0.5\n    return z\n")
    errors, trips = {}, {}
    for fused in (False, True):
        with remote(supply, source, fused) as fn:
            out = fn(*inputs_of(8), 0.3)  # the forward succeeds
            with pytest.raises(CandidateError) as err:
                out.mean().backward()
            errors[fused], trips[fused] = str(err.value), (fn.link.round_trips, fn.link.fused_backwards)
    assert "modified by an inplace operation" in errors[True] and errors[True] == errors[False]
    assert trips[True] == trips[False] == (3, 0)


# -- the wire refuses a forward reply whose gradients nobody asked for or whose size is wrong -----------------------

def fake_oracle(reply: bytes, flags: int, extra: int) -> socket.socket:
    """A peer that answers the first request with an OK forward reply: ``reply`` values, ``flags``, ``extra`` bytes."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        request_id, _, _, _, length = wire.read_header(theirs, None)
        wire.read_exact(theirs, length, None)
        try:
            theirs.sendall(wire.pack(request_id, wire.OK, reply + bytes(extra), 0, flags))
        except OSError:
            pass  # the reader refused the header and hung up

    threading.Thread(target=serve, daemon=True).start()
    return ours


@pytest.mark.parametrize(("flags", "extra", "weight"), [
    (wire.OUT_REQUIRES_GRAD | wire.OUT_GRADS | (1 << wire.GRADS_SHIFT), 16, None),  # gradients nobody asked for
    (wire.OUT_REQUIRES_GRAD | wire.OUT_GRADS | (4 << wire.GRADS_SHIFT), 16, 0.25),  # for an input needing none
    (wire.OUT_REQUIRES_GRAD | wire.OUT_GRADS | (1 << wire.GRADS_SHIFT), 17, 0.25),  # one byte too many
    (wire.OUT_REQUIRES_GRAD | wire.OUT_GRADS | (1 << wire.GRADS_SHIFT), 1 << 24, 0.25),  # a flood
    (wire.OUT_REQUIRES_GRAD | (1 << wire.GRADS_SHIFT), 16, 0.25),  # gradient bits without the gradient flag
    (wire.OUT_REQUIRES_GRAD | 1 << 3, 0, 0.25),  # an unknown flag
])
def test_a_forward_reply_with_unasked_or_missized_gradients_is_refused(flags: int, extra: int, weight) -> None:
    inputs = [torch.zeros(4).requires_grad_(i < 2) for i in range(4)]
    link = OracleLink(fake_oracle(bytes(16), flags, extra), call_timeout=5.0)
    with pytest.raises(OracleBroken, match="where None were due|where 32 were due"):
        link.forward_with_grads(tuple(inputs), 0.1, weight)
    assert link.failure is not None and link.failure[0] == "oracle"


def test_a_well_formed_fused_reply_is_read() -> None:
    inputs = [torch.zeros(4).requires_grad_(i < 2) for i in range(4)]
    grad = torch.arange(4, dtype=torch.float32)
    flags = wire.OUT_REQUIRES_GRAD | wire.OUT_GRADS | (2 << wire.GRADS_SHIFT)
    link = OracleLink(fake_oracle(bytes(16) + wire.tensor_bytes(grad), flags, 0), call_timeout=5.0)
    _, values, _, grads = link.forward_with_grads(tuple(inputs), 0.1, 0.25)
    assert torch.equal(values, torch.zeros(4)) and grads[0] is None and torch.equal(grads[1], grad)
    assert grads[2] is None and grads[3] is None


# -- the tiny TRL task ----------------------------------------------------------------------------------------------

@pytest.mark.slow  # ~35 s under load (+ the tiny task's build); benchmarks/isolation_cost.py runs the same comparison
@pytest.mark.usefixtures("one_torch_thread")
def test_the_trl_fine_tune_is_bit_identical_and_one_round_trip_per_step(supply, tiny_task) -> None:
    from discopop.fitness.training import FineTuner  # lazy: TRL's import is this test's alone

    task, cfg = tiny_task
    training = TrainingSettings(**{**cfg["training"], "batch_size": 16, "learning_rate": 1e-2, "threads": 1,
                                   "epochs": 1})
    tuner = FineTuner(task, training, Path(tempfile.mkdtemp()))
    runs, trips = {}, {}
    for fused in (False, True):
        with remote(supply, LRML, fused) as fn:
            runs[fused] = tuner.run(fn, seed=0)
            trips[fused] = (fn.link.round_trips, fn.link.fused_backwards)
    old, new = runs[False], runs[True]
    assert old.steps == new.steps > 0
    assert trips[False] == (1 + 2 * old.steps, 0) and trips[True] == (1 + new.steps, new.steps)
    assert (old.final_loss, old.metrics) == (new.final_loss, new.metrics)
    assert (old.score.fitness, old.score.per_prompt, old.score.per_prompt_kl) == (
        new.score.fitness, new.score.per_prompt, new.score.per_prompt_kl)
