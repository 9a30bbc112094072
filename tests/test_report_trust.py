"""The report a user can trust (issue 30 item 6): timing parts that do not overlap, a headline that quotes the
ranking's number and names a reference ahead, legends that cover no data, and wandb runs that stay one per run
directory with the confirmation table and the winner's code logged."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import Collection
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox
from test_report import DPO, LRML, MIXED, make_run

from discopop import report
from discopop.archive import ARCHIVE_NAME, Archive, Row
from discopop.config import RunSettings, WandbSettings
from discopop.fitness.rank_agreement import Agreement
from discopop.proposers.base import Candidate
from discopop.report.document import build_views
from discopop.report.failures import stage_parts, timing_view
from discopop.report.run import load_rows, summary
from discopop.search.screen_agreement import ScreenAgreement

# What the cascade archives for a scored row: ``train`` is the worker's whole job time (its optimisation ``steps``
# and ``score`` included), summed over two lr jobs that ran side by side, so it exceeds the row's wall ``total``;
# ``overhead`` is ``total - steps - score`` (check included) and ``runs`` is a count, not seconds.
CASCADE_SECONDS = {"check": 2.0, "train": 100.0, "steps": 60.0, "score": 25.0, "runs": 2, "overhead": 5.0,
                   "total": 90.0}


def _row(arch: Archive, name: str, code: str, gen: int, fitness: float, seeds: list[float],
         proposer: str = "evolution", seconds: dict | None = None) -> int:
    row = arch.add(Candidate(name=name, code=code, proposer=proposer), gen)
    arch.finish(row, "scored", fitness=fitness, metrics={
        "reward": fitness, "kl": 0.5, "fitness": fitness, "learning_rate": 2e-5,
        "race": {"fitness": seeds, "seeds": list(range(len(seeds))), "learning_rate": 2e-5},
        "seconds": dict(seconds or CASCADE_SECONDS)})
    return row


@pytest.fixture
def close_run(tmp_path: Path) -> Path:
    """A run whose best evolved row has one lucky seed (0.980) but a search mean (0.975) below DPO's (0.985)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    arch = Archive(run_dir / ARCHIVE_NAME)
    _row(arch, "dpo", DPO, 0, 0.985, [0.985, 0.99, 0.98], proposer="reference")
    _row(arch, "lrml", LRML, 0, 0.95, [0.95, 0.95, 0.95], proposer="reference")
    _row(arch, "mixed_exp", MIXED, 1, 0.98, [0.98, 0.97])
    arch.close()
    return run_dir


# --- the timing plot ----------------------------------------------------------------------------------------


def test_stage_parts_do_not_overlap_and_hold_no_counts() -> None:
    parts = stage_parts_of(CASCADE_SECONDS)
    assert set(parts) == {"check", "steps", "score", "train (rest)"}
    assert parts["train (rest)"] == pytest.approx(100.0 - 60.0 - 25.0)
    # Disjoint parts add up to the compute the row used (check + its fine-tunes), never to more.
    assert sum(parts.values()) == pytest.approx(2.0 + 100.0)


def stage_parts_of(seconds: dict) -> dict[str, float]:
    return stage_parts(Row(1, 0, [], "evolution", "x", "", "", "", "scored", None, 0.5, {"seconds": seconds},
                           "", None))


def test_stage_parts_of_a_failed_or_checked_row() -> None:
    assert stage_parts_of({"check": 0.3, "total": 0.4}) == {"check": pytest.approx(0.3)}
    assert stage_parts_of({"check": 0.3, "train": 4.0, "total": 4.5}) == {"check": 0.3, "train (rest)": 4.0}
    assert stage_parts_of({"total": 7.0}) == {"unattributed": 7.0}  # an archive that timed nothing else


def test_the_timing_plot_sums_disjoint_parts(close_run: Path) -> None:
    view = timing_view(load_rows(close_run))
    ax_sum = view.figure.axes[0]
    labels = {t.get_text() for t in ax_sum.get_legend().get_texts()}
    assert labels == {"check", "steps", "score", "train (rest)"}
    heights = sum(p.get_height() for p in ax_sum.patches if isinstance(p, Rectangle))
    assert heights == pytest.approx(3 * 102.0)
    assert "5.1 min" in ax_sum.get_title()  # 306 s of compute, not the 1056 s that stacking every key gives
    assert any("wall time" in c for c in view.captions)  # and beside it what the run took on the clock


# --- the headline -------------------------------------------------------------------------------------------


def test_headline_quotes_the_ranking_number_and_the_reference_ahead(close_run: Path) -> None:
    text = summary(load_rows(close_run))
    assert "0.975" in text and "0.980" not in text  # the search mean over its 2 seeds, not its best seed
    assert "2 seeds" in text
    assert "#1 dpo" in text and "0.985" in text  # the reference that ranks first is named, with its number


