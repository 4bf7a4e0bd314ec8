"""A diverging run: rolled back to its last good checkpoint with the learning rate cut, then stopped in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnfarm.engine.loop import Job, LocalSession, train
from rnnfarm.errors import Diverged
from rnnfarm.launch import pipeline
from rnnfarm.layout import RAY_SNAPSHOT, Run, Trial
from rnnfarm.runs import leaderboard
from rnnfarm.runs.leaderboard import TrialEnd
from rnnfarm.runs.state import trial_state
from rnnfarm.storage import Store

from .conftest import make_spec


class PlantsNaN(LocalSession):
    """Plants a NaN in a gradient at one step (as a bad batch or a faulty device would) and keeps the weights
    each step starts from. A stand-in only for the fault: the loop, its checkpoints and its rollback are real."""

    def __init__(self, folder: Path, at_call: int) -> None:
        super().__init__(folder)
        self.at_call, self.calls, self.starts = at_call, 0, []

    def average_gradients(self, model: torch.nn.Module) -> None:
        self.calls += 1
        self.starts.append({k: v.clone() for k, v in model.state_dict().items()})
        if self.calls == self.at_call:
            next(model.parameters()).grad[0] = math.nan


def job_for(shakespeare, tmp_path: Path, **train_options) -> Job:
    job_spec = make_spec(str(tmp_path / "storage"), train={"steps": 30, "eval_every": 10, **train_options})
    return Job(job_spec, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial())


def stored_val_losses(folder: Path, trial: Trial) -> list[float]:
    """Every val loss written: in each checkpoint's metadata and each evaluation's metrics."""
    metas = [json.loads((c / "meta.json").read_text())["val_loss"] for c in folder.glob("checkpoint-*")]
    return metas + [m["val_loss"] for m in trial.evaluations()]


def test_a_nan_rolls_back_to_the_last_good_checkpoint_with_the_learning_rate_cut(shakespeare, tmp_path):
    job = job_for(shakespeare, tmp_path, lr=0.01, rollback_lr_factor=0.25, decay="none")
    session = PlantsNaN(tmp_path / "checkpoints", at_call=15)
    metrics = train(job, session)

    # Steps 15 to 20 were taken on NaN weights; the loop went back to step 10 and did them again.
    assert session.calls == 40 and metrics["step"] == 30
    good = load_file(str(tmp_path / "checkpoints" / "checkpoint-000010" / "model.safetensors"))
    restarted = session.starts[20]  # the step after the rollback starts from the checkpoint's weights, exactly
    assert all(torch.equal(restarted[k], good[k]) for k in good)
    assert [(r["step"], r["rollbacks"], r["lr"]) for r in session.reports] == [
        (10, 0, 0.01),
        (20, 1, 0.0025),
        (30, 1, 0.0025),
    ]
    assert all(math.isfinite(v) for v in stored_val_losses(tmp_path / "checkpoints", job.trial))


def test_a_loss_that_keeps_exploding_stops_the_trial_after_max_rollbacks_in_one_line(shakespeare, tmp_path):
    job = job_for(shakespeare, tmp_path, optimizer="sgd", lr=1e4, grad_clip=None, max_rollbacks=2)
    session = LocalSession(tmp_path / "checkpoints")
    with pytest.raises(Diverged) as stopped:
        train(job, session)
    message = str(stopped.value)
    assert "\n" not in message
    assert message.startswith("training diverged at step 10 (train loss ")
    assert "after 2 rollback(s)" in message and "cut to 0.25 x train.lr" in message
    assert "lower train.lr (now 10000), set train.grad_clip or raise train.max_rollbacks" in message
    assert session.reports == [] and stored_val_losses(tmp_path / "checkpoints", job.trial) == []


def test_a_run_whose_two_workers_diverge_fails_in_one_line_and_stores_no_nan(ray_local, tmp_path):
    # An absurd learning rate after a good first evaluation: warmed up from 10 to 300 over 29 steps.
    options = {"optimizer": "sgd", "lr": 300, "warmup_steps": 29, "grad_clip": None, "max_rollbacks": 1}
    job_spec = make_spec(str(tmp_path), train={"steps": 30, "eval_every": 10, **options}, cluster={"workers": 2})
    with pytest.raises(pipeline.TrainingFailed) as failed:
        pipeline.run(job_spec)
    message = str(failed.value)
    assert message.startswith("training diverged at step ") and "\n" not in message
    run = Run(Store.at(str(tmp_path)) / "runs" / "tiny")
    assert run.info()["status"] == "failed" and run.info()["error"] == message
    trial = Path(run.trial().url)
    assert all(math.isfinite(v) for v in stored_val_losses(trial, run.trial()))
    assert run.trial().evaluations()[0]["step"] == 10  # the good first evaluation was kept

    with pytest.raises(pipeline.TrainingFailed, match="^training diverged at step "):  # the same spec: not again
        pipeline.run(job_spec)


def test_a_nan_val_loss_is_never_ranked_or_promoted(tmp_path):
    trial = Trial(Store.at(str(tmp_path)) / "trials" / "main")
    for step, val in [(10, math.nan), (20, 2.5)]:  # a NaN first: min() would keep it
        metrics = {"step": step, "val_loss": val, "chars": step, "elapsed_s": step}
        (trial.store / "metrics" / f"step-{step:06d}.json").write_json(metrics)
        (trial.store / f"checkpoint-{step:06d}" / "meta.json").write_json({"step": step, "val_loss": val})
    names = [{"checkpoint_dir_name": f"checkpoint-{s:06d}"} for s in (10, 20)]
    (trial.store / RAY_SNAPSHOT).write_json({"checkpoint_results": names})  # as Ray's manager writes it

    kept = leaderboard.best_checkpoint(trial)
    assert kept[0] == "checkpoint-000020"
    row = leaderboard.row(trial_state(trial, target=20), TrialEnd("main", {}), kept)
    assert (row["best_val_loss"], row["best_step"]) == (2.5, 20)
