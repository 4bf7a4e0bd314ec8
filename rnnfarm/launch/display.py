"""What a terminal shows while a run trains: a live ``rich`` display, quiet logs above it, every event in a file.

On a terminal the driver's structlog events, Ray's own loggers and the lines Ray forwards from its workers
all pass through one ``Router``: each becomes a JSON line of the run's log file, and only warnings and
errors (with ``-v``, info events too) reach the screen, as short lines printed above the display. Ray's
chatter that means nothing to a user (its placement-group clean-up, deprecation notices, its start-up
banner) stays in the file. Off a terminal none of this is set up: the JSON lines go to stderr as before.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from .. import log
from ..insight import ngram
from ..layout import SINGLE_TRIAL, Run
from ..redact import scrub
from ..spec import JobSpec
from ..storage import is_local

BAR_WIDTH = 20
# Lines of Ray's that tell a user nothing they can act on: kept in the log file, off the screen.
CHATTER = re.compile(
    r"PlacementGroupCleaner|placement_group_cleaner|controller actor .*is dead|[Dd]eprecat|"
    r"Started a local Ray instance|Connected to Ray cluster|View the dashboard|safe to ignore|Setting up process group|"
    r"Started training worker group|Moving model to device|Wrapping provided model|FutureWarning"
)
# A line of Ray's at warning level or above (its records read "<time>\tWARNING file.py:NN -- message").
ALERT = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
QUIET_SOURCES = ("pid=autoscaler", "PlacementGroupCleaner")  # status dumps; clean-up after stopped trials
SHOWN = {"warning": 30, "error": 40, "critical": 50, "info": 20, "debug": 10}
# The fields a short line keeps, in order, with how each reads.
BRIEF = (
    "status",
    "step",
    "steps",
    "val_loss",
    "train_loss",
    "best_val_loss",
    "trials",
    "error",
    "reason",
    "url",
    "held_by",
)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def short(event: dict[str, Any]) -> Text:
    """An event as one short line: time, level when not info, trial, what happened, a few of its fields."""
    level = str(event.get("level", "info"))
    stamp = str(event.get("timestamp", ""))[11:19] or time.strftime("%H:%M:%S")
    line = Text(f"{stamp} ", style="dim")
    if level != "info":
        line.append(f"{level} ", style="bold red" if level in ("error", "critical") else "bold yellow")
    if event.get("trial"):
        line.append(f"[{event['trial']}] ", style="cyan")
    line.append(str(event.get("event", "")))
    fields = [f"{key.replace('_', ' ')} {_number(event[key])}" for key in BRIEF if event.get(key) is not None]
    if fields:
        line.append(" · " + " · ".join(fields), style="dim")
    return line


class LogFile:
    """The run's log file, ``<run>/log.jsonl``: appended to in place on a local disk; elsewhere kept in a
    local file and uploaded whole (as every object is) at each ``sync`` (every poll of the follower) and
    at the end."""

    def __init__(self, run: Run) -> None:
        self.target = run.log
        self.remote = not is_local(self.target.url)
        if self.remote:  # a resumed run's file goes on from its earlier attempts' events
            self.path = Path(tempfile.mkstemp(prefix="rnnfarm-log-", suffix=".jsonl")[1])
            if self.target.exists():
                self.path.write_bytes(self.target.read_bytes())
        else:
            self.path = Path(self.target.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        with self.lock:
            self.file.write(line.rstrip("\n") + "\n")
            self.file.flush()

    def sync(self) -> None:
        if self.remote:
            with self.lock:
                self.target.write_bytes(self.path.read_bytes())

    def close(self) -> None:
        self.sync()
        with self.lock:
            self.file.close()
        if self.remote:
            self.path.unlink(missing_ok=True)


class Router:
    """Sends every event to the log file and the ones a user should see to the screen (and the display)."""

    def __init__(self, file: LogFile, console: Console, *, verbose: bool, display: Display | None = None) -> None:
        self.file, self.console, self.display = file, console, display
        self.threshold = SHOWN["info" if verbose else "warning"]

    def event(self, event: dict[str, Any], line: str) -> None:
        self.file.write(line)
        if self.display is not None:
            self.display.observe(event)
        if SHOWN.get(str(event.get("level", "info")), 20) >= self.threshold:
            self.console.print(short(event), no_wrap=True, overflow="ellipsis")

    def text(self, line: str, *, source: str) -> None:
        """A line that is not an event of rnnfarm's (Ray's, a worker's print): kept, and shown when it alarms."""
        if not line.strip():
            return
        self.file.write(json.dumps({"event": line, "source": source, "timestamp": _now()}))
        if CHATTER.search(line) or source in QUIET_SOURCES:
            return
        if self.threshold <= SHOWN["info"] or ALERT.search(line):
            self.console.print(Text(f"({source}) {line}", style="yellow"), no_wrap=True, overflow="ellipsis")

    def structlog_sink(self, _logger: Any, _method: str, event: dict[str, Any]) -> str:
        """The last structlog processor: the event goes its ways; structlog itself prints nothing."""
        self.event(dict(event), json.dumps(event, default=str))
        raise structlog.DropEvent

    def worker_lines(self, data: dict[str, Any]) -> None:
        """Ray's handler for the lines its log monitor forwards from workers (``log_to_driver``)."""
        source = data.get("actor_name") or data.get("task_name") or f"pid={data.get('pid')}"
        for line in data.get("lines", []):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                self.event(event, line)
            else:
                self.text(line, source=str(source))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _ToRouter(logging.Handler):
    """Records of Ray's (and Python's warnings) into the router, as its text lines."""

    def __init__(self, router: Router) -> None:
        super().__init__()
        self.router = router

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        self.router.text(text, source=record.name)


