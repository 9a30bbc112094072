"""The reference losses' names: the files in the package's ``proposals/`` folder.

Here, not in ``proposers.reference``, because the settings check names against them (``baselines``,
``proposer.names``) and the settings import nothing from the rest of the package.
"""

from __future__ import annotations

from pathlib import Path

PROPOSALS_DIR = Path(__file__).resolve().parent.parent / "proposals"
# Contract-v2 references (lengths, the chosen NLL, reference-free: ``contract/inputs.py``). A folder of their own so
# that what a default run replays and evolves from (``available()``, the evolution's parent pool) is unchanged: they
# run only where named (``baselines=[...,simpo]``, ``proposer.names``, ``loss_fn="simpo"``).
V2_DIR = PROPOSALS_DIR / "v2"


def available() -> list[str]:
    """The reference losses shipped with the package, by name (a ``proposals/NAME.py`` file each)."""
    return sorted(p.stem for p in PROPOSALS_DIR.glob("*.py") if not p.name.startswith("_"))


def available_v2() -> list[str]:
    """The contract-v2 reference losses, by name (a ``proposals/v2/NAME.py`` file each)."""
    return sorted(p.stem for p in V2_DIR.glob("*.py") if not p.name.startswith("_"))


def known() -> list[str]:
    """Every reference name a setting may use: the default set and the contract-v2 ones."""
    return available() + available_v2()


def reference_path(name: str) -> Path:
    """The file of reference ``name`` (``proposals/NAME.py``, else ``proposals/v2/NAME.py``; may not exist)."""
    path = PROPOSALS_DIR / f"{name}.py"
    return path if path.is_file() or name not in available_v2() else V2_DIR / f"{name}.py"
