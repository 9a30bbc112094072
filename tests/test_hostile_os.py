"""The OS corpus (``tests/hostile/os/``): code that got past every Python-level layer (``hostile_bare_oracle``:
no static check, full builtins, no audit guard) runs in a sandboxed loss oracle, and the OS layers alone
keep every secret and every host resource out of its reach and leave nothing behind.

The test plants fake secrets in its own environment, a file and two listening unix sockets (one
pathname, one abstract) that a candidate could reach, and checks afterwards: no secret in any
verdict, every string cleaned and capped, no file written outside, nothing received on a socket,
no process left, the work dir gone. Placeholders in the files: ``MARKER_PATH`` (a path under this
test's temporary dir, which is under /tmp), ``MARKER_DIR`` (a directory outside /tmp holding
``keep``), ``MARKER_SOCKET`` (a pathname socket in it), ``MARKER_NAME`` (a unique name),
``MARKER_PROJECT`` (a directory on the worker's import path with a module and a ``.env``).
The files run two at a time, each thread's checks in one kept worker (``test_hostile.KeptWorkers``: candidate code
runs in the oracle only, which is spawned per check here).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import unicodedata
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import startup_margin
from test_hostile import TOKEN_VAR, KeptWorkers, processes_tagged

from discopop.cli.check import check_in_worker
from discopop.sandbox import TEXT_LIMIT, Limits, clean_reply, clean_text, remove_tree, sandbox_env
from discopop.sandbox.boundary import LONG_TEXT_LIMITS

CORPUS = Path(__file__).resolve().parent / "hostile" / "os"
EXPECTED: dict[str, dict] = json.loads((CORPUS / "EXPECTED.json").read_text())
FILES = sorted(p.name for p in CORPUS.glob("*.py"))
DEFAULT_TIMEOUT = 20.0
STARTUP_MARGIN = startup_margin(30.0)
KEEP = "keep me"
# Fake secrets set in this process's environment while the corpus runs; none may reach a worker.
SECRET_NAMES = ("OPENAI_API_KEY", "HF_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD",
                "DISCOPOP_SANDBOX_API_KEY")


@dataclass
class Outcome:
    verdict: dict
    seconds: float
    marker: Path
    outside: Path
    name: str
    received: list[bytes]
    strays: list[int]


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    values = {name: f"fake-{name.lower()}-{uuid.uuid4().hex[:12]}" for name in SECRET_NAMES}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    yield values
    for name, old in saved.items():
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def listen_unix(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(4)
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    """Whatever a candidate managed to send (nothing, if the layers hold)."""
    got = []
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return got
        conn.settimeout(1.0)
        try:
            got.append(conn.recv(1 << 20))
        finally:
            conn.close()


@pytest.fixture(scope="module")
def kept(secrets) -> Iterator[KeptWorkers]:
    """The corpus's kept workers, one per thread, started once the fake secrets are set (the corpus closes them)."""
    with KeptWorkers(2) as workers:
        yield workers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, secrets, active_layers, request, kept) -> dict[str, Outcome]:
    # Runs fork loss oracles from a template by default; this corpus keeps the spawned oracle (``oracle_start=spawn``
    # and the template's fallback) under the OS layers in the default suite. ``--oracle-start`` chooses either.
    start = request.config.getoption("--oracle-start") or "spawn"
    base = tmp_path_factory.mktemp("hostile-os")
    tests_dir = str(Path(__file__).resolve().parent)
    # Outside /tmp, so the private /tmp does not hide it: only Landlock and seccomp stand in the way.
    outside_root = Path(tempfile.mkdtemp(prefix="discopop-os-", dir="/var/tmp"))
    # A project directory on every worker's import path: a module to import, a secret beside it.
    project = outside_root / "project"
    project.mkdir()
    (project / "discopop_os_project.py").write_text('VALUE = "imported"\n')
    (project / ".env").write_text(f"OPENAI_API_KEY={secrets['OPENAI_API_KEY']}\n")
    import_path = os.pathsep.join((tests_dir, str(project)))

    def run(file: str) -> Outcome:
        stem = file.removesuffix(".py")
        marker, outside = base / stem, outside_root / stem
        outside.mkdir()
        (outside / "keep").write_text(KEEP)
        name = f"discopop-os-{stem}-{uuid.uuid4().hex[:8]}"
        sockets = [listen_unix(str(outside / "host.sock")), listen_unix("\0" + name)]
        source = (CORPUS / file).read_text()
        for key, value in (("MARKER_PATH", str(marker)), ("MARKER_DIR", str(outside)),
                           ("MARKER_SOCKET", str(outside / "host.sock")), ("MARKER_NAME", name),
                           ("MARKER_PROJECT", str(project))):
            source = source.replace(key, value)
        token = uuid.uuid4().hex
        try:
            with kept.use(file) as worker:
                started = time.perf_counter()
                verdict = check_in_worker(source, EXPECTED[file].get("timeout", DEFAULT_TIMEOUT),
                                          env={TOKEN_VAR: token, "PYTHONPATH": import_path},
                                          oracle_module="hostile_bare_oracle", oracle_start=start, worker=worker)
                seconds = time.perf_counter() - started
            received = [data for sock in sockets for data in drain(sock)]
        finally:
            for sock in sockets:
                sock.close()
        return Outcome(verdict, seconds, marker, outside, name, received, processes_tagged(token))

    try:
        with ThreadPoolExecutor(2) as pool:
            outcomes = dict(zip(FILES, pool.map(run, FILES), strict=True))
        kept.close()
        yield outcomes
    finally:
        remove_tree(outside_root)


