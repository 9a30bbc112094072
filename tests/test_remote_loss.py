"""``check_loss`` through a :class:`RemoteLoss` (the loss runs in a real loss oracle process) gives the
same verdicts, probe and curve as on the loss loaded in this process, and bad channel input is refused."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_checks import BAD_LOSSES, loss

from discopop.contract.checks import CheckFailed, check_loss
from discopop.contract.losses import load_loss
from discopop.execution.executors import Job, WarmWorker, WorkerSpec
from discopop.sandbox import Limits
from discopop.sandbox.oracle_supply import OracleSupply
from discopop.sandbox.remote_loss import OracleLink, OracleRefused, RemoteLoss

PROPOSALS = sorted((Path(__file__).resolve().parent.parent / "discopop" / "proposals").glob("*.py"))


@pytest.fixture(scope="module")
def supply() -> Iterator[OracleSupply]:
    oracles = OracleSupply(Limits())
    yield oracles
    oracles.close()


@contextmanager
def remote(supply: OracleSupply, source: str) -> Iterator[RemoteLoss]:
    """A fresh oracle loaded with ``source``; this test process plays the trusted worker."""
    oracle = supply.take()
    link = OracleLink(oracle.sock, call_timeout=30.0)
    try:
        link.load(source)
        yield RemoteLoss(link)
    finally:
        assert oracle.close() is None, "the oracle died on its own"


@pytest.mark.parametrize(("source", "reason"), BAD_LOSSES)
def test_bad_losses_fail_with_the_same_reason(supply, source: str, reason: str) -> None:
    with pytest.raises(CheckFailed) as local:
        check_loss(load_loss(source))
    with remote(supply, source) as fn, pytest.raises(CheckFailed) as far:
        check_loss(fn)
    assert reason in str(far.value)
    assert str(far.value) == str(local.value)


@pytest.mark.parametrize("path", PROPOSALS, ids=lambda p: p.stem)
def test_reference_losses_pass_with_identical_reports(supply, path: Path) -> None:
    source = path.read_text()
    local = check_loss(load_loss(source))
    with remote(supply, source) as fn:
        far = check_loss(fn)
    assert far == local


def test_beta_ignored_is_reported_not_rejected(supply) -> None:
    with remote(supply, loss("-F.logsigmoid(rho)")) as fn:
        assert check_loss(fn).uses_beta is False


def test_gradients_match_autograd_for_every_input(supply) -> None:
    source = loss("-F.logsigmoid(beta * rho) + 0.1 * reference_chosen_logps ** 2")
    gen = torch.Generator().manual_seed(0)
    inputs = [(-torch.rand(8, generator=gen) * 10).requires_grad_(True) for _ in range(4)]
    expected = torch.autograd.grad(load_loss(source)(*inputs, 0.3).sum(), inputs)
    with remote(supply, source) as fn:
        out = fn(*inputs, 0.3)
        got = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    assert got[3] is not None and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_static_refusal_comes_back_as_the_static_stage(supply) -> None:
    oracle = supply.take()
    try:
        with pytest.raises(OracleRefused) as err:
            OracleLink(oracle.sock).load("import os\n\ndef f(a, b, c, d, beta):\n    return os.getpid()\n")
        assert err.value.stage == "static" and "import of 'os' is not allowed" in str(err.value)
    finally:
        oracle.close()


def test_bad_input_is_one_clear_error(supply) -> None:
    with remote(supply, loss("-F.logsigmoid(beta * rho)")) as fn:
        with pytest.raises(ValueError, match="one equal batch size"):
            fn(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(4), 0.1)
        with pytest.raises(ValueError, match="unsupported dtype"):
            fn(*(torch.zeros(3, dtype=torch.long),) * 4, 0.1)


def test_a_job_that_fails_before_taking_its_oracle_does_not_shift_later_jobs() -> None:
    """Its oracle socket stays queued on the control channel; the next job must not take it."""
    worker = WarmWorker(WorkerSpec(task=None, training=None, check_timeout=60))
    try:
        no_task = worker.run(Job(0, loss("-F.logsigmoid(beta * rho)"), "train"))
        assert (no_task.ok, no_task.error) == (False, "worker was started without a task")
        for _ in range(2):
            result = worker.run(Job(0, loss("-F.logsigmoid(beta * rho)"), "check"))
            assert result.ok, result.error
    finally:
        worker.close()
