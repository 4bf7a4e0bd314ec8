"""Shards -> token streams -> (B, T) batches for stateful truncated BPTT, per rank.

A split is one token stream cut into ``world_size * B`` contiguous streams; rank r takes streams
``r*B .. r*B+B-1`` and reads them T tokens at a time, so the hidden state of row b at one step is
the right starting state for row b at the next. N workers with batch B therefore see exactly what
one worker with batch N*B sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import torch

from ..corpus import shards
from ..corpus.vocab import Vocab
from ..errors import UserError
from ..spec import EvalSpec
from ..storage import Store


def parts(manifest: dict[str, Any], split: str) -> list[tuple[str, int]]:
    """The splits a split name joins (``val+test``: val, then test) with their token counts; a split without
    a target (fewer than 2 tokens) is refused."""
    names = split.split("+")
    missing = [name for name in names if manifest["splits"].get(name, {}).get("tokens", 0) < 2]
    if missing:
        raise UserError(f"the corpus has no {missing[0]} split (set corpus.{missing[0]} when building it)")
    return [(name, manifest["splits"][name]["tokens"]) for name in names]


def load_tokens(folder: Store, manifest: dict[str, Any], split: str, start: int, stop: int, vocab: Vocab) -> np.ndarray:
    """Token ids of tokens ``start..stop`` of a split (or of splits joined, ``val+test``), reading only the
    shards that hold them."""
    pieces, offset = [], 0
    for name, n in parts(manifest, split):
        a, b = max(start - offset, 0), min(stop - offset, n)
        if a < b:
            pieces.append(shards.read_tokens(folder, manifest, name, a, b, vocab))
        offset += n
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces or [np.empty(0, dtype=vocab.dtype)])


def split_tokens(manifest: dict[str, Any], split: str) -> int:
    return sum(n for _, n in parts(manifest, split))


@dataclass
class Layout:
    """How a split of ``n`` tokens is cut into streams for one rank."""

    n: int
    _: KW_ONLY
    batch: int
    seq_len: int
    rank: int
    world: int

    @property
    def stream_len(self) -> int:
        """Targets per stream (each stream holds one more token, the last target)."""
        return (self.n - 1) // (self.world * self.batch)

    @property
    def span(self) -> tuple[int, int]:
        """The token range this rank reads: its B streams, plus the one token after them."""
        first = self.rank * self.batch * self.stream_len
        return first, first + self.batch * self.stream_len + 1

    def check(self, split: str, what: str) -> None:
        if self.stream_len < self.seq_len:
            raise UserError(
                f"the {split} split ({self.n} chars) is too short for {self.world} worker(s) x {what} "
                f"{self.batch} x seq_len {self.seq_len}: lower them or use a larger corpus"
            )


class Streams:
    """This rank's B streams of one split, as (x, y) windows of T tokens, epoch after epoch.

    ``window`` is the length of the windows read (the layout's ``seq_len`` by default): evaluation streams are
    cut for one target per stream and read in windows of the training ``seq_len``. The streams are kept on
    ``device`` in the vocabulary's compact dtype (one byte a char for most corpora), and windows are cut and
    widened there: a step copies nothing from the host.
    """

    def __init__(
        self, tokens: np.ndarray, layout: Layout, *, window: int | None = None, device: str | torch.device = "cpu"
    ) -> None:
        L, B = layout.stream_len, layout.batch
        rows = np.lib.stride_tricks.sliding_window_view(tokens, L + 1)[::L][:B]
        self.data = torch.from_numpy(rows.copy()).to(device)  # a copy: the windows overlap, the view is read-only
        self.seq_len = window or layout.seq_len
        self.windows = L // layout.seq_len
        self.epoch, self.pos = 0, 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The next (x, y) window and whether it starts an epoch (the hidden state must reset)."""
        a = self.pos * self.seq_len
        x, y = self.data[:, a : a + self.seq_len].long(), self.data[:, a + 1 : a + self.seq_len + 1].long()
        starts = self.pos == 0
        self.pos += 1
        if self.pos == self.windows:
            self.epoch, self.pos = self.epoch + 1, 0
        return x, y, starts

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """Every window of the streams once, the last one possibly shorter (the whole split), state carried
        from the first (the only one that starts afresh)."""
        L = self.data.shape[1] - 1
        for a in range(0, L, self.seq_len):
            b = min(a + self.seq_len, L)
            yield self.data[:, a:b].long(), self.data[:, a + 1 : b + 1].long(), a == 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class ColdStarts:
    """Which training streams start a batch from a zero state (``train.state_reset``): each stream, before each
    batch, with probability ``p``.

    A probability rather than a period: the age of a stream's state is then spread over every length, from a
    fresh start to a whole epoch, and no two streams reset in step. Every rank draws for all ``world * batch``
    streams from one generator of its own (seeded by the run's seed, apart from the weights' and dropout's)
    and keeps its rows, so each stream has its own draws, and N workers with batch B reset what one worker with
    batch N*B resets. The generator's state is checkpointed with the worker's, so resume is exact.
    """

    def __init__(self, p: float, *, seed: int, batch: int, rank: int, world: int) -> None:
        self.p, self.streams, self.rows = p, world * batch, slice(rank * batch, (rank + 1) * batch)
        own = int(np.random.SeedSequence([seed, COLD_STARTS]).generate_state(1)[0])
        self.generator = torch.Generator().manual_seed(own)

    def draw(self) -> torch.Tensor:
        """This rank's streams that start the next batch from a zero state, as a (batch,) bool tensor on the CPU."""
        return (torch.rand(self.streams, generator=self.generator) < self.p)[self.rows]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"cold_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["cold_rng"])


COLD_STARTS = 0xC01D  # names the cold starts' generator among the run's seeded ones


def streams_for(
    folder: Store,
    manifest: dict[str, Any],
    split: str,
    vocab: Vocab,
    *,
    batch: int,
    seq_len: int,
    rank: int,
    world: int,
    device: str | torch.device = "cpu",
) -> Streams:
    """This rank's training streams of a split, read in windows of ``seq_len`` epoch after epoch."""
    layout = Layout(manifest["splits"][split]["tokens"], batch=batch, seq_len=seq_len, rank=rank, world=world)
    layout.check(split, "batch_size")
    start, stop = layout.span
    return Streams(load_tokens(folder, manifest, split, start, stop, vocab), layout, device=device)


class Windows:
    """This rank's share of random windows of a split (nanoGPT's evaluation), each scored from a zero state,
    read ``batch`` windows at a time; the split and the starts are kept on ``device``, as ``Streams`` keep theirs."""

    def __init__(
        self, tokens: np.ndarray, starts: np.ndarray, length: int, batch: int = 64, device: str | torch.device = "cpu"
    ) -> None:
        if tokens.dtype == np.uint16:  # CUDA cannot index uint16 tensors; a byte vocabulary stays one byte a char
            tokens = tokens.astype(np.int32)
        self.tokens, self.starts = torch.from_numpy(tokens).to(device), torch.from_numpy(starts).to(device)
        self.length, self.batch = length, batch

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        offsets = torch.arange(self.length + 1, device=self.tokens.device)
        for i in range(0, len(self.starts), self.batch):
            rows = self.tokens[self.starts[i : i + self.batch, None] + offsets].long()
            yield rows[:, :-1], rows[:, 1:], True


def eval_cut(
    folder: Store,
    manifest: dict[str, Any],
    split: str,
    vocab: Vocab,
    *,
    spec: EvalSpec,
    seq_len: int,
    rank: int,
    world: int,
    device: str | torch.device = "cpu",
) -> Streams | Windows | None:
    """This rank's share of a split as the spec's ``eval`` cuts it: streams, or random windows (``eval.windows``)."""
    where = {"rank": rank, "world": world, "device": device}
    if spec.windows is None:
        return eval_streams(folder, manifest, split, vocab, spec=spec, seq_len=seq_len, **where)
    return eval_windows(folder, manifest, split, vocab, spec=spec, **where)


def eval_windows(
    folder: Store,
    manifest: dict[str, Any],
    split: str,
    vocab: Vocab,
    *,
    spec: EvalSpec,
    rank: int,
    world: int,
    device: str | torch.device = "cpu",
) -> Windows | None:
    """This rank's windows: ``spec.windows`` starts drawn uniformly from the split with ``spec.seed`` (the same
    draw for any number of ranks), rank r of W taking every W-th from the r-th; None if it has none."""
    n = split_tokens(manifest, split)
    if n <= spec.window:
        raise UserError(
            f"eval.window {spec.window}: the {split} split holds {n} tokens, too few for one window and its "
            "last target: lower eval.window"
        )
    starts = np.random.default_rng(spec.seed).integers(0, n - spec.window, size=spec.windows)[rank::world]
    if not len(starts):
        return None
    return Windows(load_tokens(folder, manifest, split, 0, n, vocab), starts, spec.window, device=device)


def eval_streams(
    folder: Store,
    manifest: dict[str, Any],
    split: str,
    vocab: Vocab,
    *,
    spec: EvalSpec,
    seq_len: int,
    rank: int,
    world: int,
    device: str | torch.device = "cpu",
) -> Streams | None:
    """This rank's share of the evaluation cut of a split, read once in windows of ``seq_len``; None if it has none.

    The split is cut into ``spec.streams`` streams (fewer for a split shorter than that), one target per stream
    at least, whatever the batch and the workers; rank r of W takes streams ``r*S//W .. (r+1)*S//W - 1``.
    """
    n = split_tokens(manifest, split)
    total = max(1, min(spec.streams, n - 1))
    length = (n - 1) // total
    if spec.warmup >= length:
        raise UserError(
            f"eval.warmup {spec.warmup}: the {split} split's {total} evaluation streams hold {length} targets "
            "each, all of them warm-up: lower eval.warmup or eval.streams"
        )
    first, last = rank * total // world, (rank + 1) * total // world
    if first == last:
        return None
    tokens = load_tokens(folder, manifest, split, first * length, last * length + 1, vocab)
    layout = Layout(len(tokens), batch=last - first, seq_len=1, rank=0, world=1)
    return Streams(tokens, layout, window=seq_len, device=device)
