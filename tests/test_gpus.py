"""GPUs as Ray users expect them: fractions of a GPU shared by a sweep's trials, sweep concurrency counting GPUs,
refusals before anything starts, and the device and backend chosen from what torch sees on a worker.

The shared test Ray has 2 CPUs and 1 logical GPU: real Ray scheduling, and no CUDA behind it. A worker that holds
the GPU finds none, so it trains on the CPU over gloo: on this CPU-only torch, NCCL cannot start a process group
and ``cuda:0`` cannot hold a tensor, so a trial that completes there trained on the CPU over gloo.
"""

from __future__ import annotations

import json
import threading
import time

import ray
import yaml
from click.testing import CliRunner
from ray.util.placement_group import placement_group, remove_placement_group

from rnnfarm.cli import cli
from rnnfarm.engine import placement
from rnnfarm.engine.placement import Waiting
from rnnfarm.engine.ray_train import Devices, devices_for, probe
from rnnfarm.launch import pipeline
from rnnfarm.launch.pipeline import TrialNeeds
from rnnfarm.layout import Run
from rnnfarm.runs import leaderboard
from rnnfarm.storage import Store

from .conftest import make_spec


def spec_file(tmp_path, **sections) -> str:
    job = make_spec(str(tmp_path / "storage"), **sections)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    return str(path)


