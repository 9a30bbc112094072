"""The run report and the lineage notebook, on archives written through the archive contract (no training)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helper_confirm import train_reply

from discopop import report
from discopop.archive import ARCHIVE_NAME, Archive, ArchiveError, Evaluation
from discopop.proposers.base import Candidate
from discopop.search.confirmation import judge

REPO = Path(__file__).resolve().parents[1]
SECTION_IDS = ("leaderboard", "fitness", "lineage", "diffs", "loss-shapes", "reward-kl", "frontier", "failures",
               "timing")
IMG = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"')

ARGS = "policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta"
RHO = "    rho = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)\n"


def _loss(name: str, body: str, imports: str = "import torch.nn.functional as F\n") -> str:
    return f"{imports}\n\ndef {name}({ARGS}):\n{RHO}{body}"


DPO = _loss("dpo", "    return -F.logsigmoid(beta * rho)\n")
LRML = _loss("lrml", "    x = beta * rho\n    w = torch.sigmoid(x / TAU)\n"
             "    return (1.0 - w) * -F.logsigmoid(x) + w * torch.exp(-x)\n",
             "import torch\nimport torch.nn.functional as F\n\nTAU = 0.05\n")
HINGE = _loss("hinge", "    return torch.relu(1.0 - beta * rho)\n", "import torch\n")
SMOOTH = _loss("smooth_dpo", "    x = beta * rho\n    return -0.9 * F.logsigmoid(x) - 0.1 * F.logsigmoid(-x)\n")
MARGIN = _loss("margin_dpo", "    x = beta * rho\n    return -0.9 * F.logsigmoid(x - 0.5) - 0.1 * F.logsigmoid(-x)\n")
MIXED = _loss("mixed_exp", "    x = beta * rho\n    w = torch.sigmoid(x)\n"
              "    return (1.0 - w) * -F.logsigmoid(x - 0.5) + w * torch.exp(-x)\n",
              "import torch\nimport torch.nn.functional as F\n")
BROKEN = "import os\n\ndef bad(" + ARGS + "):\n    return os.getcwd()\n"


def _secs(check: float, train: float | None = None, score: float | None = None) -> dict:
    secs = {"check": check} | ({"train": train} if train else {}) | ({"score": score} if score else {})
    return {"seconds": secs | {"total": sum(secs.values()) + 0.2}}


def _scored(arch: Archive, name: str, code: str, gen: int, fitness: float, parents=(), proposer="evolution",
            kl: float = 1.0, thought: str = "") -> int:
    row = arch.add(Candidate(name=name, code=code, thought=thought, parent_ids=list(parents), proposer=proposer), gen)
    arch.finish(row, "scored", fitness=fitness, metrics={
        "reward": fitness + 0.1 * kl, "kl": kl, "fitness": fitness, "steps": 20, "learning_rate": 2e-5,
        "lr_points": {f"{lr:g}": {"reward": fitness + 0.1 * kl * f, "greedy": fitness, "kl": kl * f}
                      for lr, f in ((1e-5, 0.5), (2e-5, 1.0), (4e-5, 2.0))},
        "checks": {"uses_beta": True, "curve": _curve(code)}, **_secs(0.4, 11.0 + gen, 2.5)})
    return row


def _curve(code: str) -> dict:
    """What the sandboxed checks record (computed in-process here: the fixture's code is the test's own)."""
    from discopop.contract.checks import loss_curve
    from discopop.contract.losses import load_loss

    try:
        return loss_curve(load_loss(code))
    except Exception:  # noqa: BLE001 - the fixture includes deliberately broken code
        return {}


def _failed(arch: Archive, name: str, code: str, gen: int, status: str, error: str, stage: str | None,
            parents=(), secs: dict | None = None) -> int:
    row = arch.add(Candidate(name=name, code=code, parent_ids=list(parents), proposer="evolution"), gen)
    arch.finish(row, status, error=error, metrics=({"stage": stage} if stage else {}) | (secs or {}))
    return row


def _confirm(arch: Archive, winner: int, dpo: int, best: int) -> None:
    """Fresh-seed runs of the winner and both baselines (exact-match rewards on shared prompts; the winner
    answers ~7.5 points more of them than DPO), judged by the confirmation's own code."""
    rng = np.random.default_rng(0)
    seeds = [1000, 1001, 1002]
    for seed in seeds:
        u = rng.random(400)
        for row, accuracy in ((dpo, 0.50), (best, 0.52), (winner, 0.575)):
            rewards = (u < accuracy).astype(float).tolist()
            reply = {"fitness": float(np.mean(rewards)), "reward": float(np.mean(rewards)), "kl": 0.0,
                     "per_prompt": rewards, "per_prompt_kl": [0.0] * 400}
            arch.add_evaluation(Evaluation.from_reply(row, seed, "confirm", train_reply(**reply)))
    judge(arch, [arch.get(winner)], arch.get(dpo), arch.get(best), seeds)


