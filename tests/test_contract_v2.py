"""Contract v2 (``discopop.contract.inputs``): losses that declare lengths, the chosen NLL or no references.

The static check accepts the new names and refuses unknown ones in one line; the numeric checks feed them (drawn
from the seed); the oracle wire carries exactly the declared inputs (a v1 loss's frames are the old ones, byte
for byte); the diagnostic tier feeds lengths 1 and the chosen action's NLL.
"""

from __future__ import annotations

import socket
import threading

import pytest
import torch
from test_remote_loss import remote, supply  # noqa: F401 - the module-scoped oracle supply fixture

from discopop.config.references import available, available_v2
from discopop.contract import checks
from discopop.contract.checks import check_loss
from discopop.contract.inputs import V1_INPUTS, call_loss, declared_inputs
from discopop.contract.losses import LossRejected, load_loss, normalise_loss, signature_inputs, static_check
from discopop.fitness.diagnostic_tune import fine_tune
from discopop.proposers.reference import reference_candidate
from discopop.sandbox import oracle_wire as wire
from discopop.sandbox.remote_loss import CandidateError, OracleBroken, OracleLink, RemoteLoss
from discopop.tasks.diagnostic import setting

DPO = reference_candidate("dpo").code
DPO_WITH_UNUSED_LENGTHS = '''import torch.nn.functional as F


def f(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths,
      beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * rho) + 0.0 * chosen_lengths
'''
# the chosen side only through the NLL (the checks want a gradient on both policy inputs: a small rejected term)
SFT_ONLY = ("def sft(policy_chosen_logps, policy_rejected_logps, chosen_nll, beta):\n"
            "    return chosen_nll + 0.01 * beta * policy_rejected_logps\n")
V2_REFERENCES = ("simpo", "orpo", "rpo", "sigmoid_norm", "ipo_norm", "alphapo")


# -- static check ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", V2_REFERENCES)
def test_the_v2_references_pass_the_static_check_with_their_inputs(name: str) -> None:
    info = static_check(reference_candidate(name).code)
    assert info.inputs != V1_INPUTS and info.inputs[:2] == V1_INPUTS[:2]
    assert ("reference_chosen_logps" in info.inputs) == (name in ("rpo", "sigmoid_norm", "ipo_norm"))


@pytest.mark.parametrize(("params", "says"), [
    ("policy_chosen_logps, policy_rejected_logps, chosen_len, beta", "unknown input 'chosen_len'"),
    ("policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, beta", "take both"),
    ("policy_chosen_logps, policy_rejected_logps, chosen_nll, chosen_lengths, beta", "must come in the order"),
    ("policy_chosen_logps, policy_rejected_logps, chosen_nll", "end with beta"),
    ("policy_rejected_logps, policy_chosen_logps, beta", "must start with"),
])
def test_a_bad_v2_signature_is_refused_in_one_line(params: str, says: str) -> None:
    with pytest.raises(LossRejected) as err:
        static_check(f"def f({params}):\n    return policy_chosen_logps\n")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_the_method_form_normalises_with_v2_inputs() -> None:
    method = ("    def simpo(self, policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths):\n"
              "        return -F.logsigmoid(self.beta * (policy_chosen_logps / chosen_lengths"
              " - policy_rejected_logps / rejected_lengths))\n")
    info = static_check(normalise_loss(method))
    assert info.inputs == ("policy_chosen_logps", "policy_rejected_logps", "chosen_lengths", "rejected_lengths")


def test_the_worker_reads_the_inputs_from_the_signature_alone() -> None:
    """``signature_inputs`` (the worker's read, no allow-list walk: the oracle judges the code) agrees with the
    static check on valid losses and reads anything else as v1 (which the oracle's LOAD refuses)."""
    for name in (*V2_REFERENCES, "dpo", "lrml"):
        code = reference_candidate(name).code
        assert signature_inputs(code) == static_check(code).inputs
    for junk in ("def f(a, b):\n    return a\n", "x = (", "def f(x):\n    return x\n\ndef g(y):\n    return y\n"):
        assert signature_inputs(junk) == V1_INPUTS


