"""Hub tasks: the loading code runs on tiny models and a dataset built here and saved locally."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import HUB_ALPHABET as ALPHABET
from conftest import build_hub_dir, command_env, hub_cfg, run_hub_discovered

from discopop.config import TrainingSettings
from discopop.contract.losses import load_loss
from discopop.fitness.training import FineTuner
from discopop.tasks import load_task
from discopop.tasks.tiny import save_tiny, tiny_reward_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> Path:
    """A 'hub' on disk (``build_hub_dir``), for this file's tests."""
    return build_hub_dir(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def hub_discovered(prefetch, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``run_hub_discovered``: started in the background at the session's first test where it could be, else here."""
    if "hub_discovered" in prefetch:
        return prefetch["hub_discovered"].result()
    return run_hub_discovered(tmp_path_factory.mktemp("hub-run"))


def test_hub_task_loads_splits_and_trains(hub_dir: Path, tmp_path: Path) -> None:
    task = load_task(hub_cfg(hub_dir, tmp_path))
    held = set(task.heldout_prompts + task.confirm_prompts)
    assert len(held) == 8
    pairs = json.loads((task.pairs_path.parent / "meta.json").read_text())
    assert pairs["pairs"] == 32
    from datasets import load_from_disk

    train_prompts = set(load_from_disk(str(task.pairs_path))["prompt"])
    assert not train_prompts & held, "held-out prompts leaked into training pairs"
    training = TrainingSettings(beta=0.1, learning_rate=1e-3, epochs=1, batch_size=8, threads=1)
    tuner = FineTuner(task, training, Path(tempfile.mkdtemp()), kl_coef=0.05)
    result = tuner.run(load_loss(REPO / "proposals" / "dpo.py"), seed=0)
    assert result.steps == 4
    score = result.score
    assert all(map(lambda v: v == v and abs(v) < 1e6, (score.reward, score.kl, score.fitness)))
    assert score.fitness == pytest.approx(score.reward - 0.05 * score.kl)


def test_hub_task_reports_missing_columns(hub_dir: Path, tmp_path: Path) -> None:
    cfg = {**hub_cfg(hub_dir, tmp_path), "prompt_column": "prompt"}
    with pytest.raises(ValueError, match="lacks column"):
        load_task(cfg)


def test_discover_runs_on_a_hub_task(hub_discovered: tuple[Path, subprocess.CompletedProcess]) -> None:
    """A whole run on the hub task, at one learning rate (the rate's climb over a grid is the protocol's, the same on
    every task: tests/test_tuning.py, and every run of the embedded task in this suite)."""
    run_dir, out = hub_discovered
    assert out.returncode == 0, out.stderr[-2000:]
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        statuses = dict(conn.execute("SELECT name, status FROM candidates").fetchall())
    assert statuses["dpo"] == "scored" and len(statuses) == 2


def test_hub_task_needs_its_paths(tmp_path: Path) -> None:
    out = subprocess.run(["discover", "--generations", "1", "task=hub"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=command_env())
    assert out.returncode == 2 and "task=hub needs task.model, task.dataset, task.reward_model" in out.stderr


def judged_cfg(hub_dir: Path, cache: Path, url: str = "http://127.0.0.1:9/v1") -> dict:
    cfg = {**hub_cfg(hub_dir, cache), "reward_model": None}
    cfg["judge"] = {"model": "judge-model", "base_url": url, "api_key_env": "DISCOPOP_TEST_JUDGE_KEY",
                    "backoff_base": 0.0, "backoff_max": 0.0}
    return cfg


def test_padded_batches_decode_each_prompt_as_alone(hub_dir: Path, tmp_path: Path) -> None:
    """Prompts of different lengths share left-padded batches; each completion is the one it gets alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from discopop.fitness.scoring import length_batches, score_policy

    task = load_task(judged_cfg(hub_dir, tmp_path))
    assert task.judged and task.reward is None
    tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_path)
    policy = AutoModelForCausalLM.from_pretrained(task.model_path)
    assert any(b.mask is not None for b in length_batches(tokenizer, task.prompts("search"), 8))
    alone = score_policy(policy, policy, tokenizer, task, seed=0, kl_coef=0.05, batch_size=1)
    together = score_policy(policy, policy, tokenizer, task, seed=0, kl_coef=0.05, batch_size=8)
    assert together.completions == alone.completions and len(set(alone.completions)) > 1
    assert together.per_prompt_kl == pytest.approx([0.0] * len(task.prompts("search")), abs=1e-5)  # same model
    assert together.reward == 0.0 and together.fitness == pytest.approx(-0.05 * together.kl)


def test_reward_model_scores_batches_like_single_texts(hub_dir: Path) -> None:
    from discopop.tasks.hub import RewardModelScorer

    scorer = RewardModelScorer(str(hub_dir / "reward"))
    prompts = ["say good bad", "say ok", "say fun fine", "say poor"]
    completions = [" good!", None, " fine fine fine.", " ok"]
    batched = scorer.batch(prompts, completions, batch_size=3)
    single = [scorer(p, c) for p, c in zip(prompts, completions, strict=True)]
    assert batched == pytest.approx(single, abs=1e-5) and batched[1] == 0.0 and len(set(batched)) == 4
    with pytest.raises(ValueError, match="reward_index=3 is not a logit"):
        RewardModelScorer(str(hub_dir / "reward"), index=3)("say ok", " ok")


def test_a_judged_fine_tune_returns_its_completions(hub_dir: Path, tmp_path: Path) -> None:
    task = load_task(judged_cfg(hub_dir, tmp_path))
    training = TrainingSettings(beta=0.1, learning_rate=1e-3, epochs=1, batch_size=8, threads=1)
    tuner = FineTuner(task, training, Path(tempfile.mkdtemp()), kl_coef=0.05)
    score = tuner.run(load_loss(REPO / "proposals" / "dpo.py"), seed=0).score
    assert len(score.completions) == len(task.prompts("search")) and all(isinstance(c, str) for c in score.completions)
    assert score.reward == 0.0 and score.fitness == pytest.approx(-0.05 * score.kl)


@pytest.mark.slow
def test_discover_with_the_llm_judge(hub_dir: Path, tmp_path: Path) -> None:
    """Two generations on the tiny hub task, graded by a judge on a loopback OpenAI-protocol server."""
    from openai_server import FakeOpenAIServer, completion

    key = "sk-e2e-judge-Wd5DISTINCTIVE-0099"

    def rate(body) -> object:  # a deterministic judge: the answer's length decides the grade
        text = body["messages"][0]["content"]
        answer = text.split("[Answer begins]\n", 1)[1].rsplit("\n[Answer ends]", 1)[0]
        return completion(f"Graded. [[{1 + len(answer) % 10}]]", prompt_tokens=80, completion_tokens=5)

    server = FakeOpenAIServer(responder=rate, answer_probes=True).start()  # the pre-flight probe: "OK"
    run_dir = tmp_path / "run"
    cfg = judged_cfg(hub_dir, tmp_path / "cache", server.url)
    overrides = [f"task.{k}={'null' if v is None else v}" for k, v in cfg.items()
                 if k not in ("name", "kind", "tokenizer", "judge")]
    overrides += [f"task.judge.{k}={v}" for k, v in cfg["judge"].items()]
    args = ["discover", "--generations", "2", "--quiet", "task=hub", *overrides, "baselines=[dpo]",
            "candidates_per_generation=2", "training.batch_size=8", "training.threads=1", "training.lr_grid=[1e-3]",
            "confirm.seeds=0", "wandb.mode=disabled", f"hydra.run.dir={run_dir}"]
    try:
        out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900,
                             env=command_env(DISCOPOP_TEST_JUDGE_KEY=key))
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr[-2000:]
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        rows = conn.execute("SELECT id, name, status, fitness, metrics FROM candidates").fetchall()
        evaluations = conn.execute("SELECT candidate_id, reward, kl, kl_coef, fitness, per_prompt FROM evaluations "
                                   "WHERE error IS NULL").fetchall()
    scored = [r for r in rows if r[2] == "scored"]
    assert len(rows) >= 3 and scored and any(r[1] == "dpo" for r in scored)
    for _, reward, kl, kl_coef, fitness, per_prompt in evaluations:
        ratings = [1 + 9 * v for v in json.loads(per_prompt)]
        assert all(abs(r - round(r)) < 1e-9 and 1 <= r <= 10 for r in ratings)
        assert reward == pytest.approx(sum(json.loads(per_prompt)) / len(ratings))
        assert fitness == pytest.approx(reward - kl_coef * kl)
    judge = json.loads(scored[0][4])["judge"]
    assert judge["model"] == "judge-model" and judge["requests"] + judge["cached"] == 4
    with sqlite3.connect(run_dir / "judge.sqlite") as conn:
        graded = conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
    assert 0 < graded <= len(server.requests)
    assert all(r["headers"]["authorization"] == f"Bearer {key}" for r in server.requests)
    for path in run_dir.rglob("*"):  # the key is in no file of the run
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_ready_made_imdb_and_tldr_configs_run_on_local_stand_ins(hub_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """task=imdb and task=tldr compose and validate as shipped (their hub ids cannot be fetched here), and
    the same code paths run when local stand-ins replace the hub ids: a 2-label sentiment classifier's
    POSITIVE logit as the reward, and a judge on a loopback server."""
    from openai_server import FakeOpenAIServer, completion
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from discopop.config.compose import resolve_run
    from discopop.fitness.judge import Judge
    from discopop.tasks.hub import RewardModelScorer

    imdb, _ = resolve_run(1, None, ["task=imdb"])
    tldr, _ = resolve_run(1, None, ["task=tldr"])
    assert imdb.task.reward_model == "lvwerra/distilbert-imdb" and imdb.task.reward_index == 1
    assert tldr.task.reward_model is None and tldr.task.judge.model == "gpt-4o-mini"
    save_tiny(tmp_path / "sentiment", *tiny_reward_model(ALPHABET, positions=64, num_labels=2))
    local = [f"task.model={hub_dir / 'policy'}", f"task.dataset={hub_dir / 'prefs'}", "task.prompt_column=question",
             "task.chosen_column=better", "task.rejected_column=worse", "task.heldout_prompts=8",
             f"task.cache_dir={tmp_path / 'cache'}"]
    imdb, _ = resolve_run(1, None, ["task=imdb", *local, f"task.reward_model={tmp_path / 'sentiment'}"])
    task = load_task(imdb.task)
    assert isinstance(task.reward, RewardModelScorer) and not task.judged and task.score_batch_size == 64
    prompts, texts = task.prompts("search"), [" good!", " bad.", " fine", " ok ok"]
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sentiment").eval()
    enc = AutoTokenizer.from_pretrained(tmp_path / "sentiment")([p + t for p, t in zip(prompts, texts, strict=True)],
                                                                return_tensors="pt", padding=True)
    with torch.no_grad():
        positive = classifier(**enc).logits[:, 1].tolist()
    assert task.rewards(prompts, texts) == pytest.approx(positive, abs=1e-5)
    server = FakeOpenAIServer().start()
    try:
        tldr, _ = resolve_run(1, None, ["task=tldr", *local, f"task.judge.base_url={server.url}",
                                        "task.judge.api_key_env=DISCOPOP_TEST_JUDGE_KEY"])
        task = load_task(tldr.task)
        assert task.judged and task.reward is None
        monkeypatch.setenv("DISCOPOP_TEST_JUDGE_KEY", "sk-local-stand-in-key")
        judge = Judge(asdict(tldr.task.judge), tmp_path / "judge.sqlite")
        server.push(completion("Faithful and short. [[8]]", prompt_tokens=1000, completion_tokens=100))
        grades = judge.grade(prompts[:1], [" a short summary"])
        assert grades.ratings == [8.0] and grades.usage["cost_usd"] == pytest.approx(0.00015 + 0.00006)
        assert server.bodies()[0]["model"] == "gpt-4o-mini"
        judge.close()
    finally:
        server.stop()
