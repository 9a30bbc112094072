"""The hostile corpus (``tests/hostile/``): every candidate is stopped by the layer ``EXPECTED.json``
names, within its time limit, and leaves nothing behind: no file written or deleted outside the
sandbox, no connection made to this machine, no process left running.

Each file may use two placeholders, replaced before checking: ``MARKER_PATH`` (a path of its own
under a pytest temporary directory: the file it tries to write, or the one it tries to delete,
which then exists beforehand) and ``MARKER_PORT`` (a port this test listens on). Each check's
sandboxed processes are tagged with a unique environment variable, so a stray process is found in
/proc even after it left its process group. Files the static check stops are run again with it
fooled. Each oracle is forked from one of two shared templates (the real oracle's, the fooled
one's), as a run's worker forks its candidates' oracles; a forked oracle keeps its template's
variable, so a stray of theirs is found too, for the corpus as a whole (the spawned oracle meets the
OS corpus, ``tests/test_hostile_os.py``, and every ``discopop check`` test). ``--oracle-start=spawn``
spawns them all. Files run two at a time, each thread's checks in one kept worker (``KeptWorkers``:
a worker start is mostly importing torch, and candidate code never runs in the worker), restarted
only after a check that killed it, as a run's warm workers are; the one-shot worker of ``discopop
check`` meets ``test_check_command_reports_the_layer`` and the self-interrupt test below,
``tests/test_sandbox.py``, ``tests/test_normalise.py`` and the ``discopop check`` tests of
``tests/test_cli.py``. EXPECTED.json may list ``needs``: OS layers of which at least one must be
active (the test is skipped, saying so, on a machine without them).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import command_env, startup_margin

from discopop.cli.check import CheckWorker, check_in_worker, check_source
from discopop.execution.executors import Job, WarmWorker, WorkerSpec
from discopop.sandbox import Limits, SandboxedProcess, oracle_supply
from discopop.sandbox.oracle_fork import OracleTemplate
from discopop.sandbox.oracle_supply import ORACLE_MODULE

HOSTILE = Path(__file__).resolve().parent / "hostile"
EXPECTED: dict[str, dict] = json.loads((HOSTILE / "EXPECTED.json").read_text())
FILES = sorted(p.name for p in HOSTILE.glob("*.py"))
LAYERS = {"static", "load", "numeric", "guard", "oracle", "sandbox"}
DEFAULT_TIMEOUT = 10.0  # seconds for the numeric checks of one file (EXPECTED.json may say less)
# A fresh worker imports torch before its checks start: 2-5 s here, more while other tests run.
STARTUP_MARGIN = startup_margin(30.0)
PARALLEL = 2
TOKEN_VAR = "DISCOPOP_TEST_TOKEN"
KEEP = "keep me"


@dataclass
class Outcome:
    verdict: dict
    seconds: float
    marker: Path
    token: str
    strays: list[int] = field(default_factory=list)
    static_verdict: dict | None = None  # for files the static check stops: that verdict (``verdict`` is deep)


def processes_tagged(token: str) -> list[int]:
    """Live processes whose environment carries ``token`` (inherited by every descendant)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def prepare(name: str, marker: Path, port: int) -> str:
    return (HOSTILE / name).read_text().replace("MARKER_PATH", str(marker)).replace("MARKER_PORT", str(port))


