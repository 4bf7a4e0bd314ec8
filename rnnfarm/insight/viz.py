"""What a trained network does on a text: each layer's cells at every character, the cells that track simple
features of the text, and the model's guesses for each next character.

The activations are recomputed from the checkpoint's weights, layer by layer and one character at a time,
with the LSTM's own equations (PyTorch's gate order i, f, g, o), so the cell state is seen after every
character; the model's forward is left as it is. GRU and vanilla RNN layers have no cell state: their
output (h, also in [-1, 1]) is what they show.

A character outside the model's vocabulary (tiny Shakespeare has no ``"`` or ``(``) is shown grey: the
network reads the vocabulary's replacement symbol in its place where there is one, and skips it otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..corpus.vocab import Vocab, codepoints, utf8_bytes
from ..engine.device import memory_named
from ..engine.model import CharRNN
from ..errors import UserError
from ..storage import text_file
from . import pages

SIGNALS = {
    "cell": "tanh(c), the LSTM's cell state squashed to [-1, 1]",
    "output": "h, the layer's output, in [-1, 1]",
}
FEATURES = {
    "inside quotes": 'between an opening and a closing "',
    "inside brackets": "inside ( ), [ ] or { }",
    "position in line": "characters since the last newline",
    "indentation": "leading spaces and tabs of the current line",
}
TOP_GUESSES = 5


@dataclass(frozen=True)
class Trace:
    """A text as the network read it: activations and next-character distributions after each character."""

    text: str
    unknown: np.ndarray  # (len(text),) whether each character is outside the vocabulary
    replacement: str | None  # what the network read for such a character; None: it skipped them
    read: np.ndarray  # (T,) the positions in the text of the characters the network read, in order
    ids: np.ndarray  # (T,) token ids
    cells: np.ndarray | None  # (layers, T, hidden): tanh(c); None for GRU and vanilla RNN
    outputs: np.ndarray  # (layers, T, hidden): h
    probs: np.ndarray  # (T, vocab): the distribution of the character that follows each one

    def signal(self, name: str) -> np.ndarray:
        if name == "cell" and self.cells is None:
            raise UserError("this network's layers have no cell state (GRU or vanilla RNN): use --signal output")
        return self.cells if name == "cell" else self.outputs

    def at_text(self, values: np.ndarray) -> np.ndarray:
        """Values of the read characters spread over the whole text: NaN at the characters skipped."""
        spread = np.full((len(self.text), *values.shape[1:]), np.nan)
        spread[self.read] = values
        return spread

    @property
    def how_unknown_are_read(self) -> str:
        return f"read as {self.replacement!r}" if self.replacement is not None else "skipped"

    def unknown_note(self) -> str:
        """The header's count of the characters outside the vocabulary, and how the network read them."""
        count = int(self.unknown.sum())
        if not count:
            return ""
        shown = "".join(sorted(set(np.array(list(self.text))[self.unknown].tolist())))
        return (
            f"{count} character(s) outside the model's vocabulary ({shown[:40]!r}), shown grey: "
            f"{self.how_unknown_are_read} by the network"
        )


def read_text(source: str, max_chars: int) -> tuple[str, int]:
    """The first ``max_chars`` characters of a text file (a path or any storage URL), and its full length."""
    text = text_file(source, "--text")
    return text[:max_chars], len(text)


