"""Shared fixtures: a tiny embedded task built locally (cached per session) and a small run config."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent

# Tests by kind, one marker each (``pytest -m unit -n 2 --dist loadgroup`` answers in ~50 s on 2 quiet cores, ~90 s
# serially; under load two workers cost 28% more CPU and are slower, docs/results.md):
# unit: pure functions, settings, statistics, parsing, in-process checks of trusted code;
# sandbox: starts sandboxed workers or loss oracles (seccomp, Landlock, cgroups, the hostile corpora);
# e2e: fine-tunes, `discover`/`discopop` commands, executors, TRL, reports built from real runs.
# Every test file is in exactly one list (tests/test_code_health.py fails on a file that is not).
TEST_KINDS: dict[str, tuple[str, ...]] = {
    "unit": (
        "test_allowlist.py", "test_archive.py", "test_behaviour_map.py", "test_calibration.py", "test_code_health.py",
        "test_config_dir.py", "test_confirm_contexts.py", "test_conventions.py", "test_diagnostic_headroom.py",
        "test_diagnostic_shape.py", "test_evolution.py", "test_export.py", "test_hostile_static.py",
        "test_importing.py", "test_imports.py", "test_llm_feedback.py", "test_losses.py", "test_lrml_shape.py",
        "test_messages.py", "test_openai_proposer.py", "test_oracle_death.py", "test_owed_repairs.py",
        "test_pair_variants.py", "test_pairs_ceiling.py", "test_parse_lock.py", "test_pick_holdout.py",
        "test_pick_stage.py", "test_progress.py", "test_rich_deterministic.py", "test_screen_agreement.py",
        "test_search_analyses.py", "test_search_efficiency.py", "test_settings.py", "test_sft_coverage.py",
        "test_stats.py", "test_tune_seeds.py", "test_tuning.py", "test_work_ahead.py", "test_worlds.py",
        "test_xdist_groups.py",
    ),
    "sandbox": (
        "test_check_inputs.py", "test_checks.py", "test_contract_v2.py", "test_evolution_v2.py",
        "test_fused_backward.py", "test_gpu_check.py", "test_hostile.py", "test_hostile_corpus.py",
        "test_hostile_oracle.py", "test_hostile_os.py", "test_hostile_proposals.py", "test_hostile_text.py",
        "test_memory_watch.py", "test_normalise.py", "test_oracle_first_call.py", "test_oracle_fork.py",
        "test_oracle_keep.py", "test_remote_loss.py", "test_sandbox.py", "test_trained_behaviour.py",
        "test_v2_behaviour.py", "test_worker_init.py",
    ),
    "e2e": (
        "test_beta_axis.py", "test_cli.py", "test_confirmation.py", "test_contract_v2_parity.py",
        "test_diagnostic_kl.py", "test_diagnostic_run.py", "test_diagnostic_task.py", "test_duplicates.py",
        "test_faults.py", "test_fidelity.py", "test_gpu_placement.py", "test_gpu_sizes.py", "test_hub_task.py",
        "test_judge.py", "test_likelihood.py", "test_llm_v2.py", "test_loop.py", "test_lora_training.py",
        "test_malloc.py", "test_openai_loop.py",
        "test_packaging.py", "test_proposals_train.py", "test_ray_executor.py", "test_readme.py", "test_report.py",
        "test_report_trust.py", "test_result_store.py", "test_run_trust.py", "test_scoring.py", "test_seed_race.py",
        "test_tasks.py", "test_tracking_quiet.py", "test_transfer.py", "test_transfer_confirm.py",
        "test_trl_adapter.py", "test_trl_loss_parity.py", "test_trl_options.py", "test_trl_options_v2.py",
        "test_trl_parity_more.py", "test_trl_peft.py",
    ),
}


def pytest_addoption(parser) -> None:
    parser.addoption("--oracle-start", choices=("spawn", "fork"), default=os.environ.get("DISCOPOP_TEST_ORACLE_START"),
                     help="How the loss oracles this session's tests start (sandbox.oracle_supply's default, fork; "
                          "the OS corpus spawns unless this is given).")


def pytest_configure(config) -> None:
    start = config.getoption("--oracle-start")
    if start:
        from discopop.sandbox import oracle_supply

        oracle_supply.DEFAULT_ORACLE_START = start


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """With ``-m KIND`` alone, files of the other kinds are not even imported (their imports cost most of a run)."""
    kind = config.getoption("markexpr", "").strip().removesuffix(" and not slow")
    if kind in TEST_KINDS and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        listed = any(collection_path.name in names for names in TEST_KINDS.values())
        return True if listed and collection_path.name not in TEST_KINDS[kind] else None
    return None


def pytest_collection_modifyitems(config, items) -> None:
    """Mark each test with its file's kind (``TEST_KINDS``); a file in no list gets no kind marker. Then its
    ``xdist_group`` (:func:`xdist_group_of`)."""
    kind_of = {name: kind for kind, names in TEST_KINDS.items() for name in names}
    for item in items:
        kind = kind_of.get(Path(str(item.fspath)).name)
        if kind:
            item.add_marker(getattr(pytest.mark, kind))
        group = xdist_group_of(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if prefetching():
        items.sort(key=reads_a_prefetched_run)  # stable: the readers of a prefetched run last (``prefetch``)


def startup_margin(seconds: float) -> float:
    """A timed test's allowance for process start-ups (torch imports), doubled under pytest-xdist: another worker's
    test then shares the cores, and the limit must time the code, not the neighbour."""
    return seconds * (2 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 1)


# The session fixtures worth keeping in one pytest-xdist worker: ``pytest -n auto --dist loadgroup`` (an option for
# more cores; serial is the default, pyproject.toml) gives every worker its own session, so two would each run them.
SHARED_GROUPS = {"discovered": "discovered"}


def xdist_group_of(item: pytest.Item) -> str | None:
    """The ``xdist_group`` that keeps a test beside the tests that share its costly set-up, so it runs once:
    ``discovered`` for the shared ``discover`` run; the file's name for a test that uses a module-scoped fixture
    defined in its own file (the hostile corpora, the trained tasks of the e2e files). Any other test is scheduled
    on its own. Groups decide placement only: serially (``-n 0``) they change nothing."""
    names = getattr(item, "fixturenames", ())
    for fixture, group in SHARED_GROUPS.items():
        if fixture in names:
            return group
    info = getattr(item, "_fixtureinfo", None)
    module_id = item.nodeid.split("::", 1)[0]
    for name in names:
        defs = info.name2fixturedefs.get(name, ()) if info is not None else ()
        if defs and defs[-1].scope == "module" and defs[-1].baseid == module_id:
            return Path(module_id).stem
    return None

# A deliberately tiny task: builds in a few seconds, enough pairs for a handful of DPO steps.
TINY_TASK = [
    "task.sft.steps=150", "task.sft.n_layer=1", "task.sft.n_embd=32", "task.sft.n_head=2",
    "task.pairs.prompts=200", "task.pairs.samples_per_prompt=16", "task.pairs.max_pairs=64",
    "task.heldout_prompts=64", "task.search_prompts=32",
]
SMALL_RUN = [
    # Two workers whatever the machine (the default, auto, would start one per core): so two proposals a generation.
    *TINY_TASK, "training.batch_size=16", "training.threads=1", "executor.workers=2", "training.epochs=1",
    "baselines=[dpo,lrml]",
    "training.lr_grid=[5e-6,2e-5]",
    "confirm.seeds=2", "confirm.top_k=1", "wandb.mode=disabled",
    "selection.max_seeds=1",  # no seed race here (its cost): tests/test_seed_race.py runs it
    "confirm.transfer=[]",  # no held-out variant here (its cost): tests/test_transfer_confirm.py runs it
]


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """The session's task cache and reference store, set for every test (autouse): a test that builds a task without
    asking for it must not fall back to ``~/.cache/discopop``, which two pytest-xdist workers would share."""
    path = tmp_path_factory.mktemp("discopop-cache")
    os.environ["DISCOPOP_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_task(cache_dir):
    """The tiny task, built once per test session into a temporary cache."""
    from discopop.config.compose import compose
    from discopop.tasks import load_task

    cfg, _ = compose(TINY_TASK)
    return load_task(cfg["task"]), cfg


@pytest.fixture(scope="session")
def active_layers() -> list[str]:
    """The isolation layers a worker gets on this machine (its init reports them): asked once per session, for the
    hostile corpora's files that need an OS layer (tests/test_hostile.py, tests/test_hostile_os.py)."""
    from discopop.sandbox import Limits, SandboxedProcess  # lazy: only the sandbox tests start a worker

    proc = SandboxedProcess("discopop.execution.worker", Limits())
    try:
        reply = proc.request({"op": "init", "task": None, "training": None}, timeout=120)
        assert reply["ok"], reply
        return list(proc.layers)
    finally:
        proc.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds contention (workers and benchmarks run with one thread too)."""
    import torch  # lazy: most test modules never need torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The small search that the end-to-end tests of a finished run read (tests/test_cli.py, tests/test_transfer_confirm.py):
# a `discover` run costs most of a minute on 2 cores, so one run, with everything those tests look at switched on
# (confirmation and the transfer to the held-out variant), is shared by them. It keeps the reference store on, as
# the run it replaces did (in its own copy of the session's cache: ``run_discovered``).
SHARED_RUN = [*(o for o in SMALL_RUN if not o.startswith("confirm.transfer=")), "confirm.transfer=auto"]


# Switches a test run in this process may leave set, which a command a test starts must not inherit: it decides them
# itself, as when a user starts it. ``report.quiet.quiet_libraries`` sets the first three (``setdefault``, never
# undone: a later ``--verbose`` command drew no progress bars); ``report.tracking`` sets the Weave switch around each
# ``wandb.init``. tests/test_code_health.py fails on a switch added there and not here.
INHERITED_SWITCHES = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS",
                      "TRANSFORMERS_NO_ADVISORY_WARNINGS", "WANDB_DISABLE_WEAVE")
# Variables that would send a command's requests to a local fake server elsewhere (any case; ``no_proxy=True``).
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "openai_base_url", "openai_api_key")


def command_env(cache: Path | None = None, *, no_proxy: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a command a test starts (``discover``, ``discopop``, ``python -m discopop...``), the one
    place that decides it: this process's, less ``INHERITED_SWITCHES``, with wandb off; ``cache``: the task cache;
    ``no_proxy``: less ``PROXY_VARS`` and any other ``*proxy*`` variable, with ``NO_PROXY=*``; then ``extra``."""
    def kept(name: str) -> bool:
        lower = name.lower()
        return name not in INHERITED_SWITCHES and not (no_proxy and (lower in PROXY_VARS or "proxy" in lower))

    env = {name: value for name, value in os.environ.items() if kept(name)}
    env["WANDB_MODE"] = "disabled"
    if cache is not None:
        env["DISCOPOP_CACHE_DIR"] = str(cache)
    if no_proxy:
        env["NO_PROXY"] = "*"
    return env | extra


