"""Following a run from its driver: new evaluations reach the display and the live report; what the
terminal display and its log routing show (a real rich Console writing to a buffer); JSON events elsewhere."""

from __future__ import annotations

import io
import json

import s3fs
import structlog
from rich.console import Console

from rnnfarm import log
from rnnfarm.engine.loop import Job, LocalSession, train
from rnnfarm.launch import display, progress
from rnnfarm.layout import Run
from rnnfarm.runs import record
from rnnfarm.storage import Store

from .conftest import make_spec


def trained(shakespeare, tmp_path, steps: int, *, begin: bool = True) -> tuple[Run, Job]:
    job_spec = make_spec(str(tmp_path / "storage"), train={"steps": steps, "eval_every": 20})
    run = Run.under(Store.at(job_spec.storage), "tiny")
    if begin:  # the run's record, which the report reads
        record.begin(run, job_spec, {"name": "shakespeare", "url": shakespeare.folder.url})
    return run, Job(job_spec, shakespeare.folder, run.trial())


def console() -> Console:
    return Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)


def shown(c: Console) -> str:
    return c.file.getvalue()


def test_the_follower_passes_on_new_evaluations_only_and_rewrites_the_live_report_after_each(shakespeare, tmp_path):
    run, job = trained(shakespeare, tmp_path, 40)
    session = LocalSession(tmp_path / "checkpoints")
    train(job, session)
    follower = progress.Follower(run, None)
    follower.skip_existing()  # an earlier attempt's evaluations: not news
    assert follower.seen == {"main": 40} and follower.poll() == 0 and not (run.store / "report.html").exists()

    _, resumed = trained(shakespeare, tmp_path, 60, begin=False)
    train(resumed, session)  # resumes from step 40
    assert follower.poll() == 1 and follower.seen == {"main": 60}
    page = (run.store / "report.html").read_text()
    assert '<meta http-equiv="refresh"' in page and "status <b>running</b>" in page
    (run.store / "report.html").remove()
    assert follower.poll() == 0 and not (run.store / "report.html").exists()  # nothing new, nothing written


def test_evaluations_stored_while_the_last_reports_share_of_time_runs_go_into_the_next_write(shakespeare, tmp_path):
    run, job = trained(shakespeare, tmp_path, 20)
    session = LocalSession(tmp_path / "checkpoints")
    follower = progress.Follower(run, None)
    train(job, session)
    assert follower.poll() == 1 and follower.next_report > 0  # written, and the next write waits
    (run.store / "report.html").remove()
    follower.next_report = float("inf")  # as if the last write had just taken very long
    _, resumed = trained(shakespeare, tmp_path, 40, begin=False)
    train(resumed, session)
    assert follower.poll() == 1 and not (run.store / "report.html").exists()  # not yet: pending
    follower.next_report = 0.0
    assert follower.poll() == 0  # nothing new, but the pending write is done
    assert (run.store / "report.html").exists()


def test_off_a_terminal_the_run_is_followed_without_a_display_and_a_remote_run_not_at_all(shakespeare, tmp_path):
    run, job = trained(shakespeare, tmp_path, 20)
    with progress.follow(run, job.spec, out=io.StringIO(), interval=0.05) as followed:
        train(job, LocalSession(tmp_path / "checkpoints"))
    assert followed.terminal is None and followed.seen == {"main": 20}
    assert (run.store / "report.html").exists()
    remote = job.spec.model_copy(update={"cluster": job.spec.cluster.model_copy(update={"address": "ray://h:10001"})})
    with progress.follow(run, remote, out=io.StringIO()) as followed:
        assert followed is None


def evaluation(step: int, elapsed: float, val: float = 2.1) -> dict:
    return {"step": step, "elapsed_s": elapsed, "train_loss": 2.0, "val_loss": val, "chars_per_s": 9000.0}


def test_the_progress_bar_shows_step_losses_best_speed_and_an_eta_from_the_time_between_evaluations():
    c = console()
    shown_on = display.Display(make_spec("/tmp/x", train={"steps": 1000, "eval_every": 200}), c)
    shown_on.evaluated("main", evaluation(200, 150.0, val=2.0))
    shown_on.evaluated("main", evaluation(400, 250.0, val=2.1))  # 2 steps/s between them, evaluations included
    c.print(shown_on.renderable())
    assert "step 400/1000 · train 2.000 · val 2.100 · best 2.000 · 9.0k chars/s · ETA 5m00s" in shown(c)
    # After a resume the clock restarts: the training speed alone gives the rate.
    shown_on.evaluated("main", {**evaluation(600, 10.0), "chars": 600 * 4096, "chars_per_s": 8192.0})
    assert shown_on._eta("main") == "3m20s"


