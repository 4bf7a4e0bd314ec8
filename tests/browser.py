"""Pages rendered by a real headless Chromium (Debian's package, installed by tests/setup/chromium.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # a page that reached for the network would show it
]


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def find_all(self, tag: str, cls: str | None = None) -> list[Element]:
        found = []
        for child in self.children:
            if child.tag == tag and (cls is None or cls in child.attrs.get("class", "").split()):
                found.append(child)
            found.extend(child.find_all(tag, cls))
        return found

    @property
    def all_text(self) -> str:
        return self.text + "".join(c.all_text for c in self.children)


class _Tree(HTMLParser):
    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "wbr", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        # Text goes to the open element, in order, as a child, so all_text keeps the document's order.
        self.stack[-1].children.append(Element("#text", {}, data))


def render(page: Path, name: str, height: int = 1600) -> Element:
    """Load ``page`` in headless Chromium; keep a screenshot in test-artifacts/<name>.png; return the DOM it built."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run tests/setup/chromium.sh (make test does)"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"{name}.png"
    screenshot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="rnnfarm-chromium-") as profile:
        done = subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size=1280,{height}",
                f"--screenshot={screenshot}",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert screenshot.stat().st_size > 0
    tree = _Tree()
    tree.feed(done.stdout)
    return tree.root


def chart_ticks(chart: Element) -> list[str]:
    """The tick labels of a report chart (matplotlib's SVG): the text in its xtick_N and ytick_N groups."""
    return [g.all_text.strip() for g in chart.find_all("g") if re.search(r"[xy]tick_\d+$", g.attrs.get("id", ""))]


def chart_x_ticks(chart: Element) -> list[str]:
    return [g.all_text.strip() for g in chart.find_all("g") if re.search(r"xtick_\d+$", g.attrs.get("id", ""))]


def chart_points(chart: Element) -> list[int]:
    """How many marked points each series of a report chart draws, in legend order."""
    lines = [g for g in chart.find_all("g") if re.search(r"series_\d+$", g.attrs.get("id", ""))]
    return [len(g.find_all("use")) for g in lines]


def chart_legend(chart: Element) -> list[str]:
    found = [g for g in chart.find_all("g") if re.search(r"legend_\d+$", g.attrs.get("id", ""))]
    return [t.all_text.strip() for g in found for t in g.find_all("text")]