def discover(args: list[str], cache: Path, timeout: int | None = None,
             niceness: int = 0) -> subprocess.CompletedProcess:
    """The real console script (``discover`` or ``discopop``, first in ``args``; or any command), run from the
    repository root; ``niceness``: under ``nice`` (a background run yields the cores to the tests in front, so its
    default time limit is 1800 s, not 600)."""
    timeout = timeout if timeout is not None else (1800 if niceness else 600)
    prefix = ["nice", "-n", str(niceness)] if niceness else []
    return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout, env=command_env(cache),
                          cwd=REPO)


# The commands whose output the session's last tests read (``discovered``, ``rebuilt``, ``hub_discovered``): a serial
# run leaves most of
# one of the two cores idle, so they start in the background at the session's first test (niced, with deadlines
# wide enough for a starved core) and the tests that read them run last (``pytest_collection_modifyitems``). Under
# pytest-xdist, with ``DISCOPOP_TEST_PREFETCH=0`` (``prefetching``), or when no selected test reads them, each runs
# where it is first needed.
PREFETCHED = ("discovered", "rebuilt", "hub_discovered")
PREFETCH_NICENESS = 10
PREFETCH_DEADLINES = ["training.oracle_timeout=300", "training.check_timeout=600", "training.train_timeout=1200"]


