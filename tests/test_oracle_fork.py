"""Oracles forked from the template (``executor.oracle_start=fork``, ``sandbox/oracle_fork.py``): each child is
its own process (session, work dir, descriptors, output pipe, cgroups), answers exactly as a spawned oracle does,
is killed and reaped through a pidfd with the exit reasons a spawned one gets, and a broken template falls back to
spawning with one line. Forking is the default (``executor.oracle_start``); ``pytest --oracle-start=spawn|fork`` runs
the hostile corpora either way (the OS corpus spawns unless told)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from discopop.config import ExecutorSettings
from discopop.config.compose import compose_settings
from discopop.config.training import ORACLE_STARTS
from discopop.sandbox import Limits, oracle_fork, oracle_supply, oracle_template
from discopop.sandbox.oracle_supply import OracleProcess, OracleSupply
from discopop.sandbox.remote_loss import OracleLink
from discopop.search.loop import worker_spec

LOSS = '''
import torch
import torch.nn.functional as F

def noisy(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin) + 1e-3 * torch.rand_like(margin)
'''


@pytest.fixture(scope="module")
def forks() -> Iterator[OracleSupply]:
    supply = OracleSupply(Limits(), start="fork", standby=1)
    yield supply
    supply.close()


def wait_gone(pid: int, seconds: float = 60.0) -> bool:
    """Whether ``pid`` is gone (or a zombie) within ``seconds`` (a deadline for an event, not a timing check)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return {k: fields.get(k, "") for k in ("Threads", "NoNewPrivs", "Seccomp", "CapEff", "CapBnd")}


def answers(oracle: OracleProcess) -> bytes:
    link = OracleLink(oracle.sock, call_timeout=60.0)
    link.load(LOSS)
    torch.manual_seed(0)
    inputs = tuple(-torch.rand(8, dtype=torch.float32) for _ in range(4))
    _, out, _ = link.forward(inputs, 0.1)
    return out.detach().numpy().tobytes()


def test_a_forked_oracle_answers_bit_for_bit_as_a_spawned_one(forks: OracleSupply) -> None:
    forked = forks.take()
    spawned = OracleSupply(Limits(), start="spawn", standby=1)
    plain = spawned.take(refill=False)
    try:
        assert forked.forked and not plain.forked
        assert answers(forked) == answers(plain)  # rand_like: the RNG re-seeded at LOAD in both
        # The same child-side layers as a spawned oracle (seccomp, no-new-privs, capabilities). Threads may differ:
        # a spawned oracle has numpy's OpenBLAS pool thread (started at import), a forked one has none.
        mine, theirs = status_fields(forked.proc.proc.pid), status_fields(plain.proc.proc.pid)
        assert mine.pop("Threads") == "1"
        theirs.pop("Threads")
        assert mine == theirs and mine["Seccomp"] == "2" and mine["NoNewPrivs"] == "1"
    finally:
        forked.close()
        plain.close()
        spawned.close()


def test_each_child_has_its_own_session_workdir_descriptors_output_and_cgroups(forks: OracleSupply) -> None:
    one, two = forks.take(), forks.take()
    template = forks._template.proc.proc.pid
    try:
        pids = [one.proc.proc.pid, two.proc.proc.pid]
        assert all(Path(f"/proc/{pid}/status").read_text().count(f"PPid:\t{template}") for pid in pids)
        for oracle, pid in zip((one, two), pids, strict=True):
            assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # its own session and group
            assert os.readlink(f"/proc/{pid}/cwd") == str(oracle.proc.workdir.resolve())
            fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            # stdin /dev/null, stdout+stderr its own pipe, one socket (its oracle's): nothing of the template's.
            assert fds[0] == "/dev/null" and fds[1] == fds[2] and fds[1].startswith("pipe:")
            assert sorted(fds) == [0, 1, 2, 3] and fds[3].startswith("socket:")
        assert os.getsid(template) not in pids
        assert os.readlink(f"/proc/{pids[0]}/fd/1") != os.readlink(f"/proc/{pids[1]}/fd/1")
        assert os.readlink(f"/proc/{pids[0]}/fd/1") != os.readlink(f"/proc/{template}/fd/1")
        assert one.proc.workdir != two.proc.workdir
        groups = [set(Path(f"/proc/{pid}/cgroup").read_text().splitlines()) for pid in (*pids, template)]
        for layer in ("cgroup-pids", "cgroup-memory"):
            controller = layer.removeprefix("cgroup-")
            if layer in forks._template.proc.layers:  # this machine delegates it: each child must have its own
                assert layer in one.proc.layers and layer in two.proc.layers
                mine = [next(g for g in lines if f":{controller}:" in g) for lines in groups]
                assert len(set(mine)) == 3, mine
            assert (layer in one.proc.layers) == (layer not in one.proc.missing_layers())
    finally:
        one.close()
        two.close()
    assert wait_gone(pids[0], 5) and wait_gone(pids[1], 5)
    assert not one.proc.workdir.exists()


def test_the_template_stays_single_threaded_and_refuses_to_fork_otherwise(forks: OracleSupply) -> None:
    forks.take().close()
    assert len(os.listdir(f"/proc/{forks._template.proc.proc.pid}/task")) == 1
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:  # in this (multi-threaded) process the fork request is refused before any fork
        reply = oracle_template._fork(None, {"env": {}, "workdir": "/"}, [0, 1, 2])  # type: ignore[arg-type]
    finally:
        stop.set()
        helper.join()
    assert "error" in reply and "threads" in reply["error"] and "pid" not in reply


