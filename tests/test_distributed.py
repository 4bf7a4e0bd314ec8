"""Data parallelism, fault tolerance and checkpoint keeping through real Ray Train workers (gloo on CPU).

The reference for every Ray run here is the same job trained in this process by one worker whose
batch is the sum of the Ray workers' batches: with the streams layout and gradient averaging the
two compute the same thing, so their weights agree to float tolerance.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnfarm.engine.loop import Job, LocalSession, evaluate_split, train
from rnnfarm.engine.model import CharRNN
from rnnfarm.launch import pipeline
from rnnfarm.layout import Run
from rnnfarm.spec import EvalSpec, ModelSpec
from rnnfarm.storage import Store

from .conftest import make_spec

MODEL = {"layers": 2, "hidden": 48, "embedding": 16, "dropout": 0.0}


def spec_for(storage: Path, workers: int, batch: int, **train_options):
    return make_spec(
        str(storage),
        model=MODEL,
        train={"batch_size": batch, "seq_len": 32, "precision": "fp32", "warmup_steps": 0, **train_options},
        cluster={"workers": workers},
    )


def in_process(shakespeare, storage: Path, batch: int, **train_options) -> tuple[dict, Path]:
    """One worker, in this process: the final metrics and its last checkpoint's folder."""
    job_spec = spec_for(storage, 1, batch, **train_options)
    session = LocalSession(storage / "checkpoints")
    metrics = train(Job(job_spec, shakespeare.folder, Run(Store.at(str(storage)) / "runs" / "ref").trial()), session)
    return metrics, storage / "checkpoints" / f"checkpoint-{metrics['step']:06d}"


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_workers_with_batch_b_reach_the_weights_of_one_worker_with_batch_2b(ray_local, shakespeare, tmp_path):
    # Cold starts on: each rank resets its own streams, as the one worker resets the same ones of its batch
    steps = {"steps": 5, "eval_every": 5, "state_reset": 0.3}
    uneven = {"eval": EvalSpec(streams=7, warmup=4)}  # 7 evaluation streams: not divisible by the workers
    outcome = pipeline.run(spec_for(tmp_path / "ray", workers=2, batch=8, **steps).model_copy(update=uneven))
    assert outcome.record["status"] == "completed"
    two_workers = weights(Path(outcome.run.trial().url) / "checkpoint-000005")

    _, folder = in_process(shakespeare, tmp_path / "one", batch=16, **steps)
    _, half = in_process(shakespeare, tmp_path / "half", batch=8, **steps)
    start = weights(Path(in_process(shakespeare, tmp_path / "start", batch=16, steps=1, eval_every=1)[1]))

    moved = max_difference(weights(folder), start)
    assert max_difference(two_workers, weights(folder)) < 5e-5 < 1e-2 < moved
    assert max_difference(weights(half), weights(folder)) > 1e-3  # half the batch is measurably another run

    # The val loss the two workers reported (7 streams shared 3 + 4) is the checkpoint's on one worker, 7 streams
    reported = outcome.run.trial().metrics(5).read_json()["val_loss"]
    one_worker = spec_for(tmp_path / "ray", 1, 16, **steps).model_copy(update=uneven)
    one_job = Job(one_worker, shakespeare.folder, outcome.run.trial())
    assert evaluate_split(one_job, Path(outcome.run.trial().url) / "checkpoint-000005", "val") == pytest.approx(
        reported, rel=1e-7
    )


@pytest.mark.parametrize("grad_clip", [None, 0.05], ids=["unclipped", "clipped"])
def test_two_sgd_workers_average_their_gradients_then_clip_the_mean(ray_local, shakespeare, tmp_path, grad_clip):
    # Plain SGD moves the weights by lr x the gradient it is given: the workers' summed gradient would move
    # them twice as far; each worker clipping its own gradient before the average would move them elsewhere.
    options = {"optimizer": "sgd", "lr": 2.0, "grad_clip": grad_clip, "steps": 3, "eval_every": 1}
    outcome = pipeline.run(spec_for(tmp_path / "ray", workers=2, batch=8, **options))
    trial = Path(outcome.run.trial().url)
    two_workers = weights(trial / "checkpoint-000003")
    _, folder = in_process(shakespeare, tmp_path / "one", batch=16, **options)

    torch.manual_seed(outcome.record["spec"]["train"]["seed"])  # the loop's initial weights
    start = CharRNN(65, ModelSpec(**MODEL)).state_dict()
    assert max_difference(two_workers, weights(folder)) < 1e-5 < 1e-3 < max_difference(weights(folder), start)
    if grad_clip:  # the averaged gradient's norm, before clipping: every step was clipped
        norms = [json.loads((trial / "metrics" / f"step-{s:06d}.json").read_text())["grad_norm"] for s in (1, 2, 3)]
        assert min(norms) > 2 * grad_clip


def trainer_pids() -> list[int]:
    """Process ids of the live training workers (actors Ray Train starts) of this session's Ray."""
    import ray
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    return sorted(a.pid for a in list_actors(address=ray.get_runtime_context().gcs_address, filters=filters))