@pytest.fixture(scope="module")
def listener():
    """A TCP port on this machine that no candidate may reach."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


@dataclass
class SharedTemplate:
    """One oracle template for many checks of a corpus, as a run's worker forks all its candidates' oracles from
    one; ``template`` None where this session spawns oracles (``--oracle-start=spawn``).
    A forked process keeps the environment block its template started with, so ``token`` tags the forked oracles
    and anything they fork (what they exec carries each check's own token too); ``before`` is the template's own."""

    template: OracleTemplate | None
    token: str
    before: set[int] = field(default_factory=set)

    def strays(self) -> list[int]:
        """Processes tagged with the template's token that are not the template: left by a forked oracle."""
        return sorted(set(processes_tagged(self.token)) - self.before)


def shared_template(module: str, env: dict[str, str]) -> SharedTemplate:
    """A started, ready template of the oracle ``module``, or none where this session spawns oracles."""
    token = uuid.uuid4().hex
    if oracle_supply.DEFAULT_ORACLE_START != "fork":
        return SharedTemplate(None, token)
    template = OracleTemplate(Limits(), module, {**env, TOKEN_VAR: token})
    try:
        assert template.wait_ready(120), "the shared oracle template did not start"
    except BaseException:
        template.close()
        raise
    return SharedTemplate(template, token, set(processes_tagged(token)))


@dataclass
class WorkerUse:
    """One file's use of a kept worker: whether the check started it, and whether it was alive before and after."""

    started: bool
    alive_before: bool
    alive_after: bool


class KeptWorkers:
    """One kept ``CheckWorker`` per thread that checks files, all tagged with one token of their own (so a process
    they leave is found once they are closed); ``uses`` records each file's use of its worker."""

    def __init__(self, count: int):
        self.token = uuid.uuid4().hex
        self.workers = [CheckWorker(env={TOKEN_VAR: self.token}) for _ in range(count)]
        self._idle: queue.Queue[CheckWorker] = queue.Queue()
        for worker in self.workers:
            self._idle.put(worker)
        self.uses: dict[str, WorkerUse] = {}
        self.strays: list[int] = []

    @contextmanager
    def use(self, name: str) -> Iterator[CheckWorker]:
        """An idle worker for the checks of file ``name`` (one thread at a time uses it)."""
        worker = self._idle.get()
        starts, alive = worker.starts, worker.alive()
        try:
            yield worker
        finally:
            self.uses[name] = WorkerUse(worker.starts > starts, alive, worker.alive())
            self._idle.put(worker)

    @property
    def starts(self) -> int:
        return sum(w.starts for w in self.workers)

    def __enter__(self) -> KeptWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker, then look for any process still carrying their token."""
        for worker in self.workers:
            worker.close()
        self.strays = processes_tagged(self.token)

    def faults(self, layers: dict[str, str | None]) -> list[str]:
        """What went wrong in their use, given each file's verdict layer: a worker restarted while one was alive,
        one killed by a check whose verdict is not the sandbox's (only a timeout or a broken worker kills it), more
        starts than one per worker and one after each kill."""
        found = [f"{name}: restarted a live worker" for name, u in self.uses.items() if u.started and u.alive_before]
        killed = [name for name, u in self.uses.items() if (u.started or u.alive_before) and not u.alive_after]
        found += [f"{name}: its worker died at layer {layers[name]}" for name in killed if layers[name] != "sandbox"]
        if self.starts > len(self.workers) + len(killed):
            found.append(f"{self.starts} worker starts for {len(self.workers)} workers and {len(killed)} kills")
        return found


def deep_path() -> str:
    """The tests folder on the import path (the fooled oracles live there), before whatever PYTHONPATH holds."""
    tests_dir = str(Path(__file__).resolve().parent)
    return os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="module")
def templates() -> Iterator[dict[str, SharedTemplate]]:
    """The corpus's two templates: ``checked``, the real oracle (``check_source``), and ``deep``, the fooled one."""
    shared = {}
    try:
        shared["checked"] = shared_template(ORACLE_MODULE, {})
        shared["deep"] = shared_template("hostile_deep_oracle", {"PYTHONPATH": deep_path()})
        yield shared
    finally:
        for one in shared.values():
            if one.template is not None:
                one.template.close()


@pytest.fixture(scope="module")
def kept() -> Iterator[KeptWorkers]:
    """The corpus's kept workers, one per thread (the corpus closes them once it is done)."""
    with KeptWorkers(PARALLEL) as workers:
        yield workers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, listener, active_layers, templates, kept) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("hostile")
    assert "__" not in str(base) and "{" not in str(base), "the static check would refuse the marker path"
    port = listener.getsockname()[1]

    def run(name: str) -> Outcome:
        expected = EXPECTED[name]
        marker = base / name.removesuffix(".py")
        if expected.get("marker") == "present":
            marker.write_text(KEEP)
        token = uuid.uuid4().hex
        source = prepare(name, marker, port)
        timeout = expected.get("timeout", DEFAULT_TIMEOUT)
        with kept.use(name) as worker:
            started = time.perf_counter()
            static_verdict = check_source(source, timeout=timeout, env={TOKEN_VAR: token}, worker=worker) \
                if "static" in expected else None
            # Files the static check stops are also run with it fooled, so the layers below are tested too.
            verdict = deep_check(source, timeout, {TOKEN_VAR: token}, templates["deep"].template, worker) \
                if static_verdict else check_source(source, timeout=timeout, env={TOKEN_VAR: token},
                                                    template=templates["checked"].template, worker=worker)
            seconds = time.perf_counter() - started
        outcome = Outcome(verdict, seconds, marker, token)
        outcome.static_verdict = static_verdict
        return outcome

    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = dict(zip(FILES, pool.map(run, FILES), strict=True))
    kept.close()
    for outcome in outcomes.values():
        outcome.strays = processes_tagged(outcome.token)
    return outcomes