def _lstm_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM layer over a (T, in) sequence from a zero state: h and c after each step, (T, hidden) each."""
    hidden = w_hh.shape[1]
    gates_x = x @ w_ih.T + b_ih + b_hh  # the input's share of every step's gates, at once
    h, c = x.new_zeros(hidden), x.new_zeros(hidden)
    hs, cs = [], []
    for t in range(x.shape[0]):
        i, f, g, o = (gates_x[t] + w_hh @ h).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), torch.stack(cs)


def _single_layer(rnn: nn.RNNBase, layer: int, x: Tensor) -> Tensor:
    """Layer ``layer`` of a stacked GRU or RNN run alone over a (T, in) sequence: its output h, (T, hidden)."""
    extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
    one = type(rnn)(x.shape[-1], rnn.hidden_size, 1, batch_first=True, device=x.device, **extra)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    one.load_state_dict({f"{n}_l0": getattr(rnn, f"{n}_l{layer}") for n in names})
    return one(x[None])[0][0]


@torch.no_grad()
def trace(model: CharRNN, vocab: Vocab, text: str) -> Trace:
    """Run ``text`` through the network (in eval mode, from a zero state), keeping every layer's activations."""
    if not text:
        raise UserError("the text is empty: give a file with at least one character")
    model.eval()
    points = codepoints(text) if vocab.level == "char" else utf8_bytes(text)
    unknown = ~vocab.known(points)
    read = np.arange(len(points)) if vocab.replacement is not None else np.flatnonzero(~unknown)
    if not len(read):
        raise UserError("none of the text's characters is in the model's vocabulary: give text like its corpus's")
    ids = vocab.ids(points[read]).astype("int64")
    device = next(model.parameters()).device
    named = {"batch": f"one text of {len(ids)} characters", "lower": "--max-chars", "device_option": True}
    with memory_named(device, model=model, **named):
        x = model.embed(torch.from_numpy(ids).to(device)).float()
        cells, outputs = [], []
        for layer in range(model.spec.layers):
            if model.spec.cell == "lstm":
                names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                x, c = _lstm_layer(x, *[getattr(model.rnn, f"{n}_l{layer}").float() for n in names])
                cells.append(torch.tanh(c).cpu().numpy())
            else:
                x = _single_layer(model.rnn, layer, x)
            outputs.append(x.cpu().numpy())
        probs = torch.softmax(model.head(x).float(), dim=-1).cpu().numpy()
    cells_or_none = np.stack(cells) if cells else None
    return Trace(text, unknown, vocab.replacement, read, ids, cells_or_none, np.stack(outputs), probs)


def features(text: str) -> dict[str, np.ndarray]:
    """Each of FEATURES as a number per character, as it stands once that character has been read."""
    values = {name: np.zeros(len(text), dtype=np.float32) for name in FEATURES}
    quoted, depth, column, indent, leading = False, 0, 0, 0, True
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        if ch == "\n":
            column, indent, leading = 0, 0, True
        else:
            column += 1
            if leading and ch in " \t":
                indent += 1
            else:
                leading = False
        values["inside quotes"][i] = quoted
        values["inside brackets"][i] = depth > 0
        values["position in line"][i] = column
        values["indentation"][i] = indent
    return values


def correlations(acts: np.ndarray, feats: dict[str, np.ndarray]) -> np.ndarray:
    """Pearson r of every cell with every feature: (layers, hidden, features); 0 where either is constant."""
    layers, steps, hidden = acts.shape
    a = acts.transpose(1, 0, 2).reshape(steps, layers * hidden).astype(np.float64)
    f = np.stack(list(feats.values()), axis=1).astype(np.float64)

    def standardized(m: np.ndarray) -> np.ndarray:
        m = m - m.mean(axis=0)
        std = m.std(axis=0)
        return np.divide(m, std, out=np.zeros_like(m), where=std > 1e-12)

    r = standardized(a).T @ standardized(f) / steps
    return np.clip(r, -1.0, 1.0).reshape(layers, hidden, len(feats))


@dataclass(frozen=True)
class Match:
    """A cell and the feature it tracks best."""

    layer: int
    cell: int
    feature: str
    r: float


def rank(r: np.ndarray, names: list[str], top: int) -> list[Match]:
    """The ``top`` cells whose activation correlates most (in absolute value) with one of the features."""
    best = np.abs(r).argmax(axis=2)  # (layers, hidden): each cell's best feature
    score = np.take_along_axis(np.abs(r), best[..., None], axis=2)[..., 0]
    order = np.argsort(-score, axis=None, kind="stable")[:top]
    found = []
    for flat in order:
        layer, cell = np.unravel_index(flat, score.shape)
        found.append(Match(int(layer), int(cell), names[best[layer, cell]], float(r[layer, cell, best[layer, cell]])))
    return found


def _about(meta: dict[str, Any], shown: int, total: int) -> str:
    m = meta.get("model", {})
    loss = meta.get("val_loss")
    parts = [
        f"{m.get('cell', '?').upper()} {m.get('layers', '?')}x{m.get('hidden', '?')}",
        f"step {meta.get('step', '?')}",
        f"val loss {loss:.4f} nats/char" if isinstance(loss, float) else None,
        f"{shown} characters of text" + (f" (the first of {total})" if shown < total else ""),
    ]
    return " · ".join(p for p in parts if p)


