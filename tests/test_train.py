"""The per-worker loop, in-process: it learns, its checkpoints round-trip, its samples are seeded."""

from __future__ import annotations

import pytest
import torch

from rnnfarm import checkpoint
from rnnfarm.errors import UserError
from rnnfarm.runs import Run
from rnnfarm.sample import sample
from rnnfarm.storage import Store
from rnnfarm.train import Job, LocalSession, train

from .conftest import make_spec


def run_in_process(shakespeare, tmp_path, **sections):
    job_spec = make_spec(str(tmp_path / "storage"), **sections)
    trial = Run(Store.at(job_spec.storage) / "runs" / "t").trial()
    session = LocalSession(tmp_path / "checkpoints")
    train(Job(job_spec, shakespeare.folder, trial), session)
    return session, trial


def test_a_few_steps_lower_the_loss(shakespeare, tmp_path):
    session, _ = run_in_process(shakespeare, tmp_path, train={"steps": 60, "eval_every": 20, "precision": "fp32"})
    val = [r["val_loss"] for r in session.reports]
    assert len(val) == 3
    assert val[-1] < val[0] < 4.2  # ln(65) = 4.17 is the loss of a uniform guess
    assert val[-1] < 3.3


def test_checkpoint_round_trip_gives_identical_logits(shakespeare, tmp_path):
    session, _ = run_in_process(shakespeare, tmp_path)
    folder = tmp_path / "checkpoints" / "checkpoint-000030"
    model, vocab, meta = checkpoint.load_model(folder)
    again, _, _ = checkpoint.load_model(folder)
    assert meta["step"] == 30 and meta["corpus"]["fingerprint"] == shakespeare.fingerprint
    x = torch.from_numpy(vocab.encode("ROMEO:\nWhat light").astype("int64"))[None]
    first, _ = model(x)
    second, _ = again(x)
    assert torch.equal(first, second)
    assert set(p.name for p in folder.iterdir()) >= {"model.safetensors", "meta.json", "optimizer.safetensors"}


def test_each_evaluation_stores_samples_and_metrics(shakespeare, tmp_path):
    _, trial = run_in_process(shakespeare, tmp_path)
    steps = [s.name for s in (trial / "samples").list()]
    assert steps == ["step-000015.json", "step-000030.json"]
    drawn = (trial / "samples" / "step-000030.json").read_json()
    assert drawn["step"] == 30 and len(drawn["samples"][0]["text"]) == 40
    assert (trial / "metrics" / "step-000030.json").read_json()["val_bpc"] > 0


def test_sampling_is_deterministic_under_a_seed(shakespeare, tmp_path):
    run_in_process(shakespeare, tmp_path)
    folder = str(tmp_path / "checkpoints" / "checkpoint-000030")
    one = "".join(sample(folder, prime="ROMEO:", length=200, temperature=0.8, seed=1))
    two = "".join(sample(folder, prime="ROMEO:", length=200, temperature=0.8, seed=1))
    other = "".join(sample(folder, prime="ROMEO:", length=200, temperature=0.8, seed=2))
    assert one == two and len(one) == 200
    assert one != other


def test_priming_with_characters_outside_the_vocabulary_is_refused(shakespeare, tmp_path):
    run_in_process(shakespeare, tmp_path)
    folder = str(tmp_path / "checkpoints" / "checkpoint-000030")
    with pytest.raises(UserError, match=r"2 character\(s\) outside the model's vocabulary: '5€'"):  # no digit 5
        "".join(sample(folder, prime="ROMEO: €5"))