def make_run(run_dir: Path) -> Path:
    """Baselines, three evolved generations with parents, one of each failure, a confirmed winner."""
    run_dir.mkdir(parents=True, exist_ok=True)
    arch = Archive(run_dir / ARCHIVE_NAME)
    dpo = _scored(arch, "dpo", DPO, 0, 0.50, proposer="reference", kl=1.2)
    lrml = _scored(arch, "lrml", LRML, 0, 0.52, proposer="reference", kl=1.0)
    _scored(arch, "hinge", HINGE, 0, 0.47, proposer="reference", kl=1.6)
    a = _scored(arch, "smooth_dpo", SMOOTH, 1, 0.53, [dpo], thought="Label smoothing keeps gradients alive.")
    b = _scored(arch, "lrml_copy", LRML.replace("TAU = 0.05", "TAU = 0.1"), 1, 0.51, [lrml], kl=0.8)
    _failed(arch, "os_loss", BROKEN, 1, "invalid", "line 4: use of 'os' is not allowed", "static", [dpo])
    c = _scored(arch, "margin_dpo", MARGIN, 2, 0.56, [a], kl=0.9, thought="Add a margin of 0.5 nats.")
    _failed(arch, "smooth_again", SMOOTH, 2, "duplicate", f"duplicate of #{a}", None, [a])
    _failed(arch, "nan_loss", SMOOTH.replace("0.1", "-5.0"), 2, "train_failed", "loss is nan at step 3", "train",
            [b], _secs(0.3, 4.0))
    d = _scored(arch, "mixed_exp", MIXED, 3, 0.58, [c, b], kl=0.7, thought="Cross the margin with LRML's exp tail.")
    _failed(arch, "slow_loss", MARGIN.replace("0.5", "0.7"), 3, "eval_failed", "scoring timed out after 30 s",
            "score", [c], _secs(0.4, 12.0))
    arch.add(Candidate(name="in_flight", code=SMOOTH, parent_ids=[d], proposer="evolution"), 4)
    _confirm(arch, winner=d, dpo=dpo, best=lrml)
    arch.close()
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r'<section id="([^"]+)">', text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_report_has_every_section_and_embedded_figures(run_dir: Path) -> None:
    out = report.write_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text(encoding="utf-8")
    sections = _sections(text)
    assert list(sections) == list(SECTION_IDS)
    assert len(IMG.findall(text)) >= 6
    for sid in ("fitness", "lineage", "loss-shapes", "reward-kl", "frontier", "failures", "timing"):
        assert IMG.search(sections[sid]), sid
    assert "beats DPO" in sections["leaderboard"]
    assert "mixed_exp" in sections["diffs"] and 'class="add"' in sections["diffs"]
    assert "Skipped" not in sections["loss-shapes"]


