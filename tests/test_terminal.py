"""`rnnfarm run` on a real terminal (tmux, 120x40): the live display, quiet logs, the run's log file, the live
report in headless Chromium; and the same job through a pipe: JSON lines. tmux comes from tests/setup/debian.sh."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from .browser import ARTIFACTS, Element, render
from .conftest import make_spec

RNNFARM = str(Path(sys.executable).with_name("rnnfarm"))
BAR = re.compile(r"train ━+ +\d+% step (\d+)/40 · train \d\.\d{3} · val \d\.\d{3} · best \d\.\d{3} · [\d.,]+k chars/s")
TICK = re.compile(r"^-?\d+(\.\d+)?[kMG]?$")
EVENT_NAMES = ("source cached", "corpus built", "building corpus", "training", "first step", "checkpoint")


def spec_file(root: Path, name: str, **sections) -> Path:
    job = make_spec(str(root / "storage"), name=name, **sections)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    return path


@dataclass
class Screen:
    """A tmux session of 120x40 running one command; every capture of its screen is kept."""

    name: str
    captures: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, command: str, cwd: Path) -> Screen:
        assert shutil.which("tmux"), "tmux is not installed: run tests/setup/debian.sh (make test does)"
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        # Without COLUMNS and LINES (pytest's environment sets them): the size is the terminal's, 120x40.
        shell = f"cd {cwd} && env -u COLUMNS -u LINES {command}; echo EXIT=$?; sleep 600"
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", shell], check=True)
        return cls(name)

    def capture(self) -> str:
        shown = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        self.captures.append(shown.stdout)
        return shown.stdout

    def history(self) -> str:
        """Everything the terminal has held: the scrollback and the screen."""
        args = ["tmux", "capture-pane", "-p", "-S", "-", "-t", self.name]
        return subprocess.run(args, capture_output=True, text=True).stdout

    def stop(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def follow(screen: Screen, until: str, timeout: float, on_tick=None) -> str:
    """Capture the screen every half second until ``until`` shows (the command's end, say)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = screen.capture()
        if on_tick is not None:
            on_tick(shown)
        if until in shown:
            return shown
        time.sleep(0.5)
    raise AssertionError(f"{until!r} did not show within {timeout}s:\n{screen.capture()}")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A 1x256 LSTM, 40 steps of 64 x 128 characters, evaluated every 10, run in tmux; the live report
    rendered while it runs. Its steps take long enough (0.2 s each here) that the driver, which looks for new
    evaluations every 2 s, writes the live report at least once between the first evaluation and the end."""
    root = tmp_path_factory.mktemp("terminal")
    train = {"steps": 40, "eval_every": 10, "batch_size": 64, "seq_len": 128}
    spec = spec_file(root, "shown", model={"hidden": 256}, train=train)
    run = root / "storage" / "runs" / "shown"
    screen = Screen.start("rnnfarm-single", f"{RNNFARM} run {spec}", root)
    live: dict[str, Element] = {}

    def look_at_report(_shown: str) -> None:
        page = run / "report.html"
        if "live" not in live and page.exists() and "http-equiv" in page.read_text():
            copy = root / "live-report.html"
            shutil.copy(page, copy)
            live["live"] = render(copy, "terminal-report-live")

    try:
        final = follow(screen, "EXIT=", timeout=900, on_tick=look_at_report)
        history = screen.history()
    finally:
        screen.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "terminal-single.txt").write_text("\n\n=====\n\n".join(screen.captures[-3:]))
    return run, screen, final, history, live.get("live")


def test_a_terminal_shows_one_progress_bar_that_redraws_in_place_then_the_summary_table(single):
    run, screen, final, history, _ = single
    assert "EXIT=0" in final, final
    waiting = "train ━━━━━━━━━━━━━━━━━━━━   0% step 0/40 · waiting for the first evaluation"
    assert any(waiting in shown for shown in screen.captures), screen.captures  # the bar, from Ray's start
    assert [int(step) for step in BAR.findall(final)] == [40] and "ETA done" in final
    assert len(BAR.findall(history)) == 1 and waiting not in history, history  # redrawn in place: never scrolled
    assert "run shown: completed" in final and re.search(r"│ main +│ completed │ +\d\.\d{4} │", final), final
    assert f"log              {run / 'log.jsonl'}" in final
    assert f"sample with      rnnfarm sample {run} --temperature 0.8" in final
    assert history.startswith(f"log: {run / 'log.jsonl'}")  # where the events go, said first


def test_no_info_event_json_line_or_ray_chatter_reaches_the_terminal(single):
    _, _, _, history, _ = single
    lines = history.splitlines()
    assert not [line for line in lines if re.match(r"^\d\d:\d\d:\d\d ", line)], history  # short event lines
    assert not [line for line in lines if line.lstrip().startswith("{")], history
    assert not [line for line in lines for name in EVENT_NAMES if line.strip().startswith(name)], history
    for chatter in ("PlacementGroupCleaner", "Started a local Ray instance", "autoscaler", "(pid="):
        assert chatter not in history, history


def test_the_run_folder_log_file_holds_every_event_as_a_json_line(single):
    run, *_ = single
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    names = [(e["event"], e.get("step")) for e in events if "source" not in e]
    assert [n for n in names if n[0] in ("eval", "checkpoint")] == [
        (kind, step) for step in (10, 20, 30, 40) for kind in ("eval", "checkpoint")
    ]
    for name in ("corpus built", "training", "trial ended", "report written", "run completed"):
        assert name in [n for n, _ in names], names
    assert any(e.get("source") for e in events)  # Ray's own lines are kept too


def ticks(figure: Element) -> list[str]:
    """The tick labels of a matplotlib chart: the text inside its xtick_N / ytick_N groups."""
    found = [g for g in figure.find_all("g") if re.search(r"[xy]tick_\d+$", g.attrs.get("id", ""))]
    return [g.all_text.strip() for g in found]


def check_charts(dom: Element, trials: int) -> None:
    charts = dom.find_all("figure", "chart")
    per_trial = [c for c in charts if c.attrs["data-title"].startswith("trial ")]
    assert len(per_trial) == trials
    labels = [t for c in charts for t in ticks(c)]
    assert labels and all(TICK.match(t) for t in labels), labels
    assert not [t for t in labels if "e+" in t or "e-" in t]


def evolution_steps(dom: Element) -> list[tuple[int, float]]:
    rows = dom.find_all("table", "evolution")[0].find_all("tbody")[0].find_all("tr")
    return [(int(r.find_all("td")[0].all_text), float(r.find_all("td")[1].all_text)) for r in rows]


def test_the_report_is_live_while_the_run_goes_on_and_final_once_it_ends(single):
    run, _, _, _, live = single
    assert live is not None, "no live report was written while the run went on"
    assert [m.attrs for m in live.find_all("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert "status running" in live.find_all("p", "meta")[0].all_text
    assert "updated" in live.find_all("p", "meta")[0].all_text
    check_charts(live, trials=1)
    shown = evolution_steps(live)
    assert 1 <= len(shown) <= 4 and [s for s, _ in shown] == [10, 20, 30, 40][: len(shown)]

    final = render(run / "report.html", "terminal-report-final", height=2400)
    assert not [m for m in final.find_all("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert "status completed" in final.find_all("p", "meta")[0].all_text
    check_charts(final, trials=1)
    stored = [json.loads(p.read_text()) for p in sorted((run / "trials" / "main" / "metrics").glob("*.json"))]
    assert evolution_steps(final) == [(m["step"], round(m["val_loss"], 3)) for m in stored]  # a row each


def test_the_same_job_through_a_pipe_logs_json_lines_only(tmp_path):
    spec = spec_file(tmp_path, "piped", train={"steps": 20, "eval_every": 10})
    done = subprocess.run([RNNFARM, "run", str(spec)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stderr.splitlines()]  # every line: one JSON event
    assert [e["step"] for e in events if e["event"] == "eval"] == [10, 20]
    assert "━" not in done.stdout + done.stderr and "┃" not in done.stdout
    assert "best checkpoint: " in done.stdout and not (tmp_path / "storage" / "runs" / "piped" / "log.jsonl").exists()


def test_a_sweep_on_a_terminal_shows_its_trials_table_with_the_trial_asha_stopped(tmp_path):
    spec = spec_file(
        tmp_path,
        "swept",
        # 200 steps: hidden 8 still has steps left when ASHA's stop reaches it (test_tune.py's sweep says why)
        train={"steps": 200, "eval_every": 20},
        tune={
            # hidden 8 learns far slower than hidden 64: ASHA stops it at a rung.
            "space": {"model.hidden": {"grid": [64, 8]}},
            "samples": 1,
            "concurrency": 1,
            "scheduler": {"kind": "asha", "grace_period": 20, "reduction_factor": 2},
            "resources": {"workers": 1, "driver_cpus": 0},
        },
    )
    screen = Screen.start("rnnfarm-sweep", f"{RNNFARM} run {spec}", tmp_path)
    try:
        final = follow(screen, "EXIT=", timeout=1200)
        history = screen.history()
    finally:
        screen.stop()
    (ARTIFACTS / "terminal-sweep.txt").write_text("\n\n=====\n\n".join(screen.captures[-3:]))
    assert "EXIT=0" in final, final
    tables = [shown for shown in screen.captures if "trials (2 of 2 started)" in shown]
    assert tables, screen.captures[-1]
    rows = re.findall(r"│ (\w+_\d{5}) │ ([\w ()]+?) +│ +(\d+) │", tables[-1])
    assert {hidden for _, _, hidden in rows} == {"64", "8"}, tables[-1]
    assert "stopped (ASHA)" in tables[-1] and re.search(r"sweep ━+ +\d+% \d/2 trials ended", tables[-1])
    assert "run swept: completed" in final and "stopped" in final.split("run swept: completed")[1]
    assert "PlacementGroupCleaner" not in history and "controller actor is dead" not in history
