"""Shards -> token streams -> (B, T) batches for stateful truncated BPTT, per rank.

A split is one token stream cut into ``world_size * B`` contiguous streams; rank r takes streams
``r*B .. r*B+B-1`` and reads them T tokens at a time, so the hidden state of row b at one step is
the right starting state for row b at the next. N workers with batch B therefore see exactly what
one worker with batch N*B sees.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import torch

from ..corpus import shards
from ..corpus.vocab import Vocab
from ..errors import UserError
from ..spec import EvalSpec
from ..storage import Store


def load_tokens(folder: Store, manifest: dict[str, Any], split: str, start: int, stop: int, vocab: Vocab) -> np.ndarray:
    """Token ids of tokens ``start..stop`` of a split, reading only the shards that hold them."""
    return shards.read_tokens(folder, manifest, split, start, stop, vocab)


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
    cut for one target per stream and read in windows of the training ``seq_len``.
    """

    def __init__(self, tokens: np.ndarray, layout: Layout, *, window: int | None = None) -> None:
        L, B = layout.stream_len, layout.batch
        rows = np.lib.stride_tricks.sliding_window_view(tokens, L + 1)[::L][:B]
        # Kept in the vocabulary's compact dtype (one byte a char for most corpora); windows are widened.
        self.data = torch.from_numpy(rows.copy())  # a copy: the windows overlap, and the view is read-only
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

    def windows_for_eval(self):
        """Every window of the streams once, the last one possibly shorter (the whole split)."""
        L = self.data.shape[1] - 1
        for a in range(0, L, self.seq_len):
            b = min(a + self.seq_len, L)
            yield self.data[:, a:b].long(), self.data[:, a + 1 : b + 1].long()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


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
) -> Streams:
    """This rank's training streams of a split, read in windows of ``seq_len`` epoch after epoch."""
    layout = Layout(manifest["splits"][split]["tokens"], batch=batch, seq_len=seq_len, rank=rank, world=world)
    layout.check(split, "batch_size")
    start, stop = layout.span
    return Streams(load_tokens(folder, manifest, split, start, stop, vocab), layout)


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
) -> Streams | None:
    """This rank's share of the evaluation cut of a split, read once in windows of ``seq_len``; None if it has none.

    The split is cut into ``spec.streams`` streams (fewer for a split shorter than that), one target per stream
    at least, whatever the batch and the workers; rank r of W takes streams ``r*S//W .. (r+1)*S//W - 1``.
    """
    n = manifest["splits"][split]["tokens"]
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
    return Streams(tokens, layout, window=seq_len)
