"""The network's initialization, the learning-rate schedules, and the per-rank stream layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnfarm.engine.loop import lr_factor
from rnnfarm.engine.model import CharRNN
from rnnfarm.engine.streams import Layout, Streams, Windows
from rnnfarm.spec import ModelSpec, TrainSpec


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_an_untrained_network_predicts_close_to_uniformly(cell):
    torch.manual_seed(0)
    model = CharRNN(65, ModelSpec(cell=cell, layers=2, hidden=128, embedding=32, dropout=0.1)).eval()
    x = torch.randint(0, 65, (8, 64))
    logits, _ = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), x.flatten())
    assert abs(loss.item() - math.log(65)) < 0.05


def test_every_lstm_layer_starts_with_forget_gate_bias_one():
    hidden = 16
    model = CharRNN(10, ModelSpec(cell="lstm", layers=3, hidden=hidden, embedding=8))
    for layer in range(3):
        bias = getattr(model.rnn, f"bias_ih_l{layer}") + getattr(model.rnn, f"bias_hh_l{layer}")
        assert torch.equal(bias[hidden : 2 * hidden], torch.ones(hidden))  # gates are ordered i, f, g, o


def test_dropout_sits_between_layers_and_before_the_head_and_torch_draws_it():
    model = CharRNN(10, ModelSpec(layers=2, hidden=16, embedding=8, dropout=0.3))
    x = torch.randint(0, 10, (4, 12), generator=torch.Generator().manual_seed(0))
    assert model.drop.p == 0.3
    assert model.rnn.dropout == 0.0  # the fused module (cuDNN's dropout state is outside torch's RNG) draws none
    torch.manual_seed(1)
    first = model(x)[0]
    torch.manual_seed(1)
    assert torch.equal(model(x)[0], first) and not torch.equal(model(x)[0], first)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])


def test_warmup_then_cosine_ends_at_the_minimum_ratio():
    t = TrainSpec(steps=110, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, t) == pytest.approx(0.1) and lr_factor(9, t) == pytest.approx(1.0)
    assert lr_factor(10, t) == pytest.approx(1.0)
    assert lr_factor(60, t) == pytest.approx(0.55)
    assert lr_factor(110, t) == pytest.approx(0.1)


def test_step_decay_multiplies_by_the_rate_every_interval_after_warmup():
    t = TrainSpec(steps=1000, warmup_steps=10, decay="step", decay_every=100, decay_rate=0.5)
    assert [lr_factor(s, t) for s in (10, 109, 110, 209, 210, 999)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.5**9]


def test_no_decay_keeps_the_rate_after_warmup():
    t = TrainSpec(steps=100, warmup_steps=4, decay="none")
    assert lr_factor(1, t) == 0.5 and lr_factor(50, t) == lr_factor(99, t) == 1.0


def test_n_ranks_with_batch_b_read_the_rows_one_rank_with_batch_nb_reads():
    tokens = np.random.default_rng(0).integers(0, 65, 10_001).astype(np.uint8)
    whole = Streams(tokens, Layout(len(tokens), batch=8, seq_len=16, rank=0, world=1))
    ranks = []
    for rank in range(2):
        layout = Layout(len(tokens), batch=4, seq_len=16, rank=rank, world=2)
        start, stop = layout.span  # the only tokens this rank loads
        ranks.append(Streams(tokens[start:stop], layout))
    for _ in range(3):
        x, y, _ = whole.next()
        parts = [r.next() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_streams_restart_at_an_epoch_boundary_and_keep_the_compact_dtype():
    tokens = (np.arange(1001) % 65).astype(np.uint8)
    streams = Streams(tokens, Layout(len(tokens), batch=4, seq_len=50, rank=0, world=1))
    assert streams.data.dtype == torch.uint8  # one byte per character held in memory
    starts = [streams.next()[2] for _ in range(11)]
    assert starts == [True, False, False, False, False, True, False, False, False, False, True]
    x, y, _ = streams.next()
    assert x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])


def test_streams_and_windows_live_on_the_device_compact_and_their_batches_are_cut_and_widened_there():
    tokens = (np.arange(1001) % 65).astype(np.uint8)
    streams = Streams(tokens, Layout(len(tokens), batch=4, seq_len=50, rank=0, world=1), device="meta")
    windows = Windows(tokens, np.array([3, 70, 500]), 16, device="meta")
    assert streams.data.device.type == "meta" and streams.data.dtype == torch.uint8  # no host copy per step
    x, y, _ = streams.next()
    wx, wy, _ = next(windows.batches())
    assert {t.device.type for t in (x, y, wx, wy)} == {"meta"} and {t.dtype for t in (x, y, wx, wy)} == {torch.int64}
