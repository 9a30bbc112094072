"""Faults injected into real ``discover`` runs (subprocesses, tiny task): the run survives or stops cleanly.

One scenario, three processes on one run directory, so the (slow) worker start-ups are paid as
few times as possible. Candidates come from the loopback OpenAI server (``openai_server.py``):

* run 1: baseline DPO; gen 1 ``stall_a`` hangs in training (it only loops when its inputs carry a
  graph, as in training, never in the checks) -> a second ``discover`` on the same directory is
  refused, then the worker is SIGKILLed -> ``train_failed``, the run goes on; gen 2 ``nan_late``
  is finite in the checks and NaN in training -> ``train_failed`` "non-finite loss at step 1";
  gen 3 ``stall_b`` hangs -> SIGINT -> exit 130 within seconds;
* run 2 (``--resume``): while ``stall_b`` runs again, the run directory's file system (a small
  tmpfs) is filled -> the archive write fails -> one clear line, exit 2, archive consistent;
* run 3 (``--resume --generations 4``, space freed): ``stall_b`` times out -> ``train_failed``; gen 3
  (interrupted, its proposal archived) is not proposed again; gen 4 ``good`` is scored; nothing
  finished earlier is lost or repeated.

Where tmpfs cannot be mounted (not root), run 2 is skipped and its test says so. A run directory
turning read-only is not simulated: as root ``chmod`` does not bind, ``mount -o remount,ro`` is
refused while the archive has files open for writing, and a read-only bind mount on top does not
affect descriptors already open. It would fail through the same path as the full disk (SQLite
error -> ``ArchiveError`` -> one line, exit 2).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_RUN, command_env
from openai_server import FakeOpenAIServer, completion

# slow (~95 s on 2 idle cores, the suite's longest set-up): three `discover` processes, two stalls and a 15 s
# timeout. Not in the default suite; `pytest -m slow` runs it with the other long end-to-end tests
# (README "Quickstart", benchmarks/README.md).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SIG = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
RHO = "rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)"
# Each loss scales beta differently: equal values on the probe inputs would make it a duplicate of DPO.
# Training batches hold at most TRAIN_BATCH pairs, fewer than any numeric check uses (16, 25, 70, 401),
# so the batch size tells checks and training apart with nothing but allow-listed arithmetic.
TRAIN_BATCH = 12
STALL = f"""import torch.nn.functional as F


def {{name}}({SIG}):
    {RHO}
    for _ in range(10 ** 12 if policy_chosen_logps.shape[0] <= {TRAIN_BATCH} else 0):
        pass
    return -F.logsigmoid({{scale}} * beta * rho)
"""
NAN_LATE = f"""import math
import torch.nn.functional as F


def nan_late({SIG}):
    {RHO}
    return -F.logsigmoid(1.2 * beta * rho) + (math.nan if policy_chosen_logps.shape[0] <= {TRAIN_BATCH} else 0.0)
"""
GOOD = f"""import torch.nn.functional as F


def good({SIG}):
    {RHO}
    return -F.logsigmoid(beta * rho) + 0.1 * (beta * rho) ** 2  # not a rescaled DPO: that is a duplicate
