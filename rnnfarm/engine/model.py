"""The network: embedding -> stacked LSTM/GRU/RNN with dropout between layers -> linear head.

The regularizers of the spec (weight drop, locked and embedding dropout) act only while training, and all
keep the fused recurrent kernel (oneDNN on a CPU, cuDNN on a GPU): the recurrent matrices are dropped before
the fused op is called with them, never unrolled here. Dropout between layers is drawn by torch, between one
fused call per layer: cuDNN's own dropout draws from a state that torch's RNG state does not hold, so a resumed
run would draw other masks. The stored weights and the inference path are the plain multi-layer module's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..spec import ModelSpec

State = Tensor | tuple[Tensor, Tensor]


class CharRNN(nn.Module):
    def __init__(self, vocab_size: int, spec: ModelSpec) -> None:
        super().__init__()
        self.spec, self.vocab_size = spec, vocab_size
        cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[spec.cell]
        self.embed = nn.Embedding(vocab_size, spec.embedding)
        # No dropout of its own: between layers it is drawn by torch (``_layer_by_layer``), so resume is exact
        self.rnn = cell(spec.embedding, spec.hidden, spec.layers, batch_first=True)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden, vocab_size)
        if spec.cell == "lstm":
            self._forget_bias_one()
        # One single-layer module per layer, on the meta device and not registered (no weights, no state_dict
        # keys): the shape the fused op is called in when dropout goes between layers. It runs only with the
        # multi-layer module's own weights, swapped in.
        self._layers = [
            cell(spec.embedding if k == 0 else spec.hidden, spec.hidden, 1, batch_first=True, device="meta")
            for k in range(spec.layers)
        ]

    def _forget_bias_one(self) -> None:
        """Forget-gate bias 1 (gates are ordered i, f, g, o): remember by default early in training."""
        h = self.spec.hidden
        with torch.no_grad():
            for layer in range(self.spec.layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[h : 2 * h].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[h : 2 * h].fill_(0.0)

    def train(self, mode: bool = True) -> CharRNN:
        """Switching to eval re-flattens the recurrent weights into cuDNN's one chunk, so that evaluation and
        sampling do not copy them on every call (a no-op on a CPU)."""
        super().train(mode)
        if not mode:
            self.rnn.flatten_parameters()
        return self

    @property
    def _between(self) -> bool:
        """Whether dropout goes between the layers, so the stack runs a layer at a time while training."""
        return self.spec.layers > 1 and bool(self.spec.dropout or self.spec.dropout_between)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """(B, T) token ids -> (B, T, V) logits and the state after the last step."""
        s = self.spec
        if not self.training or not (s.weight_drop or s.dropout_input or s.dropout_embedding or self._between):
            out, state = _recurrent(self.rnn, self.embed(x), state)
            return self.head(self.drop(out)), state
        out, state = self._regularized(x, state)
        return self.head(self.drop(out)), state

    def _regularized(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        """The training forward with the spec's regularizers: the fused op runs on dropped weight copies."""
        s = self.spec
        weights = dict(self.rnn.named_parameters())
        if s.weight_drop:
            for k in range(s.layers):
                weights[f"weight_hh_l{k}"] = F.dropout(weights[f"weight_hh_l{k}"], s.weight_drop)
        table = self.embed.weight
        if s.dropout_embedding:  # a symbol dropped is dropped at every position of the batch
            keep = torch.empty(table.shape[0], 1, device=table.device).bernoulli_(1 - s.dropout_embedding)
            table = table * keep / (1 - s.dropout_embedding)
        inp = locked_dropout(F.embedding(x, table), s.dropout_input)
        if not self._between:
            return _recurrent(self.rnn, inp, state, weights)
        return self._layer_by_layer(inp, state, weights)

    def _layer_by_layer(self, inp: Tensor, state: State | None, weights: dict[str, Tensor]) -> tuple[Tensor, State]:
        """The stack one layer at a time (each still one fused call), with torch's dropout and locked dropout
        between the layers."""
        s, finals = self.spec, []
        for k, layer in enumerate(self._layers):
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            own = {f"{n}_l0": weights[f"{n}_l{k}"] for n in names}
            hx = None if state is None else _layer_state(state, k)
            inp, final = _recurrent(layer, inp, hx, own)
            finals.append(final)
            if k < s.layers - 1:
                inp = locked_dropout(F.dropout(inp, s.dropout, self.training), s.dropout_between)
        if isinstance(finals[0], tuple):
            return inp, (torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals]))
        return inp, torch.cat(finals)


def _layer_state(state: State, k: int) -> State:
    return (state[0][k : k + 1], state[1][k : k + 1]) if isinstance(state, tuple) else state[k : k + 1]


