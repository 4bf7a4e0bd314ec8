"""A run's workers and Ray: a bounded wait for room, named when it fails, and Ray left as the run found it.

Every test that uses the shared Ray is also checked after it by conftest's ``ray_left_as_found``: a completed,
failed, diverged or resumed run, a killed worker, and a sweep ASHA stops leave no placement group and no actor
behind. The endings here are the ones no other file has: resources held elsewhere, a sweep's time budget ending
while a trial waits for room, and ctrl-C in a process that keeps its Ray.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from rnnfarm.errors import TrainingFailed
from rnnfarm.launch import pipeline
from rnnfarm.layout import Run
from rnnfarm.storage import Store

from .conftest import left_in_ray, make_spec


def two_workers(storage: Path, **sections):
    return make_spec(str(storage), cluster={"workers": 2, **sections.pop("cluster", {})}, **sections)


def test_a_run_whose_cpus_are_held_elsewhere_fails_in_one_line_naming_what_holds_them(ray_local, tmp_path):
    held = placement_group([{"CPU": 1}])  # as another job, a notebook's leftover or a Serve replica would
    ray.get(held.ready(), timeout=60)
    try:
        started = time.monotonic()
        with pytest.raises(TrainingFailed) as failed:
            pipeline.run(two_workers(tmp_path, cluster={"placement_timeout_s": 5}))
        waited = time.monotonic() - started
    finally:
        remove_placement_group(held)

    message = str(failed.value)
    assert "\n" not in message and waited < 60
    assert message.startswith("cluster: 2 worker(s) waited 5 s for 2 CPU and could not be placed")
    assert "this Ray has 1 of 2 CPUs free" in message
    assert f"placement group {held.id.hex()[:12]} (1 CPU, this job's driver)" in message
    assert "raise cluster.placement_timeout_s" in message
    info = Run(Store.at(str(tmp_path)) / "runs" / "tiny").info()
    assert info["status"] == "failed" and info["error"] == message


def test_a_sweep_whose_time_budget_ends_while_a_trial_waits_for_room_leaves_no_placement_group(ray_local, tmp_path):
    # The trial wants both CPUs; the test holds one until the time budget has stopped the trial, still waiting.
    # Ray Train's cleaner never hears of a group whose workers had not started: without rnnfarm's clean-up the
    # stopped trial's group would take both CPUs once the test lets its one go, and keep them.
    held = placement_group([{"CPU": 1}])
    ray.get(held.ready(), timeout=60)
    job = make_spec(
        str(tmp_path),
        name="budget",
        tune={
            "space": {"model.hidden": {"grid": [32]}},
            "scheduler": {"kind": "none"},
            "time_budget_s": 15,
            "resources": {"workers": 2, "driver_cpus": 0},
        },
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(TrainingFailed, match="no checkpoint was kept"):  # the only trial never started
            pipeline.run(job)
    finally:
        remove_placement_group(held)
    assert left_in_ray() == []
    assert signal.getsignal(signal.SIGINT) is handler  # Tune's own is gone: the next ctrl-C is this process's


def test_ctrl_c_in_a_process_that_keeps_its_ray_stops_the_run_and_leaves_nothing(ray_local, tmp_path):
    job = two_workers(tmp_path, train={"steps": 100_000, "eval_every": 10})
    metrics = tmp_path / "runs" / "tiny" / "trials" / "main" / "metrics"

    def press_ctrl_c_once_training() -> None:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and any(metrics.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.1)
        _thread.interrupt_main()  # as a notebook's interrupt button or ctrl-C would

    handler = signal.getsignal(signal.SIGINT)
    threading.Thread(target=press_ctrl_c_once_training, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(job)
    assert signal.getsignal(signal.SIGINT) is handler  # the next ctrl-C is this process's again
    assert left_in_ray() == []


def test_after_every_ending_above_a_two_worker_run_completes_in_the_same_ray(ray_local, tmp_path):
    outcome = pipeline.run(two_workers(tmp_path, cluster={"placement_timeout_s": 30}))
    assert outcome.record["status"] == "completed"
    assert left_in_ray() == []
    assert ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU")
