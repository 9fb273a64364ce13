"""The report's figures (matplotlib, drawn off-screen with Agg): per-tensor L2 norm and std in model order,
histograms of chosen tensors, and the drift from A to B (relative change and cosine per tensor).

Figures are built on :class:`matplotlib.figure.Figure` directly, never through pyplot, so that paramio
changes no global backend or state of the caller's matplotlib. Rows are tensors in model (file) order, one
row each, so that the names stay legible at any count (the figure grows with the model); a tie group is one
row, labelled with all its names and drawn in its own colour.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import ParamioError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .diff import Diff
    from .stats import Stats, TensorStats

__all__ = ["MissingExtraError", "overview_figure", "single_figure", "render"]

_ROW = 0.17  # inches per tensor row: 7.5 pt names stay apart
_PLAIN, _TIED, _CHANGED = "#4c72b0", "#dd8452", "#c44e52"
_STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "ytick.labelsize": 7.5, "xtick.labelsize": 7.5,
          "svg.hashsalt": "paramio", "svg.fonttype": "path", "axes.spines.top": False, "axes.spines.right": False}


class MissingExtraError(ParamioError, ImportError):
    """An optional dependency is not installed (exit 2, with the install command)."""


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtraError("plots need matplotlib: pip install 'paramio[report]' (or pip install matplotlib)"
                                ) from e
    return matplotlib, Figure


def _label(s: TensorStats) -> str:
    return s.name + (f" = {' = '.join(s.aliases)}" if s.aliases else "")


def _log_bars(ax, values: Sequence[float | None], colors: Sequence[str], xlabel: str, infinite: str = "∞") -> None:
    """Horizontal bars on a log axis, one row per tensor (row 0 at the top); zeros and missing values are
    written as text at the axis' left edge, since a log axis cannot show them."""
    from matplotlib.ticker import LogLocator

    positive = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    lo = min(positive) / 3 if positive else 1e-3
    hi = max(positive) * 2 if positive else 1.0
    rows = range(len(values))
    widths = [v - lo if (v is not None and v > 0 and math.isfinite(v)) else 0 for v in values]
    ax.barh(list(rows), widths, color=list(colors), height=0.72, left=lo)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    for row, v in zip(rows, values):
        if v is None or not (v > 0) or not math.isfinite(v):
            text = "—" if v is None else ("0" if v == 0 else (infinite if math.isinf(v) else str(v)))
            ax.text(lo * 1.1, row, text, va="center", ha="left", fontsize=7, color="#555555")
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # labelled on a short axis, never crowded
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", which="major", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)


def _label_width(labels: Sequence[str], size: float = 7.5) -> float:
    """Inches the longest of ``labels`` takes (measured on the longest few by length)."""
    _matplotlib()  # the first use of matplotlib: a missing extra is a MissingExtraError, not an ImportError
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    measure, font = TextToPath(), FontProperties(size=size)
    longest = sorted(labels, key=len, reverse=True)[:5]
    return max((measure.get_text_width_height_descent(t, font, ismath=False)[0] / 72 for t in longest), default=0)


class _Page:
    """Bands stacked top to bottom on a figure of fixed width, in inches; the figure is made at the end,
    when its height is known. Laid out by hand (no layout engine): with a hundred tensor names the
    automatic layouts spend most of the drawing time measuring tick labels."""

    WIDTH = 12.0

    def __init__(self, title: str) -> None:
        self.title = title
        self.bands: list[tuple[float, object]] = []  # (height, draw(fig, bottom, top) in figure fractions)

    def add(self, height: float, draw) -> None:
        self.bands.append((height, draw))

    def figure(self):
        matplotlib, Figure = _matplotlib()
        head = 0.45
        total = head + sum(h for h, _ in self.bands)
        with matplotlib.rc_context(_STYLE):
            fig = Figure(figsize=(self.WIDTH, total))
            fig.text(0.01, 1 - 0.12 / total, self.title, ha="left", va="top", fontsize=10, fontweight="bold")
            top = total - head
            for height, draw in self.bands:
                draw(fig, (top - height) / total, top / total)
                top -= height
        return fig


def _rows_band(page: _Page, labels: list[str], titles: tuple[str, str], draw_pair) -> None:
    """A band of two panels side by side, one row per tensor, the names on the left."""
    count = len(labels)
    left = _label_width(labels) + 0.55  # the names, and the rotated axis label beside them
    height = 0.6 + _ROW * max(count, 3) + 0.6

    def draw(fig, bottom: float, top: float) -> None:
        total = fig.get_figheight()
        grid = fig.add_gridspec(1, 2, left=left / _Page.WIDTH, right=1 - 0.25 / _Page.WIDTH, wspace=0.08,
                                bottom=bottom + 0.6 / total, top=top - 0.55 / total)
        axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
        for ax, title in zip(axes, titles):
            ax.set_title(title, loc="left")
            ax.set_ylim(count - 0.5, -0.5)  # model order, top to bottom
        axes[0].set_yticks(range(count), labels)
        axes[0].tick_params(axis="y", length=0)
        axes[1].set_yticks([])
        axes[0].set_ylabel(f"tensor (model order, {count} rows)")
        draw_pair(*axes)

    page.add(height, draw)


def _stored_rows(stats: Stats) -> list[TensorStats]:
    return [s for s in stats.stored if s.kind != "gradient" and s.numel]