def descends_from_this_process(pid: int) -> bool:
    while pid > 1:
        with open(f"/proc/{pid}/status") as f:
            pid = int(next(line for line in f if line.startswith("PPid:")).split()[1])
        if pid == os.getpid():
            return True
    return False


def latest_registered(trial: Path) -> str | None:
    """The checkpoint Ray Train resumes from, as its checkpoint manager last persisted it."""
    try:
        snapshot = json.loads((trial / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")


class Killer(threading.Thread):
    """SIGKILLs one training worker as soon as Ray has registered ``checkpoint`` as the resume point."""

    def __init__(self, trial: Path, checkpoint: str, workers: int) -> None:
        super().__init__(daemon=True)
        self.trial, self.checkpoint, self.workers = trial, checkpoint, workers
        self.killed: int | None = None
        self.evaluated_before: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the test's thread
            self.error = exc

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        pids: list[int] = []
        while len(pids) < self.workers and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = trainer_pids()
        assert all(descends_from_this_process(pid) for pid in pids)  # started by this test session's Ray
        while latest_registered(self.trial) != self.checkpoint:
            assert time.monotonic() < deadline, f"{self.checkpoint} was never registered"
            time.sleep(0.01)
        os.kill(pids[-1], signal.SIGKILL)
        self.killed = pids[-1]
        self.evaluated_before = sorted(int(p.stem.split("-")[1]) for p in (self.trial / "metrics").iterdir())


@pytest.mark.parametrize("max_failures", [1, 0], ids=["restarted-by-ray", "resumed-by-running-again"])
def test_a_killed_worker_costs_at_most_one_checkpoint_interval(ray_local, shakespeare, tmp_path, max_failures):
    interval = 20
    options = {"steps": 3 * interval, "eval_every": interval, "keep_best": 1, "max_failures": max_failures}
    options["seq_len"] = 128  # steps long enough (tens of ms) that the kill lands between two checkpoints
    job_spec = spec_for(tmp_path / "ray", workers=2, batch=16, **options)
    trial = tmp_path / "ray" / "runs" / "tiny" / "trials" / "main"
    killer = Killer(trial, f"checkpoint-{interval:06d}", workers=2)
    killer.start()
    if max_failures == 0:
        with pytest.raises(pipeline.TrainingFailed) as failed:
            pipeline.run(job_spec)
        assert "health check failed" in str(failed.value)  # the reason names the worker that died
        assert json.loads((trial.parent.parent / "run.json").read_text())["status"] == "failed"
    outcome = pipeline.run(job_spec)  # with max_failures 0: `rnnfarm run` again, the same spec and name
    killer.join()
    if killer.error:
        raise killer.error

    assert killer.killed is not None and outcome.record["status"] == "completed"
    # Killed after the checkpoint at `interval` and before the evaluation at 2 * interval ...
    assert killer.evaluated_before == [interval]
    final = json.loads((trial / "metrics" / f"step-{3 * interval:06d}.json").read_text())
    # ... and resumed from that checkpoint: at most `interval` steps were done twice.
    assert final["resumed_from"] == interval and final["step"] == 3 * interval

    reference, folder = in_process(shakespeare, tmp_path / "one", batch=32, **options)
    assert abs(final["val_loss"] - reference["val_loss"]) < 1e-4
    assert max_difference(weights(trial / f"checkpoint-{3 * interval:06d}"), weights(folder)) < 1e-4

    # Kept: the best checkpoint by val loss and the latest (the resume point), nothing else.
    evaluated = {
        int(p.stem.split("-")[1]): json.loads(p.read_text())["val_loss"] for p in (trial / "metrics").iterdir()
    }
    best = min(evaluated, key=evaluated.get)
    kept = sorted(p.name for p in trial.glob("checkpoint-*") if p.is_dir())
    assert kept == sorted({f"checkpoint-{best:06d}", f"checkpoint-{3 * interval:06d}"})


def test_ray_keeps_the_best_checkpoints_by_val_loss_and_the_latest(ray_local, tmp_path):
    # A learning rate warmed up to 1.0 makes the model worse after the first evaluation.
    options = {"steps": 30, "eval_every": 10, "keep_best": 1, "lr": 1.0, "warmup_steps": 29, "grad_clip": None}
    outcome = pipeline.run(make_spec(str(tmp_path), train=options))
    trial = Path(outcome.run.trial().url)
    val = {m["step"]: m["val_loss"] for m in (json.loads(p.read_text()) for p in (trial / "metrics").iterdir())}
    assert min(val, key=val.get) == 10 and val[30] > val[10]
    kept = sorted(p.name for p in trial.glob("checkpoint-*") if p.is_dir())
    assert kept == ["checkpoint-000010", "checkpoint-000030"]  # the best, and the latest to resume from
    assert outcome.best["step"] == 10 and outcome.best["checkpoint"] == "checkpoint-000010"