def test_headline_without_a_reference_ahead(close_run: Path) -> None:
    arch = Archive(close_run / ARCHIVE_NAME)
    _row(arch, "margin", MIXED.replace("0.5", "0.6"), 2, 0.996, [0.99, 0.996])
    arch.close()
    text = summary(load_rows(close_run))
    assert "#4 margin" in text and "0.993" in text and "ahead" not in text


# --- legends ------------------------------------------------------------------------------------------------


def _data_boxes(ax) -> list[Bbox]:
    """Display-space boxes of everything drawn from data in ``ax``: points of lines and collections, bars."""
    renderer = ax.figure.canvas.get_renderer()
    boxes = []
    for line in ax.get_lines():
        xy = line.get_xydata()
        if len(xy) and line.get_visible():
            pts = line.get_transform().transform(np.asarray(xy, dtype=float))
            if line.get_linestyle() in ("None", "", " ") or len(pts) < 2:
                boxes += [Bbox.from_extents(x - 3, y - 3, x + 3, y + 3) for x, y in pts]
            else:  # a line: sample it densely
                for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
                    for t in np.linspace(0, 1, 20):
                        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                        boxes.append(Bbox.from_extents(x - 1, y - 1, x + 1, y + 1))
    for coll in ax.collections:
        if isinstance(coll, Collection) and len(coll.get_offsets()):
            pts = coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float))
            boxes += [Bbox.from_extents(x - 3, y - 3, x + 3, y + 3) for x, y in pts]
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_height() > 0 and patch.get_width() > 0:
            boxes.append(patch.get_window_extent(renderer))
    clip = ax.get_window_extent(renderer)
    return [b for b in boxes if b.overlaps(clip)]


def _covered(fig) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    legends += [(ax, leg) for leg in fig.legends for ax in fig.axes]
    out = []
    for ax, leg in legends:
        frame = leg.get_window_extent(renderer)
        hits = [b for b in _data_boxes(ax) if b.overlaps(frame)]
        if hits:
            out.append(f"{ax.get_title() or ax}: {len(hits)} data marks under the legend")
    return out


def test_no_legend_covers_data(run_dir: Path) -> None:
    covered = {v.id: _covered(v.figure) for v in build_views(load_rows(run_dir)) if v.figure is not None}
    assert not {k: v for k, v in covered.items() if v}


def _confirmed(i: int, search: float, mean: float, verdict: str | None, proposer: str = "evolution",
               name: str = "") -> Row:
    seeds = [mean - 0.02, mean, mean + 0.02]
    conf = {"mean": mean, "se": 0.01, "fitness": seeds, "vs_dpo": {"verdict": verdict} if verdict else {}}
    return Row(i, 1, [], proposer, name or f"loss_{i}", "", "", "", "scored", None, search, {
        "reward": search, "kl": 0.5, "fitness": search, "confirmation": conf}, "", None)


def test_the_confirmation_legend_covers_no_point() -> None:
    """Five confirmed rows whose fresh-seed means fall on both sides in every corner (the search ranked them
    otherwise): no corner of the axes is free for a legend drawn inside it."""
    rows = [_confirmed(1, 0.90, 0.40, "failed"), _confirmed(2, 0.85, 0.62, "beats"),
            _confirmed(3, 0.80, 0.50, None, "reference", "dpo"), _confirmed(4, 0.75, 0.41, None),
            _confirmed(5, 0.70, 0.60, None, "reference", "lrml")]
    fig = build_views(rows)[0].figure
    assert fig is not None and not _covered(fig)


def test_the_legend_checker_can_fail(run_dir: Path) -> None:
    fig = build_views(load_rows(run_dir))[0].figure
    ax = fig.axes[0]
    ax.legend(["x"], loc="center", bbox_to_anchor=(0.5, 0.5), bbox_transform=ax.transAxes, fontsize=30)
    ax.scatter([np.mean(ax.get_xlim())], [np.mean(ax.get_ylim())])
    assert _covered(fig)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "full")


def test_report_still_renders(close_run: Path) -> None:
    assert "0.975" in report.write_report(close_run).read_text(encoding="utf-8")


# --- wandb --------------------------------------------------------------------------------------------------


def _offline(run_dir: Path):
    from discopop.report.tracking import Tracker

    return Tracker(WandbSettings(mode="offline", project="discopop-test"), run_dir, {"training": {"beta": 0.5}})


