"""Cold starts in training (``train.state_reset``): some streams start a batch again from a zero state, drawn
per stream from a seeded generator that resume restores; evaluation never sees them."""

from __future__ import annotations

import pytest
import torch

from rnnfarm.engine.loop import Job, LocalSession, evaluate_split, set_up, train
from rnnfarm.engine.model import reset_rows
from rnnfarm.engine.streams import ColdStarts
from rnnfarm.layout import Run
from rnnfarm.spec import TrainSpec
from rnnfarm.storage import Store

from .conftest import make_spec
from .test_divergence import PlantsNaN
from .test_train import Interrupted, StopAfterCheckpoint, run_in_process, tensors

COLD = {"steps": 16, "eval_every": 8, "precision": "fp32", "state_reset": 0.3}
MODEL = {"layers": 2, "hidden": 32, "dropout": 0.2}  # dropout: its RNG and the cold starts' are apart


def job_for(shakespeare, storage, **sections):
    job_spec = make_spec(str(storage), **sections)
    return Job(job_spec, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial())


def test_cold_starts_are_off_unless_asked_for(shakespeare, tmp_path):
    assert TrainSpec().state_reset == 0
    assert set_up(job_for(shakespeare, tmp_path), LocalSession(tmp_path / "c")).cold is None
    asked = job_for(shakespeare, tmp_path, train={"state_reset": 0.1})
    assert set_up(asked, LocalSession(tmp_path / "c")).cold is not None


def test_a_cold_start_zeroes_the_drawn_streams_state_and_keeps_the_others():
    h, c = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    rows = torch.tensor([True, False, False, True])
    new_h, new_c = reset_rows((h, c), rows)
    for new, old in ((new_h, h), (new_c, c)):
        assert torch.equal(new[:, rows], torch.zeros(2, 2, 3)) and torch.equal(new[:, ~rows], old[:, ~rows])
    gru = reset_rows(h, rows)  # a GRU's or a plain RNN's state: one tensor
    assert torch.equal(gru[:, ~rows], h[:, ~rows]) and not gru[:, rows].any()


def test_each_stream_draws_its_own_cold_starts_and_a_rank_draws_its_slice_of_the_one_worker_draw():
    def draws(rank: int, world: int, batch: int, steps: int = 400) -> torch.Tensor:
        cold = ColdStarts(0.25, seed=5, batch=batch, rank=rank, world=world)
        return torch.stack([cold.draw() for _ in range(steps)])

    one = draws(0, 1, 12)
    assert torch.equal(torch.cat([draws(r, 3, 4) for r in range(3)], dim=1), one)
    assert one.float().mean().item() == pytest.approx(0.25, abs=0.02)
    columns = one.T.float()
    assert not any(torch.equal(columns[i], columns[j]) for i in range(12) for j in range(i))  # independent draws
    assert torch.equal(draws(0, 1, 12), one) and not torch.equal(
        torch.stack([ColdStarts(0.25, seed=6, batch=12, rank=0, world=1).draw() for _ in range(400)]), one
    )


def test_training_with_cold_starts_is_deterministic_for_a_seed_and_differs_from_training_without(shakespeare, tmp_path):
    def final(name: str, **train_options) -> dict[str, torch.Tensor]:
        session, _ = run_in_process(shakespeare, tmp_path / name, model=MODEL, train={**COLD, **train_options})
        return tensors(tmp_path / name / "checkpoints" / "checkpoint-000016", "model.safetensors")

    one, again, carried = final("one"), final("again"), final("carried", state_reset=0.0)
    assert all(torch.equal(one[k], again[k]) for k in one)
    assert not all(torch.equal(one[k], carried[k]) for k in one)


def test_resuming_with_cold_starts_continues_bitwise_like_a_run_that_never_stopped(shakespeare, tmp_path):
    straight, _ = run_in_process(shakespeare, tmp_path / "straight", model=MODEL, train=COLD)
    job = job_for(shakespeare, tmp_path / "storage", model=MODEL, train=COLD)
    with pytest.raises(Interrupted):
        train(job, StopAfterCheckpoint(tmp_path / "stopped"))
    resumed = LocalSession(tmp_path / "stopped")
    train(job, resumed)
    assert resumed.reports[-1]["resumed_from"] == 8
    a, b = tmp_path / "straight" / "checkpoints" / "checkpoint-000016", tmp_path / "stopped" / "checkpoint-000016"
    for name in ("model.safetensors", "optimizer.safetensors", "worker-0.safetensors"):
        first, second = tensors(a, name), tensors(b, name)
        assert first.keys() == second.keys() and "cold_rng" in tensors(a, "worker-0.safetensors")
        assert all(torch.equal(first[k], second[k]) for k in first), name
    assert straight.reports[-1]["val_loss"] == resumed.reports[-1]["val_loss"]


def test_cold_starts_act_in_training_only_the_val_loss_is_the_checkpoints_without_them(shakespeare, tmp_path):
    session, _ = run_in_process(shakespeare, tmp_path, model=MODEL, train={**COLD, "state_reset": 0.5})
    folder = tmp_path / "checkpoints" / "checkpoint-000016"
    carried = job_for(shakespeare, tmp_path / "storage", model=MODEL, train={**COLD, "state_reset": 0.0})
    assert evaluate_split(carried, folder, "val") == session.reports[-1]["val_loss"]


def test_a_rollback_takes_the_cold_starts_back_with_the_rest_of_the_last_good_checkpoint(shakespeare, tmp_path):
    """A NaN planted in step 12's gradient sends the loop back to step 8 (test_divergence); the steps it takes
    again draw the cold starts they drew the first time, so the generator ends where a run without the fault
    leaves it, not four draws on."""
    run_in_process(shakespeare, tmp_path / "straight", model=MODEL, train=COLD)
    faulty = PlantsNaN(tmp_path / "faulty", at_call=12)
    train(job_for(shakespeare, tmp_path / "storage", model=MODEL, train=COLD), faulty)
    assert faulty.calls == 24 and faulty.reports[-1]["rollbacks"] == 1  # steps 9 to 16 taken twice
    straight = tensors(tmp_path / "straight" / "checkpoints" / "checkpoint-000016", "worker-0.safetensors")
    again = tensors(tmp_path / "faulty" / "checkpoint-000016", "worker-0.safetensors")
    assert torch.equal(straight["cold_rng"], again["cold_rng"])
