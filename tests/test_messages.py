"""The worker's replies (``discopop.execution.messages``): one versioned definition, checked where it is read.

Each message survives the trip the real one takes (``to_wire``, JSON, ``parse_reply``) unchanged; a reply of
another version, or a malformed one, is refused with one line naming the field; and a job whose worker answers
so is recorded as failed with that line while the run goes on with the next candidate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scripted_executor import fingerprint

from discopop.archive import Archive, Evaluation
from discopop.execution.executors import Job, LocalExecutor, WarmWorker, WorkerSpec
from discopop.execution.messages import (
    VERSION,
    CheckReply,
    FailureReply,
    InitReply,
    MessageError,
    TrainReply,
    parse_reply,
)
from discopop.fitness.tuning import LrProtocol, split_fitness
from discopop.proposers.base import Candidate
from discopop.search.cascade import Evaluator

PROPOSALS = Path(__file__).resolve().parents[1] / "discopop" / "proposals"

TRAIN = TrainReply(
    fitness=0.61, reward=0.625, kl=0.15, steps=40, per_prompt=[0.5, 0.75, 1, 0.0], per_prompt_kl=[0.1, 0.2, 0.1, 0.2],
    kl_coef=0.1, greedy=0.5, full_steps=40, final_loss=0.41, train_seconds=2.5, step_seconds=2.0, score_seconds=0.5,
    train_metrics={"loss_start": 0.69, "loss_end": 0.41}, per_prompt_greedy=[1.0, 0.0, 1.0, 0.0], learning_rate=2e-5,
    peak_gpu_mb=None, behaviour={"during_training": 0.0, "on_training_refs": None}, beta=0.25,
    completions=["4", "5", "6", "7"], seconds=3.1)
CHECK = CheckReply({"uses_beta": True, "beta": 0.1, "fingerprint": [0.6, 0.8], "diagnostics": {"slope": 1.0}},
                   seconds=0.2)
INIT = InitReply(seconds=4.2, device="cpu", precision="float32", lora=False, sandbox_layers=["landlock", "seccomp"])
FAILURE = FailureReply("numeric", "returned shape [3], expected [8]", traceback=None, seconds=0.1)


def over_the_pipe(reply: Any) -> dict[str, Any]:
    """The reply as the executor receives it: to_wire, JSON out of the worker, JSON back in."""
    return json.loads(json.dumps(reply.to_wire()))


@pytest.mark.parametrize(("op", "reply"), [("train", TRAIN), ("check", CHECK), ("init", INIT), ("train", FAILURE)])
def test_each_reply_round_trips_unchanged(op: str, reply: Any) -> None:
    wire = over_the_pipe(reply)
    assert wire["ok"] is reply.OK and wire["version"] == VERSION
    back = parse_reply(op, wire)
    assert back == reply and type(back) is type(reply)


def test_a_train_reply_keeps_its_numbers_as_sent() -> None:
    """An int stays an int and a list becomes a tuple of the same values: the archive's JSON is the worker's."""
    back = parse_reply("train", over_the_pipe(TRAIN))
    assert back.per_prompt == (0.5, 0.75, 1, 0.0) and isinstance(back.per_prompt[2], int)
    assert json.dumps(list(back.per_prompt)) == json.dumps([0.5, 0.75, 1, 0.0])
    assert split_fitness(back) == split_fitness(TRAIN)
    assert Evaluation.from_reply(1, 0, "search", back) == Evaluation.from_reply(1, 0, "search", TRAIN)


def test_optional_fields_left_unset_stay_off_the_wire() -> None:
    bare = TrainReply(fitness=0.5, reward=0.5, kl=0.0, steps=1, per_prompt=[], per_prompt_kl=[], kl_coef=0.0)
    wire = bare.to_wire()
    assert not {"beta", "completions", "judge"} & set(wire)
    assert parse_reply("train", wire) == bare


@pytest.mark.parametrize(("change", "field"), [
    ({"version": VERSION - 1}, "version"),
    ({"version": None}, "version"),
    ({"fitness": "0.61"}, "fitness"),
    ({"steps": 4.5}, "steps"),
    ({"per_prompt": [0.5, "x"]}, "per_prompt"),
    ({"greedy": [1.0]}, "greedy"),
    ({"behaviour": 0.3}, "behaviour"),
    ({"reward_model": "gpt"}, "reward_model"),  # a field this version does not have
    ({"ok": "yes"}, "ok"),
])
def test_a_malformed_or_other_version_train_reply_is_refused_naming_the_field(change: dict, field: str) -> None:
    wire = {**over_the_pipe(TRAIN), **change}
    with pytest.raises(MessageError) as refused:
        parse_reply("train", wire)
    message = str(refused.value)
    assert f"'{field}'" in message and "\n" not in message, message


@pytest.mark.parametrize("missing", ["fitness", "kl", "per_prompt", "kl_coef"])
def test_a_train_reply_without_a_required_field_is_refused(missing: str) -> None:
    wire = {k: v for k, v in over_the_pipe(TRAIN).items() if k != missing}
    with pytest.raises(MessageError, match=f"field '{missing}' is missing"):
        parse_reply("train", wire)


def test_a_failure_of_another_version_and_a_non_object_are_refused() -> None:
    with pytest.raises(MessageError, match="field 'version'"):
        parse_reply("check", {"ok": False, "stage": "numeric", "error": "x"})  # as replies were before versions
    with pytest.raises(MessageError, match="not an object"):
        parse_reply("check", ["ok"])
    with pytest.raises(MessageError, match="field 'stage'"):
        parse_reply("check", {**over_the_pipe(FAILURE), "stage": 3})


# ---- a job whose worker speaks another version fails with that line; the run goes on ------------------------------

class _Proc:
    """Stands in for the sandboxed worker process: answers each request with ``answer(message)``."""

    layers: list[str] = []

    def __init__(self, answer) -> None:
        self.answer = answer

    def alive(self) -> bool:
        return True

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.answer(message)

    def close(self) -> None:
        pass


class _Oracle:
    sock = None

    def hand_to(self, control: Any, keep: bool = False) -> str:
        return "tag"

    def close(self, grace: float = 0.0) -> None:
        return None


def _executor(answer) -> LocalExecutor:
    executor = LocalExecutor(WorkerSpec(task=None, training=None, kept_oracles=0), workers=1)
    for worker in executor.workers:  # no process: the reply is what is tested
        worker.proc, worker.starts = _Proc(answer), 1
        worker.oracles.take = _Oracle  # type: ignore[method-assign]
    return executor


def test_the_executor_turns_an_other_version_reply_into_a_failed_job() -> None:
    stale = {**over_the_pipe(TRAIN), "version": VERSION + 1}
    worker: WarmWorker = _executor(lambda message: stale).workers[0]
    result = worker.run(Job(3, "code", "train", 0, learning_rate=1e-5))
    assert (result.ok, result.stage, result.machinery) == (False, "train", True)  # never stored as the loss's own
    assert result.error == f"worker train reply: field 'version' is {VERSION + 1}; this side speaks version {VERSION}"
    good = _executor(lambda message: over_the_pipe(TRAIN)).workers[0].run(Job(3, "code", "train", 0))
    assert good.ok and good.trained == TRAIN


def test_a_malformed_reply_fails_its_candidate_and_the_next_one_is_scored(tmp_path: Path) -> None:
    """The cascade records the refused reply as the row's failure (its reason in ``error``) and goes on."""
    dpo, hinge = (PROPOSALS / "dpo.py").read_text(), (PROPOSALS / "hinge.py").read_text()

    def answer(message: dict[str, Any]) -> dict[str, Any]:
        if message["op"] == "check":
            checks = {"beta": 0.1, "uses_beta": True, "probe": {}, "curve": {}, "diagnostics": None,
                      "fingerprint": fingerprint(message["code"])}
            return over_the_pipe(CheckReply(checks))
        wire = over_the_pipe(TrainReply(fitness=0.5, reward=0.5, kl=0.0, steps=4, per_prompt=[0.5, 0.5],
                                        per_prompt_kl=[0.0, 0.0], kl_coef=0.0, learning_rate=1e-5))
        return {**wire, "kl": None} if message["code"] == hinge else wire

    archive = Archive(tmp_path / "archive.sqlite")
    executor = _executor(answer)
    evaluator = Evaluator(archive, executor, seed=0, protocol=LrProtocol(grid=(1e-5,), screen_margin=None))
    rows = [archive.get(archive.add(Candidate(name=n, code=c, proposer="reference"), 0))
            for n, c in (("hinge", hinge), ("dpo", dpo))]
    outcomes = {o.row_id: o.status for o in evaluator.evaluate(rows)}
    executor.close()
    by_name = {r.name: r for r in archive.rows()}
    assert by_name["hinge"].status == "train_failed"
    assert by_name["hinge"].error == "worker train reply: field 'kl' is None, expected a number"
    assert by_name["dpo"].status == "scored" and by_name["dpo"].fitness == 0.5
    assert sorted(outcomes.values()) == ["scored", "train_failed"]