def _legend(left: str, right: str, colour) -> str:
    stops = "".join(f'<span style="background:{colour(v)}"></span>' for v in np.linspace(-1, 1, 11))
    return f"<p class=legend>{escape(left)} {stops} {escape(right)}</p>"


def _unknown_span(tr: Trace, ch: str) -> str:
    return (
        f'<span class=u title="outside the vocabulary: {escape(tr.how_unknown_are_read)}">{pages.char_html(ch)}</span>'
    )


def _coloured(tr: Trace, values: np.ndarray) -> str:
    """The text, each character on a background for its value in [-1, 1] (the value as its tooltip); a
    character outside the vocabulary grey."""
    out = []
    for ch, v, unknown in zip(tr.text, tr.at_text(values).tolist(), tr.unknown.tolist(), strict=True):
        if unknown:
            out.append(_unknown_span(tr, ch))
        else:
            style = f"background:{pages.diverging(v)}"
            out.append(f'<span class=a style="{style}" title="{v:+.3f}">{pages.char_html(ch)}</span>')
        if ch == "\n":
            out.append("\n")
    return "<div class=text>" + "".join(out) + "</div>"


def _unknown_paragraph(tr: Trace) -> str:
    note = tr.unknown_note()
    return f"<p class='meta unknown'>{escape(note)}.</p>" if note else ""


def check_choice(layer: int | None, cell: int | None, top: int | None) -> None:
    """Either ``top`` alone, or ``layer`` and ``cell`` together."""
    one_cell = layer is not None and cell is not None
    if (top is None) != one_cell or (top is not None and (layer, cell) != (None, None)):
        raise UserError("choose the cells to show: --top N, or both --layer L and --cell C")


def neurons_page(
    tr: Trace,
    meta: dict[str, Any],
    title: str,
    layer: int | None = None,
    cell: int | None = None,
    top: int | None = None,
    signal: str = "cell",
    total: int | None = None,
) -> str:
    """The neuron page: the chosen cell (``layer``, ``cell``) or the ``top`` cells that track a feature best,
    each over the text."""
    acts = tr.signal(signal)
    layers, _, hidden = acts.shape
    check_choice(layer, cell, top)
    if layer is not None and not 0 <= layer < layers:
        raise UserError(f"--layer {layer}: the network has {layers} layer(s), numbered 0 to {layers - 1}")
    if cell is not None and not 0 <= cell < hidden:
        raise UserError(f"--cell {cell}: each layer has {hidden} cells, numbered 0 to {hidden - 1}")
    feats = {name: values[tr.read] for name, values in features(tr.text).items()}  # where the network read
    names = list(feats)
    r = correlations(acts, feats)
    absent = [n for n, v in feats.items() if np.ptp(v) == 0]

    if top is not None:
        picks = rank(r, names, top)
        heading = f"The {len(picks)} cells that track a feature best (|r|, Pearson correlation over the text)"
        rows = [[i + 1, m.layer, m.cell, m.feature, f"{m.r:+.3f}", f"{abs(m.r):.3f}"] for i, m in enumerate(picks)]
        summary = pages.table(["rank", "layer", "cell", "feature", "r", "|r|"], rows, {0, 1, 2, 4, 5}, "ranking")
    else:
        k = int(np.abs(r[layer, cell]).argmax())
        picks = [Match(layer, cell, names[k], float(r[layer, cell, k]))]
        heading = f"How layer {layer}, cell {cell} follows each feature (Pearson r over the text)"
        rows = [
            [n, FEATURES[n], "not in this text" if n in absent else f"{r[layer, cell, j]:+.3f}"]
            for j, n in enumerate(names)
        ]
        summary = pages.table(["feature", "meaning", "r"], rows, {2}, "ranking")
    described = "".join(f"<li><b>{escape(n)}</b>: {escape(d)}</li>" for n, d in FEATURES.items())
    missing = f"<p class=meta>Constant in this text, so not ranked: {escape(', '.join(absent))}.</p>" if absent else ""

    body = [
        f"<h1>Neurons: {escape(title)}</h1>",
        f"<p class=meta>{escape(_about(meta, len(tr.text), total or len(tr.text)))}</p>",
        _unknown_paragraph(tr),
        f"<p>Each character is coloured by one cell's activation once the network has read it: "
        f"{escape(SIGNALS[signal])}. Hover a character for the value.</p>",
        _legend("-1", "+1", pages.diverging),
        f"<h2>{escape(heading)}</h2>",
        summary,
        f"<details><summary>Features</summary><ul>{described}</ul></details>{missing}",
    ]
    for m in picks:
        tracks = f"tracks {m.feature} (r = {m.r:+.3f})" if abs(m.r) > 0 else "tracks none of the features"
        body.append(f"<section class=cell><h2>Layer {m.layer}, cell {m.cell}: {escape(tracks)}</h2>")
        body.append(_coloured(tr, acts[m.layer, :, m.cell]) + "</section>")
    return pages.page(f"Neurons: {title}", "\n".join(body))