def test_v2_references_are_named_but_not_in_the_default_set() -> None:
    assert set(V2_REFERENCES) <= set(available_v2()) and not set(V2_REFERENCES) & set(available())


# -- numeric checks --------------------------------------------------------------------------------------------------

def test_a_v1_loss_is_called_with_the_four_log_probs_and_beta_only() -> None:
    calls: list[int] = []
    dpo = load_loss(DPO)

    def spy(*args):
        calls.append(len(args))
        return dpo(*args)

    check_loss(spy, seed=3)
    assert calls and set(calls) == {5}
    assert declared_inputs(spy) == V1_INPUTS


def test_unused_extra_inputs_leave_the_fingerprint_and_probe_unchanged() -> None:
    """The drawn lengths have their own generator: the probe's log-probs (so a v1 loss's fingerprint) stay put."""
    ours, dpo = check_loss(load_loss(DPO_WITH_UNUSED_LENGTHS), seed=5), check_loss(load_loss(DPO), seed=5)
    assert ours.fingerprint == dpo.fingerprint and ours.probe == dpo.probe and ours.curve == dpo.curve


def test_the_chosen_nll_carries_its_gradient_into_the_fingerprint() -> None:
    report = check_loss(load_loss(SFT_ONLY), seed=1)
    assert report.fingerprint and report.diagnostics["slope_at_0"]["chosen"] < 0  # raising the chosen lowers NLL


def test_the_drawn_lengths_follow_the_seed() -> None:
    a, b, c = (checks.behaviour_inputs(0.5, seed=s).lengths for s in (2, 2, 3))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert float(a[0].min()) >= 1.0 and float(a[0].max()) <= checks.MAX_LENGTH and len(set(a[0].tolist())) > 10


# -- the oracle wire -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", V2_REFERENCES)
def test_a_v2_loss_through_the_oracle_reports_what_it_reports_here(supply, name: str) -> None:  # noqa: F811
    source = reference_candidate(name).code
    local = check_loss(load_loss(source), seed=2)
    with remote(supply, source) as plain:  # the worker builds its RemoteLoss with the inputs the code declares
        assert check_loss(RemoteLoss(plain.link, inputs=static_check(source).inputs), seed=2) == local


def _inputs(lengths: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    pc, pr = (-torch.rand(8, generator=gen, dtype=torch.float64) * 20 - 1 for _ in range(2))
    leaf_c, leaf_r = pc.requires_grad_(True), pr.requires_grad_(True)
    lens = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8], dtype=torch.float64)
    out = {"policy_chosen_logps": leaf_c, "policy_rejected_logps": leaf_r,
           "reference_chosen_logps": leaf_c.detach() - 1, "reference_rejected_logps": leaf_r.detach() + 1}
    if lengths:
        out.update({"chosen_lengths": lens, "rejected_lengths": lens.flip(0), "chosen_nll": -leaf_c / lens})
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_values_and_gradients_through_the_wire_equal_the_local_ones(supply, fused: bool) -> None:  # noqa: F811
    source = reference_candidate("orpo").code
    local = load_loss(source)
    inputs = _inputs()
    want = call_loss(local, inputs, 0.3)
    grads_want = torch.autograd.grad(want.mean(), [inputs["policy_chosen_logps"], inputs["policy_rejected_logps"]])
    inputs = _inputs()  # afresh: the chosen NLL's graph was freed by the backward above
    with remote(supply, source) as plain:
        fn = RemoteLoss(plain.link, fused=fused, inputs=local.discopop_inputs)
        got = call_loss(fn, inputs, 0.3)
        grads = torch.autograd.grad(got.mean(), [inputs["policy_chosen_logps"], inputs["policy_rejected_logps"]])
        assert fn.link.fused_backwards == (1 if fused else 0)
    assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(grads, grads_want, strict=True))


