"""The model's regularizers: they act only while training, keep the fused kernel and leave the weights alone."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from rnnfarm.engine.model import CharRNN, locked_dropout
from rnnfarm.spec import ModelSpec

REGULARIZERS = ("weight_drop", "dropout_input", "dropout_between", "dropout_embedding")
SHAPE = {"layers": 2, "hidden": 32, "embedding": 16}


def model(**fields) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(11, ModelSpec(**SHAPE, **fields))


def tokens() -> torch.Tensor:
    return torch.randint(0, 11, (4, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("field", REGULARIZERS)
def test_each_regularizer_changes_the_outputs_only_while_training(field):
    plain, regular, x = model(), model(**{field: 0.5}), tokens()
    assert regular.state_dict().keys() == plain.state_dict().keys()
    assert not torch.equal(regular(x)[0], plain(x)[0])
    plain.eval(), regular.eval()
    assert torch.equal(regular(x)[0], plain(x)[0])
    assert torch.equal(regular(x)[0], regular(x)[0])


def test_locked_dropout_keeps_one_mask_per_sequence_across_every_time_step():
    torch.manual_seed(0)
    dropped = locked_dropout(torch.ones(8, 20, 16), 0.5)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # the same at every step
    assert not torch.equal(dropped[0], dropped[1])  # each sequence its own
    assert set(dropped.unique().tolist()) == {0.0, 2.0}


def test_weight_drop_leaves_the_stored_recurrent_weights_undropped():
    m = model(weight_drop=0.9)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m(tokens())[0].sum().backward()
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert (m.rnn.weight_hh_l0 != 0).all()
    assert m.rnn.weight_hh_l0.grad is not None and (m.rnn.weight_hh_l0.grad == 0).any()  # dropped weights: no gradient


# Locked dropout between the layers runs the stack a layer at a time; without it, the stack runs in one call.
@pytest.mark.parametrize(
    "on", [REGULARIZERS, tuple(f for f in REGULARIZERS if f != "dropout_between")], ids=["all", "all-but-between"]
)
def test_the_regularizers_on_still_run_the_fused_recurrent_kernel(on):
    m = model(**{field: 0.3 for field in on})
    with profile() as prof:
        m(tokens())[0].sum().backward()
    names = {e.name for e in prof.events()}
    assert names & {"aten::mkldnn_rnn_layer", "aten::_cudnn_rnn"}, names
    assert "aten::lstm_cell" not in names


def test_embedding_dropout_drops_a_symbol_at_every_position_it_takes():
    m, seen = model(dropout_embedding=0.5), []
    m.rnn.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x = torch.arange(11).repeat(4, 3)  # every symbol at 12 positions
    m(x)
    embedded = seen[0].flatten(0, 1)
    dropped = {int(s) for s, row in zip(x.flatten(), embedded, strict=True) if not row.any()}
    assert 0 < len(dropped) < 11
    for s, row in zip(x.flatten(), embedded, strict=True):
        assert (int(s) in dropped) == (not row.any())
        if int(s) not in dropped:
            assert torch.allclose(row, m.embed.weight[s] * 2)


def test_dropout_between_layers_runs_one_fused_call_per_layer_with_torch_drawing_the_masks():
    m, called = model(dropout=0.3), []
    for layer in m._layers:
        layer.register_forward_hook(lambda module, args, out: called.append(module))
    m(tokens())
    assert called == m._layers and m.rnn.dropout == 0.0  # cuDNN's own dropout state is not torch's RNG state


def test_the_layer_by_layer_path_computes_what_the_fused_stack_does_with_the_same_masks():
    m, x = model(dropout=0.3), tokens()
    fused = torch.nn.LSTM(16, 32, 2, batch_first=True, dropout=0.3)  # on a CPU, it draws from torch's RNG
    fused.load_state_dict(m.rnn.state_dict())
    torch.manual_seed(5)
    ours, (h, c) = m(x)
    torch.manual_seed(5)
    out, (fused_h, fused_c) = fused(m.embed(x))
    assert torch.equal(ours, m.head(m.drop(out))) and torch.equal(h, fused_h) and torch.equal(c, fused_c)


def test_switching_to_eval_flattens_the_recurrent_weights_into_one_chunk_again(monkeypatch):
    m, flattened = model(weight_drop=0.3), []
    monkeypatch.setattr(m.rnn, "flatten_parameters", lambda: flattened.append(True))
    m.train()
    assert not flattened
    m.eval()
    assert flattened == [True]
