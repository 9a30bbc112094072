"""Export round trip: an archived, confirmed candidate becomes a standalone loss file whose docstring
carries its provenance and whose function computes exactly what the archived code computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from discopop.archive import Archive
from discopop.contract.losses import load_loss
from discopop.proposers.base import Candidate
from discopop.report.export import export_candidate

PROPOSALS = Path(__file__).resolve().parent.parent / "discopop" / "proposals"
VS_DPO = {"candidate": "lrml_mutant", "baseline": "dpo", "delta": 0.0164, "se": 0.0021, "df": 2.0,
          "ci": [0.0074, 0.0254], "p": 0.008, "p_adjusted": 0.016, "verdict": "beats", "reason": None}
CONFIRMATION = {"seeds": [1000, 1001, 1002], "fitness": [0.8312, 0.8451, 0.8390], "mean": 0.8384, "se": 0.0070,
                "failed": None, "vs_dpo": VS_DPO, "vs_best": None}


def header_of(text: str) -> str:
    """The export's comment header, without the ``# `` prefixes."""
    lines = []
    for line in text.split("\n"):
        if not line.startswith("#"):
            break
        lines.append(line[2:])
    return "\n".join(lines)


@pytest.fixture()
def archive(tmp_path: Path):
    """grandparent (dpo) <- parent (cell) <- child (lrml's code, scored and confirmed), plus an unscored row."""
    (tmp_path / "run").mkdir()
    arch = Archive(tmp_path / "run" / "archive.sqlite")
    ids = {}
    for name, parents, gen in [("dpo", [], 0), ("cell", ["dpo"], 1), ("lrml_mutant", ["cell"], 2)]:
        code = (PROPOSALS / f"{name.split('_')[0]}.py").read_text()
        cand = Candidate(name=name, code=code, thought=r'blend logistic and exponential by the margin \ """quoted"""',
                         parent_ids=[ids[p] for p in parents], proposer="evolution" if parents else "reference")
        ids[name] = arch.add(cand, generation=gen)
        arch.finish(ids[name], "scored", fitness=0.8 + gen / 100, metrics={"reward": 0.8 + gen / 100, "kl": 1.25})
    arch.update_metrics(ids["lrml_mutant"], {"confirmation": CONFIRMATION})
    ids["failed"] = arch.add(Candidate(name="failed", code="x = 1", proposer="evolution"), 3, status="invalid")
    yield arch, ids
    arch.close()


def test_export_round_trip(archive, tmp_path: Path) -> None:
    arch, ids = archive
    row = arch.get(ids["lrml_mutant"])
    out = export_candidate(arch, row.id, tmp_path / "winner.py")

    doc = header_of(out.read_text())
    assert f"run: {(tmp_path / 'run').resolve()}" in doc
    assert f"candidate: #{row.id}, generation 2" in doc
    assert "fitness: 0.8200" in doc
    assert "fresh seeds [1000, 1001, 1002]: fitness [0.8312, 0.8451, 0.8390]" in doc and "0.838 ± 0.007 (n=3)" in doc
    assert "vs DPO +0.016 [+0.007, +0.025] beats DPO, Holm p=0.016" in doc
    assert "vs best baseline DPO is the strongest baseline" in doc
    assert f"lineage: cell (#{ids['cell']}) <- dpo (#{ids['dpo']})" in doc
    assert 'idea: blend logistic and exponential by the margin \\ """quoted"""' in doc, "quotes/backslashes survive"
    assert out.read_text().endswith(row.code), "the archived code, its docstring included, is kept as is"

    exported, archived = load_loss(out), load_loss(row.code)
    torch.manual_seed(0)
    for beta in (0.05, 0.1, 1.0):
        logps = [torch.randn(64, dtype=torch.float64) * 20 for _ in range(4)]
        assert torch.allclose(exported(*logps, beta), archived(*logps, beta), rtol=0, atol=0)


def test_export_refuses_unscored_and_missing(archive, tmp_path: Path) -> None:
    arch, ids = archive
    with pytest.raises(ValueError, match="status invalid"):
        export_candidate(arch, ids["failed"], tmp_path / "x.py")
    with pytest.raises(ValueError, match="no candidate #999"):
        export_candidate(arch, 999, tmp_path / "x.py")


def test_unconfirmed_first_generation_export(archive, tmp_path: Path) -> None:
    arch, ids = archive
    doc = header_of(export_candidate(arch, ids["dpo"], tmp_path / "dpo.py").read_text())
    assert "confirmation: not confirmed on fresh seeds" in doc and "lineage: none (first generation)" in doc
