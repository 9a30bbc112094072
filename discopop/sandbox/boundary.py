"""What crosses the process boundary: the child's environment going in (an allow-list), its text
coming out (untrusted), and its work dir, removed afterwards whatever the child left in it.

* ``env-allowlist``: the child's environment is built from named settings only (``sandbox_env``):
  no API key, token or password of the parent reaches it; ``HOME`` and ``TMPDIR`` are its work dir.

Everything the child sends back is untrusted text: every string of a reply, and the output tail
quoted in error messages, is stripped of control characters and escape sequences and capped
(``clean_text``). ``remove_tree`` removes a work dir (no recursion, never follows a symlink, any depth).
"""

from __future__ import annotations

import errno
import os
import re
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discopop.sandbox.limits import Limits


# ---- what crosses from the child to the parent --------------------------------------------------

TEXT_LIMIT = 2000  # characters kept of any one string a sandboxed process sends back
# Strings kept longer under these reply keys: a judged task's greedy completions are graded as sent, and a
# completion cut at TEXT_LIMIT would be graded as a truncated answer (a loss whose policy answers at length
# would lose fitness to the cut). 32,000 characters is several thousand tokens; REPLY_LIMIT still bounds it all.
LONG_TEXT_LIMITS = {"completions": 32_000}
REPLY_LIMIT = 16 * 1024 * 1024  # bytes of one reply; a bigger one means the child is misbehaving
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def clean_text(text: object, limit: int = TEXT_LIMIT) -> str:
    """``text`` made safe to archive or print: ANSI escapes and control/format characters removed
    (newlines and tabs kept), at most ``limit`` characters (the cut is marked).

    Everything a sandboxed process says is untrusted: a raw escape sequence rewrites a terminal, a
    NUL or bidi override hides text in a report, a megabyte message fills the archive.
    """
    text = str(text)
    total = len(text)
    text = _ANSI.sub("", text[: limit * 8])  # bounded work on a megabyte message; the rest is cut anyway
    kept = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co"))
    if len(kept) > limit or total > limit * 8:
        kept = kept[:limit] + f" [... cut, {total:,} characters in all]"
    return kept


def clean_reply(value: Any, limit: int = TEXT_LIMIT) -> Any:
    """``clean_text`` on every string (keys included) of a decoded JSON reply; numbers pass unchanged.

    Strings are cut at ``limit`` characters, or at ``LONG_TEXT_LIMITS[key]`` beneath those keys.
    """
    if isinstance(value, str):
        return clean_text(value, limit)
    if isinstance(value, dict):
        return {clean_text(k, 200): clean_reply(v, LONG_TEXT_LIMITS.get(k, limit)) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_reply(v, limit) for v in value]
    return value


# ---- the child's environment: an allow-list ----------------------------------------------------