def prefetching() -> bool:
    """Whether this session prefetches: not under pytest-xdist, and not with ``DISCOPOP_TEST_PREFETCH=0`` (each run
    where it is first needed, in file order, as before: to time the suite both ways or to debug one run)."""
    return not os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("DISCOPOP_TEST_PREFETCH") != "0"


def reads_a_prefetched_run(item: pytest.Item) -> bool:
    """Whether ``item`` waits for a prefetched command (so it is ordered last)."""
    return any(name in getattr(item, "fixturenames", ()) for name in PREFETCHED)


def sft_stage_of(task_cfg: Any, cache: Path) -> Path:
    """Where ``cache`` keeps the SFT stage of the synthetic task ``task_cfg`` (``tasks.synthetic.sft_stage``)."""
    from discopop.config import plain  # lazy: the unit files never build a task
    from discopop.tasks import build_key
    from discopop.tasks.synthetic import config_hash, sft_key

    key = build_key(plain(task_cfg))
    return cache / f"{key['language']}-sft-{config_hash(sft_key(key))}"


def run_discovered(root: Path, session_cache: Path, niceness: int = 0) -> tuple[Path, subprocess.CompletedProcess]:
    """``discover --generations 2`` with ``SHARED_RUN`` in a copy of the session's cache as it is after ``tiny_task``
    (so the run neither races the other tests for the session's cache nor depends on when it runs): the task is
    built, the held-out variant and the reference store are the run's own."""
    cache, run_dir = root / "cache", root / "run"
    shutil.copytree(session_cache, cache)
    args = ["discover", "--generations", "2", "--quiet", *SHARED_RUN, *PREFETCH_DEADLINES, f"hydra.run.dir={run_dir}"]
    return run_dir, discover(args, cache, niceness=niceness)


