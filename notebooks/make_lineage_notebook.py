"""Regenerate ``notebooks/lineage.ipynb`` (outputs-free) from the cells below.

Kept as code so that the notebook's diff in review is this file's diff. Run:
``python notebooks/make_lineage_notebook.py``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PARAMETERS = 'RUN_DIR = "runs/latest"  # papermill: -p RUN_DIR path/to/run_dir\n'

INTRO = """\
# Lineage of a discopop run

A review of one run directory: which losses the search found, where they came from, how they differ
from DPO and LRML, and where the run spent its time and lost its candidates.

The notebook reads the run only through the archive contract (`RUN_DIR/archive.sqlite`, opened
read-only), so it works on a live run or a copied run directory. Set `RUN_DIR` in the first cell,
or run it headless with papermill:
`papermill notebooks/lineage.ipynb out.ipynb -p RUN_DIR runs/<date>/<time>`.
`discopop report RUN_DIR` writes the same views as one self-contained HTML file."""

LOAD = """\
from pathlib import Path

from discopop import report

run_dir = Path(RUN_DIR)
if not run_dir.is_absolute() and not run_dir.exists() and (Path("..") / run_dir).exists():
    run_dir = Path("..") / run_dir  # started from notebooks/: RUN_DIR is relative to the repository root
rows = report.load_rows(run_dir)
print(report.summary(rows))"""

ANCESTRY = """\
best = report.winner(rows)
if best is None:
    print("No scored candidate yet: no winner to trace.")
else:
    by_id = {r.id: r for r in rows}
    for i in sorted(report.ancestry(rows, best.id), key=lambda i: (by_id[i].generation, i)):
        r = by_id[i]
        fitness = "—" if r.fitness is None else f"{r.fitness:.3f}"
        print(f"gen {r.generation:>3}  #{r.id:<5} {r.status:<12} fitness {fitness:>7}  {r.name}"
              f"  parents {r.parent_ids}")"""

# (markdown explanation, view function) in reading order.
VIEWS = [
    ("## Leaderboard\nScored candidates by search fitness; baselines are the `reference` rows. The top "
     "candidates, DPO and the strongest baseline are re-trained on the same fresh seeds at the end of a run "
     "and compared per (seed, prompt): the gain, its 95% CI over seeds and prompts, and the verdict after a "
     "Holm correction over all comparisons (the same words as `discopop leaderboard`) tell you whether a "
     "win is real.", "leaderboard_view"),
    ("## Fitness over generations\nOne dot per scored candidate, the best-so-far step line, and the DPO "
     "and LRML baselines as horizontal lines. A best-so-far line that stays flat for many generations "
     "means the search has stalled.", "fitness_view"),
    ("## Lineage\nWho descends from whom. Columns are generations, arrows go from parent to child, colour "
     "is fitness; grey crosses failed and hollow circles were duplicates. The winner's ancestry is "
     "outlined in vermillion.", "lineage_view"),
    ("The winner's ancestry as a list (oldest first):", None),
    ("## Code changes along the winner's ancestry\nEach parent → child step as a diff of the loss code, "
     "with the proposer's reasoning.", "diffs_view"),
    ("## Loss shapes\nThe loss and its derivative against x = β·ρ for the best evolved candidates next to DPO "
     "and LRML, as in the DiscoPOP paper. The derivative is what the policy feels: where it is near zero a "
     "pair stops contributing.", "loss_shapes_view"),
    ("## Reward against KL\nHeld-out reward against KL from the reference model: up and to the left is "
     "better.", "reward_kl_view"),
    ("## Failures\nCandidates that never got a fitness, by stage and by (normalised) reason. Many failures "
     "at one stage point at the proposer's prompt or at a check that is too strict.", "failures_view"),
    ("## Time per stage\nWhere the compute went, and how much of it was spent on candidates that "
     "failed.", "timing_view"),
]


def build() -> nbformat.NotebookNode:
    """The lineage notebook, without outputs."""
    cells = [new_code_cell(PARAMETERS.rstrip("\n"), metadata={"tags": ["parameters"]}),
             new_markdown_cell(INTRO), new_code_cell(LOAD)]
    for markdown, view in VIEWS:
        cells.append(new_markdown_cell(markdown))
        cells.append(new_code_cell(f"report.show(report.{view}(rows))" if view else ANCESTRY))
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating does not churn the committed file
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


if __name__ == "__main__":
    target = Path(__file__).with_name("lineage.ipynb")
    nbformat.validate(build())
    nbformat.write(build(), target)
    print(f"wrote {target}")
