"""The per-worker loop, in-process: it learns, its checkpoints round-trip, its samples are seeded."""

from __future__ import annotations

import pytest
import torch

from rnnfarm.engine import checkpoint, loop
from rnnfarm.engine.loop import Job, LocalSession, make_optimizer, train
from rnnfarm.engine.model import CharRNN
from rnnfarm.errors import UserError
from rnnfarm.insight.sample import sample
from rnnfarm.layout import Run
from rnnfarm.spec import ModelSpec, TrainSpec
from rnnfarm.storage import Store

from .conftest import PRECISIONS, make_spec, runs_out_of_device_memory


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
    steps = [s.name for s in (trial.store / "samples").list()]
    assert steps == ["step-000015.json", "step-000030.json"]
    drawn = (trial.store / "samples" / "step-000030.json").read_json()
    assert drawn["step"] == 30 and len(drawn["samples"][0]["text"]) == 40
    assert (trial.store / "metrics" / "step-000030.json").read_json()["val_bpc"] > 0


def test_sampling_is_deterministic_under_a_seed(shakespeare, tmp_path):
    run_in_process(shakespeare, tmp_path)
    folder = str(tmp_path / "checkpoints" / "checkpoint-000030")
    one = "".join(sample(folder, prime="ROMEO:", length=200, temperature=0.8, seed=1))
    two = "".join(sample(folder, prime="ROMEO:", length=200, temperature=0.8, seed=1))
    other = "".join(sample(folder, prime="ROMEO:", length=200, temperature=0.8, seed=2))
    assert one == two and len(one) == 200
    assert one != other


def test_evaluation_samples_are_the_text_rnnfarm_sample_draws_from_the_checkpoint_with_the_steps_seed(
    shakespeare, tmp_path, monkeypatch
):
    trained, drawn_from = [], []
    step, generate = loop.train_step, loop.generate
    monkeypatch.setattr(loop, "train_step", lambda w, *a, **k: trained.append(w.model) or step(w, *a, **k))
    monkeypatch.setattr(loop, "generate", lambda model, *a, **k: drawn_from.append(model) or generate(model, *a, **k))
    _, trial = run_in_process(shakespeare, tmp_path, train=AVERAGED, samples={"temperatures": [0.8, 1.0], "length": 60})
    # drawn from a CPU copy of the weights: a character at a time costs no device sync
    assert drawn_from and not any(model is trained[0] for model in drawn_from)
    assert {p.device.type for model in drawn_from for p in model.parameters()} == {"cpu"}
    for at in (15, 30):
        folder = str(tmp_path / "checkpoints" / f"checkpoint-{at:06d}")
        for s in trial.samples(at).read_json()["samples"]:
            seed = 1337 + at  # train.seed + the step
            drawn = sample(folder, prime=s["prime"], length=60, temperature=s["temperature"], seed=seed)
            assert s["text"] == "".join(drawn)


def test_priming_with_characters_outside_the_vocabulary_is_refused(shakespeare, tmp_path):
    run_in_process(shakespeare, tmp_path)
    folder = str(tmp_path / "checkpoints" / "checkpoint-000030")
    with pytest.raises(UserError, match=r"2 character\(s\) outside the model's vocabulary: '5€'"):  # no digit 5
        "".join(sample(folder, prime="ROMEO: €5"))


class Interrupted(Exception):
    """Stands in for a worker stopping (killed, preempted) right after a checkpoint."""


class StopAfterCheckpoint(LocalSession):
    def report(self, metrics, folder, name):
        super().report(metrics, folder, name)
        raise Interrupted(name)


def tensors(folder, name):
    from safetensors.torch import load_file

    return load_file(str(folder / name))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_resuming_after_a_stop_continues_bitwise_like_a_run_that_never_stopped(shakespeare, tmp_path, precision):
    sections = {
        "model": {"layers": 2, "hidden": 32, "dropout": 0.2},  # dropout: the RNG state must be restored too
        "train": {"steps": 16, "eval_every": 8, "precision": precision, "warmup_steps": 2},
    }
    straight, _ = run_in_process(shakespeare, tmp_path / "straight", **sections)

    job_spec = make_spec(str(tmp_path / "storage"), **sections)
    job = Job(job_spec, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial())
    with pytest.raises(Interrupted):
        train(job, StopAfterCheckpoint(tmp_path / "stopped"))
    assert [p.name for p in (tmp_path / "stopped").iterdir()] == ["checkpoint-000008"]
    resumed = LocalSession(tmp_path / "stopped")
    train(job, resumed)
    assert resumed.reports[-1]["resumed_from"] == 8 and straight.reports[-1]["resumed_from"] == 0

    a, b = tmp_path / "straight" / "checkpoints" / "checkpoint-000016", tmp_path / "stopped" / "checkpoint-000016"
    for name in ("model.safetensors", "optimizer.safetensors", "worker-0.safetensors"):
        first, second = tensors(a, name), tensors(b, name)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), name
    assert straight.reports[-1]["val_loss"] == resumed.reports[-1]["val_loss"]


