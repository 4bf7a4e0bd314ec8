"""bench/throughput.py's claim that its two loops compute the same numbers: it checks their first losses, and the
check fails when the loops differ."""

from __future__ import annotations

import argparse

import pytest
import torch

from rnnfarm.corpus.build import build
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine.streams import load_tokens
from rnnfarm.storage import Store

from .conftest import PRECISIONS, bench_script


@pytest.fixture(scope="module")
def throughput():
    return bench_script("throughput.py", "throughput_bench")


@pytest.fixture(scope="module")
def setting(throughput, tmp_path_factory):
    """The benchmark's corpus (tiny Shakespeare, val 0.01) and train tokens, at a tiny batch and width."""
    args = argparse.Namespace(
        storage=str(tmp_path_factory.mktemp("bench")), embedding=8, steps=5, batch=4, seq_len=16,
        precision="fp32", threads=1, device="cpu", regularize=0.0,
    )  # fmt: skip
    built = build(Store.at(args.storage), throughput.job_spec(args, 1, 1).corpus)
    vocab = Vocab.from_json(built.manifest["vocab"])
    n = built.manifest["splits"]["train"]["chars"]
    tokens = torch.from_numpy(load_tokens(built.folder, built.manifest, "train", 0, n, vocab).astype("int64"))
    return args, built, tokens, len(vocab)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_throughput_benchmarks_two_loops_give_the_same_first_losses(throughput, setting, precision):
    args, built, tokens, vocab = setting
    args.precision = precision
    throughput.same_losses(args, built, tokens, vocab, 2, 16)
    assert args.steps == 5  # the timed runs keep their own step count


def test_the_loss_check_fails_when_the_plain_loop_starts_from_other_weights(throughput, setting, monkeypatch):
    args, built, tokens, vocab = setting
    args.precision = "fp32"

    class OtherStart(throughput.PlainLSTM):
        def __init__(self, *shape) -> None:
            super().__init__(*shape)
            with torch.no_grad():
                self.head.bias[0] += 1.0  # one character made likelier from the start

    monkeypatch.setattr(throughput, "PlainLSTM", OtherStart)
    with pytest.raises(AssertionError, match="the loops' first losses differ"):
        throughput.same_losses(args, built, tokens, vocab, 2, 16)