RAY_LOGGERS = ("ray", "py.warnings")


def planned_trials(spec: JobSpec) -> int:
    """How many trials a sweep runs: ``tune.samples`` of every combination of its grids."""
    return spec.tune.samples * math.prod(len(d.grid) for d in spec.tune.space.values() if d.grid is not None)


class Display:
    """The live view: a progress bar for one model; for a sweep, a table of trials above an overall bar."""

    def __init__(self, spec: JobSpec, console: Console) -> None:
        self.spec, self.console = spec, console
        self.steps = spec.train.steps
        self.sweep = spec.tune is not None
        self.trials = planned_trials(spec) if self.sweep else 1
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.latest: dict[str, dict[str, Any]] = {}
        self.previous: dict[str, dict[str, Any]] = {}
        self.best: dict[str, float] = {}
        self.settings: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.waiting: dict[str, str] = {}  # trial -> what its workers wait for ("waiting for 2 CPU")
        self.live = Live(console=console, get_renderable=self.renderable, refresh_per_second=2, transient=False)

    def observe(self, event: dict[str, Any]) -> None:
        """Events that change what the display shows: a trial starts (its settings), waits for room for its workers
        (what it waits for) or ends (its status)."""
        trial = event.get("trial")
        if not trial:
            return
        with self.lock:
            if event.get("event") == "trial started":
                self.settings[trial] = event.get("settings") or {}
                self.status.setdefault(trial, "running")
            elif event.get("event") == "trial ended":
                self.status[trial] = str(event.get("status"))
                self.waiting.pop(trial, None)
            elif str(event.get("event", "")).startswith("waiting for "):
                self.waiting[trial] = str(event["event"])
            elif event.get("event") == "workers placed":
                self.waiting.pop(trial, None)

    def evaluated(self, trial: str, m: dict[str, Any]) -> None:
        """A new evaluation the trial stored."""
        with self.lock:
            if trial in self.latest and m["step"] <= self.latest[trial]["step"]:
                return
            if trial in self.latest:
                self.previous[trial] = self.latest[trial]
            self.latest[trial] = m
            self.best[trial] = min(self.best.get(trial, math.inf), m["val_loss"])
            self.status.setdefault(trial, "running")

    def _eta(self, trial: str) -> str:
        m, previous = self.latest[trial], self.previous.get(trial)
        if m["step"] >= self.steps:
            return "done"
        if previous is not None and m["elapsed_s"] > previous["elapsed_s"] and m["step"] > previous["step"]:
            rate = (m["step"] - previous["step"]) / (m["elapsed_s"] - previous["elapsed_s"])
        elif m.get("chars_per_s") and m.get("chars") and m["step"]:
            rate = m["chars_per_s"] / (m["chars"] / m["step"])
        else:
            return "-"
        return _duration((self.steps - m["step"]) / rate)

    def _bar(self) -> Progress:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=BAR_WIDTH), TaskProgressColumn()]
        return Progress(*columns, TextColumn("{task.fields[info]}"), console=self.console, auto_refresh=False)

    def single(self) -> Progress:
        bar = self._bar()
        m = self.latest.get(SINGLE_TRIAL)
        if m is None:
            waiting = self.waiting.get(SINGLE_TRIAL, "waiting for the first evaluation")
            info = f"step 0/{self.steps} · {waiting} · {_duration(self._elapsed())}"
            bar.add_task("train", total=self.steps, completed=0, info=info)
            return bar
        parts = {
            "step": f"step {m['step']}/{self.steps}",
            "train": f"train {m['train_loss']:.3f}",
            "val": f"val {m['val_loss']:.3f}",
            "best": f"best {self.best[SINGLE_TRIAL]:.3f}",
            "speed": f"{m['chars_per_s'] / 1000:,.1f}k chars/s",
            "eta": f"ETA {self._eta(SINGLE_TRIAL)}",
        }
        room = self.console.width - BAR_WIDTH - 16  # the description, the bar and the percentage take the rest
        for dropped in ("train", "best", "speed"):  # on a narrow terminal, the least needed go first
            if len(" · ".join(parts.values())) <= room:
                break
            del parts[dropped]
        info = " · ".join(parts.values())
        bar.add_task("train", total=self.steps, completed=m["step"], info=info)
        return bar

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def table(self) -> Table:
        keys = sorted({k for s in self.settings.values() for k in s})
        table = Table(title=f"trials ({len(self.status)} of {self.trials} started)", title_justify="left")
        table.add_column("trial")
        table.add_column("status")
        for key in keys:
            table.add_column(key.split(".", 1)[-1], justify="right")
        for name in ("step", "val", "best", "chars/s"):
            table.add_column(name, justify="right")
        styles = {"stopped": "yellow", "failed": "bold red", "completed": "green", "running": "cyan"}
        for trial in sorted(self.status):
            status = self.status[trial]
            m = self.latest.get(trial)
            shown = "stopped (ASHA)" if status == "stopped" else self.waiting.get(trial, status)
            cells = [trial, Text(shown, style=styles.get(status, ""))]
            cells += [_number(self.settings.get(trial, {}).get(k, "-")) for k in keys]
            if m is None:
                cells += ["-", "-", "-", "-"]
            else:
                cells += [f"{m['step']}/{self.steps}", f"{m['val_loss']:.3f}", f"{self.best[trial]:.3f}"]
                cells.append(f"{m['chars_per_s'] / 1000:,.1f}k")
            table.add_row(*cells, style="dim" if status in ("stopped", "failed") else None)
        return table

    def overall(self) -> Progress:
        bar = self._bar()
        budget = self.spec.tune.time_budget_s
        elapsed = self._elapsed()
        ended = sum(s not in ("running",) for s in self.status.values())
        info = f"{ended}/{self.trials} trials ended · {_duration(elapsed)}"
        if budget:
            info = f"{info} of {_duration(budget)}"
            bar.add_task("time budget", total=budget, completed=min(elapsed, budget), info=info)
        else:
            total = self.trials * self.steps
            done = sum(
                self.steps if s in ("stopped", "failed", "completed") else self.latest.get(t, {}).get("step", 0)
                for t, s in self.status.items()
            )
            bar.add_task("sweep", total=total, completed=done, info=info)
        return bar

    def renderable(self) -> Any:
        with self.lock:
            if not self.sweep:
                return self.single()
            return Group(self.table(), self.overall())


