"""The static hostile corpus (``tests/hostile/static/``): loss files that each try one way past the static
check. Every one must be refused by ``static_check`` and by ``load_loss`` in this very process, with the
reason ``EXPECTED.json`` gives, and nothing in it may run: files that would write ``MARKER_PATH`` when
loaded (an annotation, a default value, a decorator) must leave no marker behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from discopop.contract.losses import LossRejected, load_loss, static_check

CORPUS = Path(__file__).resolve().parent / "hostile" / "static"
EXPECTED: dict[str, str] = json.loads((CORPUS / "EXPECTED.json").read_text())
FILES = sorted(p.name for p in CORPUS.glob("*.py"))


def prepare(name: str, marker: Path) -> str:
    return (CORPUS / name).read_text().replace("MARKER_PATH", str(marker))


def test_corpus_is_complete() -> None:
    assert set(FILES) == set(EXPECTED), "every file needs an EXPECTED.json entry, and vice versa"
    assert len(FILES) >= 14


@pytest.mark.parametrize("name", FILES)
def test_static_check_refuses(name: str, tmp_path: Path) -> None:
    with pytest.raises(LossRejected) as err:
        static_check(prepare(name, tmp_path / "marker"))
    assert EXPECTED[name] in str(err.value)
    assert "\n" not in str(err.value) and err.value.line is not None


@pytest.mark.parametrize("name", FILES)
def test_load_loss_refuses_before_running_anything(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    source = prepare(name, marker)
    path = tmp_path / name
    path.write_text(source)
    for given in (source, path):
        with pytest.raises(LossRejected) as err:
            load_loss(given)
        assert EXPECTED[name] in str(err.value)
    assert not marker.exists(), "the file ran"


OS_CORPUS = CORPUS.parent
OS_EXPECTED: dict[str, dict] = json.loads((OS_CORPUS / "EXPECTED.json").read_text())


@pytest.mark.parametrize("name", sorted(OS_EXPECTED))
def test_static_reasons_of_the_os_corpus(name: str) -> None:
    """``tests/hostile/``'s static verdicts, without starting its workers (``test_hostile.py`` runs those)."""
    expected = OS_EXPECTED[name]
    reason = expected.get("static") or (expected["reason"] if expected["layer"] == "static" else None)
    source = (OS_CORPUS / name).read_text().replace("MARKER_PATH", "/nonexistent/marker").replace("MARKER_PORT", "9")
    if reason is None:
        static_check(source)  # the layers below need candidates that pass
        return
    with pytest.raises(LossRejected) as err:
        static_check(source)
    assert reason in str(err.value)