def test_a_v2_loss_asked_with_the_old_frame_is_refused(supply) -> None:  # noqa: F811
    with remote(supply, reference_candidate("simpo").code) as fn:  # RemoteLoss defaults to the v1 inputs
        with pytest.raises(CandidateError, match="contract-v2 inputs"):
            fn(*(torch.full((4,), -3.0) for _ in range(4)), 0.1)


def recorded_request(slots: tuple[int, ...] | None, inputs: tuple[torch.Tensor, ...], weight: float | None) -> bytes:
    """The bytes of the forward request an OracleLink sends (a peer that records them and hangs up)."""
    ours, theirs = socket.socketpair()
    got: list[bytes] = []

    def serve() -> None:
        _, _, _, _, length = wire.read_header(theirs, None)
        got.append(wire.read_exact(theirs, length, None))
        theirs.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    link = OracleLink(ours, call_timeout=5.0)
    with pytest.raises(OracleBroken):
        link.forward_with_grads(inputs, 0.25, weight, slots)
    thread.join(5.0)
    return got[0]


def test_a_v1_forward_frame_is_the_old_one_byte_for_byte() -> None:
    inputs = tuple(torch.arange(4, dtype=torch.float32).requires_grad_(i < 2) - 5 for i in range(4))
    payload = recorded_request(None, inputs, 0.25)
    old = wire.FORWARD_HEAD.pack(0.25, 4, 0, 0, 0, 0, 0.25) + b"".join(map(wire.tensor_bytes, inputs))
    assert payload == old
    v2 = recorded_request((0, 1, 2, 3), inputs, 0.25)  # the same four as slots: a FORWARD2, another frame
    assert v2 != old and wire.FORWARD2_HEAD.unpack_from(v2)[2:4] == (0xF, 0x3)


def test_a_forward2_reply_with_gradients_for_an_unasked_slot_is_refused() -> None:
    ours, theirs = socket.socketpair()

    def serve() -> None:
        request_id, _, _, _, length = wire.read_header(theirs, None)
        wire.read_exact(theirs, length, None)
        a, b = wire.pack_forward2_reply(0, wire.OUT_REQUIRES_GRAD | wire.OUT_GRADS, 1 << 4)  # a length's gradient
        try:
            theirs.sendall(wire.pack(request_id, wire.OK, bytes(16 + 16), a, b))
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    inputs = (torch.zeros(4).requires_grad_(True), torch.zeros(4).requires_grad_(True), torch.ones(4), torch.ones(4))
    link = OracleLink(ours, call_timeout=5.0)
    with pytest.raises(OracleBroken, match="where None were due"):
        link.forward_with_grads(inputs, 0.1, 0.25, (0, 1, 4, 5))


# -- the diagnostic tier ---------------------------------------------------------------------------------------------

FAST = {"contexts": 64, "eval_contexts": 64, "steps": 30, "batch": 64}


@pytest.mark.usefixtures("one_torch_thread")
def test_the_bandit_feeds_lengths_one_and_the_chosen_nll() -> None:
    s = setting("clean", **FAST)
    dpo = fine_tune(load_loss(DPO), s, seed=3, lr=0.03)
    norm = fine_tune(load_loss(reference_candidate("sigmoid_norm").code), s, seed=3, lr=0.03)
    # lengths 1: TRL's sigmoid_norm is DPO (up to the order it subtracts in: round-off)
    assert norm.per_context == pytest.approx(dpo.per_context, abs=1e-9)
    rpo = fine_tune(load_loss(reference_candidate("rpo").code), s, seed=3, lr=0.03)
    assert rpo.per_context != dpo.per_context  # the NLL term trains
    sft = fine_tune(load_loss(SFT_ONLY), s, seed=3, lr=0.03)
    assert sft.train_reward != dpo.train_reward and sft.fitness == sft.fitness