def deep_check(source: str, timeout: float, env: dict[str, str], template: OracleTemplate | None = None,
               worker: CheckWorker | None = None) -> dict:
    """``check_source`` minus the static check: the oracle loads the code as if the AST check had passed it
    (forked from ``template``, a ``hostile_deep_oracle`` one, if given; in the kept ``worker``, if given)."""
    return check_in_worker(source, timeout, env={**env, "PYTHONPATH": deep_path()}, oracle_module="hostile_deep_oracle",
                           template=template, worker=worker)


def test_corpus_is_complete() -> None:
    assert set(FILES) == set(EXPECTED), "every hostile file needs an EXPECTED.json entry, and vice versa"
    assert len(FILES) >= 32
    later = [f for f in FILES if EXPECTED[f]["layer"] != "static"]
    assert len(later) >= 8, "the OS layers need candidates that pass the static check"
    assert {e["layer"] for e in EXPECTED.values()} <= LAYERS


@pytest.mark.parametrize("name", FILES)
def test_hostile_candidate_is_stopped(name: str, corpus: dict[str, Outcome], active_layers: list[str]) -> None:
    expected, outcome = EXPECTED[name], corpus[name]
    needs = expected.get("needs")
    if needs and not set(needs) & set(active_layers):
        pytest.skip(f"needs one of {needs}; active here: {' '.join(active_layers)}")
    if "static" in expected:
        assert outcome.static_verdict["layer"] == "static", outcome.static_verdict
        assert expected["static"] in outcome.static_verdict["reason"], outcome.static_verdict
    verdict = outcome.verdict
    assert verdict["valid"] is False, verdict
    assert verdict["layer"] == expected["layer"], verdict
    assert expected["reason"] in verdict["reason"], verdict
    limit = 1.0 if expected["layer"] == "static" else expected.get("timeout", DEFAULT_TIMEOUT) + STARTUP_MARGIN
    assert outcome.seconds <= limit, f"took {outcome.seconds:.1f} s (limit {limit:.0f} s)"
    if expected.get("marker") == "present":
        assert outcome.marker.read_text() == KEEP, "the candidate changed or deleted a file outside the sandbox"
    else:
        assert not outcome.marker.exists(), "the candidate created a file outside the sandbox"
    assert not outcome.strays, f"processes left running: {outcome.strays}"


def test_no_oracle_forked_from_the_shared_templates_outlived_its_check(
        corpus: dict[str, Outcome], templates: dict[str, SharedTemplate]) -> None:
    deep = sum("static" in EXPECTED[n] for n in corpus)  # stopped by the static check, then checked with it fooled
    checked = sum("static" not in EXPECTED[n] and EXPECTED[n]["layer"] != "static" for n in corpus)
    for kind, forks in (("checked", checked), ("deep", deep)):
        shared = templates[kind]
        assert shared.template is None or shared.template.forks == forks, (kind, shared.template.forks)
        assert not shared.strays(), f"processes left running ({kind}): {shared.strays()}"


def test_the_kept_workers_served_many_checks_and_were_restarted_only_after_a_kill(
        corpus: dict[str, Outcome], kept: KeptWorkers) -> None:
    """One start per thread, and one more after each check that killed its worker (a timeout), at most."""
    assert not kept.faults({n: o.verdict["layer"] for n, o in corpus.items()})
    assert 1 <= kept.starts < len([n for n in corpus if EXPECTED[n]["layer"] != "static" or "static" in EXPECTED[n]])
    assert not kept.strays, f"processes left running (kept workers): {kept.strays}"


def test_no_candidate_reached_this_machine_over_tcp(corpus: dict[str, Outcome], listener: socket.socket) -> None:
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_corpus_figures(corpus: dict[str, Outcome], active_layers: list[str], capsys) -> None:
    """One line with the figures (printed even under -q)."""
    stopped = [n for n, o in corpus.items() if not o.verdict["valid"] and o.verdict["layer"] == EXPECTED[n]["layer"]]
    slowest = max(corpus, key=lambda n: corpus[n].seconds)
    later = [n for n in corpus if EXPECTED[n]["layer"] != "static"]
    with capsys.disabled():
        print(f"\nhostile candidates tried {len(corpus)} / stopped {len(stopped)} "
              f"({len(later)} past the static check); slowest rejection {corpus[slowest].seconds:.1f} s "
              f"({slowest}, incl. any worker start); layers: {' '.join(active_layers)}")
    assert len(stopped) == len(corpus)


@pytest.mark.parametrize(("name", "layer"), [("s_os_system.py", "static"), ("l_infinite_loop.py", "sandbox"),
                                             ("l_nan.py", "numeric")])