class Terminal:
    """The display and the log routing of one run on a terminal, from ``start`` to ``stop``."""

    def __init__(self, run: Run, spec: JobSpec, *, verbose: bool, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.file = LogFile(run)
        self.display = Display(spec, self.console)
        self.router = Router(self.file, self.console, verbose=verbose, display=self.display)
        self.loggers: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
        self.ray_handlers: list | None = None
        self.format_before: str | None = None

    def start(self) -> None:
        """Events to the log file (its location printed first), Ray's loggers through the router, display on."""
        self.console.print(f"log: {scrub(self.file.target.url)}", style="dim", highlight=False, soft_wrap=True)
        # The workers' events arrive as lines the router parses: JSON (a job's log_format), whatever the TTY.
        self.format_before = os.environ.get(log.FORMAT_ENV)
        os.environ[log.FORMAT_ENV] = "json"
        log.configure("json")
        processors = structlog.get_config()["processors"][:-1]  # the JSON renderer's work is the sink's
        structlog.configure(processors=[*processors, self.router.structlog_sink])
        self._route_loggers()
        self.display.live.start()

    def _route_loggers(self) -> None:
        logging.captureWarnings(True)
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(h, _ToRouter) for h in logger.handlers):
                self.loggers.append((logger, list(logger.handlers), logger.propagate))
                logger.handlers, logger.propagate = [_ToRouter(self.router)], False

    def attach_ray(self) -> bool:
        """Once Ray is up in this process, the worker lines its log monitor forwards go through the router.

        Ray prints them with a handler of its stdstream dispatcher (``ray_print_logs``, set by ``ray.init``);
        this puts the router in its place. False while Ray is not initialized yet.
        """
        import ray
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        if self.ray_handlers is not None:
            return True
        if not ray.is_initialized():
            return False
        self.ray_handlers = list(dispatcher.handlers)
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", self.router.worker_lines)
        self._route_loggers()  # ray.init sets up its loggers again
        return True

    def stop(self) -> None:
        """The display's last frame stays on screen; logs go back to stderr, Ray's lines to Ray's printer."""
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        self.display.live.refresh()
        self.display.live.stop()
        if self.ray_handlers is not None:
            with dispatcher._lock:
                dispatcher.handlers = self.ray_handlers
        for logger, handlers, propagate in reversed(self.loggers):
            logger.handlers, logger.propagate = handlers, propagate
        logging.captureWarnings(False)
        if self.format_before is None:
            os.environ.pop(log.FORMAT_ENV, None)
        else:
            os.environ[log.FORMAT_ENV] = self.format_before
        log.configure()
        self.file.close()


