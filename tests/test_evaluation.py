"""The fixed evaluation cut: a checkpoint's loss is the same whatever the batch and the workers."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.corpus import shards
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine import checkpoint
from rnnfarm.engine.loop import Job, LocalSession, evaluate, evaluate_split, train
from rnnfarm.engine.streams import eval_streams
from rnnfarm.errors import UserError
from rnnfarm.layout import Run
from rnnfarm.spec import EvalSpec
from rnnfarm.storage import Store

from .conftest import make_spec

SMALL_VAL = {"name": "shakespeare", "val": 0.01}


@pytest.fixture(scope="module")
def trained(shakespeare, tmp_path_factory):
    """A checkpoint of 4 steps, trained with batch 8 on one worker, and the val loss it reported."""
    tmp = tmp_path_factory.mktemp("eval")
    job_spec = make_spec(str(tmp / "storage"), train={"steps": 4, "eval_every": 4, "precision": "fp32"})
    session = LocalSession(tmp / "checkpoints")
    train(Job(job_spec, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial()), session)
    return tmp / "checkpoints" / "checkpoint-000004", session.reports[-1]["val_loss"], job_spec


def job_with(shakespeare, job_spec, **train_and_cluster):
    batch, workers = train_and_cluster["batch_size"], train_and_cluster["workers"]
    changed = job_spec.model_copy(
        update={
            "train": job_spec.train.model_copy(update={"batch_size": batch}),
            "cluster": job_spec.cluster.model_copy(update={"workers": workers}),
        }
    )
    return Job(changed, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial())


@pytest.mark.parametrize(("batch_size", "workers"), [(8, 1), (32, 1), (8, 2), (3, 4)])
def test_a_checkpoints_val_loss_does_not_change_with_the_batch_or_the_workers(
    shakespeare, trained, batch_size, workers
):
    folder, reported, job_spec = trained
    job = job_with(shakespeare, job_spec, batch_size=batch_size, workers=workers)
    assert evaluate_split(job, folder, "val") == pytest.approx(reported, rel=1e-9)


@pytest.mark.parametrize("world", [2, 3])
def test_streams_shared_among_ranks_sum_to_the_one_worker_total_even_when_they_do_not_divide(
    shakespeare, trained, world
):
    folder, _, _ = trained
    manifest = shards.load_manifest(shakespeare.folder)
    vocab = Vocab.from_json(manifest["vocab"])
    model = checkpoint.load_model(folder)[0]
    spec = EvalSpec(streams=5, warmup=3)

    def total(rank: int, world: int) -> torch.Tensor:
        streams = eval_streams(
            shakespeare.folder, manifest, "val", vocab, spec=spec, seq_len=32, rank=rank, world=world
        )
        return evaluate(model, streams, warmup=spec.warmup, device=torch.device("cpu"), dtype=None)

    one = total(0, 1)
    shared = sum(total(rank, world) for rank in range(world))
    assert shared[1] == one[1] == 5 * ((manifest["splits"]["val"]["tokens"] - 1) // 5 - 3)
    assert float(shared[0]) == pytest.approx(float(one[0]), rel=1e-7)


def test_more_ranks_than_streams_leave_the_extra_ranks_without_streams(shakespeare):
    manifest = shards.load_manifest(shakespeare.folder)
    vocab = Vocab.from_json(manifest["vocab"])
    cut = {"spec": EvalSpec(streams=2), "seq_len": 32, "world": 3}
    shares = [eval_streams(shakespeare.folder, manifest, "val", vocab, rank=r, **cut) for r in range(3)]
    assert [None if s is None else s.data.shape[0] for s in shares] == [None, 1, 1]


def test_warm_up_targets_build_the_state_and_are_not_scored(shakespeare, trained):
    folder, _, _ = trained
    manifest = shards.load_manifest(shakespeare.folder)
    vocab = Vocab.from_json(manifest["vocab"])
    model = checkpoint.load_model(folder)[0]
    results = {}
    for warmup in (0, 40):
        spec = EvalSpec(streams=4, warmup=warmup)
        streams = eval_streams(shakespeare.folder, manifest, "val", vocab, spec=spec, seq_len=32, rank=0, world=1)
        results[warmup] = evaluate(model, streams, warmup=warmup, device=torch.device("cpu"), dtype=None)
    assert results[0][1] - results[40][1] == 4 * 40
    assert results[0][0] / results[0][1] != results[40][0] / results[40][1]
    with pytest.raises(UserError, match=r"eval.warmup 100000: .* lower eval.warmup or eval.streams"):
        spec = EvalSpec(streams=4, warmup=100_000)
        eval_streams(shakespeare.folder, manifest, "val", vocab, spec=spec, seq_len=32, rank=0, world=1)


def test_rnnfarm_evaluate_prints_the_checkpoints_loss_under_the_fixed_cut(shakespeare, trained):
    folder, reported, job_spec = trained
    storage = shakespeare.folder.parent.parent.url
    result = CliRunner().invoke(cli, ["evaluate", str(folder), "--split", "val", "--storage", storage])
    assert result.exit_code == 0, result.output
    assert f"val loss {reported:.4f} nats/char" in result.output and "64 streams, 0 warm-up" in result.output
    result = CliRunner().invoke(cli, ["evaluate", str(folder), "--split", "test", "--storage", storage])
    assert result.exit_code == 2 and "no test split" in result.output and "Traceback" not in result.output