"""
# seconds: run 1 kills / interrupts its stalls long before this; a bound only, so generous: at 60 s a machine at
# load 15 on 2 cores timed stall_b out before its oracle had spun the CPU seconds that show it training
RUN1_TRAIN_TIMEOUT = 180
# seconds, for the resumed runs: bounds the re-run of the interrupted stall. Run 2 must see that stall train
# (ORACLE_START_CPU + 1 s of oracle CPU) before the timeout; at 6 s a loaded 2-core machine (a benchmark
# beside the suite) gave the oracle too little CPU and run 2 ended first.
TRAIN_TIMEOUT = 15
ORACLE_START_CPU = 2.0  # CPU seconds an oracle spends importing torch and checking, with room to spare
STOP_WITHIN = 10.0  # seconds from SIGINT to exit


def answer(name: str, code: str) -> Any:
    return completion(json.dumps({"thought": f"fault test: {name}", "name": name, "code": code}))


def rows(run_dir: Path) -> dict[int, tuple]:
    if not (run_dir / "archive.sqlite").is_file():  # connecting would create it
        return {}
    with sqlite3.connect(run_dir / "archive.sqlite", timeout=30) as conn:
        found = conn.execute("SELECT id, generation, name, status, error, fitness, proposer, finished_at "
                             "FROM candidates ORDER BY id").fetchall()
    return {r[0]: r for r in found}


def finished(run_dir: Path) -> dict[int, tuple]:
    return {i: r for i, r in rows(run_dir).items() if r[3] != "proposed"}


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def worker_pids(root: int, module: bytes = b"discopop.execution.worker") -> list[int]:
    """``module`` processes (the worker, or loss oracles) descended from ``root`` (found through /proc, no psutil)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))):
            parents[int(name)] = int(fields[1])
    found = []
    for pid in parents:
        chain, p = [], pid
        while p in parents and p not in (0, 1) and len(chain) < 50:
            chain.append(p)
            p = parents[p]
        if root in chain[1:] or p == root:
            try:
                if module in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
    return found


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def wait_until(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def busy_worker(proc: subprocess.Popen, ready, what: str, busy: float = 2.0) -> int:
    """The worker of ``proc``, once ``ready()`` holds and the stalling loss has spun for about ``busy`` s.

    ``ready`` must mean "the worker is warm and the stalling candidate is next". The stall spins in
    its loss oracle (candidate code runs nowhere else) while the worker waits: an oracle costs
    about 1 s of CPU to start and its checks well under one more, so ``ORACLE_START_CPU + busy``
    s of CPU in one oracle means the stall is training.
    """
    wait_until(lambda: ready() or proc.poll() is not None, 180, what)
    assert proc.poll() is None, f"discover ended early ({what})"
    pid = wait_until(lambda: (worker_pids(proc.pid) or [None])[0], 60, "the worker process")
    spinning = lambda: any(cpu_seconds(o) >= ORACLE_START_CPU + busy  # noqa: E731
                           for o in worker_pids(proc.pid, b"discopop.sandbox.oracle"))
    wait_until(lambda: spinning() or proc.poll() is not None, 120, f"{what}: training")
    assert proc.poll() is None, f"discover ended early ({what})"
    return pid


def has_row(run_dir: Path, name: str):
    return lambda: any(r[2] == name for r in rows(run_dir).values())


def fill(path: Path) -> None:
    """Fill the file system holding ``path`` to the last byte (unbuffered: nothing left to flush)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


@dataclass
class Scenario:
    run_dir: Path
    tmpfs: bool
    outputs: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    killed: int | None = None
    before_interrupt: dict[int, tuple] = field(default_factory=dict)
    before_disk_full: dict[int, tuple] = field(default_factory=dict)
    after_disk_full: dict[int, tuple] = field(default_factory=dict)
    integrity: str = ""
    final: dict[int, tuple] = field(default_factory=dict)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, cache_dir, tiny_task) -> Iterator[Scenario]:
    # tiny_task: the task is built before run 1 starts (its waits time the run, not a first build: run first, as
    # under `pytest -m slow`, run 1 would otherwise build it inside a 180 s wait)
    base = tmp_path_factory.mktemp("faults")
    mnt = base / "mnt"
    tmpfs = _mount_tmpfs(mnt, "8m")
    run_dir = mnt / "run"
    server = FakeOpenAIServer(answer_probes=True).start()  # each start's pre-flight probe takes no script
    server.push(answer("stall_a", STALL.format(name="stall_a", scale=1.1)), answer("nan_late", NAN_LATE),
                answer("stall_b", STALL.format(name="stall_b", scale=1.3)), answer("good", GOOD))
    env = command_env(cache_dir, no_proxy=True, PYTHONUNBUFFERED="1")
    keep = [o for o in SMALL_RUN if not o.startswith(("baselines=", "confirm."))]
    overrides = [*keep, "baselines=[dpo]", "confirm.seeds=0", "proposer=openai", f"proposer.base_url={server.url}",
                 "proposer.model=test-model", "proposer.api_key_env=DISCOPOP_FAULT_TEST_NO_KEY",
                 "proposer.max_repairs=0", "proposer.max_retries=0", f"training.batch_size={TRAIN_BATCH}",
                 "executor.workers=1", "proposer.lookahead=0",  # lock step: the stalls are hit in order
                 f"training.train_timeout={RUN1_TRAIN_TIMEOUT}", f"training.oracle_timeout={RUN1_TRAIN_TIMEOUT}",
                 f"hydra.run.dir={run_dir}"]
    resumed = [f"training.train_timeout={TRAIN_TIMEOUT}"]
    sc = Scenario(run_dir, tmpfs)

    def start(tag: str, args: list[str]) -> subprocess.Popen:
        out, err = open(base / f"{tag}.out", "w"), open(base / f"{tag}.err", "w")  # noqa: SIM115
        proc = subprocess.Popen(["discover", "--quiet", *args], cwd=REPO, env=env, stdout=out, stderr=err,
                                start_new_session=True)
        proc.tag = tag  # type: ignore[attr-defined]
        out.close()
        err.close()
        return proc

    def finish(proc: subprocess.Popen, timeout: float = 300) -> None:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        tag = proc.tag  # type: ignore[attr-defined]
        sc.outputs[tag] = (code, (base / f"{tag}.out").read_text(), (base / f"{tag}.err").read_text())

    procs: list[subprocess.Popen] = []
    try:
        # -- run 1: kill, a second process, NaN, Ctrl-C
        run1 = start("run1", ["--generations", "3", *overrides])
        procs.append(run1)
        worker = busy_worker(run1, has_row(run_dir, "stall_a"), "stall_a")
        second = start("second", ["--resume", str(run_dir), "--generations", "3"])
        procs.append(second)
        finish(second, timeout=120)
        os.kill(worker, signal.SIGKILL)
        sc.killed = worker
        busy_worker(run1, has_row(run_dir, "stall_b"), "stall_b")
        sc.before_interrupt = finished(run_dir)
        interrupted = time.perf_counter()
        run1.send_signal(signal.SIGINT)
        finish(run1, timeout=60)
        sc.seconds["interrupt"] = time.perf_counter() - interrupted
        # -- run 2: the disk fills while stall_b runs again
        if tmpfs:
            sc.before_disk_full = finished(run_dir)
            run2 = start("run2", ["--resume", str(run_dir), "--generations", "3", *resumed])
            procs.append(run2)
            busy_worker(run2, lambda: "re-running" in (base / "run2.out").read_text(), "stall_b again", busy=1.0)
            fill(mnt / "filler")
            finish(run2)
            sc.after_disk_full = finished(run_dir)
            (mnt / "filler").unlink()
            with sqlite3.connect(run_dir / "archive.sqlite") as conn:
                sc.integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        # -- run 3: resume to the end
        run3 = start("run3", ["--resume", str(run_dir), "--generations", "4", *resumed])
        procs.append(run3)
        finish(run3)
        sc.final = rows(run_dir)
        yield sc
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        server.stop()
        if tmpfs:
            _umount(mnt)


def by_name(table: dict[int, tuple], name: str) -> list[tuple]:
    return [r for r in table.values() if r[2] == name]


def test_killed_worker_is_recorded_and_the_run_goes_on(scenario: Scenario) -> None:
    [row] = by_name(scenario.final, "stall_a")
    assert row[3] == "train_failed" and "worker died with SIGKILL" in row[4], row
    assert scenario.killed is not None and not Path(f"/proc/{scenario.killed}").exists()
    assert by_name(scenario.before_interrupt, "nan_late"), "the run did not go on after the kill"


def test_nan_during_training_is_train_failed(scenario: Scenario) -> None:
    [row] = by_name(scenario.final, "nan_late")
    assert row[3] == "train_failed" and row[4] == "non-finite loss at step 1", row


def test_second_discover_on_the_same_run_is_refused(scenario: Scenario) -> None:
    code, _, err = scenario.outputs["second"]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "another discover process is already running" in lines[0]


def test_ctrl_c_stops_quickly_and_resume_loses_and_repeats_nothing(scenario: Scenario) -> None:
    code, out, err = scenario.outputs["run1"]
    assert code == 130, err[-2000:]
    assert scenario.seconds["interrupt"] <= STOP_WITHIN, f"took {scenario.seconds['interrupt']:.1f} s to stop"
    assert "interrupted; continue with: discover --resume" in out
    assert "Traceback" not in err, err[-2000:]
    code, _, err = scenario.outputs["run3"]
    assert code == 0, err[-2000:]
    final = scenario.final
    for row_id, row in scenario.before_interrupt.items():
        assert final[row_id] == row, "a finished candidate changed on resume"
    assert not [r for r in final.values() if r[3] == "proposed"], "a candidate was left unfinished"
    assert [r[2] for r in final.values() if r[6] == "reference"] == ["dpo"], "a baseline was repeated"
    [stall_b] = by_name(final, "stall_b")
    assert stall_b[3] == "train_failed" and f"train timed out after {TRAIN_TIMEOUT} s" in stall_b[4]
    assert [r[2] for r in final.values() if r[1] == 3] == ["stall_b"], "generation 3 was proposed again"
    [good] = by_name(final, "good")
    assert good[3] == "scored" and good[1] == 4, "the resumed run did not go on to generation 4"


def test_full_disk_is_one_clear_line_and_the_archive_stays_consistent(scenario: Scenario) -> None:
    if not scenario.tmpfs:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk fault was not injected")
    code, _, err = scenario.outputs["run2"]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert "disk is full" in lines[0] and "--resume" in lines[0], lines[0]
    assert scenario.integrity == "ok"
    assert scenario.after_disk_full == scenario.before_disk_full, "the failed write changed finished rows"


def test_fault_figures(scenario: Scenario, capsys) -> None:
    """One line with the figures (printed even under -q)."""
    final = scenario.final
    survived = {
        "worker SIGKILL": by_name(final, "stall_a")[0][3] == "train_failed" and bool(by_name(final, "nan_late")),
        "NaN in training": by_name(final, "nan_late")[0][3] == "train_failed",
        "second process": scenario.outputs["second"][0] == 2,
        "SIGINT + resume": scenario.outputs["run1"][0] == 130 and scenario.outputs["run3"][0] == 0,
    }
    if scenario.tmpfs:
        survived["disk full"] = scenario.outputs["run2"][0] == 2 and scenario.integrity == "ok"
    with capsys.disabled():
        print(f"\nfaults injected {len(survived)} / survived {sum(survived.values())} "
              f"({', '.join(k for k, v in survived.items() if v)}); "
              f"SIGINT to exit {scenario.seconds['interrupt']:.1f} s")
    assert all(survived.values()), survived
