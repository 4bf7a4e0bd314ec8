"""Progress on a terminal (a real pseudo-terminal) while a trial trains; JSON log events elsewhere."""

from __future__ import annotations

import io
import json
import os
import re

import structlog

from rnnfarm import log
from rnnfarm.engine.loop import Job, LocalSession, train
from rnnfarm.launch import progress
from rnnfarm.layout import Run
from rnnfarm.storage import Store

from .conftest import make_spec

LINE = re.compile(
    r"^\[main\] step (\d+)/60 +\d+% \|[#.]{20}\| train (\d+\.\d{3}) val (\d+\.\d{3}) nats/char · "
    r"[\d,]+\.\dk chars/s · (ETA (\d+s|\d+m\d\ds)|done)$"
)


def terminal() -> tuple[int, io.TextIOWrapper]:
    """A pseudo-terminal: the display writes to its slave end, the test reads the master end."""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    return master, os.fdopen(slave, "w")


def shown(master: int) -> list[str]:
    data = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [line for line in data.decode().splitlines() if line]


def trained(shakespeare, tmp_path, steps: int) -> tuple[Run, Job]:
    job_spec = make_spec(str(tmp_path / "storage"), train={"steps": steps, "eval_every": 20})
    run = Run(Store.at(job_spec.storage) / "runs" / "tiny")
    return run, Job(job_spec, shakespeare.folder, run.trial())


def test_a_terminal_sees_a_line_per_evaluation_with_step_losses_speed_and_eta(shakespeare, tmp_path):
    run, job = trained(shakespeare, tmp_path, 60)
    master, out = terminal()
    with progress.follow(run, job.spec, out=out, interval=0.05):
        train(job, LocalSession(tmp_path / "checkpoints"))
    lines = shown(master)
    assert len(lines) == 3, lines
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    stored = [m.read_json() for m in run.trial().metrics_files()]
    assert [int(m.group(1)) for m in matches] == [m["step"] for m in stored] == [20, 40, 60]
    assert [float(m.group(3)) for m in matches] == [round(m["val_loss"], 3) for m in stored]
    assert matches[0].group(4).startswith("ETA") and matches[-1].group(4) == "done"


def test_evaluations_stored_before_the_display_started_are_not_shown_again(shakespeare, tmp_path):
    run, job = trained(shakespeare, tmp_path, 40)
    session = LocalSession(tmp_path / "checkpoints")
    train(job, session)
    resumed_run, resumed = trained(shakespeare, tmp_path, 60)
    master, out = terminal()
    with progress.follow(resumed_run, resumed.spec, out=out, interval=0.05):
        train(resumed, session)  # resumes from step 40
    lines = shown(master)
    assert len(lines) == 1 and LINE.match(lines[0]).group(1) == "60", lines


def test_nothing_is_shown_when_stderr_is_not_a_terminal_or_the_run_is_not_local(shakespeare, tmp_path):
    run, job = trained(shakespeare, tmp_path, 20)
    piped = io.StringIO()
    with progress.follow(run, job.spec, out=piped, interval=0.05) as shown_on:
        train(job, LocalSession(tmp_path / "checkpoints"))
    assert shown_on is None and piped.getvalue() == ""
    _, out = terminal()
    remote = job.spec.model_copy(
        update={"cluster": job.spec.cluster.model_copy(update={"address": "ray://head:10001"})}
    )
    with progress.follow(run, remote, out=out) as shown_on:
        assert shown_on is None


def test_the_eta_counts_the_time_between_evaluations_evaluation_included():
    earlier = {"step": 200, "elapsed_s": 100.0, "train_loss": 2.0, "val_loss": 2.1, "chars_per_s": 9000.0}
    latest = {**earlier, "step": 400, "elapsed_s": 200.0}  # 2 steps/s, evaluations included
    assert progress.line("t1", latest, earlier, 1000).endswith("9.0k chars/s · ETA 5m00s")
    # After a resume the clock restarts: the training speed alone gives the rate.
    resumed = {**latest, "elapsed_s": 10.0, "chars": 400 * 4096, "chars_per_s": 8192.0}
    assert progress.line("t1", resumed, earlier, 1000).endswith("ETA 5m00s")


def test_training_logs_a_json_event_per_evaluation_and_checkpoint(shakespeare, tmp_path):
    run, job = trained(shakespeare, tmp_path, 40)
    captured = io.StringIO()
    before = structlog.get_config()["logger_factory"]
    log.configure("json")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=captured))
    try:
        train(job, LocalSession(tmp_path / "checkpoints"))
    finally:
        structlog.configure(logger_factory=before)
    events = [json.loads(line) for line in captured.getvalue().splitlines()]
    kinds = [(e["event"], e.get("step")) for e in events if e["event"] in ("eval", "checkpoint")]
    assert kinds == [("eval", 20), ("checkpoint", 20), ("eval", 40), ("checkpoint", 40)]
    assert {"val_loss", "chars_per_s", "trial"} <= set(next(e for e in events if e["event"] == "eval"))