def test_the_sweep_table_shows_each_trials_settings_and_marks_the_ones_asha_stopped():
    c = console()
    tune = {"space": {"model.hidden": {"grid": [64, 8]}}, "samples": 1, "scheduler": {"kind": "asha"}}
    shown_on = display.Display(make_spec("/tmp/x", train={"steps": 60, "eval_every": 20}, tune=tune), c)
    for trial, hidden in (("a_00000", 64), ("a_00001", 8)):
        shown_on.observe({"event": "trial started", "trial": trial, "settings": {"model.hidden": hidden}})
    shown_on.evaluated("a_00000", evaluation(40, 10.0, val=2.5))
    shown_on.evaluated("a_00001", evaluation(20, 5.0, val=3.3))
    shown_on.observe({"event": "trial ended", "trial": "a_00001", "status": "stopped"})
    c.print(shown_on.renderable())
    text = shown(c)
    assert "trials (2 of 2 started)" in text
    assert "│ a_00000 │ running        │     64 │ 40/60 │ 2.500 │ 2.500 │    9.0k │" in text, text
    assert "│ a_00001 │ stopped (ASHA) │      8 │ 20/60 │ 3.300 │ 3.300 │    9.0k │" in text, text
    assert "1/2 trials ended" in text


def test_a_run_whose_workers_wait_for_room_shows_what_it_waits_for_until_they_are_placed():
    c = console()
    shown_on = display.Display(make_spec("/tmp/x", train={"steps": 60, "eval_every": 20}), c)
    shown_on.observe({"event": "waiting for 2 CPU", "trial": "main", "held_by": "placement group 1a2b (1 CPU)"})
    c.print(shown_on.renderable())
    assert "step 0/60 · waiting for 2 CPU ·" in shown(c)
    shown_on.observe({"event": "workers placed", "trial": "main"})
    c.print(shown_on.renderable())
    assert "step 0/60 · waiting for the first evaluation ·" in shown(c)


def router(tmp_path, verbose: bool = False) -> tuple[display.Router, Console, Run]:
    run = Run.under(Store.at(str(tmp_path / "storage")), "r")
    c = console()
    return display.Router(display.LogFile(run), c, verbose=verbose), c, run


def logged(run: Run) -> list[dict]:
    return [json.loads(line) for line in run.log.read_text().splitlines()]


def test_rays_chatter_and_info_events_go_to_the_log_file_and_warnings_to_the_screen_as_short_lines(tmp_path):
    routes, c, run = router(tmp_path)
    eval_line = json.dumps({"event": "eval", "level": "info", "trial": "main", "step": 20, "val_loss": 2.71828})
    warn_line = json.dumps({"event": "slow storage", "level": "warning", "timestamp": "2026-01-01T10:11:12Z"})
    pg = (  # as Ray 2.60 forwards it for every trial ASHA stops
        "2026-12-01 21:30:32,220\tWARNING placement_group_cleaner.py:120 -- Detected that the Ray Train controller "
        "actor (d86de5fb5e9c23458730d33501000000) is dead. Cleaning up placement group created by this run."
    )
    routes.worker_lines({"lines": [eval_line, warn_line, "Setting up process group for: env://"], "pid": 9})
    routes.worker_lines({"lines": [pg], "pid": 8, "actor_name": "PlacementGroupCleaner"})
    routes.worker_lines({"lines": ["2026-01-01 10:11:12,000\tWARNING x.py:1 -- the disk is full"], "pid": 7})
    routes.file.close()
    assert shown(c).splitlines() == [
        "10:11:12 warning slow storage",
        "(pid=7) 2026-01-01 10:11:12,000 WARNING x.py:1 -- the disk is full",
    ]
    kept = [e["event"] for e in logged(run)]
    assert kept[:2] == ["eval", "slow storage"] and pg in kept and len(kept) == 5


def test_on_s3_the_log_file_is_uploaded_whole_at_each_sync_and_a_resumed_run_continues_it(s3, monkeypatch):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    run = Run.under(Store.at("s3://rnnfarm-test/logs"), "r")
    first = display.LogFile(run)
    first.write('{"event": "one"}')
    first.sync()
    assert run.log.read_text() == '{"event": "one"}\n'
    first.write('{"event": "two"}')
    first.close()
    again = display.LogFile(run)  # the same run, started again
    again.write('{"event": "three"}')
    again.close()
    assert [e["event"] for e in logged(run)] == ["one", "two", "three"]
    assert not again.path.exists()  # the local copy goes once uploaded


def test_with_verbose_info_events_show_as_one_short_line_not_a_key_value_dump(tmp_path):
    routes, c, _ = router(tmp_path, verbose=True)
    event = {"event": "eval", "level": "info", "trial": "main", "step": 20, "val_loss": 2.71828, "timestamp": "x" * 11}
    event.update({f"field_{i}": i for i in range(20)})
    routes.event(event, json.dumps(event))
    (line,) = shown(c).splitlines()
    assert line.endswith("[main] eval · step 20 · val loss 2.718") and "field_" not in line


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