PREDICTION_STYLE = """
.p { position: relative; }
.p .tip { display: none; position: absolute; left: 0; top: 1.45em; z-index: 2; background: #fff; color: #222;
          border: 1px solid #999; box-shadow: 0 2px 6px rgba(0,0,0,.2); padding: 4px 6px; white-space: nowrap;
          font-size: 12px; line-height: 1.3; }
.p:hover .tip { display: block; }
.tip table { margin: 2px 0 0; } .tip td { padding: 0 6px; border: 0; }
"""


def _symbol(ch: str) -> str:
    return {"\n": "↵", " ": "␣", "\t": "⇥"}.get(ch, ch)


def predictions_page(tr: Trace, vocab: Vocab, meta: dict[str, Any], title: str, total: int | None = None) -> str:
    """The prediction page: each character on a colour for the probability the model gave it, and on hover
    the model's top guesses for the character after it."""
    top = min(TOP_GUESSES, tr.probs.shape[1])
    guesses = np.argsort(-tr.probs, axis=1)[:, :top]
    own = np.full(len(tr.read), math.nan)  # the probability given to each read character before it was read
    own[1:] = tr.probs[np.arange(len(tr.read) - 1), tr.ids[1:]]
    index = np.full(len(tr.text), -1)
    index[tr.read] = np.arange(len(tr.read))
    out = []
    for i, ch in enumerate(tr.text):
        j = int(index[i])
        rows = "".join(
            f"<tr><td>{escape(_symbol(vocab.symbols[g]))}</td><td class=num>{tr.probs[j, g]:.1%}</td></tr>"
            for g in (guesses[j] if j >= 0 else ())
        )
        if tr.unknown[i]:
            heading, cls, style = f"{_symbol(ch)}: outside the vocabulary, {tr.how_unknown_are_read}", "p u", ""
        elif math.isnan(own[j]):
            heading, cls, style = "first character: nothing predicted it", "p", ' style="background:#eee"'
        else:
            heading, cls = f"{_symbol(ch)}: {own[j]:.1%} likely", "p"
            style = f' style="background:{pages.likelihood(own[j])}"'
        tip = f"<span class=tip><b>{escape(heading)}</b>{'<br>next:<table>' + rows + '</table>' if rows else ''}</span>"
        out.append(f'<span class="{cls}"{style}>{pages.char_html(ch)}{tip}</span>')
        if ch == "\n":
            out.append("\n")
    scored = ~tr.unknown[tr.read]  # characters of the vocabulary that something before them predicted
    scored[0] = False
    seen = own[scored]
    mean_bits = float(-np.log2(np.maximum(seen, 1e-12)).mean()) if len(seen) else math.nan
    over = " (its characters of the vocabulary)" if tr.unknown.any() else ""
    body = [
        f"<h1>Predictions: {escape(title)}</h1>",
        f"<p class=meta>{escape(_about(meta, len(tr.text), total or len(tr.text)))} · "
        f"{mean_bits:.3f} bits/char on this text{over}</p>",
        _unknown_paragraph(tr),
        "<p>Each character is coloured by the probability the model gave it before reading it. "
        f"Hover a character for that probability and the model's top {top} guesses for the next character.</p>",
        _legend("0%", "100%", lambda v: pages.likelihood((v + 1) / 2)),
        "<div class=text>" + "".join(out) + "</div>",
    ]
    return pages.page(f"Predictions: {title}", "\n".join(body), PREDICTION_STYLE)