def test_the_test_split_is_evaluated_like_the_val_split(shakespeare, tmp_path):
    from rnnfarm.corpus.build import build
    from rnnfarm.engine.loop import evaluate_split

    job_spec = make_spec(str(tmp_path / "storage"), corpus={"val": 0.05, "test": 0.05})
    built = build(Store.at(job_spec.storage), job_spec.corpus)
    assert built.manifest["splits"]["test"]["chars"] == pytest.approx(0.05 * 1_115_394, abs=2)
    session = LocalSession(tmp_path / "checkpoints")
    job = Job(job_spec, built.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial())
    metrics = train(job, session)
    folder = tmp_path / "checkpoints" / "checkpoint-000030"
    assert evaluate_split(job, folder, "val") == pytest.approx(metrics["val_loss"], abs=1e-6)
    test_loss = evaluate_split(job, folder, "test")
    assert 0.5 * metrics["val_loss"] < test_loss < 4.17 and test_loss != metrics["val_loss"]


def test_adamw_decays_the_weight_matrices_and_leaves_the_biases_alone():
    model = CharRNN(65, ModelSpec(layers=2, hidden=16, embedding=8))
    optimizer = make_optimizer(model, TrainSpec(optimizer="adamw", lr=0.1, weight_decay=0.5))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves a weight
    optimizer.step()
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if p.dim() >= 2 else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)


AVERAGED = {"average": {"kind": "ema", "decay": 0.9}}
REGULARIZED = {"weight_drop": 0.3, "dropout_input": 0.2, "dropout_between": 0.2, "dropout_embedding": 0.1}


@pytest.mark.parametrize("average", [{"kind": "ema", "decay": 0.9}, {"kind": "swa", "start": 4}])
def test_the_averaged_weights_are_what_is_evaluated_and_saved(shakespeare, tmp_path, average):
    import shutil

    from rnnfarm.engine.loop import evaluate_split

    session, _ = run_in_process(shakespeare, tmp_path, train={"steps": 12, "eval_every": 12, "average": average})
    folder = tmp_path / "checkpoints" / "checkpoint-000012"
    saved, raw = tensors(folder, "model.safetensors"), tensors(folder, "raw.safetensors")
    assert saved.keys() == raw.keys() and not all(torch.equal(saved[k], raw[k]) for k in saved)
    job_spec = make_spec(str(tmp_path / "storage"), train={"steps": 12, "average": average})
    job = Job(job_spec, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial())
    assert evaluate_split(job, folder, "val") == pytest.approx(session.reports[-1]["val_loss"], abs=1e-6)
    as_raw = shutil.copytree(folder, tmp_path / "as-raw")  # the same checkpoint with the raw weights as its model
    shutil.copy(as_raw / "raw.safetensors", as_raw / "model.safetensors")
    assert evaluate_split(job, as_raw, "val") != pytest.approx(session.reports[-1]["val_loss"], abs=1e-6)


def test_resuming_with_averaging_and_every_regularizer_continues_bitwise(shakespeare, tmp_path):
    sections = {
        "model": {"layers": 2, "hidden": 32, **REGULARIZED},
        "train": {"steps": 16, "eval_every": 8, "precision": "fp32", **AVERAGED},
    }
    straight, _ = run_in_process(shakespeare, tmp_path / "straight", **sections)
    job_spec = make_spec(str(tmp_path / "storage"), **sections)
    job = Job(job_spec, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial())
    with pytest.raises(Interrupted):
        train(job, StopAfterCheckpoint(tmp_path / "stopped"))
    resumed = LocalSession(tmp_path / "stopped")
    train(job, resumed)
    a, b = tmp_path / "straight" / "checkpoints" / "checkpoint-000016", tmp_path / "stopped" / "checkpoint-000016"
    for name in ("model.safetensors", "raw.safetensors", "optimizer.safetensors", "worker-0.safetensors"):
        first, second = tensors(a, name), tensors(b, name)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), name
    assert straight.reports[-1]["val_loss"] == resumed.reports[-1]["val_loss"]


def test_running_out_of_device_memory_stops_training_in_one_line_naming_the_batch_and_the_model_size(
    shakespeare, tmp_path, monkeypatch
):
    # Simulated: no GPU here, so the third forward pass raises what torch raises when a GPU's memory runs out.
    forward, calls = CharRNN.forward, []

    def runs_out_at_the_third_step(self, x, state=None):
        calls.append(x.shape)
        return runs_out_of_device_memory() if len(calls) == 3 else forward(self, x, state)

    monkeypatch.setattr(CharRNN, "forward", runs_out_at_the_third_step)
    with pytest.raises(UserError) as stopped:
        run_in_process(shakespeare, tmp_path, model={"layers": 2, "hidden": 32}, train={"batch_size": 8, "seq_len": 32})
    parameters = sum(p.numel() for p in CharRNN(65, ModelSpec(layers=2, hidden=32, embedding=16)).parameters())
    assert str(stopped.value) == (
        f"out of memory on cpu with a batch of 8 x 32 characters per worker and a model of {parameters:,} "
        "parameters: lower train.batch_size or train.seq_len, or the model's size (model.hidden, model.layers)"
    )
    assert not (tmp_path / "checkpoints").exists()  # nothing of the failed run is kept