def shell_quoted(text: str) -> str:
    """``text`` as a shell word: quoted as is when printable, else in bash's $'...' form (a newline as \\n)."""
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + text.encode("unicode_escape").decode().replace("'", "\\'") + "'"


def sample_hint(url: str, prime: str, temperature: float) -> str:
    """The command that samples the run's best checkpoint the way the run drew its own samples."""
    hint = f"rnnfarm sample {url} --temperature {temperature:g}"
    return hint if prime == "\n" else f"{hint} --prime {shell_quoted(prime)}"  # "\n" is the command's default


def landed(outcome: Any, spec: JobSpec) -> list[tuple[str, str]]:
    """Where a finished run's results are, and how to sample it: (what, where) pairs."""
    best, run = outcome.best, outcome.run
    places = [
        ("best checkpoint", best["url"]),
        ("leaderboard", run.leaderboard("csv").url),
        ("samples", run.trial(best["trial"]).archive_text.url),
    ]
    if run.log.exists():
        places.append(("log", run.log.url))
    if run.report_page.exists():
        places.append(("report", run.report_page.url))
    places.append(("sample with", sample_hint(run.store.url, spec.samples.prime, shown_temperature(spec))))
    return places


def shown_temperature(spec: JobSpec) -> float:
    return min(spec.samples.temperatures, key=lambda t: abs(t - 0.8))


def summary(outcome: Any, spec: JobSpec, console: Console) -> None:
    """The end of a run on a terminal: the leaderboard, the best val loss, where everything landed."""
    best, rows = outcome.best, outcome.rows
    console.print()
    settings = sorted({k for r in rows for k in r if "." in k})
    table = Table(title=f"run {outcome.run.name}: {outcome.record['status']}", title_justify="left")
    for name in ("trial", "status", *(s.split(".", 1)[-1] for s in settings)):
        table.add_column(name)
    for name in ("best val", "bits/char", "best step", "steps", "wall"):
        table.add_column(name, justify="right")
    for r in rows:
        loss = r.get("best_val_loss")
        cells = [r["trial"], r["status"], *(_number(r.get(s, "-")) for s in settings)]
        cells += ["-" if loss is None else f"{loss:.4f}", "-" if loss is None else f"{r['best_val_bpc']:.4f}"]
        wall = r.get("wall_s")
        cells += [str(r.get("best_step") or "-"), str(r.get("steps")), "-" if wall is None else _duration(wall)]
        table.add_row(*cells, style="bold" if r["trial"] == best["trial"] else None)
    console.print(table)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    facts.add_row(
        "best val loss",
        f"{best['val_loss']:.4f} nats/char ({best['val_bpc']:.4f} bits/char) at step {best['step']} "
        f"of trial {best['trial']}",
    )
    if "test_loss" in best:
        facts.add_row("test loss", f"{best['test_loss']:.4f} nats/char ({best['test_bpc']:.4f} bits/char)")
    ngrams = ngram.of_run(outcome.record, outcome.run.store.options)
    if ngrams is not None:
        facts.add_row("n-gram baseline", f"val {ngram.line(ngrams)}")
    for what, where in landed(outcome, spec):
        facts.add_row(what, where)
    console.print(facts, highlight=False)