def recurrent_dtype(device_type: str, autocast_dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrent layers compute in under autocast of ``autocast_dtype``. Under CUDA autocast,
    cuDNN's RNN is cast to fp16 whatever dtype autocast was given (ATen/cudnn/AutocastRNN.cpp), so there a
    bf16 autocast leaves the recurrent layers out, in fp32."""
    if device_type == "cuda" and autocast_dtype != torch.float16:
        return torch.float32
    return autocast_dtype


def _recurrent(
    module: nn.Module, inp: Tensor, state: State | None, weights: dict[str, Tensor] | None = None
) -> tuple[Tensor, State]:
    """One fused recurrent call, with ``weights`` in place of the module's own where given; outside autocast,
    in fp32, where autocast would not compute in its own dtype (``recurrent_dtype``)."""
    device = inp.device.type
    if torch.is_autocast_enabled(device) and recurrent_dtype(device, torch.get_autocast_dtype(device)) == torch.float32:
        with torch.autocast(device, enabled=False):
            return _recurrent(module, inp.float(), None if state is None else to_float(state), weights)
    return module(inp, state) if weights is None else functional_call(module, weights, (inp, state))


def locked_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout of a (B, T, D) sequence with one mask per sequence, the same at every time step."""
    if not p:
        return x
    mask = torch.empty(x.shape[0], 1, x.shape[2], device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * mask / (1 - p)


def detach(state: State) -> State:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def reset_rows(state: State, rows: Tensor) -> State:
    """The state with the batch rows ``rows`` (a (B,) bool tensor) set to zero, the others as they were."""
    parts = state if isinstance(state, tuple) else (state,)
    cold = rows.to(parts[0].device).view(1, -1, 1)
    zeroed = tuple(s.masked_fill(cold, 0) for s in parts)
    return zeroed if isinstance(state, tuple) else zeroed[0]


def to_float(state: State) -> State:
    return tuple(s.float() for s in state) if isinstance(state, tuple) else state.float()


def state_tensors(state: State | None) -> dict[str, Tensor]:
    """The hidden state as named fp32 tensors, whatever the precision that made it, so that any precision
    or device can resume from it."""
    if state is None:
        return {}
    state = to_float(state)
    if isinstance(state, tuple):
        return {"h": state[0].contiguous(), "c": state[1].contiguous()}
    return {"h": state.contiguous()}


def state_from_tensors(tensors: dict[str, Tensor], device: torch.device) -> State | None:
    """The hidden state on ``device`` in fp32 (a checkpoint older than fp32 states may hold another dtype)."""
    if "h" not in tensors:
        return None
    h, c = (tensors[k].to(device, torch.float32) if k in tensors else None for k in "hc")
    return (h, c) if c is not None else h


def draw(
    last: Tensor, temperature: Tensor, top_k: Tensor | None, generators: Sequence[torch.Generator | None]
) -> Tensor:
    """The next token of each row of ``last`` (B, V logits, on the CPU), each row drawn with its own CPU generator.

    torch.multinomial(p, 1) draws argmax(p / e), e ~ Exp(1) drawn over a tensor shaped like p; here each row's
    e comes from its own generator (None: torch's default one), and the rest runs on the whole batch. The noise
    and the draw are on the CPU whatever device made the logits, so the same logits and seed draw the same
    token on any device. ``top_k``: each row's k, at most V (k = V masks nothing).
    """
    scaled = last / temperature[:, None]
    if top_k is not None:  # the k-th largest of each row
        kth = scaled.sort(dim=-1, descending=True).values.gather(1, top_k[:, None] - 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    noise = torch.stack([torch.empty(probs.shape[1]).exponential_(generator=g) for g in generators])
    return (probs / noise).argmax(dim=-1)


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
    """Yield ``length`` next-token ids after a 1-D prime; the state is carried, nothing is recomputed.

    The model runs on its own device; each token is drawn on the CPU (``draw``) from a CPU ``generator``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    temperatures = torch.tensor([temperature], dtype=torch.float32)
    k = None if top_k is None else torch.tensor([min(top_k, model.vocab_size)])
    try:
        with native_rnn_kernels():
            logits, state = model(prime.view(1, -1).to(device))
        last = logits[:, -1].float().cpu()
        for _ in range(length):
            token = last.argmax(dim=-1) if argmax else draw(last, temperatures, k, [generator])
            yield int(token)
            with native_rnn_kernels():  # only while a step runs: the caller's code between steps is left alone
                logits, state = model(token.view(1, 1).to(device), state)
            last = logits[:, -1].float().cpu()
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