def test_wandb_keeps_one_run_per_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    first, twin = tmp_path / "a" / "run", tmp_path / "b" / "run"  # two directories with the same name
    ids = []
    for run_dir in (first, first, twin):  # a run, its --resume, another run
        run_dir.mkdir(parents=True, exist_ok=True)
        tracker = _offline(run_dir)
        ids.append(tracker.run.id)
        tracker.finish()
    assert ids[0] == ids[1] != ids[2]
    folders = sorted(p.name for p in (first / "wandb").glob("offline-run-*"))
    # both sync into one run (wandb adds "-1" to a folder name when two starts fall in the same second)
    assert len(folders) == 2 and all(f"-{ids[0]}" in f for f in folders)


def _transaction_log(path: Path, expected: bytes, patience: float = 60.0) -> bytes:
    """The offline run's transaction log once it holds ``expected`` (or as it is after ``patience`` seconds): wandb's
    service process may still be closing the file when ``finish`` returns (seen on a loaded machine: only the
    7-byte header was there), so the test waits for the write instead of racing it."""
    deadline = time.monotonic() + patience
    while expected not in (data := path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return data


def test_wandb_logs_the_confirmation_table_and_the_winner_code(run_dir: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = _offline(run_dir)
    tracker.log_results(load_rows(run_dir))
    tracker.log_screen(ScreenAgreement(12, 3, Agreement(0.875, 0.625, 0.9375, 9, 0.9)))  # the run's screen
    tracker.finish()
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in (folder / "files").rglob("*.table.json")}
    conf = tables["confirmation"]
    assert [r[2] for r in conf["data"]] == ["mixed_exp", "lrml", "dpo"]  # the confirmed rows, in rank order
    assert conf["columns"][5] == "fresh mean" and all(0.4 < r[5] < 0.7 and r[7] == 3 for r in conf["data"])
    assert "beats" in conf["data"][0][8] and conf["data"][2][8] == "baseline"
    assert tables["winner"]["data"][0][1] == "mixed_exp" and "torch.exp(-x)" in tables["winner"]["data"][0][2]
    logged = _transaction_log(next(folder.glob("*.wandb")), b"winner/search_mean")
    assert b"winner/code" in logged and b"winner/search_mean" in logged  # in the run's summary too
    logged = _transaction_log(next(folder.glob("*.wandb")), b"screen/rho_lower")
    assert b"screen/rho_lower" in logged and b"0.625" in logged and b"screen/stopped" in logged


def test_logged_code_and_names_are_cleaned(run_dir: Path) -> None:
    from discopop.report.tracking import winner_summary

    rows = load_rows(run_dir)
    best = next(r for r in rows if r.name == "mixed_exp")
    best.name, best.code = "evil\x1b]0;title\x07", best.code + "# \x1b[2J\u202e\n"
    found = winner_summary(rows, 0.5)
    assert "\x1b" not in found["winner/name"] + found["winner/code"] and "\u202e" not in found["winner/code"]
    assert found["winner/code"].count("\n") == best.code.count("\n") and found["winner/beta"] == 0.5


def test_the_loop_logs_its_results_once_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's events reach the tracker (its wandb display): every archived row, once the run (and its
    confirmation) is done, and the wandb run is finished at the end."""
    from scripted_executor import Script, ScriptedExecutor, ScriptedProposer, candidate
    from test_loop import REFS, config, display

    from discopop.config.compose import compose
    from discopop.report.tracking import Tracker, TrackerDisplay
    from discopop.search.events import Displays
    from discopop.search.loop import Loop

    logged: list[list[Row]] = []
    finished: list[bool] = []
    monkeypatch.setattr(Tracker, "log_results", lambda self, rows: logged.append(rows))
    monkeypatch.setattr(Tracker, "finish", lambda self: finished.append(True))
    per_candidate: list[str] = []
    monkeypatch.setattr(Tracker, "log_candidate", lambda self, row_id, name, *rest: per_candidate.append(name))
    screens: list[ScreenAgreement] = []
    monkeypatch.setattr(Tracker, "log_screen", lambda self, record: screens.append(record))
    cfg, _ = compose(["baselines=[dpo,lrml]", "confirm.seeds=0", "wandb.mode=disabled", "selection.max_seeds=1"])
    tracker = Tracker(WandbSettings(mode="disabled"), tmp_path, {})
    loop = Loop(RunSettings.coerce(config(cfg, candidates_per_generation=1)), tmp_path,
                Displays(display(), TrackerDisplay(tracker)),
                proposer=ScriptedProposer({1: [candidate("a")]}),
                executor=ScriptedExecutor({**REFS, "a": Script(fitness=0.7)}), task_meta={"pairs": 64})
    try:
        loop.run(1)
    finally:
        loop.archive.close()
    assert len(logged) == 1 and sorted(r.name for r in logged[0]) == ["a", "dpo", "lrml"]
    assert finished == [True] and sorted(per_candidate) == ["a", "dpo", "lrml"]
    assert [(r.screened, r.stopped) for r in screens] == [(1, 1)]  # once, after the generations (a: 0.7, stopped)