def test_report_out_path_and_escaping(run_dir: Path, tmp_path: Path) -> None:
    arch = Archive(run_dir / ARCHIVE_NAME)
    _scored(arch, "<script>alert(1)</script>", DPO.replace("dpo", "xss"), 4, 0.9, [1])
    arch.close()
    out = report.write_report(run_dir, tmp_path / "sub" / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_a_loss_that_cannot_be_drawn_is_skipped_with_a_note(run_dir: Path) -> None:
    arch = Archive(run_dir / ARCHIVE_NAME)
    _scored(arch, "scalar_loss", _loss("scalar", "    return (-F.logsigmoid(beta * rho)).mean()\n"), 4, 0.9, [1])
    arch.close()
    view = report.loss_shapes_view(report.load_rows(run_dir))
    assert view.figure is not None
    assert any(c.startswith("Skipped #") and "scalar_loss" in c for c in view.captions)


def test_only_failed_candidates_render_with_notes(tmp_path: Path) -> None:
    arch = Archive(tmp_path / ARCHIVE_NAME)
    _failed(arch, "bad", BROKEN, 1, "invalid", "line 4: use of 'os' is not allowed", "static")
    _failed(arch, "nan", SMOOTH, 1, "train_failed", "loss is nan", "train", secs=_secs(0.2, 3.0))
    arch.close()
    text = report.write_report(tmp_path).read_text(encoding="utf-8")
    sections = _sections(text)
    assert list(sections) == list(SECTION_IDS)
    assert "No candidate was scored" in sections["fitness"]
    assert 'class="note"' in sections["loss-shapes"] and not IMG.search(sections["loss-shapes"])
    assert IMG.search(sections["failures"]) and IMG.search(sections["timing"])


def test_single_candidate_renders(tmp_path: Path) -> None:
    arch = Archive(tmp_path / ARCHIVE_NAME)
    _scored(arch, "lonely", SMOOTH, 1, 0.4)
    arch.close()
    sections = _sections(report.write_report(tmp_path).read_text(encoding="utf-8"))
    assert "no recorded parents" in sections["diffs"]
    assert "No failed candidates" in sections["failures"]
    for sid in ("fitness", "lineage", "loss-shapes", "reward-kl", "timing"):
        assert IMG.search(sections[sid]), sid


def test_empty_archive_renders_notes(tmp_path: Path) -> None:
    Archive(tmp_path / ARCHIVE_NAME).close()
    sections = _sections(report.write_report(tmp_path).read_text(encoding="utf-8"))
    assert all(report.EMPTY_NOTE in body for body in sections.values())
    assert not any(IMG.search(body) for body in sections.values())


def test_missing_archive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no archive"):
        report.write_report(tmp_path)


def test_winner_ancestry_and_leaderboard(run_dir: Path) -> None:
    rows = report.load_rows(run_dir)
    best = report.winner(rows)
    assert best is not None and best.name == "mixed_exp"
    names = {r.id: r.name for r in rows}
    assert {names[i] for i in report.ancestry(rows, best.id)} == {"mixed_exp", "margin_dpo", "smooth_dpo", "dpo",
                                                                   "lrml_copy", "lrml"}
    board = report.leaderboard(rows)
    assert board[0]["name"] == "mixed_exp" and board[0]["fresh seeds (mean ± SE)"].endswith("(n=3)")
    assert " beats DPO, Holm p=" in board[0]["vs DPO"] and "lrml" in board[0]["vs best baseline"]
    assert next(b for b in board if b["name"] == "dpo")["vs DPO"] == "baseline"
    assert next(b for b in board if b["name"] == "lrml")["fresh seeds (mean ± SE)"].endswith("(n=3)")


def test_failure_reasons_are_normalised(run_dir: Path) -> None:
    rows = {r.name: r for r in report.load_rows(run_dir)}
    assert report.failure_reason(rows["smooth_again"]) == "duplicate of #N"
    assert report.failure_reason(rows["os_loss"]) == "line N: use of '…' is not allowed"
    assert report.failure_stage(rows["smooth_again"]) == "dedup"


def test_loss_curve_matches_dpo_analytically() -> None:
    import numpy as np

    x = np.linspace(-10, 10, 41)
    loss, grad = report.loss_curve(DPO, x)
    assert np.allclose(loss, np.log1p(np.exp(-x)), atol=1e-5)
    assert np.allclose(grad, -1 / (1 + np.exp(x)), atol=1e-5)
    with pytest.raises(ValueError, match="not allowed"):
        report.loss_curve(BROKEN, x)


def test_reads_while_the_loop_holds_a_write_transaction(run_dir: Path) -> None:
    writer = Archive(run_dir / ARCHIVE_NAME)
    writer._conn.execute("BEGIN IMMEDIATE")
    writer._conn.execute("UPDATE candidates SET name='renamed' WHERE id=1")
    try:
        rows = report.load_rows(run_dir)
    finally:
        writer._conn.execute("ROLLBACK")
        writer.close()
    assert rows[0].name == "dpo" and len(rows) == 12


def test_notebook_runs_headless(run_dir: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(REPO / "notebooks" / "lineage.ipynb", as_version=4)
    params = nb.cells[0]
    assert params.metadata.get("tags") == ["parameters"] and 'RUN_DIR = "runs/latest"' in params.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    params.source = f"RUN_DIR = {str(run_dir)!r}"
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(run_dir)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6
    assert not (run_dir / "report.html").exists()  # the notebook only reads


def test_measured_behaviour_shows_in_the_candidate_views(tmp_path: Path) -> None:
    from discopop.contract.checks import check_loss
    from discopop.contract.losses import load_loss

    overshoot = _loss("overshoot", "    return (rho - 1 / (2 * beta)) ** 2\n")  # IPO: pulls rho back to 1/(2 beta)
    arch = Archive(tmp_path / ARCHIVE_NAME)
    row = arch.add(Candidate(name="overshoot", code=overshoot, proposer="evolution"), 1)
    arch.finish(row, "scored", fitness=0.5, metrics={"reward": 0.5, "kl": 0.1,
                                                     "checks": check_loss(load_loss(overshoot), beta=0.1).as_dict()})
    twin = arch.add(Candidate(name="overshoot_x2", code=overshoot.replace("** 2", "** 2 * 2.0"),
                              proposer="evolution"), 1)
    arch.finish(twin, "duplicate", error=f"same training behaviour as #{row} (overshoot)")
    arch.close()
    rows = report.load_rows(tmp_path)
    pushes = ("raising the chosen log-prob raises the loss at x = 1, 1.5, 2, 2.5, 3; "
              "raising the rejected log-prob lowers the loss at x = 1, 1.5, 2, 2.5, 3")
    assert report.leaderboard(rows)[0]["behaviour (checks)"] == pushes
    captions = report.loss_shapes_view(rows).captions
    assert any(c.startswith(f"#{row} overshoot, measured by its checks: uses beta; at beta=0.1:") and pushes in c
               for c in captions), captions
    assert pushes in _sections(report.write_report(tmp_path).read_text(encoding="utf-8"))["leaderboard"]
    assert report.failure_reason(rows[1]) == "same training behaviour as #N (…)"


def test_the_frontier_has_one_series_per_loss_with_escaped_labels(run_dir: Path) -> None:
    from discopop.report.frontier import frontier_view, frontiers

    arch = Archive(run_dir / ARCHIVE_NAME)
    _scored(arch, "$x^2$ <b>", DPO.replace("dpo", "mathy"), 4, 0.9, [1])
    arch.close()
    rows = report.load_rows(run_dir)
    expected = frontiers(rows)
    # every baseline (3) and the top 5 evolved (of 5 scored), each with its three learning rates in rate order
    assert len(expected) == 8 and all(len(f.points) == 3 for f in expected)
    assert [p[1] for p in expected[0].points] == sorted(p[1] for p in expected[0].points)
    view = frontier_view(rows)
    ax = view.figure.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == len(expected) == len(set(labels))
    assert sum("mathy" in label or "x^2" in label for label in labels) == 1
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "#13 $x^2$ <b>" in legend  # a literal dollar: figures are drawn with mathtext off
    view.png_base64()  # renders
