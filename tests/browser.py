"""Pages rendered by a real headless Chromium (Debian's package, installed by tests/setup/debian.sh)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
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
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # a page that reached past this machine would show it
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
    assert chromium, "chromium is not installed: run tests/setup/debian.sh (make test does)"
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


class Devtools:
    """A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands
    on its fd 3, replies on its fd 4, each message JSON ended by a NUL), for pages that work after they load."""

    def __init__(self, flags: list[str], profile: str) -> None:
        chromium = shutil.which("chromium")
        assert chromium, "chromium is not installed: run tests/setup/debian.sh (make test does)"
        commands, self._commands = os.pipe()
        self._replies, replies = os.pipe()
        # Copies above any fd the child keeps, so that placing them at 3 and 4 overwrites nothing still needed.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (commands, replies)]
        for fd in (commands, replies):
            os.close(fd)

        def place() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close()): a file never blocks a chatty browser
        self.process = subprocess.Popen(
            [chromium, *FLAGS, *flags, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            pass_fds=(3, 4),
            preexec_fn=place,
        )
        for fd in high:
            os.close(fd)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                self._log.seek(0)
                raise RuntimeError(f"chromium closed the pipe: {self._log.read().decode(errors='replace')[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]
            self.events.append(reply)

    def open(self, url: str) -> str:
        """A new tab at ``url``, its requests recorded in ``events``: the session id to evaluate in."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Network.enable", session=session)
        self.send("Page.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        """The next event ``method`` from the tab (read from the pipe until it comes)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def evaluate(self, session: str, expression: str, timeout: float = 60):
        """The value of a JavaScript expression in the tab (a promise is awaited)."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        result = self.send("Runtime.evaluate", params, session=session, timeout=timeout)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def requested(self) -> list[str]:
        """Every URL the tabs asked for so far."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._commands)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._replies)
        self._log.close()


@contextlib.contextmanager
def devtools(*flags: str) -> Iterator[Devtools]:
    """A fresh headless Chromium (its own empty profile) to drive; closed afterwards."""
    with tempfile.TemporaryDirectory(prefix="rnnfarm-chromium-") as profile:
        browser = Devtools(list(flags), profile)
        try:
            yield browser
        finally:
            browser.close()


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
