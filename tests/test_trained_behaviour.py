"""Archived behaviour is the trained behaviour: each training job re-measures the behaviour probe on its own oracle.

A loss could behave one way in the check job (which archives its fingerprint: deduplication and the behaviour
map use it) and another in training, by counting its calls or by recognising the check's inputs. The worker
probes before and after the fine-tune and on the reference log-probs of the task's training pairs; the drift
(1 - cosine) lands in the row's ``metrics.behaviour``.
"""

from __future__ import annotations

import torch

from discopop.config.compose import compose_settings
from discopop.contract.checks import fingerprint_distance, probe_fingerprint
from discopop.contract.losses import load_loss
from discopop.execution.executors import Job, LocalExecutor
from discopop.proposers.reference import reference_candidate
from discopop.search.cascade import FINGERPRINT_TOL
from discopop.search.loop import worker_spec

SMALL = ["task=diagnostic", "task.contexts=64", "task.eval_contexts=64", "task.steps=20", "task.batch=64",
         "wandb.mode=disabled"]

# Recognised the checks' former fixed reference log-probs (all below -11 at beta 0.5) and only there acted like DPO;
# on training inputs it adds a push on the chosen answer's log-prob. The checks now draw their reference log-probs
# at the task's own scale, so the checks see (and archive) the shape it trains with.
RECOGNISER = '''
import torch.nn.functional as F


def recogniser(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    in_training = (reference_chosen_logps > -25.0).float()
    return -F.logsigmoid(beta * rho) - 0.5 * in_training * policy_chosen_logps
'''


# Recognises what no drawn distribution imitates: real pairs' fine structure (the diagnostic task's reference
# log-probs come from a few contexts, so a batch of real pairs repeats values; drawn ones never do). Only the probe
# on the training pairs' own reference log-probs sees its training shape, and records the drift.
STRUCTURE_RECOGNISER = '''
import torch.nn.functional as F


def structure_recogniser(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    ref = reference_chosen_logps
    repeats = (ref.unsqueeze(0) == ref.unsqueeze(1)).float().sum() - ref.shape[0]
    in_training = (repeats > 0).float()
    return -F.logsigmoid(beta * rho) - 0.5 * in_training * policy_chosen_logps
'''


def _counting_dpo():
    """Trusted test code (in process): DPO for its first calls, then a different shape (a stateful loss)."""
    calls = [0]

    def loss(pc, pr, rc, rr, beta):
        calls[0] += 1
        rho = (pc - pr) - (rc - rr)
        scale = 1.0 if calls[0] <= 1 else 3.0
        return -torch.nn.functional.logsigmoid(scale * beta * rho) + (0.0 if calls[0] <= 1 else 0.2 * rho ** 2)

    return loss


def test_a_loss_of_rho_alone_probes_the_same_on_any_reference_log_probs() -> None:
    dpo = load_loss(reference_candidate("dpo").code)
    refs = (-torch.rand(40) * 6 - 1, -torch.rand(40) * 6 - 1)
    assert fingerprint_distance(probe_fingerprint(dpo, 0.5), probe_fingerprint(dpo, 0.5, refs)) <= FINGERPRINT_TOL


def test_a_stateful_loss_drifts_between_two_probes() -> None:
    loss = _counting_dpo()
    first, second = probe_fingerprint(loss, 0.5), probe_fingerprint(loss, 0.5)
    assert first and second and fingerprint_distance(first, second) > 1e-3


def test_a_failing_probe_is_none_not_a_crash() -> None:
    def broken(pc, pr, rc, rr, beta):
        raise RuntimeError("no")

    assert probe_fingerprint(broken, 0.5) is None and fingerprint_distance(None, [1.0]) is None


def test_training_jobs_report_the_drift_through_the_sandboxed_worker(one_torch_thread) -> None:
    cfg, _ = compose_settings([*SMALL, "training.beta=0.5"])
    executor = LocalExecutor(worker_spec(cfg), workers=1)
    try:
        done = {r.job.row_id: r for r in executor.run([
            Job(1, reference_candidate("dpo").code, "train", 0, learning_rate=0.03),
            Job(2, RECOGNISER, "train", 0, learning_rate=0.03),
            Job(3, STRUCTURE_RECOGNISER, "train", 0, learning_rate=0.03),
            Job(4, reference_candidate("dpo").code, "check", 0),
            Job(5, RECOGNISER, "check", 0),
        ])}
    finally:
        executor.close()
    assert all(r.ok for r in done.values()), [r.error for r in done.values()]
    honest, recogniser, structure, dpo_check, recogniser_check = (done[i] for i in range(1, 6))
    assert honest.trained.behaviour["during_training"] <= FINGERPRINT_TOL
    assert honest.trained.behaviour["on_training_refs"] <= FINGERPRINT_TOL
    # the former-input recogniser: its probes already show the shape it trains with, and so does its archived check
    assert recogniser.trained.behaviour["during_training"] <= FINGERPRINT_TOL  # stateless: the same probe twice
    assert recogniser.trained.behaviour["on_training_refs"] <= FINGERPRINT_TOL
    assert fingerprint_distance(recogniser_check.checked.checks["fingerprint"],
                                dpo_check.checked.checks["fingerprint"]) > FINGERPRINT_TOL  # not archived as DPO
    assert structure.trained.behaviour["during_training"] <= FINGERPRINT_TOL
    assert structure.trained.behaviour["on_training_refs"] > 1e-3  # not the shape it trains with: recorded


def test_the_trl_fine_tune_probes_on_its_precomputed_reference_log_probs(tiny_task) -> None:
    from conftest import SMALL_RUN  # lazy: conftest is importable only once pytest has put tests/ on the path

    cfg, _ = compose_settings([*SMALL_RUN, "executor.workers=1"])
    executor = LocalExecutor(worker_spec(cfg), workers=1)
    try:
        (result,) = executor.run([Job(1, reference_candidate("dpo").code, "train", 0, learning_rate=2e-5)])
    finally:
        executor.close()
    assert result.ok, result.error
    drift = result.trained.behaviour
    assert drift["on_training_refs"] is not None and drift["on_training_refs"] <= FINGERPRINT_TOL
    assert drift["during_training"] <= FINGERPRINT_TOL
