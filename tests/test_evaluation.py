"""The fixed evaluation cut: a checkpoint's loss is the same whatever the batch and the workers, in streams
(the default) or in random windows (nanoGPT's cut)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.corpus import shards
from rnnfarm.corpus.build import build
from rnnfarm.corpus.sources import cache_dir
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine import checkpoint
from rnnfarm.engine.loop import Job, LocalSession, evaluate, evaluate_split, train
from rnnfarm.engine.model import CharRNN
from rnnfarm.engine.streams import eval_cut, eval_streams, load_tokens
from rnnfarm.errors import UserError
from rnnfarm.layout import Run
from rnnfarm.spec import EvalSpec
from rnnfarm.storage import Store
from rnnfarm_plugins.shakespeare import TINY_SHA256

from .conftest import make_spec, runs_out_of_device_memory

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


def test_rnnfarm_evaluate_on_the_cpu_device_or_auto_prints_the_same_loss(shakespeare, trained):
    folder, reported, _ = trained
    storage = shakespeare.folder.parent.parent.url
    for device in ("cpu", "auto"):
        result = CliRunner().invoke(cli, ["evaluate", str(folder), "--storage", storage, "--device", device])
        assert result.exit_code == 0 and f"val loss {reported:.4f} nats/char" in result.output, result.output


def test_running_out_of_device_memory_while_evaluating_is_one_line_naming_the_batch_and_the_model_size(
    shakespeare, trained, monkeypatch
):
    # Simulated: no GPU here, so the model's forward raises what torch raises when a GPU's memory runs out.
    folder, _, _ = trained
    parameters = sum(p.numel() for p in checkpoint.load_model(folder)[0].parameters())
    monkeypatch.setattr(CharRNN, "forward", runs_out_of_device_memory)
    storage = shakespeare.folder.parent.parent.url
    result = CliRunner().invoke(cli, ["evaluate", str(folder), "--storage", storage, "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines()[-1] == (  # after the log's lines of the corpus found
        f"error: out of memory on cpu with a batch of 64 streams x 32 characters and a model of {parameters:,} "
        "parameters: lower --streams"
    )


# nanoGPT's cut, small: random windows of a split, each scored from a zero state.
WINDOWS = EvalSpec(windows=100, window=32, seed=7)  # two batches of windows: 64, then 36


def test_random_windows_score_each_window_from_a_zero_state_as_a_plain_loop_does(shakespeare, trained):
    folder, _, _ = trained
    manifest = shards.load_manifest(shakespeare.folder)
    vocab = Vocab.from_json(manifest["vocab"])
    model = checkpoint.load_model(folder)[0]
    cut = eval_cut(shakespeare.folder, manifest, "val", vocab, spec=WINDOWS, seq_len=16, rank=0, world=1)
    total = evaluate(model, cut, warmup=0, device=torch.device("cpu"), dtype=None)

    tokens = load_tokens(shakespeare.folder, manifest, "val", 0, manifest["splits"]["val"]["tokens"], vocab)
    starts = np.random.default_rng(7).integers(0, len(tokens) - 32, size=100)
    with torch.no_grad():
        losses = []
        for start in starts:
            window = torch.from_numpy(tokens[start : start + 33].astype("int64"))[None]
            logits, _ = model(window[:, :-1], None)
            losses.append(F.cross_entropy(logits[0], window[0, 1:]).item())
    assert total[1] == 100 * 32
    assert float(total[0] / total[1]) == pytest.approx(float(np.mean(losses)), rel=1e-6)


@pytest.mark.parametrize("world", [2, 3])
def test_random_windows_shared_among_ranks_are_the_one_worker_draw(shakespeare, trained, world):
    folder, _, _ = trained
    manifest = shards.load_manifest(shakespeare.folder)
    vocab = Vocab.from_json(manifest["vocab"])
    model = checkpoint.load_model(folder)[0]

    def total(rank: int, world: int) -> torch.Tensor:
        cut = eval_cut(shakespeare.folder, manifest, "val", vocab, spec=WINDOWS, seq_len=16, rank=rank, world=world)
        return evaluate(model, cut, warmup=0, device=torch.device("cpu"), dtype=None)

    one = total(0, 1)
    shared = sum(total(rank, world) for rank in range(world))
    assert shared[1] == one[1] and float(shared[0]) == pytest.approx(float(one[0]), rel=1e-12)


def test_a_window_longer_than_the_split_or_all_warm_up_is_refused_in_one_line(shakespeare):
    manifest = shards.load_manifest(shakespeare.folder)
    vocab = Vocab.from_json(manifest["vocab"])
    n = manifest["splits"]["val"]["tokens"]
    with pytest.raises(UserError, match=rf"eval.window {n}: the val split holds {n} tokens.*lower eval.window"):
        eval_cut(
            shakespeare.folder, manifest, "val", vocab, spec=EvalSpec(windows=1, window=n), seq_len=16, rank=0, world=1
        )
    with pytest.raises(UserError, match=r"spec: eval: warmup \(32\) must be < window \(32\)"):
        make_spec("x", eval={"windows": 10, "window": 32, "warmup": 32})


def test_val_and_test_joined_are_scored_as_one_text_val_then_test(tmp_path):
    job_spec = make_spec(str(tmp_path), corpus={"name": "shakespeare", "val": 0.02, "test": 0.02})
    built = build(Store.at(job_spec.storage), job_spec.corpus)
    manifest, vocab = built.manifest, Vocab.from_json(built.manifest["vocab"])
    val, test = (manifest["splits"][s]["tokens"] for s in ("val", "test"))
    joined = load_tokens(built.folder, manifest, "val+test", 0, val + test, vocab)
    apart = [load_tokens(built.folder, manifest, s, 0, n, vocab) for s, n in (("val", val), ("test", test))]
    assert np.array_equal(joined, np.concatenate(apart))
    original = next((cache_dir() / "by-sha256" / TINY_SHA256).glob("*")).read_text()  # as fetched, checked
    assert original.endswith(vocab.decode(joined)) and len(joined) == val + test  # the text's last 4%
    edge = load_tokens(built.folder, manifest, "val+test", val - 5, val + 5, vocab)
    assert np.array_equal(edge, np.concatenate([apart[0][-5:], apart[1][:5]]))


def test_rnnfarm_evaluate_takes_the_cut_from_its_options_over_the_spec(shakespeare, trained):
    folder, reported, job_spec = trained
    storage = shakespeare.folder.parent.parent.url
    args = ["evaluate", str(folder), "--storage", storage, "--windows", "40", "--window", "32", "--seed", "7"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "val loss" in result.output and "(40 random windows of 32, seed 7, 0 warm-up targets each)" in result.output
    assert f"val loss {reported:.4f} " not in result.output  # another cut, another figure
    result = CliRunner().invoke(
        cli, ["evaluate", str(folder), "--storage", storage, "--windows", "4", "--warmup", "300"]
    )
    assert result.exit_code == 2 and "warmup (300) must be < window (256)" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_run_evaluated_on_random_windows_reports_the_loss_evaluate_gives_whatever_the_workers(shakespeare, tmp_path):
    job_spec = make_spec(
        str(tmp_path / "storage"),
        train={"steps": 4, "eval_every": 4, "precision": "fp32"},
        eval={"windows": 30, "window": 24},
    )
    session = LocalSession(tmp_path / "checkpoints")
    train(Job(job_spec, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "w").trial()), session)
    reported = session.reports[-1]["val_loss"]
    for workers in (1, 3):
        job = job_with(shakespeare, job_spec, batch_size=8, workers=workers)
        assert evaluate_split(job, tmp_path / "checkpoints" / "checkpoint-000004", "val") == pytest.approx(reported)


def test_the_cold_start_cost_is_the_loss_at_the_first_positions_from_a_zero_state_beside_the_same_after_context(
    shakespeare, trained
):
    """`rnnfarm evaluate --cold-start K`: the loss at the first K targets of random windows read from a zero
    state, and at the same targets read after the context before them, as a plain loop computes them."""
    from rnnfarm.insight.evaluate import cold_start

    folder, _, _ = trained
    storage = shakespeare.folder.parent.parent.url
    scored = cold_start(str(folder), positions=8, windows=70, context=24, seed=3, storage=storage)

    manifest = shards.load_manifest(shakespeare.folder)
    vocab = Vocab.from_json(manifest["vocab"])
    tokens = load_tokens(shakespeare.folder, manifest, "val", 0, manifest["splits"]["val"]["tokens"], vocab)
    model = checkpoint.load_model(folder)[0]
    cold, warm = [], []
    with torch.no_grad():
        for start in np.random.default_rng(3).integers(0, len(tokens) - 32, size=70):
            text = torch.from_numpy(tokens[start : start + 33].astype("int64"))[None]
            logits, _ = model(text[:, 24:-1])  # the 8 targets after the context, from a zero state
            cold.append(F.cross_entropy(logits[0], text[0, 25:], reduction="none"))
            logits, _ = model(text[:, :-1])  # the context first, then the same 8 targets
            warm.append(F.cross_entropy(logits[0, 24:], text[0, 25:], reduction="none"))
    assert scored.cold == pytest.approx(torch.stack(cold).mean(0).tolist(), rel=1e-6)
    assert scored.warm == pytest.approx(torch.stack(warm).mean(0).tolist(), rel=1e-6)
    assert scored.cost == pytest.approx(scored.cold_loss - scored.warm_loss) and scored.cost > 0

    args = ["evaluate", str(folder), "--storage", storage, "--cold-start", "8", "--context", "24"]
    result = CliRunner().invoke(cli, [*args, "--windows", "70", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert f"first 8 positions after a zero state {scored.cold_loss:.4f} nats/char" in result.output
    assert f"after 24 chars of context {scored.warm_loss:.4f}; a cold start costs {scored.cost:.4f}" in result.output
    result = CliRunner().invoke(cli, [*args, "--warmup", "4"])
    assert result.exit_code == 2 and "not --warmup" in result.output and "Traceback" not in result.output
