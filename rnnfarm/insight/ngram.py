"""Character n-gram baselines: interpolated Kneser-Ney models fit on a corpus's train split, scored on val and test.

An LSTM's bits/char means little alone; beside an n-gram model's on the same split it says how much the network
learned beyond counting (Karpathy, Johnson & Fei-Fei 2015 set every figure beside a 20-gram's).

The smoothing is interpolated Kneser-Ney (Chen & Goodman 1998, section 3.5) with one discount per order and
kind of count, ``D = n1 / (n1 + 2 n2)`` (``n1``, ``n2``: how many n-grams of that order have count 1 and 2;
0.5 where no n-gram has count 1, since 0 would leave nothing for unseen symbols). The highest order uses raw
counts, every lower order continuation counts (how many distinct symbols precede an n-gram), and order 0 is the
uniform distribution over the vocabulary. A context never seen in training backs off wholly to the order below.

The start of a split: each split is preceded by ``order - 1`` copies of a start symbol that is never predicted,
so the first characters are scored with a context that says "the split starts here" (an LSTM starts each split
from a zero state). Every character of a split is scored once; contexts run on across shard boundaries.

Counting streams the split in chunks: the n-grams are kept as a trie, one table per order whose keys are
(node id of the context, last symbol) packed in an int64, sorted, so memory grows with the number of distinct
n-grams and not with the text. Scoring looks each position's contexts up in the same tables, all positions of a
chunk at once, order after order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..corpus import shards
from ..corpus.vocab import Vocab
from ..errors import UserError
from ..storage import Store
from ..units import bits

METHOD = "interpolated Kneser-Ney, one discount per order, D = n1/(n1+2 n2)"
VERSION = 1  # bump when the figures this module computes for a corpus change; older cached results are refit
CACHE = "baselines/ngram.json"  # in the corpus folder, beside its manifest
ORDERS = tuple(range(1, 11))
MAX_ORDER = 32
CHUNK = 1 << 20  # tokens counted or scored at once
NO_SINGLETONS_DISCOUNT = 0.5


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int(np.count_nonzero(counts == 1)), int(np.count_nonzero(counts == 2))
    return n1 / (n1 + 2 * n2) if n1 else NO_SINGLETONS_DISCOUNT


def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for non-negative keys, sorting each key packed with its position
    in one int64 where both fit: a plain sort is several times faster than the argsort ``np.unique`` does."""
    n = len(keys)
    shift = max(n - 1, 1).bit_length()
    if n == 0 or int(keys.max()) >= 1 << (62 - shift):
        return np.unique(keys, return_inverse=True)
    packed = np.sort((keys << shift) | np.arange(n, dtype=np.int64))
    ordered = packed >> shift
    starts = np.empty(n, bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    inverse = np.empty(n, np.int64)
    inverse[packed & ((1 << shift) - 1)] = np.cumsum(starts) - 1
    return ordered[starts], inverse


def _pieces(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for chunk in chunks:
        for start in range(0, len(chunk), CHUNK):
            yield np.asarray(chunk[start : start + CHUNK], dtype=np.int64)


class _Table:
    """The n-grams of one order seen in training: trie nodes keyed by (context node, last symbol)."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)  # sorted: context node id * base + symbol
        self.ids = np.zeros(0, np.int64)  # the node id of each key
        self.counts = np.zeros(0, np.int64)  # by node id: occurrences ending at a scored position
        self.suffix = np.zeros(0, np.int64)  # by node id: the node of the order below holding its last symbols

    @property
    def size(self) -> int:
        return len(self.counts)

    def add(self, keys: np.ndarray, below: np.ndarray, counted: bool = True) -> np.ndarray:
        """The node ids of n-grams at each position (``below``: the n-gram one shorter ending there), adding
        the unseen ones; with ``counted``, each position counts once."""
        unique, inverse = _unique(keys)
        suffix = np.empty(len(unique), np.int64)
        suffix[inverse] = below  # the same for every position of an n-gram
        pos = np.searchsorted(self.keys, unique)
        known = pos < len(self.keys)
        known[known] = self.keys[pos[known]] == unique[known]
        fresh = np.flatnonzero(~known)
        found = np.empty(len(unique), np.int64)
        found[known] = self.ids[pos[known]]
        new_ids = np.arange(self.size, self.size + len(fresh), dtype=np.int64)
        found[fresh] = new_ids
        self.keys, self.ids = _merged(self.keys, self.ids, pos[fresh], unique[fresh], new_ids)
        self.suffix = np.concatenate([self.suffix, suffix[fresh]])
        self.counts = np.concatenate([self.counts, np.zeros(len(new_ids), np.int64)])
        nodes = found[inverse]
        if counted:
            self.counts += np.bincount(nodes, minlength=self.size)
        return nodes

    def find(self, context: np.ndarray, symbols: np.ndarray, base: int) -> np.ndarray:
        """Node ids of (context node, symbol) pairs; -1 where the context is unknown or the n-gram unseen."""
        nodes = np.full(len(context), -1, np.int64)
        where = np.flatnonzero(context >= 0)
        unique, inverse = _unique(context[where] * base + symbols[where])
        pos = np.minimum(np.searchsorted(self.keys, unique), len(self.keys) - 1)  # sorted queries: fast
        found = np.where(self.keys[pos] == unique, self.ids[pos], -1)
        nodes[where] = found[inverse]
        return nodes


def _merged(keys: np.ndarray, ids: np.ndarray, at: np.ndarray, new_keys: np.ndarray, new_ids: np.ndarray):
    """Sorted ``keys`` (and their ``ids``) with sorted ``new_keys`` inserted before the positions ``at``."""
    placed = at + np.arange(len(at))
    old = np.ones(len(keys) + len(at), bool)
    old[placed] = False
    out_keys, out_ids = np.empty(len(old), np.int64), np.empty(len(old), np.int64)
    out_keys[old], out_ids[old] = keys, ids
    out_keys[placed], out_ids[placed] = new_keys, new_ids
    return out_keys, out_ids


@dataclass(frozen=True)
class _Level:
    """What one order contributes to the interpolation, for one kind of count (raw or continuation)."""

    counts: np.ndarray  # by node of this order
    total: np.ndarray  # by context node (the order below): sum of its continuations' counts
    types: np.ndarray  # by context node: how many distinct symbols follow it
    discount: float

    @classmethod
    def of(cls, counts: np.ndarray, parent: np.ndarray, contexts: int) -> _Level:
        seen = counts > 0
        total = np.bincount(parent[seen], weights=counts[seen], minlength=contexts)
        types = np.bincount(parent[seen], minlength=contexts).astype(np.float64)
        return cls(counts.astype(np.float64), total, types, _discount(counts[seen]))

    def mix(self, context: np.ndarray, gram: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """P(symbol | context) at this order, interpolated with ``lower`` (the order below's probability)."""
        known = context >= 0
        total = np.where(known, self.total[np.maximum(context, 0)], 0.0)
        types = np.where(known, self.types[np.maximum(context, 0)], 0.0)
        count = np.where(gram >= 0, self.counts[np.maximum(gram, 0)], 0.0)
        d = self.discount
        seen = total > 0
        mixed = (np.maximum(count - d, 0.0) + d * types * lower) / np.where(seen, total, 1.0)
        return np.where(seen, mixed, lower)


class KneserNey:
    """Character n-gram models of every order up to ``max_order``, fit on one token stream."""

    def __init__(self, chunks: Iterable[np.ndarray], *, vocab_size: int, max_order: int) -> None:
        if not 1 <= max_order <= MAX_ORDER:
            raise UserError(f"n-gram order {max_order} is out of range: use 1 to {MAX_ORDER}")
        self.vocab_size, self.max_order = vocab_size, max_order
        self.start_symbol, self.base = vocab_size, vocab_size + 1
        tables = [_Table() for _ in range(max_order + 1)]
        # The start state: node j (order j) is j start symbols, whose context is node j - 1 of the order below.
        self.start = np.zeros(max_order, np.int64)
        for j in range(1, max_order):
            key = np.array([self.start[j - 1] * self.base + self.start_symbol])
            self.start[j] = tables[j].add(key, self.start[j - 1 : j], counted=False)[0]
        state, tokens = self.start.copy(), 0
        for piece in _pieces(chunks):
            below, last = np.zeros(len(piece), np.int64), state.copy()
            for k in range(1, max_order + 1):
                context = np.concatenate([state[k - 1 : k], below[:-1]])
                below = tables[k].add(context * self.base + piece, below)
                if k < max_order:
                    last[k] = below[-1]
            state = last
            tokens += len(piece)
        if tokens == 0:
            raise UserError("no text to fit an n-gram model on: the train split is empty")
        self.tokens = tokens
        self.tables = tables
        self.raw: list[_Level | None] = [None]
        self.continuation: list[_Level | None] = [None]
        for k in range(1, max_order + 1):
            table = tables[k]
            parent = np.empty(table.size, np.int64)
            parent[table.ids] = table.keys // self.base
            contexts = tables[k - 1].size if k > 1 else 1
            self.raw.append(_Level.of(table.counts, parent, contexts))
            if k < max_order:  # how many distinct symbols precede each n-gram
                above = tables[k + 1]
                preceded = np.bincount(above.suffix[above.counts > 0], minlength=table.size)
                self.continuation.append(_Level.of(preceded, parent, contexts))
            table.suffix = table.counts = np.zeros(0, np.int64)  # in the levels now; the keys stay for lookups

    def _walk(self, piece: np.ndarray, state: np.ndarray, top: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """For each position and order k <= top: the context node (order k - 1) and the n-gram node (order k)."""
        contexts, grams = [np.zeros(0)], [np.zeros(len(piece), np.int64)]
        for k in range(1, top + 1):
            contexts.append(np.concatenate([state[k - 1 : k], grams[k - 1][:-1]]))
            grams.append(self.tables[k].find(contexts[k], piece, self.base))
        for k in range(1, min(top + 1, self.max_order)):  # the n-grams ending here are the next piece's contexts
            state[k] = grams[k][-1]
        return contexts, grams

    def _probabilities(
        self, contexts: list[np.ndarray], grams: list[np.ndarray], orders: Sequence[int]
    ) -> dict[int, np.ndarray]:
        top = max(orders)
        lower = np.full(len(grams[0]), 1.0 / self.vocab_size)
        out = {}
        for k in range(1, top + 1):
            if k in orders:
                out[k] = self.raw[k].mix(contexts[k], grams[k], lower)
            if k < top:
                lower = self.continuation[k].mix(contexts[k], grams[k], lower)
        return out

    def _orders(self, orders: Sequence[int] | None) -> list[int]:
        chosen = sorted(set(orders or range(1, self.max_order + 1)))
        if chosen[0] < 1 or chosen[-1] > self.max_order:
            raise ValueError(f"orders {chosen} are outside this model's 1..{self.max_order}")
        return chosen

    def score(self, chunks: Iterable[np.ndarray], orders: Sequence[int] | None = None) -> tuple[dict[int, float], int]:
        """Total nats of a token stream under the model of each order (starting a fresh split), and its length."""
        chosen = self._orders(orders)
        state, nats, tokens = self.start.copy(), dict.fromkeys(chosen, 0.0), 0
        for piece in _pieces(chunks):
            contexts, grams = self._walk(piece, state, max(chosen))
            for k, p in self._probabilities(contexts, grams, chosen).items():
                nats[k] -= float(np.log(p).sum())
            tokens += len(piece)
        return nats, tokens

    def distribution(self, context: Sequence[int], order: int) -> np.ndarray:
        """P(next symbol | a split that starts with ``context``) over the vocabulary, at one order."""
        (order,) = self._orders([order])
        state = self.start.copy()
        if len(context):
            self._walk(np.asarray(context, np.int64), state, self.max_order)
        contexts, grams = [np.zeros(0)], [np.zeros(self.vocab_size, np.int64)]
        symbols = np.arange(self.vocab_size, dtype=np.int64)
        for k in range(1, order + 1):
            contexts.append(np.full(self.vocab_size, state[k - 1]))
            grams.append(self.tables[k].find(contexts[k], symbols, self.base))
        return self._probabilities(contexts, grams, [order])[order]


@dataclass(frozen=True)
class Baseline:
    """The n-gram figures of one corpus: nats/char of each order on each scored split."""

    fingerprint: str
    nats: dict[int, dict[str, float]]  # order -> split -> nats/char
    tokens: dict[str, int]  # split -> characters (tokens) fit on or scored
    seconds: float

    def best(self, split: str = "val") -> tuple[int, float] | None:
        """The order with the lowest nats/char on ``split``, and that figure."""
        scored = [(v[split], k) for k, v in self.nats.items() if split in v]
        return (min(scored)[1], min(scored)[0]) if scored else None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "method": METHOD,
            "fingerprint": self.fingerprint,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "orders": {str(k): v for k, v in sorted(self.nats.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Baseline:
        nats = {int(k): v for k, v in data["orders"].items()}
        return cls(data["fingerprint"], nats, data["tokens"], data["seconds"])


def cached(folder: Store) -> Baseline | None:
    """The n-gram figures stored for the corpus at ``folder``, if this version of rnnfarm computed them."""
    target = folder / CACHE
    if not target.exists():
        return None
    data = target.read_json()
    if data.get("version") != VERSION or data.get("fingerprint") != shards.load_manifest(folder)["fingerprint"]:
        return None
    return Baseline.from_json(data)


def of_run(record: dict[str, Any], options: dict[str, Any] | None = None) -> Baseline | None:
    """The stored figures of a run's corpus (the corpus its record names); None when it has none or is out of
    reach, so that a summary or report goes on without them."""
    url = (record.get("corpus") or {}).get("url")
    if not url:
        return None
    try:
        return cached(Store.at(url, options))
    except (UserError, OSError, ValueError, KeyError):
        return None


def line(result: Baseline) -> str | None:
    """One line on the best order's val figure, to stand beside a model's."""
    best = result.best("val")
    if best is None:
        return None
    order, nats = best
    return f"{nats:.4f} nats/char ({bits(nats):.4f} bits/char), order {order} interpolated Kneser-Ney"


def baseline(folder: Store, *, orders: Sequence[int] = ORDERS, refit: bool = False) -> Baseline:
    """Fit the n-gram model of each order on the train split of the corpus at ``folder`` and score its val and
    test splits; reuses (and extends) the figures stored for that corpus unless ``refit``."""
    wanted = sorted(set(orders))
    if not wanted or wanted[0] < 1 or wanted[-1] > MAX_ORDER:
        raise UserError(f"n-gram orders must be 1 to {MAX_ORDER} (got {', '.join(map(str, wanted)) or 'none'})")
    manifest = shards.load_manifest(folder)
    earlier = None if refit else cached(folder)
    if earlier is not None and all(k in earlier.nats for k in wanted):
        return Baseline(earlier.fingerprint, {k: earlier.nats[k] for k in wanted}, earlier.tokens, earlier.seconds)
    started = time.perf_counter()
    vocab = Vocab.from_json(manifest["vocab"])
    model = KneserNey(shards.iter_tokens(folder, manifest, "train", vocab), vocab_size=len(vocab), max_order=wanted[-1])
    nats: dict[int, dict[str, float]] = {k: {} for k in wanted}
    tokens = {"train": model.tokens}
    for split in ("val", "test"):
        if split in manifest["splits"] and manifest["splits"][split]["tokens"]:
            total, tokens[split] = model.score(shards.iter_tokens(folder, manifest, split, vocab), wanted)
            for k in wanted:
                nats[k][split] = total[k] / tokens[split]
    result = Baseline(manifest["fingerprint"], nats, tokens, time.perf_counter() - started)
    kept = {**(earlier.nats if earlier else {}), **nats}
    (folder / CACHE).write_json(Baseline(result.fingerprint, kept, tokens, result.seconds).to_json())
    return result


def table(result: Baseline) -> list[str]:
    """The figures as lines of a table: one row per order, nats/char and bits/char of each scored split."""
    splits = [s for s in ("val", "test") if s in result.tokens]
    header = f"{'ORDER':>5}" + "".join(f"  {s + ' nats/char':>15}  {s + ' bits/char':>15}" for s in splits)
    rows = [header]
    for k, figures in sorted(result.nats.items()):
        cells = "".join(f"  {figures[s]:>15.4f}  {bits(figures[s]):>15.4f}" for s in splits)
        rows.append(f"{k:>5}{cells}")
    return rows
