"""The network: embedding -> stacked LSTM/GRU/RNN with dropout between layers -> linear head."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..spec import ModelSpec

State = Tensor | tuple[Tensor, Tensor]


class CharRNN(nn.Module):
    def __init__(self, vocab_size: int, spec: ModelSpec) -> None:
        super().__init__()
        self.spec, self.vocab_size = spec, vocab_size
        cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[spec.cell]
        self.embed = nn.Embedding(vocab_size, spec.embedding)
        self.rnn = cell(
            spec.embedding,
            spec.hidden,
            spec.layers,
            batch_first=True,
            dropout=spec.dropout if spec.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden, vocab_size)
        if spec.cell == "lstm":
            self._forget_bias_one()

    def _forget_bias_one(self) -> None:
        """Forget-gate bias 1 (gates are ordered i, f, g, o): remember by default early in training."""
        h = self.spec.hidden
        with torch.no_grad():
            for layer in range(self.spec.layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[h : 2 * h].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[h : 2 * h].fill_(0.0)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """(B, T) token ids -> (B, T, V) logits and the state after the last step."""
        out, state = self.rnn(self.embed(x), state)
        return self.head(self.drop(out)), state


def detach(state: State) -> State:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def state_tensors(state: State | None) -> dict[str, Tensor]:
    if state is None:
        return {}
    if isinstance(state, tuple):
        return {"h": state[0].contiguous(), "c": state[1].contiguous()}
    return {"h": state.contiguous()}


def state_from_tensors(tensors: dict[str, Tensor]) -> State | None:
    if "h" not in tensors:
        return None
    return (tensors["h"], tensors["c"]) if "c" in tensors else tensors["h"]


@torch.no_grad()
def generate(
    model: CharRNN,
    prime: Tensor,
    *,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    argmax: bool = False,
    generator: torch.Generator | None = None,
):
    """Yield ``length`` next-token ids after a 1-D prime; the state is carried, nothing is recomputed."""
    was_training = model.training
    model.eval()
    try:
        with native_rnn_kernels():
            logits, state = model(prime.view(1, -1))
        last = logits[0, -1].float()
        for _ in range(length):
            if argmax:
                token = last.argmax().view(1)
            else:
                scaled = last / temperature
                if top_k is not None and top_k < scaled.numel():
                    kth = torch.topk(scaled, top_k).values[-1]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                token = torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator)
            yield int(token)
            with native_rnn_kernels():  # only while a step runs: the caller's code between steps is left alone
                logits, state = model(token.view(1, 1), state)
            last = logits[0, -1].float()
    finally:
        model.train(was_training)


@contextlib.contextmanager
def native_rnn_kernels() -> Iterator[None]:
    """PyTorch's own RNN kernels instead of oneDNN's: for one character at a time (batch 1, sequence 1) on a
    CPU, oneDNN's cost about 10x more per step (bench/sampling.py)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