def run_rebuilt(root: Path, task_cfg: Any, session_cache: Path,
                niceness: int = 0) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The shared run's search again (``SMALL_RUN``: the shared run's settings and seed, less what runs after the
    search), ``--verbose``, in a fresh cache that holds only the session's SFT stage: (its cache, its run directory,
    its output). So it builds the tiny task itself, in its process (sampling and saving the pairs, saving the model
    and tokenizer: a first run's library output, the SFT being plain torch and silent), and trains its references
    itself (no store there)."""
    cache, run_dir = root / "cache", root / "run"
    stage = sft_stage_of(task_cfg, session_cache)
    assert (stage / "meta.json").is_file(), stage
    shutil.copytree(stage, cache / stage.name)
    args = ["discover", "--generations", "2", "--verbose", *SMALL_RUN, *PREFETCH_DEADLINES,
            "selection.reference_store=false", "confirm.seeds=0", f"hydra.run.dir={run_dir}"]
    return cache, run_dir, discover(args, cache, niceness=niceness)


HUB_ALPHABET = "abcdefghijklmnopqrstuvwxyz .!?"
# Builds ``build_hub_dir(argv[1])`` in a fresh interpreter (a background build must not touch this process's RNG).
BUILD_HUB = "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); import conftest; " \
            "conftest.build_hub_dir(Path(sys.argv[1]))"


def build_hub_dir(root: Path) -> Path:
    """A 'hub' on disk: policy, reward model and a preference dataset, all save_pretrained / save_to_disk."""
    from datasets import Dataset  # lazy: only the hub tests build one

    from discopop.tasks.tiny import save_tiny, tiny_causal_lm, tiny_reward_model

    save_tiny(root / "policy", *tiny_causal_lm(HUB_ALPHABET, positions=64))
    save_tiny(root / "reward", *tiny_reward_model(HUB_ALPHABET, positions=64, seed=1))
    words = ["good", "great", "bad", "fine", "nice", "poor", "ok", "fun"]
    rows = [{"question": f"say {a} {b}", "better": f" {a}!", "worse": f" {b}."} for a in words for b in words if a != b]
    Dataset.from_list(rows).save_to_disk(str(root / "prefs"))
    return root


def hub_cfg(hub_dir: Path, cache: Path) -> dict:
    """The hub task's settings on ``build_hub_dir``'s files, its cache in ``cache``."""
    return {"name": "hub", "kind": "hub", "model": str(hub_dir / "policy"), "tokenizer": None,
            "dataset": str(hub_dir / "prefs"), "split": "train", "prompt_column": "question",
            "chosen_column": "better", "rejected_column": "worse", "heldout_prompts": 8, "max_pairs": 32,
            "reward_model": str(hub_dir / "reward"), "max_new_tokens": 6, "kl_coef": 0.05, "seed": 0,
            "cache_dir": str(cache)}


def run_hub_discovered(root: Path, hub_dir: Path | None = None,
                       niceness: int = 0) -> tuple[Path, subprocess.CompletedProcess]:
    """``discover --generations 1`` on the hub task at one learning rate, in ``root`` (its task cache and reference
    store there too): its run directory and output. ``hub_dir``: the files to load (None: built first, in a fresh
    interpreter)."""
    if hub_dir is None:
        hub_dir = root / "hub"
        built = discover([sys.executable, "-c", BUILD_HUB, str(hub_dir)], root / "cache", niceness=niceness)
        assert built.returncode == 0, built.stderr[-2000:]
    run_dir = root / "run"
    overrides = [f"task.{k}={v}" for k, v in hub_cfg(hub_dir, root / "task-cache").items()
                 if k not in ("name", "kind", "tokenizer")]
    args = ["discover", "--generations", "1", "--quiet", "task=hub", *overrides, "baselines=[dpo]",
            "training.batch_size=8", "training.threads=1", "training.lr_grid=[1e-3]", "executor.workers=1",
            "confirm.seeds=0", "wandb.mode=disabled", *PREFETCH_DEADLINES, f"hydra.run.dir={run_dir}"]
    return run_dir, discover(args, root / "cache", niceness=niceness)


@pytest.fixture(scope="session", autouse=True)
def prefetch(request, tmp_path_factory, cache_dir) -> Iterator[dict[str, Future]]:
    """The prefetched commands this session's selected tests read, started one after the other in one background
    thread once the tiny task is built: {fixture name: its future}. Empty where nothing is prefetched."""
    readers = [item for item in request.session.items if reads_a_prefetched_run(item)]
    wanted = [name for name in PREFETCHED if any(name in item.fixturenames for item in readers)]
    if not wanted or not prefetching():
        yield {}
        return
    if {"discovered", "rebuilt"} & set(wanted):  # both read the tiny task's build (the hub run builds its own)
        _, cfg = request.getfixturevalue("tiny_task")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        futures = {}
        if "discovered" in wanted:
            futures["discovered"] = pool.submit(run_discovered, tmp_path_factory.mktemp("discovered"), cache_dir,
                                                PREFETCH_NICENESS)
        if "rebuilt" in wanted:
            futures["rebuilt"] = pool.submit(run_rebuilt, tmp_path_factory.mktemp("rebuilt"), cfg["task"], cache_dir,
                                             PREFETCH_NICENESS)
        if "hub_discovered" in wanted:
            futures["hub_discovered"] = pool.submit(run_hub_discovered, tmp_path_factory.mktemp("hub-run"), None,
                                                    PREFETCH_NICENESS)
        yield futures
        pool.shutdown(cancel_futures=True)  # a run not started (the session stopped early) is not started now


@pytest.fixture(scope="session")
def discovered(prefetch, tmp_path_factory, cache_dir, tiny_task) -> tuple[Path, subprocess.CompletedProcess]:
    """The shared run (``run_discovered``), once per session: its run directory and its output. The task is built
    first, in this process (``tiny_task``), so the run's time limit does not include a first build."""
    if "discovered" in prefetch:
        return prefetch["discovered"].result()
    return run_discovered(tmp_path_factory.mktemp("discovered"), cache_dir)


@pytest.fixture(scope="session")
def rebuilt(prefetch, tmp_path_factory, cache_dir, tiny_task) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """``run_rebuilt`` once per session, for the two tests of tests/test_cli.py that read it."""
    if "rebuilt" in prefetch:
        return prefetch["rebuilt"].result()
    return run_rebuilt(tmp_path_factory.mktemp("rebuilt"), tiny_task[1]["task"], cache_dir)


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module: the benchmarks are scripts, not a package, and their tests
    call the script's own functions."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    module_name = f"benchmark_{name}"  # registered under a name no package has: a dataclass looks its module up
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