def test_check_command_reports_the_layer(name: str, layer: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / name
    path.write_text(prepare(name, marker, 9))
    out = subprocess.run([sys.executable, "-m", "discopop.cli.main", "check", str(path), "--json", "--timeout", "3"],
                         capture_output=True, text=True, timeout=120, env=command_env())
    assert out.returncode == 1, out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["valid"] is False and verdict["layer"] == layer and EXPECTED[name]["reason"] in verdict["reason"]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"rejected by the {layer} layer" in lines[0]
    assert not marker.exists()


PROBE = """import math
import torch
import torch.nn.functional as F


def probe(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    clean = torch.get_num_threads() == 1 and torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
    return -F.logsigmoid(beta * rho) * (1.0 if clean else math.nan)
"""


def test_warm_worker_is_clean_after_each_hostile_job(tmp_path: Path, monkeypatch) -> None:
    """The loop's path: one warm worker, hostile jobs in between; the next candidate sees pristine state.

    The oracle's static check is fooled (``hostile_deep_oracle``), as these payloads would not pass it.
    The candidate code runs in a fresh oracle per job, so the warm worker itself is never restarted.
    """
    tests_dir = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))
    worker = WarmWorker(WorkerSpec(task=None, training=None, check_timeout=20, oracle_module="hostile_deep_oracle"))

    def check(source: str):
        return worker.run(Job(0, source, "check"))

    try:
        state = check(prepare("l_global_torch_state.py", tmp_path / "m", 9))
        assert (state.ok, state.stage) == (False, "guard") and "num_threads 1 -> 3" in state.error
        assert check(PROBE).ok
        patched = check(prepare("l_monkeypatch_checks.py", tmp_path / "m", 9))
        assert (patched.ok, patched.stage) == (False, "guard") and "torch.isfinite" in patched.error
        assert check(PROBE).ok
        died = check(prepare("l_os_exit.py", tmp_path / "m", 9))
        assert not died.ok and "loss oracle died: exited with status 0" in died.error
        assert check(PROBE).ok and worker.starts == 1, "candidate code never reaches the worker"
    finally:
        worker.close()


FORKER = """import os, time
forks = 0
try:
    for _ in range(200):  # bounded even where no cgroup holds it
        if os.fork() == 0:
            os.setsid()  # leave the process group: only the cgroup still holds this one
            time.sleep(600)
            os._exit(0)
        forks += 1
    print(f"forked {forks}", flush=True)
except OSError as err:
    print(f"fork refused after {forks}: {err}", flush=True)
time.sleep(600)
"""


def test_fork_bomb_is_capped_and_every_process_dies(tmp_path: Path) -> None:
    """The pids cgroup, exercised directly (the runtime guard stops a candidate's fork long before)."""
    limits = Limits(max_processes=16, memory_mb=0)
    probe = SandboxedProcess("discopop.execution.worker", limits)
    probe.close()
    if "cgroup-pids" not in probe.layers:
        pytest.skip(f"no writable pids cgroup here (layers: {' '.join(probe.layers)})")
    (tmp_path / "forker.py").write_text(FORKER)
    token = uuid.uuid4().hex
    proc = SandboxedProcess("forker", limits, env={"PYTHONPATH": str(tmp_path), TOKEN_VAR: token})
    try:
        deadline = time.time() + 30
        while "fork" not in proc.output_tail() and time.time() < deadline:
            time.sleep(0.05)
        assert "fork refused after" in proc.output_tail(), proc.output_tail()
        assert 0 < len(processes_tagged(token)) <= 16
    finally:
        proc.kill()  # it never reads its requests: no polite exit to wait for
        proc.close()
    deadline = time.time() + 5
    while processes_tagged(token) and time.time() < deadline:
        time.sleep(0.05)
    assert not processes_tagged(token), "a process that left the process group survived"


def test_a_self_interrupt_is_the_candidates_error_even_where_the_run_ignores_sigint() -> None:
    """A run started with ``&`` from a shell without job control starts every child with SIGINT ignored, and then a
    candidate's ``interrupt_main`` did nothing: the check read it valid (a CI run launched that way saw the corpus
    change verdict). The oracle puts Python's handler back, so the verdict does not depend on how the run began."""
    tests_dir = str(Path(__file__).resolve().parent)
    script = textwrap.dedent(f"""
        import json, os, sys
        from discopop.cli.check import check_in_worker
        path = os.pathsep.join(p for p in ({tests_dir!r}, os.environ.get("PYTHONPATH", "")) if p)
        verdict = check_in_worker(sys.stdin.read(), 10.0, env={{"PYTHONPATH": path}},
                                  oracle_module="hostile_deep_oracle")
        print(json.dumps({{"valid": verdict["valid"], "reason": verdict["reason"]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], input=(HOSTILE / "l_keyboard_interrupt.py").read_text(),
                          capture_output=True, text=True, timeout=240,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.returncode == 0, done.stderr[-2000:]
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    assert verdict["valid"] is False and "KeyboardInterrupt" in verdict["reason"], verdict
