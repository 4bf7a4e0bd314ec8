"""Following a run from its driver: what its trials store shows on the terminal and in the live report.

Training happens in Ray's workers while the driver waits; a background thread in the driver polls the
evaluations the trials store (``layout.Trial.evaluations``), so what it shows is what was stored. Each new
evaluation updates the live display (on a terminal: ``display.Terminal``) and rewrites the run's report,
which can then be opened while the run goes on. The workers never touch the report.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from .. import log
from ..insight import report
from ..layout import Run
from ..spec import JobSpec
from .display import Terminal

ATTACH_EVERY = 0.2  # seconds between looks for Ray's start, to route its workers' lines from the first
# The live report takes at most this share of the driver's time: after a write that took t seconds, the
# next waits 1/share * t, and the evaluations stored meanwhile go into it (a 64-trial report takes seconds).
REPORT_SHARE = 0.1


class Follower:
    """The evaluations a run's trials have stored since it started following, passed on as they come."""

    def __init__(self, run: Run, terminal: Terminal | None) -> None:
        self.run, self.terminal = run, terminal
        self.seen: dict[str, int] = {}  # trial -> last step passed on
        self.reported = False
        self.pending = False  # evaluations stored since the live report was last written
        self.next_report = 0.0  # time.monotonic() from which it may be written again

    def skip_existing(self) -> None:
        """What an earlier, resumed attempt stored informs the display (best, rates) but is not news."""
        for trial in self.run.trials():
            for m in self.run.trial(trial).evaluations():
                self._show(trial, m)

    def _show(self, trial: str, m: dict[str, Any]) -> None:
        self.seen[trial] = m["step"]
        if self.terminal is not None:
            self.terminal.display.evaluated(trial, m)

    def poll(self) -> int:
        """Pass on the evaluations stored since the last poll; rewrite the report when there were any (or
        when some came while the last write's share of time ran)."""
        if self.terminal is not None:
            self.terminal.attach_ray()
        new = 0
        for trial in self.run.trials():
            for m in self.run.trial(trial).evaluations():
                if m["step"] > self.seen.get(trial, -1):
                    self._show(trial, m)
                    new += 1
        self.pending = self.pending or new > 0
        if self.pending and time.monotonic() >= self.next_report:
            started = time.monotonic()
            report.write_live(self.run)
            self.next_report = time.monotonic() + (time.monotonic() - started) / REPORT_SHARE
            self.pending, self.reported = False, True
        if self.terminal is not None:
            self.terminal.file.sync()
        return new


@contextlib.contextmanager
def follow(
    run: Run, spec: JobSpec, *, verbose: bool = False, out: TextIO | None = None, interval: float = 2.0
) -> Iterator[Follower | None]:
    """Follow the run while the block runs (a run on this machine's Ray: ``local`` or ``auto``); on a terminal
    (``out``, stderr by default) with the live display and the log routing of ``display.Terminal``."""
    out = out or sys.stderr
    if spec.cluster.address not in ("local", "auto"):
        yield None
        return
    terminal = None
    if out.isatty() and log.log_format() == "console":
        from rich.console import Console

        terminal = Terminal(run, spec, verbose=verbose, console=Console(file=out))
        terminal.start()
    follower, stop = Follower(run, terminal), threading.Event()

    def poll() -> None:
        try:
            follower.poll()
        except Exception as exc:  # storage hiccups only delay the display; training goes on regardless
            log.get("rnnfarm.progress").debug("progress poll failed", error=str(exc))

    def loop() -> None:
        with contextlib.suppress(Exception):
            follower.skip_existing()
        last = time.monotonic()
        while not stop.wait(ATTACH_EVERY):
            if terminal is not None:  # soon after ray.init, before the workers' first lines arrive
                terminal.attach_ray()
            if time.monotonic() - last >= interval:
                poll()
                last = time.monotonic()

    thread = threading.Thread(target=loop, name="rnnfarm-progress", daemon=True)
    thread.start()
    try:
        yield follower
    finally:
        stop.set()
        thread.join()
        poll()
        if follower.reported:  # a live report may have landed after the final one: write the run's state again
            report.write_live(run)
        if terminal is not None:
            terminal.stop()
