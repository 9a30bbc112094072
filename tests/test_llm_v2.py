"""The LLM proposer can write contract-v2 losses (issue 28 item 3): its system prompt names the optional inputs, the
example in it is a loss the checks accept, and a v2 loss sent as a model's reply through a real loopback
OpenAI-compatible server is parsed, checked in the sandbox and trained on the tiny task by the real ``discover``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import SMALL_RUN, command_env
from openai_server import FakeOpenAIServer, completion

import discopop.proposers.llm.prompting as P
from discopop.contract.checks import check_loss
from discopop.contract.inputs import TENSOR_INPUTS
from discopop.contract.losses import load_loss, static_check

REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "DISCOPOP_V2_TEST_KEY"
# Reference-free, length-normalised, with an SFT term: every optional input but the references.
V2_LOSS = '''import torch.nn.functional as F

GAMMA = 0.3


def simpo_sft(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, chosen_nll, beta):
    margin = policy_chosen_logps / chosen_lengths - policy_rejected_logps / rejected_lengths
    return -F.logsigmoid(beta * margin - GAMMA) + 0.1 * chosen_nll
'''


def test_the_system_prompt_describes_the_v2_inputs() -> None:
    text = P.system_prompt()
    for name in TENSOR_INPUTS:
        assert re.search(rf"^- {name}\b|\b{name}[,:)]", text, re.M), f"{name} is not described"
    assert "reference-free" in text and "not run" in text  # when the reference model is skipped
    assert "length-normalises" in text and "supervised fine-tuning" in text
    # the paper protocol keeps the paper's own four-input contract
    assert "chosen_nll" not in P.paper_system_prompt() and "chosen_lengths" not in P.paper_system_prompt()


def test_the_prompts_example_is_a_loss_the_checks_accept() -> None:
    """The SimPO example the model is shown (indented under "For example") passes the static and numeric checks."""
    block = P.template("contract_v2").template.split("For example", 1)[1].split("\n", 1)[1]
    code = "import torch.nn.functional as F\n\n\n" + "\n".join(line[4:] for line in block.splitlines()) + "\n"
    info = static_check(code)
    assert info.function_name == "simpo"
    report = check_loss(load_loss(code), beta=0.1)
    assert report.fingerprint


def _discover(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess:
    env = command_env(cache_dir, no_proxy=True, **{KEY_ENV: "sk-v2-test"})
    return subprocess.run(["discover", "--quiet", *args], capture_output=True, text=True, timeout=600, env=env,
                          cwd=REPO)


@pytest.mark.slow  # one whole tiny run (a reference and the LLM's loss trained in sandboxed workers): ~1 min
def test_a_v2_loss_from_the_llm_is_accepted_and_trained(tmp_path: Path, cache_dir: Path) -> None:
    server = FakeOpenAIServer(answer_probes=True).start()
    try:
        server.push(completion(json.dumps({"thought": "SimPO with an SFT term", "name": "simpo_sft",
                                           "code": V2_LOSS})))
        run_dir = tmp_path / "run"
        small = [o for o in SMALL_RUN if not o.startswith(("baselines=", "executor.workers=", "confirm.seeds="))]
        done = _discover(["--generations", "1", *small, "baselines=[dpo]", "executor.workers=1", "confirm.seeds=0",
                          "proposer.lookahead=0", "proposer=openai", "proposer.model=test-model",
                          f"proposer.base_url={server.url}", f"proposer.api_key_env={KEY_ENV}",
                          f"hydra.run.dir={run_dir}"], cache_dir)
        bodies = server.bodies()
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    asked = [b for b in bodies if b["messages"][0]["role"] == "system"]  # not the pre-flight probe
    assert asked and "chosen_nll" in asked[0]["messages"][0]["content"]  # the model was told about the inputs
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM candidates WHERE proposer = 'openai'")]
    assert len(rows) == 1
    row = rows[0]
    assert (row["name"], row["status"], row["code"]) == ("simpo_sft", "scored", V2_LOSS), row["error"]
    metrics = json.loads(row["metrics"])
    assert row["fitness"] is not None and metrics["train"]["loss_start"] > 0