def one_line_refusal(result, expected: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("{")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output


def test_sweep_concurrency_is_what_both_the_cpus_and_the_gpus_hold():
    def trials(cpus: float, gpus: float, *, workers=1, cpus_per_worker=1.0, gpus_per_worker=0.0, driver_cpus=0.0):
        needs = TrialNeeds("tune.resources", workers, cpus_per_worker, gpus_per_worker, driver_cpus)
        return needs.trials_in({"CPU": cpus, "GPU": gpus})

    assert trials(16, 0) == 16  # no GPU asked for: the CPUs decide, GPUs or not
    assert trials(16, 1, gpus_per_worker=1) == 1  # one at a time, not 16 trials queuing for the GPU
    assert trials(16, 1, gpus_per_worker=0.25) == 4  # four small trials share one GPU
    assert trials(32, 2, gpus_per_worker=0.1) == 20  # ten to a GPU
    assert trials(0.6, 0, cpus_per_worker=0.2) == 3  # read past float error: 0.6 / 0.2 is 2.9999999999999996
    assert trials(16, 2, gpus_per_worker=0.4) == 4  # a fraction stays within one GPU: 2 per GPU, not 2 / 0.4 = 5
    assert trials(16, 4, workers=2, gpus_per_worker=1) == 2
    assert trials(16, 8, workers=2, cpus_per_worker=4, gpus_per_worker=2, driver_cpus=0.01) == 1  # CPUs bind here
    assert trials(2, 1, cpus_per_worker=0.25, gpus_per_worker=0.25) == 4  # the test Ray: the GPU binds
    assert trials(2, 1, workers=2, gpus_per_worker=1) == 0  # never fits


def test_two_ranks_that_would_share_a_gpu_are_refused_in_one_line_before_anything_starts(tmp_path):
    # Ray would place both 0.5-GPU workers of one run on one GPU, and NCCL refuses that ("Duplicate GPU detected").
    path = tmp_path / "job.yaml"
    path.write_text(f"name: shared\nstorage: {tmp_path / 'storage'}\ncluster: {{workers: 2, gpus_per_worker: 0.5}}\n")
    one_line_refusal(
        CliRunner().invoke(cli, ["run", str(path)]),
        "cluster: 2 workers at gpus_per_worker 0.5 could put two ranks on one GPU, which NCCL refuses",
    )
    assert not (tmp_path / "storage").exists()


def test_a_sweep_trial_whose_gpus_can_never_fit_is_refused_before_the_sweep_starts_unless_the_cluster_grows(
    ray_local, tmp_path
):
    resources = {"workers": 2, "gpus_per_worker": 1, "driver_cpus": 0}
    tune = {"space": {"model.hidden": {"grid": [16]}}, "resources": resources}
    one_line_refusal(
        CliRunner().invoke(cli, ["run", spec_file(tmp_path, tune=tune)]),
        "tune.resources: one trial needs 2 GPUs (workers x gpus_per_worker), this Ray has 1",
    )
    assert not (tmp_path / "storage").exists()
    # Where the cluster adds nodes while trials wait, the same trial is let through (only a warning is logged)
    growing = make_spec(str(tmp_path / "storage"), tune=tune, cluster={"autoscaling": True})
    assert pipeline.ensure_ray(growing)["GPU"] == 1


def waiting(gpus: float, timeout_s: float = 60) -> Waiting:
    per_worker = {"CPU": 1.0, "GPU": gpus}
    return Waiting(workers=1, per_worker=per_worker, timeout_s=timeout_s, can_grow=False, patient=False, trial="t")


def test_on_logical_gpus_the_probe_chooses_the_cpu_over_gloo_and_on_cuda_nccl(ray_local):
    cluster = make_spec("unused", cluster={"workers": 1, "gpus_per_worker": 0.5}).cluster
    assert probe(cluster, waiting(0.5)) == Devices("cpu", "gloo", 0)  # Ray gave a GPU; torch there sees no CUDA
    assert devices_for(2) == Devices("cuda", "nccl", 2)  # what a worker with CUDA answers


def test_a_run_at_half_a_gpu_waits_for_it_names_what_holds_it_and_then_trains_on_the_cpu_over_gloo(ray_local, tmp_path):
    job = spec_file(tmp_path, cluster={"workers": 1, "gpus_per_worker": 0.5, "placement_timeout_s": 2})
    held = placement_group([{"GPU": 1}])  # another job's work, say
    ray.get(held.ready(), timeout=60)
    try:
        failed = CliRunner().invoke(cli, ["run", job])
    finally:
        remove_placement_group(held)
    assert failed.exit_code == 1, failed.output
    message = Run(Store.at(str(tmp_path / "storage")) / "runs" / "tiny").info()["error"]
    assert message.startswith("cluster: no room for one worker's 0.5 GPU within 2 s: this Ray has 0 of 1 GPUs free")
    assert f"placement group {held.id.hex()[:12]} (1 GPU, this job's driver)" in message and "\n" not in message
    assert f"error: {message}" in failed.output

    result = CliRunner().invoke(cli, ["run", job])  # the GPU free: the same spec goes on
    assert result.exit_code == 0, result.output
    (chosen,) = [json.loads(line) for line in result.output.splitlines() if '"backend": ' in line]
    assert (chosen["device"], chosen["backend"], chosen["level"]) == ("cpu", "gloo", "warning"), chosen
    assert chosen["event"] == "GPUs asked for, but torch sees none on a worker: training on CPUs"


def test_four_quarter_gpu_trials_run_together_sharing_the_one_gpu_and_train_on_the_cpu_over_gloo(ray_local, tmp_path):
    seen: list[dict[str, dict[str, float]]] = []  # the GPU-holding placement groups placed at each look at Ray's state
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append({g.id: g.resources for g in placement.groups() if g.placed and g.resources.get("GPU")})
            time.sleep(0.2)

    tune = {
        "space": {"model.hidden": {"grid": [8, 12, 16, 20]}},
        "samples": 1,
        "scheduler": {"kind": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 0.25, "gpus_per_worker": 0.25, "driver_cpus": 0},
    }
    train = {"steps": 10, "eval_every": 10, "batch_size": 4, "seq_len": 16}
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = CliRunner().invoke(cli, ["run", spec_file(tmp_path, name="quarters", train=train, tune=tune)])
    finally:
        done.set()
        watcher.join()
    assert result.exit_code == 0, result.output

    (sweeping,) = [json.loads(line) for line in result.output.splitlines() if '"event": "sweeping"' in line]
    assert sweeping["concurrency"] == 4  # the GPU's four quarters; the CPUs would hold 8
    rows = leaderboard.read(Run(Store.at(str(tmp_path / "storage" / "runs" / "quarters"))))
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows), rows

    groups = {gid: resources for look in seen for gid, resources in look.items()}
    assert len(groups) == 4 and all(r == {"CPU": 0.25, "GPU": 0.25} for r in groups.values()), groups
    assert max(len(look) for look in seen) >= 2  # side by side (all four, here, unless a trial ends early)
