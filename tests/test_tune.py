"""The Tune stage: a sweep of TorchTrainer trials with ASHA, sample archives, a leaderboard, best/, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rnnfarm import spec
from rnnfarm.cli import cli
from rnnfarm.errors import UserError
from rnnfarm.layout import ARCHIVE_JSONL, ARCHIVE_TEXT, Run, Trial
from rnnfarm.runs import archive, leaderboard
from rnnfarm.storage import Store

from .conftest import make_spec

# hidden 8 learns far slower than hidden 64: ASHA has something to stop. The embedding is an integer setting
# drawn from a range: every trial gets an int inside it.
RANGES = {"model.embedding": {"loguniform": [3, 17]}}
SWEEP = {
    "space": {"model.hidden": {"grid": [64, 8]}, "model.dropout": {"uniform": [0.0, 0.2]}, **RANGES},
    "samples": 1,
    "scheduler": {"kind": "asha", "grace_period": 20, "reduction_factor": 2},
    "resources": {"workers": 1, "driver_cpus": 0},
}


def sweep_spec(tmp_path, train: dict | None = None, **tune) -> str:
    job = make_spec(
        str(tmp_path / "storage"),
        name="sweep",
        train=train or {"steps": 60, "eval_every": 20},
        tune={**SWEEP, **tune},
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    return str(path)


def run_dir(tmp_path) -> Path:
    return tmp_path / "storage" / "runs" / "sweep"


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory):
    """The sweep above, run once by `rnnfarm run`: its folder, leaderboard rows and output."""
    tmp_path = tmp_path_factory.mktemp("swept")
    # 200 steps: ASHA's stop reaches hidden 8 through Ray Train and Tune a second or more after its step-20
    # evaluation; it must still have steps left then, and rungs 40, 80 and 160 stop it if 20 came too late.
    train = {"steps": 200, "eval_every": 20}
    result = CliRunner().invoke(cli, ["run", sweep_spec(tmp_path, train, concurrency=1)])
    assert result.exit_code == 0, result.output
    return tmp_path, leaderboard.read(Run(Store.at(str(run_dir(tmp_path))))), result


def test_a_sweep_stops_trials_early_archives_samples_and_promotes_the_best(swept):
    tmp_path, rows, result = swept
    run = Store.at(str(run_dir(tmp_path)))
    assert len(rows) == 2 and {r["model.hidden"] for r in rows} == {8, 64}
    # One at a time, hidden 64 first: at every rung hidden 8 trails it, and ASHA stops it.
    assert {r["model.hidden"]: r["status"] for r in rows} == {64: "completed", 8: "stopped"}, rows
    assert all(r["status"] in ("completed", "stopped") for r in rows)
    with open(run_dir(tmp_path) / "leaderboard.csv", newline="") as f:
        assert [r["trial"] for r in csv.DictReader(f)] == [r["trial"] for r in rows]
    assert "best_val_loss" in result.output and "stopped" in result.output  # the table on the terminal
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    started = [e for e in events if e["event"] == "trial started"]  # each named by its run and its settings
    assert sorted((e["run"], e["trial"], e["settings"]["model.hidden"]) for e in started) == sorted(
        ("sweep", r["trial"], r["model.hidden"]) for r in rows
    )
    ended = [e for e in events if e["event"] == "trial ended"]  # each logged as its trial ends, one each
    assert all(e["run"] == "sweep" for e in ended)
    assert sorted(e["trial"] for e in ended) == sorted(r["trial"] for r in rows)
    assert all(e["status"] in ("completed", "stopped") and e["best_val_loss"] for e in ended)
    assert max(i for i, name in enumerate(names) if name == "trial ended") < names.index("sweep ended")

    for r in rows:
        trial = run / "trials" / r["trial"]
        drawn = archive.read(Trial(trial))
        steps = [s["step"] for s in drawn]
        assert steps == sorted(steps) and len(set(steps)) == len(steps) >= 1
        assert (trial / ARCHIVE_TEXT).read_text().startswith("=== step 20")
        assert json.loads((trial / "config.json").read_text())["settings"]["model.hidden"] == r["model.hidden"]

    best_meta = json.loads((run_dir(tmp_path) / "best" / "meta.json").read_text())
    argmin = min(rows, key=lambda r: r["best_val_loss"])
    assert best_meta["trial"] == argmin["trial"] and best_meta["val_loss"] == argmin["best_val_loss"]
    assert best_meta["spec"]["model"]["hidden"] == argmin["model.hidden"]
    assert (run_dir(tmp_path) / "best" / ARCHIVE_JSONL).exists()
    record = json.loads((run_dir(tmp_path) / "run.json").read_text())
    assert record["best"]["trial"] == argmin["trial"] and sum(record["trials"].values()) == 2

    shown = CliRunner().invoke(cli, ["samples", str(run_dir(tmp_path)), "--step", "20"])
    assert shown.exit_code == 0, shown.output
    assert f"trial {argmin['trial']}" in shown.output and "=== step 20 " in shown.output
    assert "=== step 40" not in shown.output


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.5)


def test_a_sweep_whose_driver_is_killed_resumes_without_redoing_finished_trials(ray_local, tmp_path):
    # Two trials, one at a time: the first finishes before the kill, the second is cut.
    train = {"steps": 20, "eval_every": 10}
    spec_file = sweep_spec(tmp_path, train, concurrency=1, scheduler={"kind": "none"})
    env = {**os.environ, "RNNFARM_LOG_FORMAT": "json"}
    trials = run_dir(tmp_path) / "trials"
    # The driver process and its embedded Ray are one process group: killing it is losing the machine.
    first = subprocess.Popen(
        [sys.executable, "-m", "rnnfarm", "run", spec_file],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(trials.glob(f"*/{ARCHIVE_JSONL}")), timeout=240)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    def trained(trial: str) -> dict[str, int]:
        """What training wrote for a trial: its evaluations and checkpoints, with their times."""
        files = [*(trials / trial / "metrics").iterdir(), *(trials / trial).glob("checkpoint-*/model.safetensors")]
        return {str(p): p.stat().st_mtime_ns for p in files}

    done = {p.parent.name: trained(p.parent.name) for p in trials.glob(f"*/{ARCHIVE_JSONL}")}
    assert len(done) == 1 and not (run_dir(tmp_path) / "leaderboard.parquet").exists()

    result = CliRunner().invoke(cli, ["run", spec_file])
    assert result.exit_code == 0, result.output
    rows = leaderboard.read(Run(Store.at(str(run_dir(tmp_path)))))
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    for trial, before in done.items():  # finished before the kill: not trained again
        assert trained(trial) == before


def test_the_search_space_is_checked_against_the_spec():
    base = {"name": "x", "tune": {"space": {"model.hidden": {"choice": [64, 0]}}}}
    with pytest.raises(UserError, match=r"tune.space.model.hidden: 0 must be > 0"):
        spec.parse(base)
    with pytest.raises(UserError, match=r"tune.space.model.width: not a tunable setting"):
        spec.parse({"name": "x", "tune": {"space": {"model.width": {"choice": [1]}}}})
    with pytest.raises(UserError, match=r"tune.space.train.lr: give exactly one of"):
        spec.parse({"name": "x", "tune": {"space": {"train.lr": {"choice": [0.1], "uniform": [0.1, 0.2]}}}})
    with pytest.raises(UserError, match=r"loguniform needs a low bound > 0"):
        spec.parse({"name": "x", "tune": {"space": {"train.lr": {"loguniform": [0, 0.1]}}}})


def test_a_trial_that_cannot_fit_is_refused_before_the_sweep(ray_local, tmp_path):
    spec_file = sweep_spec(tmp_path, resources={"workers": 3, "driver_cpus": 0})
    result = CliRunner().invoke(cli, ["run", spec_file])
    assert result.exit_code == 2
    assert "tune.resources: one trial needs 3 CPUs" in result.output


def test_a_range_on_an_integer_setting_draws_integers_and_every_trial_trains(swept):
    tmp_path, rows, _ = swept
    assert len(rows) == 2 and all(r["status"] in ("completed", "stopped") and r["steps"] for r in rows), rows
    for r in rows:
        drawn = json.loads((run_dir(tmp_path) / "trials" / r["trial"] / "config.json").read_text())["settings"]
        for key, dist in RANGES.items():
            low, high = next(iter(dist.values()))
            assert type(drawn[key]) is int and low <= drawn[key] <= high, drawn


def test_nested_and_regularizer_settings_are_tunable_with_their_own_number_kinds():
    from ray.tune.search.sample import Float, Integer

    from rnnfarm.launch.sweep import param_space, settings_of, trial_spec

    space = {
        "model.weight_drop": {"uniform": [0.0, 0.5]},
        "train.average.decay": {"uniform": [0.9, 0.99]},
        "train.average.start": {"uniform": [0, 100]},
    }
    job = spec.parse({"name": "x", "train": {"average": {"kind": "swa"}}, "tune": {"space": space}})
    domains = param_space(job.tune)
    assert isinstance(domains["model"]["weight_drop"], Float)
    assert isinstance(domains["train"]["average.decay"], Float)
    assert isinstance(domains["train"]["average.start"], Integer)
    trial = trial_spec(job, settings_of({"train": {"average.decay": 0.95, "average.start": 7}}))
    assert trial.train.average.model_dump() == {"kind": "swa", "decay": 0.95, "start": 7}
    with pytest.raises(UserError, match=r"tune.space.train.average.start: 1.5 must be an integer"):
        spec.parse({"name": "x", "tune": {"space": {"train.average.start": {"choice": [1.5]}}}})