def test_kills_and_exit_reasons_read_as_for_a_spawned_oracle(forks: OracleSupply) -> None:
    reasons = {}
    for kind, supply in (("fork", forks), ("spawn", OracleSupply(Limits(), start="spawn", standby=1))):
        killed, hung_up = supply.take(refill=kind == "fork"), supply.take(refill=False)
        os.kill(killed.proc.proc.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        hung_up.sock.close()  # its serve loop ends: a clean exit
        hung_up.sock = None
        reasons[kind] = (killed.close(grace=30.0), hung_up.close(grace=30.0))
        assert not killed.proc.alive() and killed.proc.proc.returncode == -signal.SIGKILL
        if kind == "spawn":
            supply.close()
    assert reasons["fork"] == reasons["spawn"]
    assert "SIGKILL" in reasons["fork"][0] and "status 0" in reasons["fork"][1]


FLOOD = '''
import torch
import torch.nn.functional as F

def flood(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    torch.sys.stdout.write("x" * 3000000)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
'''


def test_the_output_cap_is_per_child() -> None:
    """A child writing more than its cap is killed; the template and another child are not (the static check is
    fooled, as in the hostile corpus, so the write runs)."""
    tests_dir = str(Path(__file__).resolve().parent)
    capped = OracleSupply(Limits(output_mb=1), module="hostile_deep_oracle", env={"PYTHONPATH": tests_dir},
                          start="fork", standby=1)
    try:
        flood, bystander = capped.take(), capped.take(refill=False)
        assert flood.forked and bystander.forked
        link = OracleLink(flood.sock, call_timeout=60.0)
        link.load(FLOOD)
        with pytest.raises(Exception):  # noqa: B017, PT011 - the channel breaks as the flood is killed
            link.forward(tuple(-torch.rand(4) for _ in range(4)), 0.1)
        assert wait_gone(flood.proc.proc.pid, 30)
        assert flood.close().startswith("output limit")
        assert bystander.proc.alive() and capped._template.alive()
        assert answers(bystander)
        bystander.close()
    finally:
        capped.close()


def test_a_dead_template_means_one_line_and_spawned_oracles(forks: OracleSupply) -> None:
    supply = OracleSupply(Limits(), start="fork", standby=1)
    try:
        child = supply.take(refill=False)
        template = supply._template.proc.proc.pid
        os.kill(template, signal.SIGKILL)
        assert wait_gone(child.proc.proc.pid, 30)  # its parent-death signal
        assert "SIGKILL" in child.close()
        with pytest.warns(RuntimeWarning, match="oracle template failed") as caught:
            fresh = supply.take(refill=False)
        assert len(caught) == 1 and "\n" not in str(caught[0].message)
        assert not fresh.forked and answers(fresh)
        assert supply.fallback
        fresh.close()
    finally:
        supply.close()


def test_a_template_that_cannot_start_falls_back(monkeypatch) -> None:
    monkeypatch.setattr(oracle_fork, "TEMPLATE_MODULE", "discopop.sandbox.no_such_template")
    supply = OracleSupply(Limits(), start="fork", standby=1)
    try:
        with pytest.warns(RuntimeWarning, match="oracle template failed"):
            oracle = supply.take(refill=False)
        assert not oracle.forked and answers(oracle)
        oracle.close()
    finally:
        supply.close()


def test_the_template_and_its_children_die_with_their_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from discopop.sandbox import Limits\n"
        "from discopop.sandbox.oracle_supply import OracleSupply\n"
        "s = OracleSupply(Limits(), start='fork', standby=1)\n"
        "o = s.take(refill=False)\n"
        "print(s._template.proc.proc.pid, o.proc.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        template, child = (int(x) for x in parent.stdout.readline().split())
        assert not wait_gone(template, 0.5) and not wait_gone(child, 0.5)
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone(template) and wait_gone(child)


def test_the_setting_reaches_the_worker_and_is_checked() -> None:
    cfg, _ = compose_settings(["task=diagnostic", "executor.oracle_start=spawn"])
    assert worker_spec(cfg).oracle_start == "spawn"
    default, _ = compose_settings(["task=diagnostic"])
    assert default.executor.oracle_start == "fork" and worker_spec(default).oracle_start == "fork"
    bad, _ = compose_settings(["task=diagnostic", "executor.oracle_start=forks"])
    with pytest.raises(Exception, match="executor.oracle_start"):
        bad.executor.check()
    with pytest.raises(ValueError, match="oracle start"):
        OracleSupply(Limits(), start="forks")


def test_callers_not_told_start_oracles_as_the_setting_does(request) -> None:
    """``oracle_supply.DEFAULT_ORACLE_START`` (``check_in_worker``, a ``WorkerSpec`` without the run's setting) is
    ``executor.oracle_start``'s default, read from the settings, unless this session flipped it (``--oracle-start``)."""
    flipped = request.config.getoption("--oracle-start")
    assert oracle_supply.DEFAULT_ORACLE_START == (flipped or ExecutorSettings().oracle_start)
    assert oracle_supply.DEFAULT_ORACLE_START in ORACLE_STARTS


def test_a_child_that_cannot_get_its_own_cgroups_is_not_used(monkeypatch) -> None:
    """Where the template has cgroups, a child left in them would share their caps with its siblings: refused."""
    supply = OracleSupply(Limits(), start="fork", standby=1)
    try:
        supply.prespawn()
        supply._ready_template(block=True)
        if not any(layer.startswith("cgroup-") for layer in supply._template.proc.layers):
            pytest.skip("this machine gives no cgroups: children and template have none alike")
        monkeypatch.setattr(oracle_fork, "make_cgroups", lambda limits: [])
        with pytest.warns(RuntimeWarning, match="could not get its own cgroup"):
            oracle = supply.take(refill=False)
        assert not oracle.forked and answers(oracle)
        oracle.close()
    finally:
        supply.close()
