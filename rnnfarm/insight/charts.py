"""The report's charts: matplotlib line charts rendered to inline SVG (text kept as text, no script).

matplotlib's Agg backend needs no display, and a fixed font (DejaVu Sans, which matplotlib ships) with a
fixed hash salt makes the same data give the same SVG bytes. Ticks read as plain numbers (1000, 1.2k),
a one-point series is a marked point on an axis from step 0, loss axes may be log-scaled, and the
legend sits below the axes in as many columns as fit, so it never covers ticks or lines.
"""

from __future__ import annotations

import io
import math
import re
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
from matplotlib import ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "svg.fonttype": "none",  # tick labels and legends stay <text>: readable, searchable, testable
    "svg.hashsalt": "rnnfarm",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "axes.prop_cycle": matplotlib.cycler(color=plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors),
}
DPI = 96
Series = list[tuple[str, list[float], list[float | None]]]  # (name, steps, values); a None value is not drawn


def number(value: float, _position: object = None) -> str:
    """A tick label: 0.25, 3, 1000, 12.5k, 1.2M; never exponent notation."""
    for scale, suffix, start in ((1e9, "G", 1e9), (1e6, "M", 1e6), (1e3, "k", 1e4)):
        if abs(value) >= start:
            return f"{value / scale:.3g}{suffix}"
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.4g}"
    return f"{value:.8f}".rstrip("0")


def line_chart(series: Series, title: str, y_label: str, **layout: Any) -> str:
    """An inline SVG of named (steps, values) series, each drawn as a line with its points marked;
    ``layout`` is ``figure``'s (log_y, width, height, floor)."""
    with plt.rc_context({**STYLE, "svg.hashsalt": f"rnnfarm-{title}"}):
        fig = figure(series, title, y_label, **layout)
        sink = io.StringIO()
        fig.savefig(sink, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = sink.getvalue()
    svg = svg[svg.index("<svg") :]  # no XML prolog or doctype inside the HTML page
    return f'<figure class="chart" data-title="{escape(title)}">{_ids(svg, title)}</figure>'


def figure(
    series: Series,
    title: str,
    y_label: str,
    *,
    log_y: bool = False,
    width: int = 420,
    height: int = 260,
    floor: float | None = None,
) -> Figure:
    """The chart as a matplotlib figure: constrained layout keeps ticks, labels and the legend apart."""
    columns = _columns(series, width)
    legend_rows = math.ceil(len(series) / columns) if len(series) > 1 else 0
    fig = plt.figure(figsize=(width / DPI, (height + 13 * legend_rows) / DPI), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for i, (name, xs, ys) in enumerate(series):
        kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
        if kept:
            points = zip(*kept, strict=True)
            ax.plot(*points, marker="o", markersize=3.5, linewidth=1.6, label=name, gid=f"series_{i}")
            drawn += 1
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    ax.set_xlabel("step")
    ax.set_ylabel(y_label)
    if not drawn:
        ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", color="#888")
    else:
        steps = [x for _, xs, _ in series for x in xs]
        ax.set_xlim(0, max(steps) * 1.04 or 1)  # training starts at step 0: one point is not a whole axis
        values = [y for _, _, ys in series for y in ys if y is not None and math.isfinite(y)]
        if min(values) == max(values):  # one value: an axis a little either side of it
            ax.set_ylim(values[0] * 0.8 or -1, values[0] * 1.25 or 1)
        if floor is not None:  # a quantity that cannot go below it (a share, a length): the axis starts there
            top = ax.get_ylim()[1]
            ax.set_ylim(floor, top if top > floor else floor + 1)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=5, integer=True, min_n_ticks=2))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(number))
    if log_y and drawn:
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        wide = hi / lo >= 2.5  # else too few of 1, 1.5, 2, 3... fall in view: evenly spaced values instead
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=subs) if wide else ticker.MaxNLocator(nbins=4))
        ax.yaxis.set_minor_locator(ticker.NullLocator())
    else:
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=5))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(number))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    if legend_rows and drawn:
        fig.legend(
            loc="outside lower left",
            ncols=columns,
            frameon=False,
            fontsize=8,
            handlelength=1.5,
            columnspacing=1.0,
        )
    return fig


def _columns(series: Series, width: int) -> int:
    """How many legend entries fit side by side in the chart's width."""
    longest = max((len(name) for name, _, _ in series), default=1)
    return max(1, min(len(series), int(width // (longest * 6 + 34))))


def _ids(svg: str, title: str) -> str:
    """Ids unique to this chart, so several charts inline in one page keep their own clip paths."""
    prefix = re.sub(r"\W", "-", title)
    svg = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    return re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg).replace(
        'xlink:href="#', f'xlink:href="#{prefix}-'
    )
