"""Progress of a run started from a terminal: a line per evaluation of each trial (step, losses, chars/s, ETA).

Training happens in Ray's workers while the driver waits; a background thread in the driver follows the
metrics objects the trials write to storage (``layout.Trial.metrics``), so what it shows
is what was stored. Lines, not a redrawn bar: Ray prints the workers' own log lines to the same terminal.
Nothing is shown when stderr is not a terminal: the JSON log lines carry the same events there.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from .. import log
from ..layout import Run
from ..runs.state import status
from ..spec import JobSpec

BAR = 20


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _rate(m: dict[str, Any], previous: dict[str, Any] | None) -> float | None:
    """Steps per second of wall time, evaluations included: between the last two evaluations when the
    clock ran on between them (not across a resume), else from the training speed alone."""
    if previous is not None and m["elapsed_s"] > previous["elapsed_s"] and m["step"] > previous["step"]:
        return (m["step"] - previous["step"]) / (m["elapsed_s"] - previous["elapsed_s"])
    if m.get("chars_per_s") and m.get("chars") and m["step"]:
        return m["chars_per_s"] / (m["chars"] / m["step"])
    return None


def line(trial: str, m: dict[str, Any], previous: dict[str, Any] | None, steps: int) -> str:
    """One evaluation of one trial, as the progress display shows it."""
    done = min(1.0, m["step"] / steps)
    filled = round(done * BAR)
    rate = _rate(m, previous)
    eta = "ETA -" if rate is None else f"ETA {_duration((steps - m['step']) / rate)}"
    return (
        f"[{trial}] step {m['step']}/{steps} {done:4.0%} |{'#' * filled}{'.' * (BAR - filled)}| "
        f"train {m['train_loss']:.3f} val {m['val_loss']:.3f} nats/char · {m['chars_per_s'] / 1000:,.1f}k chars/s · "
        + ("done" if status(m["step"], target=steps) == "completed" else eta)
    )


class Progress:
    """What a run's trials have stored since the display started, as lines to show."""

    def __init__(self, run: Run, steps: int) -> None:
        self.run, self.steps = run, steps
        self.shown: set[str] = set()
        self.latest: dict[str, dict[str, Any]] = {}

    def _new(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for trial in self.run.trials():
            for item in self.run.trial(trial).metrics_files():
                key = f"{trial}/{item.name}"
                if key not in self.shown:
                    yield trial, key, item.read_json()

    def skip_existing(self) -> None:
        """Take what is already stored (an earlier, resumed attempt) as seen: it only informs the rates."""
        for trial, key, m in self._new():
            self.shown.add(key)
            if m["step"] >= self.latest.get(trial, {}).get("step", -1):
                self.latest[trial] = m

    def poll(self) -> list[str]:
        """Lines for the evaluations stored since the last poll, by trial then step."""
        lines = []
        for trial, key, m in sorted(self._new(), key=lambda t: (t[0], t[2]["step"])):
            lines.append(line(trial, m, self.latest.get(trial), self.steps))
            self.shown.add(key)
            self.latest[trial] = m
        return lines


@contextlib.contextmanager
def follow(run: Run, spec: JobSpec, out: TextIO | None = None, interval: float = 2.0) -> Iterator[Progress | None]:
    """Show the run's progress on ``out`` (stderr) while the block runs, when it is a terminal and the run local."""
    out = out or sys.stderr
    if not out.isatty() or spec.cluster.address != "local":
        yield None
        return
    progress, stop = Progress(run, spec.train.steps), threading.Event()

    def show() -> None:
        try:
            for text in progress.poll():
                print(text, file=out, flush=True)
        except Exception as exc:  # storage hiccups only delay the display; training goes on regardless
            log.get("rnnfarm.progress").debug("progress poll failed", error=str(exc))

    def loop() -> None:
        with contextlib.suppress(Exception):
            progress.skip_existing()
        while not stop.wait(interval):
            show()

    thread = threading.Thread(target=loop, name="rnnfarm-progress", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        show()
