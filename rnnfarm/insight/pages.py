"""Self-contained HTML pages: one file each, inline CSS and SVG, no script, nothing fetched from a network."""

from __future__ import annotations

import math
from html import escape

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #666; } a { color: #1558b0; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.text { font: 13px/1.6 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap; word-break: break-all;
        background: #fff; border: 1px solid #ddd; padding: 10px; }
.text span.nl { color: #bbb; }
.text span.u { background: #e4e4e4; color: #999; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plot text { font: 11px system-ui, sans-serif; fill: #444; }
pre.sample { font: 12.5px/1.45 ui-monospace, "DejaVu Sans Mono", monospace; background: #fafafa;
             border: 1px solid #e4e4e4; padding: 8px; white-space: pre-wrap; margin: 4px 0 14px; }
table.samples { width: 100%; } table.samples td.step { width: 6em; white-space: nowrap; text-align: right; }
table.samples pre.sample { margin: 0; }
.legend span { display: inline-block; width: 22px; height: 12px; vertical-align: middle; margin: 0 1px; }
"""

# Distinct line colours for plots (Tableau 10).
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def page(title: str, body: str, style: str = "") -> str:
    """A whole HTML document."""
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}{style}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def table(header: list[str], rows: list[list[object]], numeric: set[int] | None = None, cls: str = "") -> str:
    """A table of already formatted cells; columns in ``numeric`` are right-aligned."""
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    lines = []
    for r in rows:
        cells = "".join(f"<td{' class=num' if i in numeric else ''}>{escape(str(v))}</td>" for i, v in enumerate(r))
        lines.append(f"<tr>{cells}</tr>")
    attr = f" class={cls}" if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def diverging(value: float) -> str:
    """A background for a value in [-1, 1]: blue below zero, white at zero, red above (as in char-rnn's pictures)."""
    v = max(-1.0, min(1.0, value))
    fade = round(255 - 200 * abs(v))
    return f"rgb(255,{fade},{fade})" if v >= 0 else f"rgb({fade},{fade},255)"


def likelihood(p: float) -> str:
    """A background for a probability: red when unlikely, through yellow, to green when likely."""
    return f"hsl({round(120 * max(0.0, min(1.0, p)))},75%,78%)"


def char_html(char: str) -> str:
    """A character as it shows inside a coloured span: a newline as a faint ↵ (the line break follows the span)."""
    if char == "\n":
        return "<span class=nl>↵</span>"
    return escape(char)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    """A tick label: 0.25, 3, 12.5k, 1.2M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= 10 * scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.3g}"


def line_plot(
    series: list[tuple[str, list[float], list[float | None]]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 420,
    height: int = 260,
) -> str:
    """An inline SVG line plot: one polyline (and its points) per named series, with axes, ticks and a legend."""
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    left, right, top, bottom = 58, 12, 26, 40
    legend_h = 15 * len(series)
    inner_w, inner_h = width - left - right, height - top - bottom
    svg = [
        f'<svg class="plot" width="{width}" height="{height + legend_h}" viewBox="0 0 {width} {height + legend_h}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="16" style="font-weight:600">{escape(title)}</text>',
    ]
    if not points:
        svg.append(f'<text x="{left}" y="{top + 20}">no data yet</text></svg>')
        return "".join(svg)
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * inner_w

    def sy(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * inner_h

    svg.append(f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="#fff" stroke="#bbb"/>')
    for t in _ticks(y_lo, y_hi):
        y = sy(t)
        svg.append(f'<line x1="{left}" x2="{left + inner_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    for t in _ticks(x_lo, x_hi):
        x = sx(t)
        svg.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + inner_h}" y2="{top + inner_h + 4}" stroke="#888"/>')
        svg.append(f'<text x="{x:.1f}" y="{top + inner_h + 16}" text-anchor="middle">{_label(t)}</text>')
    svg.append(f'<text x="{left + inner_w / 2:.0f}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    middle = top + inner_h / 2
    svg.append(
        f'<text transform="translate(14 {middle:.0f}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>'
    )
    for i, (name, xs, ys) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        kept = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in kept)
        svg.append(f'<polyline class="series" points="{coords}" fill="none" stroke="{colour}" stroke-width="2">')
        svg.append(f"<title>{escape(name)}</title></polyline>")
        svg.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in kept)
        ly = height + 15 * i + 4
        svg.append(f'<line x1="{left}" x2="{left + 18}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/>')
        svg.append(f'<text x="{left + 24}" y="{ly + 4}">{escape(name)}</text>')
    svg.append("</svg>")
    return "".join(svg)
