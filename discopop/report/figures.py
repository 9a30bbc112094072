"""What every figure shares: the ``View`` a section is made of, the palette, and the Agg canvas.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot state, so the
notebook's inline backend is left alone) and use the Okabe-Ito colour-blind-safe palette.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from discopop.report.escape import no_mathtext, plain_text_figures
from discopop.status import Status

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}  # fmt: skip
GREY = "#8C8C8C"
STATUS_COLOURS = {
    Status.SCORED: OKABE_ITO["green"], Status.INVALID: OKABE_ITO["vermillion"], Status.DUPLICATE: GREY,
    Status.TRAIN_FAILED: OKABE_ITO["orange"], Status.EVAL_FAILED: OKABE_ITO["purple"],
    Status.PROPOSED: OKABE_ITO["sky"],
}  # fmt: skip
BASELINE_STYLE = {"dpo": (OKABE_ITO["black"], "--"), "lrml": (OKABE_ITO["purple"], "-.")}
SERIES_COLOURS = [OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "sky", "yellow")]
FITNESS_LABEL = "fitness (held-out reward)"
CMAP = "viridis"  # perceptually uniform and colour-blind safe
DPI = 100


@dataclass
class View:
    """One section of the report: a figure, some HTML (tables, diffs), or a note saying why neither."""

    id: str
    title: str
    about: str
    figure: Figure | None = None
    html: str = ""
    note: str | None = None
    captions: list[str] = field(default_factory=list)

    def png_base64(self) -> str | None:
        """The figure as base64 PNG (what the HTML report embeds), or None without a figure."""
        if self.figure is None:
            return None
        return base64.b64encode(png_bytes(self.figure)).decode("ascii")

    def _repr_html_(self) -> str:
        parts = [f"<h3>{html.escape(self.title)}</h3>"]
        if self.note:
            parts.append(f"<p><em>{html.escape(self.note)}</em></p>")
        parts.append(self.html)
        if self.figure is not None:
            parts.append(f'<img src="data:image/png;base64,{self.png_base64()}" alt="{html.escape(self.title)}">')
        parts += [f"<p><small>{html.escape(c)}</small></p>" for c in self.captions]
        return "\n".join(parts)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    with plain_text_figures():  # untrusted names are labels: never mathtext (ticks made while drawing included)
        FigureCanvasAgg(no_mathtext(fig)).print_png(buf)
    return buf.getvalue()


def new_figure(width: float = 9.0, height: float = 5.0) -> Figure:
    """A figure on its own Agg canvas (constrained layout), never registered with pyplot."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def generation_ticks(ax, gens: list[int]) -> None:
    """Integer generation ticks (every one while they fit)."""
    lo, hi = min(gens), max(gens)
    if hi - lo <= 25:
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def legend_beside(ax, **kwargs):
    """The axes' legend outside it, to the right (constrained layout makes room), so it never covers data.

    A legend inside the axes ("best", a corner, headroom added to the y limits) covers points whenever the
    data reaches every corner, which a run's numbers decide and no fixed placement can rule out.
    """
    kwargs.setdefault("fontsize", 8)
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)