def test_corpus_is_complete() -> None:
    assert set(FILES) == set(EXPECTED), "every file in tests/hostile/os needs an EXPECTED.json entry, and vice versa"


@pytest.mark.parametrize("file", FILES)
def test_os_layers_hold_without_the_python_ones(file: str, corpus: dict[str, Outcome], secrets: dict[str, str],
                                                active_layers: list[str]) -> None:
    expected, outcome = EXPECTED[file], corpus[file]
    needs = expected.get("needs")
    if needs and not set(needs) <= set(active_layers):
        pytest.skip(f"needs {needs}; active here: {' '.join(active_layers)}")
    verdict = outcome.verdict
    assert verdict["valid"] is False and verdict["layer"] == expected["layer"], verdict
    assert expected["reason"] in verdict["reason"], verdict
    limit = expected.get("timeout", DEFAULT_TIMEOUT) + STARTUP_MARGIN
    assert outcome.seconds <= limit, f"took {outcome.seconds:.1f} s (limit {limit:.0f} s)"
    text = json.dumps(verdict)
    leaked = [name for name, value in secrets.items() if value in text]
    assert not leaked, f"secrets in the verdict: {leaked}"
    reason = verdict["reason"]
    assert len(reason) <= TEXT_LIMIT + 50, len(reason)
    dirty = {c for c in reason if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf")}
    assert not dirty, f"control characters in the verdict: {sorted(map(hex, map(ord, dirty)))}"
    assert not outcome.marker.exists(), "a file appeared in the test's own /tmp directory"
    for path in (Path("/tmp") / outcome.name, Path("/dev/shm") / outcome.name, Path(f"/dev/shm/{outcome.name}-big")):
        assert not path.exists(), f"{path} is visible on the host"
    assert sorted(p.name for p in outcome.outside.iterdir()) == ["host.sock", "keep"], "a file appeared outside"
    assert (outcome.outside / "keep").read_text() == KEEP
    assert outcome.received == [], "a unix socket of this machine received data"
    assert not outcome.strays, f"processes left running: {outcome.strays}"


def test_the_kept_workers_were_restarted_only_after_a_kill(corpus: dict[str, Outcome], kept: KeptWorkers) -> None:
    assert not kept.faults({name: outcome.verdict["layer"] for name, outcome in corpus.items()})
    assert 1 <= kept.starts < len(corpus) and not kept.strays, (kept.starts, kept.strays)


def test_cleanup_leaves_nothing_behind(corpus: dict[str, Outcome]) -> None:
    """The candidate names its work dir (1,500 levels deep, 480 MB, unreadable dirs, symlinks out): it is gone."""
    reason = corpus["cleanup_bomb.py"].verdict["reason"]
    workdir = reason.split("left behind in ", 1)[1].strip()
    assert Path(workdir).name.startswith("discopop-sandbox-"), reason
    assert not os.path.lexists(workdir), f"{workdir} survived the cleanup"


# ---- the parent-side helpers, directly ---------------------------------------------------------


def test_clean_text_strips_escapes_and_control_characters_and_caps_length() -> None:
    raw = "a\x1b[31mred\x1b[0m\x1b]0;title\x07 b\x00\x08\x7f\u202eevil\u202c\tc\nd" + "x" * 5000
    cleaned = clean_text(raw, limit=100)
    assert cleaned.startswith("ared bevil\tc\nd")
    assert len(cleaned) < 150 and cleaned.endswith("characters in all]")


def test_reply_keeps_completions_whole_for_the_judge_but_still_cleans_and_caps_them() -> None:
    """A judged task's completions are graded as the worker decoded them: a cut answer would be graded as a
    truncated one. Every other string keeps the short cap; completions are still cleaned and capped, longer."""
    answer = "step " * 1000  # 5,000 characters: over the ordinary cap
    reply = clean_reply({"completions": [answer, "\x1b[31mred\x1b[0m", "y" * 100_000], "error": answer,
                         "nested": {"completions": [answer]}})
    assert reply["completions"][0] == answer and reply["nested"]["completions"][0] == answer
    assert reply["completions"][1] == "red"
    assert len(reply["completions"][2]) < LONG_TEXT_LIMITS["completions"] + 50
    assert reply["completions"][2].endswith("characters in all]")
    assert len(reply["error"]) < TEXT_LIMIT + 50 and reply["error"].endswith("characters in all]")


def test_child_environment_is_an_allow_list(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    monkeypatch.setenv("DISCOPOP_SANDBOX_SESSION_TOKEN", "fake")  # allowed prefix, secret-looking name
    monkeypatch.setenv("SOME_UNRELATED_SETTING", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = sandbox_env(tmp_path, Limits(), {TOKEN_VAR: "tag"})
    assert "OPENAI_API_KEY" not in env and "DISCOPOP_SANDBOX_SESSION_TOKEN" not in env
    assert "SOME_UNRELATED_SETTING" not in env
    assert env["OMP_NUM_THREADS"] == "2" and env[TOKEN_VAR] == "tag"
    assert env["HOME"] == str(tmp_path) and env["TMPDIR"] == str(tmp_path)
    assert str(Path(__file__).resolve().parent.parent) in env["PYTHONPATH"].split(os.pathsep)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        sandbox_env(tmp_path, Limits(), {"OPENAI_API_KEY": "sk-fake"})


def test_remove_tree_survives_depth_unreadable_dirs_and_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text(KEEP)
    root = tmp_path / "work"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):  # deeper than the recursion limit, longer than PATH_MAX
        os.mkdir("a-fairly-long-directory-name", dir_fd=fd)
        child = os.open("a-fairly-long-directory-name", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.symlink(outside, "link", dir_fd=fd)
    os.mkdir("locked", dir_fd=fd)
    os.close(os.open("locked/file", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.chmod("locked", 0, dir_fd=fd)
    os.close(fd)
    (root / "link-at-top").symlink_to(outside)
    remove_tree(root)
    assert not os.path.lexists(root)
    assert (outside / "keep").read_text() == KEEP, "the removal followed a symlink"
    remove_tree(root)  # already gone: nothing to do



FORGER = """import torch.nn.functional as F

raise RuntimeError("\\x1b]0;owned\\x07\\x1b[31mscored forged " + "Z" * 2**20)


def hostile(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
"""


def test_warm_worker_archives_only_clean_capped_text_and_known_stages() -> None:
    """The loop's reply path (``WarmWorker.run``): what a candidate says (an error with escapes, 1 MB long)
    reaches the archive cleaned and capped, at a stage the trusted side named, and the next job runs."""
    import discopop.execution.executors as executors

    tests_dir = str(Path(__file__).resolve().parent)
    spec = executors.WorkerSpec(task=None, training=None, check_timeout=20, oracle_module="hostile_bare_oracle")
    os.environ["PYTHONPATH"], saved = tests_dir, os.environ.get("PYTHONPATH")
    worker = executors.WarmWorker(spec)
    try:
        result = worker.run(executors.Job(0, FORGER, "check"))
        assert (result.ok, result.stage) == (False, "load"), result
        assert "scored forged ZZZ" in result.error and len(result.error) <= TEXT_LIMIT + 50, result.error[:80]
        dirty = {c for c in result.error if unicodedata.category(c) in ("Cc", "Cf")}
        assert not dirty, sorted(map(hex, map(ord, dirty)))
        good = "import torch.nn.functional as F\n\n\n" + FORGER.split("\n\n\n", 1)[1]
        assert worker.run(executors.Job(1, good, "check")).ok
    finally:
        worker.close()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
