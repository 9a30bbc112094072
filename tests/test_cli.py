"""End to end through the real console scripts: discover, resume, check, leaderboard, export, report."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import SMALL_RUN, command_env

from discopop.config import TrainingSettings

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], env_cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """A command as a user starts it (``command_env``: no switch an earlier in-process test left set)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=command_env(env_cache), cwd=REPO)


def run_at_once(commands: list[list[str]], env_cache: Path, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """``run`` of each command, all started together (each waits mostly on its own worker; a serial suite leaves a
    core idle): their results, in order."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: run(args, env_cache, timeout), commands))


def rows(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        return conn.execute("SELECT id, generation, name, status, fitness, parent_ids, proposer FROM candidates "
                            "ORDER BY id").fetchall()


def test_discover_end_to_end_then_inspect(tmp_path: Path, cache_dir: Path,
                                          discovered: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, out = discovered  # SMALL_RUN with a transfer to the held-out variant (tests/test_transfer_confirm.py)
    assert out.returncode == 0, out.stderr[-2000:]
    found = rows(run_dir)
    assert [r[2] for r in found[:2]] == ["dpo", "lrml"] and all(r[6] == "reference" for r in found[:2])
    evolved = [r for r in found if r[6] == "evolution"]
    assert [r[1] for r in evolved] == [1, 1, 2, 2]  # two workers: two proposals a generation
    assert all(r[3] in ("scored", "invalid", "duplicate", "train_failed", "eval_failed") for r in found)
    scored = [r for r in found if r[3] == "scored"]
    assert scored and all(0.0 <= r[4] <= 1.0 for r in scored)
    assert all(json.loads(r[5]) for r in evolved), "evolved candidates must record their parents"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "Leaderboard" in out.stdout
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        metrics = json.loads(conn.execute("SELECT metrics FROM candidates WHERE name='dpo'").fetchone()[0])
    assert len(metrics["confirmation"]["fitness"]) == 2
    with sqlite3.connect(run_dir / "archive.sqlite") as conn:
        confirmed = [json.loads(m)["confirmation"] for (m,) in conn.execute(
            "SELECT metrics FROM candidates WHERE proposer='evolution' AND metrics LIKE '%confirmation%'")]
        runs = conn.execute("SELECT candidate_id, seed, split, per_prompt FROM evaluations"
                            " WHERE error IS NULL").fetchall()
    assert confirmed, "the top candidate must be confirmed"
    for c in confirmed:  # each confirmed winner is compared in pairs with DPO and with the run's strongest baseline
        assert c["vs_dpo"]["baseline"] == "dpo" and c["vs_dpo"]["verdict"] in ("beats", "below", "within noise of")
        assert c["vs_best"] is None or c["vs_best"]["baseline"] == "lrml"
        assert c["vs_dpo"]["prompts"] == 33 and c["vs_dpo"]["seeds"] == 2
    assert {split for _, _, split, _ in runs} == {"search", "confirm", "transfer:hardflip"}
    assert all(len(json.loads(p)) == (32 if split == "search" else 33) for _, _, split, p in runs)

    board = run(["discopop", "leaderboard", str(run_dir)], cache_dir)
    assert board.returncode == 0 and "dpo" in board.stdout
    best = max(scored, key=lambda r: r[4])
    target = tmp_path / "best.py"
    exported = run(["discopop", "export", str(run_dir), str(best[0]), "-o", str(target)], cache_dir)
    assert exported.returncode == 0, exported.stderr
    checked = run(["discopop", "check", str(target), "--json"], cache_dir)
    assert checked.returncode == 0 and json.loads(checked.stdout)["valid"] is True
    assert f"candidate: #{best[0]}" in target.read_text()


# slow, as tests/test_faults.py, which kills, interrupts and resumes a run too (`pytest -m slow` runs both)
@pytest.mark.slow
def test_resume_after_kill_loses_and_repeats_nothing(tmp_path: Path, cache_dir: Path, tiny_task) -> None:
    """``tiny_task``: built beforehand, so the 240 s wait below times the run, not a first build."""
    run_dir = tmp_path / "run"
    args = ["discover", "--generations", "3", "--quiet", *SMALL_RUN, "confirm.seeds=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=REPO, env=command_env(cache_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill -9 once some, but not all, candidates are finished
        if (run_dir / "archive.sqlite").exists() and any(r[3] == "scored" for r in rows(run_dir)):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r[0]: r for r in rows(run_dir) if r[3] != "proposed"}
    assert before, "the run was killed before any candidate finished"
    out = run(["discover", "--resume", str(run_dir), "--generations", "3", "--quiet"], cache_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    after = rows(run_dir)
    assert all(after_row == before[after_row[0]] for after_row in after if after_row[0] in before)
    assert not [r for r in after if r[3] == "proposed"], "an interrupted candidate was left unfinished"
    names = [r[2] for r in after if r[6] == "reference"]
    assert sorted(names) == ["dpo", "lrml"], "a baseline was repeated or lost"
    assert {r[1] for r in after if r[6] == "evolution"} == {1, 2, 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--generations", "1", "task=nope"], "Could not find 'task/nope'"),
        (["--generations", "1", "training.no_such_key=1"], "training: unknown option 'no_such_key'"),
        (["--generations", "1", "training.epochs=abc"], "training.epochs: Value 'abc' of type 'str' could not be"),
        (["--generations", "1", "training.learning_rate=-1"], "training.learning_rate must be > 0"),
        (["--generations", "1", "training.lr_grid=[1e-5,-2]"], "training.lr_grid must be a non-empty list"),
        (["--generations", "1", "training.lr_screen_margin=-0.1"], "training.lr_screen_margin must be"),
        (["--resume", "/nonexistent/run"], "run directory not found"),
        (["--generations", "1", "hydra.run.dir=/dev/null/run"], "cannot write the run directory"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str, cache_dir: Path) -> None:
    out = run(["discover", *args], cache_dir, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path: Path, cache_dir: Path) -> None:
    out = run(["discover", "--resume", str(tmp_path)], cache_dir, timeout=60)
    assert out.returncode == 2 and "is not a discopop run directory" in out.stderr


def test_check_rejects_with_exit_1_and_the_layer(tmp_path: Path, cache_dir: Path) -> None:
    """A valid file's exit 0: ``test_check_prints_the_diagnostics_of_a_valid_loss`` (and the exported winner's check
    in ``test_discover_end_to_end_then_inspect``), each a whole check in a worker and an oracle, as it was here."""
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    out = run(["discopop", "check", str(bad)], cache_dir, timeout=60)
    assert out.returncode == 1 and "rejected by the static layer" in out.stderr and "syntax error" in out.stderr
    assert run(["discopop", "check", str(tmp_path / "missing.py")], cache_dir, timeout=60).returncode == 2


# What ``discopop check`` of a file the AST rejects runs, in a fresh interpreter: the command, then which heavy
# libraries it imported (none: torch alone costs ~3 CPU-s, for a verdict the static check gave already).
IMPORTED_BY_CHECK = """import sys
from discopop.cli.main import main
code = main(["check", sys.argv[1]])
print(code, *[name for name in ("torch", "transformers", "trl", "datasets") if name in sys.modules])
"""


def test_a_file_the_static_check_rejects_is_rejected_before_anything_imports_torch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef bad(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, "
                   "reference_rejected_logps, beta):\n    return os.system('true')\n")
    out = subprocess.run([sys.executable, "-c", IMPORTED_BY_CHECK, str(bad)], capture_output=True, text=True,
                         timeout=120, env=command_env(tmp_path), cwd=REPO)
    assert out.returncode == 0 and "rejected by the static layer" in out.stderr, out.stderr[-2000:]
    assert out.stdout.split() == ["1"], f"imported before the static verdict: {out.stdout.split()[1:]}"


# What ``discopop leaderboard RUN`` imports, in a fresh interpreter: the command, then which heavy libraries it loaded
# (none: reading an archive needs no torch, ~2 s of a ~3 s command before the board stopped importing the executors).
IMPORTED_BY_LEADERBOARD = """import sys
from discopop.cli.main import main
code = main(["leaderboard", sys.argv[1]])
print(code, *[name for name in ("torch", "transformers", "trl", "datasets") if name in sys.modules])
"""


def test_the_leaderboard_reads_a_run_without_importing_torch(
        discovered: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = discovered
    out = subprocess.run([sys.executable, "-c", IMPORTED_BY_LEADERBOARD, str(run_dir)], capture_output=True,
                         text=True, timeout=120, env=command_env(), cwd=REPO)
    assert out.returncode == 0 and "Leaderboard" in out.stdout, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "0", f"imported by the leaderboard: {out.stdout.splitlines()[-1]}"


def test_check_prints_the_diagnostics_of_a_valid_loss(tmp_path: Path, cache_dir: Path) -> None:
    """A loss pushing the wrong way at rho = 0 is valid (exit 0); its diagnostics say so, in text and JSON."""
    flipped = tmp_path / "flipped.py"
    flipped.write_text("import torch.nn.functional as F\n\n\ndef flipped(policy_chosen_logps, policy_rejected_logps, "
                       "reference_chosen_logps, reference_rejected_logps, beta):\n    rho = (policy_chosen_logps - "
                       "policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)\n"
                       "    return F.logsigmoid(beta * rho)\n")
    text, as_json = run_at_once([["discopop", "check", str(flipped), "--beta", "0.2"],
                                 ["discopop", "check", str(flipped), "--json"]], cache_dir, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "diagnostics: uses beta; at beta=0.2: slope at rho=0 d/d chosen +0.1, d/d rejected -0.1" in text.stdout
    assert "wrong way at rho = 0 on 16/16 examples" in text.stdout
    verdict = json.loads(as_json.stdout)
    assert verdict["valid"] is True and verdict["diagnostics"]["beta"] == TrainingSettings().beta
    assert verdict["diagnostics"]["slope_at_0"]["wrong_way"] == 16 and "wrong way" in verdict["summary"]
    bad_beta = run(["discopop", "check", str(flipped), "--beta", "-1"], cache_dir, timeout=60)
    assert bad_beta.returncode == 2 and bad_beta.stderr.strip().endswith("--beta must be a positive number, got -1.0")


def test_a_pasted_key_is_refused_and_never_saved(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    secret = "sk-THIS-IS-A-PASTED-KEY-1234"
    out = run(["discover", "--generations", "1", "proposer=openai", f"proposer.api_key_env={secret}",
               f"hydra.run.dir={run_dir}"], cache_dir, timeout=60)
    assert out.returncode == 2 and "api_key_env must be the NAME" in out.stderr
    assert secret not in out.stderr + out.stdout
    assert not run_dir.exists()


def built_tasks(cache: Path) -> list[Path]:
    """The task directories in ``cache`` (not its SFT stages)."""
    return [p for p in cache.iterdir() if (p / "meta.json").is_file() and "-sft-" not in p.name]


def test_same_config_and_seed_give_the_same_archive(discovered: tuple[Path, subprocess.CompletedProcess],
                                                     rebuilt: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    """Real workers, two proposals a generation trained side by side: whichever finishes first, the same archive
    (the loop's side of this, any finishing order, is in tests/test_loop.py). Run a is the session's shared run;
    run b (``rebuilt``: ``SMALL_RUN``, which differs from the shared run's only in what runs after the search)
    repeats its search on the same task built again in another process from the same SFT stage, training its
    references itself rather than reading the store, and stops there: the columns compared are the search's
    (confirmation and transfer, which come after, only add metrics)."""
    first, out = discovered
    assert out.returncode == 0, out.stderr[-2000:]
    _, second, out = rebuilt
    assert out.returncode == 0, out.stderr[-2000:]
    archives = []
    for run_dir in (first, second):
        with sqlite3.connect(run_dir / "archive.sqlite") as conn:
            archives.append(conn.execute("SELECT id, generation, parent_ids, name, code, status, fitness, error "
                                         "FROM candidates ORDER BY id").fetchall())
    assert archives[0] == archives[1]


def test_discover_prints_only_its_own_lines_and_logs_the_libraries(
        discovered: tuple[Path, subprocess.CompletedProcess],
        rebuilt: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    """A run that builds a task in its process (transformers warnings, dataset/shard progress bars): by default none
    of it reaches the console, all of it is in RUN_DIR/libraries.log; --verbose shows it. Quiet: the session's
    shared run (``--quiet``), which builds the held-out variant's task from the cached SFT stage (its first build
    in the session's cache; its workers, fine-tunes, confirmation and transfer print through the same console).
    Loud: ``rebuilt`` (``--verbose``), which builds the tiny task into a fresh cache holding only the SFT stage
    (the SFT is plain torch, silent, and most of a build's time): the rest of a build is its own."""
    run_dir, quiet = discovered
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "building task 'addition_hardflip'" in quiet.stdout, quiet.stdout[-2000:]  # a build in this process
    console = quiet.stdout + quiet.stderr
    for noise in ("[transformers]", "Warning", "it/s]", "examples/s]"):
        assert noise not in console, f"library output {noise!r} reached the console:\n{console[-2000:]}"
    assert (run_dir / "libraries.log").stat().st_size > 0
    cache, _, loud = rebuilt
    assert loud.returncode == 0, loud.stderr[-2000:]
    [loud_task] = built_tasks(cache)
    assert json.loads((loud_task / "meta.json").read_text())["sft_reused"] is True  # a build, without the SFT
    assert "it/s]" in loud.stdout + loud.stderr  # a first run of its task, with the libraries' own output