# Variables a sandboxed process may inherit from its parent; nothing else reaches it (API keys,
# tokens, cloud credentials, the user's shell set-up). Values here are settings, never secrets.
_ENV_ALLOWED = {
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "TZ",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF", "WANDB_MODE",
    "DISCOPOP_CACHE_DIR",
    # Not a secret: tests/test_hostile.py tags each sandboxed process with it to find strays in /proc.
    "DISCOPOP_TEST_TOKEN",
}  # fmt: skip
_ENV_ALLOWED_PREFIXES = ("DISCOPOP_SANDBOX_",)
# A name that looks like it holds a secret never passes, even under an allowed prefix or from ``env=``.
_SECRET_NAME = re.compile(r"KEY|TOKEN(?!IZERS_)|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)
READ_PATHS_VAR = "DISCOPOP_SANDBOX_READ"  # os.pathsep-separated extra paths the child may read


def _looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and name != "DISCOPOP_TEST_TOKEN"


def outside_interpreter(path: str) -> bool:
    """Whether a real path lies outside this interpreter's own directories (stdlib, site-packages)."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    return not any(path == p or path.startswith(p + os.sep) for p in prefixes)


def _child_import_path(extra: str | None) -> str:
    """PYTHONPATH for the child: ``extra`` first, then where this ``discopop`` and the parent's own
    additions to ``sys.path`` live. The interpreter's own directories (stdlib, site-packages) are
    left out: the child finds them itself, and listed here they would come before the stdlib."""
    package_root = str(Path(__file__).resolve().parents[2])  # discopop/sandbox/boundary.py
    entries = [*(extra or "").split(os.pathsep), *([package_root] if outside_interpreter(package_root) else []),
               *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and outside_interpreter(real):
            entries.append(real)
    return os.pathsep.join(dict.fromkeys(e for e in entries if e))


def _huggingface_caches() -> dict[str, str]:
    """The parent's hub and datasets caches (read-only in the child; never ``HF_HOME``: its token lives there)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return {"HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"),
            "HF_DATASETS_CACHE": os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets")}


def sandbox_env(workdir: Path, limits: Limits, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The complete environment of a sandboxed child: allow-listed parent variables, ``extra`` (the
    caller's, checked) and the sandbox's own settings. ``HOME`` and ``TMPDIR`` are the work dir."""
    extra = dict(extra or {})
    refused = sorted(name for name in extra if _looks_secret(name))
    if refused:
        raise ValueError(f"sandbox env: {', '.join(refused)} look(s) like a secret; a sandboxed process may not get it")
    env = {name: value for name, value in os.environ.items()
           if (name in _ENV_ALLOWED or name.startswith(_ENV_ALLOWED_PREFIXES)) and not _looks_secret(name)}
    task_cache = os.environ.get("DISCOPOP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "discopop")
    env.update(DISCOPOP_CACHE_DIR=task_cache, **_huggingface_caches())
    env.update(extra)
    env.update({
        "PYTHONPATH": _child_import_path(extra.get("PYTHONPATH")), "HOME": str(workdir), "TMPDIR": str(workdir),
        "HF_HOME": str(workdir / ".huggingface"), "DISCOPOP_SANDBOX_DIR": str(workdir),
        "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "MALLOC_ARENA_MAX": "2",  # fewer malloc arenas: less address space under RLIMIT_AS
        "DISCOPOP_SANDBOX_NETWORK": "1" if limits.network else "0", "DISCOPOP_SANDBOX_PARENT": str(os.getpid()),
        "DISCOPOP_SANDBOX_TMPFS_MB": str(limits.tmpfs_mb),
        "DISCOPOP_SANDBOX_HARDEN": "1" if limits.os_hardening else "0",
        "DISCOPOP_SANDBOX_CUDA": "1" if limits.uses_cuda else "0",
    })
    if not limits.uses_cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU child (every loss oracle) sees no GPU at all
    elif os.environ.get("LD_LIBRARY_PATH"):
        # Some images find the driver's libcuda only through LD_LIBRARY_PATH (not the loader's cache);
        # there a worker without it sees no GPU. A search path, not a secret; Landlock lets it be read.
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


# ---- removing a work dir, whatever is in it ----------------------------------------------------


def remove_tree(root: Path | str) -> None:
    """Delete ``root`` and everything below it: no recursion (any depth), one open directory at a
    time (any width), symlinks removed and never followed, unreadable or read-only dirs opened up.

    ``shutil.rmtree`` recurses once per level (a 1,500-deep chain raises RecursionError and leaves
    the rest behind) and gives up on a directory it cannot list. Run it only once nothing else
    writes below ``root`` (the sandbox's processes are dead): it walks back up through ``..``.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags)
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.ELOOP):  # a file, or a symlink: remove the entry itself
            os.unlink(root)
            return
        raise
    stack: list[tuple[str, list[str]]] = []  # (name in its parent, entries of the parent still to remove)
    try:
        pending = os.listdir(fd)
        while True:
            if pending:
                name = pending.pop()
                try:
                    os.unlink(name, dir_fd=fd)  # files, symlinks, sockets, fifos: the entry itself
                    continue
                except FileNotFoundError:
                    continue
                except (IsADirectoryError, PermissionError):
                    pass  # Linux answers EISDIR for a directory (EPERM on some file systems)
                try:
                    child = os.open(name, flags, dir_fd=fd)
                except PermissionError:  # an unreadable directory: a non-root parent opens it up first
                    os.chmod(name, 0o700, dir_fd=fd)
                    child = os.open(name, flags, dir_fd=fd)
                try:
                    os.fchmod(child, 0o700)  # a read-only directory: its entries could not be unlinked
                except OSError:
                    pass
                stack.append((name, pending))
                os.close(fd)
                fd, pending = child, []
                pending = os.listdir(fd)
                continue
            if not stack:
                break
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            name, pending = stack.pop()
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(root)