def add_norms(page: _Page, stats: Stats) -> None:
    """Per-tensor L2 norm and std, model order; tie groups in their own colour."""
    rows = _stored_rows(stats)
    colors = [_TIED if s.aliases else _PLAIN for s in rows]

    def pair(left, right) -> None:
        _log_bars(left, [s.l2_norm for s in rows], colors, "L2 norm ‖w‖ (parameter units, log scale)")
        _log_bars(right, [s.std for s in rows], colors, "std of the values (parameter units, log scale)")
        if any(s.aliases for s in rows):
            from matplotlib.patches import Patch

            # above the panel titles, at the band's top right: never over a bar or a title
            right.legend(handles=[Patch(color=_PLAIN, label="one name"),
                                  Patch(color=_TIED, label="tie group: one tensor, several names (= aliases)")],
                         loc="lower right", bbox_to_anchor=(1.0, 1.0), bbox_transform=_above(right, 0.22), ncol=2,
                         fontsize=7, frameon=False, borderaxespad=0.0)

    _rows_band(page, [_label(s) for s in rows], ("L2 norm per tensor", "standard deviation per tensor"), pair)


def _above(ax, inches: float):
    """A transform that puts (1, 1) ``inches`` above the axes' top right corner."""
    from matplotlib.transforms import ScaledTranslation

    return ax.transAxes + ScaledTranslation(0, inches, ax.figure.dpi_scale_trans)


def add_histograms(page: _Page, chosen: Sequence[TensorStats], columns: int = 3) -> None:
    """Histograms (counts on a log scale) of the chosen tensors, over their finite values."""
    if not chosen:
        return
    rows = math.ceil(len(chosen) / columns)
    cell = 2.7

    def draw(fig, bottom: float, top: float) -> None:
        total = fig.get_figheight()
        grid = fig.add_gridspec(rows, columns, left=0.7 / _Page.WIDTH, right=1 - 0.25 / _Page.WIDTH,
                                bottom=bottom + 0.5 / total, top=top - 0.45 / total, wspace=0.3, hspace=0.75)
        for i, s in enumerate(chosen):
            _histogram(fig.add_subplot(grid[i // columns, i % columns]), s)

    page.add(rows * cell, draw)


def _histogram(ax, s: TensorStats) -> None:
    title = _label(s) + f"\n{s.dtype}{list(s.shape)}, {s.numel:,} values"
    if s.nonfinite:
        title += f", {s.nan_count:,} NaN, {s.inf_count:,} Inf (not drawn)"
    ax.set_title(title, loc="left", fontsize=7.5)
    if s.hist_counts:
        ax.stairs(s.hist_counts, s.hist_edges, fill=True, color=_TIED if s.aliases else _PLAIN)
        nonzero = [c for c in s.hist_counts if c]
        logarithmic = max(nonzero) > 50 * min(nonzero)  # tails visible; small tensors read better linear
        if logarithmic:
            from matplotlib.ticker import NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("count (log scale)" if logarithmic else "count")
        if s.mean is not None and s.std is not None:
            ax.axvline(s.mean, color="#333333", linewidth=0.8)
            ax.text(0.98, 0.95, f"mean {s.mean:.3g}\nstd {s.std:.3g}", transform=ax.transAxes, ha="right",
                    va="top", fontsize=7, bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1.5})
    else:
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
    ax.set_xlabel("value (parameter units)")


def add_drift(page: _Page, result: Diff, order: Sequence[TensorStats]) -> None:
    """Relative change ‖B−A‖/‖A‖ and 1 − cosine(A, B) per tensor, in A's model order; changed tensors in
    their own colour, tie groups labelled with all their names."""
    rows = [s for s in order if s.name in result.details and s.kind != "gradient"]
    details = [result.details[s.name] for s in rows]
    colors = [_CHANGED if d.changed else (_TIED if s.aliases else _PLAIN) for s, d in zip(rows, details)]

    def pair(left, right) -> None:
        _log_bars(left, [d.rel_change for d in details], colors,
                  "relative change ‖B − A‖ / ‖A‖ (log scale; 0 = unchanged)", infinite="changed from ‖A‖ = 0")
        _log_bars(right, [None if math.isnan(d.cosine) else 1 - d.cosine for d in details], colors,
                  "1 − cosine similarity of A and B (log scale; 0 = same direction)")

    _rows_band(page, [_label(s) for s in rows], ("relative change per tensor (changed in red)",
                                                 "direction change per tensor"), pair)


def overview_figure(stats: Stats, chosen: Sequence[TensorStats], title: str) -> Figure:
    """One figure: norms and std on top, the histograms below."""
    page = _Page(title)
    add_norms(page, stats)
    add_histograms(page, chosen)
    return page.figure()


def single_figure(kind: str, stats: Stats, title: str, *, chosen: Sequence[TensorStats] = (),
                  result: Diff | None = None) -> Figure:
    """One of the parts alone (for the HTML page): "norms", "histograms" or "drift"."""
    page = _Page(title)
    if kind == "histograms":
        add_histograms(page, chosen)
    elif kind == "drift":
        assert result is not None
        add_drift(page, result, stats.stored)
    else:
        add_norms(page, stats)
    return page.figure()


def render(fig: Figure, fmt: str, dpi: int = 110) -> bytes:
    """The figure's bytes, ``fmt`` "png" or "svg", without what would change from run to run (matplotlib's
    date and version stamps; SVG ids are seeded by ``svg.hashsalt``)."""
    matplotlib, _ = _matplotlib()
    buffer = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    with matplotlib.rc_context(_STYLE):
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()
