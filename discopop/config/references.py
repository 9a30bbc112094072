"""The reference losses' names: the files in the package's ``proposals/`` folder.

Here, not in ``proposers.reference``, because the settings check names against them (``baselines``,
``proposer.names``) and the settings import nothing from the rest of the package.
"""

from __future__ import annotations

from pathlib import Path

PROPOSALS_DIR = Path(__file__).resolve().parent.parent / "proposals"


def available() -> list[str]:
    """The reference losses shipped with the package, by name (a ``proposals/NAME.py`` file each)."""
    return sorted(p.stem for p in PROPOSALS_DIR.glob("*.py") if not p.name.startswith("_"))
