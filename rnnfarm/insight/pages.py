"""Self-contained HTML pages: one file each, inline CSS and SVG, no script, nothing fetched from a network."""

from __future__ import annotations

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
figure.chart { margin: 0; } figure.chart svg { max-width: 100%; height: auto; }
pre.sample { font: 12.5px/1.45 ui-monospace, "DejaVu Sans Mono", monospace; background: #fafafa;
             border: 1px solid #e4e4e4; padding: 8px; white-space: pre-wrap; margin: 4px 0 14px; }
table.samples { width: 100%; } table.samples td.step { width: 6em; white-space: nowrap; text-align: right; }
table.samples pre.sample { margin: 0; }
.legend span { display: inline-block; width: 22px; height: 12px; vertical-align: middle; margin: 0 1px; }
"""


def page(title: str, body: str, style: str = "", *, refresh_s: int | None = None) -> str:
    """A whole HTML document; with ``refresh_s`` the browser reloads it that often (a page of a live run)."""
    reload = f'<meta http-equiv="refresh" content="{refresh_s}">\n' if refresh_s else ""
    return (
        f"<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n{reload}"
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
